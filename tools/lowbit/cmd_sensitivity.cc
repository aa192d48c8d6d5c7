// lowbit sensitivity --model M --calib FILE [--candidates S1,S2,…] [--granularity tensor|layer|role] [--method rtn|gptq]
//                    [--ctx N] [--windows K] [--json out.json] [--plot out.svg]
// How much each linear (or block, or role) costs when it alone is quantized at each candidate:
// ΔKLD and ΔPPL against the fp32 model on calibration text, beside the cheap diagonal-Hessian
// proxy and its rank correlation with the measurement. The JSON feeds `quantize --target-bpw`.
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/mixed.h"
#include "lowbit/progress.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct SensitivityArgs {
  std::string model, calib, calib_split = "calib", tokenizer, candidates = kDefaultCandidates, granularity = "tensor", method = "rtn", json, plot;
  int ctx = 128, windows = 8, calib_tokens = 8192, gptq_ctx = 256;
  bool act_order = false;
};

void run_sensitivity(const SensitivityArgs& a) {
  Result<std::vector<Candidate>> cands = parse_candidates(a.candidates, "--candidates");
  if (!cands.ok()) fail(kExitUsage, cands.status().message());
  Result<UnitGranularity> g = parse_granularity(a.granularity);
  if (!g.ok()) fail(kExitUsage, "--granularity: " + g.status().message());
  Result<Method> method = parse_method(a.method);
  if (!method.ok() || (*method != Method::kRtn && *method != Method::kGptq)) {
    fail(kExitUsage, fmt::format("--method: '{}' is not rtn or gptq", a.method));
  }
  if (a.act_order && *method != Method::kGptq) fail(kExitUsage, fmt::format("--act-order is a GPTQ option; --method is {}", a.method));
  if (a.windows < 1) fail(kExitUsage, fmt::format("--windows must be >= 1 (got {})", a.windows));
  if (a.calib_tokens < 0) fail(kExitUsage, fmt::format("--calib-tokens must be >= 0 (got {})", a.calib_tokens));
  if (a.gptq_ctx < 1) fail(kExitUsage, fmt::format("--gptq-ctx must be >= 1 (got {})", a.gptq_ctx));
  const std::vector<NamedPath> inputs = {{"--model", a.model}, {"--calib", a.calib}, {"--tokenizer", a.tokenizer}};
  check_output("--json", a.json, inputs);
  std::vector<NamedPath> plot_clashes = inputs;
  plot_clashes.push_back({"--json", a.json});
  check_output("--plot", a.plot, plot_clashes);
  if (!a.json.empty() && a.json == a.plot) fail(kExitUsage, fmt::format("--json and --plot both name '{}'", a.json));
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const LlamaConfig& cfg = model->config;
  const int ctx = std::min(a.ctx, cfg.seq_len);
  if (ctx < 4) fail(kExitUsage, fmt::format("--ctx must be >= 4 (got {})", a.ctx));
  const std::string tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, cfg.vocab_size, "sensitivity") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, cfg.vocab_size);
  if (!tok.ok()) fail(tok.status());
  const std::vector<int> tokens = tokenize_stories(**tok, a.calib, a.calib_split);
  // GPTQ: H from the first --calib-tokens (quantize's calibration), the scored windows after them.
  const bool apart = *method == Method::kGptq && a.calib_tokens > 0;
  GptqSplit sp;
  if (apart) sp = split_after_gptq(tokens, std::min(a.gptq_ctx, cfg.seq_len), a.calib_tokens, ctx, a.windows);
  else sp.after = split_windows(tokens, ctx, a.windows);
  const std::vector<std::vector<int>>& windows = sp.after;
  if (windows.empty()) {
    fail(kExitUsage, apart ? fmt::format("{}: calibration text (split {}) leaves no window of --ctx {} after GPTQ's {} calibration tokens "
                                         "(lower --calib-tokens, or 0 to fit H on the scored windows)", a.calib, a.calib_split, ctx, sp.offset)
                           : fmt::format("{}: calibration text (split {}) is shorter than one window of --ctx {}", a.calib, a.calib_split, ctx));
  }
  if (static_cast<int>(windows.size()) < a.windows) {
    warn(fmt::format("{}: calibration text (split {}) holds {} windows of --ctx {}{}; --windows asked for {}", a.calib, a.calib_split, windows.size(),
                     ctx, apart ? fmt::format(" after GPTQ's {} tokens", sp.offset) : "", a.windows));
  }

  LlamaModel net(*model);
  std::unique_ptr<Progress> bar;
  SensitivityOptions so{.candidates = *cands, .granularity = *g, .windows = windows, .method = *method};
  so.gptq.act_order = a.act_order;
  so.gptq_windows = std::move(sp.gptq);
  so.on_step = [&](int64_t done, int64_t total) {
    if (done == 1) bar = std::make_unique<Progress>("sensitivity", total);
    bar->advance();
  };
  Result<SensitivityReport> r = measure_sensitivity(net, so);
  if (bar) bar->finish();
  if (!r.ok()) fail(r.status());
  warn_lossless(*r, a.model);

  fmt::print("sensitivity ({}{}) of {} by {} on {} ({} windows of {} tokens, {} scored{}; reference PPL {:.4f}) in {:.1f} s\n",
             a.method, a.act_order ? ", act-order" : "", a.model, a.granularity, a.calib, windows.size(), ctx, r->tokens_scored,
             apart ? fmt::format(", after GPTQ's {} calibration tokens", r->gptq_tokens) : "", r->ref_ppl, r->seconds);
  fmt::print("ΔKLD (nats/token) when the unit alone is quantized, all else fp32; [proxy rank]\n\n| unit | params |");
  for (const Candidate& c : r->candidates) fmt::print(" {} |", c.name);
  fmt::print("\n|---|---:|");
  for (size_t k = 0; k < r->candidates.size(); ++k) fmt::print("---:|");
  fmt::print("\n");
  for (const UnitSensitivity& u : r->units) {
    fmt::print("| {} | {} |", u.name, u.params);
    for (size_t k = 0; k < r->candidates.size(); ++k) {
      if (unit_fits(u, k)) {
        fmt::print(" {:.3e} |", u.dkld[k]);
      } else {
        fmt::print(" — |");  // the candidate cannot hold this unit's rows
      }
    }
    fmt::print("\n");
  }
  fmt::print("(— : the candidate's blocks do not divide the unit's rows; not measured, never chosen)\n");
  fmt::print("\nproxy Σ(W−Ŵ)²·E[x²] vs measured ΔKLD: Spearman {:.3f} over all quantized (unit, candidate) pairs", r->spearman);
  for (size_t k = 0; k < r->candidates.size(); ++k) {
    if (r->candidates[k].spec) fmt::print("; {} {:.3f}", r->candidates[k].name, r->spearman_by_candidate[k]);
  }
  fmt::print("\nproxy time {:.2f} s vs measurement {:.1f} s\n", r->proxy_seconds, r->seconds);
  if (!a.json.empty()) {
    if (Status s = write_file_atomic(a.json, sensitivity_json(*r) + "\n"); !s.ok()) fail(s);
  }
  if (!a.plot.empty()) {
    if (Status s = write_file_atomic(a.plot, sensitivity_svg(*r, "ΔKLD per unit: " + a.model)); !s.ok()) fail(s);
  }
}

}  // namespace

