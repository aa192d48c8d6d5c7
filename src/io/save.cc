// save_model: a LlamaModel as it stands, to a safetensors folder or a GGUF file. The names,
// keys and row orders are the readers' (load_safetensors, load_gguf), so loading the output
// gives the same model back; docs/formats.md ("Saved models") lists them.

#include "lowbit/save.h"
#include "model_internal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/gguf.h"
#include "lowbit/safetensors.h"
#include "lowbit/tokenizer.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- what a model holds -----------------------------------------------------------------------

// One weight matrix to save: a QuantizedTensor, or f32 (a view into net.weights()).
struct Matrix {
  std::string name;  // lowbit's: "layers.0.wq", "classifier"
  const QuantizedTensor* quant = nullptr;
  ConstTensorView f32;
  bool rope = false;
};

struct Parts {
  std::vector<Matrix> linears;         // layer-major, kSlotInfo order; then the classifier if untied
  std::optional<Matrix> classifier;    // set when the classifier is stored (untied or quantized)
  std::deque<std::vector<float>> decoded;  // fp32 rows of GGUF blocks the model runs from (stable addresses)
};

// A matrix the model runs from GGUF blocks (a k-quant GGUF loaded as is), decoded to fp32 into
// `store`: the writers store it as any other fp32 matrix.
Result<ConstTensorView> decode_blocks(const std::string& out, const std::string& name, const GgmlMatrix& g,
                                      std::deque<std::vector<float>>& store) {
  std::vector<float>& buf = store.emplace_back(static_cast<size_t>(g.rows * g.cols));
  if (Status st = ggml_decode_rows(g, 0, g.rows, buf.data()); !st.ok()) {
    return InvalidArgument(fmt::format("{}: {}: cannot decode its {} blocks: {}", out, name, ggml_type_name(g.type),
                                       st.message()));
  }
  return ConstTensorView(buf.data(), DType::kF32, {g.rows, g.cols});
}

// The token embedding in fp32: the weights' view, or its GGUF blocks decoded into `store`.
Result<ConstTensorView> embedding_f32(const LlamaModel& net, const std::string& out, std::deque<std::vector<float>>& store) {
  if (const GgmlMatrix* g = net.embedding_blocks()) return decode_blocks(out, kTokEmbeddingsName, *g, store);
  return net.weights().tok_embeddings;
}

Result<Matrix> matrix_of(const std::string& out, const std::string& name, const Linear& lin, ConstTensorView w,
                         bool rope, std::deque<std::vector<float>>& store) {
  Matrix m{name, lin.quant(), w, rope};
  if (m.quant != nullptr) return m;
  if (const GgmlMatrix* g = lin.ggml(); g != nullptr && w.ndim() == 0) {
    LOWBIT_ASSIGN_OR_RETURN(m.f32, decode_blocks(out, name, *g, store));
  }
  if (m.f32.ndim() != 2 || m.f32.dtype() != DType::kF32 || !m.f32.is_contiguous() || m.f32.dim(0) != lin.out_features() ||
      m.f32.dim(1) != lin.in_features()) {
    return InvalidArgument(fmt::format("{}: {}: the fp32 linear ({}, {}) does not match net.weights()' matrix {}", out,
                                       name, lin.out_features(), lin.in_features(), m.f32.shape().to_string()));
  }
  return m;
}

// Blocks [first, end) and, with `rest`, the classifier.
Result<Parts> collect(const LlamaModel& net, const std::string& out, size_t first = 0, size_t end = SIZE_MAX,
                      bool rest = true) {
  Parts p;
  for (size_t l = first; l < std::min(end, net.layers().size()); ++l) {
    for (const SlotInfo& s : kSlotInfo) {
      LOWBIT_ASSIGN_OR_RETURN(Matrix m, matrix_of(out, linear_name(static_cast<int>(l), s), net.layers()[l].*s.linear,
                                                  net.weights().layers[l].*s.weight, s.rope, p.decoded));
      p.linears.push_back(m);
    }
  }
  if (rest && (net.classifier().quant() != nullptr || !net.config().shared_classifier)) {
    LOWBIT_ASSIGN_OR_RETURN(Matrix m, matrix_of(out, kClassifierName, net.classifier(), net.weights().classifier, false,
                                                p.decoded));
    p.classifier = m;
  }
  return p;
}

std::span<const std::byte> bytes_of(ConstTensorView v) {
  return {static_cast<const std::byte*>(v.data()), static_cast<size_t>(v.numel()) * sizeof(float)};
}

// Metadata every format carries: the activation specs and the caller's extra keys.
Result<std::vector<std::pair<std::string, std::string>>> common_metadata(const LlamaModel& net, const std::string& out,
                                                                         const SaveOptions& opt) {
  std::vector<std::pair<std::string, std::string>> meta;
  const ActivationQuant& aq = net.activation_quant();
  if (aq.linear_input) meta.emplace_back(kActLinearInputKey, to_string(*aq.linear_input));
  if (aq.kv) meta.emplace_back(kActKvKey, to_string(*aq.kv));
  if (const std::optional<KvSpec>& kv = net.kv_cache_spec()) {
    meta.emplace_back(kKvCacheKey, to_string(*kv));
    const int hd = net.config().head_dim();
    const std::string tk = llama_cpp_cache_type(kv->k, hd), tv = llama_cpp_cache_type(kv->v, hd);
    meta.emplace_back(kKvCacheLlamaCppK, tk.empty() || kv->residual || kv->pre_rope ? "none" : tk);
    meta.emplace_back(kKvCacheLlamaCppV, tv.empty() || kv->residual ? "none" : tv);
  }
  for (const auto& [k, v] : opt.extra_metadata) {
    if (k == kActLinearInputKey || k == kActKvKey || k.starts_with("lowbit.kv_cache") || k == kInterleavedRopeKey || k.starts_with("general.") ||
        k.starts_with("llama.") || k.starts_with("tokenizer.") || k == "quantization_config" || k == "format") {
      return InvalidArgument(fmt::format("{}: extra metadata key {} is written by save_model itself", out, k));
    }
    meta.emplace_back(k, v);
  }
  return meta;
}

