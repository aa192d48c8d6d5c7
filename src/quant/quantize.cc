// quantize / dequantize. The arithmetic is specified in docs/schemes.md; this file
// follows it step by step. Two paths compute the elements:
//   - the reference: one element at a time through the formats codec (encode/decode);
//   - the fast path: row kernels (quant_internal.h) and the bulk converters, used for
//     integer and fp8 elements with round-to-nearest-even; bit-identical to the reference.
// Work is threaded over rows (or block strips) with deterministic results.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "lowbit/convert.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"
#include "lowbit/ggml_quant.h"
#include "quant_internal.h"

namespace lowbit {
namespace quant_internal {
namespace {

float absmax_ref(const float* x, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}
void minmax_ref(const float* x, size_t n, float* lo, float* hi) {
  float a = x[0], b = x[0];
  for (size_t i = 1; i < n; ++i) {
    a = std::min(a, x[i]);
    b = std::max(b, x[i]);
  }
  *lo = a;
  *hi = b;
}
bool all_finite_ref(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}
void quant_int_ref(const float* x, size_t n, float s, float z, float lo, float hi, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const float v = std::clamp(x[i] / s + z, lo, hi);
    out[i] = static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(v)));
  }
}
void divide_ref(const float* x, size_t n, float s, float* v) {
  for (size_t i = 0; i < n; ++i) v[i] = x[i] / s;
}
void dequant_i8_ref(const int8_t* c, size_t n, float z, float s, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = (static_cast<float>(c[i]) - z) * s;
}
void dequant_u8_ref(const uint8_t* c, size_t n, float z, float s, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = (static_cast<float>(c[i]) - z) * s;
}
void rescale_ref(float* v, size_t n, float z, float s) {
  for (size_t i = 0; i < n; ++i) v[i] = (v[i] - z) * s;
}

}  // namespace

const QuantKernels& scalar_quant_kernels() {
  static const QuantKernels k{Isa::kScalar, absmax_ref, minmax_ref, all_finite_ref, quant_int_ref,
                              divide_ref,   dequant_i8_ref, dequant_u8_ref, rescale_ref};
  return k;
}

const QuantKernels* quant_kernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return &scalar_quant_kernels();
#if defined(LOWBIT_HAVE_AVX2)
    case Isa::kAvx2: return &avx2_quant_kernels();
#endif
    default: return nullptr;
  }
}

const QuantKernels& active_quant_kernels() {
  for (int level = static_cast<int>(active_isa()); level > 0; --level) {
    if (const QuantKernels* k = quant_kernels(static_cast<Isa>(level))) return *k;
  }
  return scalar_quant_kernels();
}

}  // namespace quant_internal

using namespace quant_internal;

namespace {

// ---- the 2-D view ---------------------------------------------------------------------

// Rows of an f32 tensor flattened to (rows, cols); rows are contiguous or gathered.
class Rows {
 public:
  explicit Rows(const Shape& shape) : shape_(shape) {
    cols_ = shape.ndim == 0 ? 1 : shape.dims[shape.ndim - 1];
    rows_ = cols_ == 0 ? 0 : shape.numel() / cols_;
    col_stride_ = shape.ndim == 0 ? 1 : shape.strides[shape.ndim - 1];
  }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  bool contiguous_rows() const { return col_stride_ == 1; }
  int64_t col_stride() const { return col_stride_; }
  // Element offset of (r, 0).
  int64_t row_offset(int64_t r) const {
    int64_t off = 0;
    for (int d = shape_.ndim - 2; d >= 0; --d) {
      off += (r % shape_.dims[d]) * shape_.strides[d];
      r /= shape_.dims[d];
    }
    return off;
  }

