// TrainModel: the Llama forward and backward over a (B, T) batch, llm.c style (one flat parameter
// block with named tensors, activations saved per layer for the backward), and the recipe's
// quantization of every GEMM operand (include/lowbit/train.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "lowbit/kernels.h"
#include "lowbit/train.h"
#include "lowbit/train_ops.h"

namespace lowbit {

namespace {

constexpr float kInitStd = 0.02f;  // GPT-2 / llm.c initialisation

// A linear input kept for the wgrad GEMM: fp32, or (cache_quantized_inputs) fwd_x codes + scales.
struct Site {
  std::vector<float> f32;  // (N, cols) when kept in fp32
  std::optional<QuantizedTensor> q;
  int64_t bytes() const { return q ? q->storage_bytes() : static_cast<int64_t>(f32.size() * sizeof(float)); }
};

bool all_finite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return false;
  }
  return true;
}

}  // namespace

struct TrainModel::Acts {
  int B = 0, T = 0;
  int64_t N = 0;
  std::vector<int> inputs, targets;            // (N)
  std::vector<float> resid;                    // (L+1, N, C) the residual stream entering each layer; [L] the final norm
  std::vector<float> resid2;                   // (L, N, C) after the attention residual
  std::vector<float> rstd1, rstd2;             // (L, N)
  std::vector<float> q, k, v;                  // (L, N, C), (L, N, kv_dim) x2, after RoPE
  std::vector<float> att;                      // (L, B, NH, T, T) softmax probabilities
  std::vector<float> h1, h3;                   // (L, N, H) w1 and w3 outputs (the SwiGLU inputs)
  std::vector<Site> ln1, atty, ln2, hg;        // (L) linear inputs: (N, C) (N, C) (N, C) (N, H)
  Site lnf;                                    // (N, C)
  std::vector<float> rstdf;                    // (N)
  std::vector<float> logits, probs, losses;    // (N, V) (N, V) (N)
  // scratch
  std::vector<float> x, xq, wq, dyq, dy2, dx, dx2, tmp, dtmp;
  std::map<std::string, AmaxHistory> hist;     // delayed scaling, per operand
};

TrainModel::TrainModel(TrainModel&&) noexcept = default;
TrainModel& TrainModel::operator=(TrainModel&&) noexcept = default;
TrainModel::~TrainModel() = default;

namespace {

Status check_config(const LlamaConfig& c) {
  auto bad = [](std::string_view field, int v, std::string_view want) {
    return InvalidArgument(fmt::format("train: model config {}={}: expected {}", field, v, want));
  };
  if (c.dim <= 0) return bad("dim", c.dim, "> 0");
  if (c.n_layers <= 0) return bad("layers", c.n_layers, "> 0");
  if (c.n_heads <= 0 || c.dim % c.n_heads != 0) return bad("heads", c.n_heads, fmt::format("> 0 and dividing dim={}", c.dim));
  if (c.head_dim() % 2 != 0) return bad("heads", c.n_heads, fmt::format("an even head size (dim / heads; dim={})", c.dim));
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) return bad("kv-heads", c.n_kv_heads, fmt::format("> 0 and dividing heads={}", c.n_heads));
  if (c.hidden_dim <= 0) return bad("hidden", c.hidden_dim, "> 0");
  if (c.vocab_size <= 0) return bad("vocab", c.vocab_size, "> 0");
  if (c.seq_len <= 0) return bad("seq_len", c.seq_len, "> 0");
  return OkStatus();
}

}  // namespace

void TrainModel::layout() {
  const LlamaConfig& c = cfg_;
  info_.clear();
  int64_t off = 0;
  auto add = [&](std::string name, int64_t rows, int64_t cols, bool decay) {
    info_.push_back({std::move(name), off, rows, cols, decay});
    off += rows * cols;
  };
  add("tok_embeddings", c.vocab_size, c.dim, true);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("layers.{}.", l);
    add(p + "attn_norm", 1, c.dim, false);
    add(p + "wq", c.dim, c.dim, true);
    add(p + "wk", c.kv_dim(), c.dim, true);
    add(p + "wv", c.kv_dim(), c.dim, true);
    add(p + "wo", c.dim, c.dim, true);
    add(p + "ffn_norm", 1, c.dim, false);
    add(p + "w1", c.hidden_dim, c.dim, true);
    add(p + "w2", c.dim, c.hidden_dim, true);
    add(p + "w3", c.hidden_dim, c.dim, true);
  }
  add("final_norm", 1, c.dim, false);
  if (!c.shared_classifier) add("classifier", c.vocab_size, c.dim, true);
  params_.assign(static_cast<size_t>(off), 0.0f);
  grads_.assign(static_cast<size_t>(off), 0.0f);
  acts_ = std::make_unique<Acts>();
}

