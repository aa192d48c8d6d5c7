// Internal to the model layer: checks every reader shares, and the names and row orders the
// readers and save.cc agree on.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "lowbit/llama.h"
#include "lowbit/kv_cache.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"

namespace lowbit {

// Index of the first NaN or Inf in x[0, n), or -1 (branch-free in chunks, so it vectorizes).
int64_t first_non_finite(const float* x, int64_t n);
// DataLoss "<path>: tensor <name> has NaN at index <i>" for the first non-finite weight.
Status check_finite(const std::string& path, const std::string& name, const float* x, int64_t n);

// The seven linears of a block, in LayerWeights / LayerLinears order, with the names
// Model::quantized uses ("layers.{l}.wq") and the files' names for them.
enum class SlotDim : uint8_t { kDim, kKvDim, kHidden };
inline int64_t extent(const LlamaConfig& c, SlotDim d) {
  return d == SlotDim::kDim ? c.dim : d == SlotDim::kKvDim ? c.kv_dim() : c.hidden_dim;
}
struct SlotInfo {
  const char* name;       // "wq"
  const char* hf;         // "self_attn.q_proj" (model.layers.{l}.<hf>.weight)
  const char* gguf;       // "attn_q"           (blk.{l}.<gguf>.weight)
  ConstTensorView LayerWeights::*weight;
  Linear LayerLinears::*linear;
  SlotDim out, in;        // the (out, in) shape
  bool rope;              // q/k: Hugging Face stores their rows in rotate-half order
};
inline constexpr SlotInfo kSlotInfo[] = {
    {"wq", "self_attn.q_proj", "attn_q", &LayerWeights::wq, &LayerLinears::wq, SlotDim::kDim, SlotDim::kDim, true},
    {"wk", "self_attn.k_proj", "attn_k", &LayerWeights::wk, &LayerLinears::wk, SlotDim::kKvDim, SlotDim::kDim, true},
    {"wv", "self_attn.v_proj", "attn_v", &LayerWeights::wv, &LayerLinears::wv, SlotDim::kKvDim, SlotDim::kDim, false},
    {"wo", "self_attn.o_proj", "attn_output", &LayerWeights::wo, &LayerLinears::wo, SlotDim::kDim, SlotDim::kDim, false},
    {"w1", "mlp.gate_proj", "ffn_gate", &LayerWeights::w1, &LayerLinears::w1, SlotDim::kHidden, SlotDim::kDim, false},
    {"w2", "mlp.down_proj", "ffn_down", &LayerWeights::w2, &LayerLinears::w2, SlotDim::kDim, SlotDim::kHidden, false},
    {"w3", "mlp.up_proj", "ffn_up", &LayerWeights::w3, &LayerLinears::w3, SlotDim::kHidden, SlotDim::kDim, false},
};
inline constexpr const char* kClassifierName = "classifier";
std::string linear_name(int layer, const SlotInfo& s);  // "layers.3.wq"

// Metadata keys (safetensors __metadata__ and GGUF) that carry what a LlamaModel adds to the
// weights: the activation fake-quant specs, as QuantSpec text.
inline constexpr const char* kActLinearInputKey = "lowbit.activation.linear_input";
inline constexpr const char* kActKvKey = "lowbit.activation.kv";
// The quantized KV cache spec (kv_cache.h text form), and the llama.cpp --cache-type-k / -v with the
// same layout ("none" where llama.cpp has none), written for people who run the file there.
inline constexpr const char* kKvCacheKey = "lowbit.kv_cache";
inline constexpr const char* kKvCacheLlamaCppK = "lowbit.kv_cache.llama_cpp_cache_type_k";
inline constexpr const char* kKvCacheLlamaCppV = "lowbit.kv_cache.llama_cpp_cache_type_v";
// safetensors only: comma-separated names of quantized q/k tensors stored in lowbit's interleaved
// RoPE row order, because their scale blocks span rows that Hugging Face's order would separate.
inline constexpr const char* kInterleavedRopeKey = "lowbit.rope_interleaved";
// Reads the keys (and the kv cache spec, checked against head_dim) through `get` (returns the value or "" when absent) into specs; errors name `path`.
template <class Get>
Status read_activation_specs(const std::string& path, Get get, ActivationSpecs* out, int head_dim) {
  for (const char* key : {kActLinearInputKey, kActKvKey}) {
    const std::string text = get(key);
    if (text.empty()) continue;
    Result<QuantSpec> s = parse_spec(text);
    if (!s.ok()) return DataLoss(path + ": metadata " + key + ": " + s.status().message());
    (key == kActKvKey ? out->kv : out->linear_input) = *s;
  }
  if (const std::string text = get(kKvCacheKey); !text.empty()) {
    Result<KvSpec> k = parse_kv_spec(text);
    if (!k.ok()) return DataLoss(path + ": metadata " + kKvCacheKey + ": " + k.status().message());
    if (Status st = validate_kv_spec(*k, head_dim); !st.ok()) return DataLoss(path + ": metadata " + kKvCacheKey + ": " + st.message());
    out->kv_cache = text;
  }
  return OkStatus();
}

// Row r of the returned order takes row src[r] (a permutation of 0..rows-1) of q. Exact: codes
// move whole rows; scales and zero points move with them when blocks are one row high, and must
// not change when taller blocks only permute rows among themselves. Unsupported otherwise.
Result<QuantizedTensor> permute_rows(const QuantizedTensor& q, std::span<const int64_t> src);
// hf_rope_source_row for every row of a (rows, cols) q/k matrix, and the inverse order.
std::vector<int64_t> hf_rope_order(int64_t rows, int64_t head_dim);
std::vector<int64_t> inverse_order(std::span<const int64_t> order);

}  // namespace lowbit
