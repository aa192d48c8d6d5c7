// quantize / dequantize against docs/schemes.md: hand-worked examples, the closed-form SQNR
// of uniform quantization, idempotence, a naive per-block reference (naive_reference.h) on
// ragged grids and strided inputs, fast paths vs the scalar reference at every ISA, thread
// counts, the MX and NVFP4 scale rules, exact storage costs, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/formats.h"
#include "lowbit/metrics.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"
#include "lowbit/tensor.h"
#include "naive_reference.h"

namespace lowbit {
namespace {

// ---------------------------------------------------------------------------------------
// Helpers

#define QT_CONCAT_INNER_(a, b) a##b
#define QT_CONCAT_(a, b) QT_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL_(QT_CONCAT_(qt_result_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr)                    \
  auto tmp = (expr);                                                \
  ASSERT_TRUE(tmp.ok()) << #expr << ": " << tmp.status().to_string(); \
  lhs = std::move(tmp).value()

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

QuantSpec S(std::string_view text) {
  auto r = parse_spec(text);
  if (!r.ok()) {
    ADD_FAILURE() << "parse_spec(\"" << text << "\"): " << r.status().to_string();
    return QuantSpec{};
  }
  return *r;
}

Tensor make_tensor(const std::vector<float>& v, std::vector<int64_t> dims) {
  auto t = Tensor::empty(DType::kF32, std::span<const int64_t>(dims));
  LOWBIT_CHECK(t.ok(), "Tensor::empty");
  LOWBIT_CHECK(static_cast<size_t>(t->numel()) == v.size(), "make_tensor: size");
  if (!v.empty()) std::memcpy(t->data(), v.data(), v.size() * sizeof(float));
  return std::move(t).value();
}

std::vector<float> randn(size_t n, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng));
  return v;
}

// Random normal data with awkward values sprinkled in: exact zeros, negative zeros, fp32
// subnormals, duplicated extremes; and (when rows >= 3) one all-zero row.
std::vector<float> special_data(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> v = randn(static_cast<size_t>(rows * cols), seed);
  for (size_t i = 0; i < v.size(); ++i) {
    if (i % 37 == 5) v[i] = 0.0f;
    if (i % 53 == 7) v[i] = -0.0f;
    if (i % 101 == 11) v[i] = 1e-40f;
    if (i % 211 == 13) v[i] = -3.5f;
    if (i % 223 == 17) v[i] = 3.5f;
  }
  if (rows >= 3)
    for (int64_t c = 0; c < cols; ++c) v[static_cast<size_t>(cols + c)] = 0.0f;
  return v;
}

// Every element value of a format in ascending order (finite codes only).
std::vector<float> levels_of(Format f) {
  std::vector<float> l;
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const float v = decode(f, c);
    if (std::isfinite(v)) l.push_back(v);
  }
  std::sort(l.begin(), l.end());
  l.erase(std::unique(l.begin(), l.end()), l.end());
  return l;
}

// Data whose every block has a power-of-two scale s0 (so the scale is exact in any scale
// format and for the MX rule) and whose other elements sit exactly halfway between two
// adjacent element levels: every one is a round-to-nearest-even tie.
std::vector<float> tie_data(const QuantSpec& spec, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const naive::Grid g = naive::grid(spec, rows, cols);
  const float qmax = naive::qmax_of(spec.element), qmin = naive::qmin_of(spec.element);
  std::vector<float> lv = levels_of(spec.element);
  std::vector<float> x(static_cast<size_t>(rows * cols), 0.0f);
  for (int64_t br = 0; br < g.grid_rows; ++br) {
    for (int64_t bc = 0; bc < g.grid_cols; ++bc) {
      const int64_t r0 = br * g.block_rows, r1 = std::min(rows, r0 + g.block_rows);
      const int64_t c0 = bc * g.block_cols, c1 = std::min(cols, c0 + g.block_cols);
      const float s0 = std::ldexp(1.0f, static_cast<int>(rng() % 4) - 3);  // 2^-3 .. 1 (bf16: no overflow)
      float lo_lvl = -qmax, hi_lvl = qmax;  // allowed range of v = x / s0
      bool first = true, second = false;
      int z0 = 0;
      if (!spec.symmetric) {
        z0 = 1 + static_cast<int>(rng() % static_cast<uint64_t>(qmax - qmin - 1));  // lo = -z0 s0 ... hi
        lo_lvl = -static_cast<float>(z0);
        hi_lvl = (qmax - qmin) - static_cast<float>(z0);
      }
      for (int64_t i = r0; i < r1; ++i) {
        for (int64_t j = c0; j < c1; ++j) {
          float v;
          if (first) {
            v = spec.symmetric ? ((rng() & 1) ? qmax : -qmax) : lo_lvl;
            first = false;
            second = true;
          } else if (second && !spec.symmetric) {
            v = hi_lvl;
            second = false;
          } else {
            second = false;
            const uint64_t kind = rng() % 8;
            if (kind == 0) {
              v = 0.0f;
            } else if (naive::is_int(spec.element)) {
              const int span = static_cast<int>(hi_lvl - lo_lvl);
              v = lo_lvl + static_cast<float>(rng() % static_cast<uint64_t>(span)) + 0.5f;  // a tie
            } else {
              // midpoint of two adjacent levels inside [-qmax, qmax]
              size_t k;
              do {
                k = rng() % (lv.size() - 1);
              } while (std::fabs(lv[k]) > qmax || std::fabs(lv[k + 1]) > qmax);
              v = kind == 1 ? lv[k] : static_cast<float>((static_cast<double>(lv[k]) + lv[k + 1]) / 2.0);
            }
          }
          x[static_cast<size_t>(i * cols + j)] = v * s0;
        }
      }
    }
  }
  return x;
}

std::vector<int64_t> dims_of(const Shape& s) { return {s.dims.begin(), s.dims.begin() + s.ndim}; }

// Dequantizes into a fresh contiguous tensor of q's shape.
Result<std::vector<float>> deq(const QuantizedTensor& q, bool use_reference = false) {
  std::vector<int64_t> dims = dims_of(q.shape);
  auto t = Tensor::empty(DType::kF32, std::span<const int64_t>(dims));
  if (!t.ok()) return t.status();
  Status st = dequantize(q, t->view(), use_reference);
  if (!st.ok()) return st;
  const float* p = t->data_as<float>();
  return std::vector<float>(p, p + q.numel());
}

::testing::AssertionResult same_float_bits(const std::vector<float>& a, const std::vector<float>& b,
                                           const char* what) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << what << ": size " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i)
    if (bits(a[i]) != bits(b[i]))
      return ::testing::AssertionFailure() << what << "[" << i << "]: " << a[i] << " (0x" << std::hex << bits(a[i])
                                           << ") vs " << b[i] << " (0x" << bits(b[i]) << std::dec << ")";
  return ::testing::AssertionSuccess();
}

template <class T>
::testing::AssertionResult same_vec(const std::vector<T>& a, const std::vector<T>& b, const char* what) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << what << ": size " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i])
      return ::testing::AssertionFailure() << what << "[" << i << "]: " << +a[i] << " vs " << +b[i];
  return ::testing::AssertionSuccess();
}

// Two quantized tensors are the same bits.
::testing::AssertionResult same_quant(const QuantizedTensor& a, const QuantizedTensor& b) {
  if (!(a.spec == b.spec)) return ::testing::AssertionFailure() << "spec differs";
  if (a.rows != b.rows || a.cols != b.cols || a.row_bytes != b.row_bytes)
    return ::testing::AssertionFailure() << "geometry differs: " << a.rows << "x" << a.cols << "/" << a.row_bytes
                                         << " vs " << b.rows << "x" << b.cols << "/" << b.row_bytes;
  if (auto r = same_vec(a.codes, b.codes, "codes"); !r) return r;
  if (auto r = same_vec(a.scale_codes, b.scale_codes, "scale_codes"); !r) return r;
  if (auto r = same_float_bits(a.scales, b.scales, "scales"); !r) return r;
  if (auto r = same_vec(a.zero_points, b.zero_points, "zero_points"); !r) return r;
  if (bits(a.tensor_scale) != bits(b.tensor_scale))
    return ::testing::AssertionFailure() << "tensor_scale " << a.tensor_scale << " vs " << b.tensor_scale;
  return ::testing::AssertionSuccess();
}

