// Every op's backward against central finite differences in double, on odd shapes (dim 6,
// heads 3, kv heads 1, T 5, vocab 11): the loss is L = Σ r ⊙ out for a fixed random r, so
// dL/dout = r and each input's analytic gradient must match (L(x+h) - L(x-h)) / 2h.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "lowbit/train_ops.h"

namespace lowbit::train {
namespace {

using Vec = std::vector<double>;
constexpr double kH = 1e-6;
constexpr double kTol = 1e-7;  // central differences in double with h = 1e-6: error ~h² · f''' + eps/h

Vec randn(size_t n, uint64_t seed, double sd = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, sd);
  Vec v(n);
  for (double& x : v) x = d(g);
  return v;
}

double dotv(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks analytic gradient `grad` of loss() with respect to every element of `x`.
void check_grad(Vec& x, const Vec& grad, const std::function<double()>& loss, const char* what) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + kH;
    const double lp = loss();
    x[i] = x0 - kH;
    const double lm = loss();
    x[i] = x0;
    const double fd = (lp - lm) / (2 * kH);
    const double err = std::fabs(fd - grad[i]) / std::max(1.0, std::fabs(fd));
    worst = std::max(worst, err);
    EXPECT_LT(err, kTol) << what << "[" << i << "]: analytic " << grad[i] << " finite difference " << fd;
  }
  EXPECT_GT(dotv(grad, grad), 0.0) << what << ": an all-zero gradient proves nothing";
}

constexpr int kB = 2, kT = 5, kC = 6, kNH = 3, kNKV = 1, kHs = 2, kV = 11, kHid = 7;
constexpr int64_t kN = int64_t{kB} * kT;

TEST(TrainOpsGrad, Matmul) {
  const int OC = 7;
  Vec x = randn(kN * kC, 1), w = randn(OC * kC, 2), r = randn(kN * OC, 3), out(kN * OC);
  auto loss = [&] { matmul_forward(out.data(), x.data(), w.data(), kN, kC, OC); return dotv(out, r); };
  Vec dx(x.size()), dw(w.size());
  matmul_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), kN, kC, OC);
  check_grad(x, dx, loss, "matmul dx");
  check_grad(w, dw, loss, "matmul dW");
}

TEST(TrainOpsGrad, MatmulBackwardAccumulates) {
  const int OC = 3;
  Vec x = randn(kN * kC, 4), w = randn(OC * kC, 5), r = randn(kN * OC, 6);
  Vec dx1(x.size()), dw1(w.size()), dx2(x.size(), 1.0), dw2(w.size(), -2.0);
  matmul_backward(dx1.data(), dw1.data(), r.data(), x.data(), w.data(), kN, kC, OC);
  matmul_backward(dx2.data(), dw2.data(), r.data(), x.data(), w.data(), kN, kC, OC);
  for (size_t i = 0; i < dx1.size(); ++i) EXPECT_NEAR(dx2[i], dx1[i] + 1.0, 1e-12);
  for (size_t i = 0; i < dw1.size(); ++i) EXPECT_NEAR(dw2[i], dw1[i] - 2.0, 1e-12);
}

TEST(TrainOpsGrad, RmsNorm) {
  Vec x = randn(kN * kC, 7), w = randn(kC, 8), r = randn(kN * kC, 9), out(kN * kC), rstd(kN);
  auto loss = [&] { rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), kN, kC, 1e-5); return dotv(out, r); };
  loss();
  Vec dx(x.size()), dw(w.size());
  rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), kN, kC);
  check_grad(x, dx, loss, "rmsnorm dx");
  check_grad(w, dw, loss, "rmsnorm dw");
}

TEST(TrainOpsGrad, Embedding) {
  const std::vector<int> tok = {3, 0, 10, 3, 7, 7, 1, 2, 3, 9};  // repeats accumulate
  Vec wte = randn(kV * kC, 10), r = randn(kN * kC, 11), out(kN * kC);
  auto loss = [&] { embedding_forward(out.data(), tok.data(), wte.data(), kN, kC); return dotv(out, r); };
  Vec dwte(wte.size());
  embedding_backward(dwte.data(), r.data(), tok.data(), kN, kC);
  check_grad(wte, dwte, loss, "embedding dwte");
}

TEST(TrainOpsGrad, Rope) {
  Vec x = randn(kN * kNH * kHs, 12), r = randn(kN * kNH * kHs, 13);
  auto loss = [&] { Vec y = x; rope_forward(y.data(), kB, kT, kNH, kHs, 10000.0); return dotv(y, r); };
  Vec dx = r;
  rope_backward(dx.data(), kB, kT, kNH, kHs, 10000.0);
  check_grad(x, dx, loss, "rope dx");
  // Also a wider head (hs 4) so frequencies other than 1 are exercised.
  Vec x4 = randn(kN * 2 * 4, 14), r4 = randn(kN * 2 * 4, 15);
  auto loss4 = [&] { Vec y = x4; rope_forward(y.data(), kB, kT, 2, 4, 10.0); return dotv(y, r4); };
  Vec dx4 = r4;
  rope_backward(dx4.data(), kB, kT, 2, 4, 10.0);
  check_grad(x4, dx4, loss4, "rope hs4 dx");
}