 private:
  Shape shape_;
  int64_t rows_ = 0, cols_ = 0, col_stride_ = 1;
};

const float* read_row(const float* base, const Rows& rows, int64_t r, std::vector<float>& tmp) {
  const float* p = base + rows.row_offset(r);
  if (rows.contiguous_rows()) return p;
  tmp.resize(static_cast<size_t>(rows.cols()));
  for (int64_t c = 0; c < rows.cols(); ++c) tmp[static_cast<size_t>(c)] = p[c * rows.col_stride()];
  return tmp.data();
}

// ggml block specs: rows of blocks in `codes`, chosen by the weighted search (ggml_quant.h).
Result<QuantizedTensor> quantize_ggml_tensor(ConstTensorView x, const Rows& rows, const QuantSpec& spec,
                                             const QuantizeOptions& opt, const std::string& name) {
  const GgmlBlockInfo* info = ggml_block_info(spec.ggml);
  const int64_t R = rows.rows(), C = rows.cols();
  if (C % info->block_size != 0) {
    return InvalidArgument(fmt::format("{}: rows of {} values are not a multiple of {}, which {} needs", name, C,
                                       info->block_size, info->name));
  }
  if (!opt.importance.empty() && static_cast<int64_t>(opt.importance.size()) != C) {
    return InvalidArgument(fmt::format("{}: importance has {} values, expected {}", name, opt.importance.size(), C));
  }
  QuantizedTensor q = empty_quantized(spec, R, C);
  q.shape = x.shape();
  const float* base = x.data_as<float>();
  const float* imp = opt.importance.empty() ? nullptr : opt.importance.data();
  std::atomic<int64_t> bad_row{-1};
  parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = read_row(base, rows, r, tmp);
      for (int64_t c = 0; c < C; ++c) {
        if (!std::isfinite(row[c])) bad_row = r;
      }
      quantize_row_ggml(spec.ggml, row, imp, q.codes.data() + r * q.row_bytes, C);
    }
  });
  if (bad_row >= 0) return InvalidArgument(fmt::format("{}: non-finite value in row {}", name, bad_row.load()));
  return q;
}

// ---- per-block scale ------------------------------------------------------------------

bool is_signed_int(Format f) { return traits(f).kind == FormatKind::kInteger && traits(f).is_signed; }
bool is_int(Format f) { return traits(f).kind == FormatKind::kInteger; }

int emax_of(Format f) { return std::ilogb(traits(f).max_finite); }

// Round a scale to the scale format (RNE, non-saturating) and back.
float round_to_scale_format(Format sf, float s, uint32_t* code) {
  if (sf == Format::kFp16) {  // the span converters: encode's bits (convert_simd_test), a fraction of its time
    uint16_t h = 0;
    float back = 0.0f;
    f32_to_f16(std::span<const float>(&s, 1), std::span<uint16_t>(&h, 1));
    f16_to_f32(std::span<const uint16_t>(&h, 1), std::span<float>(&back, 1));
    *code = h;
    return back;
  }
  *code = encode(sf, s, EncodeOptions{});
  return decode(sf, *code);
}

float pow2(int e) { return std::ldexp(1.0f, e); }

struct BlockScale {
  float scale = 0.0f;       // effective dequantization scale (tensor scale folded in)
  int32_t zero = 0;         // zero point (affine)
  uint32_t scale_code = 0;  // in the scale format
  bool ok = true;
};

// Symmetric scale from a clip value c >= 0. `g` is the NVFP4 tensor scale (1 otherwise).
BlockScale symmetric_scale(const QuantSpec& spec, float c, float g) {
  BlockScale b;
  const float qmax = static_cast<float>(element_qmax(spec));
  const Format sf = spec.scale_format;
  if (spec.tensor_scale) {
    // NVFP4: block scale in e4m3 (saturating) relative to the fp32 tensor scale.
    const float sb = (c / qmax) / g;
    b.scale_code = encode(Format::kE4m3, sb, EncodeOptions{.saturate = true});
    b.scale = decode(Format::kE4m3, b.scale_code) * g;
    return b;
  }
  if (spec.scale_rule == ScaleRule::kUnit) {  // a plain cast: scale 1 whatever the data
    b.scale = round_to_scale_format(sf, 1.0f, &b.scale_code);
    return b;
  }
  if (c == 0.0f) {  // all-zero block: scale 0 (e8m0, which has no zero, stores 2^-127)
    b.scale_code = sf == Format::kE8m0 ? 0u : encode(sf, 0.0f);
    return b;
  }
  float s = 0.0f;
  switch (spec.scale_rule) {
    case ScaleRule::kDivide: s = c / qmax; break;
    case ScaleRule::kPow2Ceil: {
      const float r = c / qmax;
      int e = std::ilogb(r);
      if (pow2(e) < r) ++e;  // ceil(log2 r)
      s = pow2(std::clamp(e, -149, 127));
      break;
    }
    case ScaleRule::kMxFloor: {
      const int e = std::clamp(std::ilogb(c) - emax_of(spec.element), -127, 127);
      s = std::ldexp(1.0f, e);
      break;
    }
    case ScaleRule::kUnit: s = 1.0f; break;
  }
  b.scale = round_to_scale_format(sf, s, &b.scale_code);
  b.ok = std::isfinite(b.scale) && b.scale > 0.0f;
  return b;
}