// Indexes of each layer's tensors in info_: 1 + 9·l + (0 attn_norm, 1 wq, ... 8 w3).
namespace {
constexpr int kPerLayer = 9;
enum LayerParam { kAttnNorm, kWq, kWk, kWv, kWo, kFfnNorm, kW1, kW2, kW3 };
size_t layer_param(int l, LayerParam p) { return 1 + static_cast<size_t>(l) * kPerLayer + p; }
}  // namespace

Result<TrainModel> TrainModel::init(const LlamaConfig& config, uint64_t seed, const TrainRecipe& recipe) {
  LOWBIT_RETURN_IF_ERROR(check_config(config));
  TrainModel m;
  m.cfg_ = config;
  m.recipe_ = recipe;
  m.layout();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float resid_std = kInitStd / std::sqrt(2.0f * static_cast<float>(config.n_layers));
  for (const ParamInfo& p : m.info_) {
    float* w = m.params_.data() + p.offset;
    if (p.rows == 1) {
      std::fill(w, w + p.numel(), 1.0f);
      continue;
    }
    const bool resid = p.name.ends_with(".wo") || p.name.ends_with(".w2");
    const float sd = resid ? resid_std : kInitStd;
    for (int64_t i = 0; i < p.numel(); ++i) w[i] = sd * normal(rng);
  }
  return m;
}

Result<TrainModel> TrainModel::from_model(const Model& src, const TrainRecipe& recipe) {
  LOWBIT_RETURN_IF_ERROR(check_config(src.config));
  TrainModel m;
  m.cfg_ = src.config;
  m.recipe_ = recipe;
  m.layout();
  auto copy = [&](size_t idx, ConstTensorView v) -> Status {
    const ParamInfo& p = m.info_[idx];
    if (v.dtype() != DType::kF32 || !v.is_contiguous() || v.numel() != p.numel()) {
      return InvalidArgument(fmt::format("train: {}: tensor {} is not a contiguous f32 of {} elements", src.path, p.name, p.numel()));
    }
    std::memcpy(m.params_.data() + p.offset, v.data(), sizeof(float) * static_cast<size_t>(p.numel()));
    return OkStatus();
  };
  const LlamaWeights& w = src.weights;
  LOWBIT_RETURN_IF_ERROR(copy(0, w.tok_embeddings));
  for (int l = 0; l < src.config.n_layers; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    const ConstTensorView views[kPerLayer] = {lw.attn_norm, lw.wq, lw.wk, lw.wv, lw.wo, lw.ffn_norm, lw.w1, lw.w2, lw.w3};
    for (int j = 0; j < kPerLayer; ++j) LOWBIT_RETURN_IF_ERROR(copy(layer_param(l, static_cast<LayerParam>(j)), views[j]));
  }
  LOWBIT_RETURN_IF_ERROR(copy(layer_param(src.config.n_layers, kAttnNorm), w.final_norm));
  if (!src.config.shared_classifier) LOWBIT_RETURN_IF_ERROR(copy(m.info_.size() - 1, w.classifier));
  return m;
}

