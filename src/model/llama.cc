// The Llama forward pass, following llama2.c's run.c step by step (its op order), batched over
// the tokens of a prefill. fp32 linears are one Eigen GEMM (GEMV for one token), quantized ones
// the packed kernels; the accumulation order therefore differs from run.c's plain loops.
#include "lowbit/llama.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "lowbit/ggml_blocks.h"
#include "lowbit/kv_attention.h"
#include "lowbit/parallel.h"
#include "model_internal.h"

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

// x (n, d) += b (d) on every row.
void add_bias(float* x, int64_t n, int d, ConstTensorView b) {
  const float* bb = b.data_as<float>();
  for (int64_t t = 0; t < n; ++t) {
    for (int j = 0; j < d; ++j) x[t * d + j] += bb[j];
  }
}

// NeoX-style RoPE on q (n, dim) and k (n, kv_dim) at positions pos..pos+n-1: in each head, pair
// (i, i + hs/2) turns by p · theta^(-2i/hs) (llama.cpp's rope_neox).
void rope_neox(float* q, float* k, int64_t n, int pos, const LlamaConfig& c) {
  const int hs = c.head_dim(), half = hs / 2;
  std::vector<float> cs(static_cast<size_t>(hs));  // (half cos, half sin) for one position
  for (int64_t t = 0; t < n; ++t) {
    const int p = pos + static_cast<int>(t);
    for (int i = 0; i < half; ++i) {
      const float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(hs));
      const float val = static_cast<float>(p) * freq;
      cs[static_cast<size_t>(i)] = std::cos(val);
      cs[static_cast<size_t>(half + i)] = std::sin(val);
    }
    for (int r = 0; r < 2; ++r) {
      float* row = r == 0 ? q + t * c.dim : k + t * c.kv_dim();
      const int heads = r == 0 ? c.n_heads : c.n_kv_heads;
      for (int h = 0; h < heads; ++h) {
        float* v = row + h * hs;
        for (int i = 0; i < half; ++i) {
          const float fcr = cs[static_cast<size_t>(i)], fci = cs[static_cast<size_t>(half + i)];
          const float v0 = v[i], v1 = v[i + half];
          v[i] = v0 * fcr - v1 * fci;
          v[i + half] = v0 * fci + v1 * fcr;
        }
      }
    }
  }
}

// In-place fake quantization of activations (n, d) with dynamic scales.
Status fake_quant(float* x, int64_t n, int64_t d, const QuantSpec& spec) {
  TensorView v(x, DType::kF32, {n, d});
  LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(v, spec, {.name = "activation"}));
  return dequantize(q, v);
}

}  // namespace