// Affine (integer elements): lo <= 0 <= hi.
BlockScale affine_scale(const QuantSpec& spec, float lo, float hi) {
  BlockScale b;
  const FormatTraits& t = traits(spec.element);
  const float qmin = static_cast<float>(t.lowest), qmax = static_cast<float>(t.max_finite);
  if (hi - lo == 0.0f) {  // constant zero block: scale 0 (e8m0, which has no zero, stores 2^-127)
    b.scale_code = spec.scale_format == Format::kE8m0 ? 0u : encode(spec.scale_format, 0.0f);
    return b;
  }
  b.scale = round_to_scale_format(spec.scale_format, (hi - lo) / (qmax - qmin), &b.scale_code);
  b.ok = std::isfinite(b.scale) && b.scale > 0.0f;
  if (b.ok) b.zero = static_cast<int32_t>(std::clamp(qmin - std::nearbyint(lo / b.scale), qmin, qmax));
  return b;
}

// ---- elements -------------------------------------------------------------------------

// v-space clamp bounds for integer elements: symmetric signed ints never use -qmax-1.
void int_bounds(const QuantSpec& spec, float* lo, float* hi) {
  const FormatTraits& t = traits(spec.element);
  *hi = static_cast<float>(t.max_finite);
  *lo = spec.symmetric && is_signed_int(spec.element) ? -*hi : static_cast<float>(t.lowest);
}

// The reference for one element (docs/schemes.md step 4).
uint32_t quantize_element(const QuantSpec& spec, float x, float s, int32_t z, uint64_t index) {
  float v = s == 0.0f ? 0.0f : x / s;
  if (is_int(spec.element)) {
    float lo, hi;
    int_bounds(spec, &lo, &hi);
    if (!spec.symmetric) v += static_cast<float>(z);
    v = std::clamp(v, lo, hi);
  }
  const EncodeOptions opt{.saturate = spec.saturate, .rounding = spec.rounding, .seed = spec.seed};
  return encode(spec.element, v, opt, index);
}

float dequantize_element(const QuantSpec& spec, uint32_t code, float s, int32_t z) {
  return (decode(spec.element, code) - static_cast<float>(z)) * s;
}

bool fast_elements(const QuantSpec& spec) {
  if (spec.rounding != Rounding::kNearestEven) return false;
  return is_int(spec.element) || spec.element == Format::kE4m3 || spec.element == Format::kE5m2;
}

// Codes of one row segment into `out` (one byte per element; element formats <= 8 bits).
void quantize_segment_fast(const QuantKernels& k, const QuantSpec& spec, const float* x, size_t n, float s,
                           int32_t z, uint8_t* out, std::vector<float>& tmp) {
  if (is_int(spec.element)) {
    float lo, hi;
    int_bounds(spec, &lo, &hi);
    if (s == 0.0f) {  // v = 0 for every element
      const float v = std::clamp(static_cast<float>(spec.symmetric ? 0 : z), lo, hi);
      std::memset(out, static_cast<uint8_t>(static_cast<int32_t>(v)), n);
      return;
    }
    k.quant_int(x, n, s, spec.symmetric ? 0.0f : static_cast<float>(z), lo, hi, out);
    return;
  }
  tmp.resize(n);
  if (s == 0.0f) {
    std::fill(tmp.begin(), tmp.end(), 0.0f);
  } else {
    k.divide(x, n, s, tmp.data());
  }
  const EncodeOptions opt{.saturate = spec.saturate};
  if (spec.element == Format::kE4m3) {
    f32_to_e4m3(tmp, {out, n}, opt);
  } else {
    f32_to_e5m2(tmp, {out, n}, opt);
  }
}

// Store codes (one uint32 or one byte per element) as a packed row (the layout load_code reads).
template <class Code>
void pack_row(Format f, const Code* codes, int64_t n, uint8_t* out) {
  switch (traits(f).bits) {
    case 4: {  // whole pairs in a loop the compiler vectorizes (codes and out never overlap), then the odd tail
      const Code* __restrict c = codes;
      uint8_t* __restrict o = out;
      const int64_t pairs = n / 2;
      for (int64_t i = 0; i < pairs; ++i) {
        o[i] = static_cast<uint8_t>((static_cast<uint32_t>(c[2 * i]) & 0xFu) | ((static_cast<uint32_t>(c[2 * i + 1]) & 0xFu) << 4));
      }
      if (n % 2) o[pairs] = static_cast<uint8_t>(static_cast<uint32_t>(c[n - 1]) & 0xFu);
      return;
    }
    case 8:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(codes[i]);
      return;
    default:
      if (traits(f).bits < 8) std::fill(out, out + packed_bytes(f, static_cast<size_t>(n)), uint8_t{0});
      for (int64_t i = 0; i < n; ++i) store_code(f, out, static_cast<size_t>(i), static_cast<uint32_t>(codes[i]));
  }
}

