// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers"), following the paper's Algorithm 1 with lazy batch updates:
// columns are quantized one at a time in (optionally act-) order, each column's rounding
// error is spread over the columns not yet quantized through the upper Cholesky factor of
// H⁻¹, within a block of B columns immediately and to the rest of the matrix once per block.
#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include <fmt/format.h>

#if LOWBIT_HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "lowbit/ggml_quant.h"
#include "lowbit/parallel.h"
#include "lowbit/ptq.h"
#include "algo_internal.h"

namespace lowbit {
namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The factor's level-3 steps on row-major blocks (leading dimension ld): OpenBLAS where it is
// there, else Eigen's products. OpenBLAS runs on one thread (core/parallel.cc: its threaded level-3
// routines give different bits for different thread counts on some CPUs); lowbit's threads take
// chunks whose edges depend on the shape alone (for_row_chunks), so the bits do not depend on the
// thread count either way.
template <class T>
using BlockMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;

// fn(r0, r1) over [0, rows) in chunks of 64 rows, the same chunks on any thread count.
template <class F>
void for_row_chunks(int64_t rows, F&& fn) {
  parallel_for_balanced(0, rows, 64, std::forward<F>(fn));
}

// B (m, n) ← B L⁻ᵀ, L (n, n) lower (rows of B are independent).
template <class T>
void solve_right_lower_t(int64_t m, int64_t n, const T* l, int64_t ldl, T* b, int64_t ldb) {
#if LOWBIT_HAVE_OPENBLAS
  for_row_chunks(m, [&](int64_t r0, int64_t r1) {
    if constexpr (std::is_same_v<T, float>) {
      cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, r1 - r0, n, 1.f, l, ldl, b + r0 * ldb, ldb);
    } else {
      cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, r1 - r0, n, 1.0, l, ldl, b + r0 * ldb, ldb);
    }
  });
#else
  BlockMap<T> B(b, m, n, Eigen::OuterStride<>(ldb));
  BlockMap<T>(const_cast<T*>(l), n, n, Eigen::OuterStride<>(ldl)).template triangularView<Eigen::Lower>().transpose()
      .template solveInPlace<Eigen::OnTheRight>(B);
#endif
}

// Lower triangle of C (m, m) −= A Aᵀ, A (m, k): per chunk of rows [r0, r1), the block left of the
// diagonal by a GEMM and the diagonal block by a rank-k update.
template <class T>
void syrk_lower_sub(int64_t m, int64_t k, const T* a, int64_t lda, T* c, int64_t ldc) {
#if LOWBIT_HAVE_OPENBLAS
  for_row_chunks(m, [&](int64_t r0, int64_t r1) {
    const int64_t h = r1 - r0;
    const T* ar = a + r0 * lda;
    T* cr = c + r0 * ldc;
    if constexpr (std::is_same_v<T, float>) {
      if (r0 > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, h, r0, k, -1.f, ar, lda, a, lda, 1.f, cr, ldc);
      cblas_ssyrk(CblasRowMajor, CblasLower, CblasNoTrans, h, k, -1.f, ar, lda, 1.f, cr + r0, ldc);
    } else {
      if (r0 > 0) cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, h, r0, k, -1.0, ar, lda, a, lda, 1.0, cr, ldc);
      cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, h, k, -1.0, ar, lda, 1.0, cr + r0, ldc);
    }
  });
#else
  BlockMap<T>(c, m, m, Eigen::OuterStride<>(ldc)).template selfadjointView<Eigen::Lower>()
      .rankUpdate(BlockMap<T>(const_cast<T*>(a), m, k, Eigen::OuterStride<>(lda)), T(-1));
#endif
}

