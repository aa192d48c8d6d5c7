// Calibration observers (absmax, percentile, MSE search), TE-style amax history and the
// dynamic per-block absmax. The clip values feed quantize() through QuantizeOptions::clip.
#include "lowbit/observer.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "lowbit/parallel.h"

namespace lowbit {
namespace {

constexpr int64_t kGrainElements = 1 << 16;  // elements per parallel chunk, roughly

std::string label(std::string_view name) {
  return name.empty() ? std::string("tensor") : fmt::format("tensor '{}'", name);
}

// An f32 tensor seen as the (rows, cols) matrix quantize() sees.
struct Matrix {
  const float* base = nullptr;
  Shape shape;
  int64_t rows = 0, cols = 0, col_stride = 1;

  const float* row(int64_t r) const {  // element (r, c) is row(r)[c * col_stride]
    int64_t off = 0;
    for (int d = shape.ndim - 2; d >= 0; --d) {
      off += (r % shape.dims[d]) * shape.strides[d];
      r /= shape.dims[d];
    }
    return base + off;
  }
  float at(int64_t r, int64_t c) const { return row(r)[c * col_stride]; }
  int64_t numel() const { return rows * cols; }
};

Status as_matrix(ConstTensorView x, std::string_view name, Matrix* m) {
  if (x.dtype() != DType::kF32) {
    return InvalidArgument(fmt::format("{}: expected f32 input, got {}", label(name), dtype_name(x.dtype())));
  }
  if (x.ndim() < 1) return InvalidArgument(fmt::format("{}: expected at least one dimension", label(name)));
  m->shape = x.shape();
  m->cols = x.dim(x.ndim() - 1);
  m->rows = m->cols == 0 ? 0 : x.numel() / m->cols;
  m->col_stride = x.stride(x.ndim() - 1);
  m->base = x.data_as<float>();
  return OkStatus();
}

// The first NaN/±inf in row-major order, as an error naming the tensor and the position.
Status check_finite(const Matrix& m, std::string_view name) {
  if (m.numel() == 0) return OkStatus();
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / m.cols);
  std::vector<int64_t> first((static_cast<size_t>((m.rows - 1) / grain + 1)), kNone);
  parallel_for(0, m.rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* p = m.row(r);
      for (int64_t c = 0; c < m.cols; ++c) {
        if (!std::isfinite(p[c * m.col_stride])) {
          first[static_cast<size_t>(r0 / grain)] = r * m.cols + c;
          return;
        }
      }
    }
  });
  const int64_t bad = *std::min_element(first.begin(), first.end());
  if (bad == kNone) return OkStatus();
  const int64_t r = bad / m.cols, c = bad % m.cols;
  const float v = m.at(r, c);
  return InvalidArgument(fmt::format("{}: {} at row {}, column {} (of {} x {}); observers need finite values",
                                     label(name), std::isnan(v) ? "NaN" : (v > 0 ? "+inf" : "-inf"), r, c, m.rows,
                                     m.cols));
}

// Calls fn(block, p, n) for every row segment of every block: n elements p[0], p[stride], ...
// Chunks own whole grid rows, so no two threads touch the same block.
template <class F>
void for_each_segment(const Matrix& m, const BlockGrid& g, F&& fn) {
  if (m.numel() == 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (g.block_rows * m.cols));
  parallel_for(0, g.grid_rows, grain, [&](int64_t gr0, int64_t gr1) {
    for (int64_t gr = gr0; gr < gr1; ++gr) {
      const int64_t r_end = std::min(m.rows, (gr + 1) * g.block_rows);
      for (int64_t r = gr * g.block_rows; r < r_end; ++r) {
        const float* row = m.row(r);
        for (int64_t gc = 0; gc < g.grid_cols; ++gc) {
          const int64_t c0 = gc * g.block_cols, n = std::min(m.cols, c0 + g.block_cols) - c0;
          fn(gr * g.grid_cols + gc, row + c0 * m.col_stride, n, m.col_stride);
        }
      }
    }
  });
}

// Elements of block b (for reserving space).
int64_t block_size(const BlockGrid& g, int64_t b) {
  const int64_t gr = b / g.grid_cols, gc = b % g.grid_cols;
  const int64_t nr = std::min(g.rows, (gr + 1) * g.block_rows) - gr * g.block_rows;
  const int64_t nc = std::min(g.cols, (gc + 1) * g.block_cols) - gc * g.block_cols;
  return nr * nc;
}

