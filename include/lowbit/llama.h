// The Llama-family forward pass: RMSNorm, RoPE, grouped-query attention, SwiGLU FFN,
// tied or untied classifier; prefill of a whole sequence (batched matmuls) and single-token
// decode with a KV cache. Every weight matrix goes through one `Linear`, which holds fp32
// or a QuantizedTensor: repacked once for a quantized kernel (include/lowbit/kernels.h) when
// one serves the spec, else dequantized once at construction. Mirrors llama2.c's run.c.
//
//   LOWBIT_ASSIGN_OR_RETURN(Model m, load_model(path));
//   LlamaModel net(m);                                  // fp32 linears viewing m's weights
//   Session s(net);
//   std::vector<float> logits;                          // (n, vocab)
//   LOWBIT_RETURN_IF_ERROR(s.forward(tokens, /*pos=*/0, &logits));
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lowbit/ggml_matmul.h"
#include "lowbit/kernels.h"
#include "lowbit/kv_cache.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"

namespace lowbit {

// y (n, out) = x (n, in) · Wᵀ with W (out, in).
class Linear {
 public:
  Linear() = default;
  static Linear fp32(ConstTensorView w);
  // Weights a kernel serves (int4/uint4/nf4 groups; with `activations` int8:token also int8:row
  // (W8A8) and int4 groups (W4A8); with e4m3:tile1x128 also e4m3:block128x128) are packed once
  // and run by it; ggml block specs run from their blocks (ggml_matmul, fp32 activations); any
  // other spec is dequantized to fp32 here.
  static Result<Linear> quantized(const QuantizedTensor& q, const std::optional<QuantSpec>& activations = std::nullopt);
  // A GGUF k-quant matrix (Q4_K, Q6_K) run as stored by ggml_matmul; `w` views bytes that must outlive the Linear.
  // ggml() is set for these and for quantized() of a ggml block spec (its codes).
  static Linear ggml(const GgmlMatrix& w, GgmlActs acts = GgmlActs::kF32);
  // `q` held for the writers and size accounting only, with no run form (no packing, no fp32
  // copy): for a pipeline whose quantized blocks are saved and never run (a streamed RTN).
  // forward() on it aborts (LOWBIT_CHECK); kernel() is "stored".
  static Linear stored(QuantizedTensor q);
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }
  const QuantizedTensor* quant() const { return quant_.get(); }
  const GgmlMatrix* ggml() const { return ggml_.blocks ? &ggml_ : nullptr; }
  GgmlActs ggml_acts() const { return ggml_acts_; }
  // The kernel forward runs ("gemm_a16_w4g128_f32__avx2"), or "fp32" on the fp32 path.
  std::string kernel() const;
  void forward(const float* x, int64_t n, float* y) const;  // x (n, in), y (n, out)

 private:
  int64_t out_ = 0, in_ = 0;
  const float* w_ = nullptr;                      // (out, in)
  std::shared_ptr<const Tensor> owned_;           // dequantized weights
  std::shared_ptr<const QuantizedTensor> quant_;  // what was quantized, for size accounting
  std::shared_ptr<const PackedWeights> packed_;   // kernel layout (then w_ is null)
  MatmulOptions kernel_opt_;
  GgmlMatrix ggml_;                               // k-quant blocks (blocks null when unused)
  GgmlActs ggml_acts_ = GgmlActs::kF32;           // and how they take activations
};

// Where activations are fake-quantized (quantize -> dequantize with dynamic scales), so
// W8A8 / FP8 schemes can be evaluated. Unset sites stay fp32.
struct ActivationQuant {
  std::optional<QuantSpec> linear_input;  // every linear's input (tokens, in)
  std::optional<QuantSpec> kv;            // keys and values as they enter the cache (1, kv_dim) per token
};

// The seven linears of a block, in a fixed order algorithms can iterate.
enum class LinearSlot : int { kWq, kWk, kWv, kWo, kW1, kW2, kW3 };
inline constexpr int kNumLinearSlots = 7;
inline constexpr LinearSlot kLinearSlots[kNumLinearSlots] = {LinearSlot::kWq, LinearSlot::kWk, LinearSlot::kWv,
                                                             LinearSlot::kWo, LinearSlot::kW1, LinearSlot::kW2,
                                                             LinearSlot::kW3};
std::string_view linear_slot_name(LinearSlot slot);  // "wq" "wk" "wv" "wo" "w1" "w2" "w3"
// The block weight a slot reads: &LayerWeights::wq ...
ConstTensorView LayerWeights::*linear_weight_member(LinearSlot slot);

// LLM.int8()-style decomposition of one linear: the listed input columns (outlier features)
// bypass activation quantization; `part` (out, cols.size()) holds their weight columns, kept
// in higher precision, and adds its product to the main linear's output (whose weight has
// zeros in those columns).
struct OutlierSplit {
  std::vector<int32_t> cols;
  Linear part;
  int64_t storage_bytes = 0;  // what `part` and the column indices cost on disk
};

struct LayerLinears {
  Linear wq, wk, wv, wo, w1, w2, w3;
  std::array<OutlierSplit, kNumLinearSlots> outliers{};  // empty cols: no split

  Linear& at(LinearSlot s);
  const Linear& at(LinearSlot s) const;
};

