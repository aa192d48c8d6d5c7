// Mixed precision chosen by measurement: how much each linear (or layer, or role) costs in KL
// divergence when it alone is quantized at each candidate spec, a cheap proxy for the same
// figure, and the exact multiple-choice knapsack that picks one spec per unit minimising the
// predicted total ΔKLD under a bits-per-weight budget. The plan it returns is an ordinary
// QuantPlan, written as the overrides JSON `quantize --plan` reads.
//
//   SensitivityOptions so{.candidates = cands, .granularity = UnitGranularity::kTensor, .windows = calib};
//   LOWBIT_ASSIGN_OR_RETURN(SensitivityReport s, measure_sensitivity(net, so));
//   LOWBIT_ASSIGN_OR_RETURN(MixedChoice m, choose_mix(s, /*target_bpw=*/4.5));
//   LOWBIT_ASSIGN_OR_RETURN(QuantPlan plan, make_mixed_plan(net.config(), s, m, std::nullopt));
//   write_file_atomic("plan.json", plan_overrides_json(plan));
//   // Optionally, improve the additive choice with the mix itself measured (refine_mix):
//   LOWBIT_ASSIGN_OR_RETURN(RefineReport r, refine_mix(model, s, m, {.rounds = 4, .windows = calib}));
//
// The arithmetic (proxy, additivity, the knapsack grid) is in docs/algorithms.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/llama.h"
#include "lowbit/pipeline.h"
#include "lowbit/quant.h"