Model TrainModel::to_model() const {
  Model m;
  m.config = cfg_;
  Result<Tensor> t = Tensor::empty(DType::kF32, {num_params()});
  LOWBIT_CHECK(t.ok(), t.status().message());
  std::memcpy(t->data(), params_.data(), sizeof(float) * params_.size());
  const float* base = t->data_as<float>();
  auto view = [&](size_t idx) {
    const ParamInfo& p = info_[idx];
    if (p.rows == 1) return ConstTensorView(base + p.offset, DType::kF32, {p.cols});
    return ConstTensorView(base + p.offset, DType::kF32, {p.rows, p.cols});
  };
  m.weights.tok_embeddings = view(0);
  m.weights.layers.resize(static_cast<size_t>(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    LayerWeights& lw = m.weights.layers[static_cast<size_t>(l)];
    ConstTensorView* dst[kPerLayer] = {&lw.attn_norm, &lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.ffn_norm, &lw.w1, &lw.w2, &lw.w3};
    for (int j = 0; j < kPerLayer; ++j) *dst[j] = view(layer_param(l, static_cast<LayerParam>(j)));
  }
  m.weights.final_norm = view(layer_param(cfg_.n_layers, kAttnNorm));
  m.weights.classifier = cfg_.shared_classifier ? m.weights.tok_embeddings : view(info_.size() - 1);
  m.owned.push_back(std::move(*t));
  return m;
}

void TrainModel::set_frozen(size_t index, bool frozen) {
  LOWBIT_CHECK(index < info_.size(), "set_frozen: parameter index out of range");
  frozen_.resize(info_.size(), 0);
  frozen_[index] = frozen ? 1 : 0;
}

void TrainModel::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

std::span<const float> TrainModel::losses() const { return acts_->losses; }
std::span<const float> TrainModel::logits() const { return acts_->logits; }
std::span<const float> TrainModel::probs() const { return acts_->probs; }

void TrainModel::set_weight_override(size_t index, const float* w) {
  LOWBIT_CHECK(index < info_.size(), "set_weight_override: parameter index out of range");
  weight_override_.resize(info_.size(), nullptr);
  weight_override_[index] = w;
}

namespace {

// The recipe's view of one operand: `x` (rows, cols) quantized -> dequantized into `out`, or x
// itself when the spec is unset. Tensors holding inf/NaN (an overflowed scaled gradient) pass
// through unchanged so the optimizer sees the overflow. `q_out`, when given, receives the codes.
Result<const float*> operand(std::map<std::string, AmaxHistory>& hist, const TrainRecipe& r, const float* x, int64_t rows,
                             int64_t cols, const std::optional<QuantSpec>& spec, const std::string& name,
                             std::vector<float>& out, std::optional<QuantizedTensor>* q_out = nullptr) {
  if (!spec) return x;
  const int64_t n = rows * cols;
  if (!all_finite(x, n)) return x;
  ConstTensorView v(x, DType::kF32, {rows, cols});
  QuantizeOptions qo{.name = name};
  float clip[1] = {0.0f};
  AmaxHistory* h = nullptr;
  if (r.scaling == ScaleMode::kDelayed && spec->granularity == Granularity::kTensor) {
    auto it = hist.find(name);
    if (it == hist.end()) {
      LOWBIT_ASSIGN_OR_RETURN(AmaxHistory nh, AmaxHistory::create(r.amax_history_len, 0, static_cast<float>(element_qmax(*spec)), name));
      it = hist.emplace(name, std::move(nh)).first;
    }
    h = &it->second;
    if (h->num_recorded() > 0 && h->clip() > 0.0f) {
      clip[0] = h->clip();
      qo.clip = clip;
    }
  }
  LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(v, *spec, qo));
  if (h) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    LOWBIT_RETURN_IF_ERROR(h->record(amax));
  }
  out.resize(static_cast<size_t>(n));
  LOWBIT_RETURN_IF_ERROR(dequantize(q, TensorView(out.data(), DType::kF32, {rows, cols})));
  if (q_out) *q_out = std::move(q);
  return static_cast<const float*>(out.data());
}

// y (rows, n) = x (rows, k) · Bᵀ through the kernel registry's gemm_fp8_block: B (n, k) quantized
// to e4m3 128x128 blocks and packed, x quantized by the kernel to e4m3 1x128 tiles, accumulated as
// `acc` says (the promotion experiment).
Status kernel_gemm(const KernelAccumulation& acc, const float* x, int64_t rows, const float* B, int n, int k, float* y) {
  static const QuantSpec kBlocks = parse_spec("e4m3:block128x128").value();
  if (!all_finite(B, int64_t{n} * k) || !all_finite(x, rows * k)) {  // an overflowed gradient: let it show
    train::matmul_forward(y, x, B, rows, k, n);
    return OkStatus();
  }
  LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(ConstTensorView(B, DType::kF32, {int64_t{n}, int64_t{k}}), kBlocks));
  LOWBIT_ASSIGN_OR_RETURN(PackedWeights p, pack_weights(q));
  return matmul(p, x, rows, k, y, n, {.op = KernelOp::kGemmFp8Block, .fp8_accum = acc.mode, .accum_bits = acc.bits});
}

void grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

