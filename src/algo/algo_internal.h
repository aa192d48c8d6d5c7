// Internal to the algo layer: small helpers the methods and the pipeline share.
#pragma once

#include <cstring>

#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit::algo_internal {

// An owned, contiguous f32 copy of a contiguous f32 tensor.
inline Result<Tensor> clone_f32(ConstTensorView v) {
  if (v.dtype() != DType::kF32 || !v.is_contiguous()) return InvalidArgument("clone_f32: needs a contiguous f32 tensor");
  LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, std::span<const int64_t>(v.shape().dims.data(), static_cast<size_t>(v.ndim()))));
  std::memcpy(t.data_as<float>(), v.data_as<float>(), v.nbytes());
  return t;
}

}  // namespace lowbit::algo_internal
