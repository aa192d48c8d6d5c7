// Llama-family models: configuration, weights (memory-mapped, zero copy for fp32) and the
// checkpoint readers. The forward pass lives in llama.h, tokenizers in tokenizer.h.
//
//   LOWBIT_ASSIGN_OR_RETURN(Model m, load_model("../shared/models/stories260K.bin"));
//   m.config.dim;                       // 64
//   m.weights.layers[0].wq;             // (dim, dim) = (out, in), row-major f32
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/file.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {

// How RoPE pairs a head's dimensions: (2i, 2i+1) as llama2.c and llama.cpp's converted Llama
// files (LLAMA_ROPE_TYPE_NORM), or (i, i + head_dim/2) as GPT-NeoX and Qwen2 (LLAMA_ROPE_TYPE_NEOX).
enum class RopeStyle : uint8_t { kInterleaved, kNeox };

// What differs between the architectures lowbit runs: one row each, read by the loaders (the GGUF
// keys are "<name>.embedding_length" ...) and by the forward pass through LlamaConfig. Everything
// else (RMSNorm, GQA, SwiGLU) is shared.
struct Architecture {
  std::string_view name;  // GGUF general.architecture
  RopeStyle rope;
  bool qkv_bias;          // blk.{l}.attn_{q,k,v}.bias
};
inline constexpr Architecture kArchitectures[] = {
    {"llama", RopeStyle::kInterleaved, false},
    {"qwen2", RopeStyle::kNeox, true},  // llama.cpp llm_arch LLM_ARCH_QWEN2: rope type NEOX, q/k/v biases
};
// Null for an architecture lowbit does not run.
constexpr const Architecture* find_architecture(std::string_view name) {
  for (const Architecture& a : kArchitectures) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

struct LlamaConfig {
  int dim = 0;          // model width
  int hidden_dim = 0;   // FFN width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;   // grouped-query attention: n_heads % n_kv_heads == 0
  int vocab_size = 0;
  int seq_len = 0;      // maximum context
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool shared_classifier = true;  // classifier = token embedding
  std::string arch = "llama";     // a kArchitectures name
  RopeStyle rope_style = RopeStyle::kInterleaved;
  bool qkv_bias = false;          // LayerWeights::bq/bk/bv present

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return head_dim() * n_kv_heads; }
};

// One transformer block. Linear weights are (out, in), row-major f32.
struct LayerWeights {
  ConstTensorView attn_norm;  // (dim)
  ConstTensorView wq;         // (dim, dim)
  ConstTensorView wk;         // (kv_dim, dim)
  ConstTensorView wv;         // (kv_dim, dim)
  ConstTensorView wo;         // (dim, dim)
  ConstTensorView ffn_norm;   // (dim)
  ConstTensorView w1;         // (hidden, dim)  gate
  ConstTensorView w2;         // (dim, hidden)  down
  ConstTensorView w3;         // (hidden, dim)  up
  ConstTensorView bq, bk, bv; // (dim), (kv_dim), (kv_dim): added after wq/wk/wv when qkv_bias; else empty
};

struct LlamaWeights {
  ConstTensorView tok_embeddings;  // (vocab, dim)
  std::vector<LayerWeights> layers;
  ConstTensorView final_norm;      // (dim)
  ConstTensorView classifier;      // (vocab, dim); the embedding when shared
};

// Dynamic activation fake-quantization a saved model asks for (see ActivationQuant in llama.h).
struct ActivationSpecs {
  std::optional<QuantSpec> linear_input;
  std::optional<QuantSpec> kv;
  std::string kv_cache;  // a quantized KV cache spec (kv_cache.h text form) the model runs with; "" = fp32
  // How GGUF k-quant linears (Model::ggml) take their input: fp32 (exact) or Q8_K (llama.cpp's
  // integer path, ggml_matmul.h). A run-time choice, not stored by writers.
  GgmlActs ggml = GgmlActs::kF32;
};

// A loaded model: config, views of its weights, and whatever owns their bytes (the mapped
// file for fp32 checkpoints; dequantized buffers for int8 ones).
//
// Files lowbit saved quantized (save.h) also give `quantized`: the linear weights as they were
// stored, keyed "layers.{l}.{wq|wk|wv|wo|w1|w2|w3}" and "classifier", in the forward pass's row
// order; LlamaModel builds quantized Linears from them. `weights` still holds every matrix,
// dequantized to f32 (so algorithms that start from f32 weights keep working).
struct Model {
  LlamaConfig config;
  LlamaWeights weights;
  std::string path;
  std::shared_ptr<MappedFile> file;
  std::vector<Tensor> owned;
  std::map<std::string, QuantizedTensor> quantized;
  // GGUF k-quant tensors (Q4_K, Q6_K) kept in their blocks, viewing `file`, keyed like `quantized`
  // plus "tok_embeddings": the model runs from them (ggml_matmul.h) and their `weights` views stay
  // empty, so no fp32 copy exists.
  std::map<std::string, GgmlMatrix> ggml;
  ActivationSpecs activations;
};

inline constexpr const char* kTokEmbeddingsName = "tok_embeddings";

// llama2.c checkpoints: legacy version 0 (7-int32 header; negative vocab = unshared classifier)
// and the versioned export (magic "ak42", version 1 fp32, version 2 int8 groups). Every size is
// checked against the file before use; errors name the file and what was expected.
Result<Model> load_llama2c(const std::string& path);
// Picks the reader from the file's contents. Every fp32 weight (quantized ones dequantized) must
// be finite and within +-1e6: a NaN, Inf or FLT_MAX is refused naming the tensor and index.
Result<Model> load_model(const std::string& path);

}  // namespace lowbit
