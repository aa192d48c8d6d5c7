// Methods that move scale between a linear's input and its weights (AWQ, SmoothQuant) and
// LLM.int8()'s outlier decomposition. The pipeline folds the input side of the scales into
// the preceding RMSNorm or linear; here only the weight side and the search live.
#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "algo_internal.h"
#include "lowbit/formats.h"
#include "lowbit/ptq.h"

namespace lowbit {

void scale_columns(TensorView w, std::span<const float> s) {
  const int64_t out = w.dim(0), in = w.dim(1);
  LOWBIT_CHECK(static_cast<int64_t>(s.size()) == in && w.is_contiguous(), "scale_columns: shape");
  float* p = w.data_as<float>();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < in; ++j) p[r * in + j] *= s[static_cast<size_t>(j)];
}

void divide_rows(TensorView w, std::span<const float> s) {
  const int64_t out = w.dim(0), in = w.ndim() == 2 ? w.dim(1) : 1;
  LOWBIT_CHECK(static_cast<int64_t>(s.size()) == out && w.is_contiguous(), "divide_rows: shape");
  float* p = w.data_as<float>();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < in; ++j) p[r * in + j] /= s[static_cast<size_t>(r)];
}

namespace {

// Σ over the group of the output error of RTN-quantizing W·diag(s) and scaling back.
Result<double> scaled_error(std::span<const ConstTensorView> weights, std::span<const float> s,
                            std::span<const float> samples, int64_t n, const QuantSpec& spec, std::string_view name) {
  double err = 0;
  for (const ConstTensorView& w : weights) {
    LOWBIT_ASSIGN_OR_RETURN(Tensor ws, algo_internal::clone_f32(w));
    scale_columns(ws.view(), s);
    LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(ws.view(), spec, {.name = std::string(name)}));
    LOWBIT_RETURN_IF_ERROR(dequantize(q, ws.view()));
    std::vector<float> inv(s.size());
    for (size_t j = 0; j < s.size(); ++j) inv[j] = 1.0f / s[j];
    scale_columns(ws.view(), inv);
    err += output_error(w, ws.view(), samples, n);
  }
  return err;
}

}  // namespace

Result<AwqResult> awq_search(std::span<const ConstTensorView> weights, std::span<const float> x_mean,
                             std::span<const float> samples, int64_t n, const QuantSpec& spec, const AwqOptions& opt,
                             std::string_view name) {
  if (weights.empty()) return InvalidArgument(fmt::format("{}: AWQ needs at least one weight", name));
  const int64_t in = weights[0].dim(1);
  for (const ConstTensorView& w : weights) {
    if (w.ndim() != 2 || w.dim(1) != in) return InvalidArgument(fmt::format("{}: AWQ weights must share the input width {}", name, in));
  }
  if (static_cast<int64_t>(x_mean.size()) != in) return InvalidArgument(fmt::format("{}: {} activation means for {} inputs", name, x_mean.size(), in));
  if (opt.grid < 1) return InvalidArgument(fmt::format("{}: AWQ grid must be >= 1", name));
  n = std::min<int64_t>(n, std::max<int64_t>(1, opt.max_samples));
  if (n < 1 || static_cast<int64_t>(samples.size()) < n * in) return InvalidArgument(fmt::format("{}: AWQ has no calibration samples", name));
  samples = samples.first(static_cast<size_t>(n * in));

  AwqResult best;
  best.error = std::numeric_limits<double>::infinity();
  std::vector<float> s(static_cast<size_t>(in));
  for (int g = 0; g <= opt.grid; ++g) {
    const double alpha = static_cast<double>(g) / opt.grid;
    float mx = 0.0f, mn = std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < in; ++j) {
      const double m = std::max<double>(x_mean[static_cast<size_t>(j)], 1e-8);
      s[static_cast<size_t>(j)] = std::max(1e-4f, static_cast<float>(std::pow(m, alpha)));
      mx = std::max(mx, s[static_cast<size_t>(j)]);
      mn = std::min(mn, s[static_cast<size_t>(j)]);
    }
    const float norm = std::sqrt(mx * mn);
    for (float& v : s) v /= norm;
    LOWBIT_ASSIGN_OR_RETURN(double err, scaled_error(weights, s, samples, n, spec, name));
    if (g == 0) best.rtn_error = err;  // α = 0: s = 1 after normalisation
    if (err < best.error) {
      best.error = err;
      best.alpha = alpha;
      best.scales = s;
    }
  }
  return best;
}

std::vector<float> smoothquant_scales(std::span<const ConstTensorView> weights, std::span<const float> act_absmax,
                                      double alpha) {
  const int64_t in = static_cast<int64_t>(act_absmax.size());
  std::vector<float> wmax(static_cast<size_t>(in), 0.0f);
  for (const ConstTensorView& w : weights) {
    const float* p = w.data_as<float>();
    for (int64_t r = 0; r < w.dim(0); ++r)
      for (int64_t j = 0; j < in; ++j) wmax[static_cast<size_t>(j)] = std::max(wmax[static_cast<size_t>(j)], std::fabs(p[r * in + j]));
  }
  std::vector<float> s(static_cast<size_t>(in), 1.0f);
  for (int64_t j = 0; j < in; ++j) {
    const double a = act_absmax[static_cast<size_t>(j)], b = wmax[static_cast<size_t>(j)];
    if (a > 0 && b > 0) s[static_cast<size_t>(j)] = static_cast<float>(std::clamp(std::pow(a, alpha) / std::pow(b, 1.0 - alpha), 1e-5, 1e5));
  }
  return s;
}

Result<OutlierDecomposition> split_outliers(ConstTensorView w, std::span<const float> act_absmax, float threshold,
                                            const QuantSpec& spec, std::string_view name) {
  const int64_t out = w.dim(0), in = w.dim(1);
  if (static_cast<int64_t>(act_absmax.size()) != in) return InvalidArgument(fmt::format("{}: {} activation maxima for {} inputs", name, act_absmax.size(), in));
  if (!(threshold > 0)) return InvalidArgument(fmt::format("{}: the outlier threshold must be > 0", name));
  OutlierDecomposition d;
  for (int64_t j = 0; j < in; ++j) {
    if (act_absmax[static_cast<size_t>(j)] > threshold) d.cols.push_back(static_cast<int32_t>(j));
  }
  const int64_t k = static_cast<int64_t>(d.cols.size());
  LOWBIT_ASSIGN_OR_RETURN(Tensor main, algo_internal::clone_f32(w));
  LOWBIT_ASSIGN_OR_RETURN(d.part, Tensor::empty(DType::kF32, {out, k}));
  float* mp = main.data_as<float>();
  float* pp = d.part.data_as<float>();
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      float& x = mp[r * in + d.cols[static_cast<size_t>(i)]];
      if (!std::isfinite(x)) return InvalidArgument(fmt::format("{}: non-finite weight at row {}, column {}", name, r, d.cols[static_cast<size_t>(i)]));
      pp[r * k + i] = decode(Format::kFp16, encode(Format::kFp16, x));
      x = 0.0f;
    }
  }
  LOWBIT_ASSIGN_OR_RETURN(d.main, quantize(main.view(), spec, {.name = std::string(name)}));
  d.main.shape = w.shape();
  d.part_bytes = 2 * out * k + 4 * k;
  return d;
}

}  // namespace lowbit