std::string linear_name(int layer, const SlotInfo& s) { return fmt::format("layers.{}.{}", layer, s.name); }

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
  if (w.ggml != GgmlType::kF32) return std::nullopt;  // ggml blocks: Linear::quantized runs them by ggml_matmul
  if (!kernel_supports(w)) return std::nullopt;
  const bool int8_tokens = act && act->element == Format::kInt8 && act->granularity == Granularity::kRow &&
                           act->symmetric && act->scale_format == Format::kFp32;
  const bool fp8_tiles = act && act->element == Format::kE4m3 && act->granularity == Granularity::kBlock &&
                         act->block_rows == 1 && act->block_cols == 128 && act->scale_format == Format::kFp32;
  switch (w.element) {
    case Format::kInt4:
    case Format::kUint4:
    case Format::kInt3:
    case Format::kUint3: return int8_tokens ? KernelOp::kGemmA8W4 : KernelOp::kGemmA16W4;
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
  if (q.spec.ggml != GgmlType::kF32 && ggml_matmul_supports(q.spec.ggml) && q.cols % ggml_block_info(q.spec.ggml)->block_size == 0) {
    // ggml blocks (gguf-* plans): codes are the file's rows of blocks, run as stored by ggml_matmul
    // (fp32 activations, exact up to summation order): no fp32 copy of the weight.
    l.ggml_ = GgmlMatrix{q.spec.ggml, l.quant_->codes.data(), q.rows, q.cols};
    return l;
  }
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

void LlamaModel::set_embedding_quant(std::optional<QuantizedTensor> q, bool lookups) {
  emb_quant_ = q ? std::make_shared<const QuantizedTensor>(std::move(*q)) : nullptr;
  emb_spec_.reset();
  emb_ = GgmlMatrix{};
  if (lookups) {
    LOWBIT_CHECK(emb_quant_ != nullptr && ggml_matmul_supports(emb_quant_->spec.ggml),
                 "set_embedding_quant: lookups need ggml blocks");
    emb_ = GgmlMatrix{emb_quant_->spec.ggml, emb_quant_->codes.data(), emb_quant_->rows, emb_quant_->cols};
  }
}

Linear Linear::ggml(const GgmlMatrix& w, GgmlActs acts) {
  LOWBIT_CHECK(ggml_matmul_supports(w.type) && w.blocks != nullptr, "Linear::ggml needs ggml blocks of a type ggml_matmul serves");
  Linear l;
  l.out_ = w.rows;
  l.in_ = w.cols;
  l.ggml_ = w;
  l.ggml_acts_ = acts;
  return l;
}

Linear Linear::stored(QuantizedTensor q) {
  Linear l;
  l.out_ = q.rows;
  l.in_ = q.cols;
  l.quant_ = std::make_shared<QuantizedTensor>(std::move(q));
  return l;
}

std::string Linear::kernel() const {
  if (ggml_.blocks) return ggml_kernel_name(ggml_.type, ggml_kernel_isa(), ggml_acts_);
  if (packed_) return kernel_name(*packed_, kernel_opt_);
  return w_ == nullptr && quant_ ? "stored" : "fp32";
}

void Linear::forward(const float* x, int64_t n, float* y) const {
  if (ggml_.blocks) {
    const Status s = ggml_matmul(ggml_, x, n, in_, y, out_, ggml_acts_);
    LOWBIT_CHECK(s.ok(), "Linear::forward: " + s.message());
    return;
  }
  if (packed_) {
    const Status s = matmul(*packed_, x, n, in_, y, out_, kernel_opt_);
    LOWBIT_CHECK(s.ok(), "Linear::forward: " + s.message());
    return;
  }
  LOWBIT_CHECK(w_ != nullptr || out_ * in_ == 0, "Linear::forward: a stored-only linear (Linear::stored) has no run form");
  // fp32: y (n, out) = x (n, in) · Wᵀ, Eigen's products (OpenBLAS where present, on one thread:
  // core/parallel.cc) over chunks of 32 tokens (of 256 outputs for one token) on lowbit's
  // threads; the chunks depend on the shape alone, so the bits do not depend on the thread count.
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  if (n == 1) {
    parallel_for_balanced(0, out_, 256, [&](int64_t o0, int64_t o1) {
      Eigen::Map<const RowMajor> W(w_ + o0 * in_, o1 - o0, in_);
      Eigen::Map<const Eigen::VectorXf> xv(x, in_);
      Eigen::Map<Eigen::VectorXf>(y + o0, o1 - o0).noalias() = W * xv;
    });
    return;
  }
  Eigen::Map<const RowMajor> W(w_, out_, in_);
  parallel_for_balanced(0, n, 32, [&](int64_t t0, int64_t t1) {
    Eigen::Map<RowMajor>(y + t0 * out_, t1 - t0, out_).noalias() = Eigen::Map<const RowMajor>(x + t0 * in_, t1 - t0, in_) * W.transpose();
  });
}

namespace {

// The quantized Linear for `name` when the model carries one (files lowbit saved quantized),
// else the fp32 one over `w`. The readers validated the quantized tensor's shape against w.
Linear make_linear(const Model& m, const std::string& name, ConstTensorView w) {
  if (const auto g = m.ggml.find(name); g != m.ggml.end()) return Linear::ggml(g->second, m.activations.ggml);
  const auto it = m.quantized.find(name);
  if (it == m.quantized.end()) return Linear::fp32(w);
  Result<Linear> l = Linear::quantized(it->second, m.activations.linear_input);
  LOWBIT_CHECK(l.ok(), "LlamaModel: quantized weight " + name + ": " + l.status().message());
  return std::move(*l);
}

}  // namespace

LlamaModel::LlamaModel(const Model& m) : cfg_(m.config), w_(m.weights) {
  layers_.resize(w_.layers.size());
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    for (const SlotInfo& s : kSlotInfo) {
      layers_[l].*s.linear = make_linear(m, linear_name(static_cast<int>(l), s), w_.layers[l].*s.weight);
    }
  }
  classifier_ = make_linear(m, kClassifierName, w_.classifier);
  if (const auto e = m.ggml.find(kTokEmbeddingsName); e != m.ggml.end()) emb_ = e->second;
  act_.linear_input = m.activations.linear_input;
  act_.kv = m.activations.kv;
  if (!m.activations.kv_cache.empty()) {  // the readers validated it against this head dim
    Result<KvSpec> kv = parse_kv_spec(m.activations.kv_cache);
    LOWBIT_CHECK(kv.ok() && validate_kv_spec(*kv, cfg_.head_dim()).ok(), "LlamaModel: kv cache spec " + m.activations.kv_cache);
    kv_ = std::move(*kv);
  }
}

