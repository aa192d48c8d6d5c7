// Tensors: Tensor owns 64-byte aligned, zero-initialised storage; TensorView and
// ConstTensorView are non-owning (pointer + dtype + dims + strides in elements) and
// slice or transpose without copying. DType is a *storage* type; quantization formats
// (e4m3, int4, nf4, ...) live in the formats layer, not here.
//
//   LOWBIT_ASSIGN_OR_RETURN(Tensor w, Tensor::empty(DType::kF32, {rows, cols}));  // (rows, cols)
//   TensorView wt = w.view().transpose(0, 1);       // (cols, rows), no copy
//   float x = w.view().row(3).at<float>(7);         // w[3, 7]
//   ConstTensorView v(mapped.bytes().data(), DType::kF16, {4096, 4096});  // over mmapped weights
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "lowbit/status.h"

namespace lowbit {

enum class DType : uint8_t { kF32, kF64, kF16, kBF16, kI8, kU8, kI16, kU16, kI32, kU32, kI64 };
inline constexpr int kNumDTypes = 11;

size_t dtype_size(DType dtype);            // bytes per element
std::string_view dtype_name(DType dtype);  // "f32", "f64", "f16", "bf16", "i8", "u8", ... "i64"

inline constexpr int kMaxDims = 4;

// Dims and strides, both in elements. ndim may be 0 (a scalar: one element).
// Strides may be any value (transposed, sliced or broadcast views); only
// is_contiguous() layouts are dense row-major.
struct Shape {
  int ndim = 0;
  std::array<int64_t, kMaxDims> dims{};
  std::array<int64_t, kMaxDims> strides{};

  // Dense row-major strides. Aborts (LOWBIT_CHECK) on more than kMaxDims or a negative
  // dim: views are built by code that has already validated its input.
  static Shape row_major(std::span<const int64_t> dims);
  static Shape strided(std::span<const int64_t> dims, std::span<const int64_t> strides);

  int64_t numel() const;
  bool is_contiguous() const;  // dense row-major; dims of size 1 may have any stride
  std::string to_string() const;  // "(2, 3)"; "()" for a scalar
};

namespace detail {
// Shared by TensorView (void) and ConstTensorView (const void).
template <class Void>
class BasicTensorView {
  using Byte = std::conditional_t<std::is_const_v<Void>, const std::byte, std::byte>;
  template <class T>
  using Elem = std::conditional_t<std::is_const_v<Void>, const T, T>;

 public:
  BasicTensorView() = default;
  // Contiguous row-major.
  BasicTensorView(Void* data, DType dtype, std::initializer_list<int64_t> dims)
      : BasicTensorView(data, dtype, Shape::row_major(std::span(dims.begin(), dims.size()))) {}
  BasicTensorView(Void* data, DType dtype, std::span<const int64_t> dims)
      : BasicTensorView(data, dtype, Shape::row_major(dims)) {}
  // Explicit strides, in elements.
  BasicTensorView(Void* data, DType dtype, std::initializer_list<int64_t> dims,
                  std::initializer_list<int64_t> strides)
      : BasicTensorView(data, dtype,
                        Shape::strided(std::span(dims.begin(), dims.size()),
                                       std::span(strides.begin(), strides.size()))) {}
  BasicTensorView(Void* data, DType dtype, std::span<const int64_t> dims,
                  std::span<const int64_t> strides)
      : BasicTensorView(data, dtype, Shape::strided(dims, strides)) {}
  BasicTensorView(Void* data, DType dtype, const Shape& shape)
      : data_(data), dtype_(dtype), shape_(shape) {}

  // A mutable view converts to a const one, not the other way round.
  template <class Other>
    requires(std::is_const_v<Void> && !std::is_const_v<Other>)
  BasicTensorView(const BasicTensorView<Other>& other)  // NOLINT(implicit)
      : BasicTensorView(other.data(), other.dtype(), other.shape()) {}