// B (m, n) ← α L B (left: L (m, m); columns of B are independent) or α B L (right: L (n, n); rows
// of B are independent), L lower.
template <class T>
void trmm_lower(bool left, int64_t m, int64_t n, T alpha, const T* l, int64_t ldl, T* b, int64_t ldb) {
#if LOWBIT_HAVE_OPENBLAS
  const CBLAS_SIDE side = left ? CblasLeft : CblasRight;
  for_row_chunks(left ? n : m, [&](int64_t i0, int64_t i1) {
    const int64_t mm = left ? m : i1 - i0, nn = left ? i1 - i0 : n;
    T* bb = left ? b + i0 : b + i0 * ldb;
    if constexpr (std::is_same_v<T, float>) {
      cblas_strmm(CblasRowMajor, side, CblasLower, CblasNoTrans, CblasNonUnit, mm, nn, alpha, l, ldl, bb, ldb);
    } else {
      cblas_dtrmm(CblasRowMajor, side, CblasLower, CblasNoTrans, CblasNonUnit, mm, nn, alpha, l, ldl, bb, ldb);
    }
  });
#else
  BlockMap<T> B(b, m, n, Eigen::OuterStride<>(ldb));
  const int64_t k = left ? m : n;
  const auto L = BlockMap<T>(const_cast<T*>(l), k, k, Eigen::OuterStride<>(ldl)).template triangularView<Eigen::Lower>();
  using P = typename BlockMap<T>::PlainObject;
  const P prod = left ? P(L * B) : P(B * L);
  B = alpha * prod;
#endif
}

// W's columns right of a lazy batch (rows of W independent): W[:, i2:] −= Err[:, :cnt] · U[i1:i2, i2:].
void lazy_batch_update(MatF& Wp, const MatF& Err, const MatF& U, int64_t i1, int64_t i2) {
  const int64_t C = Wp.cols(), cnt = i2 - i1;
  if (i2 >= C) return;
  for_row_chunks(Wp.rows(), [&](int64_t r0, int64_t r1) {
    Wp.block(r0, i2, r1 - r0, C - i2).noalias() -= Err.block(r0, 0, r1 - r0, cnt) * U.block(i1, i2, cnt, C - i2);
  });
}

// Split point of a recursive step: about half, on a multiple of 64.
int64_t half_of(int64_t n) { return (n / 2 + 63) / 64 * 64; }
constexpr int64_t kFactorLeaf = 128;  // below this, Eigen's unblocked loops

// Lower Cholesky factor of the (n, n) row-major block at `a`, in place (reads and writes the lower
// triangle only); false when it is not positive definite. Recursive halves: L11, then
// L21 = A21 L11⁻ᵀ and A22 − L21 L21ᵀ, then L22: n³/3 flops, nearly all in two large level-3 calls
// per level. The split depends on n alone, so the result does not depend on the thread count.
template <class T>
bool cholesky_lower(T* a, int64_t n, int64_t ld) {
  if (n <= kFactorLeaf) {
    BlockMap<T> m(a, n, n, Eigen::OuterStride<>(ld));
    Eigen::LLT<Eigen::Ref<typename BlockMap<T>::PlainObject, 0, Eigen::OuterStride<>>> llt(m);
    return llt.info() == Eigen::Success;
  }
  const int64_t n1 = half_of(n), n2 = n - n1;
  if (!cholesky_lower(a, n1, ld)) return false;
  T* a21 = a + n1 * ld;
  solve_right_lower_t(n2, n1, a, ld, a21, ld);
  syrk_lower_sub(n2, n1, a21, ld, a21 + n1, ld);
  return cholesky_lower(a21 + n1, n2, ld);
}

// L (n, n) lower triangular, inverted in place (lower triangle; the diagonal blocks' strict upper
// part is zeroed): L11⁻¹ and L22⁻¹ by recursion, then L21 ← −L22⁻¹ L21 L11⁻¹ as two in-place
// triangular products, n³/3 flops in all — a third of a triangular solve against the identity.
template <class T>
void invert_lower(T* a, int64_t n, int64_t ld) {
  if (n <= kFactorLeaf) {
    BlockMap<T> L(a, n, n, Eigen::OuterStride<>(ld));
    typename BlockMap<T>::PlainObject inv = BlockMap<T>::PlainObject::Identity(n, n);
    L.template triangularView<Eigen::Lower>().solveInPlace(inv);
    L = inv;
    return;
  }
  const int64_t n1 = half_of(n), n2 = n - n1;
  T* a21 = a + n1 * ld;
  T* a22 = a21 + n1;
  invert_lower(a, n1, ld);
  invert_lower(a22, n2, ld);
  trmm_lower(false, n2, n1, T(1), a, ld, a21, ld);
  trmm_lower(true, n2, n1, T(-1), a22, ld, a21, ld);
}