// ---- a folder swapped in whole ------------------------------------------------------------------

// What a safetensors save puts in its folder; an existing folder is replaced only if it holds
// nothing else, so `-o .` cannot wipe a working directory.
const std::set<std::string, std::less<>> kFolderFiles = {"model.safetensors", "config.json", "tokenizer.model",
                                                         "tokenizer.bin", "tokenizer.gguf"};

// A GGUF tokenizer source (a GGUF model with its vocabulary embedded) travels as its tokenizer.*
// keys, verbatim: gpt2 merges and pre-tokenizer, scores, token types, special ids, chat template.
// Empty when `path` is not a GGUF file.
Result<std::vector<std::pair<std::string, GgufValue>>> gguf_tokenizer_keys(const std::string& path, int vocab) {
  std::vector<std::pair<std::string, GgufValue>> keys;
  {
    LOWBIT_ASSIGN_OR_RETURN(MappedFile m, MappedFile::open(path));
    if (m.size() < 4 || std::memcmp(m.bytes().data(), "GGUF", 4) != 0) return keys;
  }
  LOWBIT_ASSIGN_OR_RETURN(GgufFile f, open_gguf(path));
  LOWBIT_ASSIGN_OR_RETURN(uint64_t n, f.get_array_length("tokenizer.ggml.tokens"));
  if (n != static_cast<uint64_t>(vocab)) {
    return InvalidArgument(fmt::format("{}: tokenizer.ggml.tokens has {} entries, the model's vocab is {}", path, n, vocab));
  }
  for (const auto& [k, v] : f.metadata) {
    if (k.starts_with("tokenizer.")) keys.emplace_back(k, v);
  }
  return keys;
}

class TempFolder {
 public:
  static Result<TempFolder> create(const std::string& target) {
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(target, ec))) {
      return InvalidArgument(fmt::format("{}: is a symbolic link; not replacing it (name its target instead)", target));
    }
    if (fs::exists(target, ec)) {
      if (!fs::is_directory(target, ec)) {
        return InvalidArgument(fmt::format("{}: exists and is not a folder (a safetensors save is a folder)", target));
      }
      for (const fs::directory_entry& e : fs::directory_iterator(target, ec)) {
        if (!e.is_regular_file() || !kFolderFiles.contains(e.path().filename().string())) {
          return InvalidArgument(fmt::format("{}: exists and holds {}, which a saved model does not; not replacing it",
                                             target, e.path().filename().string()));
        }
      }
    }
    fs::path t(target);
    if (t.filename().empty()) t = t.parent_path();  // "out/"
    remove_stale_temps(t.string());  // folders a killed run left behind
    std::string templ = temp_sibling_prefix(t.string()) + "XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      return IoError(fmt::format("{}: cannot create a temp folder beside it: {}", target, std::strerror(errno)));
    }
    const mode_t mask = ::umask(0);  // mkdtemp makes 0700; give the folder a plain mkdir's mode
    ::umask(mask);
    ::chmod(templ.c_str(), 0777 & ~mask);
    TempFolder f;
    f.target_ = t.string();
    f.temp_ = templ;
    return f;
  }

  TempFolder() = default;
  TempFolder(TempFolder&& o) noexcept : target_(std::move(o.target_)), temp_(std::exchange(o.temp_, {})) {}
  TempFolder& operator=(TempFolder&&) = delete;
  ~TempFolder() {
    std::error_code ec;
    if (!temp_.empty()) fs::remove_all(temp_, ec);
  }

  std::string file(std::string_view name) const { return (fs::path(temp_) / name).string(); }

  // Swaps the folder in: renameat2(RENAME_EXCHANGE) when the target exists (atomic), else rename.
  Status commit() {
    std::error_code ec;
    if (!fs::exists(target_, ec)) {
      if (::rename(temp_.c_str(), target_.c_str()) != 0) return rename_error();
      temp_.clear();
      return OkStatus();
    }
    if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) != 0) {
      if (errno != EINVAL && errno != ENOSYS) return rename_error();
      // No exchange on this filesystem: move the old folder aside, then the new one in.
      const std::string aside = temp_ + ".old";
      if (::rename(target_.c_str(), aside.c_str()) != 0) return rename_error();
      if (::rename(temp_.c_str(), target_.c_str()) != 0) {
        const Status s = rename_error();
        (void)::rename(aside.c_str(), target_.c_str());
        return s;
      }
      fs::remove_all(aside, ec);
      temp_.clear();
      return OkStatus();
    }
    fs::remove_all(temp_, ec);  // now the old folder
    temp_.clear();
    return OkStatus();
  }

 private:
  Status rename_error() const {
    return IoError(fmt::format("{}: cannot move the finished folder into place: {}", target_, std::strerror(errno)));
  }
  std::string target_, temp_;
};

