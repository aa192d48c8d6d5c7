// The quantized KV cache: attention over the codes equals fp64 attention over the dequantized
// cache (every ISA, odd head dims, GQA, 1..129 tokens, windows, per-channel keys, pre-RoPE);
// a token-by-token decode writes and reads the cache exactly as one prefill does; a quantized
// cache allocates no fp32 cache (buffer bytes measured); spec errors name both numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/kv_cache.h"
#include "lowbit/llama.h"

namespace lowbit {
namespace {

LlamaConfig config(int hs, int heads, int kv_heads) {
  LlamaConfig c;
  c.dim = hs * heads;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.n_layers = 1;
  c.hidden_dim = 4;
  c.vocab_size = 4;
  c.seq_len = 160;
  return c;
}

// Random q, raw keys, values for `total` tokens; keys after RoPE computed as layer_forward does.
struct Data {
  std::vector<float> q, k_raw, k_rope, v;  // (total, dim) / (total, kv_dim)
};
Data make_data(const LlamaConfig& c, int total, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  Data d;
  d.q.resize(static_cast<size_t>(total) * c.dim);
  d.k_raw.resize(static_cast<size_t>(total) * c.kv_dim());
  d.v.resize(d.k_raw.size());
  for (float& x : d.q) x = nd(rng);
  for (size_t i = 0; i < d.k_raw.size(); ++i) {
    d.k_raw[i] = nd(rng) + ((i % static_cast<size_t>(c.head_dim())) == 3 ? 4.0f : 0.0f);  // an outlier channel
    d.v[i] = nd(rng);
  }
  d.k_rope = d.k_raw;
  const int hs = c.head_dim();
  for (int t = 0; t < total; ++t) {
    for (int i = 0; i + 1 < c.kv_dim(); i += 2) {
      if ((i % hs) + 1 >= hs) continue;
      const float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(i % hs) / static_cast<float>(hs));
      const float val = static_cast<float>(t) * freq, fcr = std::cos(val), fci = std::sin(val);
      float* vec = &d.k_rope[static_cast<size_t>(t) * c.kv_dim()];
      const float v0 = vec[i], v1 = vec[i + 1];
      vec[i] = v0 * fcr - v1 * fci;
      vec[i + 1] = v0 * fci + v1 * fcr;
    }
  }
  return d;
}

// Runs the chunks through a cache, returns attention outputs (total, dim) of the last layer.
std::vector<float> run(KvCache& kc, const LlamaConfig& c, const Data& d, const std::vector<int>& chunks) {
  std::vector<float> out(d.q.size());
  int pos = 0;
  for (int n : chunks) {
    const size_t qo = static_cast<size_t>(pos) * c.dim, ko = static_cast<size_t>(pos) * c.kv_dim();
    for (int l = 0; l < c.n_layers; ++l) {
      kc.write(l, pos, n, &d.k_rope[ko], &d.k_raw[ko], &d.v[ko]);
      kc.attend(l, pos, n, &d.q[qo], &d.k_rope[ko], &d.k_raw[ko], &d.v[ko], &out[qo]);
    }
    pos += n;
  }
  return out;
}

struct Case {
  std::string spec;
  int hs, heads, kv_heads;
};

class KvCacheAttention : public ::testing::TestWithParam<Case> {};

TEST_P(KvCacheAttention, EqualsFp64OverTheDequantizedCacheOnEveryIsa) {
  const Case cs = GetParam();
  const LlamaConfig c = config(cs.hs, cs.heads, cs.kv_heads);
  Result<KvSpec> spec = parse_kv_spec(cs.spec);
  ASSERT_TRUE(spec.ok()) << spec.status().to_string();
  const std::vector<int> chunks = {50, 1, 1, 13, 1, 63};  // 129 tokens: prefill, decode, prefill ...
  const int total = 129, hs = c.head_dim(), kv_mul = c.n_heads / c.n_kv_heads;
  const Data d = make_data(c, total, 11);
  std::vector<float> first;
  for (Isa isa : supported_isas()) {
    ScopedIsa force(isa);
    Result<KvCache> kc = KvCache::create(*spec, c, c.seq_len);
    ASSERT_TRUE(kc.ok()) << kc.status().to_string();
    // Reference after the whole run (codes of a token never change once written), per query p.
    const std::vector<float> out = run(*kc, c, d, chunks);
    const int l = 0;
    double worst = 0.0;
    std::vector<float> kr(static_cast<size_t>(c.kv_dim())), vr(kr.size());
    for (int p : {0, 1, 2, 7, 31, 49, 50, 51, 52, 63, 64, 65, 100, 127, 128}) {
      std::vector<std::vector<float>> K(static_cast<size_t>(p + 1)), V(static_cast<size_t>(p + 1));
      for (int s = 0; s <= p; ++s) {
        kc->read_row(l, s, p, &d.k_rope[static_cast<size_t>(s) * c.kv_dim()], &d.v[static_cast<size_t>(s) * c.kv_dim()], kr.data(), vr.data());
        K[static_cast<size_t>(s)] = kr;
        V[static_cast<size_t>(s)] = vr;
      }
      for (int h = 0; h < c.n_heads; ++h) {
        const int kh = h / kv_mul;
        std::vector<double> a(static_cast<size_t>(p + 1));
        double mx = -1e300;
        for (int s = 0; s <= p; ++s) {
          double sc = 0;
          for (int j = 0; j < hs; ++j) sc += static_cast<double>(d.q[static_cast<size_t>(p) * c.dim + h * hs + j]) * K[static_cast<size_t>(s)][static_cast<size_t>(kh * hs + j)];
          a[static_cast<size_t>(s)] = sc / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, a[static_cast<size_t>(s)]);
        }
        double sum = 0;
        for (double& x : a) sum += (x = std::exp(x - mx));
        for (int j = 0; j < hs; ++j) {
          double want = 0;
          for (int s = 0; s <= p; ++s) want += a[static_cast<size_t>(s)] / sum * V[static_cast<size_t>(s)][static_cast<size_t>(kh * hs + j)];
          worst = std::max(worst, std::fabs(want - out[static_cast<size_t>(p) * c.dim + h * hs + j]));
        }
      }
    }
    // Tolerance: fp32 scores (|q·k|/sqrt(hs) up to ~20 with the outlier channel) and softmax;
    // values are N(0, 1).
    EXPECT_LT(worst, 2e-4) << cs.spec << " on " << isa_name(isa);
    // The quantizer itself: dequantized rows against the fp32 inputs, relative RMS per code width.
    double err = 0, ref = 0;
    for (int s = 0; s < total; ++s) {
      kc->read_row(l, s, total - 1, &d.k_rope[static_cast<size_t>(s) * c.kv_dim()], &d.v[static_cast<size_t>(s) * c.kv_dim()], kr.data(), vr.data());
      for (int j = 0; j < c.kv_dim(); ++j) {
        const double want = d.v[static_cast<size_t>(s) * c.kv_dim() + j];
        err += (vr[static_cast<size_t>(j)] - want) * (vr[static_cast<size_t>(j)] - want);
        ref += want * want;
      }
    }
    const double rel = std::sqrt(err / ref);
    const double bound = spec->v.code == KvCode::kInt8 ? 0.01 : kv_code_bits(spec->v.code) == 4 ? 0.15 : 0.08;
    EXPECT_LT(rel, bound) << cs.spec << ": values' relative RMS error";
    if (spec->v.code == KvCode::kInt8) {
      EXPECT_GT(rel, 1e-4) << cs.spec;
    }
    if (first.empty()) {
      first = out;
    } else {
      for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], first[i]) << cs.spec << " " << isa_name(isa) << " differs from scalar at " << i;
    }
  }
}