Result<float> TrainModel::forward(std::span<const int> inputs, std::span<const int> targets, int B, int T) {
  const LlamaConfig& c = cfg_;
  if (B <= 0 || T <= 0) return InvalidArgument(fmt::format("train: batch {} x context {}: both must be > 0", B, T));
  if (T > c.seq_len) return InvalidArgument(fmt::format("train: context {} exceeds the model's seq_len {}", T, c.seq_len));
  const int64_t N = int64_t{B} * T;
  if (static_cast<int64_t>(inputs.size()) != N || static_cast<int64_t>(targets.size()) != N) {
    return InvalidArgument(fmt::format("train: {} inputs and {} targets for a batch of {} x {}", inputs.size(), targets.size(), B, T));
  }
  for (int64_t i = 0; i < N; ++i) {
    if (inputs[i] < 0 || inputs[i] >= c.vocab_size || targets[i] < 0 || targets[i] >= c.vocab_size) {
      return InvalidArgument(fmt::format("train: token id {} at {} outside the vocab of {}", std::min(inputs[i], targets[i]) < 0 ? std::min(inputs[i], targets[i]) : std::max(inputs[i], targets[i]), i, c.vocab_size));
    }
  }
  Acts& a = *acts_;
  const int C = c.dim, KV = c.kv_dim(), H = c.hidden_dim, V = c.vocab_size, L = c.n_layers, hs = c.head_dim();
  const float eps = c.norm_eps;
  a.B = B;
  a.T = T;
  a.N = N;
  a.inputs.assign(inputs.begin(), inputs.end());
  a.targets.assign(targets.begin(), targets.end());
  a.resid.resize(static_cast<size_t>((L + 1) * N * C));
  a.resid2.resize(static_cast<size_t>(L * N * C));
  a.rstd1.resize(static_cast<size_t>(L * N));
  a.rstd2.resize(static_cast<size_t>(L * N));
  a.q.resize(static_cast<size_t>(L * N * C));
  a.k.resize(static_cast<size_t>(L * N * KV));
  a.v.resize(static_cast<size_t>(L * N * KV));
  a.att.resize(static_cast<size_t>(int64_t{L} * B * c.n_heads * T * T));
  a.h1.resize(static_cast<size_t>(L * N * H));
  a.h3.resize(static_cast<size_t>(L * N * H));
  a.ln1.resize(static_cast<size_t>(L));
  a.atty.resize(static_cast<size_t>(L));
  a.ln2.resize(static_cast<size_t>(L));
  a.hg.resize(static_cast<size_t>(L));
  a.rstdf.resize(static_cast<size_t>(N));
  a.logits.resize(static_cast<size_t>(N * V));
  a.probs.resize(static_cast<size_t>(N * V));
  a.losses.resize(static_cast<size_t>(N));
  const int64_t wide = std::max<int64_t>({C, H, V});
  grow(a.x, N * wide);
  grow(a.tmp, N * wide);

  const float* P = params_.data();
  auto W = [&](size_t idx) { return P + info_[idx].offset; };
  auto Wf = [&](size_t idx) {  // what the forward GEMM reads (QAT: the fake-quantized weight)
    return idx < weight_override_.size() && weight_override_[idx] ? weight_override_[idx] : W(idx);
  };
  const GemmOperandSpecs& g = recipe_.gemm;
  std::map<std::string, AmaxHistory>& hist = a.hist;

  // Stores the input x (N, cols) of the linears at `site` and returns their forward X operand.
  const GemmOperandSpecs fp32_gemm{};
  auto site_in = [&](Site& site, const float* x, int cols, const std::string& name, const GemmOperandSpecs& g) -> Result<const float*> {
    const bool cache_q = recipe_.cache_quantized_inputs && g.fwd_x.has_value();
    site.q.reset();
    LOWBIT_ASSIGN_OR_RETURN(const float* xq, operand(hist, recipe_, x, N, cols, g.fwd_x, name + ".x", a.xq, cache_q ? &site.q : nullptr));
    if (site.q) {
      site.f32.clear();
      site.f32.shrink_to_fit();
    } else {
      site.f32.assign(x, x + N * cols);
    }
    return xq;
  };
  // y (N, out) = xq · Wᵀ with W quantized as fwd_w.
  auto gemm = [&](const float* xq, size_t widx, int in, int out, float* y, const GemmOperandSpecs& g) -> Status {
    if (recipe_.kernel_accumulation && &g != &fp32_gemm) return kernel_gemm(*recipe_.kernel_accumulation, a.x.data(), N, W(widx), out, in, y);
    LOWBIT_ASSIGN_OR_RETURN(const float* w, operand(hist, recipe_, Wf(widx), out, in, g.fwd_w, info_[widx].name + ".w", a.wq));
    train::matmul_forward(y, xq, w, N, in, out);
    return OkStatus();
  };

  train::embedding_forward(a.resid.data(), a.inputs.data(), W(0), N, C);
  for (int l = 0; l < L; ++l) {
    const std::string pre = fmt::format("layers.{}.", l);
    float* res = &a.resid[static_cast<size_t>(l * N * C)];
    float* res2 = &a.resid2[static_cast<size_t>(l * N * C)];
    float* q = &a.q[static_cast<size_t>(l * N * C)];
    float* k = &a.k[static_cast<size_t>(l * N * KV)];
    float* v = &a.v[static_cast<size_t>(l * N * KV)];
    float* att = &a.att[static_cast<size_t>(int64_t{l} * B * c.n_heads * T * T)];
    float* h1 = &a.h1[static_cast<size_t>(l * N * H)];
    float* h3 = &a.h3[static_cast<size_t>(l * N * H)];
    float* x = a.x.data();
    float* tmp = a.tmp.data();

    train::rmsnorm_forward(x, &a.rstd1[static_cast<size_t>(l * N)], res, W(layer_param(l, kAttnNorm)), N, C, eps);
    LOWBIT_ASSIGN_OR_RETURN(const float* xq, site_in(a.ln1[static_cast<size_t>(l)], x, C, pre + "attn_in", g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kWq), C, C, q, g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kWk), C, KV, k, g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kWv), C, KV, v, g));
    train::rope_forward(q, B, T, c.n_heads, hs, c.rope_theta);
    train::rope_forward(k, B, T, c.n_kv_heads, hs, c.rope_theta);
    train::attention_forward(x, att, q, k, v, B, T, c.n_heads, c.n_kv_heads, hs);
    LOWBIT_ASSIGN_OR_RETURN(xq, site_in(a.atty[static_cast<size_t>(l)], x, C, pre + "wo_in", g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kWo), C, C, tmp, g));
    train::residual_forward(res2, res, tmp, N * C);

    train::rmsnorm_forward(x, &a.rstd2[static_cast<size_t>(l * N)], res2, W(layer_param(l, kFfnNorm)), N, C, eps);
    LOWBIT_ASSIGN_OR_RETURN(xq, site_in(a.ln2[static_cast<size_t>(l)], x, C, pre + "ffn_in", g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kW1), C, H, h1, g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kW3), C, H, h3, g));
    train::swiglu_forward(x, h1, h3, N * H);
    LOWBIT_ASSIGN_OR_RETURN(xq, site_in(a.hg[static_cast<size_t>(l)], x, H, pre + "w2_in", g));
    LOWBIT_RETURN_IF_ERROR(gemm(xq, layer_param(l, kW2), H, C, tmp, g));
    train::residual_forward(res + N * C, res2, tmp, N * C);
  }
  const size_t fnorm = layer_param(L, kAttnNorm);
  const size_t cls = c.shared_classifier ? 0 : info_.size() - 1;
  train::rmsnorm_forward(a.x.data(), a.rstdf.data(), &a.resid[static_cast<size_t>(L * N * C)], W(fnorm), N, C, eps);
  const GemmOperandSpecs& gc = recipe_.quantize_classifier ? g : fp32_gemm;
  LOWBIT_ASSIGN_OR_RETURN(const float* xq, site_in(a.lnf, a.x.data(), C, "classifier_in", gc));
  LOWBIT_RETURN_IF_ERROR(gemm(xq, cls, C, V, a.logits.data(), gc));
  if (!all_finite(a.logits.data(), N * V)) {
    return InvalidArgument("train: the forward pass produced a non-finite logit (the weights diverged)");
  }
  train::crossentropy_forward(a.probs.data(), a.losses.data(), a.logits.data(), a.targets.data(), N, V);
  double sum = 0.0;
  for (float x : a.losses) sum += x;
  return static_cast<float>(sum / static_cast<double>(N));
}