// ---- safetensors ---------------------------------------------------------------------------

std::string hf_name(const std::string& lowbit_name) {
  if (lowbit_name == kClassifierName) return "lm_head.weight";
  const size_t dot = lowbit_name.find('.', 7);  // "layers.<l>.<slot>"
  const std::string slot = lowbit_name.substr(dot + 1);
  for (const SlotInfo& s : kSlotInfo) {
    if (slot == s.name) return fmt::format("model.{}.{}.weight", lowbit_name.substr(0, dot), s.hf);
  }
  LOWBIT_CHECK(false, "hf_name: unknown linear " + lowbit_name);
  return {};
}

json hf_config(const LlamaConfig& c, bool tied, const Tokenizer* tok) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_act", "silu"},
            {"hidden_size", c.dim},
            {"intermediate_size", c.hidden_dim},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.seq_len},
            {"rope_theta", static_cast<double>(c.rope_theta)},
            {"rms_norm_eps", static_cast<double>(c.norm_eps)},
            {"tie_word_embeddings", tied},
            {"torch_dtype", "float32"}};
  if (tok != nullptr && tok->bos_id() >= 0) j["bos_token_id"] = tok->bos_id();
  if (tok != nullptr && tok->eos_id() >= 0) j["eos_token_id"] = tok->eos_id();
  return j;
}

// The tensors of blocks [first, end) and, with `rest`, the embedding, final norm and classifier,
// written to the file `weights` (atomically) with the names, row orders and metadata of a save.
Status write_safetensors_part(const LlamaModel& net, const std::string& out, const std::string& weights, const SaveOptions& opt,
                              size_t first, size_t end, bool rest, SaveReport* report, bool with_classifier = true) {
  const LlamaConfig& c = net.config();
  LOWBIT_ASSIGN_OR_RETURN(Parts parts, collect(net, out, first, end, with_classifier));
  LOWBIT_ASSIGN_OR_RETURN(auto common, common_metadata(net, out, opt));

  std::map<std::string, QuantizedTensor> quantized;  // by Hugging Face name
  std::vector<SafetensorsEntry> plain;
  std::deque<std::vector<float>> permuted;  // fp32 q/k rows in Hugging Face's order (stable addresses)
  std::vector<std::string> interleaved;
  const LlamaWeights& w = net.weights();
  const auto add_plain = [&](const std::string& name, ConstTensorView v) {
    plain.push_back({name, DType::kF32, std::vector<int64_t>(v.shape().dims.begin(), v.shape().dims.begin() + v.ndim()),
                     bytes_of(v)});
  };
  std::vector<uint16_t> emb16;
  if (rest) {
    LOWBIT_ASSIGN_OR_RETURN(ConstTensorView emb, embedding_f32(net, out, parts.decoded));
    if (net.embedding_spec() && is_fp16_cast(*net.embedding_spec())) {  // its values are fp16's
      emb16.resize(static_cast<size_t>(emb.numel()));
      f32_to_f16(std::span<const float>(emb.data_as<float>(), emb16.size()), emb16);
      plain.push_back({"model.embed_tokens.weight", DType::kF16, {emb.dim(0), emb.dim(1)}, std::as_bytes(std::span<const uint16_t>(emb16))});
    } else {
      add_plain("model.embed_tokens.weight", emb);
    }
  }
  for (size_t l = first; l < std::min(end, w.layers.size()); ++l) {
    add_plain(fmt::format("model.layers.{}.input_layernorm.weight", l), w.layers[l].attn_norm);
    add_plain(fmt::format("model.layers.{}.post_attention_layernorm.weight", l), w.layers[l].ffn_norm);
  }
  if (rest) add_plain("model.norm.weight", w.final_norm);
  std::vector<Matrix> matrices = parts.linears;
  if (parts.classifier) matrices.push_back(*parts.classifier);
  for (const Matrix& m : matrices) {
    const std::string name = hf_name(m.name);
    // The reader takes row r of q/k from Hugging Face row hf_rope_source_row(r): write the inverse.
    if (m.quant != nullptr) {
      if (!m.rope) {
        quantized.emplace(name, *m.quant);
        continue;
      }
      Result<QuantizedTensor> p = permute_rows(*m.quant, inverse_order(hf_rope_order(m.quant->rows, c.head_dim())));
      if (p.ok()) {
        quantized.emplace(name, std::move(*p));
      } else {
        quantized.emplace(name, *m.quant);
        interleaved.push_back(name);
      }
      continue;
    }
    if (!m.rope) {
      add_plain(name, m.f32);
      continue;
    }
    const int64_t rows = m.f32.dim(0), cols = m.f32.dim(1);
    const std::vector<int64_t> src = hf_rope_order(rows, c.head_dim());
    std::vector<float>& dst = permuted.emplace_back(static_cast<size_t>(rows * cols));
    const float* x = m.f32.data_as<float>();
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst.data() + src[static_cast<size_t>(r)] * cols, x + r * cols, static_cast<size_t>(cols) * sizeof(float));
    }
    plain.push_back({name, DType::kF32, {rows, cols}, std::as_bytes(std::span<const float>(dst))});
  }

  std::map<std::string, std::string> meta(common.begin(), common.end());
  meta["format"] = "pt";  // what Hugging Face's loaders expect of a PyTorch-style file
  if (!interleaved.empty()) meta[kInterleavedRopeKey] = fmt::format("{}", fmt::join(interleaved, ","));
  for (const auto& [name, q] : quantized) {
    report->tensors.push_back({name, to_string(q.spec)});
    if (std::find(interleaved.begin(), interleaved.end(), name) != interleaved.end()) {
      report->warnings.push_back(fmt::format("{}: {} blocks span rows that Hugging Face's RoPE order separates: stored in "
                                             "lowbit's interleaved row order (listed in {})",
                                             name, to_string(q.spec), kInterleavedRopeKey));
    }
  }
  for (const SafetensorsEntry& e : plain) report->tensors.push_back({e.name, "F32"});

  if (quantized.empty()) return write_safetensors(weights, plain, meta);
  return write_quantized_safetensors(weights, quantized, plain, meta);
}