// Raw code of element i of a packed row.
uint32_t unpack_code(Format f, const uint8_t* row, int64_t i) { return load_code(f, row, static_cast<size_t>(i)); }

// ---- clip search (percentile, MSE) -------------------------------------------------------

float percentile_abs(std::vector<float>& v, double p) {
  if (v.empty()) return 0.0f;
  for (float& x : v) x = std::fabs(x);
  const size_t idx = percentile_index(p, v.size());
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(idx), v.end());
  return v[idx];
}

float percentile_signed(std::vector<float> v, double p) {  // copy: selection reorders
  const size_t idx = percentile_index(p, v.size());
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(idx), v.end());
  return v[idx];
}

double block_mse(const QuantSpec& spec, const std::vector<float>& x, const BlockScale& b) {
  double err = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    QuantSpec rne = spec;
    rne.rounding = Rounding::kNearestEven;  // the search compares deterministic errors
    const float y = dequantize_element(rne, quantize_element(rne, x[i], b.scale, b.zero, 0), b.scale, b.zero);
    const double d = static_cast<double>(x[i]) - y;
    err += d * d;
  }
  return err;
}

struct BlockStats {
  float amax = 0.0f;  // max |x|
  float lo = 0.0f;    // min(min x, 0)
  float hi = 0.0f;    // max(max x, 0)
};

}  // namespace

