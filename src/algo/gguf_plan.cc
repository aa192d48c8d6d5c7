// llama.cpp's per-tensor type rules as a named lowbit plan: `--scheme gguf-q4_k_m` gives each
// tensor the ggml type `llama-quantize ... Q4_K_M` would (llama-quant.cpp's llama_tensor_get_type
// at c392e50, for Llama-architecture models without experts, re-derived), including its fallback
// for rows a type cannot hold. The rules that depend on an importance matrix are taken as if one
// is given (lowbit's calibration plays its part), so file sizes match `llama-quantize --imatrix`.

#include <fmt/format.h>

#include "lowbit/ggml_blocks.h"
#include "lowbit/pipeline.h"

namespace lowbit {
namespace {

enum class Ftype { kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kQ2_K, kQ3_K_M, kQ4_K_S, kQ4_K_M, kQ5_K_S, kQ5_K_M, kQ6_K, kIQ4_NL, kIQ4_XS };

struct FtypeName {
  std::string_view scheme;
  Ftype ftype;
  GgmlType base;
};
constexpr FtypeName kFtypes[] = {
    {"gguf-q4_0", Ftype::kQ4_0, GgmlType::kQ4_0},       {"gguf-q4_1", Ftype::kQ4_1, GgmlType::kQ4_1},
    {"gguf-q5_0", Ftype::kQ5_0, GgmlType::kQ5_0},       {"gguf-q5_1", Ftype::kQ5_1, GgmlType::kQ5_1},
    {"gguf-q8_0", Ftype::kQ8_0, GgmlType::kQ8_0},       {"gguf-q2_k", Ftype::kQ2_K, GgmlType::kQ2_K},
    {"gguf-q3_k_m", Ftype::kQ3_K_M, GgmlType::kQ3_K},   {"gguf-q4_k_s", Ftype::kQ4_K_S, GgmlType::kQ4_K},
    {"gguf-q4_k_m", Ftype::kQ4_K_M, GgmlType::kQ4_K},   {"gguf-q4_k", Ftype::kQ4_K_M, GgmlType::kQ4_K},
    {"gguf-q5_k_s", Ftype::kQ5_K_S, GgmlType::kQ5_K},   {"gguf-q5_k_m", Ftype::kQ5_K_M, GgmlType::kQ5_K},
    {"gguf-q5_k", Ftype::kQ5_K_M, GgmlType::kQ5_K},     {"gguf-q6_k", Ftype::kQ6_K, GgmlType::kQ6_K},
    {"gguf-q3_k", Ftype::kQ3_K_M, GgmlType::kQ3_K},     {"gguf-iq4_nl", Ftype::kIQ4_NL, GgmlType::kIQ4_NL},
    {"gguf-iq4_xs", Ftype::kIQ4_XS, GgmlType::kIQ4_XS},
};

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// llama.cpp's fallback for a type whose block does not divide the row.
std::optional<GgmlType> fallback_of(GgmlType t) {
  switch (t) {
    case GgmlType::kQ2_K: case GgmlType::kQ3_K: case GgmlType::kIQ4_XS: return GgmlType::kIQ4_NL;
    case GgmlType::kQ4_K: return GgmlType::kQ5_0;
    case GgmlType::kQ5_K: return GgmlType::kQ5_1;
    case GgmlType::kQ6_K: return GgmlType::kQ8_0;
    default: return std::nullopt;
  }
}

std::string_view tname(GgmlType t) { return ggml_block_info(t)->name; }

}  // namespace

bool is_gguf_scheme(std::string_view scheme) {
  for (const FtypeName& f : kFtypes) {
    if (f.scheme == scheme) return true;
  }
  return false;
}

Result<QuantPlan> make_gguf_plan(const LlamaConfig& c, std::string_view scheme, const std::string& overrides_json) {
  const FtypeName* fn = nullptr;
  for (const FtypeName& f : kFtypes) {
    if (f.scheme == scheme) fn = &f;
  }
  if (fn == nullptr) return InvalidArgument(fmt::format("--scheme: '{}' is not a gguf scheme", scheme));
  LOWBIT_ASSIGN_OR_RETURN(QuantPlan plan, make_plan(c, ggml_spec(fn->base), std::nullopt, overrides_json));
  plan.scheme = std::string(scheme);
  const Ftype ft = fn->ftype;
  const int n = c.n_layers;
  const int n_gqa = c.n_kv_heads > 0 ? c.n_heads / c.n_kv_heads : 1;
  for (PlanEntry& e : plan.entries) {
    if (e.rule.starts_with("override")) continue;  // the user's word wins
    if (e.role == "norm") continue;
    GgmlType t = fn->base;
    std::string why = fmt::format("llama.cpp {}", scheme.substr(5));
    const int64_t cols = e.shape.back();
    const bool output = e.role == "classifier" || (e.role == "embedding" && c.shared_classifier);
    if (output) {
      // output.weight (or a tied token_embd): q8_0 when the base block does not divide the row, else q6_K.
      t = cols % ggml_block_info(fn->base)->block_size != 0 ? GgmlType::kQ8_0
          : fn->base != GgmlType::kQ8_0                      ? GgmlType::kQ6_K
                                                              : GgmlType::kQ8_0;
      why += ": output";
    } else if (e.role == "linear") {
      const int layer = std::stoi(e.name.substr(7, e.name.find('.', 7) - 7));
      const std::string slot = e.name.substr(e.name.rfind('.') + 1);
      if (slot == "wv") {
        if (ft == Ftype::kQ2_K) t = n_gqa >= 4 ? GgmlType::kQ4_K : GgmlType::kQ3_K;
        else if (ft == Ftype::kQ3_K_M) t = layer < 2 ? GgmlType::kQ5_K : GgmlType::kQ4_K;
        else if ((ft == Ftype::kIQ4_NL || ft == Ftype::kIQ4_XS) && n_gqa >= 4) t = GgmlType::kQ5_K;
        else if ((ft == Ftype::kQ4_K_M || ft == Ftype::kQ5_K_M) && use_more_bits(layer, n)) t = GgmlType::kQ6_K;
        else if (ft == Ftype::kQ4_K_S && layer < 4) t = GgmlType::kQ5_K;
      } else if (slot == "w2") {
        if (ft == Ftype::kQ2_K) t = GgmlType::kQ3_K;
        else if (ft == Ftype::kQ3_K_M) t = layer < n / 16 ? GgmlType::kQ5_K : GgmlType::kQ4_K;
        else if (ft == Ftype::kQ4_K_M) { if (use_more_bits(layer, n)) t = GgmlType::kQ6_K; }
        else if (ft == Ftype::kQ5_K_M) { if (use_more_bits(layer, n)) t = GgmlType::kQ6_K; }
        else if (ft == Ftype::kQ4_K_S && layer < n / 8) t = GgmlType::kQ5_K;
        else if ((ft == Ftype::kQ4_0 || ft == Ftype::kQ5_0) && layer < n / 8) {  // with an imatrix
          t = ft == Ftype::kQ4_0 ? GgmlType::kQ4_1 : GgmlType::kQ5_1;
        }
      } else if (slot == "wo") {
        if (ft == Ftype::kQ2_K) t = GgmlType::kQ3_K;
        else if (ft == Ftype::kQ3_K_M) t = GgmlType::kQ4_K;
      }
      if (t != fn->base) why += fmt::format(": {} -> {}", slot, tname(t));
    }
    if (cols % ggml_block_info(t)->block_size != 0) {
      const std::optional<GgmlType> fb = fallback_of(t);
      if (!fb || cols % ggml_block_info(*fb)->block_size != 0) {
        return InvalidArgument(fmt::format("{}: rows of {} values are not a multiple of {}'s block of {}, and {} has no "
                                           "fallback type that fits", e.name, cols, tname(t),
                                           ggml_block_info(t)->block_size, tname(t)));
      }
      why += fmt::format("; fallback: {} not a multiple of {} ({}) -> {}", cols, ggml_block_info(t)->block_size,
                         tname(t), tname(*fb));
      t = *fb;
    }
    e.spec = ggml_spec(t);
    e.rule = why;
  }
  return plan;
}

}  // namespace lowbit