// config.json and the tokenizer into `dir` (a save's temp folder, or a streamed save's).
Status write_safetensors_sidecar(const LlamaModel& net, const std::string& dir, const SaveOptions& opt) {
  const LlamaConfig& c = net.config();
  const bool tied = !(net.classifier().quant() != nullptr || !c.shared_classifier);
  std::unique_ptr<Tokenizer> tok;
  if (!opt.tokenizer_path.empty()) {
    LOWBIT_ASSIGN_OR_RETURN(tok, load_tokenizer(opt.tokenizer_path, c.vocab_size));
  }
  const fs::path d(dir);
  LOWBIT_RETURN_IF_ERROR(write_file_atomic((d / "config.json").string(), hf_config(c, tied, tok.get()).dump(2) + "\n"));
  if (tok) {
    LOWBIT_ASSIGN_OR_RETURN(auto gguf_keys, gguf_tokenizer_keys(opt.tokenizer_path, c.vocab_size));
    if (!gguf_keys.empty()) {  // not the whole GGUF model: a GGUF holding only its tokenizer keys
      GgufWriteSpec tspec;
      tspec.metadata = std::move(gguf_keys);
      LOWBIT_RETURN_IF_ERROR(write_gguf((d / "tokenizer.gguf").string(), tspec));
    } else {
      LOWBIT_ASSIGN_OR_RETURN(std::string bytes, read_file(opt.tokenizer_path));
      LOWBIT_RETURN_IF_ERROR(
          write_file_atomic((d / (tok->kind() == "sentencepiece" ? "tokenizer.model" : "tokenizer.bin")).string(), bytes));
    }
  }
  return OkStatus();
}

Status save_safetensors(const LlamaModel& net, const std::string& out, const SaveOptions& opt, SaveReport* report) {
  LOWBIT_RETURN_IF_ERROR(collect(net, out).status());
  if (!opt.tokenizer_path.empty()) {
    LOWBIT_RETURN_IF_ERROR(load_tokenizer(opt.tokenizer_path, net.config().vocab_size).status());
  }
  LOWBIT_ASSIGN_OR_RETURN(TempFolder folder, TempFolder::create(out));
  LOWBIT_RETURN_IF_ERROR(write_safetensors_part(net, out, folder.file("model.safetensors"), opt, 0, SIZE_MAX, true, report));
  LOWBIT_RETURN_IF_ERROR(write_safetensors_sidecar(net, folder.file(""), opt));
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(folder.file(""), ec)) {
    report->bytes += static_cast<int64_t>(e.file_size(ec));
  }
  return folder.commit();
}

// ---- GGUF ------------------------------------------------------------------------------------

// llama.cpp's llama_ftype values for general.file_type.
constexpr uint32_t kFtypeAllF32 = 0, kFtypeMostlyF16 = 1, kFtypeMostlyQ4_0 = 2, kFtypeMostlyQ8_0 = 7;
constexpr uint32_t kGgmlQuantizationVersion = 2;  // GGML_QNT_VERSION
constexpr int64_t kGgmlBlock = 32;                // QK8_0 = QK4_0

std::string gguf_name(const std::string& lowbit_name) {
  if (lowbit_name == kClassifierName) return "output.weight";
  const size_t dot = lowbit_name.find('.', 7);
  const std::string layer = lowbit_name.substr(7, dot - 7), slot = lowbit_name.substr(dot + 1);
  for (const SlotInfo& s : kSlotInfo) {
    if (slot == s.name) return fmt::format("blk.{}.{}.weight", layer, s.gguf);
  }
  LOWBIT_CHECK(false, "gguf_name: unknown linear " + lowbit_name);
  return {};
}