// A lowbit result against the naive reference: storage bytes, code_at, scales (bits),
// scale codes, zero points, tensor scale, and the dequantized output of both paths (bits).
::testing::AssertionResult matches_naive(const QuantizedTensor& q, const naive::Result& ref) {
  if (q.rows != ref.rows || q.cols != ref.cols)
    return ::testing::AssertionFailure() << "rows/cols " << q.rows << "x" << q.cols << " vs " << ref.rows << "x"
                                         << ref.cols;
  if (q.row_bytes != ref.row_bytes)
    return ::testing::AssertionFailure() << "row_bytes " << q.row_bytes << " vs " << ref.row_bytes;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c)
      if (q.code_at(r, c) != ref.code[static_cast<size_t>(r * q.cols + c)])
        return ::testing::AssertionFailure() << "code_at(" << r << ", " << c << ") = " << q.code_at(r, c)
                                             << ", naive " << ref.code[static_cast<size_t>(r * q.cols + c)];
  if (auto r = same_vec(q.codes, ref.packed, "packed codes"); !r) return r;
  if (auto r = same_float_bits(q.scales, ref.scales, "scales"); !r) return r;
  if (auto r = same_vec(q.scale_codes, ref.scale_codes, "scale_codes"); !r) return r;
  if (auto r = same_vec(q.zero_points, ref.zero_points, "zero_points"); !r) return r;
  if (bits(q.tensor_scale) != bits(ref.tensor_scale))
    return ::testing::AssertionFailure() << "tensor_scale " << q.tensor_scale << " vs naive " << ref.tensor_scale;
  for (bool use_ref : {false, true}) {
    auto d = deq(q, use_ref);
    if (!d.ok()) return ::testing::AssertionFailure() << "dequantize: " << d.status().to_string();
    if (auto r = same_float_bits(*d, ref.deq, use_ref ? "dequantized (reference path)" : "dequantized"); !r)
      return r;
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------
// Worked examples (docs/schemes.md, by hand)

TEST(QuantizeWorked, Int8PerTensor) {
  // c = 1.2, s = 1.2 / 127 = 0.0094488; 0.5/s = 52.92 -> 53, -1.2/s = -127, 0.8/s = 84.67 -> 85,
  // -0.3/s = -31.75 -> -32.
  Tensor x = make_tensor({0.5f, -1.2f, 0.8f, -0.3f}, {4});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int8:tensor:sym:fp32")));
  EXPECT_EQ(q.rows, 1);
  EXPECT_EQ(q.cols, 4);
  EXPECT_EQ(q.row_bytes, 4);
  EXPECT_EQ(q.code_at(0, 0), 53);
  EXPECT_EQ(q.code_at(0, 1), -127);
  EXPECT_EQ(q.code_at(0, 2), 85);
  EXPECT_EQ(q.code_at(0, 3), -32);
  EXPECT_EQ(q.codes, (std::vector<uint8_t>{53, 0x81, 85, 0xE0}));
  const float s = 1.2f / 127.0f;
  ASSERT_EQ(q.scales.size(), 1u);
  EXPECT_EQ(bits(q.scales[0]), bits(s));
  std::vector<uint8_t> sc(4);
  std::memcpy(sc.data(), &s, 4);
  EXPECT_EQ(q.scale_codes, sc);
  EXPECT_TRUE(q.zero_points.empty());
  EXPECT_EQ(q.tensor_scale, 1.0f);
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  // 53 s = 0.500787, -127 s = -1.2, 85 s = 0.803150, -32 s = -0.302362
  EXPECT_TRUE(same_float_bits(d, {53.0f * s, -127.0f * s, 85.0f * s, -32.0f * s}, "x_hat"));
  EXPECT_NEAR(d[0], 0.5007874, 1e-6);
  EXPECT_NEAR(d[1], -1.2, 1e-6);
  EXPECT_NEAR(d[2], 0.8031496, 1e-6);
  EXPECT_NEAR(d[3], -0.3023622, 1e-6);
}

TEST(QuantizeWorked, Int8PerRow) {
  // row 0: c = 1.2 -> [53, -127, 85]; row 1: c = 0.9, s = 0.9/127: -0.3/s = -42.33 -> -42,
  // 0.9/s = 127, -0.6/s = -84.67 -> -85.
  Tensor x = make_tensor({0.5f, -1.2f, 0.8f, -0.3f, 0.9f, -0.6f}, {2, 3});
  for (const char* text : {"int8:row", "int8:channel", "int8:token"}) {
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S(text)));
    const int32_t want[2][3] = {{53, -127, 85}, {-42, 127, -85}};
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(q.code_at(r, c), want[r][c]) << text << " (" << r << ", " << c << ")";
    ASSERT_EQ(q.scales.size(), 2u);
    EXPECT_EQ(bits(q.scales[0]), bits(1.2f / 127.0f));
    EXPECT_EQ(bits(q.scales[1]), bits(0.9f / 127.0f));
    ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
    const float s1 = 0.9f / 127.0f;
    EXPECT_EQ(bits(d[3]), bits(-42.0f * s1));  // -0.297638
    EXPECT_EQ(bits(d[4]), bits(127.0f * s1));
    EXPECT_EQ(bits(d[5]), bits(-85.0f * s1));  // -0.602362
  }
}

TEST(QuantizeWorked, Int4GroupsOfFour) {
  // group 0 [0.5 -1.2 0.8 -0.3]: s = 1.2/7 = 0.171429: 2.92 -> 3, -7, 4.67 -> 5, -1.75 -> -2.
  // group 1 [0.9 -0.6 0.4 -0.7]: s = 0.9/7 = 0.128571: 7, -4.67 -> -5, 3.11 -> 3, -5.44 -> -5.
  Tensor x = make_tensor({0.5f, -1.2f, 0.8f, -0.3f, 0.9f, -0.6f, 0.4f, -0.7f}, {1, 8});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int4:g4:sym:fp32")));
  const int32_t want[8] = {3, -7, 5, -2, 7, -5, 3, -5};
  for (int c = 0; c < 8; ++c) EXPECT_EQ(q.code_at(0, c), want[c]) << c;
  // nibbles low first: (3, -7=0x9) (5, -2=0xE) (7, -5=0xB) (3, -5=0xB)
  EXPECT_EQ(q.codes, (std::vector<uint8_t>{0x93, 0xE5, 0xB7, 0xB3}));
  EXPECT_EQ(q.row_bytes, 4);
  ASSERT_EQ(q.scales.size(), 2u);
  const float s0 = 1.2f / 7.0f, s1 = 0.9f / 7.0f;
  EXPECT_EQ(bits(q.scales[0]), bits(s0));
  EXPECT_EQ(bits(q.scales[1]), bits(s1));
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  EXPECT_TRUE(same_float_bits(d, {3 * s0, -7 * s0, 5 * s0, -2 * s0, 7 * s1, -5 * s1, 3 * s1, -5 * s1}, "x_hat"));
}

TEST(QuantizeWorked, Uint8AsymNonNegative) {
  // lo = min(0.2, 0) = 0, hi = 2.75, s = 2.75/255 = 0.0107843, z = 0 - rne(0/s) = 0.
  // 0.2/s = 18.55 -> 19, 0.5/s = 46.36 -> 46, 1/s = 92.73 -> 93, 2.75/s = 255.
  // x_hat = 19 s = 0.204902, 46 s = 0.496078, 93 s = 1.002941, 255 s = 2.75.
  Tensor x = make_tensor({0.2f, 0.5f, 1.0f, 2.75f}, {1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("uint8:tensor:asym")));
  const float s = 2.75f / 255.0f;
  ASSERT_EQ(q.scales.size(), 1u);
  EXPECT_EQ(bits(q.scales[0]), bits(s));
  EXPECT_EQ(q.zero_points, (std::vector<int32_t>{0}));
  EXPECT_EQ(q.codes, (std::vector<uint8_t>{19, 46, 93, 255}));
  const int32_t want[4] = {19, 46, 93, 255};
  for (int c = 0; c < 4; ++c) EXPECT_EQ(q.code_at(0, c), want[c]);
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  EXPECT_TRUE(same_float_bits(d, {19 * s, 46 * s, 93 * s, 255 * s}, "x_hat"));
  EXPECT_NEAR(d[0], 0.2049020, 1e-6);
  EXPECT_NEAR(d[1], 0.4960784, 1e-6);
  EXPECT_NEAR(d[2], 1.0029412, 1e-6);
  EXPECT_NEAR(d[3], 2.75, 1e-6);
}

TEST(QuantizeWorked, AsymWithNegatives) {
  // [-0.5, 0, 1, 3]: lo = -0.5, hi = 3, s = 3.5/255 = 0.0137255, lo/s = -36.43 -> rne -36.
  // uint8 (qmin 0): z = 0 - (-36) = 36. v = x/s + z: -0.43 -> 0, 36, 108.86 -> 109, 254.57 -> 255.
  //   x_hat = (q - 36) s: -36 s = -0.494118, 0, 73 s = 1.001961, 219 s = 3.005882.
  // int8 (qmin -128): z = -128 - (-36) = -92. v: -128.43 -> -128, -92, -19.14 -> -19, 126.57 -> 127.
  //   x_hat is the same: (-128 + 92) s, 0, (-19 + 92) s, (127 + 92) s.
  Tensor x = make_tensor({-0.5f, 0.0f, 1.0f, 3.0f}, {1, 4});
  const float s = 3.5f / 255.0f;
  {
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("uint8:tensor:asym")));
    EXPECT_EQ(bits(q.scales.at(0)), bits(s));
    EXPECT_EQ(q.zero_points, (std::vector<int32_t>{36}));
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{0, 36, 109, 255}));
    ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
    EXPECT_TRUE(same_float_bits(d, {-36 * s, 0.0f, 73 * s, 219 * s}, "uint8 x_hat"));
    EXPECT_NEAR(d[0], -0.4941176, 1e-6);
    EXPECT_NEAR(d[2], 1.0019608, 1e-6);
    EXPECT_NEAR(d[3], 3.0058824, 1e-6);
  }
  {
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int8:tensor:asym")));
    EXPECT_EQ(bits(q.scales.at(0)), bits(s));
    EXPECT_EQ(q.zero_points, (std::vector<int32_t>{-92}));
    EXPECT_EQ(q.code_at(0, 0), -128);  // affine int8 uses the full range, -128 included
    EXPECT_EQ(q.code_at(0, 1), -92);
    EXPECT_EQ(q.code_at(0, 2), -19);
    EXPECT_EQ(q.code_at(0, 3), 127);
    ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
    EXPECT_TRUE(same_float_bits(d, {-36 * s, 0.0f, 73 * s, 219 * s}, "int8 x_hat"));
  }
}