std::vector<float> block_absmax(const Matrix& m, const BlockGrid& g) {
  std::vector<float> amax(static_cast<size_t>(g.num_blocks()), 0.0f);
  for_each_segment(m, g, [&](int64_t b, const float* p, int64_t n, int64_t stride) {
    float a = amax[static_cast<size_t>(b)];
    for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(p[i * stride]));
    amax[static_cast<size_t>(b)] = a;
  });
  return amax;
}

// Appends f(x) of every element of x to its block's sample list.
template <class F>
void append_samples(const Matrix& m, const BlockGrid& g, std::vector<std::vector<float>>& samples, F&& f) {
  for_each_segment(m, g, [&](int64_t b, const float* p, int64_t n, int64_t stride) {
    std::vector<float>& s = samples[static_cast<size_t>(b)];
    if (s.capacity() < s.size() + static_cast<size_t>(n)) {
      s.reserve(std::max(2 * s.capacity(), s.size() + static_cast<size_t>(block_size(g, b))));
    }
    for (int64_t i = 0; i < n; ++i) s.push_back(f(p[i * stride]));
  });
}


Status check_observer_spec(const QuantSpec& spec, std::string_view name) {
  if (Status s = validate(spec); !s.ok()) return InvalidArgument(fmt::format("{}: {}", label(name), s.message()));
  if (!spec.symmetric) {
    return InvalidArgument(fmt::format(
        "{}: observers give clip values for symmetric specs only (quantize's static clip is symmetric)", label(name)));
  }
  return OkStatus();
}

}  // namespace

// ---- shared -----------------------------------------------------------------------------

Status detail::BlockObserverBase::check_and_bind(ConstTensorView x, BlockGrid* grid) {
  Matrix m;
  LOWBIT_RETURN_IF_ERROR(as_matrix(x, name_, &m));
  *grid = block_grid(spec_, m.rows, m.cols);
  if (m.numel() == 0) return OkStatus();  // nothing to see; binds nothing
  if (grid_.num_blocks() > 0) {
    const bool rows_free = spec_.granularity == Granularity::kTensor || spec_.granularity == Granularity::kCol;
    if (m.cols != grid_.cols || (m.rows != grid_.rows && !rows_free)) {
      return InvalidArgument(fmt::format(
          "{}: observed a ({}, {}) matrix (shape {}) after ({}, {}); {} needs the same {} in every batch", label(name_),
          m.rows, m.cols, x.shape().to_string(), grid_.rows, grid_.cols, to_string(spec_),
          rows_free ? "cols" : "rows and cols"));
    }
  }
  LOWBIT_RETURN_IF_ERROR(check_finite(m, name_));
  if (grid_.num_blocks() == 0) grid_ = *grid;
  ++num_observed_;
  return OkStatus();
}

// ---- AbsMaxObserver -----------------------------------------------------------------------

Result<AbsMaxObserver> AbsMaxObserver::create(const QuantSpec& spec, std::string name) {
  LOWBIT_RETURN_IF_ERROR(check_observer_spec(spec, name));
  return AbsMaxObserver(spec, std::move(name));
}

Status AbsMaxObserver::observe(ConstTensorView x) {
  BlockGrid g;
  LOWBIT_RETURN_IF_ERROR(check_and_bind(x, &g));
  Matrix m;
  LOWBIT_RETURN_IF_ERROR(as_matrix(x, name_, &m));
  if (m.numel() == 0) return OkStatus();
  const std::vector<float> a = block_absmax(m, g);
  if (amax_.empty()) {
    amax_ = a;
  } else {
    for (size_t b = 0; b < a.size(); ++b) amax_[b] = std::max(amax_[b], a[b]);
  }
  return OkStatus();
}

// ---- PercentileObserver --------------------------------------------------------------------

Result<PercentileObserver> PercentileObserver::create(const QuantSpec& spec, double percentile, std::string name) {
  LOWBIT_RETURN_IF_ERROR(check_observer_spec(spec, name));
  if (!(percentile > 0.0 && percentile <= 100.0)) {
    return InvalidArgument(fmt::format("{}: percentile must be in (0, 100] (got {})", label(name), percentile));
  }
  return PercentileObserver(spec, percentile, std::move(name));
}