// "Q8_0", as llama.cpp prints type names.
std::string upper_type_name(GgmlType t) {
  std::string s(ggml_type_name(t));
  for (char& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return s;
}

// The GGUF type a spec is stored as, if any.
std::optional<GgmlType> gguf_type_of(const QuantSpec& s) {
  if (s.ggml != GgmlType::kF32) return s.ggml;
  if (s.granularity != Granularity::kGroup || s.group != kGgmlBlock || !s.symmetric ||
      s.scale_format != Format::kFp16 || s.tensor_scale) {
    return std::nullopt;
  }
  if (s.element == Format::kInt8) return GgmlType::kQ8_0;
  if (s.element == Format::kInt4) return GgmlType::kQ4_0;
  return std::nullopt;
}

Status add_vocab(const std::string& out, const std::string& tokenizer, int vocab, GgufWriteSpec* spec) {
  LOWBIT_ASSIGN_OR_RETURN(auto gguf_keys, gguf_tokenizer_keys(tokenizer, vocab));
  if (!gguf_keys.empty()) {
    for (auto& kv : gguf_keys) spec->metadata.push_back(std::move(kv));
    return OkStatus();
  }
  LOWBIT_ASSIGN_OR_RETURN(TokenizerVocab v, read_tokenizer_vocab(tokenizer));
  if (static_cast<int>(v.tokens.size()) != vocab) {
    return InvalidArgument(fmt::format("{}: tokenizer {} has {} tokens, the model {}", out, tokenizer, v.tokens.size(),
                                       vocab));
  }
  std::vector<GgufValue::Scalar> tokens, scores, types;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    tokens.emplace_back(v.tokens[i]);
    scores.emplace_back(v.scores[i]);
    types.emplace_back(v.types[i]);
  }
  auto& m = spec->metadata;
  m.emplace_back("tokenizer.ggml.model", GgufValue::str("llama"));
  m.emplace_back("tokenizer.ggml.tokens", GgufValue::array_of(GgufValueType::kString, std::move(tokens)));
  m.emplace_back("tokenizer.ggml.scores", GgufValue::array_of(GgufValueType::kF32, std::move(scores)));
  m.emplace_back("tokenizer.ggml.token_type", GgufValue::array_of(GgufValueType::kI32, std::move(types)));
  for (const auto& [key, id] : {std::pair{"tokenizer.ggml.bos_token_id", v.bos}, std::pair{"tokenizer.ggml.eos_token_id", v.eos},
                                std::pair{"tokenizer.ggml.unknown_token_id", v.unk}}) {
    if (id >= 0) m.emplace_back(key, GgufValue::u32(static_cast<uint32_t>(id)));
  }
  m.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(v.bos >= 0));
  m.emplace_back("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
  return OkStatus();
}

// How a matrix quantized with `s` (rows of `cols`) is stored: its ggml blocks as they are,
// Q4_0 / Q8_0 re-encoded (int4 / int8 g32 sym fp16, rows a multiple of 32), or dequantized as F16
// (exact for a plain fp16 cast; else only with gguf_fallback_f16, and a warning).
struct GgufStorage {
  GgmlType type = GgmlType::kF32;
  bool dequantized = false;
  std::string warning;
};

Result<GgufStorage> gguf_storage(const std::string& out, const std::string& name, const std::string& lowbit_name,
                                 const QuantSpec& s, int64_t cols, const SaveOptions& opt) {
  const std::optional<GgmlType> type = gguf_type_of(s);
  if (type && (s.ggml != GgmlType::kF32 || cols % kGgmlBlock == 0)) return GgufStorage{*type, false, {}};
  const bool exact_f16 = is_fp16_cast(s);
  if (!type && !opt.gguf_fallback_f16 && !exact_f16) {
    return InvalidArgument(fmt::format("{}: {} ({}) is quantized {}, which GGUF cannot hold (supported: "
                                       "int8:g32:sym:fp16 -> Q8_0, int4:g32:sym:fp16 -> Q4_0); save as safetensors, "
                                       "or allow storing it dequantized as F16 (gguf_fallback_f16, --gguf-f16)",
                                       out, name, lowbit_name, to_string(s)));
  }
  GgufStorage st{GgmlType::kF16, true, {}};
  if (exact_f16) return st;  // F16 holds it exactly
  st.warning = type ? fmt::format("{}: {} rows of {} values are not a multiple of 32, which {} needs: stored dequantized as F16",
                                  name, to_string(s), cols, upper_type_name(*type))
                    : fmt::format("{}: {} has no GGUF type: stored dequantized as F16", name, to_string(s));
  return st;
}

// general.file_type from the matrices' storage, as llama_ftype counts it.
struct GgufFtype {
  bool q4 = false, q8 = false, f16 = false;
  void add(const QuantSpec& s, const GgufStorage& st) {
    if (st.dequantized) {
      f16 = true;
    } else {
      (s.ggml != GgmlType::kF32 || st.type == GgmlType::kQ4_0 ? q4 : q8) = true;
    }
  }
  uint32_t value() const { return q4 ? kFtypeMostlyQ4_0 : q8 ? kFtypeMostlyQ8_0 : f16 ? kFtypeMostlyF16 : kFtypeAllF32; }
};

// A matrix as save_gguf writes it (F16 fallbacks dequantized into `store`).
Result<GgufWriteTensor> gguf_tensor_of(const std::string& out, const Matrix& m, const SaveOptions& opt,
                                       std::deque<std::vector<float>>& store, GgufFtype* ftype, std::vector<std::string>* warnings) {
  const std::string name = gguf_name(m.name);
  if (m.quant == nullptr) {
    return GgufWriteTensor{name, std::vector<int64_t>(m.f32.shape().dims.begin(), m.f32.shape().dims.begin() + m.f32.ndim()),
                           std::span<const float>(m.f32.data_as<float>(), static_cast<size_t>(m.f32.numel())), GgmlType::kF32};
  }
  const QuantizedTensor& q = *m.quant;
  const std::vector<int64_t> shape{q.rows, q.cols};
  LOWBIT_ASSIGN_OR_RETURN(const GgufStorage st, gguf_storage(out, name, m.name, q.spec, q.cols, opt));
  ftype->add(q.spec, st);
  if (!st.warning.empty()) warnings->push_back(st.warning);
  if (!st.dequantized) return GgufWriteTensor{name, shape, {}, st.type, &q};
  std::vector<float>& buf = store.emplace_back(static_cast<size_t>(q.numel()));
  LOWBIT_RETURN_IF_ERROR(dequantize(q, TensorView(buf.data(), DType::kF32, {q.rows, q.cols})));
  return GgufWriteTensor{name, shape, buf, GgmlType::kF16};
}