// U (C, C): the upper Cholesky factor of (P H Pᵀ + λI)⁻¹, i.e. Uᵀ U = H_p⁻¹, where P is the
// column order `perm` and `diag` replaces H's diagonal. With J the order reversal, Cholesky
// J H_p J = L Lᵀ gives H_p = V Vᵀ with V = J L J upper, so U = V⁻¹ = J L⁻¹ J: one Cholesky
// and one triangular inverse (2/3 C³ flops) instead of the reference's solve against the
// identity and second Cholesky (3 C³). Scalar T = float unless `f64` (GPTQ's reference
// implementations factor in float too); false when the matrix is not positive definite.
template <class T>
bool inverse_factor_as(std::span<const double> hessian, std::span<const double> diag, std::span<const int64_t> perm,
                       double lambda, MatF& u) {
  using M = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t C = static_cast<int64_t>(perm.size());
  M a(C, C);  // (C, C) J H_p J + λI (lower triangle), then L, then L⁻¹, then U
  parallel_for(0, C, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t pi = perm[static_cast<size_t>(C - 1 - i)];
      const double* hr = hessian.data() + pi * C;
      T* ar = &a(i, 0);
      for (int64_t j = 0; j < i; ++j) ar[j] = static_cast<T>(hr[perm[static_cast<size_t>(C - 1 - j)]]);
      ar[i] = static_cast<T>(diag[static_cast<size_t>(pi)] + lambda);
    }
  });
  if (!cholesky_lower(a.data(), C, C)) return false;
  invert_lower(a.data(), C, C);
  // Row by row (Eigen's triangularView().setZero() and allFinite() walk a row-major matrix down its
  // columns here: a tenth of the whole GPTQ of a 4096-wide layer).
  parallel_for(0, C, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::fill(&a(i, 0) + i + 1, &a(i, 0) + C, T(0));
  });
  a.reverseInPlace();
  if constexpr (std::is_same_v<T, float>) {
    u = std::move(a);
  } else {
    u = a.template cast<float>();
  }
  const float* p = u.data();
  bool finite = true;
#pragma omp simd reduction(&& : finite)
  for (int64_t i = 0; i < C * C; ++i) finite = finite && std::isfinite(p[i]);
  return finite;
}

// The pre-issue-15 path, kept as the reference GptqOptions::f64_factor selects: H_p⁻¹ by a
// double solve against the identity, then its Cholesky.
bool reference_inverse_factor(std::span<const double> hessian, std::span<const double> diag, std::span<const int64_t> perm,
                              double lambda, MatF& u) {
  const int64_t C = static_cast<int64_t>(perm.size());
  MatD hd(C, C);
  for (int64_t i = 0; i < C; ++i) {
    for (int64_t j = 0; j < C; ++j) hd(i, j) = hessian[static_cast<size_t>(perm[static_cast<size_t>(i)] * C + perm[static_cast<size_t>(j)])];
    hd(i, i) = diag[static_cast<size_t>(perm[static_cast<size_t>(i)])] + lambda;
  }
  Eigen::LLT<MatD> llt(hd);
  if (llt.info() != Eigen::Success) return false;
  const MatD hinv = llt.solve(MatD::Identity(C, C));
  Eigen::LLT<MatD> llt2(hinv);
  if (llt2.info() != Eigen::Success) return false;
  u = MatD(llt2.matrixU()).cast<float>();
  return u.allFinite();
}

bool gptq_inverse_factor(std::span<const double> hessian, std::span<const double> diag, std::span<const int64_t> perm,
                         double lambda, bool f64_reference, MatF& u) {
  if (f64_reference) return reference_inverse_factor(hessian, diag, perm, lambda, u);
  return inverse_factor_as<float>(hessian, diag, perm, lambda, u) || inverse_factor_as<double>(hessian, diag, perm, lambda, u);
}

