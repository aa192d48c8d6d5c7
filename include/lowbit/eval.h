// Evaluation: what a change to a model's numbers costs, measured on real text against the
// full-precision reference — perplexity, KL divergence of the next-token distribution,
// top-1 agreement, ΔPPL with a standard error.
//
// Windows: the token stream is cut into windows of `ctx` tokens every `stride` tokens; each
// window is run from position 0 and only its second half is scored (llama.cpp's perplexity
// convention: every scored token has at least ctx/2 tokens of context). With the default
// stride = ctx/2 every token after the first ctx/2 is scored exactly once.
//
//   EvalOptions opt{.ctx = 128};
//   LOWBIT_ASSIGN_OR_RETURN(EvalResult r, evaluate(quantized, reference, tokens, opt));
//   r.ppl; r.kld_mean; r.top1;
#pragma once

#include <functional>
#include <string>
#include <span>
#include <vector>

#include "lowbit/llama.h"

namespace lowbit {

struct EvalOptions {
  int ctx = 128;      // window length (tokens); clamped to the model's context
  int stride = 0;     // 0: ctx / 2
  int max_windows = 0;  // 0: all
  std::function<void(int64_t done, int64_t total)> on_window = nullptr;  // progress
};

struct EvalResult {
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double ppl = 0, ref_ppl = 0;
  double nll_mean = 0, ref_nll_mean = 0;    // nats per token
  double delta_ppl = 0, delta_ppl_se = 0;   // ppl − ref_ppl and its standard error
  double kld_mean = 0, kld_p99 = 0, kld_max = 0;  // KL(ref ‖ model) per scored position, nats
  double top1 = 0;                          // fraction of positions where the argmaxes agree
  double prefill_tok_s = 0;                 // model's prefill throughput over the windows
  double ref_prefill_tok_s = 0;             // the reference's, over the same windows in the same run
  std::vector<float> kld_by_position;       // mean KLD at each scored offset within a window
};

// Scores `model` against `reference` (which may be the same object) on `tokens`.
Result<EvalResult> evaluate(const LlamaModel& model, const LlamaModel& reference, std::span<const int> tokens,
                            const EvalOptions& opt = {});
// Several models against one reference: each window's reference logits are computed once and
// scored against every model (the results equal separate evaluate() calls, for a fraction of the
// reference's cost). A model may be the reference object itself.
Result<std::vector<EvalResult>> evaluate_many(std::span<const LlamaModel* const> models, const LlamaModel& reference,
                                              std::span<const int> tokens, const EvalOptions& opt = {});

// Decode throughput at a context: prefills `prompt` (untimed), then times `n` greedy single-token
// steps through the model's KV cache (fp32 or its kv spec). Tokens per second.
Result<double> decode_tokens_per_second(const LlamaModel& model, std::span<const int> prompt, int n);

// Per-position statistics of one pair of logit rows (vocab entries each).
struct TokenScore {
  double nll = 0, ref_nll = 0, kld = 0;
  bool top1_agree = false;
};
TokenScore score_position(std::span<const float> logits, std::span<const float> ref_logits, int target);

}  // namespace lowbit

namespace lowbit {

// An SVG line chart of the mean KL divergence at each scored offset within a window.
std::string kld_curve_svg(const EvalResult& r, const std::string& title);
// The same chart with one curve per result (labels beside them), e.g. one per KV cache spec.
std::string kld_curves_svg(std::span<const EvalResult> rs, std::span<const std::string> labels, const std::string& title);

// Text for evaluation or calibration: TinyStories-style files hold stories separated by blank
// lines. `split` "calib" keeps the first `calib_fraction` of the stories, "eval" the rest,
// "all" everything. Errors: empty file, invalid UTF-8 (naming the byte offset), no stories.
Result<std::vector<std::string>> load_stories(const std::string& path, const std::string& split,
                                              double calib_fraction = 0.1);

class Tokenizer;
// The stories of `path` (split all | calib | eval) as one token stream, the way eval, quantize's
// calibration and the Python module all read text: a story opens with BOS where the tokenizer
// expects one (tok.add_bos()); otherwise (GPT-2-style vocabularies) it keeps the blank line that ends it.
Result<std::vector<int>> stories_to_tokens(const Tokenizer& tok, const std::string& path, const std::string& split);
// The model's own tokenizer when it is a GGUF with one embedded, else the tokenizer beside a model
// whose vocab matches: tok<vocab>.model/.bin, then tokenizer.model/.bin. InvalidArgument naming
// `what` (the caller: "eval", "quantize", ...) and the model when there is none.
Result<std::string> find_tokenizer(const std::string& model_path, int vocab, std::string_view what);
// The file holding a model's weights: `model_path` itself, or model.safetensors in a folder.
std::string model_weights_file(const std::string& model_path);

}  // namespace lowbit
