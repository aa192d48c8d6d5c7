// Bindings for the formats, quant and kernels layers: encode / decode, the traits table,
// QuantSpec and named schemes, quantize / dequantize with QuantizedTensor's buffers as numpy
// views, error metrics, calibration observers, and matmul through the kernel registry.

#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <optional>

#include "common.h"
#include "lowbit/convert.h"
#include "lowbit/kernels.h"
#include "lowbit/metrics.h"
#include "lowbit/observer.h"
#include "lowbit/quant.h"

namespace lowbit::python {
namespace {

using QTensor = std::shared_ptr<QuantizedTensor>;

// ---- formats -----------------------------------------------------------------------------

py::dict traits_dict(const FormatTraits& t) {
  static constexpr const char* kKinds[] = {"float", "integer", "lookup"};
  static constexpr const char* kNans[] = {"none", "ieee", "mantissa_ones", "all_ones"};
  py::dict d;
  d["name"] = std::string(t.name);
  d["bits"] = t.bits;
  d["kind"] = kKinds[static_cast<int>(t.kind)];
  d["signed"] = t.is_signed;
  d["exp_bits"] = t.exp_bits;
  d["man_bits"] = t.man_bits;
  d["bias"] = t.bias;
  d["has_subnormals"] = t.has_subnormals;
  d["has_inf"] = t.has_inf;
  d["nan"] = kNans[static_cast<int>(t.nan)];
  d["has_neg_zero"] = t.has_neg_zero;
  d["max"] = t.max_finite;
  d["lowest"] = t.lowest;
  d["min_normal"] = t.min_normal;
  d["min_subnormal"] = t.min_subnormal;
  d["max_code"] = t.max_code;
  d["sign_mask"] = t.sign_mask;
  d["nan_encodings"] = std::string(t.nan_encodings);
  d["source"] = std::string(t.source);
  return d;
}

// Codes one per element: uint8 up to 8 bits, uint16 for 16, uint32 for 32.
int code_bytes(Format f) { return traits(f).bits > 16 ? 4 : traits(f).bits > 8 ? 2 : 1; }
py::array code_array(Format f, std::vector<py::ssize_t> shape, void* data = nullptr, py::handle base = py::handle()) {
  switch (code_bytes(f)) {
    case 4: return new_array<uint32_t>(std::move(shape), static_cast<uint32_t*>(data), base);
    case 2: return new_array<uint16_t>(std::move(shape), static_cast<uint16_t*>(data), base);
    default: return new_array<uint8_t>(std::move(shape), static_cast<uint8_t*>(data), base);
  }
}
const char* code_dtype_name(Format f) { return code_bytes(f) == 4 ? "uint32" : code_bytes(f) == 2 ? "uint16" : "uint8"; }
bool is_code_array(const py::array& a, int bytes) {
  return bytes == 4 ? py::isinstance<py::array_t<uint32_t>>(a)
         : bytes == 2 ? py::isinstance<py::array_t<uint16_t>>(a)
                      : py::isinstance<py::array_t<uint8_t>>(a);
}

std::vector<py::ssize_t> ssize_shape(const std::vector<int64_t>& s) { return {s.begin(), s.end()}; }

py::array encode_py(py::handle x, const std::string& fmt_name, bool saturate, bool stochastic, uint64_t seed,
                    bool packed) {
  const Format f = format_arg(fmt_name);
  FloatArray in(x, "encode: x");
  const float* src = in.contiguous();
  const size_t n = static_cast<size_t>(in.numel());
  const EncodeOptions opt{.saturate = saturate,
                          .rounding = stochastic ? Rounding::kStochastic : Rounding::kNearestEven,
                          .seed = seed};
  const int bits = traits(f).bits;
  if (packed || bits >= 8) {
    py::array out = packed ? py::array(new_array<uint8_t>({static_cast<py::ssize_t>(packed_bytes(f, n))}))
                           : code_array(f, ssize_shape(in.shape()));
    auto* dst = static_cast<uint8_t*>(out.mutable_data());
    py::gil_scoped_release nogil;
    encode_span(f, {src, n}, {dst, packed_bytes(f, n)}, opt);
    return out;
  }
  py::array out = new_array<uint8_t>(ssize_shape(in.shape()));
  auto* dst = static_cast<uint8_t*>(out.mutable_data());
  py::gil_scoped_release nogil;
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(encode(f, src[i], opt, i));
  return out;
}

py::array decode_py(py::handle codes, const std::string& fmt_name, bool packed, int64_t count) {
  const Format f = format_arg(fmt_name);
  const FormatTraits& t = traits(f);
  py::array a = as_array(codes);
  if (!a) bad_input("decode: codes: expected an array");
  if (!is_code_array(a, packed ? 1 : code_bytes(f))) {
    bad_input(fmt::format("decode: codes: expected dtype {} for {}{}, got {}", packed ? "uint8" : code_dtype_name(f), t.name,
                          packed ? " (packed bytes)" : "", dtype_str(a)));
  }
  a = py::module_::import("numpy").attr("ascontiguousarray")(a);
  const auto* src = static_cast<const uint8_t*>(a.data());
  if (packed) {
    if (count < 0) bad_input("decode: packed=True needs count (the number of elements)");
    const size_t n = static_cast<size_t>(count);
    if (static_cast<size_t>(a.size()) != packed_bytes(f, n)) {
      bad_input(fmt::format("decode: {} elements of {} take {} bytes, got {}", n, t.name, packed_bytes(f, n), a.size()));
    }
    py::array_t<float> out = new_array<float>({static_cast<py::ssize_t>(n)});
    float* dst = out.mutable_data();
    py::gil_scoped_release nogil;
    decode_span(f, {src, packed_bytes(f, n)}, {dst, n});
    return out;
  }
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  py::array_t<float> out = new_array<float>(shape);
  float* dst = out.mutable_data();
  const size_t n = static_cast<size_t>(a.size());
  if (t.bits >= 8) {
    py::gil_scoped_release nogil;
    decode_span(f, {src, n * static_cast<size_t>(t.bits / 8)}, {dst, n});
    return out;
  }
  const uint32_t mask = (1u << t.bits) - 1u;
  for (size_t i = 0; i < n; ++i) {
    if (src[i] > mask) {
      bad_input(fmt::format("decode: code 0x{:02x} at flat index {} does not fit in {}'s {} bits", src[i], i, t.name, t.bits));
    }
  }
  py::gil_scoped_release nogil;
  for (size_t i = 0; i < n; ++i) dst[i] = decode(f, src[i]);
  return out;
}

// ---- QuantSpec -----------------------------------------------------------------------------

const char* granularity_name(Granularity g) {
  static constexpr const char* k[] = {"tensor", "row", "col", "group", "block"};
  return k[static_cast<int>(g)];
}
const char* clip_name(ClipRule c) {
  static constexpr const char* k[] = {"absmax", "percentile", "mse"};
  return k[static_cast<int>(c)];
}
const char* scale_rule_name(ScaleRule r) {
  static constexpr const char* k[] = {"divide", "mxfloor", "pow2", "unit"};
  return k[static_cast<int>(r)];
}

// A QuantSpec argument: a QuantSpec, or its text form.
QuantSpec spec_arg(py::handle h) {
  if (py::isinstance<QuantSpec>(h)) return h.cast<QuantSpec>();
  if (py::isinstance<py::str>(h)) return unwrap(parse_spec(h.cast<std::string>()));
  bad_input(fmt::format("spec: expected a QuantSpec or its text form (e.g. 'int4:g128:sym:fp16'), got {}",
                        py::str(py::type::of(h)).cast<std::string>()));
}

struct PyScheme {
  std::string name, description;
  QuantSpec weights;
  std::optional<QuantSpec> activations;
};
PyScheme to_py(const Scheme& s) {
  PyScheme p{std::string(s.name), std::string(s.description), unwrap(parse_spec(s.weights)), std::nullopt};
  if (!s.activations.empty()) p.activations = unwrap(parse_spec(s.activations));
  return p;
}

// ---- QuantizedTensor views -----------------------------------------------------------------

// A numpy view of `data` owned by the Python object `self` (no copy): the array keeps `self` alive.
template <class T>
py::array view_of(py::handle self, T* data, std::vector<py::ssize_t> shape) {
  return new_array<T>(std::move(shape), data, self);
}

py::tuple shape_tuple(const Shape& s) {
  py::tuple t(s.ndim);
  for (int d = 0; d < s.ndim; ++d) t[static_cast<size_t>(d)] = s.dims[static_cast<size_t>(d)];
  return t;
}

py::array dequantize_py(const QuantizedTensor& q, py::object out, bool reference) {
  py::array result;
  std::optional<FloatArray> target;
  if (out.is_none()) {
    std::vector<py::ssize_t> shape(q.shape.dims.begin(), q.shape.dims.begin() + q.shape.ndim);
    result = new_array<float>(shape);
    target.emplace(result, "dequantize: out", true);
  } else {
    target.emplace(out, "dequantize: out", true);
    result = target->array();
  }
  const TensorView v = target->mutable_view();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = dequantize(q, v, reference);
  }
  check(s);
  return result;
}

py::array clip_array(const std::vector<float>& clip, const BlockGrid& g) {
  if (clip.empty()) return new_array<float>({0});
  py::array_t<float> a = new_array<float>({static_cast<py::ssize_t>(g.grid_rows), static_cast<py::ssize_t>(g.grid_cols)});
  std::copy(clip.begin(), clip.end(), a.mutable_data());
  return a;
}

std::vector<float> clip_arg(py::handle h) {
  if (h.is_none()) return {};
  FloatArray c(h, "clip");
  const float* p = c.contiguous();
  return {p, p + c.numel()};
}

KernelOp op_arg(const std::string& name) {
  for (KernelOp op : {KernelOp::kAuto, KernelOp::kGemmA8W8, KernelOp::kGemmA16W4, KernelOp::kGemmA8W4, KernelOp::kGemmFp8Block}) {
    if (op_name(op) == name) return op;
  }
  bad_input(fmt::format("op: '{}' is not a kernel op (accepted: auto, gemm_a8_w8, gemm_a16_w4, gemm_a8_w4, gemm_fp8_block)", name));
}

const char* kind_name(WeightKind k) {
  static constexpr const char* n[] = {"int8_row", "int4_group", "nf4_group", "e4m3_block"};
  return n[static_cast<int>(k)];
}

using Packed = std::shared_ptr<const PackedWeights>;

Packed packed_arg(py::handle w) {
  if (py::isinstance<PackedWeights>(w)) return w.cast<std::shared_ptr<PackedWeights>>();
  if (py::isinstance<QuantizedTensor>(w)) {
    const QuantizedTensor& q = w.cast<const QuantizedTensor&>();
    py::gil_scoped_release nogil;
    return std::make_shared<const PackedWeights>(unwrap(pack_weights(q)));
  }
  bad_input("matmul: w: expected a QuantizedTensor or PackedWeights (lowbit.pack_weights)");
}

py::object matmul_py(py::handle x, py::handle w, const std::string& op, bool return_kernel) {
  FloatArray a(x, "matmul: x");
  const Packed p = packed_arg(w);
  if (a.ndim() != 1 && a.ndim() != 2) bad_input(fmt::format("matmul: x must be (k) or (m, k); got {} dims", a.ndim()));
  const std::vector<int64_t> shape = a.shape();
  const int64_t m = a.ndim() == 2 ? shape[0] : 1, k = shape.back();
  if (k != p->k) bad_input(fmt::format("matmul: x has {} columns but the weights are (out {}, in {})", k, p->n, p->k));
  MatmulOptions opt;
  opt.op = op_arg(op);
  (void)unwrap(resolve_op(*p, opt));  // op / weights mismatch: ValueError before any work
  const std::string name = kernel_name(*p, opt);
  // Rows with unit element stride are read in place (ldx = row stride); anything else is copied dense.
  const float* xp = nullptr;
  int64_t ldx = k;
  if (a.ndim() == 2 && a.array().strides(1) == 4 && a.array().strides(0) >= 4 * k) {
    xp = static_cast<const float*>(a.array().data());
    ldx = a.array().strides(0) / 4;
  } else {
    xp = a.contiguous();
  }
  py::array_t<float> y = a.ndim() == 2 ? new_array<float>({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(p->n)})
                                       : new_array<float>({static_cast<py::ssize_t>(p->n)});
  float* yp = y.mutable_data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = matmul(*p, xp, m, ldx, yp, p->n, opt);
  }
  check(s);
  if (return_kernel) return py::make_tuple(y, name);
  return y;
}

}  // namespace