TEST(QuantizeWorked, SymmetricInt8NeverUsesMinus128) {
  // e4m3 scale: c/127 = 134.62/127 = 1.06 rounds down to 1.0 (below the 1.0625 midpoint), so
  // v = -134.62 must clamp to -127 (int8's encode alone would give -128); 50 -> 50, 1 -> 1.
  Tensor x = make_tensor({-134.62f, 50.0f, 1.0f, 0.0f}, {1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int8:tensor:sym:e4m3")));
  EXPECT_EQ(q.scales.at(0), 1.0f);
  EXPECT_EQ(q.scale_codes, (std::vector<uint8_t>{0x38}));
  EXPECT_EQ(q.code_at(0, 0), -127);
  EXPECT_EQ(q.code_at(0, 1), 50);
  EXPECT_EQ(q.code_at(0, 2), 1);
  EXPECT_EQ(q.code_at(0, 3), 0);
  // same with int4 and an e4m3 scale rounding down: c/7 = 7.42/7 = 1.06 -> 1; -7.42 -> -7, not -8
  Tensor y = make_tensor({-7.42f, 3.0f}, {1, 2});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q4, quantize(y.view(), S("int4:tensor:sym:e4m3")));
  EXPECT_EQ(q4.scales.at(0), 1.0f);
  EXPECT_EQ(q4.code_at(0, 0), -7);
  EXPECT_EQ(q4.code_at(0, 1), 3);
}

TEST(QuantizeWorked, E8m0ScalesWithIntegersUseDivideRule) {
  // docs/schemes.md: the divide rule is the default, s = round_sf(c / qmax) with RNE; the MX
  // rule is only for e8m0 scales with a *float* element. So for int8 with e8m0 scales:
  // c/127 = 177.8/127 = 1.4 rounds to 2^0 = 1 (below the 1.5 tie), v = -177.8 clamps to -127.
  Tensor x = make_tensor({-177.8f, 50.0f, 1.0f, 0.0f}, {1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int8:tensor:sym:e8m0")));
  EXPECT_EQ(q.scales.at(0), 1.0f);
  EXPECT_EQ(q.scale_codes, (std::vector<uint8_t>{127}));
  EXPECT_EQ(q.code_at(0, 0), -127);
  EXPECT_EQ(q.code_at(0, 1), 50);
  EXPECT_EQ(q.code_at(0, 2), 1);
  // e8m0 ties round up (docs/formats.md): c = 190.5 -> c/127 = 1.5 exactly -> s = 2 (code 128);
  // 190.5/2 = 95.25 -> 95, 3/2 = 1.5 -> 2 (even), 5/2 = 2.5 -> 2 (even).
  Tensor y = make_tensor({190.5f, 3.0f, 5.0f, -190.5f}, {1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q2, quantize(y.view(), S("int8:tensor:sym:e8m0")));
  EXPECT_EQ(q2.scales.at(0), 2.0f);
  EXPECT_EQ(q2.scale_codes, (std::vector<uint8_t>{128}));
  EXPECT_EQ(q2.code_at(0, 0), 95);
  EXPECT_EQ(q2.code_at(0, 1), 2);
  EXPECT_EQ(q2.code_at(0, 2), 2);
  EXPECT_EQ(q2.code_at(0, 3), -95);
}

TEST(QuantizeWorked, Pow2Scale) {
  // c/qmax = 1.2/127 = 0.0094488, between 2^-7 and 2^-6 -> s = 2^-6 = 1/64 (never clips).
  // 1.2 * 64 = 76.8 -> 77, -0.5 * 64 = -32, 0.1 * 64 = 6.4 -> 6.
  Tensor x = make_tensor({1.2f, -0.5f, 0.1f}, {1, 3});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int8:tensor:sym:fp32:pow2")));
  EXPECT_EQ(q.scales.at(0), 0.015625f);
  EXPECT_EQ(q.code_at(0, 0), 77);
  EXPECT_EQ(q.code_at(0, 1), -32);
  EXPECT_EQ(q.code_at(0, 2), 6);
  // an exact power of two stays: c/qmax = 127*2^-3/127 = 2^-3.
  Tensor y = make_tensor({15.875f, 1.0f}, {1, 2});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q2, quantize(y.view(), S("int8:tensor:sym:fp32:pow2")));
  EXPECT_EQ(q2.scales.at(0), 0.125f);
  EXPECT_EQ(q2.code_at(0, 0), 127);
  EXPECT_EQ(q2.code_at(0, 1), 8);
}

TEST(QuantizeWorked, PercentileClip) {
  // p50 over 10 values: |x| sorted = 1..10, index ceil(0.5 * 10) - 1 = 4 -> c = 5,
  // s = 5/127; 10 -> 254 clamps to 127, -3 -> -76.2 -> -76.
  Tensor x = make_tensor({1, 2, -3, 4, 5, 6, 7, 8, 9, -10}, {1, 10});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int8:row:sym:fp32:p50")));
  EXPECT_EQ(bits(q.scales.at(0)), bits(5.0f / 127.0f));
  EXPECT_EQ(q.code_at(0, 9), -127);
  EXPECT_EQ(q.code_at(0, 8), 127);
  EXPECT_EQ(q.code_at(0, 4), 127);
  EXPECT_EQ(q.code_at(0, 2), -76);
}

// ---------------------------------------------------------------------------------------
// MX (OCP MX v1.0 §6.3): s = 2^(floor(log2 amax) - emax_elem); e2m1 emax 2, e4m3 emax 8.

TEST(QuantizeMx, Mxfp4HandWorked) {
  // e2m1 codes: 0:0 1:0.5 2:1 3:1.5 4:2 5:3 6:4 7:6, +8 for negative.
  std::vector<float> x(4 * 32, 0.0f);
  // Block (0,0): amax 5 -> floor(log2 5) = 2 -> s = 2^(2-2) = 1 (e8m0 code 127).
  //   5 -> tie 4|6 -> 4 (even mantissa), code 6; -5 -> 14; 0.75 -> tie 0.5|1 -> 1 (code 2);
  //   2.5 -> tie 2|3 -> 2 (code 4); 0.25 -> tie 0|0.5 -> 0 (code 0); 1.25 -> 1 (code 2);
  //   3.5 -> tie 3|4 -> 4 (code 6); 1.75 -> tie 1.5|2 -> 2 (code 4).
  const float b0[] = {5.0f, -5.0f, 0.75f, 2.5f, 0.25f, 1.25f, 3.5f, 1.75f};
  const int c0[] = {6, 14, 2, 4, 0, 2, 6, 4};
  for (int i = 0; i < 8; ++i) x[static_cast<size_t>(i)] = b0[i];
  // Block (1,0): amax 7.9 -> floor(log2 7.9) = 2 -> s = 1; 7.9 saturates to 6 (code 7),
  //   -7.9 -> 15, 5.1 -> 6 (code 7), 4.4 -> 4 (code 6).
  const float b1[] = {7.9f, -7.9f, 5.1f, 4.4f};
  const int c1[] = {7, 15, 7, 6};
  for (int i = 0; i < 4; ++i) x[static_cast<size_t>(32 + i)] = b1[i];
  // Block (2,0): amax 0.7 -> floor(log2 0.7) = -1 -> s = 2^-3 = 0.125 (code 124).
  //   0.7/0.125 = 5.6 -> 6 (code 7) -> 0.75; 0.3/0.125 = 2.4 -> 2 (code 4) -> 0.25.
  const float b2[] = {0.7f, 0.3f};
  const int c2[] = {7, 4};
  for (int i = 0; i < 2; ++i) x[static_cast<size_t>(64 + i)] = b2[i];
  // Block (3,0): amax 4.4 alone -> s = 2^(2-2) = 1 (the divide rule would give
  //   round_e8m0(4.4/6 = 0.733) = 0.5); 4.4 -> 4 (code 6); 11 is in no block here.
  x[96] = 4.4f;
  Tensor t = make_tensor(x, {4, 32});
  for (const char* text : {"e2m1:g32:e8m0", "e2m1:g32:e8m0:mxfloor"}) {
    SCOPED_TRACE(text);
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S(text)));
    ASSERT_EQ(q.scales.size(), 4u);
    EXPECT_EQ(q.scales[0], 1.0f);
    EXPECT_EQ(q.scales[1], 1.0f);
    EXPECT_EQ(q.scales[2], 0.125f);
    EXPECT_EQ(q.scales[3], 1.0f);
    EXPECT_EQ(q.scale_codes, (std::vector<uint8_t>{127, 127, 124, 127}));
    for (int i = 0; i < 8; ++i) EXPECT_EQ(q.code_at(0, i), c0[i]) << "block 0 elem " << i;
    for (int i = 0; i < 4; ++i) EXPECT_EQ(q.code_at(1, i), c1[i]) << "block 1 elem " << i;
    for (int i = 0; i < 2; ++i) EXPECT_EQ(q.code_at(2, i), c2[i]) << "block 2 elem " << i;
    EXPECT_EQ(q.code_at(3, 0), 6);
    EXPECT_EQ(q.code_at(0, 31), 0);
    EXPECT_EQ(q.row_bytes, 16);
    ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
    EXPECT_EQ(d[0], 4.0f);
    EXPECT_EQ(d[1], -4.0f);
    EXPECT_EQ(d[2], 1.0f);
    EXPECT_EQ(d[3], 2.0f);
    EXPECT_EQ(d[32], 6.0f);
    EXPECT_EQ(d[33], -6.0f);
    EXPECT_EQ(d[64], 0.75f);
    EXPECT_EQ(d[65], 0.25f);
    EXPECT_EQ(d[96], 4.0f);
  }
}

TEST(QuantizeMx, Mxfp4LargerExponent) {
  // amax 12 -> floor(log2 12) = 3 -> s = 2^(3-2) = 2 (code 128): 12 -> 6 (code 7),
  // 11/2 = 5.5 -> 6 (code 7), 9/2 = 4.5 -> 4 (code 6), -1/2 -> -0.5 (code 9).
  Tensor t = make_tensor({12.0f, 11.0f, 9.0f, -1.0f}, {1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S("e2m1:g32:e8m0")));
  EXPECT_EQ(q.scales, (std::vector<float>{2.0f}));
  EXPECT_EQ(q.scale_codes, (std::vector<uint8_t>{128}));
  EXPECT_EQ(q.codes, (std::vector<uint8_t>{0x77, 0x96}));
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  EXPECT_EQ(d, (std::vector<float>{12.0f, 12.0f, 8.0f, -1.0f}));
}

TEST(QuantizeMx, Mxfp8HandWorked) {
  std::vector<float> x(2 * 32, 0.0f);
  // Block 0: amax 500 -> floor(log2 500) = 8 -> s = 2^(8-8) = 1 (code 127); 500 saturates
  //   to 448 (0x7E); 460 < 464 (tie point between 448 and 480) -> 448; -3 -> 0xC4 (-3).
  x[0] = 500.0f;
  x[1] = 460.0f;
  x[2] = -3.0f;
  // Block 1: amax 1 -> floor(log2 1) = 0 -> s = 2^-8 (code 119); 1/2^-8 = 256 = 0x78;
  //   0.9 * 256 = 230.4 -> 224 (spacing 16 in [128, 256)) = 0x76 -> 0.875.
  x[32] = 1.0f;
  x[33] = 0.9f;
  Tensor t = make_tensor(x, {1, 64});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S("e4m3:g32:e8m0")));
  EXPECT_EQ(q.scales, (std::vector<float>{1.0f, 0.00390625f}));
  EXPECT_EQ(q.scale_codes, (std::vector<uint8_t>{127, 119}));
  EXPECT_EQ(q.code_at(0, 0), 0x7E);
  EXPECT_EQ(q.code_at(0, 1), 0x7E);
  EXPECT_EQ(q.code_at(0, 2), 0xC4);
  EXPECT_EQ(q.code_at(0, 32), 0x78);
  EXPECT_EQ(q.code_at(0, 33), 0x76);
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  EXPECT_EQ(d[0], 448.0f);
  EXPECT_EQ(d[1], 448.0f);
  EXPECT_EQ(d[2], -3.0f);
  EXPECT_EQ(d[32], 1.0f);
  EXPECT_EQ(d[33], 0.875f);
}