TEST_P(KvCacheAttention, TokenByTokenDecodeEqualsOnePrefill) {
  const Case cs = GetParam();
  const LlamaConfig c = config(cs.hs, cs.heads, cs.kv_heads);
  const KvSpec spec = parse_kv_spec(cs.spec).value();
  const Data d = make_data(c, 129, 5);
  KvCache a = KvCache::create(spec, c, c.seq_len).value(), b = KvCache::create(spec, c, c.seq_len).value();
  const std::vector<float> prefill = run(a, c, d, {129});
  const std::vector<float> decode = run(b, c, d, std::vector<int>(129, 1));
  for (size_t i = 0; i < prefill.size(); ++i) ASSERT_EQ(prefill[i], decode[i]) << cs.spec << " at " << i;
}

INSTANTIATE_TEST_SUITE_P(
    Specs, KvCacheAttention,
    ::testing::Values(Case{"kv-int8", 64, 6, 2}, Case{"kv-int8-g32", 64, 4, 4}, Case{"kv-int4-g32", 64, 6, 2},
                      Case{"kv-int4-g32-sym", 64, 6, 3}, Case{"kv-int4-kivi", 64, 6, 2}, Case{"kv-e4m3", 64, 4, 1},
                      Case{"kv-e5m2", 64, 6, 2}, Case{"kv-e4m3-tensor", 64, 6, 2}, Case{"kv-e5m2-tensor", 24, 4, 2},
                      Case{"int8:token", 7, 4, 4}, Case{"int4:token:asym", 7, 6, 2}, Case{"e4m3:token", 13, 4, 2},
                      Case{"int4:g8:asym", 24, 4, 1}, Case{"int8:token,residual=5", 64, 6, 2},
                      Case{"k=int4:col:asym,v=int4:g32:asym,block=8,residual=3", 64, 6, 2},
                      Case{"k=int4:col:asym,v=int4:token:asym,block=16,prerope", 64, 6, 2},
                      Case{"k=int8:col,v=e5m2:token,block=7", 12, 4, 2}, Case{"e4m3:token,prerope", 64, 6, 2},
                      Case{"int4:g32,prerope,residual=4", 64, 4, 2}),
    [](const testing::TestParamInfo<Case>& i) { return "c" + std::to_string(i.index) + "_hs" + std::to_string(i.param.hs); });

