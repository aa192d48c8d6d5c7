// Saving a whole runnable model — fp32 or quantized — as safetensors (a Hugging Face style
// folder) or GGUF (one file llama.cpp runs), and the tokenizer vocabulary GGUF embeds. What
// load_model() gives back from either is the same model: quantized linears stay quantized,
// activation fake-quant specs are restored. Layouts: docs/formats.md ("Saved models").
//
//   LlamaModel net(m);
//   LOWBIT_RETURN_IF_ERROR(apply_rtn(net, *parse_spec("int8:g32:sym:fp16"), std::nullopt));
//   SaveOptions opt{.format = ModelFormat::kGguf, .tokenizer_path = "tok512.model"};
//   LOWBIT_ASSIGN_OR_RETURN(SaveReport r, save_model(net, "out.gguf", opt));
//   LOWBIT_ASSIGN_OR_RETURN(Model back, load_model("out.gguf"));    // LlamaModel(back) == net
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowbit/gguf.h"
#include "lowbit/llama.h"
#include "lowbit/status.h"

namespace lowbit {

enum class ModelFormat { kSafetensors, kGguf };
std::string_view model_format_name(ModelFormat f);           // "safetensors" | "gguf"
Result<ModelFormat> parse_model_format(std::string_view name);  // the reverse; the error lists both

struct SaveOptions {
  ModelFormat format = ModelFormat::kSafetensors;
  // SentencePiece .model or llama2.c tokenizer.bin. GGUF embeds its vocabulary (tokenizer.ggml.*);
  // safetensors copies the file into the folder as tokenizer.model / tokenizer.bin. Empty: none
  // (a GGUF without a vocabulary loads in lowbit, not in llama.cpp).
  std::string tokenizer_path{};
  // Written as string metadata (safetensors __metadata__, GGUF string keys), e.g. {"lowbit.method", "rtn"}.
  std::vector<std::pair<std::string, std::string>> extra_metadata{};
  // GGUF only: a quantized linear whose spec has no GGUF type (only int8:g32:sym:fp16 -> Q8_0 and
  // int4:g32:sym:fp16 -> Q4_0 have) is an error unless this is set; then it is stored dequantized as F16.
  bool gguf_fallback_f16 = false;
};

struct SavedTensor {
  std::string name;    // the name in the file
  std::string stored;  // "F32", "Q8_0", "F16", or the QuantSpec text (safetensors)
};

struct SaveReport {
  std::string path;
  ModelFormat format = ModelFormat::kSafetensors;
  int64_t bytes = 0;                  // on disk (all files of a safetensors folder)
  std::vector<SavedTensor> tensors;   // in file order
  std::vector<std::string> warnings;  // one line each: what was not stored as asked (F16 fallbacks)
};

// Saves `net` as it stands: norms and embedding (and an untied classifier) from net.weights(),
// every linear from net.layers() / net.classifier() — a quantized Linear as its QuantizedTensor,
// an fp32 one from the matching net.weights() matrix — and net.activation_quant() as metadata.
//   safetensors: `out_path` is a folder holding model.safetensors (Hugging Face names, q/k rows in
//     Hugging Face's order, lowbit's quantized layout + quantization_config), config.json and the
//     tokenizer. It is written as a sibling temp folder and swapped in whole.
//   gguf: `out_path` is one file (llama.cpp names and keys; Q8_0 / Q4_0 for the specs that have
//     them, F16 for rows not a multiple of 32), written to a temp file and renamed.
// Nothing is left half-written: on any error the previous `out_path` is intact. Errors name the
// output and the tensor.
Result<SaveReport> save_model(const LlamaModel& net, const std::string& out_path, const SaveOptions& opt);

// A tokenizer's vocabulary as GGUF's tokenizer.ggml.* keys want it (llama.cpp's "llama" SPM
// vocabulary): SentencePiece pieces (U+2581 for space), scores, and token types.
struct TokenizerVocab {
  enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int bos = -1, eos = -1, unk = -1;  // -1: none
};
// From a SentencePiece .model (through libsentencepiece) or a llama2.c tokenizer.bin (whose
// pieces llama2.c's exporter rewrote: ' ' back to U+2581, ids 1 and 2 back to <s> and </s>; id 0
// is <unk>, ids 3..258 the byte pieces). Errors name the file.
Result<TokenizerVocab> read_tokenizer_vocab(const std::string& path);

// Streamed saves (stream.h) write a safetensors folder shard by shard. One shard holds blocks
// [first, end) of `net` (blocks outside the range may be empty), with `embedding` the embedding
// and final norm, with `classifier` the classifier (when stored: untied or quantized), named,
// row-ordered and laid out as save_model's model.safetensors; written atomically to `path`.
Result<SaveReport> save_safetensors_shard(const LlamaModel& net, const std::string& path, int first, int end, bool embedding,
                                          bool classifier, const SaveOptions& opt);
// The metadata save_safetensors_shard writes (activation / KV specs, extra keys, "format": "pt";
// not quantization_config), for a streamed save that writes a shard's tensors piecewise.
Result<std::map<std::string, std::string>> safetensors_shard_metadata(const LlamaModel& net, const std::string& path,
                                                                      const SaveOptions& opt);
// config.json and the tokenizer a safetensors save puts beside its weights, into the folder `dir`.
Status save_safetensors_sidecar(const LlamaModel& net, const std::string& dir, const SaveOptions& opt);

// A plain fp16 cast (fp16 elements, unit scale): F16 holds its values exactly, so both formats
// store a tensor rounded by it as F16 — an embedding (LlamaModel::embedding_spec) included.
bool is_fp16_cast(const QuantSpec& s);

// Streamed GGUF saves (stream.h) lay the file out before any block is quantized, then write
// each tensor at its offset as it is made. plan_gguf_save: the tensors, types, metadata and
// offsets save_model's GGUF gets for a model of `net`'s config and activation specs once every
// tensor is quantized as `spec_of(name)` says (lowbit names: "layers.0.wq", "tok_embeddings",
// "classifier"; nullopt: fp32), as quantize_model does it; `net` need not hold any weight.
// Errors as save_model's, before anything is quantized (a spec GGUF cannot hold).
struct GgufSaveLayout {
  std::vector<GgufTensorDecl> tensors;   // in file order
  GgufLayout layout;
  std::vector<std::string> warnings;     // the F16 fallbacks, as SaveReport's
  size_t index(std::string_view name) const;  // of a tensor (LOWBIT_CHECK that it is there)
};
Result<GgufSaveLayout> plan_gguf_save(const LlamaModel& net, const std::string& out, const SaveOptions& opt,
                                      const std::function<std::optional<QuantSpec>(const std::string&)>& spec_of);
// Block l's tensors (norms, biases, linears) of `net` as save_model's GGUF stores them: (GGUF
// name, data).
Result<std::vector<std::pair<std::string, std::vector<uint8_t>>>> gguf_block_data(const LlamaModel& net, int l, const std::string& out,
                                                                                   const SaveOptions& opt);

}  // namespace lowbit