Status PercentileObserver::observe(ConstTensorView x) {
  BlockGrid g;
  LOWBIT_RETURN_IF_ERROR(check_and_bind(x, &g));
  Matrix m;
  LOWBIT_RETURN_IF_ERROR(as_matrix(x, name_, &m));
  if (m.numel() == 0) return OkStatus();
  abs_.resize(static_cast<size_t>(g.num_blocks()));
  append_samples(m, g, abs_, [](float v) { return std::fabs(v); });
  return OkStatus();
}

std::vector<float> PercentileObserver::clip() const {
  std::vector<float> c(abs_.size(), 0.0f);
  if (abs_.empty()) return c;
  size_t total = 0;
  for (const std::vector<float>& v : abs_) total += v.size();
  const int64_t nb = static_cast<int64_t>(abs_.size());
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, static_cast<int64_t>(total) / nb));
  parallel_for(0, nb, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> tmp;
    for (int64_t b = b0; b < b1; ++b) {
      const std::vector<float>& v = abs_[static_cast<size_t>(b)];
      if (v.empty()) continue;
      tmp.assign(v.begin(), v.end());  // selection reorders; clip() is const
      const size_t k = percentile_index(percentile_, tmp.size());
      std::nth_element(tmp.begin(), tmp.begin() + static_cast<std::ptrdiff_t>(k), tmp.end());
      c[static_cast<size_t>(b)] = tmp[k];
    }
  });
  return c;
}

// ---- MseObserver ---------------------------------------------------------------------------

Result<MseObserver> MseObserver::create(const QuantSpec& spec, std::string name) {
  LOWBIT_RETURN_IF_ERROR(check_observer_spec(spec, name));
  return MseObserver(spec, std::move(name));
}

Status MseObserver::observe(ConstTensorView x) {
  BlockGrid g;
  LOWBIT_RETURN_IF_ERROR(check_and_bind(x, &g));
  Matrix m;
  LOWBIT_RETURN_IF_ERROR(as_matrix(x, name_, &m));
  if (m.numel() == 0) return OkStatus();
  samples_.resize(static_cast<size_t>(g.num_blocks()));
  append_samples(m, g, samples_, [](float v) { return v; });
  return OkStatus();
}