Status TrainModel::backward(float grad_scale) { return backward_impl(grad_scale, {}); }
Status TrainModel::backward_from_logits(std::span<const float> dlogits) { return backward_impl(1.0f, dlogits); }

Status TrainModel::backward_impl(float grad_scale, std::span<const float> given_dlogits) {
  const LlamaConfig& c = cfg_;
  Acts& a = *acts_;
  if (a.N == 0) return InvalidArgument("train: backward() before forward()");
  const int64_t N = a.N;
  const int B = a.B, T = a.T;
  const int C = c.dim, KV = c.kv_dim(), H = c.hidden_dim, V = c.vocab_size, L = c.n_layers, hs = c.head_dim();
  const float* P = params_.data();
  float* G = grads_.data();
  auto W = [&](size_t idx) { return P + info_[idx].offset; };
  auto dW = [&](size_t idx) { return G + info_[idx].offset; };
  auto Wf = [&](size_t idx) {  // what the forward GEMM read
    return idx < weight_override_.size() && weight_override_[idx] ? weight_override_[idx] : W(idx);
  };
  std::map<std::string, AmaxHistory>& hist = a.hist;
  const int64_t wide = std::max<int64_t>({C, H, V});
  const float* dlogits_ptr = nullptr;  // set below: marks the classifier's backward
  grow(a.dx, N * wide);
  grow(a.dx2, N * wide);
  grow(a.dtmp, N * wide);
  grow(a.x, N * wide);

  // The saved input of a site as fp32 (dequantized when cached as codes).
  auto saved = [&](const Site& s) -> const float* {
    if (!s.q) return s.f32.data();
    const Status st = dequantize(*s.q, TensorView(a.x.data(), DType::kF32, {s.q->rows, s.q->cols}));
    LOWBIT_CHECK(st.ok(), st.message());
    return a.x.data();
  };
  // dx (N, in) += dgrad, dW += wgrad of the linear y = x · Wᵀ given dy (N, out).
  const GemmOperandSpecs fp32_gemm{};
  auto linear_bwd = [&](const float* x, size_t widx, const float* dy, int in, int out, float* dx) -> Status {
    const bool head = dy == dlogits_ptr;  // the classifier's GEMMs
    const GemmOperandSpecs& g = head && !recipe_.quantize_classifier ? fp32_gemm : recipe_.gemm;
    const std::string& name = info_[widx].name;
    LOWBIT_ASSIGN_OR_RETURN(const float* dyq, operand(hist, recipe_, dy, N, out, g.dgrad_dy, name + ".dy", a.dyq));
    LOWBIT_ASSIGN_OR_RETURN(const float* wq, operand(hist, recipe_, Wf(widx), out, in, g.dgrad_w, name + ".w", a.wq));
    if (dx && recipe_.kernel_accumulation && &g != &fp32_gemm) {
      // dX (N, in) = dY (N, out) · W: the kernel's y = x · Bᵀ with B = Wᵀ (in, out).
      grow(a.dtmp, N * in);
      grow(a.tmp, int64_t{in} * out);
      const float* w = W(widx);
      for (int o = 0; o < out; ++o) {
        for (int i = 0; i < in; ++i) a.tmp[static_cast<size_t>(int64_t{i} * out + o)] = w[int64_t{o} * in + i];
      }
      LOWBIT_RETURN_IF_ERROR(kernel_gemm(*recipe_.kernel_accumulation, dy, N, a.tmp.data(), in, out, a.dtmp.data()));
      for (int64_t i = 0; i < N * in; ++i) dx[i] += a.dtmp[static_cast<size_t>(i)];
    } else if (dx) {
      train::matmul_backward<float>(dx, nullptr, dyq, nullptr, wq, N, in, out);
    }
    if (frozen(widx)) return OkStatus();
    if (recipe_.kernel_accumulation && &g != &fp32_gemm && all_finite(dy, N * out) && all_finite(x, N * in)) {
      // dW (out, in) += dYᵀ · X: gemm_fp8_wgrad quantizes both to e4m3 in 128-token tiles itself.
      const KernelAccumulation& acc = *recipe_.kernel_accumulation;
      return gemm_fp8_wgrad(dy, out, x, in, N, out, in, dW(widx), in, {.fp8_accum = acc.mode, .accum_bits = acc.bits});
    }
    LOWBIT_ASSIGN_OR_RETURN(const float* dy2, operand(hist, recipe_, dy, N, out, g.wgrad_dy, name + ".dy_wgrad", a.dy2));
    LOWBIT_ASSIGN_OR_RETURN(const float* xq, operand(hist, recipe_, x, N, in, g.wgrad_x, name + ".x_wgrad", a.xq));
    train::matmul_backward<float>(nullptr, dW(widx), dy2, xq, nullptr, N, in, out);
    return OkStatus();
  };

  // Loss: mean over N tokens, times grad_scale.
  std::vector<float> dlogits(static_cast<size_t>(N * V), 0.0f);  // (N, V)
  if (given_dlogits.empty()) {
    std::vector<float> dloss(static_cast<size_t>(N), grad_scale / static_cast<float>(N));
    train::crossentropy_backward(dlogits.data(), a.probs.data(), a.targets.data(), dloss.data(), N, V);
  } else {
    if (static_cast<int64_t>(given_dlogits.size()) != N * V) {
      return InvalidArgument(fmt::format("train: {} logit gradients for a forward of {} x {}", given_dlogits.size(), N, V));
    }
    std::copy(given_dlogits.begin(), given_dlogits.end(), dlogits.begin());
  }
  dlogits_ptr = dlogits.data();
  const size_t cls = c.shared_classifier ? 0 : info_.size() - 1;
  const size_t fnorm = layer_param(L, kAttnNorm);
  float* dln = a.dx.data();  // (N, C) gradient of a norm's output
  std::fill(dln, dln + N * C, 0.0f);
  LOWBIT_RETURN_IF_ERROR(linear_bwd(saved(a.lnf), cls, dlogits.data(), C, V, dln));
  std::vector<float> dres(static_cast<size_t>(N * C), 0.0f);  // (N, C) gradient of the residual stream
  train::rmsnorm_backward(dres.data(), dW(fnorm), dln, &a.resid[static_cast<size_t>(L * N * C)], W(fnorm), a.rstdf.data(), N, C);

  std::vector<float> dh1(static_cast<size_t>(N * H)), dh3(static_cast<size_t>(N * H)), dhg(static_cast<size_t>(N * H));
  std::vector<float> dq(static_cast<size_t>(N * C)), dk(static_cast<size_t>(N * KV)), dv(static_cast<size_t>(N * KV));
  for (int l = L - 1; l >= 0; --l) {
    float* res = &a.resid[static_cast<size_t>(l * N * C)];
    float* res2 = &a.resid2[static_cast<size_t>(l * N * C)];
    const float* q = &a.q[static_cast<size_t>(l * N * C)];
    const float* k = &a.k[static_cast<size_t>(l * N * KV)];
    const float* v = &a.v[static_cast<size_t>(l * N * KV)];
    const float* att = &a.att[static_cast<size_t>(int64_t{l} * B * c.n_heads * T * T)];
    const float* h1 = &a.h1[static_cast<size_t>(l * N * H)];
    const float* h3 = &a.h3[static_cast<size_t>(l * N * H)];
    // resid[l+1] = res2 + w2(hg): dres flows to res2 unchanged and into the FFN branch.
    std::fill(dhg.begin(), dhg.end(), 0.0f);
    LOWBIT_RETURN_IF_ERROR(linear_bwd(saved(a.hg[static_cast<size_t>(l)]), layer_param(l, kW2), dres.data(), H, C, dhg.data()));
    std::fill(dh1.begin(), dh1.end(), 0.0f);
    std::fill(dh3.begin(), dh3.end(), 0.0f);
    train::swiglu_backward(dh1.data(), dh3.data(), dhg.data(), h1, h3, N * H);
    std::fill(dln, dln + N * C, 0.0f);
    const float* ln2 = saved(a.ln2[static_cast<size_t>(l)]);
    LOWBIT_RETURN_IF_ERROR(linear_bwd(ln2, layer_param(l, kW1), dh1.data(), C, H, dln));
    ln2 = saved(a.ln2[static_cast<size_t>(l)]);  // a.x may have been reused by the call above
    LOWBIT_RETURN_IF_ERROR(linear_bwd(ln2, layer_param(l, kW3), dh3.data(), C, H, dln));
    train::rmsnorm_backward(dres.data(), dW(layer_param(l, kFfnNorm)), dln, res2, W(layer_param(l, kFfnNorm)),
                            &a.rstd2[static_cast<size_t>(l * N)], N, C);
    // res2 = res + wo(attention): dres now holds d res2.
    float* datty = a.dx2.data();
    std::fill(datty, datty + N * C, 0.0f);
    LOWBIT_RETURN_IF_ERROR(linear_bwd(saved(a.atty[static_cast<size_t>(l)]), layer_param(l, kWo), dres.data(), C, C, datty));
    std::fill(dq.begin(), dq.end(), 0.0f);
    std::fill(dk.begin(), dk.end(), 0.0f);
    std::fill(dv.begin(), dv.end(), 0.0f);
    train::attention_backward(dq.data(), dk.data(), dv.data(), datty, att, q, k, v, B, T, c.n_heads, c.n_kv_heads, hs);
    train::rope_backward(dq.data(), B, T, c.n_heads, hs, c.rope_theta);
    train::rope_backward(dk.data(), B, T, c.n_kv_heads, hs, c.rope_theta);
    std::fill(dln, dln + N * C, 0.0f);
    const Site& s1 = a.ln1[static_cast<size_t>(l)];
    LOWBIT_RETURN_IF_ERROR(linear_bwd(saved(s1), layer_param(l, kWq), dq.data(), C, C, dln));
    LOWBIT_RETURN_IF_ERROR(linear_bwd(saved(s1), layer_param(l, kWk), dk.data(), C, KV, dln));
    LOWBIT_RETURN_IF_ERROR(linear_bwd(saved(s1), layer_param(l, kWv), dv.data(), C, KV, dln));
    train::rmsnorm_backward(dres.data(), dW(layer_param(l, kAttnNorm)), dln, res, W(layer_param(l, kAttnNorm)),
                            &a.rstd1[static_cast<size_t>(l * N)], N, C);
  }
  if (!frozen(0)) train::embedding_backward(dW(0), dres.data(), a.inputs.data(), N, C);
  return OkStatus();
}

