// Named schemes: the short names users pass as --scheme, each a weight spec and an
// (optional, dynamic) activation spec. `lowbit schemes` prints them with their cost.
#include <array>
#include <string>

#include "lowbit/quant.h"

namespace lowbit {
namespace {

constexpr std::array<Scheme, 32> kSchemes = {{
    {"w8a8", "int8:row:sym:fp32", "int8:token:sym:fp32",
     "int8 weights per output channel, int8 activations per token (dynamic)"},
    {"w8a16", "int8:row:sym:fp32", "", "int8 weights per output channel, fp32/16 activations"},
    {"w4a16-g128", "int4:g128:sym:fp16", "", "int4 weights in groups of 128 with fp16 scales (GPTQ/AWQ layout)"},
    {"w4a16-g32", "int4:g32:sym:fp16", "", "int4 weights in groups of 32 with fp16 scales"},
    {"q8_0", "int8:g32:sym:fp16", "", "GGUF Q8_0: int8 in blocks of 32 with an fp16 scale (llama.cpp loads it)"},
    {"q4_0", "int4:g32:sym:fp16", "", "GGUF Q4_0: int4 in blocks of 32 with an fp16 scale (llama.cpp loads it)"},
    {"w3a16-g64", "uint3:g64:asym:fp16", "",
     "3-bit weights in groups of 64, fp16 scales and 3-bit zero points (GPTQ's 3-bit layout)"},
    {"w4a8-g128", "int4:g128:sym:fp16", "int8:token:sym:fp32",
     "int4 weights in groups of 128, int8 activations per token (dynamic)"},
    {"fp8-block", "e4m3:block128x128:sym:fp32", "e4m3:tile1x128:sym:fp32",
     "DeepSeek-V3: e4m3 weights in 128x128 blocks, e4m3 activations in 1x128 tiles (dynamic)"},
    {"fp8-tensor", "e4m3:tensor:sym:fp32", "e4m3:tensor:sym:fp32", "e4m3 weights and activations, one scale per tensor"},
    {"int8-channel", "int8:row:sym:fp32", "", "int8 weights per output channel (weight-only)"},
    {"nf4-g64", "nf4:g64:sym:fp32", "", "QLoRA NormalFloat4 in blocks of 64 with fp32 absmax"},
    {"mxfp8", "e4m3:g32:sym:e8m0", "e4m3:g32:sym:e8m0", "OCP MXFP8: e4m3 in blocks of 32 with an e8m0 scale"},
    {"mxfp4", "e2m1:g32:sym:e8m0", "e2m1:g32:sym:e8m0", "OCP MXFP4: e2m1 in blocks of 32 with an e8m0 scale"},
    {"nvfp4", "e2m1:g16:sym:e4m3*fp32", "e2m1:g16:sym:e4m3*fp32",
     "NVFP4: e2m1 in blocks of 16, e4m3 block scales times an fp32 tensor scale"},
    {"gguf-q4_0", "gguf:q4_0", "", "llama.cpp Q4_0 (ggml blocks; per-tensor rules as llama-quantize, see make_gguf_plan)"},
    {"gguf-q4_1", "gguf:q4_1", "", "llama.cpp Q4_1"},
    {"gguf-q5_0", "gguf:q5_0", "", "llama.cpp Q5_0"},
    {"gguf-q5_1", "gguf:q5_1", "", "llama.cpp Q5_1"},
    {"gguf-q8_0", "gguf:q8_0", "", "llama.cpp Q8_0"},
    {"gguf-q2_k", "gguf:q2_K", "", "llama.cpp Q2_K mix"},
    {"gguf-q3_k_m", "gguf:q3_K", "", "llama.cpp Q3_K_M mix"},
    {"gguf-q3_k", "gguf:q3_K", "", "llama.cpp Q3_K (= Q3_K_M)"},
    {"gguf-q4_k_s", "gguf:q4_K", "", "llama.cpp Q4_K_S mix"},
    {"gguf-q4_k_m", "gguf:q4_K", "", "llama.cpp Q4_K_M mix"},
    {"gguf-q4_k", "gguf:q4_K", "", "llama.cpp Q4_K (= Q4_K_M)"},
    {"gguf-q5_k_s", "gguf:q5_K", "", "llama.cpp Q5_K_S mix"},
    {"gguf-q5_k_m", "gguf:q5_K", "", "llama.cpp Q5_K_M mix"},
    {"gguf-q5_k", "gguf:q5_K", "", "llama.cpp Q5_K (= Q5_K_M)"},
    {"gguf-q6_k", "gguf:q6_K", "", "llama.cpp Q6_K"},
    {"gguf-iq4_nl", "gguf:iq4_nl", "", "llama.cpp IQ4_NL"},
    {"gguf-iq4_xs", "gguf:iq4_xs", "", "llama.cpp IQ4_XS"},
}};

}  // namespace

std::span<const Scheme> named_schemes() { return kSchemes; }

Result<Scheme> find_scheme(std::string_view name) {
  for (const Scheme& s : kSchemes) {
    if (s.name == name) return s;
  }
  std::string known;
  for (const Scheme& s : kSchemes) known += (known.empty() ? "" : ", ") + std::string(s.name);
  return InvalidArgument("unknown scheme '" + std::string(name) + "' (known: " + known + ")");
}

}  // namespace lowbit
