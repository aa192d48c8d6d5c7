// The Llama forward pass, following llama2.c's run.c step by step (its op order and
// float accumulation), batched over the tokens of a prefill.
#include "lowbit/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "lowbit/parallel.h"

namespace lowbit {
namespace {

// out (n, d) = rmsnorm(x (n, d)) * w (d), run.c's form: ss = mean(x^2) + eps; x * (1/sqrt(ss)) * w.
void rmsnorm(const float* x, const float* w, int64_t n, int d, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d;
    float ss = 0.0f;
    for (int j = 0; j < d; ++j) ss += xt[j] * xt[j];
    ss /= static_cast<float>(d);
    ss += eps;
    ss = 1.0f / std::sqrt(ss);
    for (int j = 0; j < d; ++j) out[t * d + j] = w[j] * (ss * xt[j]);
  }
}

void softmax(float* x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

// In-place fake quantization of activations (n, d) with dynamic scales.
Status fake_quant(float* x, int64_t n, int64_t d, const QuantSpec& spec) {
  TensorView v(x, DType::kF32, {n, d});
  LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(v, spec, {.name = "activation"}));
  return dequantize(q, v);
}

}  // namespace

Linear Linear::fp32(ConstTensorView w) {
  Linear l;
  LOWBIT_CHECK(w.ndim() == 2 && w.dtype() == DType::kF32 && w.is_contiguous(), "Linear::fp32 needs a contiguous (out, in) f32 matrix");
  l.out_ = w.dim(0);
  l.in_ = w.dim(1);
  l.w_ = w.data_as<float>();
  return l;
}

namespace {

// The kernel op for weights `w` with activations quantized as `act` (or fp32), if any.
std::optional<KernelOp> linear_kernel_op(const QuantSpec& w, const std::optional<QuantSpec>& act) {
  if (!kernel_supports(w)) return std::nullopt;
  const bool int8_tokens = act && act->element == Format::kInt8 && act->granularity == Granularity::kRow &&
                           act->symmetric && act->scale_format == Format::kFp32;
  const bool fp8_tiles = act && act->element == Format::kE4m3 && act->granularity == Granularity::kBlock &&
                         act->block_rows == 1 && act->block_cols == 128 && act->scale_format == Format::kFp32;
  switch (w.element) {
    case Format::kInt4:
    case Format::kUint4: return int8_tokens ? KernelOp::kGemmA8W4 : KernelOp::kGemmA16W4;
    case Format::kNf4: return KernelOp::kGemmA16W4;
    case Format::kInt8: return int8_tokens ? std::optional<KernelOp>(KernelOp::kGemmA8W8) : std::nullopt;
    case Format::kE4m3: return fp8_tiles ? std::optional<KernelOp>(KernelOp::kGemmFp8Block) : std::nullopt;
    default: return std::nullopt;
  }
}

}  // namespace

Result<Linear> Linear::quantized(const QuantizedTensor& q, const std::optional<QuantSpec>& activations) {
  if (q.shape.ndim != 2) return InvalidArgument("Linear: a quantized weight must be 2-D (out, in)");
  Linear l;
  l.out_ = q.rows;
  l.in_ = q.cols;
  l.quant_ = std::make_shared<QuantizedTensor>(q);
  if (const std::optional<KernelOp> op = linear_kernel_op(q.spec, activations)) {
    LOWBIT_ASSIGN_OR_RETURN(PackedWeights p, pack_weights(q));
    l.packed_ = std::make_shared<PackedWeights>(std::move(p));
    l.kernel_opt_.op = *op;
    return l;
  }
  LOWBIT_ASSIGN_OR_RETURN(Tensor w, Tensor::empty(DType::kF32, {q.rows, q.cols}));
  LOWBIT_RETURN_IF_ERROR(dequantize(q, w.view()));
  auto owned = std::make_shared<Tensor>(std::move(w));
  l.w_ = owned->data_as<float>();
  l.owned_ = std::move(owned);
  return l;
}

std::string Linear::kernel() const { return packed_ ? kernel_name(*packed_, kernel_opt_) : "fp32"; }

void Linear::forward(const float* x, int64_t n, float* y) const {
  if (packed_) {
    const Status s = matmul(*packed_, x, n, in_, y, out_, kernel_opt_);
    LOWBIT_CHECK(s.ok(), "Linear::forward: " + s.message());
    return;
  }
  const int64_t in = in_, out = out_;
  const float* w = w_;
  // Threads split the output features; each dot product accumulates in order, as run.c does.
  parallel_for(0, out, std::max<int64_t>(1, 16384 / std::max<int64_t>(in * n, 1)), [&](int64_t o0, int64_t o1) {
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * in;
      for (int64_t o = o0; o < o1; ++o) {
        const float* wo = w + o * in;
        float acc = 0.0f;
        for (int64_t j = 0; j < in; ++j) acc += wo[j] * xt[j];
        y[t * out + o] = acc;
      }
    }
  });
}