TEST(QuantizeMx, ScaleCodeIs127PlusExponent) {
  // Random blocks: every scale is 2^(floor(log2 amax) - 2), its code 127 + that exponent.
  std::vector<float> x = randn(16 * 96, 3, 20.0f);
  Tensor t = make_tensor(x, {16, 96});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S("e2m1:g32:e8m0")));
  ASSERT_EQ(q.scales.size(), 48u);
  for (int64_t r = 0; r < 16; ++r) {
    for (int64_t b = 0; b < 3; ++b) {
      float amax = 0;
      for (int64_t c = b * 32; c < b * 32 + 32; ++c) amax = std::max(amax, std::fabs(x[static_cast<size_t>(r * 96 + c)]));
      const int e = std::ilogb(amax) - 2;
      const size_t i = static_cast<size_t>(r * 3 + b);
      EXPECT_EQ(q.scales[i], std::ldexp(1.0f, e)) << r << "," << b;
      EXPECT_EQ(q.scale_codes[i], 127 + e) << r << "," << b;
    }
  }
}

// ---------------------------------------------------------------------------------------
// NVFP4: e2m1 elements, e4m3 block scales of 16, one fp32 tensor scale.

TEST(QuantizeNvfp4, TwoLevelScales) {
  std::vector<float> x = randn(64 * 256, 11, 0.05f);
  x[1234] = 0.9f;  // the tensor amax
  Tensor t = make_tensor(x, {64, 256});
  const QuantSpec spec = S("e2m1:g16:e4m3*fp32");
  EXPECT_TRUE(spec.tensor_scale);
  EXPECT_EQ(spec.scale_format, Format::kE4m3);
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), spec));
  EXPECT_EQ(bits(q.tensor_scale), bits(0.9f / (448.0f * 6.0f)));
  ASSERT_EQ(q.scales.size(), 64u * 16u);
  ASSERT_EQ(q.scale_codes.size(), 64u * 16u);
  for (size_t i = 0; i < q.scales.size(); ++i) {
    EXPECT_EQ(bits(q.scales[i]), bits(decode(Format::kE4m3, q.scale_codes[i]) * q.tensor_scale)) << i;
  }
  // the block holding the amax gets s_b = round_e4m3((0.9/6) / g) = 448 (0x7E)
  EXPECT_EQ(q.scale_codes[1234 / 16], 0x7E);
  // storage: codes 64*128 + scale codes 64*16 + 4 bytes of tensor scale
  EXPECT_EQ(q.storage_bytes(), 64 * 128 + 64 * 16 + 4);
  EXPECT_DOUBLE_EQ(q.bits_per_weight(), 8.0 * (64 * 128 + 64 * 16 + 4) / (64.0 * 256.0));
  EXPECT_TRUE(matches_naive(q, naive::quantize(x, 64, 256, spec)));
}

TEST(QuantizeNvfp4, HandWorked) {
  // amax 2688 -> g = 2688 / (448*6) = 1. Block 0 (amax 2688): s_b = 448 (0x7E), 2688/448 = 6 -> code 7;
  // 1000/448 = 2.23 -> 2 (code 4). Block 1 (amax 3): (3/6)/1 = 0.5 -> e4m3 0x30, s = 0.5;
  // 3/0.5 = 6 (code 7), -1/0.5 = -2 (code 12), 0.3/0.5 = 0.6 -> 0.5 (code 1).
  std::vector<float> x(32, 0.0f);
  x[0] = 2688.0f;
  x[1] = 1000.0f;
  x[16] = 3.0f;
  x[17] = -1.0f;
  x[18] = 0.3f;
  Tensor t = make_tensor(x, {1, 32});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S("e2m1:g16:e4m3*fp32")));
  EXPECT_EQ(q.tensor_scale, 1.0f);
  EXPECT_EQ(q.scale_codes, (std::vector<uint8_t>{0x7E, 0x30}));
  EXPECT_EQ(q.scales, (std::vector<float>{448.0f, 0.5f}));
  EXPECT_EQ(q.code_at(0, 0), 7);
  EXPECT_EQ(q.code_at(0, 1), 4);
  EXPECT_EQ(q.code_at(0, 16), 7);
  EXPECT_EQ(q.code_at(0, 17), 12);
  EXPECT_EQ(q.code_at(0, 18), 1);
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  EXPECT_EQ(d[0], 2688.0f);
  EXPECT_EQ(d[1], 896.0f);
  EXPECT_EQ(d[16], 3.0f);
  EXPECT_EQ(d[17], -1.0f);
  EXPECT_EQ(d[18], 0.25f);
}

TEST(QuantizeNvfp4, AllZeroTensor) {
  std::vector<float> x(3 * 40, 0.0f);
  Tensor t = make_tensor(x, {3, 40});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S("e2m1:g16:e4m3*fp32")));
  EXPECT_EQ(q.tensor_scale, 1.0f);  // "1 if the tensor is all zeros"
  for (float s : q.scales) EXPECT_EQ(s, 0.0f);
  for (uint8_t c : q.codes) EXPECT_EQ(c, 0);
  ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
  for (float v : d) EXPECT_EQ(bits(v), 0u);
}

// ---------------------------------------------------------------------------------------
// Zero blocks: c = 0 gives s = 0 (e8m0: code 0 = 2^-127), codes of zero, x_hat = 0.

TEST(QuantizeZero, ZeroBlocks) {
  std::vector<float> x = randn(4 * 64, 5);
  for (int c = 0; c < 64; ++c) x[static_cast<size_t>(64 + c)] = 0.0f;  // row 1
  Tensor t = make_tensor(x, {4, 64});
  struct Case {
    const char* spec;
    float zero_scale;
  };
  // e8m0 has no zero: the stored code is 0 (2^-127); `scales` may report the s = 0 the doc
  // assigns, or the decoded 2^-127 (the doc's parenthetical allows either reading).
  for (const Case& k : {Case{"int4:g32", 0.0f}, Case{"int8:row:sym:fp16", 0.0f}, Case{"uint4:g32:asym:fp16", 0.0f},
                        Case{"nf4:g32", 0.0f}, Case{"e4m3:g32:bf16", 0.0f}, Case{"e2m1:g32:e8m0", -1.0f},
                        Case{"e4m3:g32:e8m0", -1.0f}}) {
    SCOPED_TRACE(k.spec);
    const QuantSpec spec = S(k.spec);
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), spec));
    const int64_t gc = q.grid().grid_cols;
    for (int64_t b = 0; b < gc; ++b) {
      const float got = q.scales.at(static_cast<size_t>(gc + b));
      if (k.zero_scale < 0) {
        EXPECT_TRUE(got == 0.0f || got == std::ldexp(1.0f, -127)) << got;
      } else {
        EXPECT_EQ(got, k.zero_scale);
      }
      if (!spec.symmetric) {
        EXPECT_EQ(q.zero_points.at(static_cast<size_t>(gc + b)), 0);
      }
    }
    if (spec.scale_format == Format::kE8m0) {
      EXPECT_EQ(q.scale_codes.at(static_cast<size_t>(gc)), 0);
    }
    ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
    for (int c = 0; c < 64; ++c) EXPECT_EQ(d[static_cast<size_t>(64 + c)], 0.0f) << c;
    EXPECT_TRUE(matches_naive(q, naive::quantize(x, 4, 64, spec)));
  }
}

// ---------------------------------------------------------------------------------------
// SQNR of uniform quantization, closed form.
//
// x ~ Uniform(-A, A), symmetric per-tensor with qmax = 2^(b-1) - 1 and s = A / qmax (the
// sample max|x| is A to within 1e-6 relative at n = 10^6). Every interior cell has width s
// and the error in it is uniform on [-s/2, s/2]; the two edge cells [(qmax - 1/2) s, qmax s]
// are half cells with error uniform on [-s/2, 0] (or [0, s/2]), whose mean square is also
// s^2/12. So MSE = s^2/12 exactly (no clipping: |x| <= A = qmax s), the signal power is A^2/3,
// and SQNR = 10 log10((A^2/3) / (s^2/12)) = 10 log10(4 qmax^2) = 20 log10(2 qmax)
//          = 20 log10(2^b - 2) dB = 6.0206 b + 20 log10(1 - 2^(1-b))
// (b=8: 48.0967, b=4: 22.9226, b=2: 6.0206; -> 6.02 b for large b). The estimate's standard error at n = 10^6 is ~0.005 dB, so
// 0.1 dB is a tight yet safe bound.

double sqnr_closed_form(int b) { return 20.0 * std::log10(std::ldexp(1.0, b) - 2.0); }

TEST(QuantizeSqnr, UniformClosedForm) {
  const size_t n = 1000000;
  const double A = 3.0;
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> u(-A, A);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(u(rng));
  Tensor t = make_tensor(x, {1000, 1000});

  double power = 0;
  for (float v : x) power += static_cast<double>(v) * v;
  power /= static_cast<double>(n);
  EXPECT_NEAR(power, A * A / 3.0, 0.01);

  // Generic b-bit reference, b = 2..8.
  std::vector<naive::BitsResult> ref(9);
  for (int b = 2; b <= 8; ++b) {
    ref[static_cast<size_t>(b)] = naive::quantize_sym_bits(x, b);
    const ErrorStats e = error_stats(x, ref[static_cast<size_t>(b)].deq);
    EXPECT_NEAR(e.sqnr_db, sqnr_closed_form(b), 0.1) << "naive b = " << b;
    const double s = ref[static_cast<size_t>(b)].scale;
    EXPECT_NEAR(e.mse, s * s / 12.0, 0.01 * s * s / 12.0) << "b = " << b;
  }
  // lowbit at b = 8 (int8) and b = 4 (int4): SQNR, and bit-identical to the reference.
  for (auto [b, text] : {std::pair{8, "int8:tensor:sym:fp32"}, std::pair{4, "int4:tensor:sym:fp32"}}) {
    SCOPED_TRACE(text);
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), S(text)));
    ASSERT_OK_AND_ASSIGN(std::vector<float> d, deq(q));
    const ErrorStats e = error_stats(x, d);
    EXPECT_NEAR(e.sqnr_db, sqnr_closed_form(b), 0.1);
    // error_stats against a direct double computation
    double se = 0, sx = 0, mx = 0;
    for (size_t i = 0; i < n; ++i) {
      const double diff = static_cast<double>(x[i]) - d[i];
      se += diff * diff;
      sx += static_cast<double>(x[i]) * x[i];
      mx = std::max(mx, std::fabs(diff));
    }
    EXPECT_NEAR(e.sqnr_db, 10.0 * std::log10(sx / se), 1e-6);
    EXPECT_NEAR(e.mse, se / static_cast<double>(n), 1e-9 * se / static_cast<double>(n));
    EXPECT_NEAR(e.max_abs, mx, 1e-12);
    EXPECT_LE(e.max_abs, q.scales[0] / 2 * (1 + 1e-5));
    const naive::BitsResult& r = ref[static_cast<size_t>(b)];
    EXPECT_EQ(bits(q.scales.at(0)), bits(r.scale));
    int64_t mismatches = 0;
    for (int64_t i = 0; i < 1000; ++i)
      for (int64_t j = 0; j < 1000; ++j)
        if (q.code_at(i, j) != r.code[static_cast<size_t>(i * 1000 + j)] && mismatches++ < 5)
          ADD_FAILURE() << "code_at(" << i << ", " << j << ") = " << q.code_at(i, j) << ", naive "
                        << r.code[static_cast<size_t>(i * 1000 + j)] << " x = " << x[static_cast<size_t>(i * 1000 + j)];
    EXPECT_EQ(mismatches, 0);
    EXPECT_TRUE(same_float_bits(d, r.deq, "x_hat"));
  }
}