// A runnable model: the config, the norms and embedding (fp32 views) and a Linear per matrix.
class LlamaModel {
 public:
  explicit LlamaModel(const Model& m);
  const LlamaConfig& config() const { return cfg_; }
  const LlamaWeights& weights() const { return w_; }
  std::vector<LayerLinears>& layers() { return layers_; }
  const std::vector<LayerLinears>& layers() const { return layers_; }
  // The token embedding's k-quant blocks when the file stores it so (rows are decoded per lookup),
  // else null and weights().tok_embeddings holds it in fp32.
  const GgmlMatrix* embedding_blocks() const { return emb_.blocks ? &emb_ : nullptr; }
  // The token embedding as a plan quantized it: what a writer stores and model_size counts. Null
  // when unquantized. With `lookups` (q holds ggml blocks) token lookups decode rows of q, as
  // embedding_blocks(); without, they read weights().tok_embeddings (the caller's dequantized table;
  // a GGUF's own embedding blocks are no longer used).
  const QuantizedTensor* embedding_quant() const { return emb_quant_.get(); }
  void set_embedding_quant(std::optional<QuantizedTensor> q, bool lookups = false);
  // The spec a plan rounded weights().tok_embeddings to (its values are that spec's dequantized
  // values) when it is not held as embedding_quant(): a writer stores an fp16 cast as F16.
  const std::optional<QuantSpec>& embedding_spec() const { return emb_spec_; }
  void set_embedding_spec(std::optional<QuantSpec> spec) { emb_spec_ = std::move(spec); }
  Linear& classifier() { return classifier_; }
  const Linear& classifier() const { return classifier_; }
  ActivationQuant& activation_quant() { return act_; }
  const ActivationQuant& activation_quant() const { return act_; }
  // The KV cache every Session of this model keeps: quantized per `spec` (include/lowbit/kv_cache.h),
  // or fp32 when unset. Errors: the spec does not fit the head dim.
  Status set_kv_cache(std::optional<KvSpec> spec);
  const std::optional<KvSpec>& kv_cache_spec() const { return kv_; }
  // Algorithms that fold scales into norms (AWQ, SmoothQuant) replace weight views with
  // tensors the model owns: `w = net.adopt(std::move(t))`.
  LlamaWeights& mutable_weights() { return w_; }
  ConstTensorView adopt(Tensor t);

 private:
  LlamaConfig cfg_;
  LlamaWeights w_;
  std::vector<std::shared_ptr<const Tensor>> owned_;
  std::vector<LayerLinears> layers_;
  Linear classifier_;
  GgmlMatrix emb_;
  std::shared_ptr<const QuantizedTensor> emb_quant_;
  std::optional<QuantSpec> emb_spec_;
  ActivationQuant act_;
  std::optional<KvSpec> kv_;
};

// Runs a LlamaModel: activation buffers and the KV cache (layers, seq_len, kv_dim) for one sequence.
class Session {
 public:
  explicit Session(const LlamaModel& model, int max_seq = 0);  // 0: the model's seq_len
  // Runs tokens at positions pos .. pos+n-1 (the cache must hold 0 .. pos-1). Fills `logits`
  // with (n, vocab) when `all_logits`, else (1, vocab) for the last token only.
  Status forward(std::span<const int> tokens, int pos, std::vector<float>* logits, bool all_logits = true);
  int max_seq() const { return max_seq_; }
  // Bytes the KV cache buffers hold (the fp32 cache, or the quantized one's codes, scales and window).
  int64_t kv_buffer_bytes() const;

 private:
  const LlamaModel& m_;
  int max_seq_;
  std::vector<float> k_cache_, v_cache_;  // (layers, max_seq, kv_dim); empty with a quantized cache
  std::optional<KvCache> kv_;              // the model's kv spec, when set
};

// Sees a linear's input as the linear receives it (after activation fake-quant): x (rows, cols).
using LinearInputHook = std::function<void(int layer, LinearSlot slot, const float* x, int64_t rows, int64_t cols)>;
// Runs transformer block `layer` of `model` over one sequence x (n, dim), in place, at positions
// 0..n-1 with a fresh KV cache: the unit of layer-by-layer calibration (algo). `hook` may be null.
Status run_block(const LlamaModel& model, int layer, float* x, int64_t n, const LinearInputHook& hook = nullptr);
// The residual stream entering block 0: x (n, dim) = the token embeddings.
Status embed_tokens(const LlamaModel& model, std::span<const int> tokens, float* x);
// After the last block: logits (n, vocab) = classifier(final_norm(x (n, dim))). With embed_tokens
// and run_block, the whole forward from position 0 (what Session::forward computes).
Status run_head(const LlamaModel& model, const float* x, int64_t n, std::vector<float>* logits);

struct GenerateOptions {
  int max_new_tokens = 64;
  float temperature = 0.0f;  // 0: greedy
  uint64_t seed = 0;
  int stop_token = -1;       // stop (without emitting) when this id is produced; -1: never
};
// Generates after `prompt` (which must be non-empty); returns the new ids. `on_token` (may be
// null) sees each id as it is produced.
Result<std::vector<int>> generate(const LlamaModel& model, std::span<const int> prompt, const GenerateOptions& opt,
                                  const std::function<void(int)>& on_token = nullptr);

}  // namespace lowbit