// Every candidate is evaluated by quantize() itself (no second copy of the arithmetic): the
// blocks become the rows of one zero-padded (blocks, widest) matrix quantized per row with
// the candidate clips. Padding zeros quantize to exactly 0 and leave the tensor amax (the
// NVFP4 tensor scale) alone; their error is not counted anyway. If a candidate fails for some
// block (a scale the format cannot hold), the blocks are evaluated one by one instead.
std::vector<float> MseObserver::clip() const {
  const int64_t nb = static_cast<int64_t>(samples_.size());
  std::vector<float> amax(samples_.size(), 0.0f);
  int64_t width = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const std::vector<float>& v = samples_[static_cast<size_t>(b)];
    for (float x : v) amax[static_cast<size_t>(b)] = std::max(amax[static_cast<size_t>(b)], std::fabs(x));
    width = std::max(width, static_cast<int64_t>(v.size()));
  }
  if (nb == 0 || width == 0) return amax;

  std::vector<float> padded(static_cast<size_t>(nb * width), 0.0f);  // (blocks, width)
  for (int64_t b = 0; b < nb; ++b) {
    const std::vector<float>& v = samples_[static_cast<size_t>(b)];
    std::copy(v.begin(), v.end(), padded.begin() + b * width);
  }
  QuantSpec rows_spec = spec_;
  rows_spec.granularity = Granularity::kRow;
  rows_spec.clip = ClipRule::kAbsMax;
  rows_spec.rounding = Rounding::kNearestEven;  // compare deterministic errors, as quantize's own search does
  QuantSpec block_spec = rows_spec;
  block_spec.granularity = Granularity::kTensor;

  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> best_err(static_cast<size_t>(nb), kInf);
  std::vector<float> best(amax);  // fallback: absmax
  std::vector<float> clips(static_cast<size_t>(nb)), xhat(padded.size());
  std::vector<double> err(static_cast<size_t>(nb));

  for (int k = 0; k < kNumRatios; ++k) {
    for (int64_t b = 0; b < nb; ++b) clips[static_cast<size_t>(b)] = amax[static_cast<size_t>(b)] * ratio(k);
    const ConstTensorView all(padded.data(), DType::kF32, {nb, width});
    Result<QuantizedTensor> q = quantize(all, rows_spec, {.name = name_, .clip = clips});
    if (q.ok() && dequantize(*q, TensorView(xhat.data(), DType::kF32, {nb, width})).ok()) {
      parallel_for(0, nb, std::max<int64_t>(1, kGrainElements / width), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const size_t n = samples_[static_cast<size_t>(b)].size();
          const float* x = padded.data() + b * width;
          const float* y = xhat.data() + b * width;
          double e = 0.0;
          for (size_t i = 0; i < n; ++i) {
            const double d = static_cast<double>(x[i]) - static_cast<double>(y[i]);
            e += d * d;
          }
          err[static_cast<size_t>(b)] = e;
        }
      });
    } else {
      parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
        std::vector<float> y;
        for (int64_t b = b0; b < b1; ++b) {
          const std::vector<float>& v = samples_[static_cast<size_t>(b)];
          const int64_t n = static_cast<int64_t>(v.size());
          err[static_cast<size_t>(b)] = kInf;
          if (n == 0) continue;
          const float c = clips[static_cast<size_t>(b)];
          Result<QuantizedTensor> qb = quantize(ConstTensorView(v.data(), DType::kF32, {1, n}), block_spec,
                                                {.name = name_, .clip = {&c, 1}});
          y.resize(v.size());
          if (!qb.ok() || !dequantize(*qb, TensorView(y.data(), DType::kF32, {1, n})).ok()) continue;
          double e = 0.0;
          for (size_t i = 0; i < v.size(); ++i) {
            const double d = static_cast<double>(v[i]) - static_cast<double>(y[i]);
            e += d * d;
          }
          err[static_cast<size_t>(b)] = e;
        }
      });
    }
    for (int64_t b = 0; b < nb; ++b) {
      const size_t i = static_cast<size_t>(b);
      if (err[i] < best_err[i]) {  // strict: ties keep the larger ratio, tried first
        best_err[i] = err[i];
        best[i] = clips[i];
      }
    }
  }
  return best;
}

// ---- AmaxHistory ---------------------------------------------------------------------------

Result<AmaxHistory> AmaxHistory::create(int history_len, int margin, float element_max, std::string name) {
  if (history_len < 1) {
    return InvalidArgument(fmt::format("{}: amax history length must be >= 1 (got {})", label(name), history_len));
  }
  if (!(std::isfinite(element_max) && element_max > 0.0f)) {
    return InvalidArgument(
        fmt::format("{}: element max must be finite and > 0, e.g. 448 for e4m3 (got {})", label(name), element_max));
  }
  return AmaxHistory(history_len, margin, element_max, std::move(name));
}

Status AmaxHistory::record(float amax) {
  if (!std::isfinite(amax) || amax < 0.0f) {
    return InvalidArgument(fmt::format("{}: amax of step {} is {}; amax history needs a finite value >= 0",
                                       label(name_), num_recorded_, amax));
  }
  if (static_cast<int>(history_.size()) == history_len_) history_.erase(history_.begin());
  history_.push_back(amax);
  ++num_recorded_;
  return OkStatus();
}

float AmaxHistory::clip() const {
  float m = 0.0f;
  for (float a : history_) m = std::max(m, a);
  return std::ldexp(m, margin_);
}

// ---- dynamic ---------------------------------------------------------------------------------

Result<std::vector<float>> dynamic_clip(ConstTensorView x, const QuantSpec& spec, std::string_view name) {
  if (Status s = validate(spec); !s.ok()) return InvalidArgument(fmt::format("{}: {}", label(name), s.message()));
  Matrix m;
  LOWBIT_RETURN_IF_ERROR(as_matrix(x, name, &m));
  LOWBIT_RETURN_IF_ERROR(check_finite(m, name));
  return block_absmax(m, block_grid(spec, m.rows, m.cols));
}

}  // namespace lowbit