// ---------------------------------------------------------------------------------------
// quantize -> dequantize -> quantize gives the same codes and scales.
//
// Exact idempotence holds when the max element decodes to exactly +-qmax (so max|x_hat| =
// qmax * s) and round_sf(qmax * s / qmax) = s. Scale formats:
//  - fp32: s' = fl(fl(qmax * s) / qmax) is s or one ulp off (measured: fl(fl(127 s)/127) != s
//    for ~0.8% of fp32 s, for qmax 7 ~11%), so fp32 scales are compared to 2 ulp; codes are
//    still identical (x_hat / s' is within 1e-7 relative of a level).
//  - fp16 / bf16: round_sf(c / qmax) is within 2^-11 / 2^-8 relative, so the max element still
//    rounds to qmax (127 / (1 + 2^-8) = 126.506 > 126.5) and everything is exact.
//  - e4m3 scales (relative error up to 1/16) only with qmax <= 7 (int4, e2m1): 7/1.0625 = 6.59
//    still rounds to 7. With int8 (127/1.0625 = 119.5) or e4m3 elements (448/1.0625 rounds to
//    416) the max code can drop and the scale shrinks on the second pass: excluded.
//  - e8m0 with the divide rule (integer / nf4 elements): ties round up, relative error up to
//    1/3; a block with c/s in [95.25, 95.5) (int8) re-quantizes to half the scale: excluded.
//    e8m0 with the MX rule is exactly idempotent: c/s in [2^emax, 2^(emax+1)) maps to a code
//    in [2^emax, max], whose floor(log2) is emax again, and x_hat / s is exact.
//  - asym only with fp32 scales: with a rounded scale s > (hi - lo)/(qmax - qmin) the top
//    element can round to qmax - 1 (top = (qmax - qmin)/(1 + d) + e with e in [-1/2, 1/2]),
//    shrinking the range. With fp32 the codes are identical and the scale within 2 ulp.
//  - e4m3*fp32 (NVFP4): the tensor scale is recomputed from max|x_hat| = 6 fl(448 g), so g and
//    the effective scales move by a few ulp; the e4m3 scale codes and element codes are exact.
//  - pow2 with integers: c/s in (qmax/2, qmax], so k = round(c/s) > qmax/2 and
//    2^ceil(log2(k s / qmax)) = s: exact. (With e4m3 elements c/s in (224, 232) rounds to 224
//    = 448/2 and the scale halves: excluded.)
//  - p<P>: |x_hat| is a non-decreasing function of |x|, so the same order statistic selects
//    qmax * s again. mse: r = 1 reproduces x_hat exactly (MSE 0) and wins ties.
//  - stochastic rounding excluded: the max element with c/s slightly below qmax can round
//    down to qmax - 1 with small probability, shrinking the scale.
//  - fp16 scales with g1: single tiny elements underflow fp16 (an error), so g1 uses fp32.
//  - float elements need the scale's relative error below half the element's spacing at
//    qmax (e4m3 1/28, e2m1 1/6, e5m2 1/14, fp16 2^-12): fp16 elements only with fp32 scales
//    (a bf16 scale can put the max element on 65248 instead of 65504).

int64_t ulp_diff(float a, float b) {
  return std::abs(static_cast<int64_t>(bits(a)) - static_cast<int64_t>(bits(b)));
}

TEST(QuantizeIdempotent, RequantizeGivesSameCodesAndScales) {
  const char* specs[] = {
      // integers
      "int8:tensor", "int8:row", "int8:col:sym:fp16", "int8:g1", "int8:g7:sym:bf16", "int8:g32:sym:fp16",
      "int8:g128", "int8:block128x128:sym:fp16", "int8:block3x5", "int8:tile1x128:sym:bf16",
      "int4:g32:sym:e4m3", "int4:g128:sym:fp16", "int4:row:sym:bf16", "int4:block3x5:sym:fp16", "int4:g7",
      "uint8:tensor:asym", "uint8:row:asym", "uint8:col:asym", "int8:g32:asym", "uint4:g32:asym",
      "uint4:g128:asym:fp32", "int4:g7:asym", "uint4:block3x5:asym", "uint4:tile1x128:asym",
      // clip / scale rules
      "int8:row:sym:fp32:pow2", "int4:g32:sym:fp16:pow2", "int8:row:sym:fp16:p99", "int4:g32:sym:fp16:mse",
      // nf4
      "nf4:g64", "nf4:g32:sym:fp16", "nf4:tensor:sym:bf16", "nf4:block3x5",
      // float elements
      "e4m3:tensor", "e4m3:row", "e4m3:block128x128", "e4m3:tile1x128", "e4m3:g32:sym:fp16",
      "e4m3:col:sym:bf16", "e4m3:row:sym:fp32:nosat", "e5m2:g32", "e5m2:row:sym:fp16", "e2m1:g32",
      "e2m1:g16:sym:e4m3", "e2m1:g7:sym:bf16", "fp16:row", "fp16:g32", "bf16:row", "bf16:g128",
      // MX and NVFP4
      "e2m1:g32:e8m0", "e4m3:g32:e8m0", "e5m2:g32:e8m0", "e2m1:block3x5:e8m0", "e2m1:g16:e4m3*fp32",
  };
  const std::pair<int64_t, int64_t> shapes[] = {{7, 172}, {3, 129}, {130, 300}};
  uint64_t seed = 100;
  for (const char* text : specs) {
    const QuantSpec spec = S(text);
    const bool exact_scales = spec.scale_format != Format::kFp32 && !spec.tensor_scale;
    for (auto [rows, cols] : shapes) {
      SCOPED_TRACE(std::string(text) + " " + std::to_string(rows) + "x" + std::to_string(cols));
      std::vector<float> x = randn(static_cast<size_t>(rows * cols), ++seed);
      Tensor t = make_tensor(x, {rows, cols});
      ASSERT_OK_AND_ASSIGN(QuantizedTensor q1, quantize(t.view(), spec));
      ASSERT_OK_AND_ASSIGN(std::vector<float> d1, deq(q1));
      Tensor t2 = make_tensor(d1, {rows, cols});
      ASSERT_OK_AND_ASSIGN(QuantizedTensor q2, quantize(t2.view(), spec));
      EXPECT_TRUE(same_vec(q1.codes, q2.codes, "codes"));
      EXPECT_TRUE(same_vec(q1.zero_points, q2.zero_points, "zero_points"));
      ASSERT_EQ(q1.scales.size(), q2.scales.size());
      if (exact_scales) {
        EXPECT_TRUE(same_float_bits(q1.scales, q2.scales, "scales"));
        EXPECT_TRUE(same_vec(q1.scale_codes, q2.scale_codes, "scale_codes"));
      } else {
        const int64_t tol = spec.tensor_scale ? 4 : 2;
        for (size_t i = 0; i < q1.scales.size(); ++i)
          ASSERT_LE(ulp_diff(q1.scales[i], q2.scales[i]), tol)
              << "scale " << i << ": " << q1.scales[i] << " vs " << q2.scales[i];
        if (spec.tensor_scale) {
          EXPECT_TRUE(same_vec(q1.scale_codes, q2.scale_codes, "e4m3 scale codes"));
          EXPECT_LE(ulp_diff(q1.tensor_scale, q2.tensor_scale), 2);
        }
      }
      // a third pass from the second is stable too
      ASSERT_OK_AND_ASSIGN(std::vector<float> d2, deq(q2));
      for (size_t i = 0; i < d1.size(); ++i)
        ASSERT_LE(std::fabs(d1[i] - d2[i]), 4e-6f * std::fabs(d1[i])) << i;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Bit-exact against the naive reference on ragged grids.

struct RefCase {
  const char* spec;
};

// Runs spec over (rows, cols) data through lowbit (fast and reference paths) and naive; both
// must error, or both must agree bit for bit. Returns true if the case ran (no error).
bool check_against_naive(const std::vector<float>& x, int64_t rows, int64_t cols, const QuantSpec& spec,
                         const std::string& what) {
  SCOPED_TRACE(what);
  Tensor t = make_tensor(x, {rows, cols});
  const naive::Result ref = naive::quantize(x, rows, cols, spec);
  for (bool use_ref : {false, true}) {
    QuantizeOptions opt;
    opt.use_reference = use_ref;
    auto q = quantize(t.view(), spec, opt);
    if (!ref.ok) {
      EXPECT_FALSE(q.ok()) << "naive: " << ref.error << "; lowbit accepted it (use_reference=" << use_ref << ")";
      continue;
    }
    if (!q.ok()) {
      ADD_FAILURE() << "lowbit error (use_reference=" << use_ref << "): " << q.status().to_string();
      continue;
    }
    EXPECT_TRUE(matches_naive(*q, ref)) << "use_reference=" << use_ref;
    const naive::Grid g = naive::grid(spec, rows, cols);
    const BlockGrid bg = q->grid();
    EXPECT_EQ(bg.grid_rows, g.grid_rows);
    EXPECT_EQ(bg.grid_cols, g.grid_cols);
    EXPECT_EQ(q->shape.ndim, 2);
  }
  return ref.ok;
}

TEST(QuantizeReference, RaggedGroupsMatchNaive) {
  const char* specs[] = {
      "int8:row", "int8:tensor", "int8:col", "int4:g7", "int4:g32", "int4:g128", "int8:g7:sym:fp16",
      "int8:g32:sym:bf16", "int4:g32:sym:e4m3", "int8:g32:sym:e8m0", "int8:row:sym:fp32:pow2",
      "int8:row:sym:fp32:p90", "int8:row:sym:fp32:p99.9", "int4:g32:sym:fp32:p95", "uint8:row:asym",
      "uint8:col:asym", "uint8:tensor:asym", "uint4:g32:asym:fp16", "uint4:g7:asym", "int4:g128:asym",
      "int8:g32:asym:bf16", "nf4:g64", "nf4:g7:sym:fp16", "e4m3:row", "e4m3:g128", "e4m3:col:sym:fp16",
      "e5m2:g32", "e4m3:g32:sym:fp32:nosat", "e2m1:g32", "e2m1:g32:e8m0", "e4m3:g32:e8m0", "e5m2:g7:e8m0",
      "e2m1:g16:e4m3*fp32", "fp16:g32", "bf16:row", "fp16:g7:sym:bf16",
      "bf16:g7", "fp16:row:sym:fp32:nosat", "int4:g32:sym:fp32:sr7", "e4m3:g7:sym:fp32:sr3",
      "int3:g64", "int3:g7:sym:fp16", "uint3:g64:asym:fp16", "uint3:g7:asym", "int3:g64:asym:bf16",
      "uint3:row:asym", "int3:g32:sym:fp32:p99", "int3:g32:sym:fp32:sr5",
      "int5:g64:sym:fp16", "uint5:g7:asym", "int5:g32:asym:bf16", "int6:g128:sym:fp16", "uint6:g64:asym:fp16",
      "int6:row:sym:fp32:p99", "uint5:g32:asym:fp32:sr3",
  };
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 7}, {3, 127}, {2, 129}, {5, 172}, {1, 4097}};
  int ran = 0, total = 0;
  uint64_t seed = 1;
  for (const char* text : specs) {
    const QuantSpec spec = S(text);
    for (auto [rows, cols] : shapes) {
      const std::string what = std::string(text) + " " + std::to_string(rows) + "x" + std::to_string(cols);
      ran += check_against_naive(special_data(rows, cols, ++seed), rows, cols, spec, what + " special");
      ran += check_against_naive(tie_data(spec, rows, cols, ++seed), rows, cols, spec, what + " ties");
      total += 2;
    }
  }
  EXPECT_GE(ran, total * 9 / 10) << "too many cases were errors in both";
}

// Unit-scale casts (the embedding's fp16:tensor:unit) take the fp16 / bf16 span converters: the
// same codes as the element-by-element reference, and the same values back, over odd shapes.
TEST(QuantizeReference, UnitCastsMatchTheReferencePath) {
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 7}, {3, 127}, {2, 129}, {5, 172}, {1, 4097}};
  uint64_t seed = 101;
  for (const char* text : {"fp16:tensor:unit", "bf16:tensor:unit", "fp16:row:unit", "bf16:g7:sym:fp32:unit"}) {
    const QuantSpec spec = S(text);
    for (auto [rows, cols] : shapes) {
      for (int kind = 0; kind < 2; ++kind) {
        std::vector<float> x = kind == 0 ? special_data(rows, cols, ++seed) : tie_data(spec, rows, cols, ++seed);
        for (float& v : x) v = std::clamp(v, -60000.0f, 60000.0f);  // a unit cast refuses what fp16 cannot hold
        const Tensor t = make_tensor(x, {rows, cols});
        QuantizeOptions ref_opt;
        ref_opt.use_reference = true;
        ASSERT_OK_AND_ASSIGN(QuantizedTensor fast, quantize(t.view(), spec));
        ASSERT_OK_AND_ASSIGN(QuantizedTensor ref, quantize(t.view(), spec, ref_opt));
        EXPECT_TRUE(same_quant(fast, ref)) << text << " " << rows << "x" << cols << " kind " << kind;
        ASSERT_OK_AND_ASSIGN(std::vector<float> a, deq(fast));
        ASSERT_OK_AND_ASSIGN(std::vector<float> b, deq(ref, /*use_reference=*/true));
        ASSERT_EQ(a.size(), b.size());
        EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << text << " " << rows << "x" << cols;
        for (size_t i = 0; i < x.size(); ++i) {  // a unit cast is the element format's own rounding
          const float want = decode(spec.element, encode(spec.element, x[i]));
          ASSERT_TRUE(a[i] == want || (std::isnan(a[i]) && std::isnan(want))) << text << " " << i << ": " << x[i];
        }
      }
    }
  }
}