  Void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t dim(int i) const { check_dim(i); return shape_.dims[i]; }
  int64_t stride(int i) const { check_dim(i); return shape_.strides[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const { return shape_.is_contiguous(); }

  // Typed pointer to the first element. Aborts if sizeof(T) differs from the dtype's
  // size or the pointer is misaligned for T.
  template <class T>
  Elem<T>* data_as() const {
    LOWBIT_CHECK(sizeof(T) == dtype_size(dtype_),
                 "data_as<T>: sizeof(T) does not match dtype " + std::string(dtype_name(dtype_)));
    LOWBIT_CHECK(reinterpret_cast<uintptr_t>(data_) % alignof(T) == 0, "data_as<T>: misaligned data");
    return static_cast<Elem<T>*>(data_);
  }

  // Element at (i0, i1, ...); exactly ndim() indices, each in range.
  template <class T, class... I>
  Elem<T>& at(I... idx) const {
    static_assert(sizeof...(I) <= kMaxDims, "at(): too many indices");
    LOWBIT_CHECK(static_cast<int>(sizeof...(I)) == shape_.ndim, "at(): wrong number of indices");
    const int64_t index[] = {0, static_cast<int64_t>(idx)...};
    int64_t offset = 0;
    for (int d = 0; d < shape_.ndim; ++d) {
      LOWBIT_CHECK(index[d + 1] >= 0 && index[d + 1] < shape_.dims[d], "at(): index out of range");
      offset += index[d + 1] * shape_.strides[d];
    }
    return data_as<T>()[offset];
  }

  // Index i along dim 0: a view with one dim fewer.
  BasicTensorView row(int64_t i) const {
    LOWBIT_CHECK(shape_.ndim >= 1, "row() on a scalar view");
    LOWBIT_CHECK(i >= 0 && i < shape_.dims[0], "row(): index out of range");
    Shape s;
    s.ndim = shape_.ndim - 1;
    for (int d = 0; d < s.ndim; ++d) {
      s.dims[d] = shape_.dims[d + 1];
      s.strides[d] = shape_.strides[d + 1];
    }
    return {offset_ptr(i * shape_.strides[0]), dtype_, s};
  }

  // [begin, end) along `dim`; same ndim.
  BasicTensorView slice(int dim, int64_t begin, int64_t end) const {
    check_dim(dim);
    LOWBIT_CHECK(0 <= begin && begin <= end && end <= shape_.dims[dim], "slice(): bad range");
    Shape s = shape_;
    s.dims[dim] = end - begin;
    return {offset_ptr(begin * shape_.strides[dim]), dtype_, s};
  }

  // Swaps two dims (and their strides); no copy, so the result is usually not contiguous.
  BasicTensorView transpose(int d0, int d1) const {
    check_dim(d0);
    check_dim(d1);
    Shape s = shape_;
    std::swap(s.dims[d0], s.dims[d1]);
    std::swap(s.strides[d0], s.strides[d1]);
    return {data_, dtype_, s};
  }

  // The raw bytes of a contiguous view; aborts if it is not contiguous.
  std::span<Byte> bytes() const {
    LOWBIT_CHECK(is_contiguous(), "bytes() on a non-contiguous view " + shape_.to_string());
    return {static_cast<Byte*>(data_), nbytes()};
  }

 private:
  void check_dim(int i) const { LOWBIT_CHECK(i >= 0 && i < shape_.ndim, "dim index out of range"); }
  Void* offset_ptr(int64_t elements) const {
    if (elements == 0) return data_;  // keeps a null view's pointer null
    return static_cast<Byte*>(data_) + elements * static_cast<int64_t>(dtype_size(dtype_));
  }

  Void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_;
};
}  // namespace detail

// Mutable non-owning view. Copying a view copies the pointer, not the data.
using TensorView = detail::BasicTensorView<void>;
// Read-only non-owning view (e.g. over memory-mapped weights); TensorView converts to it.
using ConstTensorView = detail::BasicTensorView<const void>;

// Owning tensor: contiguous row-major, 64-byte aligned, zero-initialised, move-only.
class Tensor {
 public:
  // Alignment of every Tensor's storage: one cache line, enough for any AVX-512 load.
  static constexpr size_t kAlignment = 64;

  // Errors (InvalidArgument) on more than kMaxDims dims, a negative dim, or a byte size
  // that overflows; the message names the dtype and the requested dims.
  static Result<Tensor> empty(DType dtype, std::initializer_list<int64_t> dims);
  static Result<Tensor> empty(DType dtype, std::span<const int64_t> dims);

  Tensor() = default;  // holds nothing: numel() and nbytes() are 0; use empty()
  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor();

  TensorView view() { return {data_, dtype_, shape_}; }
  ConstTensorView view() const { return {data_, dtype_, shape_}; }

  void* data() { return data_; }
  const void* data() const { return data_; }
  template <class T>
  T* data_as() { return view().data_as<T>(); }
  template <class T>
  const T* data_as() const { return view().data_as<T>(); }

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t dim(int i) const { return view().dim(i); }
  int64_t numel() const { return data_ ? shape_.numel() : 0; }
  size_t nbytes() const { return nbytes_; }  // numel() * dtype_size(), without padding

 private:
  Tensor(void* data, size_t nbytes, DType dtype, const Shape& shape)
      : data_(data), nbytes_(nbytes), dtype_(dtype), shape_(shape) {}

  void* data_ = nullptr;
  size_t nbytes_ = 0;
  DType dtype_ = DType::kF32;
  Shape shape_;
};

}  // namespace lowbit