Status LlamaModel::set_kv_cache(std::optional<KvSpec> spec) {
  if (spec) LOWBIT_RETURN_IF_ERROR(validate_kv_spec(*spec, cfg_.head_dim()));
  if (spec && spec->pre_rope && cfg_.rope_style != RopeStyle::kInterleaved) {
    return Unsupported(fmt::format("kv cache {}: prerope keys are rotated in interleaved pairs; {} uses NeoX RoPE", spec->name, cfg_.arch));
  }
  kv_ = std::move(spec);
  return OkStatus();
}

std::string_view linear_slot_name(LinearSlot slot) {
  static constexpr std::string_view kNames[kNumLinearSlots] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  return kNames[static_cast<int>(slot)];
}

ConstTensorView LayerWeights::*linear_weight_member(LinearSlot slot) {
  static constexpr ConstTensorView LayerWeights::*kMembers[kNumLinearSlots] = {
      &LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo,
      &LayerWeights::w1, &LayerWeights::w2, &LayerWeights::w3};
  return kMembers[static_cast<int>(slot)];
}

Linear& LayerLinears::at(LinearSlot s) {
  return const_cast<Linear&>(static_cast<const LayerLinears*>(this)->at(s));
}
const Linear& LayerLinears::at(LinearSlot s) const {
  switch (s) {
    case LinearSlot::kWq: return wq;
    case LinearSlot::kWk: return wk;
    case LinearSlot::kWv: return wv;
    case LinearSlot::kWo: return wo;
    case LinearSlot::kW1: return w1;
    case LinearSlot::kW2: return w2;
    case LinearSlot::kW3: return w3;
  }
  return wq;
}

ConstTensorView LlamaModel::adopt(Tensor t) {
  auto owned = std::make_shared<const Tensor>(std::move(t));
  ConstTensorView v = owned->view();
  owned_.push_back(std::move(owned));
  return v;
}