void attention_case(int NH, int NKV, int hs, uint64_t seed) {
  Vec q = randn(kN * NH * hs, seed), k = randn(kN * NKV * hs, seed + 1), v = randn(kN * NKV * hs, seed + 2);
  Vec r = randn(kN * NH * hs, seed + 3), out(kN * NH * hs), att(int64_t{kB} * NH * kT * kT);
  auto loss = [&] {
    attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), kB, kT, NH, NKV, hs);
    return dotv(out, r);
  };
  loss();
  Vec dq(q.size()), dk(k.size()), dv(v.size());
  attention_backward(dq.data(), dk.data(), dv.data(), r.data(), att.data(), q.data(), k.data(), v.data(), kB, kT, NH, NKV, hs);
  check_grad(q, dq, loss, "attention dq");
  check_grad(k, dk, loss, "attention dk");
  check_grad(v, dv, loss, "attention dv");
}

TEST(TrainOpsGrad, AttentionGroupedQuery) { attention_case(kNH, kNKV, kHs, 20); }
TEST(TrainOpsGrad, AttentionMultiHead) { attention_case(kNH, kNH, 4, 30); }

TEST(TrainOpsGrad, AttentionIsCausal) {
  // Changing the last token's k and v leaves the outputs of earlier tokens unchanged.
  Vec q = randn(kN * kNH * kHs, 40), k = randn(kN * kNKV * kHs, 41), v = randn(kN * kNKV * kHs, 42);
  Vec o1(q.size()), o2(q.size()), att(int64_t{kB} * kNH * kT * kT);
  attention_forward(o1.data(), att.data(), q.data(), k.data(), v.data(), kB, kT, kNH, kNKV, kHs);
  for (int j = 0; j < kNKV * kHs; ++j) {
    k[(kT - 1) * kNKV * kHs + j] += 3.0;
    v[(kT - 1) * kNKV * kHs + j] -= 2.0;
  }
  attention_forward(o2.data(), att.data(), q.data(), k.data(), v.data(), kB, kT, kNH, kNKV, kHs);
  for (int64_t i = 0; i < (kT - 1) * kNH * kHs; ++i) EXPECT_EQ(o1[i], o2[i]) << i;
  double diff = 0;
  for (int j = 0; j < kNH * kHs; ++j) diff += std::fabs(o1[(kT - 1) * kNH * kHs + j] - o2[(kT - 1) * kNH * kHs + j]);
  EXPECT_GT(diff, 0.0);
}

TEST(TrainOpsGrad, SwiGlu) {
  const int64_t n = kN * kHid;
  Vec a = randn(n, 50, 2.0), b = randn(n, 51), r = randn(n, 52), out(n);
  auto loss = [&] { swiglu_forward(out.data(), a.data(), b.data(), n); return dotv(out, r); };
  Vec da(n), db(n);
  swiglu_backward(da.data(), db.data(), r.data(), a.data(), b.data(), n);
  check_grad(a, da, loss, "swiglu da");
  check_grad(b, db, loss, "swiglu db");
}

TEST(TrainOpsGrad, Residual) {
  const int64_t n = kN * kC;
  Vec x = randn(n, 60), y = randn(n, 61), r = randn(n, 62), out(n);
  auto loss = [&] { residual_forward(out.data(), x.data(), y.data(), n); return dotv(out, r); };
  Vec dx(n), dy(n);
  residual_backward(dx.data(), dy.data(), r.data(), n);
  check_grad(x, dx, loss, "residual dx");
  check_grad(y, dy, loss, "residual dy");
}

TEST(TrainOpsGrad, CrossEntropy) {
  const std::vector<int> tg = {0, 10, 5, 5, 3, 1, 2, 8, 9, 4};
  Vec logits = randn(kN * kV, 70, 3.0), probs(kN * kV), losses(kN), dloss = randn(kN, 71);
  auto loss = [&] {
    crossentropy_forward(probs.data(), losses.data(), logits.data(), tg.data(), kN, kV);
    return dotv(losses, dloss);
  };
  loss();
  for (int64_t n = 0; n < kN; ++n) EXPECT_NEAR(losses[n], -std::log(probs[n * kV + tg[n]]), 1e-12);
  Vec dl(logits.size());
  crossentropy_backward(dl.data(), probs.data(), tg.data(), dloss.data(), kN, kV);
  check_grad(logits, dl, loss, "cross-entropy dlogits");
}

}  // namespace
}  // namespace lowbit::train