LlamaModel::LlamaModel(const Model& m) : cfg_(m.config), w_(m.weights) {
  layers_.resize(w_.layers.size());
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    const LayerWeights& lw = w_.layers[l];
    layers_[l] = {Linear::fp32(lw.wq), Linear::fp32(lw.wk), Linear::fp32(lw.wv), Linear::fp32(lw.wo),
                  Linear::fp32(lw.w1), Linear::fp32(lw.w2), Linear::fp32(lw.w3)};
  }
  classifier_ = Linear::fp32(w_.classifier);
}

Session::Session(const LlamaModel& model, int max_seq)
    : m_(model), max_seq_(max_seq > 0 ? std::min(max_seq, model.config().seq_len) : model.config().seq_len) {
  const LlamaConfig& c = m_.config();
  const size_t cache = static_cast<size_t>(c.n_layers) * static_cast<size_t>(max_seq_) * static_cast<size_t>(c.kv_dim());
  k_cache_.assign(cache, 0.0f);
  v_cache_.assign(cache, 0.0f);
}

Status Session::forward(std::span<const int> tokens, int pos, std::vector<float>* logits, bool all_logits) {
  const LlamaConfig& c = m_.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return InvalidArgument("forward: no tokens");
  if (pos < 0 || pos + n > max_seq_) {
    return InvalidArgument(fmt::format("forward: positions {}..{} exceed the context of {} tokens", pos, pos + n - 1, max_seq_));
  }
  for (int tok : tokens) {
    if (tok < 0 || tok >= c.vocab_size) return InvalidArgument(fmt::format("forward: token id {} outside the vocab of {}", tok, c.vocab_size));
  }
  const int dim = c.dim, kv_dim = c.kv_dim(), hidden = c.hidden_dim, hs = c.head_dim();
  const int kv_mul = c.n_heads / c.n_kv_heads;
  const ActivationQuant& aq = m_.activation_quant();

  std::vector<float> x(static_cast<size_t>(n * dim));              // (n, dim) residual stream
  std::vector<float> xb(static_cast<size_t>(n * dim));             // (n, dim)
  std::vector<float> xb2(static_cast<size_t>(n * dim));            // (n, dim)
  std::vector<float> q(static_cast<size_t>(n * dim));              // (n, dim)
  std::vector<float> k(static_cast<size_t>(n * kv_dim));           // (n, kv_dim)
  std::vector<float> v(static_cast<size_t>(n * kv_dim));           // (n, kv_dim)
  std::vector<float> hb(static_cast<size_t>(n * hidden));          // (n, hidden)
  std::vector<float> hb2(static_cast<size_t>(n * hidden));         // (n, hidden)
  const float* emb = m_.weights().tok_embeddings.data_as<float>();
  for (int64_t t = 0; t < n; ++t) std::memcpy(&x[t * dim], emb + static_cast<int64_t>(tokens[t]) * dim, sizeof(float) * dim);

  // rows: how many tokens `in` holds (all n, except for the classifier of the last token only).
  auto linear = [&](const Linear& l, float* in, float* out, int64_t rows) -> Status {
    if (aq.linear_input) LOWBIT_RETURN_IF_ERROR(fake_quant(in, rows, l.in_features(), *aq.linear_input));
    l.forward(in, rows, out);
    return OkStatus();
  };

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = m_.weights().layers[static_cast<size_t>(l)];
    const LayerLinears& ll = m_.layers()[static_cast<size_t>(l)];
    rmsnorm(x.data(), lw.attn_norm.data_as<float>(), n, dim, c.norm_eps, xb.data());
    LOWBIT_RETURN_IF_ERROR(linear(ll.wq, xb.data(), q.data(), n));
    // wk and wv see the same (possibly fake-quantized) input; quantizing twice is idempotent.
    LOWBIT_RETURN_IF_ERROR(linear(ll.wk, xb.data(), k.data(), n));
    LOWBIT_RETURN_IF_ERROR(linear(ll.wv, xb.data(), v.data(), n));

    // RoPE on q and k, pairs (i, i+1), frequency from the position within the head.
    for (int64_t t = 0; t < n; ++t) {
      const int p = pos + static_cast<int>(t);
      for (int i = 0; i < dim; i += 2) {
        const int head_dim = i % hs;
        const float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(head_dim) / static_cast<float>(hs));
        const float val = static_cast<float>(p) * freq;
        const float fcr = std::cos(val), fci = std::sin(val);
        const int rotn = i < kv_dim ? 2 : 1;
        for (int r = 0; r < rotn; ++r) {
          float* vec = r == 0 ? &q[t * dim] : &k[t * kv_dim];
          const float v0 = vec[i], v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
    }
    if (aq.kv) {
      LOWBIT_RETURN_IF_ERROR(fake_quant(k.data(), n, kv_dim, *aq.kv));
      LOWBIT_RETURN_IF_ERROR(fake_quant(v.data(), n, kv_dim, *aq.kv));
    }
    float* kc = &k_cache_[static_cast<size_t>(l) * max_seq_ * kv_dim];
    float* vc = &v_cache_[static_cast<size_t>(l) * max_seq_ * kv_dim];
    std::memcpy(kc + static_cast<int64_t>(pos) * kv_dim, k.data(), sizeof(float) * n * kv_dim);
    std::memcpy(vc + static_cast<int64_t>(pos) * kv_dim, v.data(), sizeof(float) * n * kv_dim);

    // Causal attention: token t (position pos+t) attends to positions 0..pos+t.
    const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(hs));
    parallel_for(0, n * c.n_heads, 1, [&](int64_t i0, int64_t i1) {
      std::vector<float> att(static_cast<size_t>(max_seq_));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / c.n_heads;
        const int h = static_cast<int>(i % c.n_heads);
        const int p = pos + static_cast<int>(t);
        const float* qh = &q[t * dim + h * hs];
        for (int s = 0; s <= p; ++s) {
          const float* ks = kc + static_cast<int64_t>(s) * kv_dim + (h / kv_mul) * hs;
          float score = 0.0f;
          for (int j = 0; j < hs; ++j) score += qh[j] * ks[j];
          att[static_cast<size_t>(s)] = score * inv_sqrt;
        }
        softmax(att.data(), p + 1);
        float* out = &xb[t * dim + h * hs];
        std::fill(out, out + hs, 0.0f);
        for (int s = 0; s <= p; ++s) {
          const float* vs = vc + static_cast<int64_t>(s) * kv_dim + (h / kv_mul) * hs;
          const float a = att[static_cast<size_t>(s)];
          for (int j = 0; j < hs; ++j) out[j] += a * vs[j];
        }
      }
    });
    LOWBIT_RETURN_IF_ERROR(linear(ll.wo, xb.data(), xb2.data(), n));
    for (size_t i = 0; i < x.size(); ++i) x[i] += xb2[i];

    // SwiGLU FFN: w2(silu(w1 x) * w3 x).
    rmsnorm(x.data(), lw.ffn_norm.data_as<float>(), n, dim, c.norm_eps, xb.data());
    LOWBIT_RETURN_IF_ERROR(linear(ll.w1, xb.data(), hb.data(), n));
    LOWBIT_RETURN_IF_ERROR(linear(ll.w3, xb.data(), hb2.data(), n));
    for (size_t i = 0; i < hb.size(); ++i) {
      float val = hb[i];
      val *= 1.0f / (1.0f + std::exp(-val));
      hb[i] = val * hb2[i];
    }
    LOWBIT_RETURN_IF_ERROR(linear(ll.w2, hb.data(), xb.data(), n));
    for (size_t i = 0; i < x.size(); ++i) x[i] += xb[i];
  }

  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t m = n - first;
  rmsnorm(x.data() + first * dim, m_.weights().final_norm.data_as<float>(), m, dim, c.norm_eps, xb.data());
  logits->resize(static_cast<size_t>(m * c.vocab_size));
  LOWBIT_RETURN_IF_ERROR(linear(m_.classifier(), xb.data(), logits->data(), m));
  return OkStatus();
}