// Column p's rounding error over the batch's later columns of a row: wr[j] -= e * U(p, j) for
// p < j < end, four at a time (a multiply then a subtract: the scalar loop's two roundings).
void spread_error(float* wr, const MatF& U, int64_t p, int64_t end, float e) {
  if (const int64_t n = end - p - 1; n > 0) {
    Eigen::Map<Eigen::VectorXf>(wr + p + 1, n).noalias() -= e * Eigen::Map<const Eigen::VectorXf>(&U(p, p + 1), n);
  }
}

// diag H in fp32, by original column: the importance the ggml block searches weigh errors by.
std::vector<float> diagonal(const Eigen::Map<const MatD>& H) {
  std::vector<float> d(static_cast<size_t>(H.cols()));
  for (int64_t c = 0; c < H.cols(); ++c) d[static_cast<size_t>(c)] = static_cast<float>(H(c, c));
  return d;
}

// GPTQ over ggml blocks, columns in the order perm (natural, or act-order: perm[p] is the column
// processed p-th, Wp and U are in that order). A row's block is fitted by the type's weighted
// search (importance = diag H) when the first of its columns comes up, from the block's values as
// they stand then (the updated ones and, in act-order, the not-yet-reached ones alike), or, with
// static groups, from the original weights before any update; each column is then rounded to the
// nearest value the block's fixed scales allow, its error spread over the columns after it, and the
// block is packed once all its columns are. Rows are independent in
// GPTQ, so they go in chunks of kRows (the open blocks of a chunk's rows stay in memory, not the
// whole matrix's); the chunking is fixed, so the bits do not depend on the thread count.
QuantizedTensor gptq_ggml(const MatF& Wp, const Eigen::Map<const MatD>& H, const MatF& U, const QuantSpec& spec,
                                  ConstTensorView w, std::span<const int64_t> perm, std::span<const int64_t> pos_of,
                                  bool static_groups) {
  constexpr int64_t kRows = 256;
  const int64_t R = Wp.rows(), C = Wp.cols();
  const GgmlBlockInfo* info = ggml_block_info(spec.ggml);
  const int64_t QB = info->block_size, nblocks = C / QB;
  const int64_t B = std::max<int64_t>(QB, 128 / QB * QB);  // lazy batch: whole ggml blocks
  QuantizedTensor out = empty_quantized(spec, R, C);
  out.shape = w.shape();
  const std::vector<float> imp = diagonal(H);  // by original column
  for (int64_t r0 = 0; r0 < R; r0 += kRows) {
    const int64_t n = std::min(kRows, R - r0);
    MatF Wc = Wp.middleRows(r0, n);
    std::vector<GgmlBlockCoder> coders(static_cast<size_t>(n * nblocks), GgmlBlockCoder(spec.ggml));
    std::vector<int> done(static_cast<size_t>(n * nblocks), 0);
    std::vector<char> fitted(static_cast<size_t>(n * nblocks), 0);
    auto fit = [&](int64_t r, int64_t b) {  // block b of chunk row r from Wc's current values
      float x[256];
      for (int64_t e = 0; e < QB; ++e) x[e] = Wc(r, pos_of[static_cast<size_t>(b * QB + e)]);
      coders[static_cast<size_t>(r * nblocks + b)].fit(x, imp.data() + b * QB);
      fitted[static_cast<size_t>(r * nblocks + b)] = 1;
    };
    if (static_groups) {
      parallel_for(0, n, 1, [&](int64_t a, int64_t z) {
        for (int64_t r = a; r < z; ++r)
          for (int64_t b = 0; b < nblocks; ++b) fit(r, b);
      });
    }
    MatF Err(n, B);
    for (int64_t i1 = 0; i1 < C; i1 += B) {
      const int64_t i2 = std::min(C, i1 + B);
      parallel_for(0, n, 1, [&](int64_t a, int64_t z) {
        for (int64_t r = a; r < z; ++r) {
          float* wr = &Wc(r, 0);
          for (int64_t p = i1; p < i2; ++p) {
            const int64_t c = perm[static_cast<size_t>(p)], b = c / QB;
            const size_t k = static_cast<size_t>(r * nblocks + b);
            if (!fitted[k]) fit(r, b);
            const float xv = wr[p];
            const float qv = coders[k].round(static_cast<int>(c - b * QB), xv);
            const float e = (xv - qv) / U(p, p);
            Err(r, p - i1) = e;
            spread_error(wr, U, p, i2, e);
            if (++done[k] == QB) coders[k].pack(out.codes.data() + (r0 + r) * out.row_bytes + b * info->type_size);
          }
        }
      });
      lazy_batch_update(Wc, Err, U, i1, i2);
    }
  }
  return out;
}

}  // namespace