// A block's norms (and qwen2's q/k/v biases), in save_gguf's order.
void add_block_norms(const LlamaModel& net, size_t l, std::vector<GgufWriteTensor>& tensors) {
  const LayerWeights& lw = net.weights().layers[l];
  const auto add = [&](std::string name, ConstTensorView v) {
    tensors.push_back({std::move(name), std::vector<int64_t>(v.shape().dims.begin(), v.shape().dims.begin() + v.ndim()),
                       std::span<const float>(v.data_as<float>(), static_cast<size_t>(v.numel())), GgmlType::kF32});
  };
  add(fmt::format("blk.{}.attn_norm.weight", l), lw.attn_norm);
  add(fmt::format("blk.{}.ffn_norm.weight", l), lw.ffn_norm);
  if (net.config().qkv_bias) {  // qwen2: llama.cpp adds them after attn_q/k/v
    add(fmt::format("blk.{}.attn_q.bias", l), lw.bq);
    add(fmt::format("blk.{}.attn_k.bias", l), lw.bk);
    add(fmt::format("blk.{}.attn_v.bias", l), lw.bv);
  }
}

// The metadata of a GGUF save: architecture and shape keys, the vocabulary, lowbit's keys.
Status add_gguf_metadata(const LlamaModel& net, const std::string& out, const SaveOptions& opt, const GgufFtype& ftype,
                         GgufWriteSpec* spec, std::vector<std::string>* warnings) {
  const LlamaConfig& c = net.config();
  LOWBIT_ASSIGN_OR_RETURN(auto common, common_metadata(net, out, opt));
  auto& md = spec->metadata;
  const auto u32 = [](int64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  const auto key = [&](std::string_view k) { return fmt::format("{}.{}", c.arch, k); };  // "llama.block_count"
  md.emplace_back("general.architecture", GgufValue::str(c.arch));
  md.emplace_back("general.name", GgufValue::str(fs::path(out).stem().string()));
  md.emplace_back("general.file_type", GgufValue::u32(ftype.value()));
  if (ftype.q4 || ftype.q8) md.emplace_back("general.quantization_version", GgufValue::u32(kGgmlQuantizationVersion));
  md.emplace_back(key("context_length"), u32(c.seq_len));
  md.emplace_back(key("embedding_length"), u32(c.dim));
  md.emplace_back(key("block_count"), u32(c.n_layers));
  md.emplace_back(key("feed_forward_length"), u32(c.hidden_dim));
  md.emplace_back(key("attention.head_count"), u32(c.n_heads));
  md.emplace_back(key("attention.head_count_kv"), u32(c.n_kv_heads));
  md.emplace_back(key("rope.freq_base"), GgufValue::f32(c.rope_theta));
  md.emplace_back(key("attention.layer_norm_rms_epsilon"), GgufValue::f32(c.norm_eps));
  md.emplace_back(key("rope.dimension_count"), u32(c.head_dim()));
  md.emplace_back(key("vocab_size"), u32(c.vocab_size));
  if (!opt.tokenizer_path.empty()) {
    LOWBIT_RETURN_IF_ERROR(add_vocab(out, opt.tokenizer_path, c.vocab_size, spec));
  } else {
    warnings->push_back("no tokenizer given: the GGUF has no tokenizer.ggml.* vocabulary (llama.cpp needs one)");
  }
  for (const auto& [k, v] : common) md.emplace_back(k, GgufValue::str(v));
  return OkStatus();
}

Status save_gguf(const LlamaModel& net, const std::string& out, const SaveOptions& opt, SaveReport* report) {
  const LlamaConfig& c = net.config();
  LOWBIT_ASSIGN_OR_RETURN(Parts parts, collect(net, out));

  GgufWriteSpec spec;
  std::deque<std::vector<float>> dequantized;  // F16 fallbacks (stable addresses)
  const LlamaWeights& w = net.weights();
  std::vector<Matrix> matrices = parts.linears;
  if (parts.classifier) matrices.push_back(*parts.classifier);
  // A tied classifier quantized to ggml blocks is the token embedding llama.cpp reads (no output.weight).
  const bool tied_blocks = c.shared_classifier && parts.classifier && parts.classifier->quant != nullptr &&
                           parts.classifier->quant->spec.ggml != GgmlType::kF32;
  if (tied_blocks) {
    matrices.pop_back();
    const QuantizedTensor& q = *parts.classifier->quant;
    spec.tensors.push_back({"token_embd.weight", {q.rows, q.cols}, {}, q.spec.ggml, &q});
  } else if (const QuantizedTensor* eq = net.embedding_quant(); eq != nullptr && eq->spec.ggml != GgmlType::kF32) {
    // An untied embedding a gguf plan quantized: its blocks, as llama-quantize writes token_embd.
    spec.tensors.push_back({"token_embd.weight", {eq->rows, eq->cols}, {}, eq->spec.ggml, eq});
  } else {
    LOWBIT_ASSIGN_OR_RETURN(ConstTensorView emb, embedding_f32(net, out, parts.decoded));
    const bool f16 = net.embedding_spec() && is_fp16_cast(*net.embedding_spec());  // its values are fp16's
    spec.tensors.push_back({"token_embd.weight", {emb.dim(0), emb.dim(1)},
                            std::span<const float>(emb.data_as<float>(), static_cast<size_t>(emb.numel())),
                            f16 ? GgmlType::kF16 : GgmlType::kF32});
  }
  spec.tensors.push_back({"output_norm.weight", {c.dim}, std::span<const float>(w.final_norm.data_as<float>(), static_cast<size_t>(c.dim)),
                          GgmlType::kF32});
  for (size_t l = 0; l < w.layers.size(); ++l) add_block_norms(net, l, spec.tensors);
  // GGUF keeps lowbit's q/k row order: llama2.c's interleaved pairs for llama (llama.cpp's
  // LLAMA_ROPE_TYPE_NORM); qwen2 rows as its GGUF had them (NEOX, which the forward pass applies).
  GgufFtype ftype;
  for (const Matrix& m : matrices) {
    LOWBIT_ASSIGN_OR_RETURN(GgufWriteTensor t, gguf_tensor_of(out, m, opt, dequantized, &ftype, &report->warnings));
    spec.tensors.push_back(std::move(t));
  }
  LOWBIT_RETURN_IF_ERROR(add_gguf_metadata(net, out, opt, ftype, &spec, &report->warnings));

  for (const GgufWriteTensor& t : spec.tensors) {
    report->tensors.push_back({t.name, upper_type_name(t.quant != nullptr ? *gguf_type_of(t.quant->spec) : t.type)});
  }
  LOWBIT_RETURN_IF_ERROR(write_gguf(out, spec));
  std::error_code ec;
  report->bytes = static_cast<int64_t>(fs::file_size(out, ec));
  return OkStatus();
}

// The safetensors writer writes Hugging Face's llama layout (model_type llama, no biases).
Status safetensors_can_hold(const LlamaModel& net, const std::string& out, ModelFormat format) {
  const LlamaConfig& c = net.config();
  if (format != ModelFormat::kSafetensors || (c.arch == "llama" && !c.qkv_bias)) return OkStatus();
  return Unsupported(fmt::format("{}: a {} model saves as GGUF only (--format gguf): the safetensors writer writes "
                                 "Hugging Face's llama layout, without {}'s rotary order and q/k/v biases",
                                 out, c.arch, c.arch));
}

}  // namespace