int64_t TrainModel::cached_linear_input_bytes() const {
  const Acts& a = *acts_;
  int64_t b = a.lnf.bytes();
  for (const auto* v : {&a.ln1, &a.atty, &a.ln2, &a.hg}) {
    for (const Site& s : *v) b += s.bytes();
  }
  return b;
}

int64_t TrainModel::saved_activation_bytes() const {
  const Acts& a = *acts_;
  int64_t f = 0;
  for (const auto* v : {&a.resid, &a.resid2, &a.rstd1, &a.rstd2, &a.q, &a.k, &a.v, &a.att, &a.h1, &a.h3, &a.rstdf, &a.probs}) {
    f += static_cast<int64_t>(v->size());
  }
  return f * static_cast<int64_t>(sizeof(float)) + cached_linear_input_bytes();
}

std::string TrainModel::serialize_scaling() const {
  std::string out;
  auto put = [&](const void* d, size_t n) { out.append(static_cast<const char*>(d), n); };
  const uint64_t n = acts_->hist.size();
  put(&n, 8);
  for (const auto& [name, h] : acts_->hist) {
    const uint64_t len = name.size(), cnt = h.history().size();
    put(&len, 8);
    put(name.data(), len);
    put(&cnt, 8);
    put(h.history().data(), cnt * sizeof(float));
  }
  return out;
}