Result<std::vector<int>> generate(const LlamaModel& model, std::span<const int> prompt, const GenerateOptions& opt,
                                  const std::function<void(int)>& on_token) {
  if (prompt.empty()) return InvalidArgument("generate: the prompt has no tokens");
  const int vocab = model.config().vocab_size;
  const int budget = static_cast<int>(prompt.size()) + opt.max_new_tokens;
  Session s(model, std::min(budget, model.config().seq_len));
  if (static_cast<int>(prompt.size()) >= s.max_seq()) {
    return InvalidArgument(fmt::format("generate: the prompt has {} tokens; the context holds {}", prompt.size(), s.max_seq()));
  }
  std::mt19937_64 rng(opt.seed);
  std::vector<float> logits;
  std::vector<int> out;
  LOWBIT_RETURN_IF_ERROR(s.forward(prompt, 0, &logits, /*all_logits=*/false));
  int pos = static_cast<int>(prompt.size());
  while (static_cast<int>(out.size()) < opt.max_new_tokens) {
    int next = 0;
    if (opt.temperature <= 0.0f) {
      next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      std::vector<float> p(logits.begin(), logits.end());
      for (float& v : p) v /= opt.temperature;
      softmax(p.data(), vocab);
      const float r = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
      float cdf = 0.0f;
      next = vocab - 1;
      for (int i = 0; i < vocab; ++i) {
        cdf += p[static_cast<size_t>(i)];
        if (r < cdf) {
          next = i;
          break;
        }
      }
    }
    if (next == opt.stop_token) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (static_cast<int>(out.size()) == opt.max_new_tokens || pos >= s.max_seq()) break;
    const int tok[1] = {next};
    LOWBIT_RETURN_IF_ERROR(s.forward(tok, pos, &logits, false));
    ++pos;
  }
  return out;
}

}  // namespace lowbit