bool gptq_factor(std::span<const double> hessian, std::span<const int64_t> order, double damp, bool f64_reference,
                 std::vector<float>& u) {
  const int64_t C = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(hessian.size()))));
  std::vector<int64_t> perm(order.begin(), order.end());
  if (perm.empty()) {
    perm.resize(static_cast<size_t>(C));
    std::iota(perm.begin(), perm.end(), 0);
  }
  std::vector<double> diag(static_cast<size_t>(C));
  double mean = 0;
  for (int64_t i = 0; i < C; ++i) mean += diag[static_cast<size_t>(i)] = hessian[static_cast<size_t>(i * C + i)];
  MatF m;
  if (!gptq_inverse_factor(hessian, diag, perm, damp * mean / static_cast<double>(std::max<int64_t>(1, C)), f64_reference, m)) {
    return false;
  }
  u.assign(m.data(), m.data() + m.size());
  return true;
}

// Lower triangle of H += XᵀX for the pending rows: the product in float (one symmetric rank-k
// update over up to ~64 MiB of rows), added to the double sum.
void InputStats::fold_pending() {
  if (pending.empty() || hessian.empty()) {
    pending.clear();
    return;
  }
  const int64_t rows = static_cast<int64_t>(pending.size()) / dim;
  Eigen::Map<const MatF> X(pending.data(), rows, dim);
  MatF h = MatF::Zero(dim, dim);
#if LOWBIT_HAVE_OPENBLAS
  // Per chunk of H's rows [r0, r1): the block left of the diagonal by a GEMM, the diagonal block by
  // a rank-k update (fixed chunks: the bits do not depend on the thread count).
  for_row_chunks(dim, [&](int64_t r0, int64_t r1) {
    const int64_t n = r1 - r0;
    if (r0 > 0) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, r0, rows, 1.f, X.data() + r0, dim, X.data(), dim, 0.f, &h(r0, 0), dim);
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, n, rows, 1.f, X.data() + r0, dim, 0.f, &h(r0, r0), dim);
  });
#else
  h.selfadjointView<Eigen::Lower>().rankUpdate(X.transpose());
#endif
  Eigen::Map<MatD> H(hessian.data(), dim, dim);
  H.triangularView<Eigen::Lower>() += h.cast<double>();
  std::vector<float>().swap(pending);
}

void InputStats::finish() {
  fold_pending();
  if (hessian.empty()) return;
  Eigen::Map<MatD> H(hessian.data(), dim, dim);
  H.triangularView<Eigen::StrictlyUpper>() = H.transpose();
}

void InputStats::init(int64_t d, bool want_hessian, int64_t max_rows) {
  dim = d;
  tokens = 0;
  hessian.assign(want_hessian ? static_cast<size_t>(d * d) : 0, 0.0);
  pending.clear();
  absmax.assign(static_cast<size_t>(d), 0.0f);
  abs_sum.assign(static_cast<size_t>(d), 0.0);
  samples.clear();
  max_samples = max_rows;
}

void InputStats::add(const float* x, int64_t rows) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* xt = x + t * dim;
    for (int64_t j = 0; j < dim; ++j) {
      const float a = std::fabs(xt[j]);
      absmax[static_cast<size_t>(j)] = std::max(absmax[static_cast<size_t>(j)], a);
      abs_sum[static_cast<size_t>(j)] += a;
    }
  }
  if (!hessian.empty()) {
    // One allocation per fold: up to fold_bytes and this batch (StreamMemory counts it so).
    if (pending.empty()) pending.reserve(static_cast<size_t>(std::max<int64_t>(fold_bytes / 4, 0) + rows * dim));
    pending.insert(pending.end(), x, x + rows * dim);
    if (static_cast<int64_t>(pending.size()) * static_cast<int64_t>(sizeof(float)) >= fold_bytes) fold_pending();
  }
  const int64_t keep = std::min(rows, max_samples - sample_rows());
  if (keep > 0) samples.insert(samples.end(), x, x + keep * dim);
  tokens += rows;
}