Result<QuantizedTensor> quantize(ConstTensorView x, const QuantSpec& spec, const QuantizeOptions& opt) {
  const std::string name = opt.name.empty() ? std::string("tensor") : "tensor '" + opt.name + "'";
  if (Status s = validate(spec); !s.ok()) return InvalidArgument(fmt::format("{}: {}", name, s.message()));
  if (x.dtype() != DType::kF32) {
    return InvalidArgument(fmt::format("{}: quantize expects f32 input, got {}", name, dtype_name(x.dtype())));
  }
  if (x.ndim() < 1) return InvalidArgument(fmt::format("{}: quantize expects at least one dimension", name));

  const Rows rows(x.shape());
  if (spec.ggml != GgmlType::kF32) return quantize_ggml_tensor(x, rows, spec, opt, name);
  const int64_t R = rows.rows(), C = rows.cols();
  const float* base = x.data_as<float>();
  const BlockGrid grid = block_grid(spec, R, C);
  const QuantKernels& k = opt.use_reference ? scalar_quant_kernels() : active_quant_kernels();

  QuantizedTensor q;
  q.spec = spec;
  q.shape = x.shape();
  q.rows = R;
  q.cols = C;
  q.row_bytes = static_cast<int64_t>(packed_bytes(spec.element, static_cast<size_t>(C)));
  q.codes.assign(static_cast<size_t>(R * q.row_bytes), 0);
  const int64_t nblocks = grid.num_blocks();
  if (!opt.clip.empty()) {
    if (!spec.symmetric) return InvalidArgument(fmt::format("{}: static clip values need a symmetric spec", name));
    if (static_cast<int64_t>(opt.clip.size()) != nblocks) {
      return InvalidArgument(fmt::format("{}: {} static clip values for a grid of {} blocks", name, opt.clip.size(), nblocks));
    }
    for (size_t b = 0; b < opt.clip.size(); ++b) {
      if (!(opt.clip[b] >= 0.0f) || !std::isfinite(opt.clip[b])) {
        return InvalidArgument(fmt::format("{}: static clip value {} of block {} must be finite and >= 0", name, opt.clip[b], b));
      }
    }
  }

  // 1. Finiteness, then per-block statistics. Rows are independent when blocks are one row
  //    tall: each row is checked and reduced while it is in cache (one pass over the tensor);
  //    taller blocks are reduced strip by strip after the check.
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  std::vector<BlockStats> stats(static_cast<size_t>(nblocks));
  const bool need_minmax = !spec.symmetric;
  const auto row_stats = [&](const float* row, int64_t gr, BlockStats* st) {
    for (int64_t gc = 0; gc < grid.grid_cols; ++gc) {
      const int64_t c0 = gc * grid.block_cols, n = std::min(C, c0 + grid.block_cols) - c0;
      BlockStats& b = st[gr * grid.grid_cols + gc];
      b.amax = std::max(b.amax, k.absmax(row + c0, static_cast<size_t>(n)));
      if (need_minmax) {
        float lo, hi;
        k.minmax(row + c0, static_cast<size_t>(n), &lo, &hi);
        b.lo = std::min(b.lo, lo);
        b.hi = std::max(b.hi, hi);
      }
    }
  };
  const bool row_blocks = grid.block_rows == 1;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(C, 1));
  parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = read_row(base, rows, r, tmp);
      if (k.all_finite(row, static_cast<size_t>(C))) {
        if (row_blocks) row_stats(row, r, stats.data());
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        if (!std::isfinite(row[c])) {
          int64_t cur = first_bad.load();
          const int64_t idx = r * C + c;
          while (idx < cur && !first_bad.compare_exchange_weak(cur, idx)) {}
          break;
        }
      }
    }
  });
  if (const int64_t bad = first_bad.load(); bad != std::numeric_limits<int64_t>::max()) {
    std::vector<float> tmp;
    const float v = read_row(base, rows, bad / C, tmp)[bad % C];
    return InvalidArgument(fmt::format("{}: {} at row {}, column {} (of {} x {}); quantize needs finite values", name,
                                       std::isnan(v) ? "NaN" : (v > 0 ? "+inf" : "-inf"), bad / C, bad % C, R, C));
  }
  if (!row_blocks) {
    const int64_t strip_elems = std::max<int64_t>(1, grid.block_rows * C);
    parallel_for(0, grid.grid_rows, std::max<int64_t>(1, 65536 / strip_elems), [&](int64_t g0, int64_t g1) {
      std::vector<float> tmp;
      for (int64_t gr = g0; gr < g1; ++gr) {
        const int64_t r_end = std::min(R, (gr + 1) * grid.block_rows);
        for (int64_t r = gr * grid.block_rows; r < r_end; ++r) row_stats(read_row(base, rows, r, tmp), gr, stats.data());
      }
    });
  }

  // 2. Clip values per block (absmax, static from an observer, percentile or MSE search).
  auto gather_block = [&](int64_t b, std::vector<float>& out) {
    const int64_t gr = b / grid.grid_cols, gc = b % grid.grid_cols;
    const int64_t r0 = gr * grid.block_rows, r1 = std::min(R, r0 + grid.block_rows);
    const int64_t c0 = gc * grid.block_cols, c1 = std::min(C, c0 + grid.block_cols);
    out.clear();
    std::vector<float> tmp;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = read_row(base, rows, r, tmp);
      out.insert(out.end(), row + c0, row + c1);
    }
  };
  float tensor_amax = 0.0f;
  for (const BlockStats& st : stats) tensor_amax = std::max(tensor_amax, st.amax);
  q.tensor_scale = 1.0f;
  if (spec.tensor_scale) {
    const float g = tensor_amax / (static_cast<float>(traits(Format::kE4m3).max_finite) * static_cast<float>(element_qmax(spec)));
    q.tensor_scale = g > 0.0f ? g : 1.0f;
  }

  std::vector<BlockScale> scales(static_cast<size_t>(nblocks));
  std::atomic<int64_t> first_unfit{std::numeric_limits<int64_t>::max()};
  // Scales are cheap unless a block's samples must be searched (percentile, MSE).
  const bool searching = spec.clip != ClipRule::kAbsMax && opt.clip.empty();
  const int64_t block_elems = std::max<int64_t>(1, grid.block_rows * grid.block_cols);
  const int64_t scale_grain = searching ? std::max<int64_t>(1, 4096 / block_elems) : 16384;
  parallel_for(0, nblocks, scale_grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> samples;
    for (int64_t b = b0; b < b1; ++b) {
      const BlockStats& st = stats[static_cast<size_t>(b)];
      BlockScale bs;
      if (!spec.symmetric) {
        float lo = st.lo, hi = st.hi;
        if (spec.clip == ClipRule::kPercentile) {
          gather_block(b, samples);
          lo = std::min(0.0f, percentile_signed(samples, 100.0 - spec.percentile));
          hi = std::max(0.0f, percentile_signed(samples, spec.percentile));
        }
        bs = affine_scale(spec, lo, hi);
        if (spec.clip == ClipRule::kMse && bs.ok && bs.scale > 0.0f) {
          gather_block(b, samples);
          double best = block_mse(spec, samples, bs);
          for (int i = 1; i <= 50; ++i) {
            const float r = 1.0f - 0.01f * static_cast<float>(i);
            const BlockScale cand = affine_scale(spec, lo * r, hi * r);
            if (!cand.ok) continue;
            const double e = block_mse(spec, samples, cand);
            if (e < best) best = e, bs = cand;
          }
        }
      } else {
        float c = st.amax;
        if (!opt.clip.empty()) {
          c = opt.clip[static_cast<size_t>(b)];
        } else if (spec.clip == ClipRule::kPercentile) {
          gather_block(b, samples);
          c = percentile_abs(samples, spec.percentile);
        }
        bs = symmetric_scale(spec, c, q.tensor_scale);
        if (opt.clip.empty() && spec.clip == ClipRule::kMse && bs.ok && c > 0.0f) {
          gather_block(b, samples);
          double best = block_mse(spec, samples, bs);
          for (int i = 1; i <= 50; ++i) {
            const BlockScale cand = symmetric_scale(spec, c * (1.0f - 0.01f * static_cast<float>(i)), q.tensor_scale);
            if (!cand.ok) continue;
            const double e = block_mse(spec, samples, cand);
            if (e < best) best = e, bs = cand;
          }
        }
      }
      if (!bs.ok) {
        int64_t cur = first_unfit.load();
        while (b < cur && !first_unfit.compare_exchange_weak(cur, b)) {}
      }
      scales[static_cast<size_t>(b)] = bs;
    }
  });
  if (const int64_t b = first_unfit.load(); b != std::numeric_limits<int64_t>::max()) {
    const BlockStats& st = stats[static_cast<size_t>(b)];
    return InvalidArgument(fmt::format(
        "{}: scale format {} cannot hold the scale of block {} (row {}, column {}; block absmax {:.9g}); use a wider "
        "scale format (fp32) or a different clip",
        name, format_name(spec.scale_format), b, (b / grid.grid_cols) * grid.block_rows,
        (b % grid.grid_cols) * grid.block_cols, st.amax));
  }
  q.scales.resize(static_cast<size_t>(nblocks));
  std::vector<uint32_t> scale_codes(static_cast<size_t>(nblocks));
  if (!spec.symmetric) q.zero_points.resize(static_cast<size_t>(nblocks));
  for (int64_t b = 0; b < nblocks; ++b) {
    q.scales[static_cast<size_t>(b)] = scales[static_cast<size_t>(b)].scale;
    scale_codes[static_cast<size_t>(b)] = scales[static_cast<size_t>(b)].scale_code;
    if (!spec.symmetric) q.zero_points[static_cast<size_t>(b)] = scales[static_cast<size_t>(b)].zero;
  }
  q.scale_codes.assign(packed_bytes(spec.scale_format, static_cast<size_t>(nblocks)), 0);
  pack_row(spec.scale_format, scale_codes.data(), nblocks, q.scale_codes.data());

  // 3. Elements, row by row.
  const bool fast = !opt.use_reference && fast_elements(spec);
  // fp16 / bf16 elements (a cast such as the embedding's fp16:tensor:unit): x / s by the divide
  // kernel, then the F16C / bf16 span converters straight into the row's 16-bit codes.
  const bool wide16 = !opt.use_reference && spec.rounding == Rounding::kNearestEven &&
                      (spec.element == Format::kFp16 || spec.element == Format::kBf16);
  parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp, vtmp;
    std::vector<uint8_t> bytes(fast ? static_cast<size_t>(C) : 0);
    std::vector<uint32_t> codes(fast || wide16 ? 0 : static_cast<size_t>(C));
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = read_row(base, rows, r, tmp);
      const int64_t gr = r / grid.block_rows;
      if (wide16) {
        uint8_t* out = q.codes.data() + r * q.row_bytes;
        for (int64_t gc = 0; gc < grid.grid_cols; ++gc) {
          const int64_t c0 = gc * grid.block_cols, n = std::min(C, c0 + grid.block_cols) - c0;
          const float s = scales[static_cast<size_t>(gr * grid.grid_cols + gc)].scale;
          vtmp.resize(static_cast<size_t>(n));
          if (s == 0.0f) {
            std::fill(vtmp.begin(), vtmp.end(), 0.0f);
          } else {
            k.divide(row + c0, static_cast<size_t>(n), s, vtmp.data());
          }
          encode_span(spec.element, vtmp, {out + 2 * c0, static_cast<size_t>(2 * n)}, {.saturate = spec.saturate});
        }
        continue;
      }
      for (int64_t gc = 0; gc < grid.grid_cols; ++gc) {
        const int64_t c0 = gc * grid.block_cols, n = std::min(C, c0 + grid.block_cols) - c0;
        const BlockScale& bs = scales[static_cast<size_t>(gr * grid.grid_cols + gc)];
        if (fast) {
          quantize_segment_fast(k, spec, row + c0, static_cast<size_t>(n), bs.scale, bs.zero, bytes.data() + c0, vtmp);
        } else {
          for (int64_t c = c0; c < c0 + n; ++c) {
            codes[static_cast<size_t>(c)] = quantize_element(spec, row[c], bs.scale, bs.zero, static_cast<uint64_t>(r * C + c));
          }
        }
      }
      uint8_t* out = q.codes.data() + r * q.row_bytes;
      if (fast) {
        pack_row(spec.element, bytes.data(), C, out);
      } else {
        pack_row(spec.element, codes.data(), C, out);
      }
    }
  });
  return q;
}