std::string_view model_format_name(ModelFormat f) { return f == ModelFormat::kGguf ? "gguf" : "safetensors"; }

Result<ModelFormat> parse_model_format(std::string_view name) {
  if (name == "safetensors") return ModelFormat::kSafetensors;
  if (name == "gguf") return ModelFormat::kGguf;
  return InvalidArgument(fmt::format("model format '{}' is not known (expected safetensors or gguf)", name));
}

Result<SaveReport> save_model(const LlamaModel& net, const std::string& out_path, const SaveOptions& opt) {
  if (out_path.empty()) return InvalidArgument("save_model: the output path is empty");
  {  // like `mkdir -p` of the folder the output goes in
    std::error_code ec;
    const fs::path parent = fs::path(out_path).lexically_normal().parent_path();
    if (!parent.empty() && !fs::exists(parent, ec) && !fs::create_directories(parent, ec) && ec) {
      return IoError(fmt::format("{}: cannot create its folder {}: {}", out_path, parent.string(), ec.message()));
    }
  }
  for (size_t l = 0; l < net.layers().size(); ++l) {
    for (LinearSlot s : kLinearSlots) {
      if (!net.layers()[l].outliers[static_cast<size_t>(s)].cols.empty()) {
        return Unsupported(fmt::format("{}: layers.{}.{} has an LLM.int8() outlier split, which neither format can "
                                       "store yet (evaluate it in memory: lowbit quantize --method outliers --eval)",
                                       out_path, l, linear_slot_name(s)));
      }
    }
  }
  LOWBIT_RETURN_IF_ERROR(safetensors_can_hold(net, out_path, opt.format));
  SaveReport r;
  r.path = out_path;
  r.format = opt.format;
  if (opt.format == ModelFormat::kGguf) {
    LOWBIT_RETURN_IF_ERROR(save_gguf(net, out_path, opt, &r));
  } else {
    LOWBIT_RETURN_IF_ERROR(save_safetensors(net, out_path, opt, &r));
  }
  return r;
}

Result<SaveReport> save_safetensors_shard(const LlamaModel& net, const std::string& path, int first, int end, bool embedding,
                                          bool classifier, const SaveOptions& opt) {
  LOWBIT_RETURN_IF_ERROR(safetensors_can_hold(net, path, ModelFormat::kSafetensors));
  SaveReport r;
  r.path = path;
  LOWBIT_RETURN_IF_ERROR(write_safetensors_part(net, path, path, opt, static_cast<size_t>(first), static_cast<size_t>(end),
                                                embedding, &r, classifier));
  std::error_code ec;
  r.bytes = static_cast<int64_t>(fs::file_size(path, ec));
  return r;
}

