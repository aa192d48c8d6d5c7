// FakeQuant: the deployment quantizer in a training forward pass and its clipped
// straight-through estimator (include/lowbit/qat.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/formats.h"
#include "lowbit/parallel.h"
#include "lowbit/qat.h"

namespace lowbit {
namespace {
// Elements per parallel_for chunk: small tensors run inline (an OpenMP fork/join costs more than
// a small loop on a loaded machine; docs/training.md).
constexpr int64_t kChunkElements = 1 << 18;
}  // namespace

Result<FakeQuant> FakeQuant::from_quantized(const QuantizedTensor& init, std::string name) {
  const QuantSpec& s = init.spec;
  if (s.tensor_scale) return InvalidArgument(fmt::format("qat: {}: two-level scales ({}) are not supported", name, to_string(s)));
  if (s.rounding != Rounding::kNearestEven) {
    return InvalidArgument(fmt::format("qat: {}: {} rounds stochastically; QAT needs a deterministic quantizer", name, to_string(s)));
  }
  if (traits(s.scale_format).bits < 8) return InvalidArgument(fmt::format("qat: {}: scale format narrower than a byte", name));
  if (init.rows <= 0 || init.cols <= 0) return InvalidArgument(fmt::format("qat: {}: empty weight", name));
  FakeQuant f;
  f.name_ = std::move(name);
  f.q_ = init;
  // The range quantize_element clamps to (int elements) or saturates at (float / lookup elements).
  // The range of v = w/s (+ z) inside which the clamp (integers) or saturation (floats,
  // lookups) does not change the code: the element range widened by half the last step,
  // since values there round to the end value anyway (an absmax scale rounded down to fp16
  // puts the largest weight of a block a hair past the end value).
  const FormatTraits& t = traits(s.element);
  const double top = t.max_finite;
  double half = 0.5;  // integers: half a unit
  if (t.kind == FormatKind::kFloat) half = 0.5 * std::ldexp(1.0, static_cast<int>(std::floor(std::log2(top))) - t.man_bits);
  if (s.element == Format::kNf4) half = 0.5 * (kNf4Levels[15] - kNf4Levels[14]);
  f.hi_ = static_cast<float>(top + half);
  if (t.kind == FormatKind::kInteger) {
    f.lo_ = static_cast<float>((s.symmetric && t.is_signed ? -top : t.lowest) - half);
  } else {
    f.lo_ = -f.hi_;
  }
  const size_t n = static_cast<size_t>(init.rows * init.cols);
  f.inside_.assign(n, 1);
  f.master_ = init.scales;
  f.sgrad_.assign(init.scales.size(), 0.0f);
  return f;
}

void FakeQuant::set_learnable(bool on) {
  learnable_ = on;
  if (on) u_.resize(inside_.size());
}

Status FakeQuant::forward(const float* w, float* w_hat) {
  const QuantSpec& s = q_.spec;
  const BlockGrid g = q_.grid();
  const int64_t R = q_.rows, C = q_.cols;
  std::vector<int64_t> clipped_rows(static_cast<size_t>(R), 0);
  std::vector<uint8_t> bad_rows(static_cast<size_t>(R), 0);  // a non-finite weight
  // Integer elements (round-to-nearest-even, checked in from_quantized): quantize_element's code
  // k = rint(clamp(v, lo, hi)) and dequantize's value (k − z)·s, written out here, so the
  // generic encode / decode / dequantize calls run only for the other formats. Same codes and
  // values (FakeQuant.CodesAndValuesEqualQuantizeWithTheSameBlockParameters).
  const FormatTraits& et = traits(s.element);
  const bool integer = et.kind == FormatKind::kInteger;
  const float ihi = static_cast<float>(et.max_finite);
  const float ilo = s.symmetric && et.is_signed ? -ihi : static_cast<float>(et.lowest);
  const uint32_t mask = et.bits >= 32 ? 0xFFFFFFFFu : (1u << et.bits) - 1u;
  parallel_for(0, R, std::max<int64_t>(1, kChunkElements / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t br = r / g.block_rows;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t b = br * g.grid_cols + c / g.block_cols;
        const float sc = q_.scales[static_cast<size_t>(b)];
        const int32_t z = s.symmetric ? 0 : q_.zero_points[static_cast<size_t>(b)];
        const float x = w[r * C + c];
        if (!std::isfinite(x)) bad_rows[static_cast<size_t>(r)] = 1;
        // quantize_element's v before clamping / saturation.
        const float u = sc == 0.0f ? 0.0f : x / sc;
        const float v = u + static_cast<float>(z);
        const bool in = v >= lo_ && v <= hi_;
        inside_[static_cast<size_t>(r * C + c)] = in;
        if (!in) ++clipped_rows[static_cast<size_t>(r)];
        if (learnable_) u_[static_cast<size_t>(r * C + c)] = u;
        if (integer) {
          const float vq = std::clamp(s.symmetric ? u : v, ilo, ihi);  // quantize_element's v
          const int64_t k = static_cast<int64_t>(std::nearbyint(vq));
          set_code(q_, r, c, static_cast<uint32_t>(k) & mask);
          w_hat[r * C + c] = (static_cast<float>(k) - static_cast<float>(z)) * sc;
          continue;
        }
        set_code(q_, r, c, quantize_value(s, x, sc, z, static_cast<uint64_t>(r * C + c)));
      }
    }
  });
  if (std::find(bad_rows.begin(), bad_rows.end(), 1) != bad_rows.end()) return InvalidArgument(fmt::format("qat: {}: non-finite master weight (training diverged; lower --lr)", name_));
  clipped_ = 0;
  for (int64_t k : clipped_rows) clipped_ += k;
  if (integer) return OkStatus();
  // What every consumer of the codes computes: lowbit's dequantize.
  return dequantize(q_, TensorView(w_hat, DType::kF32, {R, C}));
}

