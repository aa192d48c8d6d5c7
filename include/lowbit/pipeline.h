// lowbit's main job as a library call: a QuantPlan (which spec for which tensor) and the
// layer-by-layer calibration pipeline that quantizes a LlamaModel with RTN, GPTQ, AWQ,
// SmoothQuant or LLM.int8()-style outlier splitting.
//
//   LOWBIT_ASSIGN_OR_RETURN(QuantPlan plan, make_plan(net.config(), scheme, overrides_json));
//   PipelineOptions opt{.method = Method::kGptq, .plan = plan, .calib = windows};
//   LOWBIT_ASSIGN_OR_RETURN(PipelineReport rep, quantize_model(net, opt));
//
// Block by block: the calibration windows run through block i (fp32 weights) while hooks
// collect what the method needs (Hessians XᵀX, per-channel |x| statistics, sample rows);
// block i is quantized; then block i+1 is fed the outputs of the *quantized* block i
// (`sequential`, as GPTQ does) or of the fp32 block. Only one block's activations live at once.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/llama.h"
#include "lowbit/ptq.h"
#include "lowbit/quant.h"

namespace lowbit {

enum class Method { kRtn, kGptq, kAwq, kSmoothQuant, kOutliers };
Result<Method> parse_method(std::string_view name);  // rtn | gptq | awq | smoothquant | outliers
std::string_view method_name(Method m);

// One tensor of the model and what becomes of it.
struct PlanEntry {
  std::string name;              // "layers.3.wq", "tok_embeddings", "classifier", "layers.3.attn_norm", "final_norm"
  std::string role;              // linear | embedding | classifier | norm
  std::vector<int64_t> shape;
  std::optional<QuantSpec> spec; // nullopt: stays fp32
  std::string rule;              // why: "scheme", "default: norms stay fp32", "override layers.*.w2"
};

struct QuantPlan {
  std::vector<PlanEntry> entries;
  std::optional<QuantSpec> activations;  // dynamic fake-quant of every linear input
  std::string scheme;                    // the named scheme or spec it came from

  const PlanEntry* find(std::string_view name) const;
  double bits_per_weight() const;        // over the linear weights, scales included
};

// Defaults by role: linear weights get `weights`; norms stay fp32; the token embedding (and
// an untied classifier) are stored fp16 (a plain cast). `overrides_json` (may be empty) is
// a JSON object {"pattern": "spec" | "fp32", ...} of glob patterns over tensor names,
// applied in file order, the last match winning. Errors name the file and the pattern.
Result<QuantPlan> make_plan(const LlamaConfig& c, const QuantSpec& weights, const std::optional<QuantSpec>& activations,
                            const std::string& overrides_json = "");
// `--scheme gguf-<type>` (gguf-q4_0 … gguf-iq4_xs, mixes gguf-q4_k_m, gguf-q4_k_s, gguf-q3_k_m,
// gguf-q2_k): each tensor gets the ggml type llama-quantize gives it for that type (its per-tensor
// rules as if an importance matrix is given, and its fallback for rows the type's block does not
// divide, named in the entry's rule). Errors: a row no fallback fits (naming tensor, width, type).
bool is_gguf_scheme(std::string_view scheme);
Result<QuantPlan> make_gguf_plan(const LlamaConfig& c, std::string_view scheme, const std::string& overrides_json = "");
// The plan as a Markdown table (tensor, shape, spec, bpw, rule) and as JSON text.
std::string plan_table(const QuantPlan& plan);
std::string plan_json(const QuantPlan& plan);

struct PipelineOptions {
  Method method = Method::kRtn;
  QuantPlan plan{};
  std::vector<std::vector<int>> calib{};  // calibration windows of token ids (each ≤ the context)
  bool sequential = true;                 // feed block i+1 the quantized block i's outputs
  // false: the quantized linears are kept as Linear::stored (no kernel packing, no fp32 copy),
  // for a caller that saves the blocks and never runs them (needs a method without calibration).
  bool runnable = true;
  GptqOptions gptq{};
  AwqOptions awq{};
  double smooth_alpha = 0.5;              // SmoothQuant migration strength α
  float outlier_threshold = 6.0f;         // LLM.int8(): |x| above which an input column stays fp16
  std::function<void(int layer, int layers)> on_layer = nullptr;  // after each block
  // Streaming (stream.h): quantize only blocks [first_block, end_block) (-1: to the last) and,
  // without `embeddings`, leave the embedding and classifier alone. When
  // `residual` is set, it is the calibration residual stream entering first_block (one
  // (tokens, dim) vector per window, instead of embedding the windows), and on return the
  // stream leaving the range.
  int first_block = 0;
  int end_block = -1;
  bool embeddings = true;
  std::vector<std::vector<float>>* residual = nullptr;
};

struct LinearReport {
  std::string name;
  std::string spec;
  double rtn_error = 0;       // output error of RTN on the calibration samples (when measured)
  double error = 0;           // … of the method
  double alpha = 0;           // AWQ / SmoothQuant α used
  int64_t outlier_cols = 0;   // LLM.int8(): input columns kept in fp16
  double outlier_fraction = 0;
};
struct PipelineReport {
  std::vector<LinearReport> linears;
  int64_t calib_tokens = 0;
  int64_t peak_activation_bytes = 0;  // one block's inputs/outputs plus its statistics
  double seconds = 0;
};

// Quantizes `net` in place according to the plan with the method. Errors: a scheme the method
// cannot use (says which ones it can), calibration shorter than one window, NaN/Inf in weights or
// activations (naming the tensor and layer), a Hessian not positive definite after damping.
Result<PipelineReport> quantize_model(LlamaModel& net, const PipelineOptions& opt);

}  // namespace lowbit