std::vector<float> InputStats::mean_abs() const {
  std::vector<float> m(static_cast<size_t>(dim), 0.0f);
  if (tokens > 0) {
    for (size_t j = 0; j < m.size(); ++j) m[j] = static_cast<float>(abs_sum[j] / static_cast<double>(tokens));
  }
  return m;
}

double output_error(ConstTensorView w, ConstTensorView w_hat, std::span<const float> x, int64_t n) {
  const int64_t out = w.dim(0), in = w.dim(1);
  Eigen::Map<const MatF> W(w.data_as<float>(), out, in), Wh(w_hat.data_as<float>(), out, in);
  Eigen::Map<const MatF> X(x.data(), n, in);
  const MatF D = W - Wh;
  const MatF Y = X * D.transpose();  // (n, out)
  return Y.cast<double>().squaredNorm();
}

struct GptqFactorCache::Entry {
  uint64_t hash = 0;
  size_t size = 0;
  double damp_opt = 0;
  bool act_order = false, f64 = false;
  int retries = 0;
  bool ok = false;  // positive definite at some damping tried
  double damp = 0;  // the damping fraction that worked (or the last tried)
  MatF u;
};
GptqFactorCache::GptqFactorCache() = default;
GptqFactorCache::~GptqFactorCache() = default;
GptqFactorCache::GptqFactorCache(GptqFactorCache&&) noexcept = default;
GptqFactorCache& GptqFactorCache::operator=(GptqFactorCache&&) noexcept = default;
void GptqFactorCache::clear() { entry.reset(); }

namespace {

// 64 bits over every entry's bit pattern (splitmix64's finaliser per word, chained).
uint64_t hessian_hash(std::span<const double> h) {
  uint64_t acc = 0x9e3779b97f4a7c15ull ^ h.size();
  for (double d : h) {
    uint64_t x;
    std::memcpy(&x, &d, sizeof x);
    x += acc + 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    acc = x ^ (x >> 31);
  }
  return acc;
}

}  // namespace