void FakeQuant::backward(float* grad) {
  const QuantSpec& s = q_.spec;
  const BlockGrid g = q_.grid();
  const int64_t R = q_.rows, C = q_.cols;
  if (learnable_) {
    // Per-block sums in a fixed order (block rows in sequence), so the result is thread-count free.
    const double qmax = traits(s.element).max_finite;  // LSQ's Q_P
    std::vector<double> acc(static_cast<size_t>(g.num_blocks()), 0.0);
    const bool integer = traits(s.element).kind == FormatKind::kInteger;
    parallel_for(0, g.grid_rows, std::max<int64_t>(1, kChunkElements / (C * g.block_rows)), [&](int64_t b0, int64_t b1) {
      for (int64_t br = b0; br < b1; ++br) {
        for (int64_t r = br * g.block_rows; r < std::min(R, (br + 1) * g.block_rows); ++r) {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t b = br * g.grid_cols + c / g.block_cols;
            const size_t i = static_cast<size_t>(r * C + c);
            const int32_t z = s.symmetric ? 0 : q_.zero_points[static_cast<size_t>(b)];
            // q − z: code_at gives integer elements' values, other formats' raw codes.
            const int32_t code = q_.code_at(r, c);
            const double qv = integer ? static_cast<double>(code) - z : static_cast<double>(dequantize_value(s, static_cast<uint32_t>(code), 1.0f, z));
            const double d = inside_[i] ? qv - static_cast<double>(u_[i]) : qv;
            acc[static_cast<size_t>(b)] += static_cast<double>(grad[i]) * d;
          }
        }
      }
    });
    for (int64_t b = 0; b < g.num_blocks(); ++b) {
      const int64_t br = b / g.grid_cols, bc = b % g.grid_cols;
      const int64_t n = (std::min(R, (br + 1) * g.block_rows) - br * g.block_rows) * (std::min(C, (bc + 1) * g.block_cols) - bc * g.block_cols);
      sgrad_[static_cast<size_t>(b)] += static_cast<float>(acc[static_cast<size_t>(b)] / std::sqrt(static_cast<double>(n) * qmax));
    }
  }
  for (size_t i = 0; i < inside_.size(); ++i) {
    if (!inside_[i]) grad[i] = 0.0f;
  }
}

Status FakeQuant::commit_scales() {
  const Format sf = q_.spec.scale_format;
  const int bytes = traits(sf).bits / 8;
  for (size_t b = 0; b < master_.size(); ++b) {
    const float m = master_[b];
    const uint32_t code = encode(sf, m, {.saturate = true});
    const float dec = decode(sf, code);
    if (!(m > 0.0f) || !std::isfinite(m) || !(dec > 0.0f)) {
      return InvalidArgument(fmt::format("qat: {}: learned scale {} of block {} is not a positive {} value", name_, m, b, format_name(sf)));
    }
    // Scale codes are stored little-endian, `bytes` per block (as copy_block_params copies them).
    std::memcpy(q_.scale_codes.data() + b * static_cast<size_t>(bytes), &code, static_cast<size_t>(bytes));
    q_.scales[b] = dec;
  }
  return OkStatus();
}

}  // namespace lowbit