Status dequantize(const QuantizedTensor& q, TensorView out, bool use_reference) {
  if (out.dtype() != DType::kF32) return InvalidArgument("dequantize: output must be f32, got " + std::string(dtype_name(out.dtype())));
  bool same = out.ndim() == q.shape.ndim;
  for (int d = 0; same && d < out.ndim(); ++d) same = out.dim(d) == q.shape.dims[d];
  if (!same) {
    return InvalidArgument(fmt::format("dequantize: output shape {} does not match the quantized tensor's {}",
                                       out.shape().to_string(), q.shape.to_string()));
  }
  const Rows rows(out.shape());
  if (q.spec.ggml != GgmlType::kF32) {
    parallel_for(0, q.rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> vals(static_cast<size_t>(q.cols));
      for (int64_t r = r0; r < r1; ++r) {
        dequantize_row(q.spec.ggml, q.codes.data() + r * q.row_bytes, vals.data(), q.cols);
        float* dst = out.data_as<float>() + rows.row_offset(r);
        for (int64_t c = 0; c < q.cols; ++c) dst[c * rows.col_stride()] = vals[static_cast<size_t>(c)];
      }
    });
    return OkStatus();
  }
  const int64_t R = q.rows, C = q.cols;
  const BlockGrid grid = q.grid();
  const QuantSpec& spec = q.spec;
  const QuantKernels& k = use_reference ? scalar_quant_kernels() : active_quant_kernels();
  float* base = out.data_as<float>();
  const bool int8ish = is_int(spec.element);
  const bool fp8 = spec.element == Format::kE4m3 || spec.element == Format::kE5m2;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(C, 1));
  parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> vals(static_cast<size_t>(C));
    std::vector<uint8_t> bytes;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = q.codes.data() + r * q.row_bytes;
      const int64_t gr = r / grid.block_rows;
      if (use_reference) {
        for (int64_t c = 0; c < C; ++c) {
          const size_t b = static_cast<size_t>(gr * grid.grid_cols + c / grid.block_cols);
          const int32_t z = spec.symmetric ? 0 : q.zero_points[b];
          vals[static_cast<size_t>(c)] = dequantize_element(spec, unpack_code(spec.element, row, c), q.scales[b], z);
        }
      } else {
        const uint8_t* codes8 = row;
        if (const int bits = traits(spec.element).bits; bits < 8 && int8ish) {
          bytes.resize(static_cast<size_t>(C));
          const bool sgn = is_signed_int(spec.element);
          const uint32_t top = 1u << (bits - 1);
          for (int64_t c = 0; c < C; ++c) {
            uint32_t v = unpack_code(spec.element, row, c);
            if (sgn && (v & top)) v |= ~((top << 1) - 1u);  // sign-extend the sub-byte code
            bytes[static_cast<size_t>(c)] = static_cast<uint8_t>(v);
          }
          codes8 = bytes.data();
        } else if (fp8) {
          decode_span(spec.element, {row, static_cast<size_t>(C)}, vals);
        } else if (spec.element == Format::kFp16 || spec.element == Format::kBf16) {
          decode_span(spec.element, {row, static_cast<size_t>(2 * C)}, vals);
        } else if (!int8ish) {
          for (int64_t c = 0; c < C; ++c) vals[static_cast<size_t>(c)] = decode(spec.element, unpack_code(spec.element, row, c));
        }
        for (int64_t gc = 0; gc < grid.grid_cols; ++gc) {
          const int64_t c0 = gc * grid.block_cols, n = std::min(C, c0 + grid.block_cols) - c0;
          const size_t b = static_cast<size_t>(gr * grid.grid_cols + gc);
          const float s = q.scales[b];
          const float z = spec.symmetric ? 0.0f : static_cast<float>(q.zero_points[b]);
          float* dst = vals.data() + c0;
          if (int8ish && is_signed_int(spec.element)) {
            k.dequant_i8(reinterpret_cast<const int8_t*>(codes8) + c0, static_cast<size_t>(n), z, s, dst);
          } else if (int8ish) {
            k.dequant_u8(codes8 + c0, static_cast<size_t>(n), z, s, dst);
          } else {
            k.rescale(dst, static_cast<size_t>(n), z, s);
          }
        }
      }
      float* dst = base + rows.row_offset(r);
      if (rows.contiguous_rows()) {
        std::memcpy(dst, vals.data(), static_cast<size_t>(C) * sizeof(float));
      } else {
        for (int64_t c = 0; c < C; ++c) dst[c * rows.col_stride()] = vals[static_cast<size_t>(c)];
      }
    }
  });
  return OkStatus();
}

