// AdamW over FP32 master weights with loss scaling and global-norm clipping; the LR schedule.
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include <fmt/format.h>

#include "lowbit/formats.h"
#include "lowbit/parallel.h"
#include "lowbit/train.h"

namespace lowbit {
namespace {

uint16_t to_bf16(float x) { return static_cast<uint16_t>(encode(Format::kBf16, x)); }
float from_bf16(uint16_t c) { return decode(Format::kBf16, c); }

constexpr char kMagic[4] = {'L', 'B', 'A', 'W'};
constexpr uint32_t kVersion = 1;

}  // namespace

AdamW::AdamW(const TrainModel& m, const AdamWOptions& opt, const LossScaleOptions& ls) : opt_(opt), ls_(ls), scale_(ls.scale) {
  int64_t total = 0;
  for (size_t pi = 0; pi < m.param_info().size(); ++pi) {
    moff_.push_back(m.frozen(pi) ? -1 : total);
    if (!m.frozen(pi)) total += m.param_info()[pi].numel();
  }
  const size_t n = static_cast<size_t>(total);
  if (opt_.bf16_moments) {
    mb_.assign(n, 0);
    vb_.assign(n, 0);
  } else {
    m_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
  }
}

StepResult AdamW::step(TrainModel& model, float lr) {
  StepResult r;
  r.lr = lr;
  std::span<float> g = model.grads();
  std::span<float> p = model.params();
  const float inv_scale = 1.0f / scale_;
  // Global norm of the unscaled gradient, summed in double in index order (deterministic).
  double ss = 0.0;
  bool finite = true;
  for (float x : g) {
    const double u = static_cast<double>(x) * inv_scale;
    if (!std::isfinite(x)) finite = false;
    ss += u * u;
  }
  if (!finite || !std::isfinite(ss)) {
    r.skipped = true;
    r.grad_norm = std::numeric_limits<double>::infinity();
    ++skipped_;
    good_ = 0;
    if (ls_.dynamic) scale_ = std::max(ls_.min_scale, scale_ * 0.5f);
    r.loss_scale = scale_;
    return r;
  }
  r.grad_norm = std::sqrt(ss);
  float mult = inv_scale;  // unscale, then clip
  if (opt_.clip > 0.0f && r.grad_norm > opt_.clip) mult *= static_cast<float>(opt_.clip / r.grad_norm);
  ++t_;
  const float b1 = opt_.beta1, b2 = opt_.beta2;
  const float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(b1), static_cast<double>(t_)));
  const float bc2 = 1.0f - static_cast<float>(std::pow(static_cast<double>(b2), static_cast<double>(t_)));
  for (size_t pi = 0; pi < model.param_info().size(); ++pi) {
    const ParamInfo& info = model.param_info()[pi];
    if (moff_[pi] < 0) continue;  // frozen: no update, no moments
    const int64_t mbase = moff_[pi] - info.offset;
    const float wd = info.decay ? opt_.weight_decay : 0.0f;
    parallel_for(info.offset, info.offset + info.numel(), 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const size_t k = static_cast<size_t>(i), km = static_cast<size_t>(mbase + i);
        const float gi = g[k] * mult;
        float m = opt_.bf16_moments ? from_bf16(mb_[km]) : m_[km];
        float v = opt_.bf16_moments ? from_bf16(vb_[km]) : v_[km];
        m = b1 * m + (1.0f - b1) * gi;
        v = b2 * v + (1.0f - b2) * gi * gi;
        if (opt_.bf16_moments) {
          mb_[km] = to_bf16(m);
          vb_[km] = to_bf16(v);
        } else {
          m_[km] = m;
          v_[km] = v;
        }
        const float mhat = m / bc1, vhat = v / bc2;
        p[k] -= lr * (mhat / (std::sqrt(vhat) + opt_.eps) + wd * p[k]);
      }
    });
  }
  if (ls_.dynamic && ++good_ >= ls_.growth_interval) {
    scale_ *= 2.0f;
    good_ = 0;
  }
  r.loss_scale = scale_;
  return r;
}

std::string AdamW::serialize() const {
  std::string s(kMagic, 4);
  auto put = [&](const void* d, size_t n) { s.append(static_cast<const char*>(d), n); };
  const uint32_t ver = kVersion, bf = opt_.bf16_moments ? 1 : 0;
  const uint64_t n = opt_.bf16_moments ? mb_.size() : m_.size();
  put(&ver, 4);
  put(&bf, 4);
  put(&t_, 8);
  put(&good_, 8);
  put(&skipped_, 8);
  put(&scale_, 4);
  put(&n, 8);
  if (opt_.bf16_moments) {
    put(mb_.data(), n * 2);
    put(vb_.data(), n * 2);
  } else {
    put(m_.data(), n * 4);
    put(v_.data(), n * 4);
  }
  return s;
}

Status AdamW::deserialize(std::string_view b, const std::string& name) {
  auto bad = [&](std::string_view what) { return DataLoss(fmt::format("{}: optimizer state: {}", name, what)); };
  constexpr size_t kHeader = 4 + 4 + 4 + 8 + 8 + 8 + 4 + 8;
  if (b.size() < kHeader || std::memcmp(b.data(), kMagic, 4) != 0) return bad("not a lowbit AdamW state (magic LBAW)");
  size_t off = 4;
  auto get = [&](void* d, size_t n) {
    std::memcpy(d, b.data() + off, n);
    off += n;
  };
  uint32_t ver = 0, bf = 0;
  uint64_t n = 0;
  int64_t t = 0, good = 0, skipped = 0;
  float scale = 0;
  get(&ver, 4);
  get(&bf, 4);
  get(&t, 8);
  get(&good, 8);
  get(&skipped, 8);
  get(&scale, 4);
  get(&n, 8);
  if (ver != kVersion) return bad(fmt::format("version {}, expected {}", ver, kVersion));
  if ((bf != 0) != opt_.bf16_moments) return bad(bf ? "bf16 moments, expected fp32" : "fp32 moments, expected bf16");
  const size_t want = opt_.bf16_moments ? mb_.size() : m_.size();
  if (n != want) return bad(fmt::format("{} moments, expected {} (a different model)", n, want));
  const size_t es = bf ? 2 : 4;
  if (b.size() != kHeader + 2 * n * es) return bad(fmt::format("{} bytes, expected {}", b.size(), kHeader + 2 * n * es));
  if (bf) {
    get(mb_.data(), n * 2);
    get(vb_.data(), n * 2);
  } else {
    get(m_.data(), n * 4);
    get(v_.data(), n * 4);
  }
  t_ = t;
  good_ = good;
  skipped_ = skipped;
  scale_ = scale;
  return OkStatus();
}

float lr_at(const LrSchedule& s, int64_t step) {
  if (step < s.warmup) return s.peak * static_cast<float>(step + 1) / static_cast<float>(s.warmup);
  const int64_t decay = std::max<int64_t>(1, s.total - s.warmup);
  const double frac = std::min(1.0, static_cast<double>(step - s.warmup) / static_cast<double>(decay));
  const double coeff = 0.5 * (1.0 + std::cos(std::numbers::pi * frac));
  const double min_lr = static_cast<double>(s.min_ratio) * s.peak;
  return static_cast<float>(min_lr + coeff * (static_cast<double>(s.peak) - min_lr));
}

}  // namespace lowbit