namespace {

// Activation buffers of one forward call over n tokens.
struct Buffers {
  std::vector<float> xb, xb2, q, k, v, hb, hb2, part;
  Buffers(const LlamaConfig& c, int64_t n)
      : xb(static_cast<size_t>(n * c.dim)),                // (n, dim)
        xb2(static_cast<size_t>(n * c.dim)),               // (n, dim)
        q(static_cast<size_t>(n * c.dim)),                 // (n, dim)
        k(static_cast<size_t>(n * c.kv_dim())),            // (n, kv_dim)
        v(static_cast<size_t>(n * c.kv_dim())),            // (n, kv_dim)
        hb(static_cast<size_t>(n * c.hidden_dim)),         // (n, hidden)
        hb2(static_cast<size_t>(n * c.hidden_dim)) {}      // (n, hidden)
};

// y (rows, out) = linear(in (rows, in)), with the model's activation fake-quant applied to `in`
// in place first (an outlier split keeps its columns out of it, rounded to fp16 instead).
Status run_linear(const LlamaModel& m, int layer, LinearSlot slot, float* in, int64_t rows, float* out,
                  std::vector<float>& part, const LinearInputHook& hook) {
  const ActivationQuant& aq = m.activation_quant();
  const bool is_classifier = layer < 0;
  const Linear& l = is_classifier ? m.classifier() : m.layers()[static_cast<size_t>(layer)].at(slot);
  const OutlierSplit* split = is_classifier ? nullptr : &m.layers()[static_cast<size_t>(layer)].outliers[static_cast<size_t>(slot)];
  if (split && split->cols.empty()) split = nullptr;
  const int64_t d = l.in_features();
  std::vector<float> kept;  // (rows, cols.size()) the outlier columns
  if (split) {
    const int64_t k = static_cast<int64_t>(split->cols.size());
    kept.resize(static_cast<size_t>(rows * k));
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        float& x = in[t * d + split->cols[static_cast<size_t>(j)]];
        kept[static_cast<size_t>(t * k + j)] = decode(Format::kFp16, encode(Format::kFp16, x));
        x = 0.0f;
      }
    }
  }
  if (aq.linear_input) LOWBIT_RETURN_IF_ERROR(fake_quant(in, rows, d, *aq.linear_input));
  if (split) {  // the outlier columns go back (fp16) for the hook and the other linears on this input
    const int64_t k = static_cast<int64_t>(split->cols.size());
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = 0; j < k; ++j) in[t * d + split->cols[static_cast<size_t>(j)]] = kept[static_cast<size_t>(t * k + j)];
    }
  }
  if (hook && !is_classifier) hook(layer, slot, in, rows, d);
  if (split) {
    // The main weight has zeros in the outlier columns, so `in` may carry them.
    l.forward(in, rows, out);
    part.resize(static_cast<size_t>(rows * l.out_features()));
    split->part.forward(kept.data(), rows, part.data());
    for (size_t i = 0; i < part.size(); ++i) out[i] += part[i];
  } else {
    l.forward(in, rows, out);
  }
  return OkStatus();
}

// The linears of `slots` over one input (q, k, v; gate, up) into `outs`: one ggml_matmul_many (x
// quantized once, one parallel region) when every one runs k-quant blocks with Q8_K activations
// and nothing acts between (hook, activation fake-quant, outlier split); else run_linear each.
Status run_linears(const LlamaModel& m, int layer, std::initializer_list<LinearSlot> slots, float* in, int64_t rows,
                   std::initializer_list<float*> outs, std::vector<float>& part, const LinearInputHook& hook) {
  const auto& lin = m.layers()[static_cast<size_t>(layer)];
  bool fuse = !hook && !m.activation_quant().linear_input;
  std::vector<const GgmlMatrix*> ws;
  for (LinearSlot slot : slots) {
    const Linear& l = lin.at(slot);
    fuse = fuse && l.ggml() && l.ggml_acts() == GgmlActs::kQ8K && lin.outliers[static_cast<size_t>(slot)].cols.empty();
    ws.push_back(l.ggml());
  }
  if (fuse) {
    const std::vector<float*> ys(outs);
    return ggml_matmul_many(ws, in, rows, ws[0]->cols, ys, GgmlActs::kQ8K);
  }
  auto y = outs.begin();
  for (LinearSlot slot : slots) LOWBIT_RETURN_IF_ERROR(run_linear(m, layer, slot, in, rows, *y++, part, hook));
  return OkStatus();
}

