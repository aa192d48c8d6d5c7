// The precision recipes (include/lowbit/train.h): which format every GEMM operand takes.
#include <fmt/format.h>

#include "lowbit/train.h"

namespace lowbit {
namespace {

QuantSpec spec(std::string_view text) {
  Result<QuantSpec> s = parse_spec(text);
  LOWBIT_CHECK(s.ok(), "recipe spec " + std::string(text) + ": " + s.status().message());
  return *s;
}

std::vector<TrainRecipe> make_recipes() {
  std::vector<TrainRecipe> r;
  r.push_back({.name = "fp32", .description = "the reference: every GEMM operand fp32", .gemm = {}});
  {
    // BF16 GEMM inputs (a plain round-to-nearest-even cast), FP32 accumulation and master weights.
    const QuantSpec b = spec("bf16:tensor:unit");
    r.push_back({.name = "bf16", .description = "bf16 GEMM inputs (the output head too), fp32 accumulation and master weights",
                 .gemm = {b, b, b, b, b, b},
                 .quantize_classifier = true});
  }
  {
    // Transformer Engine's HYBRID format: E4M3 forward, E5M2 gradients, per-tensor delayed scales.
    const QuantSpec e4 = spec("e4m3:tensor"), e5 = spec("e5m2:tensor");
    r.push_back({.name = "fp8-tensor-delayed",
                 .description = "Transformer Engine HYBRID: e4m3 forward (x, W), e5m2 gradients (dY), per-tensor scales from an amax history",
                 .gemm = {e4, e4, e5, e4, e5, e4},
                 .scaling = ScaleMode::kDelayed});
  }
  {
    // DeepSeek-V3: E4M3 everywhere; 1x128 tiles along K for activations and gradients (K = tokens
    // for wgrad: 128x1 in the (tokens, features) layout), 128x128 weight blocks, online scales.
    const QuantSpec tile = spec("e4m3:block1x128"), col = spec("e4m3:block128x1"), blk = spec("e4m3:block128x128");
    r.push_back({.name = "fp8-blockwise",
                 .description = "DeepSeek-V3: e4m3 in all three GEMMs, 1x128 activation/gradient tiles along K, 128x128 weight blocks, online scales, inputs cached in e4m3",
                 .gemm = {tile, blk, tile, blk, col, col},
                 .cache_quantized_inputs = true});
  }
  {
    // The same through the kernel registry: gemm_fp8_block for forward and dgrad, gemm_fp8_wgrad
    // for wgrad; with FP32 promotion every 128 of K, and without (one 14-bit accumulator over all
    // of K, the H800 behaviour the DeepSeek-V3 report measures; emulated: 1.4x slower than promoted).
    const QuantSpec tile = spec("e4m3:block1x128"), col = spec("e4m3:block128x1"), blk = spec("e4m3:block128x128");
    r.push_back({.name = "fp8-blockwise-kernel",
                 .description = "fp8-blockwise with all three GEMMs run by the kernel registry (gemm_fp8_block128_f32 forward and dgrad, gemm_fp8_wgrad128_f32 wgrad; FP32 promotion)",
                 .gemm = {tile, blk, tile, blk, col, col},
                 .cache_quantized_inputs = true,
                 .kernel_accumulation = KernelAccumulation{Fp8Accumulation::kPromoted, 14}});
    r.push_back({.name = "fp8-blockwise-noprom",
                 .description = "fp8-blockwise with all three GEMMs accumulated in one emulated 14-bit accumulator over all of K (no FP32 promotion)",
                 .gemm = {tile, blk, tile, blk, col, col},
                 .cache_quantized_inputs = true,
                 .kernel_accumulation = KernelAccumulation{Fp8Accumulation::kLimitedUnpromoted, 14}});
  }
  {
    const QuantSpec e4 = spec("e4m3:tensor"), e5 = spec("e5m2:tensor");
    r.push_back({.name = "fp8-seed",
                 .description = "weights e4m3, activations e5m2, gradients e4m3, per-tensor dynamic scales",
                 .gemm = {e5, e4, e4, e4, e4, e5}});
  }
  return r;
}

std::string fmt_spec(const std::optional<QuantSpec>& s) { return s ? to_string(*s) : "fp32"; }

}  // namespace

std::span<const TrainRecipe> train_recipes() {
  static const std::vector<TrainRecipe> kRecipes = make_recipes();
  return kRecipes;
}

Result<TrainRecipe> find_recipe(std::string_view name) {
  std::string known;
  for (const TrainRecipe& r : train_recipes()) {
    if (r.name == name) return r;
    known += (known.empty() ? "" : ", ") + r.name;
  }
  return InvalidArgument(fmt::format("--recipe: unknown recipe '{}' (known: {})", name, known));
}

std::string describe_recipe(const TrainRecipe& r) {
  const GemmOperandSpecs& g = r.gemm;
  std::string s = fmt::format("recipe {}: {}\n", r.name, r.description);
  s += fmt::format("  forward  Y  = X·Wᵀ   X {:<22} W {}\n", fmt_spec(g.fwd_x), fmt_spec(g.fwd_w));
  s += fmt::format("  dgrad    dX = dY·W   dY {:<21} W {}\n", fmt_spec(g.dgrad_dy), fmt_spec(g.dgrad_w));
  s += fmt::format("  wgrad    dW = dYᵀ·X  dY {:<21} X {}\n", fmt_spec(g.wgrad_dy), fmt_spec(g.wgrad_x));
  s += fmt::format("  scales   {}\n", r.scaling == ScaleMode::kDelayed ? fmt::format("delayed (amax history of {} steps)", r.amax_history_len)
                                                                        : std::string(g.fwd_x ? "online (from the tensor itself)" : "none"));
  if (r.kernel_accumulation) {
    s += fmt::format("  all three GEMMs from the kernel registry (gemm_fp8_block forward and dgrad, gemm_fp8_wgrad wgrad), {}\n",
                     r.kernel_accumulation->mode == Fp8Accumulation::kPromoted ? std::string("fp32 promotion every 128 of K")
                     : fmt::format("emulated {}-bit accumulator{}", r.kernel_accumulation->bits,
                                   r.kernel_accumulation->mode == Fp8Accumulation::kLimitedPromoted ? ", promoted every 128 of K" : " over all of K (no promotion)"));
  }
  s += fmt::format("  GEMMs: the block linears (wq wk wv wo w1 w2 w3){}; quantized operands are dequantized and summed in fp32\n",
                   r.quantize_classifier ? " and the classifier" : "; the classifier (output head) stays fp32")
    + std::string(
       "         (the arithmetic of a GEMM with FP32 promotion, up to summation order)\n");
  s += fmt::format("  linear inputs saved for wgrad: {}\n", r.cache_quantized_inputs && g.fwd_x ? fmt_spec(g.fwd_x) + " codes + scales" : "fp32");
  s += "  fp32: embedding, RMSNorm, RoPE, attention scores and softmax, SwiGLU, residuals, loss, AdamW (fp32 master weights)\n";
  return s;
}

}  // namespace lowbit