Status TrainModel::deserialize_scaling(std::string_view b, const std::string& name) {
  size_t off = 0;
  auto get = [&](void* d, size_t n) -> bool {
    if (b.size() - off < n) return false;
    std::memcpy(d, b.data() + off, n);
    off += n;
    return true;
  };
  auto bad = [&] { return DataLoss(fmt::format("{}: scaling state truncated or corrupt", name)); };
  uint64_t n = 0;
  if (!get(&n, 8) || n > b.size()) return bad();
  std::map<std::string, AmaxHistory> hist;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t len = 0, cnt = 0;
    if (!get(&len, 8) || len > b.size() - off) return bad();
    std::string key(b.substr(off, len));
    off += len;
    if (!get(&cnt, 8) || cnt > (b.size() - off) / sizeof(float)) return bad();
    std::vector<float> v(cnt);
    if (!get(v.data(), cnt * sizeof(float))) return bad();
    // The element maximum follows from the operand's spec; any positive value reproduces clip().
    LOWBIT_ASSIGN_OR_RETURN(AmaxHistory h, AmaxHistory::create(recipe_.amax_history_len, 0, 1.0f, key));
    for (float x : v) LOWBIT_RETURN_IF_ERROR(h.record(x));
    hist.emplace(std::move(key), std::move(h));
  }
  if (off != b.size()) return bad();
  acts_->hist = std::move(hist);
  return OkStatus();
}

}  // namespace lowbit
