// Internal to the model layer: checks every reader shares.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/status.h"

namespace lowbit {

// Index of the first NaN or Inf in x[0, n), or -1 (branch-free in chunks, so it vectorizes).
int64_t first_non_finite(const float* x, int64_t n);
// DataLoss "<path>: tensor <name> has NaN at index <i>" for the first non-finite weight.
Status check_finite(const std::string& path, const std::string& name, const float* x, int64_t n);

}  // namespace lowbit