// Block `l` over x (n, dim) at positions pos..pos+n-1; kc/vc (at least pos+n rows of kv_dim) hold
// this layer's cache for positions 0..pos-1 and receive pos..pos+n-1.
Status layer_forward(const LlamaModel& m, int l, float* x, int64_t n, int pos, float* kc, float* vc,
                     Buffers& b, const LinearInputHook& hook, KvCache* cache = nullptr) {
  const LlamaConfig& c = m.config();
  const int dim = c.dim, kv_dim = c.kv_dim(), hs = c.head_dim();
  const int kv_mul = c.n_heads / c.n_kv_heads;
  const ActivationQuant& aq = m.activation_quant();
  const LayerWeights& lw = m.weights().layers[static_cast<size_t>(l)];
  float *xb = b.xb.data(), *xb2 = b.xb2.data(), *q = b.q.data(), *k = b.k.data(), *v = b.v.data();
  float *hb = b.hb.data(), *hb2 = b.hb2.data();

  rmsnorm(x, lw.attn_norm.data_as<float>(), n, dim, c.norm_eps, xb);
  // wk and wv see the same (possibly fake-quantized) input; quantizing twice is idempotent.
  LOWBIT_RETURN_IF_ERROR(run_linears(m, l, {LinearSlot::kWq, LinearSlot::kWk, LinearSlot::kWv}, xb, n, {q, k, v}, b.part, hook));
  if (c.qkv_bias) {  // qwen2: q/k/v biases, before RoPE (llama.cpp build_qwen2)
    add_bias(q, n, dim, lw.bq);
    add_bias(k, n, kv_dim, lw.bk);
    add_bias(v, n, kv_dim, lw.bv);
  }

  // Pre-RoPE caches quantize the keys as they leave wk: k_raw (n, kv_dim).
  std::vector<float> k_raw;
  if (cache && cache->spec().pre_rope) {
    if (aq.kv) LOWBIT_RETURN_IF_ERROR(fake_quant(k, n, kv_dim, *aq.kv));
    k_raw.assign(k, k + n * kv_dim);
  }
  if (c.rope_style == RopeStyle::kNeox) {
    rope_neox(q, k, n, pos, c);
  } else {
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
  }
  if (aq.kv) {
    if (k_raw.empty()) LOWBIT_RETURN_IF_ERROR(fake_quant(k, n, kv_dim, *aq.kv));
    LOWBIT_RETURN_IF_ERROR(fake_quant(v, n, kv_dim, *aq.kv));
  }
  if (cache) {
    // Quantized cache: codes written, attention reads them (kv_cache.cc); no fp32 cache.
    cache->write(l, pos, n, k, k_raw.data(), v);
    cache->attend(l, pos, n, q, k, k_raw.data(), v, xb);
  } else {
  std::memcpy(kc + static_cast<int64_t>(pos) * kv_dim, k, sizeof(float) * n * kv_dim);
  std::memcpy(vc + static_cast<int64_t>(pos) * kv_dim, v, sizeof(float) * n * kv_dim);

  // Causal attention: token t (position pos+t) attends to positions 0..pos+t. The query heads that
  // share a key/value head go together in runs of at most 4 (the kernels' tile), so each cached row
  // is read once per run, not once per head; every head gets the bits it gets alone.
  const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(hs));
  const int runs = (kv_mul + 3) / 4, run = (kv_mul + runs - 1) / runs;  // 6 heads a group: 2 runs of 3
  const int64_t tasks = n * c.n_kv_heads * runs, lda = pos + n;  // att: a row of lda weights per head of the run
  parallel_for(0, tasks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> att(static_cast<size_t>(run * lda));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / (c.n_kv_heads * runs);
      const int g = static_cast<int>(i / runs % c.n_kv_heads), r = static_cast<int>(i % runs);
      const int h0 = g * kv_mul + r * run, nh = std::min(run, (g + 1) * kv_mul - h0);  // ≥ 1: (runs − 1)·run < kv_mul
      const int p = pos + static_cast<int>(t);
      const float* qh = &q[t * dim + static_cast<int64_t>(h0) * hs];
      const int64_t off = static_cast<int64_t>(g) * hs;
      attn_scores_f32_heads(kc + off, kv_dim, hs, qh, hs, nh, p + 1, att.data(), lda);
      for (int h = 0; h < nh; ++h) {
        float* a = att.data() + h * lda;
        for (int s = 0; s <= p; ++s) a[s] *= inv_sqrt;
        softmax(a, p + 1);
      }
      float* out = &xb[t * dim + static_cast<int64_t>(h0) * hs];
      std::fill(out, out + static_cast<int64_t>(nh) * hs, 0.0f);
      attn_accumulate_f32_heads(vc + off, kv_dim, hs, att.data(), lda, nh, p + 1, out, hs);
    }
  });
  }
  LOWBIT_RETURN_IF_ERROR(run_linear(m, l, LinearSlot::kWo, xb, n, xb2, b.part, hook));
  for (int64_t i = 0; i < n * dim; ++i) x[i] += xb2[i];

  // SwiGLU FFN: w2(silu(w1 x) * w3 x).
  rmsnorm(x, lw.ffn_norm.data_as<float>(), n, dim, c.norm_eps, xb);
  LOWBIT_RETURN_IF_ERROR(run_linears(m, l, {LinearSlot::kW1, LinearSlot::kW3}, xb, n, {hb, hb2}, b.part, hook));
  const int64_t nh = n * c.hidden_dim;
  for (int64_t i = 0; i < nh; ++i) {
    float val = hb[i];
    val *= 1.0f / (1.0f + std::exp(-val));
    hb[i] = val * hb2[i];
  }
  LOWBIT_RETURN_IF_ERROR(run_linear(m, l, LinearSlot::kW2, hb, n, xb, b.part, hook));
  for (int64_t i = 0; i < n * dim; ++i) x[i] += xb[i];
  return OkStatus();
}

