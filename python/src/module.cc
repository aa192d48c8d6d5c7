// The `lowbit._core` extension module: error translation, array conversion and the process
// knobs (threads, ISA). The bindings proper live in formats_quant.cc and models.cc; the Python
// package (python/lowbit/__init__.py) re-exports them with docstrings and stubs.
#include <fmt/format.h>

#include "common.h"
#include "lowbit/cpu.h"
#include "lowbit/parallel.h"

namespace lowbit::python {

void init_formats_quant(py::module_& m);
void init_models(py::module_& m);

Format format_arg(const std::string& name) { return unwrap(parse_format(name)); }

std::string dtype_str(const py::array& a) { return a.dtype().attr("name").cast<std::string>(); }

py::array as_array(py::handle obj) {
  if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);
  if (py::hasattr(obj, "__dlpack__")) {
    return py::module_::import("numpy").attr("from_dlpack")(obj).cast<py::array>();
  }
  return py::array::ensure(obj);
}

FloatArray::FloatArray(py::handle obj, const char* what, bool writable) : what_(what) {
  arr_ = as_array(obj);
  if (!arr_) bad_input(fmt::format("{}: expected a float32 array (numpy, buffer protocol or DLPack)", what_));
  if (!py::isinstance<py::array_t<float>>(arr_)) {
    bad_input(fmt::format("{}: expected dtype float32, got {}", what_, dtype_str(arr_)));
  }
  if (writable && !arr_.writeable()) bad_input(fmt::format("{}: the array is read-only", what_));
  for (py::ssize_t d = 0; d < arr_.ndim(); ++d) {
    if (arr_.strides(d) % static_cast<py::ssize_t>(sizeof(float)) != 0) {
      bad_input(fmt::format("{}: stride {} bytes along dim {} is not a multiple of 4 (float32); pass "
                            "numpy.ascontiguousarray(x)", what_, arr_.strides(d), d));
    }
  }
  contiguous_ = (arr_.flags() & py::array::c_style) != 0;
}

std::vector<int64_t> FloatArray::shape() const {
  std::vector<int64_t> s(static_cast<size_t>(arr_.ndim()));
  for (size_t d = 0; d < s.size(); ++d) s[d] = arr_.shape(static_cast<py::ssize_t>(d));
  return s;
}

Shape FloatArray::shape_checked() const {
  if (arr_.ndim() > kMaxDims) {
    bad_input(fmt::format("{}: {} dimensions; lowbit takes at most {} (reshape first)", what_, arr_.ndim(), kMaxDims));
  }
  std::vector<int64_t> dims = shape(), strides(dims.size());
  for (size_t d = 0; d < dims.size(); ++d) strides[d] = arr_.strides(static_cast<py::ssize_t>(d)) / 4;
  return Shape::strided(dims, strides);
}

ConstTensorView FloatArray::view() const { return {arr_.data(), DType::kF32, shape_checked()}; }

TensorView FloatArray::mutable_view() const {
  return {const_cast<void*>(arr_.data()), DType::kF32, shape_checked()};  // writable checked at construction
}

const float* FloatArray::contiguous() {
  if (contiguous_) return static_cast<const float*>(arr_.data());
  if (dense_.empty() && numel() > 0) {
    // numpy does the strided gather (any ndim, negative strides); its result is dense float32.
    py::array dense = py::module_::import("numpy").attr("ascontiguousarray")(arr_);
    dense_.assign(static_cast<const float*>(dense.data()), static_cast<const float*>(dense.data()) + numel());
  }
  return dense_.data();
}

}  // namespace lowbit::python

PYBIND11_MODULE(_core, m) {
  using namespace lowbit;
  using namespace lowbit::python;
  m.doc() = "lowbit's C++ core (formats, QuantSpec, quantize, kernels, models, eval, PTQ); import lowbit instead";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      const std::string& msg = e.status.message();
      switch (e.status.code()) {
        case StatusCode::kNotFound: PyErr_SetString(PyExc_FileNotFoundError, msg.c_str()); return;
        case StatusCode::kIoError: PyErr_SetString(PyExc_OSError, msg.c_str()); return;
        case StatusCode::kInternal: PyErr_SetString(PyExc_RuntimeError, msg.c_str()); return;
        default: PyErr_SetString(PyExc_ValueError, msg.c_str()); return;
      }
    }
  });

  // The CLI's global knobs, read once at import: a bad LOWBIT_ISA / LOWBIT_THREADS is an ImportError
  // carrying lowbit's message rather than the library's exit(2).
  if (Status s = init_isa_from_env(); !s.ok()) throw py::import_error(s.message());
  if (Status s = init_threads_from_env(); !s.ok()) throw py::import_error(s.message());

  m.def("set_num_threads", [](int n) { check(set_num_threads(n)); }, py::arg("n"));
  m.def("num_threads", &num_threads);
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_isa", [](const std::string& name) { check(set_isa(unwrap(parse_isa(name)))); }, py::arg("isa"));
  m.def("supported_isas", [] {
    std::vector<std::string> out;
    for (Isa i : supported_isas()) out.emplace_back(isa_name(i));
    return out;
  });
  m.attr("__version__") = LOWBIT_VERSION;
  m.attr("_built_with_asan") =
#if defined(__SANITIZE_ADDRESS__)
      true;
#else
      false;
#endif

  init_formats_quant(m);
  init_models(m);
}
