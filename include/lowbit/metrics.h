// Error metrics between a reference tensor and its quantized-dequantized copy.
//
//   ErrorStats e = error_stats(x, x_hat);   // e.mse, e.sqnr_db, e.cosine, e.max_abs, e.rel_frobenius
#pragma once

#include <span>

namespace lowbit {

struct ErrorStats {
  double mse = 0;            // mean (x - y)^2
  double sqnr_db = 0;        // 10 log10(sum x^2 / sum (x - y)^2); +inf when equal
  double cosine = 0;         // <x, y> / (|x| |y|); 1 when both are zero
  double max_abs = 0;        // max |x - y|
  double rel_frobenius = 0;  // |x - y| / |x| (0 when both are zero)
};

// Accumulates in double. x and y must have the same length.
ErrorStats error_stats(std::span<const float> x, std::span<const float> y);
double mse(std::span<const float> x, std::span<const float> y);
double sqnr_db(std::span<const float> x, std::span<const float> y);
double cosine_similarity(std::span<const float> x, std::span<const float> y);
double max_abs_error(std::span<const float> x, std::span<const float> y);
double relative_frobenius_error(std::span<const float> x, std::span<const float> y);

}  // namespace lowbit