void register_sensitivity(CLI::App& app) {
  auto a = std::make_shared<SensitivityArgs>();
  auto* cmd = app.add_subcommand("sensitivity", "Measure each linear's ΔKLD/ΔPPL at candidate precisions (for --target-bpw)");
  cmd->add_option("--model", a->model, "Checkpoint (fp32 reference)")->required();
  cmd->add_option("--calib", a->calib, "Calibration text (stories separated by blank lines)")->required();
  cmd->add_option("--calib-split", a->calib_split, "Part of --calib: calib (first 10% of stories) | eval | all")->default_val("calib");
  cmd->add_option("--candidates", a->candidates, "Comma-separated schemes, specs or fp32")->default_val(kDefaultCandidates);
  cmd->add_option("--granularity", a->granularity, "tensor | layer | role (wq, …, w2 across all blocks)")->default_val("tensor");
  cmd->add_option("--method", a->method, "rtn | gptq: how each unit is quantized (gptq: on the fp32 inputs' Hessian)")->default_val("rtn");
  cmd->add_flag("--act-order", a->act_order, "--method gptq: columns by decreasing Hessian diagonal (as quantize --act-order)");
  cmd->add_option("--ctx", a->ctx, "Window length in tokens (the second half of each is scored)")->default_val(128);
  cmd->add_option("--windows", a->windows, "Calibration windows")->default_val(8);
  cmd->add_option("--calib-tokens", a->calib_tokens,
                  "--method gptq: H from the split's first N tokens (as quantize --calib-tokens); the scored windows follow them "
                  "(0: H from the scored windows)")->default_val(8192);
  cmd->add_option("--gptq-ctx", a->gptq_ctx, "--method gptq: window length of those tokens (as quantize --ctx)")->default_val(256);
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: the one beside the model)");
  cmd->add_option("--json", a->json, "Write the measurement as JSON (quantize --sensitivity reads it)");
  cmd->add_option("--plot", a->plot, "Write an SVG chart of ΔKLD per unit and candidate");
  cmd->callback([a] { run_sensitivity(*a); });
}

}  // namespace lowbit::cli
