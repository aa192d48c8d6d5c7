#include "lowbit/tensor.h"

#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace lowbit {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI8: return 1;
    case DType::kU8: return 1;
    case DType::kI16: return 2;
    case DType::kU16: return 2;
    case DType::kI32: return 4;
    case DType::kU32: return 4;
    case DType::kI64: return 8;
  }
  LOWBIT_CHECK(false, "dtype_size: invalid DType " + std::to_string(static_cast<int>(dtype)));
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kI8: return "i8";
    case DType::kU8: return "u8";
    case DType::kI16: return "i16";
    case DType::kU16: return "u16";
    case DType::kI32: return "i32";
    case DType::kU32: return "u32";
    case DType::kI64: return "i64";
  }
  return "unknown";
}

Shape Shape::row_major(std::span<const int64_t> dims) {
  LOWBIT_CHECK(dims.size() <= static_cast<size_t>(kMaxDims),
               "tensor views have at most " + std::to_string(kMaxDims) + " dims");
  Shape s;
  s.ndim = static_cast<int>(dims.size());
  int64_t stride = 1;
  for (int d = s.ndim - 1; d >= 0; --d) {
    LOWBIT_CHECK(dims[d] >= 0, "negative dim");
    s.dims[d] = dims[d];
    s.strides[d] = stride;
    stride *= dims[d];
  }
  return s;
}

Shape Shape::strided(std::span<const int64_t> dims, std::span<const int64_t> strides) {
  LOWBIT_CHECK(dims.size() == strides.size(), "dims and strides differ in length");
  Shape s = row_major(dims);
  for (int d = 0; d < s.ndim; ++d) s.strides[d] = strides[d];
  return s;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= dims[d];
  return n;
}

bool Shape::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (dims[d] != 1 && strides[d] != expected) return false;
    expected *= dims[d];
  }
  return true;
}

std::string Shape::to_string() const {
  std::string out = "(";
  for (int d = 0; d < ndim; ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(dims[d]);
  }
  return out + ")";
}

// ---- Tensor ----

Result<Tensor> Tensor::empty(DType dtype, std::initializer_list<int64_t> dims) {
  return empty(dtype, std::span(dims.begin(), dims.size()));
}

Result<Tensor> Tensor::empty(DType dtype, std::span<const int64_t> dims) {
  auto requested = [&] { return fmt::format("{} ({})", dtype_name(dtype), fmt::join(dims, ", ")); };
  if (dims.size() > static_cast<size_t>(kMaxDims)) {
    return InvalidArgument(fmt::format("tensor {}: {} dims requested, at most {} supported", requested(),
                                       dims.size(), kMaxDims));
  }
  size_t nbytes = dtype_size(dtype);
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] < 0) return InvalidArgument(fmt::format("tensor {}: dim {} is negative", requested(), d));
    if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(dims[d]), &nbytes)) {
      return InvalidArgument(fmt::format("tensor {}: byte size overflows", requested()));
    }
  }
  // Round the allocation up to whole cache lines (aligned_alloc requires a multiple of the
  // alignment) and keep it within ptrdiff_t so element offsets cannot overflow.
  if (nbytes > static_cast<size_t>(PTRDIFF_MAX) - kAlignment) {
    return InvalidArgument(fmt::format("tensor {}: byte size overflows", requested()));
  }
  const size_t padded = nbytes == 0 ? kAlignment : (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = std::aligned_alloc(kAlignment, padded);
  if (data == nullptr) {
    return Unsupported(fmt::format("tensor {}: out of memory allocating {} bytes", requested(), padded));
  }
  std::memset(data, 0, padded);
  return Tensor(data, nbytes, dtype, Shape::row_major(dims));
}

Tensor::Tensor(Tensor&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      nbytes_(std::exchange(other.nbytes_, 0)),
      dtype_(other.dtype_),
      shape_(std::exchange(other.shape_, Shape{})) {}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    nbytes_ = std::exchange(other.nbytes_, 0);
    dtype_ = other.dtype_;
    shape_ = std::exchange(other.shape_, Shape{});
  }
  return *this;
}

Tensor::~Tensor() { std::free(data_); }

}  // namespace lowbit