uint32_t quantize_value(const QuantSpec& spec, float x, float scale, int32_t zero, uint64_t index) {
  return quantize_element(spec, x, scale, zero, index);
}

float dequantize_value(const QuantSpec& spec, uint32_t code, float scale, int32_t zero) {
  return dequantize_element(spec, code, scale, zero);
}

ElementRounder::ElementRounder(const QuantSpec& spec) : spec_(spec) {
  fast_ = is_int(spec.element) && spec.rounding == Rounding::kNearestEven;
  if (!fast_) return;
  int_bounds(spec, &lo_, &hi_);
  const int bits = traits(spec.element).bits;
  mask_ = bits >= 32 ? ~0u : (1u << bits) - 1u;
}

QuantizedTensor empty_quantized(const QuantSpec& spec, int64_t rows, int64_t cols) {
  QuantizedTensor q;
  q.spec = spec;
  const int64_t dims[2] = {rows, cols};
  q.shape = Shape::row_major(dims);
  q.rows = rows;
  q.cols = cols;
  if (spec.ggml != GgmlType::kF32) {  // the blocks carry their scales in the codes
    q.row_bytes = ggml_row_bytes(spec.ggml, cols);
    q.codes.assign(static_cast<size_t>(rows * q.row_bytes), 0);
    return q;
  }
  q.row_bytes = static_cast<int64_t>(packed_bytes(spec.element, static_cast<size_t>(cols)));
  q.codes.assign(static_cast<size_t>(rows * q.row_bytes), 0);
  const int64_t nblocks = q.grid().num_blocks();
  q.scale_codes.assign(packed_bytes(spec.scale_format, static_cast<size_t>(nblocks)), 0);
  q.scales.assign(static_cast<size_t>(nblocks), 0.0f);
  if (!spec.symmetric) q.zero_points.assign(static_cast<size_t>(nblocks), 0);
  return q;
}