void init_formats_quant(py::module_& m) {
  // ---- formats
  m.def("formats", [] {
    py::dict d;
    for (const FormatTraits& t : kFormatTraits) d[py::str(std::string(t.name))] = traits_dict(t);
    return d;
  }, "formats() -> dict: the traits table as data, name -> traits (bits, kind, max, lowest, min_normal, ...).\n\n"
     "    lowbit.formats()['e4m3']['max']   # 448.0");
  m.def("traits", [](const std::string& name) { return traits_dict(traits(format_arg(name))); }, py::arg("format"),
        "traits(format) -> dict: one row of the traits table.\n\n    lowbit.traits('e2m1')['bits']   # 4");
  m.def("encode", &encode_py, py::arg("x"), py::arg("format"), py::kw_only(), py::arg("saturate") = false,
        py::arg("stochastic") = false, py::arg("seed") = 0, py::arg("packed") = false,
        "encode(x, format, *, saturate=False, stochastic=False, seed=0, packed=False) -> codes\n\n"
        "float32 array (any shape, any strides) -> codes, one per element (uint8 up to 8 bits, uint16, uint32), bit for\n"
        "bit what ml_dtypes' cast gives; round-to-nearest-even; saturate clamps overflow to +-max instead of the spec's\n"
        "inf/NaN; stochastic rounds with a counter RNG (same seed, same bits); packed gives the storage bytes (4-bit:\n"
        "two per byte, low nibble first; 3-bit: a bit stream).\n\n"
        "    lowbit.encode(np.float32([0.3, 470]), 'e4m3')   # array([ 42, 127], dtype=uint8)");
  m.def("decode", &decode_py, py::arg("codes"), py::arg("format"), py::kw_only(), py::arg("packed") = false,
        py::arg("count") = -1,
        "decode(codes, format, *, packed=False, count=-1) -> float32 array\n\n"
        "Codes one per element (the dtype encode returns) or, with packed=True, count elements' storage bytes.\n\n"
        "    lowbit.decode(np.uint8([0x7B, 0x7C]), 'e5m2')   # array([57344., inf], dtype=float32)");
  m.def("packed_bytes", [](const std::string& f, int64_t n) { return packed_bytes(format_arg(f), static_cast<size_t>(n)); },
        py::arg("format"), py::arg("n"), "packed_bytes(format, n) -> int: bytes n elements occupy.\n\n"
        "    lowbit.packed_bytes('int4', 5)   # 3");

  // ---- QuantSpec and schemes
  py::class_<QuantSpec>(m, "QuantSpec",
                        "How a tensor is quantized, parsed from its text form "
                        "<element>:<granularity>[:sym|asym][:<scale format>][:<option>...] (docs/schemes.md).\n\n"
                        "    s = lowbit.QuantSpec('int4:g128:sym:fp16'); s.group, s.bits_per_weight(4096, 4096)   # 128, 4.125")
      .def(py::init([](const std::string& text) { return unwrap(parse_spec(text)); }), py::arg("text"))
      .def("__str__", [](const QuantSpec& s) { return to_string(s); })
      .def("__repr__", [](const QuantSpec& s) { return fmt::format("QuantSpec('{}')", to_string(s)); })
      .def("__eq__", [](const QuantSpec& a, py::handle b) {
        return py::isinstance<QuantSpec>(b) ? a == b.cast<QuantSpec>()
               : py::isinstance<py::str>(b) ? parse_spec(b.cast<std::string>()).ok() && a == *parse_spec(b.cast<std::string>())
                                            : false;
      })
      .def("__hash__", [](const QuantSpec& s) { return py::hash(py::str(to_string(s))); })
      .def(py::pickle([](const QuantSpec& s) { return to_string(s); },
                      [](const std::string& t) { return unwrap(parse_spec(t)); }))
      .def_property_readonly("element", [](const QuantSpec& s) { return std::string(format_name(s.element)); })
      .def_property_readonly("granularity", [](const QuantSpec& s) { return granularity_name(s.granularity); })
      .def_property_readonly("group", [](const QuantSpec& s) { return s.group; })
      .def_property_readonly("block", [](const QuantSpec& s) -> py::object {
        if (s.granularity != Granularity::kBlock) return py::none();
        return py::make_tuple(s.block_rows, s.block_cols);
      })
      .def_property_readonly("symmetric", [](const QuantSpec& s) { return s.symmetric; })
      .def_property_readonly("scale_format", [](const QuantSpec& s) { return std::string(format_name(s.scale_format)); })
      .def_property_readonly("tensor_scale", [](const QuantSpec& s) { return s.tensor_scale; })
      .def_property_readonly("scale_rule", [](const QuantSpec& s) { return scale_rule_name(s.scale_rule); })
      .def_property_readonly("clip", [](const QuantSpec& s) { return clip_name(s.clip); })
      .def_property_readonly("percentile", [](const QuantSpec& s) { return s.percentile; })
      .def_property_readonly("stochastic", [](const QuantSpec& s) { return s.rounding == Rounding::kStochastic; })
      .def_property_readonly("seed", [](const QuantSpec& s) { return s.seed; })
      .def_property_readonly("saturate", [](const QuantSpec& s) { return s.saturate; })
      .def_property_readonly("qmax", [](const QuantSpec& s) { return element_qmax(s); })
      .def("bits_per_weight", [](const QuantSpec& s, int64_t rows, int64_t cols) {
        if (rows < 1 || cols < 1) bad_input(fmt::format("bits_per_weight: rows and cols must be >= 1 (got {}, {})", rows, cols));
        return bits_per_weight(s, rows, cols);
      }, py::arg("rows"), py::arg("cols"))
      .def("grid", [](const QuantSpec& s, int64_t rows, int64_t cols) {
        const BlockGrid g = block_grid(s, rows, cols);
        return py::make_tuple(g.grid_rows, g.grid_cols);
      }, py::arg("rows"), py::arg("cols"));

  py::class_<PyScheme>(m, "Scheme", "A named scheme (`lowbit schemes`): weight spec, dynamic activation spec or None.")
      .def_readonly("name", &PyScheme::name)
      .def_readonly("weights", &PyScheme::weights)
      .def_readonly("activations", &PyScheme::activations)
      .def_readonly("description", &PyScheme::description)
      .def("__repr__", [](const PyScheme& s) {
        return fmt::format("Scheme('{}', weights='{}', activations={})", s.name, to_string(s.weights),
                           s.activations ? "'" + to_string(*s.activations) + "'" : std::string("None"));
      });
  m.def("schemes", [] {
    py::dict d;
    for (const Scheme& s : named_schemes()) d[py::str(std::string(s.name))] = to_py(s);
    return d;
  }, "schemes() -> dict: the named schemes, name -> Scheme.\n\n    lowbit.schemes()['w4a16-g128'].weights   # QuantSpec('int4:g128:sym:fp16')");
  m.def("scheme", [](const std::string& name) { return to_py(unwrap(find_scheme(name))); }, py::arg("name"),
        "scheme(name) -> Scheme (ValueError listing the known names).\n\n    lowbit.scheme('w8a8').activations");

  // ---- QuantizedTensor
  py::class_<QuantizedTensor, QTensor>(m, "QuantizedTensor",
                                       "Codes + scales + zero points + spec. codes / scales / scale_codes / zero_points are "
                                       "numpy views of this object's buffers (no copy; writing them changes what dequantize "
                                       "reads) and keep it alive.\n\n"
                                       "    q = lowbit.quantize(w, 'int4:g128'); q.codes.shape   # (rows, packed bytes per row)")
      .def_property_readonly("spec", [](const QuantizedTensor& q) { return q.spec; })
      .def_property_readonly("shape", [](const QuantizedTensor& q) { return shape_tuple(q.shape); })
      .def_property_readonly("rows", [](const QuantizedTensor& q) { return q.rows; })
      .def_property_readonly("cols", [](const QuantizedTensor& q) { return q.cols; })
      .def_property_readonly("grid", [](const QuantizedTensor& q) {
        const BlockGrid g = q.grid();
        return py::make_tuple(g.grid_rows, g.grid_cols);
      })
      .def_property_readonly("tensor_scale", [](const QuantizedTensor& q) { return q.tensor_scale; })
      .def_property_readonly("storage_bytes", &QuantizedTensor::storage_bytes)
      .def_property_readonly("bits_per_weight", &QuantizedTensor::bits_per_weight)
      .def_property_readonly("codes", [](py::object self) {
        QuantizedTensor& q = self.cast<QuantizedTensor&>();
        return view_of(self, q.codes.data(), {q.rows, q.row_bytes});
      })
      .def_property_readonly("scales", [](py::object self) {
        QuantizedTensor& q = self.cast<QuantizedTensor&>();
        const BlockGrid g = q.grid();
        LOWBIT_CHECK(static_cast<int64_t>(q.scales.size()) == g.num_blocks(), "scales size");
        return view_of(self, q.scales.data(), {g.grid_rows, g.grid_cols});
      })
      .def_property_readonly("scale_codes", [](py::object self) {
        QuantizedTensor& q = self.cast<QuantizedTensor&>();
        const BlockGrid g = q.grid();
        LOWBIT_CHECK(static_cast<int64_t>(q.scale_codes.size()) == g.num_blocks() * code_bytes(q.spec.scale_format),
                     "scale codes size");
        return code_array(q.spec.scale_format, {g.grid_rows, g.grid_cols}, q.scale_codes.data(), self);
      })
      .def_property_readonly("zero_points", [](py::object self) -> py::object {
        QuantizedTensor& q = self.cast<QuantizedTensor&>();
        if (q.zero_points.empty()) return py::none();
        const BlockGrid g = q.grid();
        return view_of(self, q.zero_points.data(), {g.grid_rows, g.grid_cols});
      })
      .def("int_codes", [](const QuantizedTensor& q) {
        py::array_t<int32_t> a = new_array<int32_t>({static_cast<py::ssize_t>(q.rows), static_cast<py::ssize_t>(q.cols)});
        int32_t* p = a.mutable_data();
        for (int64_t r = 0; r < q.rows; ++r)
          for (int64_t c = 0; c < q.cols; ++c) p[r * q.cols + c] = q.code_at(r, c);
        return a;
      })
      .def("dequantize", [](const QuantizedTensor& q, py::object out) { return dequantize_py(q, out, false); },
           py::arg("out") = py::none())
      .def("__repr__", [](const QuantizedTensor& q) {
        return fmt::format("QuantizedTensor(shape={}, spec='{}', bits_per_weight={:.4f})", q.shape.to_string(),
                           to_string(q.spec), q.bits_per_weight());
      });

  m.def("quantize", [](py::handle x, py::handle spec, py::handle clip, const std::string& name, bool reference) {
    const QuantSpec s = spec_arg(spec);
    FloatArray a(x, "quantize: x");
    const std::vector<float> c = clip_arg(clip);
    QuantizeOptions opt;
    opt.name = name;
    opt.clip = c;
    opt.use_reference = reference;
    const ConstTensorView v = a.view();
    Result<QuantizedTensor> q = InvalidArgument("unset");
    {
      py::gil_scoped_release nogil;
      q = quantize(v, s, opt);
    }
    return std::make_shared<QuantizedTensor>(unwrap(std::move(q)));
  }, py::arg("x"), py::arg("spec"), py::kw_only(), py::arg("clip") = py::none(), py::arg("name") = "",
     py::arg("reference") = false,
     "quantize(x, spec, *, clip=None, name='', reference=False) -> QuantizedTensor\n\n"
     "x: float32, 1 to 4 dims, any strides (read in place); leading dims are rows, the last is cols. clip: static\n"
     "per-block clip values from an observer. Releases the GIL.\n\n"
     "    q = lowbit.quantize(np.random.rand(64, 256).astype(np.float32), 'int4:g128:sym:fp16')");
  // Benchmark baseline (bench/python_quantize.py): the same C++ quantize call timed in C++, `reps` times,
  // on the same array, so the binding's overhead is the difference measured in one process.
  m.def("_time_quantize", [](py::handle x, py::handle spec, int reps) {
    const QuantSpec s = spec_arg(spec);
    FloatArray a(x, "_time_quantize: x");
    const ConstTensorView v = a.view();
    std::vector<double> secs;
    Status st;
    {
      py::gil_scoped_release nogil;
      for (int i = 0; i < reps && st.ok(); ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        Result<QuantizedTensor> q = quantize(v, s);
        const auto t1 = std::chrono::steady_clock::now();
        if (!q.ok()) st = q.status();
        secs.push_back(std::chrono::duration<double>(t1 - t0).count());
      }
    }
    check(st);
    return secs;
  }, py::arg("x"), py::arg("spec"), py::arg("reps"));
  m.def("dequantize", &dequantize_py, py::arg("q"), py::kw_only(), py::arg("out") = py::none(),
        py::arg("reference") = false,
        "dequantize(q, *, out=None, reference=False) -> float32 array of q.shape (written into out, any strides, if given).\n\n"
        "    x_hat = lowbit.dequantize(q)");

  // ---- error metrics
  m.def("error_stats", [](py::handle x, py::handle y) {
    FloatArray a(x, "error_stats: x"), b(y, "error_stats: y");
    if (a.numel() != b.numel()) bad_input(fmt::format("error_stats: x has {} elements, y has {}", a.numel(), b.numel()));
    const float* pa = a.contiguous();
    const float* pb = b.contiguous();
    const size_t n = static_cast<size_t>(a.numel());
    ErrorStats e;
    {
      py::gil_scoped_release nogil;
      e = error_stats({pa, n}, {pb, n});
    }
    py::dict d;
    d["mse"] = e.mse;
    d["sqnr_db"] = e.sqnr_db;
    d["cosine"] = e.cosine;
    d["max_abs"] = e.max_abs;
    d["rel_frobenius"] = e.rel_frobenius;
    return d;
  }, py::arg("x"), py::arg("y"),
     "error_stats(x, y) -> dict: mse, sqnr_db, cosine, max_abs, rel_frobenius (accumulated in double).\n\n"
     "    lowbit.error_stats(x, lowbit.dequantize(lowbit.quantize(x, 'int4:g32')))['sqnr_db']");

  // ---- observers
  py::class_<AbsMaxObserver>(m, "AbsMaxObserver",
                             "Running max |x| per block of a spec over observe() calls: static scales.\n\n"
                             "    o = lowbit.AbsMaxObserver('int8:tensor'); o.observe(x); lowbit.quantize(x, 'int8:tensor', clip=o.clip())")
      .def(py::init([](py::handle spec, const std::string& name) { return unwrap(AbsMaxObserver::create(spec_arg(spec), name)); }),
           py::arg("spec"), py::arg("name") = "")
      .def("observe", [](AbsMaxObserver& o, py::handle x) { FloatArray a(x, "observe: x"); check(o.observe(a.view())); }, py::arg("x"))
      .def("clip", [](const AbsMaxObserver& o) { return clip_array(o.clip(), o.grid()); })
      .def_property_readonly("num_observed", &AbsMaxObserver::num_observed)
      .def_property_readonly("spec", &AbsMaxObserver::spec);
  py::class_<PercentileObserver>(m, "PercentileObserver",
                                 "The exact P-th percentile of |x| per block.\n\n    o = lowbit.PercentileObserver('int8:tensor', 99.9)")
      .def(py::init([](py::handle spec, double p, const std::string& name) {
             return unwrap(PercentileObserver::create(spec_arg(spec), p, name));
           }), py::arg("spec"), py::arg("percentile"), py::arg("name") = "")
      .def("observe", [](PercentileObserver& o, py::handle x) { FloatArray a(x, "observe: x"); check(o.observe(a.view())); }, py::arg("x"))
      .def("clip", [](const PercentileObserver& o) { return clip_array(o.clip(), o.grid()); })
      .def_property_readonly("num_observed", &PercentileObserver::num_observed)
      .def_property_readonly("spec", &PercentileObserver::spec);
  py::class_<MseObserver>(m, "MseObserver",
                          "Per block, the clip r * absmax (r in 1.00..0.50) with the smallest quantization MSE.\n\n"
                          "    o = lowbit.MseObserver('int4:g32')")
      .def(py::init([](py::handle spec, const std::string& name) { return unwrap(MseObserver::create(spec_arg(spec), name)); }),
           py::arg("spec"), py::arg("name") = "")
      .def("observe", [](MseObserver& o, py::handle x) { FloatArray a(x, "observe: x"); check(o.observe(a.view())); }, py::arg("x"))
      .def("clip", [](const MseObserver& o) {
        std::vector<float> c;
        {
          py::gil_scoped_release nogil;
          c = o.clip();
        }
        return clip_array(c, o.grid());
      })
      .def_property_readonly("num_observed", &MseObserver::num_observed)
      .def_property_readonly("spec", &MseObserver::spec);
  py::class_<AmaxHistory>(m, "AmaxHistory",
                          "Transformer Engine's delayed scaling: the scale of step t from the amaxes of earlier steps.\n\n"
                          "    h = lowbit.AmaxHistory(16, 0, 448.0); h.record(3.5); h.scale()")
      .def(py::init([](int len, int margin, float emax, const std::string& name) {
             return unwrap(AmaxHistory::create(len, margin, emax, name));
           }), py::arg("history_len"), py::arg("margin"), py::arg("element_max"), py::arg("name") = "")
      .def("record", [](AmaxHistory& h, float amax) { check(h.record(amax)); }, py::arg("amax"))
      .def("clip", &AmaxHistory::clip)
      .def("scale", &AmaxHistory::scale)
      .def_property_readonly("history", [](const AmaxHistory& h) { return std::vector<float>(h.history().begin(), h.history().end()); })
      .def_property_readonly("num_recorded", &AmaxHistory::num_recorded);
  m.def("dynamic_clip", [](py::handle x, py::handle spec, const std::string& name) {
    const QuantSpec s = spec_arg(spec);
    FloatArray a(x, "dynamic_clip: x");
    const ConstTensorView v = a.view();
    std::vector<float> c = unwrap(dynamic_clip(v, s, name));
    const int64_t cols = v.ndim() ? v.dim(v.ndim() - 1) : 1;
    return clip_array(c, block_grid(s, cols ? v.numel() / cols : 0, cols));
  }, py::arg("x"), py::arg("spec"), py::arg("name") = "",
     "dynamic_clip(x, spec, name='') -> (grid_rows, grid_cols) float32: per-block max |x| (dynamic quantization).\n\n"
     "    lowbit.dynamic_clip(x, 'int8:row')");

  // ---- kernels
  py::class_<PackedWeights, std::shared_ptr<PackedWeights>>(m, "PackedWeights",
                                                         "Weights repacked once into a kernel's layout (lowbit.pack_weights).")
      .def_property_readonly("n", [](const PackedWeights& p) { return p.n; })
      .def_property_readonly("k", [](const PackedWeights& p) { return p.k; })
      .def_property_readonly("kind", [](const PackedWeights& p) { return kind_name(p.kind); })
      .def_property_readonly("spec", [](const PackedWeights& p) { return p.spec; })
      .def_property_readonly("bytes", &PackedWeights::bytes)
      .def("kernel_name", [](const PackedWeights& p, const std::string& op) {
        MatmulOptions o;
        o.op = op_arg(op);
        (void)unwrap(resolve_op(p, o));
        return kernel_name(p, o);
      }, py::arg("op") = "auto");
  m.def("pack_weights", [](const QuantizedTensor& q) {
    Result<PackedWeights> p = InvalidArgument("unset");
    {
      py::gil_scoped_release nogil;
      p = pack_weights(q);
    }
    return std::make_shared<PackedWeights>(unwrap(std::move(p)));
  }, py::arg("q"), "pack_weights(q) -> PackedWeights (ValueError naming the specs kernels serve).\n\n"
                   "    p = lowbit.pack_weights(lowbit.quantize(w, 'int4:g128')); p.kernel_name()");
  m.def("kernel_supports", [](py::handle spec) { return kernel_supports(spec_arg(spec)); }, py::arg("spec"),
        "kernel_supports(spec) -> bool: whether a quantized kernel serves weights of this spec.");
  m.def("matmul", &matmul_py, py::arg("x"), py::arg("w"), py::kw_only(), py::arg("op") = "auto",
        py::arg("return_kernel") = false,
        "matmul(x, w, *, op='auto', return_kernel=False) -> y (m, n)  [or (y, kernel name)]\n\n"
        "y = x @ W.T through the kernel registry (the ISA is chosen at run time; LOWBIT_ISA forces one). x: (m, k) or (k)\n"
        "float32; w: QuantizedTensor (packed per call) or PackedWeights. op: auto | gemm_a8_w8 | gemm_a16_w4 |\n"
        "gemm_a8_w4 | gemm_fp8_block. Releases the GIL.\n\n"
        "    y, name = lowbit.matmul(x, lowbit.quantize(w, 'int4:g32'), return_kernel=True)   # 'gemm_a16_w4g32_f32__avx2'");
  m.def("kernels", [] {
    py::list out;
    for (const KernelInfo& k : available_kernels()) {
      py::dict d;
      d["name"] = k.name;
      d["op"] = std::string(op_name(k.op));
      d["isa"] = std::string(isa_name(k.isa));
      d["contract"] = k.contract;
      out.append(d);
    }
    return out;
  }, "kernels() -> list of dict: every kernel this build and CPU run (name, op, isa, contract).");
}

}  // namespace lowbit::python
