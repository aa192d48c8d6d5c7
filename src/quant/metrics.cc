// Error metrics between a reference and its quantized copy, accumulated in double.
//
// One pass gathers sum x^2, sum y^2, sum xy, sum (x-y)^2 and max |x-y|. Large inputs are
// cut into fixed chunks whose partial sums are added in chunk order, so the result is
// the same bits on any thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "lowbit/metrics.h"
#include "lowbit/parallel.h"
#include "lowbit/status.h"

namespace lowbit {
namespace {

constexpr int64_t kChunk = int64_t{1} << 16;  // elements per partial sum

struct Sums {
  double xx = 0, yy = 0, xy = 0, ee = 0, max_abs = 0;
  void add(const Sums& o) {
    xx += o.xx;
    yy += o.yy;
    xy += o.xy;
    ee += o.ee;
    if (o.max_abs > max_abs || std::isnan(o.max_abs)) max_abs = o.max_abs;  // a NaN sticks
  }
};

Sums accumulate_range(const float* x, const float* y, int64_t begin, int64_t end) {
  Sums s;
  for (int64_t i = begin; i < end; ++i) {
    const double a = x[i], b = y[i], e = a - b;
    s.xx += a * a;
    s.yy += b * b;
    s.xy += a * b;
    s.ee += e * e;
    const double d = std::fabs(e);
    if (d > s.max_abs || std::isnan(d)) s.max_abs = d;  // a NaN sticks
  }
  return s;
}

Sums accumulate(std::span<const float> x, std::span<const float> y) {
  LOWBIT_CHECK(x.size() == y.size(), "error metrics: x has " + std::to_string(x.size()) +
                                         " elements, y has " + std::to_string(y.size()));
  const int64_t n = static_cast<int64_t>(x.size());
  if (n <= kChunk) return accumulate_range(x.data(), y.data(), 0, n);
  std::vector<Sums> parts(static_cast<size_t>((n - 1) / kChunk + 1));
  parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) {
    parts[static_cast<size_t>(b / kChunk)] = accumulate_range(x.data(), y.data(), b, e);
  });
  Sums total;
  for (const Sums& p : parts) total.add(p);
  return total;
}

double mse_of(const Sums& s, size_t n) { return n ? s.ee / static_cast<double>(n) : 0.0; }

double sqnr_of(const Sums& s) {
  if (s.ee == 0.0) return std::numeric_limits<double>::infinity();  // exact copy (zeros included)
  return 10.0 * std::log10(s.xx / s.ee);                              // -inf when x is all zeros
}

double cosine_of(const Sums& s) {
  if (s.xx == 0.0 && s.yy == 0.0) return 1.0;
  if (s.xx == 0.0 || s.yy == 0.0) return 0.0;
  const double c = s.xy / (std::sqrt(s.xx) * std::sqrt(s.yy));
  return std::isnan(c) ? c : std::clamp(c, -1.0, 1.0);  // rounding can step a hair past ±1
}

double rel_frobenius_of(const Sums& s) {
  if (s.xx == 0.0) return s.ee == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(s.ee) / std::sqrt(s.xx);
}

}  // namespace

ErrorStats error_stats(std::span<const float> x, std::span<const float> y) {
  const Sums s = accumulate(x, y);
  ErrorStats e;
  e.mse = mse_of(s, x.size());
  e.sqnr_db = sqnr_of(s);
  e.cosine = cosine_of(s);
  e.max_abs = s.max_abs;
  e.rel_frobenius = rel_frobenius_of(s);
  return e;
}

double mse(std::span<const float> x, std::span<const float> y) { return mse_of(accumulate(x, y), x.size()); }
double sqnr_db(std::span<const float> x, std::span<const float> y) { return sqnr_of(accumulate(x, y)); }
double cosine_similarity(std::span<const float> x, std::span<const float> y) { return cosine_of(accumulate(x, y)); }
double max_abs_error(std::span<const float> x, std::span<const float> y) { return accumulate(x, y).max_abs; }
double relative_frobenius_error(std::span<const float> x, std::span<const float> y) {
  return rel_frobenius_of(accumulate(x, y));
}

}  // namespace lowbit