TEST(QuantizeReference, BlocksMatchNaive) {
  const char* specs[] = {
      "int8:block128x128", "int8:block3x5", "int8:tile1x128", "e4m3:block128x128", "e4m3:tile1x128",
      "e4m3:block3x5:sym:fp16", "int4:block3x5:sym:bf16", "uint4:block3x5:asym", "uint8:block128x128:asym",
      "nf4:tile1x128", "e2m1:block3x5:e8m0", "int8:block128x128:sym:fp32:sr5", "uint3:block3x5:asym",
      "int3:block128x128",
  };
  uint64_t seed = 7000;
  for (const char* text : specs) {
    const QuantSpec spec = S(text);
    EXPECT_TRUE(check_against_naive(special_data(130, 300, ++seed), 130, 300, spec, std::string(text) + " special"));
    EXPECT_TRUE(check_against_naive(tie_data(spec, 130, 300, ++seed), 130, 300, spec, std::string(text) + " ties"));
  }
}

// A heavy-tailed block where clipping pays: the mse rule picks r in {1.00, 0.99, ..., 0.50}
// with the smallest block MSE (never worse than absmax).
TEST(QuantizeReference, MseClipProperties) {
  std::mt19937_64 rng(77);
  std::student_t_distribution<double> st(2.0);
  const int64_t rows = 8, cols = 256;
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (auto& v : x) v = static_cast<float>(st(rng));
  Tensor t = make_tensor(x, {rows, cols});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor qm, quantize(t.view(), S("int4:g32:sym:fp32:mse")));
  ASSERT_OK_AND_ASSIGN(QuantizedTensor qa, quantize(t.view(), S("int4:g32:sym:fp32")));
  ASSERT_OK_AND_ASSIGN(std::vector<float> dm, deq(qm));
  ASSERT_OK_AND_ASSIGN(std::vector<float> da, deq(qa));
  int clipped = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < cols / 32; ++b) {
      float amax = 0;
      double em = 0, ea = 0;
      for (int64_t c = b * 32; c < b * 32 + 32; ++c) {
        const size_t i = static_cast<size_t>(r * cols + c);
        amax = std::max(amax, std::fabs(x[i]));
        em += (static_cast<double>(x[i]) - dm[i]) * (static_cast<double>(x[i]) - dm[i]);
        ea += (static_cast<double>(x[i]) - da[i]) * (static_cast<double>(x[i]) - da[i]);
      }
      // best candidate by a naive grid search
      double best = std::numeric_limits<double>::infinity();
      for (int k = 0; k <= 50; ++k) {
        const float c = static_cast<float>((100 - k) / 100.0) * amax;
        const float s = c / 7.0f;
        double e = 0;
        for (int64_t cc = b * 32; cc < b * 32 + 32; ++cc) {
          const float xv = x[static_cast<size_t>(r * cols + cc)];
          const float q = std::nearbyint(std::clamp(xv / s, -7.0f, 7.0f));
          e += (static_cast<double>(xv) - q * s) * (static_cast<double>(xv) - q * s);
        }
        best = std::min(best, e);
      }
      const size_t bi = static_cast<size_t>(r * (cols / 32) + b);
      const double ratio = static_cast<double>(qm.scales[bi]) * 7.0 / amax;
      EXPECT_GE(ratio, 0.5 - 1e-6) << r << "," << b;
      EXPECT_LE(ratio, 1.0 + 1e-6) << r << "," << b;
      EXPECT_NEAR(ratio * 100, std::round(ratio * 100), 1e-3) << "r not on the 0.01 grid: " << ratio;
      EXPECT_LE(em, ea * (1 + 1e-9) + 1e-30) << "mse worse than absmax at " << r << "," << b;
      EXPECT_LE(em, best * (1 + 1e-4) + 1e-30) << "not the best candidate at " << r << "," << b;
      clipped += ratio < 0.995;
    }
  }
  EXPECT_GT(clipped, 0) << "heavy-tailed data never clipped: the mse option looks inert";
}

TEST(QuantizeReference, StridedInputsMatchContiguous) {
  const int64_t rows = 33, cols = 129;
  for (const char* text : {"int8:row", "int4:g32", "uint4:g32:asym:fp16", "e4m3:block128x128", "e2m1:g32:e8m0",
                           "int8:col", "nf4:g64", "int4:g32:sym:fp32:sr7", "e2m1:g16:e4m3*fp32"}) {
    SCOPED_TRACE(text);
    const QuantSpec spec = S(text);
    // (a) transpose of a contiguous (cols, rows) tensor
    std::vector<float> base = randn(static_cast<size_t>(rows * cols), 31);
    Tensor tb = make_tensor(base, {cols, rows});
    ConstTensorView vt = static_cast<const Tensor&>(tb).view().transpose(0, 1);
    ASSERT_EQ(vt.dim(0), rows);
    ASSERT_FALSE(vt.is_contiguous());
    std::vector<float> copy(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) copy[static_cast<size_t>(r * cols + c)] = base[static_cast<size_t>(c * rows + r)];
    Tensor tc = make_tensor(copy, {rows, cols});
    // (b) a column slice of a wider tensor: row stride cols + 13, offset 5
    std::vector<float> wide = randn(static_cast<size_t>(rows * (cols + 13)), 32);
    Tensor tw = make_tensor(wide, {rows, cols + 13});
    ConstTensorView vs = static_cast<const Tensor&>(tw).view().slice(1, 5, 5 + cols);
    ASSERT_EQ(vs.stride(0), cols + 13);
    std::vector<float> copy2(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) copy2[static_cast<size_t>(r * cols + c)] = wide[static_cast<size_t>(r * (cols + 13) + 5 + c)];
    Tensor tc2 = make_tensor(copy2, {rows, cols});
    for (bool use_ref : {false, true}) {
      QuantizeOptions opt;
      opt.use_reference = use_ref;
      ASSERT_OK_AND_ASSIGN(QuantizedTensor qt, quantize(vt, spec, opt));
      ASSERT_OK_AND_ASSIGN(QuantizedTensor qc, quantize(tc.view(), spec, opt));
      EXPECT_TRUE(same_quant(qt, qc)) << "transpose, use_reference=" << use_ref;
      EXPECT_TRUE(matches_naive(qc, naive::quantize(copy, rows, cols, spec)));
      ASSERT_OK_AND_ASSIGN(QuantizedTensor qs, quantize(vs, spec, opt));
      ASSERT_OK_AND_ASSIGN(QuantizedTensor qc2, quantize(tc2.view(), spec, opt));
      EXPECT_TRUE(same_quant(qs, qc2)) << "slice, use_reference=" << use_ref;
      // dequantize into a transposed (strided) output
      ASSERT_OK_AND_ASSIGN(std::vector<float> dc, deq(qc, use_ref));
      ASSERT_OK_AND_ASSIGN(Tensor ob, Tensor::empty(DType::kF32, {cols, rows}));
      ASSERT_TRUE(dequantize(qc, ob.view().transpose(0, 1), use_ref).ok());
      const float* p = ob.data_as<float>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(bits(p[c * rows + r]), bits(dc[static_cast<size_t>(r * cols + c)])) << r << "," << c;
    }
  }
}