void set_code(QuantizedTensor& q, int64_t r, int64_t c, uint32_t code) {
  LOWBIT_CHECK(r >= 0 && r < q.rows && c >= 0 && c < q.cols, "set_code: element out of range");
  uint8_t* row = q.codes.data() + r * q.row_bytes;
  store_code(q.spec.element, row, static_cast<size_t>(c), code);
}

void copy_block_params(const QuantizedTensor& src, int64_t src_block, QuantizedTensor& dst, int64_t dst_block) {
  LOWBIT_CHECK(src.spec == dst.spec, "copy_block_params: specs differ");
  const Format sf = src.spec.scale_format;
  const int bytes = traits(sf).bits / 8;
  LOWBIT_CHECK(bytes >= 1, "copy_block_params: sub-byte scale format");
  std::memcpy(dst.scale_codes.data() + dst_block * bytes, src.scale_codes.data() + src_block * bytes, static_cast<size_t>(bytes));
  dst.scales[static_cast<size_t>(dst_block)] = src.scales[static_cast<size_t>(src_block)];
  if (!src.spec.symmetric) dst.zero_points[static_cast<size_t>(dst_block)] = src.zero_points[static_cast<size_t>(src_block)];
  dst.tensor_scale = src.tensor_scale;
}

}  // namespace lowbit