TEST(KvSpec, NamedSpecsParseAndRoundTrip) {
  for (const KvNamedSpec& n : named_kv_specs()) {
    Result<KvSpec> s = parse_kv_spec(n.name);
    ASSERT_TRUE(s.ok()) << n.name << ": " << s.status().to_string();
    Result<KvSpec> again = parse_kv_spec(to_string(*s));
    ASSERT_TRUE(again.ok()) << to_string(*s);
    EXPECT_EQ(to_string(*again), to_string(*s));
  }
  EXPECT_EQ(to_string(parse_kv_spec("kv-int4-kivi").value()), "k=int4:col:asym,v=int4:token:asym,block=64");
  // KIVI at head dim 64: keys 4 + 32/64, values 4 + 32/64 bits.
  EXPECT_DOUBLE_EQ(kv_bits_per_value(parse_kv_spec("kv-int4-kivi").value(), 64), 4.5);
  EXPECT_DOUBLE_EQ(kv_bits_per_value(parse_kv_spec("kv-int8").value(), 64), 8.25);
  EXPECT_EQ(llama_cpp_cache_type(parse_kv_spec("kv-int8-g32").value().k, 64), "q8_0");
  EXPECT_EQ(llama_cpp_cache_type(parse_kv_spec("kv-int4-g32").value().k, 64), "q4_1");
  EXPECT_EQ(llama_cpp_cache_type(parse_kv_spec("kv-e4m3").value().k, 64), "");
}