Status check_tokens(const LlamaConfig& c, std::span<const int> tokens) {
  if (tokens.empty()) return InvalidArgument("forward: no tokens");
  for (int tok : tokens) {
    if (tok < 0 || tok >= c.vocab_size) return InvalidArgument(fmt::format("forward: token id {} outside the vocab of {}", tok, c.vocab_size));
  }
  return OkStatus();
}

}  // namespace

Status embed_tokens(const LlamaModel& model, std::span<const int> tokens, float* x) {
  const LlamaConfig& c = model.config();
  LOWBIT_RETURN_IF_ERROR(check_tokens(c, tokens));
  if (const GgmlMatrix* blocks = model.embedding_blocks()) {  // decode the looked-up rows only
    for (size_t t = 0; t < tokens.size(); ++t) {
      LOWBIT_RETURN_IF_ERROR(ggml_decode_row(*blocks, tokens[t], x + static_cast<int64_t>(t) * c.dim));
    }
    return OkStatus();
  }
  const float* emb = model.weights().tok_embeddings.data_as<float>();
  for (size_t t = 0; t < tokens.size(); ++t) {
    std::memcpy(x + static_cast<int64_t>(t) * c.dim, emb + static_cast<int64_t>(tokens[t]) * c.dim, sizeof(float) * c.dim);
  }
  return OkStatus();
}

Status run_block(const LlamaModel& model, int layer, float* x, int64_t n, const LinearInputHook& hook) {
  const LlamaConfig& c = model.config();
  if (layer < 0 || layer >= c.n_layers) return InvalidArgument(fmt::format("run_block: layer {} of {}", layer, c.n_layers));
  if (n < 1 || n > c.seq_len) return InvalidArgument(fmt::format("run_block: {} tokens; the context holds {}", n, c.seq_len));
  std::vector<float> kc(static_cast<size_t>(n * c.kv_dim())), vc(static_cast<size_t>(n * c.kv_dim()));  // (n, kv_dim)
  Buffers b(c, n);
  return layer_forward(model, layer, x, n, 0, kc.data(), vc.data(), b, hook);
}

