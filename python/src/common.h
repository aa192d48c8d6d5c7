// What every binding file of the `lowbit` Python module shares: lowbit errors as Python
// exceptions, and numpy arrays in (buffer protocol, __array__, DLPack) as lowbit views.
//
//   QuantizedTensor q = unwrap(quantize(view, spec));        // StatusError -> ValueError / OSError
//   FloatArray x(obj, "x");                                   // float32, any strides; x.view()
//   const float* p = x.contiguous();                          // a dense copy only when needed
//
// Only this folder includes Python headers; the library never does.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // in every binding file: the same type casters everywhere (ODR)

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/formats.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit::python {

namespace py = pybind11;

// A lowbit Status on its way to Python. The module's translator (module.cc) raises ValueError
// for bad input (invalid argument, corrupt data, unsupported), FileNotFoundError / OSError for
// files, RuntimeError for internal errors; the message is lowbit's one line.
struct StatusError {
  Status status;
};

inline void check(const Status& s) {
  if (!s.ok()) throw StatusError{s};
}
template <class T>
T unwrap(Result<T>&& r) {
  if (!r.ok()) throw StatusError{r.status()};
  return std::move(r).value();
}
// Bad input found in the bindings themselves: same exception (ValueError) and one-line style.
[[noreturn]] inline void bad_input(std::string message) { throw StatusError{InvalidArgument(std::move(message))}; }

// C-contiguous strides of `shape` for elements of `itemsize` bytes.
inline std::vector<py::ssize_t> c_strides(const std::vector<py::ssize_t>& shape, py::ssize_t itemsize) {
  std::vector<py::ssize_t> st(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    st[d] = itemsize;
    itemsize *= shape[d];
  }
  return st;
}
// A new C-contiguous array, or with `base` a view of `data` that keeps `base` alive (no copy).
// Strides are always computed here from sizeof(T): pybind11 2.10 (Debian bookworm) predates
// numpy 2, and its dtype::itemsize() / kind() read numpy 1's PyArray_Descr layout, which numpy 2
// changed (they return garbage there), so nothing in the bindings asks a dtype for its size.
template <class T>
py::array_t<T> new_array(std::vector<py::ssize_t> shape, T* data = nullptr, py::handle base = py::handle()) {
  std::vector<py::ssize_t> st = c_strides(shape, static_cast<py::ssize_t>(sizeof(T)));
  return py::array_t<T>(std::move(shape), std::move(st), data, base);
}

Format format_arg(const std::string& name);  // ValueError listing the formats
std::string dtype_str(const py::array& a);    // "float64", "int32", ...

// Any array-like as a numpy array without copying: ndarrays as they are, objects with
// __dlpack__ (torch) through numpy.from_dlpack, the rest (buffer protocol, __array__) through
// numpy's own conversion. Lists become arrays too (and then fail the dtype check).
py::array as_array(py::handle obj);

// A float32 input. Any strides that are whole elements (negative too) are kept as a view
// (quantize, dequantize's output, observers read them in place); strides that are not a
// multiple of 4 bytes are a ValueError. contiguous() gives a dense row-major pointer, copying
// only when the array is not already dense.
class FloatArray {
 public:
  FloatArray(py::handle obj, const char* what, bool writable = false);
  const py::array& array() const { return arr_; }
  int ndim() const { return static_cast<int>(arr_.ndim()); }
  int64_t numel() const { return static_cast<int64_t>(arr_.size()); }
  std::vector<int64_t> shape() const;
  bool is_contiguous() const { return contiguous_; }
  // (dims, strides in elements); at most kMaxDims dims (ValueError otherwise).
  ConstTensorView view() const;
  TensorView mutable_view() const;
  const float* contiguous();  // call with the GIL held: may allocate a copy

 private:
  Shape shape_checked() const;
  py::array arr_;
  std::string what_;
  bool contiguous_ = false;
  std::vector<float> dense_;
};

}  // namespace lowbit::python