TEST(KvSpec, BadSpecsAreOneLineErrors) {
  const KvSpec g32 = parse_kv_spec("kv-int4-g32").value();
  const Status s = validate_kv_spec(g32, 8);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("group 32 does not divide head dim 8"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("kv-int4-g32"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos);
  for (const char* bad : {"kv-int3", "nf4:g32", "int8:token:asym", "k=int8:token", "k=int8:token,v=int8:col", "int8:tensor",
                          "int8:token,residual=-1", "int8:token,block=0", "int8:token,foo"}) {
    Result<KvSpec> r = parse_kv_spec(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status().message();
    }
  }
  EXPECT_FALSE(validate_kv_spec(parse_kv_spec("int4:g12").value(), 24).ok());  // not a multiple of 8
  EXPECT_FALSE(validate_kv_spec(parse_kv_spec("e4m3:token,prerope").value(), 7).ok());
}

TEST(KvCacheMemory, QuantizedCacheAllocatesNoFp32Cache) {
  const LlamaConfig c = config(64, 9, 3);
  const int max_seq = 2048;
  const int64_t fp32 = 2LL * c.n_layers * max_seq * c.kv_dim() * 4;
  for (const char* name : {"kv-int8", "kv-int4-g32", "kv-int4-kivi", "kv-e4m3", "kv-e4m3-tensor"}) {
    const KvSpec spec = parse_kv_spec(name).value();
    const KvCache kc = KvCache::create(spec, c, max_seq).value();
    EXPECT_EQ(static_cast<double>(kc.buffer_bytes()), kv_bytes_per_token(spec, c, max_seq) * max_seq) << name;
    EXPECT_LT(kc.buffer_bytes(), fp32 / 3) << name;  // 8-bit: 8.25/32 of it; 4-bit less
  }
  EXPECT_EQ(KvCache::create(parse_kv_spec("kv-int8").value(), c, max_seq).value().buffer_bytes(),
            2LL * c.n_layers * max_seq * (c.kv_dim() + 2 * c.n_kv_heads));
}

// The model with stories260K (../shared): Session buffer bytes, logits near the fp32 cache's.
const std::string kModel = std::string(LOWBIT_SOURCE_DIR) + "/../shared/models/stories260K.bin";
const std::vector<int> kTokens = {1, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410};

TEST(KvCacheModel, SessionHoldsOnlyTheQuantizedCacheAndLogitsStayClose) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << kModel << " not found (../shared is missing)";
  const Model m = load_model(kModel).value();
  const LlamaModel ref(m);
  LlamaModel q(m);
  const Status bad = q.set_kv_cache(parse_kv_spec("kv-int4-g32").value());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("group 32 does not divide head dim 8"), std::string::npos) << bad.message();
  const LlamaConfig& c = m.config;
  // Largest logit change allowed (the fp32-cache logits span about ±15 here; 4-bit per-token keys
  // lose most, KIVI's per-channel keys far less).
  const std::pair<const char*, double> cases[] = {
      {"kv-int8", 1.0}, {"int4:g8:asym", 20.0}, {"k=int4:col:asym,v=int4:token:asym,block=8", 2.0}, {"kv-e4m3", 3.0}};
  for (const auto& [name, max_diff] : cases) {
    ASSERT_TRUE(q.set_kv_cache(parse_kv_spec(name).value()).ok()) << name;
    Session s0(ref), s1(q);
    EXPECT_EQ(s0.kv_buffer_bytes(), 2LL * c.n_layers * c.seq_len * c.kv_dim() * 4);
    EXPECT_EQ(static_cast<double>(s1.kv_buffer_bytes()), kv_bytes_per_token(*q.kv_cache_spec(), c, c.seq_len) * c.seq_len) << name;
    EXPECT_LT(s1.kv_buffer_bytes() * 2, s0.kv_buffer_bytes()) << name;
    std::vector<float> l0, l1;
    ASSERT_TRUE(s0.forward(kTokens, 0, &l0).ok());
    ASSERT_TRUE(s1.forward(kTokens, 0, &l1).ok());
    double diff = 0;
    for (size_t i = 0; i < l0.size(); ++i) diff = std::max(diff, std::fabs(static_cast<double>(l0[i]) - l1[i]));
    EXPECT_GT(diff, 0.0) << name;  // the cache really is quantized
    EXPECT_LT(diff, max_diff) << name;
    // Decode token by token equals the prefill (linears differ by GEMM vs GEMV rounding only).
    Session s2(q);
    double dd = 0;
    for (size_t t = 0; t < kTokens.size(); ++t) {
      std::vector<float> one;
      const int tok[1] = {kTokens[t]};
      ASSERT_TRUE(s2.forward(tok, static_cast<int>(t), &one).ok());
      for (size_t v = 0; v < one.size(); ++v) dd = std::max(dd, std::fabs(static_cast<double>(one[v]) - l1[t * one.size() + v]));
    }
    EXPECT_LT(dd, 1e-2) << name;
  }
}

}  // namespace
}  // namespace lowbit