Session::Session(const LlamaModel& model, int max_seq)
    : m_(model), max_seq_(max_seq > 0 ? std::min(max_seq, model.config().seq_len) : model.config().seq_len) {
  const LlamaConfig& c = m_.config();
  if (const std::optional<KvSpec>& spec = m_.kv_cache_spec()) {
    Result<KvCache> kc = KvCache::create(*spec, c, max_seq_);
    LOWBIT_CHECK(kc.ok(), "Session: " + kc.status().message());  // set_kv_cache validated the spec
    kv_ = std::move(*kc);
    return;
  }
  const size_t cache = static_cast<size_t>(c.n_layers) * static_cast<size_t>(max_seq_) * static_cast<size_t>(c.kv_dim());
  k_cache_.assign(cache, 0.0f);
  v_cache_.assign(cache, 0.0f);
}

int64_t Session::kv_buffer_bytes() const {
  if (kv_) return kv_->buffer_bytes();
  return static_cast<int64_t>(sizeof(float) * (k_cache_.size() + v_cache_.size()));
}

Status run_head(const LlamaModel& model, const float* x, int64_t n, std::vector<float>* logits) {
  const LlamaConfig& c = model.config();
  if (n < 1) return InvalidArgument("run_head: no tokens");
  std::vector<float> xb(static_cast<size_t>(n * c.dim)), part;  // (n, dim)
  rmsnorm(x, model.weights().final_norm.data_as<float>(), n, c.dim, c.norm_eps, xb.data());
  logits->resize(static_cast<size_t>(n * c.vocab_size));
  return run_linear(model, -1, LinearSlot::kWq, xb.data(), n, logits->data(), part, nullptr);
}

Status Session::forward(std::span<const int> tokens, int pos, std::vector<float>* logits, bool all_logits) {
  const LlamaConfig& c = m_.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  LOWBIT_RETURN_IF_ERROR(check_tokens(c, tokens));
  if (pos < 0 || pos + n > max_seq_) {
    return InvalidArgument(fmt::format("forward: positions {}..{} exceed the context of {} tokens", pos, pos + n - 1, max_seq_));
  }
  const int dim = c.dim, kv_dim = c.kv_dim();
  std::vector<float> x(static_cast<size_t>(n * dim));  // (n, dim) residual stream
  LOWBIT_RETURN_IF_ERROR(embed_tokens(m_, tokens, x.data()));
  Buffers b(c, n);
  for (int l = 0; l < c.n_layers; ++l) {
    float* kc = kv_ ? nullptr : &k_cache_[static_cast<size_t>(l) * max_seq_ * kv_dim];
    float* vc = kv_ ? nullptr : &v_cache_[static_cast<size_t>(l) * max_seq_ * kv_dim];
    LOWBIT_RETURN_IF_ERROR(layer_forward(m_, l, x.data(), n, pos, kc, vc, b, nullptr, kv_ ? &*kv_ : nullptr));
  }
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t m = n - first;
  rmsnorm(x.data() + first * dim, m_.weights().final_norm.data_as<float>(), m, dim, c.norm_eps, b.xb.data());
  logits->resize(static_cast<size_t>(m * c.vocab_size));
  return run_linear(m_, -1, LinearSlot::kWq, b.xb.data(), m, logits->data(), b.part, nullptr);
}

Result<std::vector<int>> generate(const LlamaModel& model, std::span<const int> prompt, const GenerateOptions& opt,
                                  const std::function<void(int)>& on_token) {
  if (prompt.empty()) return InvalidArgument("generate: the prompt has no tokens");
  const int vocab = model.config().vocab_size;
  if (opt.max_new_tokens < 0) return InvalidArgument(fmt::format("generate: max_new_tokens {} < 0", opt.max_new_tokens));
  const int64_t budget = static_cast<int64_t>(prompt.size()) + opt.max_new_tokens;  // no int overflow at INT_MAX
  Session s(model, static_cast<int>(std::min<int64_t>(budget, model.config().seq_len)));
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