Result<QuantizedTensor> gptq_quantize(ConstTensorView w, std::span<const double> hessian, const QuantSpec& spec,
                                      const GptqOptions& opt, std::string_view name, GptqStats* stats,
                                      GptqFactorCache* cache) {
  const auto t0 = std::chrono::steady_clock::now();
  if (w.ndim() != 2 || w.dtype() != DType::kF32) return InvalidArgument(fmt::format("{}: GPTQ needs an f32 (out, in) weight", name));
  LOWBIT_RETURN_IF_ERROR(validate(spec));
  if (spec.rounding != Rounding::kNearestEven) {
    return InvalidArgument(fmt::format("{}: GPTQ needs round-to-nearest-even elements (the spec asks for stochastic rounding)", name));
  }
  if (spec.tensor_scale) {
    return InvalidArgument(fmt::format("{}: GPTQ does not support two-level (NVFP4) scales; use rtn for {}", name, to_string(spec)));
  }
  const int64_t R = w.dim(0), C = w.dim(1);
  if (static_cast<int64_t>(hessian.size()) != C * C) {
    return InvalidArgument(fmt::format("{}: Hessian has {} entries, expected {} x {}", name, hessian.size(), C, C));
  }
  if (opt.block_size < 1 || !(opt.damp > 0)) return InvalidArgument(fmt::format("{}: GPTQ needs block_size >= 1 and damp > 0", name));
  const bool ggml = spec.ggml != GgmlType::kF32;

  // Working copy of W; H with dead inputs neutralised.
  // W is read in place (a contiguous f32 weight is not copied: at an 8B FFN's 14336 x 4096 a copy
  // is 224 MiB); the only working copy is Wp, the permuted weight the updates run on.
  Tensor wt;
  const float* w0 = w.data_as<float>();
  if (!w.is_contiguous()) {
    LOWBIT_ASSIGN_OR_RETURN(wt, algo_internal::clone_f32(w));
    w0 = wt.data_as<float>();
  }
  Eigen::Map<const MatF> W0(w0, R, C);
  for (int64_t i = 0; i < R * C; ++i) {
    if (!std::isfinite(w0[i])) {
      return InvalidArgument(fmt::format("{}: non-finite weight at row {}, column {}", name, i / C, i % C));
    }
  }
  // Whatever RTN refuses (a scale its format cannot hold, e.g. fp16 for 1e30 weights) GPTQ
  // refuses too, with the same message, instead of writing scales that silently underflow.
  // ggml blocks refuse only a width that is not a multiple of the block (values are finite
  // here), so one row decides it: the whole tensor's IQ4/k-quant search would be wasted.
  const ConstTensorView probe = ggml && R > 0 ? w.slice(0, 0, 1) : w;
  if (Result<QuantizedTensor> rtn = quantize(probe, spec, {.name = std::string(name)}); !rtn.ok()) return rtn.status();
  Eigen::Map<const MatD> H(hessian.data(), C, C);
  // A NaN/Inf input x reaches its own diagonal entry Σx², and |H_ij| <= sqrt(H_ii H_jj): checking the
  // diagonal finds every non-finite Hessian in O(C) instead of reading all C² entries.
  bool finite = true;
  for (int64_t i = 0; i < C; ++i) finite = finite && std::isfinite(H(i, i));
  if (!finite) return InvalidArgument(fmt::format("{}: the calibration Hessian has NaN/Inf (non-finite activations)", name));
  // Inputs never active (diag H = 0) get diag 1 and zero weights.
  std::vector<double> diag(static_cast<size_t>(C));
  int64_t dead = 0;
  for (int64_t i = 0; i < C; ++i) {
    diag[static_cast<size_t>(i)] = H(i, i);
    if (H(i, i) == 0.0) {
      diag[static_cast<size_t>(i)] = 1.0;
      ++dead;
    }
  }

  // Processing order.
  std::vector<int64_t> perm(static_cast<size_t>(C));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return diag[static_cast<size_t>(a)] > diag[static_cast<size_t>(b)]; });
  }
  std::vector<int64_t> pos_of(static_cast<size_t>(C));
  for (int64_t p = 0; p < C; ++p) pos_of[static_cast<size_t>(perm[static_cast<size_t>(p)])] = p;
  MatF Wp(R, C);
  if (opt.act_order) {
    for (int64_t p = 0; p < C; ++p) Wp.col(p) = W0.col(perm[static_cast<size_t>(p)]);
  } else {
    Wp = W0;
  }
  for (int64_t i = 0; i < C; ++i) {
    if (H(i, i) == 0.0) Wp.col(pos_of[static_cast<size_t>(i)]).setZero();  // dead input: its column is zero
  }

  // U: upper Cholesky factor of H⁻¹ (Uᵀ U = H⁻¹), with damping retried upwards; float first,
  // double where float fails (see gptq_inverse_factor).
  double mean_diag = 0;
  for (double d : diag) mean_diag += d;
  mean_diag /= static_cast<double>(std::max<int64_t>(1, C));
  double damp = opt.damp;
  MatF own;
  bool ok = false;
  const uint64_t hash = cache ? hessian_hash(hessian) : 0;
  GptqFactorCache::Entry* e = cache ? cache->entry.get() : nullptr;
  const bool hit = e && e->hash == hash && e->size == hessian.size() && e->damp_opt == opt.damp &&
                   e->act_order == opt.act_order && e->f64 == opt.f64_factor && e->retries == opt.max_damp_retries;
  if (hit) {
    ++cache->hits;
    ok = e->ok;
    damp = e->damp;
  } else {
    for (int attempt = 0; attempt <= opt.max_damp_retries && !ok; ++attempt, damp *= 10) {
      ok = gptq_inverse_factor(hessian, diag, perm, damp * mean_diag, opt.f64_factor, own);
      if (ok) break;
    }
    if (cache) {
      ++cache->misses;
      if (!e) {
        cache->entry = std::make_unique<GptqFactorCache::Entry>();
        e = cache->entry.get();
      }
      *e = GptqFactorCache::Entry{.hash = hash, .size = hessian.size(), .damp_opt = opt.damp, .act_order = opt.act_order,
                                  .f64 = opt.f64_factor, .retries = opt.max_damp_retries, .ok = ok, .damp = damp,
                                  .u = std::move(own)};
    }
  }
  const MatF& U = cache ? e->u : own;
  if (!ok) {
    return InvalidArgument(fmt::format("{}: the Hessian is not positive definite even with damping {:.3g} x mean diag; "
                                       "calibrate on more tokens", name, damp));
  }

  if (ggml) {
    QuantizedTensor q = gptq_ggml(Wp, H, U, spec, w, perm, pos_of, opt.static_groups);
    if (stats) {
      stats->damp = damp;
      stats->dead_cols = dead;
      stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return q;
  }
  // Group parameters come from quantize() of the group's columns as they stand.
  const BlockGrid grid = block_grid(spec, R, C);
  QuantizedTensor out = empty_quantized(spec, R, C);
  out.shape = w.shape();
  std::vector<char> fixed(static_cast<size_t>(grid.grid_cols), 0);
  auto fix_group = [&](int64_t gc) -> Status {
    const int64_t c0 = gc * grid.block_cols, c1 = std::min(C, c0 + grid.block_cols);
    Tensor g = Tensor::empty(DType::kF32, {R, c1 - c0}).value();
    float* gd = g.data_as<float>();
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = c0; c < c1; ++c)
        gd[r * (c1 - c0) + (c - c0)] = Wp(r, pos_of[static_cast<size_t>(c)]);
    LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor qg, quantize(g.view(), spec, {.name = std::string(name)}));
    for (int64_t gr = 0; gr < grid.grid_rows; ++gr) copy_block_params(qg, gr, out, gr * grid.grid_cols + gc);
    fixed[static_cast<size_t>(gc)] = 1;
    return OkStatus();
  };
  if (opt.static_groups) {
    for (int64_t gc = 0; gc < grid.grid_cols; ++gc) LOWBIT_RETURN_IF_ERROR(fix_group(gc));  // before any update: Wp is still W
  }

  // Lazy batches of B columns. Within a batch, columns run in segments that need no new group
  // parameters; each segment is one parallel pass over rows, every row walking the segment's
  // columns (quantize, spread the error over the batch's later columns). A group is fixed at a
  // segment's start, when every row has taken the updates of all earlier columns — the state
  // the column-at-a-time order sees. The rest of the matrix takes the batch's errors in one GEMM.
  const int64_t B = opt.block_size;
  constexpr int64_t kRowGrain = 16;  // rows per parallel chunk (results do not depend on it)
  MatF Err(R, B);
  const ElementRounder rounder(spec);
  auto group_of = [&](int64_t p) { return perm[static_cast<size_t>(p)] / grid.block_cols; };
  for (int64_t i1 = 0; i1 < C; i1 += B) {
    const int64_t i2 = std::min(C, i1 + B);
    for (int64_t p0 = i1; p0 < i2;) {
      if (!fixed[static_cast<size_t>(group_of(p0))]) LOWBIT_RETURN_IF_ERROR(fix_group(group_of(p0)));
      int64_t p1 = p0 + 1;
      while (p1 < i2 && fixed[static_cast<size_t>(group_of(p1))]) ++p1;
      parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float* wr = &Wp(r, 0);
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t c = perm[static_cast<size_t>(p)];
            const size_t b = static_cast<size_t>((r / grid.block_rows) * grid.grid_cols + c / grid.block_cols);
            const float s = out.scales[b];
            const int32_t z = spec.symmetric ? 0 : out.zero_points[b];
            const float x = wr[p];
            float qv;
            const uint32_t code = rounder.round(x, s, z, &qv);
            set_code(out, r, c, code);
            const float e = (x - qv) / U(p, p);
            Err(r, p - i1) = e;
            spread_error(wr, U, p, i2, e);
          }
        }
      });
      p0 = p1;
    }
    lazy_batch_update(Wp, Err, U, i1, i2);
  }
  if (stats) {
    stats->damp = damp;
    stats->dead_cols = dead;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return out;
}

}  // namespace lowbit