TEST(QuantizeReference, LeadingDimsFlattenIntoRows) {
  std::vector<float> x = randn(2 * 3 * 40, 9);
  Tensor t3 = make_tensor(x, {2, 3, 40});
  Tensor t2 = make_tensor(x, {6, 40});
  Tensor t1 = make_tensor(x, {240});
  for (const char* text : {"int4:g16", "int8:row", "e4m3:block4x16", "uint8:col:asym"}) {
    SCOPED_TRACE(text);
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q3, quantize(t3.view(), S(text)));
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q2, quantize(t2.view(), S(text)));
    EXPECT_EQ(q3.rows, 6);
    EXPECT_EQ(q3.cols, 40);
    ASSERT_EQ(q3.shape.ndim, 3);
    EXPECT_EQ(q3.shape.dims[0], 2);
    EXPECT_EQ(q3.shape.dims[1], 3);
    EXPECT_EQ(q3.shape.dims[2], 40);
    EXPECT_TRUE(same_vec(q3.codes, q2.codes, "codes"));
    EXPECT_TRUE(same_float_bits(q3.scales, q2.scales, "scales"));
    EXPECT_TRUE(same_vec(q3.zero_points, q2.zero_points, "zero_points"));
    ASSERT_OK_AND_ASSIGN(std::vector<float> d3, deq(q3));
    ASSERT_OK_AND_ASSIGN(std::vector<float> d2, deq(q2));
    EXPECT_TRUE(same_float_bits(d3, d2, "x_hat"));
    EXPECT_TRUE(matches_naive(q2, naive::quantize(x, 6, 40, S(text))));
  }
  // a 1-D tensor is one row
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q1, quantize(t1.view(), S("int4:g16")));
  EXPECT_EQ(q1.rows, 1);
  EXPECT_EQ(q1.cols, 240);
  EXPECT_TRUE(matches_naive(q1, naive::quantize(x, 1, 240, S("int4:g16"))));
}

// ---------------------------------------------------------------------------------------
// Fast paths vs the scalar reference, at every ISA this CPU has.

TEST(QuantizeFastPath, MatchesReferenceAtEveryIsa) {
  const char* specs[] = {"int8:row",          "int4:g128",         "uint4:g32:asym", "e4m3:tile1x128",
                         "e4m3:block128x128", "e2m1:g32:e8m0",     "nf4:g64",        "int4:g32:sym:fp16",
                         "int8:tensor",       "e2m1:g16:e4m3*fp32", "uint8:row:asym", "int8:col",
                         "fp16:tensor:unit",  "bf16:g7:sym:fp32:unit", "fp16:g32",   "bf16:row"};
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {7, 127}, {33, 129}, {5, 172}, {2, 4097}};
  for (Isa isa : supported_isas()) {
    ScopedIsa force(isa);
    uint64_t seed = 500;
    for (const char* text : specs) {
      const QuantSpec spec = S(text);
      for (auto [rows, cols] : shapes) {
        for (int kind = 0; kind < 3; ++kind) {
          SCOPED_TRACE(std::string(isa_name(isa)) + " " + text + " " + std::to_string(rows) + "x" +
                       std::to_string(cols) + (kind == 0 ? " normal" : kind == 1 ? " special" : " ties"));
          const std::vector<float> x = kind == 0   ? randn(static_cast<size_t>(rows * cols), ++seed, 0.7f)
                                       : kind == 1 ? special_data(rows, cols, ++seed)
                                                   : tie_data(spec, rows, cols, ++seed);
          Tensor t = make_tensor(x, {rows, cols});
          auto fast = quantize(t.view(), spec);
          QuantizeOptions ref_opt;
          ref_opt.use_reference = true;
          auto ref = quantize(t.view(), spec, ref_opt);
          ASSERT_EQ(fast.ok(), ref.ok()) << (fast.ok() ? ref.status().to_string() : fast.status().to_string());
          if (!fast.ok()) continue;
          EXPECT_TRUE(same_quant(*fast, *ref));
          ASSERT_OK_AND_ASSIGN(std::vector<float> df, deq(*fast, false));
          ASSERT_OK_AND_ASSIGN(std::vector<float> dr, deq(*fast, true));
          EXPECT_TRUE(same_float_bits(df, dr, "dequantize fast vs reference"));
          if (kind == 2 && spec.scale_rule != ScaleRule::kUnit) {  // the naive reference has no unit scales
            EXPECT_TRUE(matches_naive(*ref, naive::quantize(x, rows, cols, spec)));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Thread counts do not change any bit (stochastic rounding included).

class QuantizeThreads : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = num_threads(); }
  void TearDown() override { ASSERT_TRUE(set_num_threads(saved_).ok()); }
  int saved_ = 1;
};

TEST_F(QuantizeThreads, SameBitsWithOneAndThreeThreads) {
  const std::pair<int64_t, int64_t> shapes[] = {{257, 1000}, {1, 100003}, {130, 300}};
  for (const char* text : {"int4:g32:sym:fp32:sr7", "int8:row", "uint4:g32:asym:fp16", "e4m3:block128x128",
                           "e2m1:g32:e8m0", "e2m1:g16:e4m3*fp32", "int8:tensor", "int8:col", "nf4:g64",
                           "e4m3:tile1x128:sym:fp32:sr11"}) {
    const QuantSpec spec = S(text);
    for (auto [rows, cols] : shapes) {
      SCOPED_TRACE(std::string(text) + " " + std::to_string(rows) + "x" + std::to_string(cols));
      std::vector<float> x = randn(static_cast<size_t>(rows * cols), static_cast<uint64_t>(rows + cols));
      Tensor t = make_tensor(x, {rows, cols});
      ASSERT_TRUE(set_num_threads(1).ok());
      ASSERT_OK_AND_ASSIGN(QuantizedTensor q1, quantize(t.view(), spec));
      ASSERT_OK_AND_ASSIGN(std::vector<float> d1, deq(q1));
      ASSERT_TRUE(set_num_threads(3).ok());
      ASSERT_OK_AND_ASSIGN(QuantizedTensor q3, quantize(t.view(), spec));
      ASSERT_OK_AND_ASSIGN(std::vector<float> d3, deq(q3));
      EXPECT_TRUE(same_quant(q1, q3));
      EXPECT_TRUE(same_float_bits(d1, d3, "x_hat"));
      if (spec.rounding == Rounding::kStochastic && rows * cols < 200000) {
        EXPECT_TRUE(matches_naive(q3, naive::quantize(x, rows, cols, spec)));
      }
    }
  }
}

TEST(QuantizeStochastic, SeedMattersAndIsUnbiased) {
  // s = 7/7 = 1; 2.25 lies between codes 2 and 3, SR goes up with probability 1/4:
  // only 2 and 3 appear, with mean 2.25.
  std::vector<float> x(4096, 0.0f);
  x[0] = 7.0f;  // s = 1 for every row of g4096
  for (size_t i = 1; i < x.size(); ++i) x[i] = 2.25f;
  Tensor t = make_tensor(x, {1, 4096});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor a, quantize(t.view(), S("int4:row:sym:fp32:sr1")));
  ASSERT_OK_AND_ASSIGN(QuantizedTensor b, quantize(t.view(), S("int4:row:sym:fp32:sr2")));
  EXPECT_NE(a.codes, b.codes);
  double sum = 0;
  int twos = 0, threes = 0;
  for (int64_t c = 1; c < 4096; ++c) {
    const int v = a.code_at(0, c);
    sum += v;
    twos += v == 2;
    threes += v == 3;
  }
  EXPECT_EQ(twos + threes, 4095);
  EXPECT_NEAR(sum / 4095.0, 2.25, 0.03);  // SE = sqrt(0.1875/4095) = 0.0068
}

// ---------------------------------------------------------------------------------------
// Storage cost, exact.

TEST(QuantizeStorage, BitsPerWeightExact) {
  EXPECT_EQ(bits_per_weight(S("int4:g128:sym:fp16"), 4096, 4096), 4.125);
  EXPECT_EQ(bits_per_weight(S("int8:row:sym:fp32"), 4096, 4096), 8.0 + 32.0 / 4096.0);
  EXPECT_EQ(bits_per_weight(S("uint4:g32:asym:fp16"), 4096, 4096), 4.0 + 16.0 / 32.0 + 4.0 / 32.0);
  EXPECT_EQ(bits_per_weight(S("uint8:row:asym:fp32"), 4096, 4096), 8.0 + 32.0 / 4096.0 + 8.0 / 4096.0);
  EXPECT_EQ(bits_per_weight(S("e2m1:g32:e8m0"), 4096, 4096), 4.25);
  EXPECT_EQ(bits_per_weight(S("e4m3:block128x128"), 4096, 4096), 8.0 + 32.0 / (128.0 * 128.0));
  EXPECT_EQ(bits_per_weight(S("int8:tensor"), 4096, 4096), 8.0 + 32.0 / (4096.0 * 4096.0));
  const double nvfp4 = bits_per_weight(S("e2m1:g16:e4m3*fp32"), 4096, 4096);
  EXPECT_EQ(nvfp4, 4.0 + 8.0 / 16.0 + 32.0 / (4096.0 * 4096.0));
  EXPECT_NEAR(nvfp4, 4.5000019073486328, 1e-15);
  // ragged: 5x172 int4 g32 fp16: row_bytes 86, codes 430, scales 5 * 6 * 2 = 60
  EXPECT_EQ(bits_per_weight(S("int4:g32:sym:fp16"), 5, 172), 8.0 * 490 / 860);
}

TEST(QuantizeStorage, QuantizedTensorAccounting) {
  struct Case {
    const char* spec;
    int64_t rows, cols, row_bytes, storage;
  };
  const Case cases[] = {
      {"int4:g32:sym:fp16", 5, 172, 86, 5 * 86 + 5 * 6 * 2},
      {"int4:row", 5, 7, 4, 5 * 4 + 5 * 4},
      {"int8:row:sym:fp32", 3, 129, 129, 3 * 129 + 3 * 4},
      {"e4m3:block128x128", 130, 300, 300, 130 * 300 + 2 * 3 * 4},
      {"e2m1:g32:e8m0", 4, 100, 50, 4 * 50 + 4 * 4},
      {"uint4:g32:asym:fp16", 8, 256, 128, 8 * 128 + 64 * 2 + 64 / 2},
      {"nf4:g64", 2, 4097, 2049, 2 * 2049 + 2 * 65 * 4},
      {"fp16:row", 3, 5, 10, 30 + 12},
      {"e2m1:g16:e4m3*fp32", 2, 64, 32, 64 + 8 + 4},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.spec);
    const QuantSpec spec = S(k.spec);
    Tensor t = make_tensor(randn(static_cast<size_t>(k.rows * k.cols), 4), {k.rows, k.cols});
    ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(t.view(), spec));
    EXPECT_EQ(q.row_bytes, k.row_bytes);
    EXPECT_EQ(static_cast<int64_t>(q.codes.size()), k.rows * k.row_bytes);
    EXPECT_EQ(q.storage_bytes(), k.storage);
    EXPECT_EQ(q.bits_per_weight(), 8.0 * static_cast<double>(k.storage) / static_cast<double>(k.rows * k.cols));
    EXPECT_EQ(q.bits_per_weight(), bits_per_weight(spec, k.rows, k.cols));
    EXPECT_EQ(static_cast<int64_t>(q.scales.size()), q.grid().num_blocks());
    EXPECT_EQ(static_cast<int64_t>(q.scale_codes.size()),
              q.grid().num_blocks() * traits(spec.tensor_scale ? Format::kE4m3 : spec.scale_format).bits / 8);
    EXPECT_EQ(q.zero_points.size(), spec.symmetric ? 0u : q.scales.size());
  }
}

