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
//
// The arithmetic (proxy, additivity, the knapsack grid) is in docs/algorithms.md.
#pragma once

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
  std::function<void(int64_t done, int64_t total)> on_step = nullptr;  // after each (unit, candidate)
};

struct UnitSensitivity {
  std::string name;                  // "layers.3.wq" | "layers.3" | "wq"
  std::vector<std::string> tensors;  // the linears it covers
  int64_t params = 0;                // their elements
  std::vector<int64_t> bits;         // per candidate: storage of those linears (codes, scales, zero points), bits
  std::vector<double> dkld;          // per candidate: mean KL(ref ‖ model) on the scored calibration tokens, nats
  std::vector<double> dppl;          // per candidate: PPL − reference PPL on the same tokens
  std::vector<double> proxy;         // per candidate: Σ_ij (W − Ŵ)²_ij · E[x_j²], the diagonal-Hessian output error
};

struct SensitivityReport {
  std::vector<Candidate> candidates;
  UnitGranularity granularity = UnitGranularity::kTensor;
  std::vector<UnitSensitivity> units;
  int64_t tokens_scored = 0;
  double ref_ppl = 0;
  double seconds = 0;        // the whole measurement (reference pass included)
  double proxy_seconds = 0;  // the proxy alone (given the reference pass's input statistics)
  double spearman = 0;       // rank correlation of proxy and measured ΔKLD over every quantized (unit, candidate)
  std::vector<double> spearman_by_candidate;  // … within each candidate (0 for fp32)
};

// Measures every unit at every candidate: the unit's linears quantized by RTN (as Linear::quantized
// runs them), every other linear fp32, the reference logits computed once. `net` must hold fp32
// linears; it is restored before returning. Errors: no candidates, no windows, a window longer
// than the context or shorter than 2 tokens.
Result<SensitivityReport> measure_sensitivity(LlamaModel& net, const SensitivityOptions& opt);

// Spearman rank correlation (average ranks for ties); 0 when either side is constant or n < 2.
double spearman(std::span<const double> a, std::span<const double> b);

// ---- Multiple-choice knapsack ---------------------------------------------------------------
// Item i takes exactly one of its options k, costing cost[i][k] (bits, ≥ 0) and predicting
// value[i][k]; the sum of costs must not exceed the budget, the sum of values is minimised.
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
// Errors: an item with no options or mismatched sizes, a negative cost, and a budget below the
// cheapest choice ("budget B bits is below the cheapest plan, C bits").
Result<KnapsackResult> solve_knapsack(std::span<const KnapsackItem> items, int64_t budget, const KnapsackOptions& opt = {});

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

}  // namespace lowbit