Result<std::map<std::string, std::string>> safetensors_shard_metadata(const LlamaModel& net, const std::string& path,
                                                                      const SaveOptions& opt) {
  LOWBIT_ASSIGN_OR_RETURN(auto common, common_metadata(net, path, opt));
  std::map<std::string, std::string> meta(common.begin(), common.end());
  meta["format"] = "pt";  // as write_safetensors_part
  return meta;
}

bool is_fp16_cast(const QuantSpec& s) { return s.element == Format::kFp16 && s.scale_rule == ScaleRule::kUnit && s.ggml == GgmlType::kF32; }

Result<GgufSaveLayout> plan_gguf_save(const LlamaModel& net, const std::string& out, const SaveOptions& opt,
                                      const std::function<std::optional<QuantSpec>(const std::string&)>& spec_of) {
  const LlamaConfig& c = net.config();
  GgufSaveLayout g;
  GgufWriteSpec spec;  // metadata only
  GgufFtype ftype;
  const auto shape_of = [&](SlotDim d) { return extent(c, d); };
  const auto stored = [&](const std::string& gguf, const std::string& lowbit, const std::optional<QuantSpec>& s, int64_t rows,
                          int64_t cols) -> Status {
    GgmlType type = GgmlType::kF32;
    if (s) {
      LOWBIT_ASSIGN_OR_RETURN(const GgufStorage st, gguf_storage(out, gguf, lowbit, *s, cols, opt));
      ftype.add(*s, st);
      if (!st.warning.empty()) g.warnings.push_back(st.warning);
      type = st.type;
    }
    g.tensors.push_back({gguf, {rows, cols}, type});
    return OkStatus();
  };
  const std::optional<QuantSpec> emb = spec_of(kTokEmbeddingsName);
  const bool emb_blocks = emb && emb->ggml != GgmlType::kF32;
  g.tensors.push_back({"token_embd.weight", {c.vocab_size, c.dim},
                       emb_blocks ? emb->ggml : emb && is_fp16_cast(*emb) ? GgmlType::kF16 : GgmlType::kF32});
  g.tensors.push_back({"output_norm.weight", {c.dim}, GgmlType::kF32});
  for (int l = 0; l < c.n_layers; ++l) {
    for (const char* n : {"attn_norm", "ffn_norm"}) g.tensors.push_back({fmt::format("blk.{}.{}.weight", l, n), {c.dim}, GgmlType::kF32});
    if (c.qkv_bias) {
      g.tensors.push_back({fmt::format("blk.{}.attn_q.bias", l), {c.dim}, GgmlType::kF32});
      g.tensors.push_back({fmt::format("blk.{}.attn_k.bias", l), {c.kv_dim()}, GgmlType::kF32});
      g.tensors.push_back({fmt::format("blk.{}.attn_v.bias", l), {c.kv_dim()}, GgmlType::kF32});
    }
  }
  for (int l = 0; l < c.n_layers; ++l) {
    for (const SlotInfo& s : kSlotInfo) {
      const std::string name = linear_name(l, s);
      LOWBIT_RETURN_IF_ERROR(stored(gguf_name(name), name, spec_of(name), shape_of(s.out), shape_of(s.in)));
    }
  }
  // The classifier is stored untied, or tied and quantized to other than ggml blocks (whose
  // blocks are token_embd's).
  if (!c.shared_classifier) {
    LOWBIT_RETURN_IF_ERROR(stored("output.weight", kClassifierName, spec_of(kClassifierName), c.vocab_size, c.dim));
  } else if (emb && !emb_blocks) {
    LOWBIT_RETURN_IF_ERROR(stored("output.weight", kClassifierName, emb, c.vocab_size, c.dim));
  }
  LOWBIT_RETURN_IF_ERROR(add_gguf_metadata(net, out, opt, ftype, &spec, &g.warnings));
  LOWBIT_ASSIGN_OR_RETURN(g.layout, gguf_layout(spec.metadata, g.tensors));
  return g;
}

size_t GgufSaveLayout::index(std::string_view name) const {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return i;
  }
  LOWBIT_CHECK(false, fmt::format("GgufSaveLayout: no tensor {}", name));
  return 0;
}

Result<std::vector<std::pair<std::string, std::vector<uint8_t>>>> gguf_block_data(const LlamaModel& net, int l, const std::string& out,
                                                                                   const SaveOptions& opt) {
  LOWBIT_ASSIGN_OR_RETURN(Parts parts, collect(net, out, static_cast<size_t>(l), static_cast<size_t>(l) + 1, false));
  std::vector<GgufWriteTensor> tensors;
  add_block_norms(net, static_cast<size_t>(l), tensors);
  std::deque<std::vector<float>> dequantized;
  GgufFtype ftype;
  std::vector<std::string> warnings;
  for (const Matrix& m : parts.linears) {
    LOWBIT_ASSIGN_OR_RETURN(GgufWriteTensor t, gguf_tensor_of(out, m, opt, dequantized, &ftype, &warnings));
    tensors.push_back(std::move(t));
  }
  std::vector<std::pair<std::string, std::vector<uint8_t>>> data;
  for (const GgufWriteTensor& t : tensors) {
    LOWBIT_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, encode_gguf_tensor(t));
    data.emplace_back(t.name, std::move(bytes));
  }
  return data;
}

Status save_safetensors_sidecar(const LlamaModel& net, const std::string& dir, const SaveOptions& opt) {
  return write_safetensors_sidecar(net, dir, opt);
}

}  // namespace lowbit