// ---------------------------------------------------------------------------------------
// Bad input.

bool contains(const std::string& s, std::string_view sub) { return s.find(sub) != std::string::npos; }

TEST(QuantizeErrors, NonFiniteInputNamesTensorAndPosition) {
  const int64_t rows = 40, cols = 50;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (const char* text : {"int8:row", "int4:g32", "e4m3:block128x128", "e2m1:g16:e4m3*fp32", "uint8:tensor:asym"}) {
      for (bool use_ref : {false, true}) {
        SCOPED_TRACE(std::string(text) + " bad=" + std::to_string(bad));
        std::vector<float> x = randn(static_cast<size_t>(rows * cols), 8);
        x[12 * 50 + 34] = bad;                              // first: (12, 34), flat 634
        x[31 * 50 + 45] = std::numeric_limits<float>::quiet_NaN();  // later: (31, 45), flat 1595
        Tensor t = make_tensor(x, {rows, cols});
        QuantizeOptions opt;
        opt.name = "blk.7.ffn_up.weight";
        opt.use_reference = use_ref;
        auto q = quantize(t.view(), S(text), opt);
        ASSERT_FALSE(q.ok());
        const std::string& m = q.status().message();
        EXPECT_TRUE(contains(m, "blk.7.ffn_up.weight")) << m;
        EXPECT_TRUE(contains(m, "634") || (contains(m, "12") && contains(m, "34"))) << m;
        EXPECT_FALSE(contains(m, "1595") || contains(m, "31, 45")) << "not the first position: " << m;
      }
    }
  }
}

TEST(QuantizeErrors, ScaleFormatCannotHoldScale) {
  struct Case {
    const char* spec;
    float amax;
  };
  // amax 1e7 -> 1e7/127 = 78740 > 65504 (fp16 max) -> inf; 1e6/127 = 7874 > 448 (e4m3) -> NaN;
  // 1e-9/127 = 7.9e-12 underflows fp16 (min subnormal 6e-8) to 0 while c > 0; likewise
  // 1e-5/127 = 7.9e-8 underflows e4m3 (min subnormal 2^-9).
  for (const Case& k : {Case{"int8:tensor:sym:fp16", 1e7f}, Case{"int8:tensor:sym:e4m3", 1e6f},
                        Case{"int8:tensor:sym:fp16", 1e-9f}, Case{"int8:g32:sym:e4m3", 1e-5f},
                        Case{"uint8:tensor:asym:fp16", 2e7f}}) {
    for (bool use_ref : {false, true}) {
      SCOPED_TRACE(std::string(k.spec) + " amax " + std::to_string(k.amax));
      std::vector<float> x = {k.amax, -0.5f * k.amax, 0.25f * k.amax, 0.0f};
      Tensor t = make_tensor(x, {1, 4});
      QuantizeOptions opt;
      opt.name = "tok_embd";
      opt.use_reference = use_ref;
      auto q = quantize(t.view(), S(k.spec), opt);
      ASSERT_FALSE(q.ok());
      EXPECT_TRUE(contains(q.status().message(), "tok_embd")) << q.status().message();
    }
  }
  // ...while the same magnitudes are fine with an fp32 scale
  Tensor t = make_tensor({1e7f, 1.0f}, {1, 2});
  EXPECT_TRUE(quantize(t.view(), S("int8:tensor:sym:fp32")).ok());
}

TEST(QuantizeErrors, BadShapesAndDtypes) {
  Tensor x = make_tensor(randn(6 * 10, 1), {6, 10});
  ASSERT_OK_AND_ASSIGN(QuantizedTensor q, quantize(x.view(), S("int4:g4")));
  {
    ASSERT_OK_AND_ASSIGN(Tensor out, Tensor::empty(DType::kF32, {6, 11}));
    EXPECT_FALSE(dequantize(q, out.view()).ok());
    EXPECT_FALSE(dequantize(q, out.view(), true).ok());
  }
  {
    ASSERT_OK_AND_ASSIGN(Tensor out, Tensor::empty(DType::kF32, {10, 6}));
    EXPECT_FALSE(dequantize(q, out.view()).ok());
  }
  {
    ASSERT_OK_AND_ASSIGN(Tensor out, Tensor::empty(DType::kF32, {60}));
    EXPECT_FALSE(dequantize(q, out.view()).ok());
  }
  {
    ASSERT_OK_AND_ASSIGN(Tensor out, Tensor::empty(DType::kF16, {6, 10}));
    EXPECT_FALSE(dequantize(q, out.view()).ok());
  }
  for (DType dt : {DType::kF16, DType::kF64, DType::kBF16, DType::kI32}) {
    ASSERT_OK_AND_ASSIGN(Tensor in, Tensor::empty(dt, {6, 10}));
    EXPECT_FALSE(quantize(in.view(), S("int4:g4")).ok()) << dtype_name(dt);
    QuantizeOptions ref_opt;
    ref_opt.use_reference = true;
    EXPECT_FALSE(quantize(in.view(), S("int4:g4"), ref_opt).ok()) << dtype_name(dt);
  }
  // a spec that does not validate
  QuantSpec bad;
  bad.element = Format::kInt4;
  bad.granularity = Granularity::kGroup;
  bad.group = 0;
  EXPECT_FALSE(quantize(x.view(), bad).ok());
  QuantSpec bad2;
  bad2.element = Format::kE4m3;
  bad2.symmetric = false;
  EXPECT_FALSE(quantize(x.view(), bad2).ok());
}

}  // namespace
}  // namespace lowbit

namespace lowbit {
namespace {

// ElementRounder (GPTQ's inner loop) gives quantize_value's code and dequantize_value's value bit
// for bit: every integer element, symmetric and affine, random and tie values (x / s = k + 0.5),
// values beyond the range, a zero scale, NaN; and a non-integer element through its slow path.
TEST(ElementRounder, MatchesQuantizeValueThenDequantizeValue) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  int checked = 0;
  for (const char* text : {"int8:g32:sym:fp16", "int4:g32:sym:fp16", "int3:g64:sym:fp32", "uint4:g32:asym:fp16", "uint8:row:asym:fp32",
                           "int5:g64:sym:fp16", "uint6:g32:asym:fp16", "int4:g32:asym:fp16", "e4m3:g32:sym:fp32", "nf4:g64:sym:fp16"}) {
    const QuantSpec spec = parse_spec(text).value();
    const ElementRounder r(spec);
    for (int i = 0; i < 20000; ++i) {
      const float s = i % 97 == 0 ? 0.0f : std::ldexp(1.0f + u(rng) * 0.5f, -static_cast<int>(rng() % 8));
      const int32_t z = spec.symmetric ? 0 : static_cast<int32_t>(rng() % 16);
      float x = u(rng) * 20.0f * s;
      if (i % 5 == 0) x = (std::floor(u(rng) * 10.0f) + 0.5f) * s;    // a tie
      if (i % 53 == 0) x = u(rng) * 1e30f;                             // far beyond the range
      if (i == 7) x = std::numeric_limits<float>::quiet_NaN();
      const uint32_t want = quantize_value(spec, x, s, z);
      const float want_v = dequantize_value(spec, want, s, z);
      float got_v = 0.0f;
      const uint32_t got = r.round(x, s, z, &got_v);
      ASSERT_EQ(got, want) << text << " x=" << x << " s=" << s << " z=" << z;
      ASSERT_EQ(std::bit_cast<uint32_t>(got_v), std::bit_cast<uint32_t>(want_v)) << text << " x=" << x << " s=" << s << " z=" << z;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 10 * 20000);
}

}  // namespace
}  // namespace lowbit