namespace lowbit {

// What one sensitivity unit covers: one linear ("layers.3.wq"), every linear of a block
// ("layers.3"), or one role in every block ("wq", all layers.*.wq).
enum class UnitGranularity { kTensor, kLayer, kRole };
Result<UnitGranularity> parse_granularity(std::string_view name);  // tensor | layer | role
std::string_view granularity_name(UnitGranularity g);

// A candidate precision: a named scheme's weight spec ("w4a16-g128"), a spec ("int4:g64:sym:fp16"),
// or "fp32" (left unquantized).
struct Candidate {
  std::string name;
  std::optional<QuantSpec> spec;  // nullopt: fp32
};
Result<Candidate> parse_candidate(std::string_view text);
// Comma-separated candidates; errors name `flag` and the bad entry.
Result<std::vector<Candidate>> parse_candidates(std::string_view list, std::string_view flag);

struct SensitivityOptions {
  std::vector<Candidate> candidates{};
  UnitGranularity granularity = UnitGranularity::kTensor;
  std::vector<std::vector<int>> windows{};  // calibration windows of token ids; each is scored in its second half
  Method method = Method::kRtn;             // how a unit's linears are quantized: rtn | gptq
  GptqOptions gptq{};                       // with kGptq: on H = Σ xᵀx of the fp32 model's inputs …
  // … on these windows (quantize's calibration tokens, so that the fit is the pipeline's and the scored
  // windows are text GPTQ never saw); on `windows` when empty
  std::vector<std::vector<int>> gptq_windows{};
  std::function<void(int64_t done, int64_t total)> on_step = nullptr;  // after each (unit, candidate)
};

// A candidate that cannot hold one of a unit's linears (a ggml block type whose block does not
// divide its rows, as q5_0 cannot hold 172-wide rows) is not measured there: that unit's bits are
// 0 and its dkld / dppl / proxy +inf (null in JSON) at that candidate, and nothing chooses it.
// Every unit needs at least one candidate that fits.
bool candidate_fits(const Candidate& c, int64_t cols);

struct UnitSensitivity {
  std::string name;                  // "layers.3.wq" | "layers.3" | "wq"
  std::vector<std::string> tensors;  // the linears it covers
  int64_t params = 0;                // their elements
  std::vector<int64_t> bits;         // per candidate: storage of those linears (codes, scales, zero points), bits
  std::vector<double> dkld;          // per candidate: mean KL(ref ‖ model) on the scored calibration tokens, nats
  std::vector<double> dppl;          // per candidate: PPL − reference PPL on the same tokens
  std::vector<double> proxy;         // per candidate: Σ_ij (W − Ŵ)²_ij · E[x_j²], the diagonal-Hessian output error
};
inline bool unit_fits(const UnitSensitivity& u, size_t k) { return k < u.dkld.size() && std::isfinite(u.dkld[k]); }

struct SensitivityReport {
  std::vector<Candidate> candidates;
  UnitGranularity granularity = UnitGranularity::kTensor;
  Method method = Method::kRtn;
  bool act_order = false;  // with GPTQ: columns by decreasing diag H (GptqOptions::act_order)
  int64_t gptq_tokens = 0;  // with GPTQ: the tokens H was accumulated over (0: unknown, an older file)
  bool gptq_scored_apart = false;  // with GPTQ: H came from windows other than the scored ones
  std::vector<UnitSensitivity> units;
  int64_t tokens_scored = 0;
  double ref_ppl = 0;
  double seconds = 0;        // the whole measurement (reference pass included)
  double proxy_seconds = 0;  // the proxy alone (given the reference pass's input statistics)
  double spearman = 0;       // rank correlation of proxy and measured ΔKLD over every quantized (unit, candidate)
  std::vector<double> spearman_by_candidate;  // … within each candidate (0 for fp32)
};

// Measures every unit at every candidate: the unit's linears quantized by RTN (or GPTQ, on the
// Hessian of the fp32 model's inputs on the same windows), every other linear fp32, the reference
// logits computed once. `net` must hold fp32 linears; it is restored before returning. Errors: no
// candidates, no windows, a window longer than the context or shorter than 2 tokens, a method
// other than rtn or gptq, a candidate GPTQ cannot use, a unit no candidate fits (named, with its shape).
Result<SensitivityReport> measure_sensitivity(LlamaModel& net, const SensitivityOptions& opt);

// Spearman rank correlation (average ranks for ties) over the pairs where both are finite; 0 when
// either side is constant or fewer than 2 pairs remain.
double spearman(std::span<const double> a, std::span<const double> b);

// ---- Multiple-choice knapsack ---------------------------------------------------------------
// Item i takes exactly one of its options k, costing cost[i][k] (bits, ≥ 0) and predicting
// value[i][k]; the sum of costs must not exceed the budget, the sum of values is minimised.
// An option whose value is +inf is unavailable (never chosen, not counted in the cheapest plan).
struct KnapsackItem {
  std::vector<int64_t> cost;
  std::vector<double> value;
};
struct KnapsackOptions {
  int64_t max_cells = int64_t{1} << 18;  // DP columns; a finer grid is coarsened (costs rounded up)
};
struct KnapsackResult {
  std::vector<int> choice;  // option per item
  double value = 0;
  int64_t cost = 0;         // exact, ≤ the budget
  bool exact = true;        // false: costs were rounded up to `resolution`; the answer is then optimal
  int64_t resolution = 1;   //   for the rounded costs, and no worse than the true optimum at budget − items·resolution
};
// Dynamic programming over the cost grid (the gcd of all costs, coarsened only beyond max_cells).
// Errors: an item with no (available) options or mismatched sizes, a negative cost, and a budget below the
// cheapest choice ("budget B bits is below the cheapest plan, C bits").
Result<KnapsackResult> solve_knapsack(std::span<const KnapsackItem> items, int64_t budget, const KnapsackOptions& opt = {});

// Candidates (other than fp32) that leave every unit they can hold within `tol` nats/token of the
// reference: the reference's weights lie on that format's grid — a reference dequantized from a
// quantized file (gguf:q5_1 holds a Q4_1 model's blocks exactly). Such a candidate measures as free,
// and a mix (or a comparison of formats) built on it says nothing about a full-precision model.
std::vector<size_t> lossless_candidates(const SensitivityReport& s, double tol = 1e-9);

// ---- From sensitivities to a plan -------------------------------------------------------------
struct MixedChoice {
  double target_bpw = 0;
  double bits_per_weight = 0;  // of the choice, over the covered linears
  double predicted_kld = 0;    // Σ of the chosen units' measured ΔKLD (the additive model)
  double predicted_dppl = 0;   // Σ of their ΔPPL
  std::vector<int> choice;     // candidate per unit
  KnapsackResult knapsack;
};
// Chooses a candidate per unit minimising Σ ΔKLD with Σ bits ≤ target_bpw · Σ params. Errors: a
// target below the cheapest candidate mix names both figures in bits per weight.
Result<MixedChoice> choose_mix(const SensitivityReport& s, double target_bpw, const KnapsackOptions& opt = {});

// The chosen mix measured instead of predicted: mean KL(reference ‖ quantized) over the same
// windows and scored tokens as measure_sensitivity (the second half of each window). The additive
// prediction misses how errors of many units compound (docs/results.md, issue 17); this costs
// one forward of both models per window. Errors: no windows, a window shorter than 2 tokens or
// longer than the context, models of different shapes.
Result<double> mix_kld_on_windows(const LlamaModel& quantized, const LlamaModel& reference,
                                  const std::vector<std::vector<int>>& windows);

// ---- Interaction-aware refinement (quantize --target-bpw X --refine N) --------------------------
// The knapsack adds unit-alone ΔKLDs; at low budgets the errors of many units compound and the
// additive choice is not the best mix. refine_mix starts from it and searches under the same
// budget with the mix itself measured (mean KL on `windows`, scored as mix_kld_on_windows does):
// each round measures every unit's ΔKLD when it alone moves to another candidate *with the rest
// at the current mix*, then tries (a) the knapsack re-solved on those contextual ΔKLDs and (b) the
// `trials` single moves and pairs (one unit up, one down) they predict best, measures each, and
// accepts the best one only if it lowers the measured KLD. It stops after `rounds` rounds or a
// round with no improvement, so the refined mix never measures worse than the start and never
// exceeds the budget. Windows are calibration text: evaluate the result on other text.
struct RefineOptions {
  int rounds = 0;                                 // 0: the start unchanged (measured only)
  std::vector<std::vector<int>> windows{};        // calibration windows the mix is measured on
  Method method = Method::kRtn;                   // each unit's linears: rtn, or gptq on the fp32 model's
  GptqOptions gptq{};                             //   input Hessians (not the pipeline's sequential ones) on
  std::vector<std::vector<int>> gptq_windows{};   //   these windows (empty: `windows`; give GPTQ's own calibration
                                                  //   windows, disjoint from `windows`, so GPTQ's fit does not steer the search)
  std::optional<QuantSpec> activations{};         // as make_mixed_plan's
  int trials = 8;                                 // single/pair moves measured per round, beside the re-solve
  int screen_windows = 0;                         // contextual ΔKLDs on the first this many windows (0: all);
                                                  //   proposals are always measured on all of them
  // The start and every proposal measured on the model the pipeline makes of the mix (quantize_model
  // with `method`, sequential, on `gptq_windows` — or `windows` when empty), not on the per-unit surrogate
  // above; the contextual ΔKLDs that rank proposals stay the surrogate's. For GPTQ this is what
  // `quantize` will produce: the pipeline re-fits each block to the quantized blocks before it, which the
  // surrogate (each unit on the fp32 inputs' Hessian) does not. For RTN the two are the same figures.
  bool exact = false;
  KnapsackOptions knapsack{};
  std::function<void(int64_t evaluations)> on_eval = nullptr;  // after each measured forward
};
struct RefineRound {
  double kld_before = 0, kld_after = 0;  // measured mix KLD on the windows
  int64_t evaluations = 0;               // forwards this round (contextual units + proposals)
  int changed_units = 0;                 // by the accepted move; 0: nothing improved, the search stopped
  std::string move;                      // "re-solve" | "single" | "pair" | "none"
};
struct RefineReport {
  MixedChoice choice;  // the refined mix; predicted_kld is still the additive Σ of its units' ΔKLD
  double kld_before = 0, kld_after = 0;  // measured on the windows: the start, the refined mix
  std::vector<RefineRound> rounds;
  int64_t evaluations = 0;
  double seconds = 0;
};
// `model`: the fp32 weights the sensitivities were measured on. Errors: what choose_mix and
// mix_kld_on_windows reject, a start of another size, rounds < 0, a method other than rtn or gptq.
Result<RefineReport> refine_mix(const Model& model, const SensitivityReport& s, const MixedChoice& start, const RefineOptions& opt);

// The plan: make_plan's defaults (norms fp32, embedding / classifier fp16) with each linear at its
// unit's chosen candidate; the rule column says which unit and its measured ΔKLD.
Result<QuantPlan> make_mixed_plan(const LlamaConfig& c, const SensitivityReport& s, const MixedChoice& m,
                                  const std::optional<QuantSpec>& activations);

// DeepSeek's recipe as a plan: norms fp32, the embedding and classifier at `high` (or fp16 when
// nullopt), the linears of the first and last two blocks at `high`, the rest at `weights`.
Result<QuantPlan> deepseek_plan(const LlamaConfig& c, const QuantSpec& weights, const std::optional<QuantSpec>& high,
                                const std::optional<QuantSpec>& activations);

// The plan as the overrides JSON make_plan reads ({"tensor": "spec" | "fp32", ...}, one exact
// name per tensor that is not a norm), so a user can edit it and re-run `quantize --plan`.
std::string plan_overrides_json(const QuantPlan& plan);

// The sensitivities as JSON and as an SVG chart (ΔKLD per unit, one series per candidate, log scale).
std::string sensitivity_json(const SensitivityReport& s);
// Reads sensitivity_json's output back (so `quantize --target-bpw` can reuse a measurement); the
// units must name linears of a model with config `c`. Errors name `path` and the field.
Result<SensitivityReport> parse_sensitivity_json(const std::string& text, const std::string& path, const LlamaConfig& c);
std::string sensitivity_svg(const SensitivityReport& s, const std::string& title);

// ---- Run-time precision selection (an experiment; docs/results.md says whether it helps) ------
// A model that holds two precisions of its most sensitive linears — every linear at `low`, a
// second copy of `high_tensors` at `high` — and picks one per input window from a cheap signal:
// the mean loss (or entropy) of the low model's predictions on the window's first
// `probe_tokens` tokens. Windows whose signal exceeds a threshold (set on calibration windows so
// that `upgrade_fraction` of them go high) are run with the high copies.
enum class ProbeSignal { kLoss, kEntropy };
Result<ProbeSignal> parse_probe_signal(std::string_view name);  // loss | entropy

struct DynamicPrecisionOptions {
  QuantSpec low{};
  QuantSpec high{};
  std::vector<std::string> high_tensors{};  // "layers.3.w2", ...: the linears held twice
  int probe_tokens = 16;
  ProbeSignal signal = ProbeSignal::kLoss;
  double upgrade_fraction = 0.25;               // of the calibration windows, sets the threshold
  std::vector<std::vector<int>> calib{};        // windows the threshold is set on
};
struct DynamicTextResult {
  std::string name;
  int64_t windows = 0, tokens_scored = 0;   // scored: every token after the probe
  double kld_low = 0, kld_high = 0;         // mean KL(fp32 ‖ model), nats/token: all windows low, all high
  double kld_dynamic = 0;                   // … each window at the precision its signal picked
  double kld_oracle = 0;                    // … the same number of windows upgraded, those with the largest gain
  double fraction_high = 0;                 // windows the signal sent to the high copies
  double mean_signal = 0;
  double signal_gain_spearman = 0;          // rank correlation of a window's signal and its KLD gain (low − high)
  double seconds_low = 0, seconds_high = 0; // forward of every window, all low / all high
  double seconds_probe = 0;                 // the probes alone
  double seconds_dynamic = 0;               // probes + each window at its precision (the probe is recomputed)
};
struct DynamicPrecisionReport {
  double threshold = 0;
  int64_t low_bytes = 0;          // every linear at `low`
  int64_t static_high_bytes = 0;  // high_tensors at `high` instead: the static alternative
  int64_t dynamic_bytes = 0;      // low plus the high copies: what the dynamic model holds
  std::vector<DynamicTextResult> texts;
};
// The k linears with the largest measured ΔKLD at candidate `candidate` of a tensor-granularity
// report (largest first). Errors: another granularity, an unknown candidate, k < 1.
Result<std::vector<std::string>> most_sensitive_tensors(const SensitivityReport& s, std::string_view candidate, int k);
// Runs the experiment on each named set of windows (e.g. easy and hard text) against the fp32
// model `net` (restored before returning). Errors: no calibration windows, a window not longer
// than probe_tokens + 1 or longer than the context, a name in high_tensors that is not a linear.
Result<DynamicPrecisionReport> evaluate_dynamic_precision(
    LlamaModel& net, const DynamicPrecisionOptions& opt,
    std::span<const std::pair<std::string, std::vector<std::vector<int>>>> texts);

}  // namespace lowbit
