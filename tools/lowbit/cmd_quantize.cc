// lowbit quantize --model M (--scheme S | --weights SPEC [--acts SPEC] | --target-bpw X [--candidates …] [--refine N])
//                 [--policy deepseek] [--method rtn|gptq|awq|smoothquant|outliers]
//                 [--calib FILE] [--calib-tokens N] [--plan overrides.json] [--plan-out plan.json] [--dry-run]
//                 [-o OUT] [--eval FILE] [--json summary.json]
// lowbit's main job: a real checkpoint and calibration text in, a quantized model out, and
// (with --eval) what it cost against the fp32 model on held-out text.
#include <sys/resource.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/kv_cache.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/mixed.h"
#include "lowbit/pipeline.h"
#include "lowbit/sharded.h"
#include "lowbit/stream.h"
#include "lowbit/progress.h"
#include "lowbit/rtn.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct QuantizeArgs {
  std::string model, tokenizer, scheme, weights, acts, method = "rtn", calib, calib_split = "calib", plan, out, format,
      eval_text, eval_split = "eval", json, kv, candidates = kDefaultCandidates, granularity = "tensor", sensitivity, policy,
      policy_high = "int8:row:sym:fp32", plan_out;
  int calib_tokens = 8192, ctx = 256, eval_windows = 100, eval_ctx = 128, sens_windows = 8, refine = 0, refine_trials = 8, refine_screen = 0;
  double target_bpw = 0;
  bool dry_run = false, no_sequential = false, refine_exact = false, act_order = false, static_groups = false, stream = false, resume = false;
  double damp = 0.01, alpha = 0.5;
  float threshold = 6.0f;
};

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::equivalent(a, b, ec);
}

// --target-bpw: the sensitivities (measured now on --calib, or read from --sensitivity) and the
// knapsack's choice as a plan; with --refine N, that choice refined with the mix measured.
struct MixedPlan {
  QuantPlan plan;
  MixedChoice choice;                     // the plan's (refined when --refine > 0)
  SensitivityReport sens;
  std::vector<std::vector<int>> windows;  // the calibration windows (when --calib is given)
  MixedChoice knapsack;                   // the knapsack's choice before refinement
  std::optional<RefineReport> refine;
  int64_t windows_offset = 0;             // --method gptq: `windows` start after GPTQ's calibration tokens
};
MixedPlan choose_mixed_plan(const QuantizeArgs& a, const Model& model, const std::optional<QuantSpec>& acts, const Tokenizer* tok) {
  const LlamaConfig& cfg = model.config;
  Result<SensitivityReport> sens = InvalidArgument("unset");
  const bool gptq = a.method == "gptq";
  const int sctx = std::min(a.eval_ctx, cfg.seq_len);
  std::vector<std::vector<int>> windows, gptq_windows;
  int64_t offset = 0;  // where `windows` start in the calibration split
  if (!a.calib.empty()) {
    const std::vector<int> tokens = tokenize_stories(*tok, a.calib, a.calib_split);
    if (gptq) {
      // GPTQ fits its calibration windows (the first --calib-tokens of the split, as the pipeline takes
      // them); sensitivities and mixes are measured on the windows after those, text the fit never saw.
      GptqSplit sp = split_after_gptq(tokens, std::min(a.ctx, cfg.seq_len), a.calib_tokens, sctx, a.sens_windows);
      windows = std::move(sp.after);
      gptq_windows = std::move(sp.gptq);
      offset = static_cast<int64_t>(sp.offset);
      if (a.refine > 0 && static_cast<int>(windows.size()) < a.sens_windows) {
        fail(kExitUsage, fmt::format("quantize --refine --method gptq: {} (split {}) leaves {} windows of {} tokens after GPTQ's {} "
                                     "calibration tokens; --sens-windows asks for {}", a.calib, a.calib_split, windows.size(), sctx,
                                     offset, a.sens_windows));
      }
    } else {
      windows = split_windows(tokens, sctx, a.sens_windows);
    }
  }
  if (!a.sensitivity.empty()) {
    Result<std::string> text = read_file(a.sensitivity);
    if (!text.ok()) fail(text.status());
    sens = parse_sensitivity_json(*text, a.sensitivity, cfg);
    if (!sens.ok()) fail(kExitUsage, sens.status().message());
    if (sens->method == Method::kGptq && a.method == "gptq" && sens->act_order != a.act_order) {
      fmt::print(stderr, "lowbit: warning: {} was measured with GPTQ {} act-order; this run quantizes {} it\n", a.sensitivity,
                 sens->act_order ? "with" : "without", a.act_order ? "with" : "without");
    }
  } else {
    Result<std::vector<Candidate>> cands = parse_candidates(a.candidates, "--candidates");
    if (!cands.ok()) fail(kExitUsage, cands.status().message());
    Result<UnitGranularity> g = parse_granularity(a.granularity);
    if (!g.ok()) fail(kExitUsage, "--granularity: " + g.status().message());
    if (a.calib.empty()) fail(kExitUsage, "quantize: --target-bpw measures sensitivity on --calib FILE (or give --sensitivity sens.json)");
    if (windows.empty()) {
      fail(kExitUsage, gptq ? fmt::format("{}: calibration text (split {}) leaves no window of {} tokens after GPTQ's {} calibration tokens "
                                          "(lower --calib-tokens)", a.calib, a.calib_split, sctx, offset)
                            : fmt::format("{}: calibration text (split {}) is shorter than one window of {} tokens", a.calib, a.calib_split, sctx));
    }
    LlamaModel net(model);
    std::unique_ptr<Progress> bar;
    // GPTQ quantizes the result: the sensitivities are measured with it too (RTN otherwise).
    SensitivityOptions so{.candidates = *cands, .granularity = *g, .windows = windows,
                          .method = gptq ? Method::kGptq : Method::kRtn, .gptq_windows = gptq_windows};
    so.gptq.damp = a.damp;
    so.gptq.act_order = a.act_order;
    so.gptq.static_groups = a.static_groups;
    so.on_step = [&](int64_t done, int64_t total) {
      if (done == 1) bar = std::make_unique<Progress>("sensitivity", total);
      bar->advance();
    };
    sens = measure_sensitivity(net, so);
    if (bar) bar->finish();
    if (!sens.ok()) fail(sens.status());
  }
  warn_lossless(*sens, a.model);
  Result<MixedChoice> m = choose_mix(*sens, a.target_bpw);
  if (!m.ok()) fail(kExitUsage, m.status().message());
  const MixedChoice knapsack = *m;
  std::optional<RefineReport> refined;
  if (a.refine > 0) {
    if (windows.empty()) fail(kExitUsage, "quantize --refine: measures the mix on --calib FILE; give --calib");
    // Mixes are measured with GPTQ when that is the method (as the sensitivities are), else RTN.
    RefineOptions ro{.rounds = a.refine, .windows = windows, .method = gptq ? Method::kGptq : Method::kRtn,
                     .activations = acts, .trials = a.refine_trials, .screen_windows = a.refine_screen, .exact = a.refine_exact};
    ro.gptq.damp = a.damp;
    ro.gptq.act_order = a.act_order;
    ro.gptq.static_groups = a.static_groups;
    ro.gptq_windows = gptq_windows;
    Progress bar("refine", 0);
    ro.on_eval = [&](int64_t) { bar.advance(); };
    Result<RefineReport> r = refine_mix(model, *sens, *m, ro);
    bar.finish();
    if (!r.ok()) fail(r.status());
    *m = r->choice;
    refined = std::move(*r);
  }
  Result<QuantPlan> plan = make_mixed_plan(cfg, *sens, *m, acts);
  if (!plan.ok()) fail(kExitUsage, plan.status().message());
  return {std::move(*plan), std::move(*m), std::move(*sens), std::move(windows), knapsack, std::move(refined), offset};
}

// --format, else gguf for a -o ending in .gguf, else safetensors.
ModelFormat output_format(const QuantizeArgs& a) {
  if (!a.format.empty()) {
    Result<ModelFormat> f = parse_model_format(a.format);
    if (!f.ok()) fail(kExitUsage, "--format: " + f.status().message());
    return *f;
  }
  return a.out.size() >= 5 && a.out.compare(a.out.size() - 5, 5, ".gguf") == 0 ? ModelFormat::kGguf : ModelFormat::kSafetensors;
}

// --stream: a Hugging Face folder block by block (stream.h); the plan comes from config.json alone.
void run_streaming(const QuantizeArgs& a, Method method, const QuantSpec& wspec, const std::optional<QuantSpec>& aspec,
                   const std::string& label) {
  if (a.target_bpw > 0 || !a.policy.empty() || !a.eval_text.empty() || !a.kv.empty() || method == Method::kOutliers) {
    fail(kExitUsage, "quantize --stream: not with --target-bpw, --policy, --eval, --kv or --method outliers");
  }
  const ModelFormat format = output_format(a);
  Result<HfCheckpoint> ck = open_hf_checkpoint(a.model);
  if (!ck.ok()) fail(ck.status());
  if (Status st = check_llama_tensors(*ck); !st.ok()) fail(st);
  const LlamaConfig& cfg = ck->config;
  Result<QuantPlan> plan = is_gguf_scheme(a.scheme) ? make_gguf_plan(cfg, a.scheme, a.plan) : make_plan(cfg, wspec, aspec, a.plan);
  if (!plan.ok()) fail(kExitUsage, plan.status().message());
  const int ctx = std::min(a.ctx, cfg.seq_len);
  const int64_t calib_tokens = method == Method::kRtn ? 0 : a.calib_tokens / ctx * ctx;
  StreamMemory mem = stream_memory(cfg, ck->stored, method, *plan, calib_tokens, ctx);
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  mem.base = static_cast<int64_t>(ru.ru_maxrss) * 1024;
  if (a.dry_run) {
    fmt::print("{}", plan_table(*plan));
    fmt::print("streamed, {} blocks; memory {}", cfg.n_layers, mem.formula());
    if (!a.json.empty()) {
      if (Status s = write_file_atomic(a.json, plan_json(*plan) + "\n"); !s.ok()) fail(s);
    }
    return;
  }
  if (a.out.empty()) fail(kExitUsage, "quantize --stream: give -o OUT");
  StreamOptions so;
  so.pipeline.method = method;
  so.pipeline.plan = *plan;
  so.pipeline.sequential = !a.no_sequential;
  so.pipeline.gptq.damp = a.damp;
  so.pipeline.gptq.act_order = a.act_order;
  so.pipeline.gptq.static_groups = a.static_groups;
  so.pipeline.smooth_alpha = a.alpha;
  so.resume = a.resume;
  so.save.format = format;
  so.save.tokenizer_path = a.tokenizer.empty() ? find_tokenizer(a.model, cfg.vocab_size, "quantize") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(so.save.tokenizer_path, cfg.vocab_size);
  if (!tok.ok()) fail(tok.status());
  if (method != Method::kRtn) {
    if (a.calib.empty()) fail(kExitUsage, fmt::format("quantize: --method {} needs --calib FILE", a.method));
    const std::vector<int> tokens = tokenize_stories(**tok, a.calib, a.calib_split);
    if (static_cast<int>(tokens.size()) < ctx) {
      fail(kExitUsage, fmt::format("{}: calibration text (split {}) has {} tokens; one window needs --ctx {}", a.calib, a.calib_split, tokens.size(), ctx));
    }
    so.pipeline.calib = split_after_gptq(tokens, ctx, a.calib_tokens, ctx, 0).gptq;
  }
  so.save.extra_metadata = {{"lowbit.method", a.method},
                            {"lowbit.scheme", a.scheme.empty() ? label : a.scheme},
                            {"lowbit.calib", a.calib},
                            {"lowbit.calib_split", a.calib_split},
                            {"lowbit.calib_tokens", std::to_string([&] { int64_t n = 0; for (const auto& w : so.pipeline.calib) n += static_cast<int64_t>(w.size()); return n; }())},
                            {"lowbit.sequential", so.pipeline.sequential ? "true" : "false"}};
  std::unique_ptr<Progress> progress = std::make_unique<Progress>("quantize --stream " + label, cfg.n_layers);
  so.on_block = [&](int, int) { progress->advance(); };
  Result<StreamReport> rep = quantize_streaming(a.model, a.out, so);
  progress->finish();
  if (!rep.ok()) fail(rep.status());
  rep->memory.base = mem.base;
  for (const std::string& w : rep->warnings) warn(w);
  const double gib = 1024.0 * 1024 * 1024;
  fmt::print("quantized {} with {} streamed in {:.2f} s (blocks {}..{}): read {:.2f} GB, wrote {:.2f} GB\n", a.model, label, rep->seconds,
             rep->first_block, cfg.n_layers - 1, rep->bytes_read / 1e9, rep->bytes_written / 1e9);
  fmt::print("peak RSS {:.2f} GiB; formula {:.2f} GiB ({})\n", rep->peak_rss_bytes / gib, rep->memory.peak() / gib,
             rep->peak_rss_bytes <= rep->memory.peak() ? "within" : "EXCEEDED");
  fmt::print("wrote {} ({})\n", a.out, format == ModelFormat::kGguf ? "GGUF" : "sharded safetensors");
  if (!a.json.empty()) {
    nlohmann::json j = {{"model", a.model}, {"method", a.method}, {"scheme", plan->scheme}, {"streamed", true},
                        {"calib_tokens", rep->pipeline.calib_tokens}, {"seconds", rep->seconds}, {"block_seconds", rep->block_seconds}, {"rest_seconds", rep->rest_seconds},
                        {"block_cpu_seconds", rep->block_cpu_seconds}, {"rest_cpu_seconds", rep->rest_cpu_seconds},
                        {"first_block", rep->first_block}, {"bytes_read", rep->bytes_read}, {"bytes_written", rep->bytes_written},
                        {"peak_rss_bytes", rep->peak_rss_bytes}, {"memory_formula_bytes", rep->memory.peak()},
                        {"output", {{"path", a.out}, {"format", std::string(model_format_name(format))}, {"bytes", rep->bytes_written}}}};
    if (Status s = write_file_atomic(a.json, j.dump(2) + "\n"); !s.ok()) fail(s);
  }
}

void run_quantize(const QuantizeArgs& a) {
  const bool mixed = a.target_bpw != 0;
  const int given = !a.scheme.empty() + !a.weights.empty() + mixed;
  if (given != 1) fail(kExitUsage, "quantize: give exactly one of --scheme, --weights and --target-bpw");
  if (mixed && !a.plan.empty()) fail(kExitUsage, "quantize: --target-bpw chooses the plan; --plan cannot be combined with it");
  if ((a.refine != 0 || a.refine_trials != 8 || a.refine_screen != 0 || a.refine_exact) && !mixed) {
    fail(kExitUsage, "quantize: --refine, --refine-trials, --refine-screen and --refine-exact refine --target-bpw's choice; give --target-bpw");
  }
  if (a.refine_exact && a.no_sequential) fail(kExitUsage, "quantize --refine-exact: measures the sequential pipeline's model; not with --no-sequential");
  check_range("quantize --refine", a.refine, 0, 1000);
  check_range("quantize --refine-trials", a.refine_trials, 0, 100000);
  check_range("quantize --refine-screen", a.refine_screen, 0, std::numeric_limits<int>::max());
  if (!a.policy.empty() && a.policy != "deepseek") fail(kExitUsage, fmt::format("--policy: unknown policy '{}' (known: deepseek)", a.policy));
  if (!a.policy.empty() && (mixed || !a.plan.empty())) fail(kExitUsage, "quantize: --policy deepseek is a plan of its own; not with --target-bpw or --plan");
  if (!a.acts.empty() && a.weights.empty()) fail(kExitUsage, "quantize: --acts needs --weights (or use --scheme)");
  if (a.out.empty() && !a.dry_run && a.eval_text.empty()) fail(kExitUsage, "quantize: give -o OUT (or --dry-run, or --eval to measure only)");
  const std::vector<NamedPath> inputs = {{"--model", a.model}, {"--calib", a.calib}, {"--tokenizer", a.tokenizer},
                                         {"--eval", a.eval_text}, {"--plan", a.plan}, {"--sensitivity", a.sensitivity}};
  check_output("-o", a.out, inputs, /*folder_ok=*/true);
  std::vector<NamedPath> json_clashes = inputs;
  json_clashes.push_back({"-o", a.out});
  check_output("--json", a.json, json_clashes);
  json_clashes.push_back({"--json", a.json});
  check_output("--plan-out", a.plan_out, json_clashes);
  if (!a.plan_out.empty() && a.plan_out == a.json) fail(kExitUsage, fmt::format("--plan-out and --json both name '{}'", a.json));
  Result<Method> method = parse_method(a.method);
  if (!method.ok()) fail(kExitUsage, "--method: " + method.status().message());
  check_range("quantize --eval-windows", a.eval_windows, 0, std::numeric_limits<int>::max());
  check_range("quantize --calib-tokens", a.calib_tokens, 1, std::numeric_limits<int>::max());
  if (!(a.alpha >= 0.0 && a.alpha <= 1.0)) fail(kExitUsage, fmt::format("quantize --alpha: {} is outside [0, 1]", a.alpha));
  if (!(a.damp > 0.0) || !std::isfinite(a.damp)) fail(kExitUsage, fmt::format("quantize --damp: {} must be > 0", a.damp));
  if ((a.act_order || a.static_groups) && *method != Method::kGptq) {
    fail(kExitUsage, fmt::format("quantize: {} is a GPTQ option; --method is {}", a.act_order ? "--act-order" : "--static-groups",
                                 a.method));
  }

  QuantSpec wspec;
  std::optional<QuantSpec> aspec;
  std::string label;
  if (mixed) {
    if (!(a.target_bpw > 0) || !std::isfinite(a.target_bpw)) fail(kExitUsage, fmt::format("--target-bpw: expected a positive number, got {}", a.target_bpw));
    if (!a.acts.empty()) {
      Result<QuantSpec> as = parse_spec(a.acts);
      if (!as.ok()) fail(kExitUsage, "--acts: " + as.status().message());
      aspec = *as;
    }
    label = fmt::format("target {} bpw", a.target_bpw);
  } else if (!a.scheme.empty()) {
    Result<Scheme> s = find_scheme(a.scheme);
    if (!s.ok()) fail(kExitUsage, "--scheme: " + s.status().message());
    wspec = parse_spec(s->weights).value();
    if (!s->activations.empty()) aspec = parse_spec(s->activations).value();
    label = a.scheme;
  } else {
    Result<QuantSpec> w = parse_spec(a.weights);
    if (!w.ok()) fail(kExitUsage, "--weights: " + w.status().message());
    wspec = *w;
    if (!a.acts.empty()) {
      Result<QuantSpec> as = parse_spec(a.acts);
      if (!as.ok()) fail(kExitUsage, "--acts: " + as.status().message());
      aspec = *as;
    }
    label = to_string(wspec) + (aspec ? "+" + to_string(*aspec) : "");
  }
  if (!a.policy.empty()) label = "deepseek " + label;
  label = std::string(method_name(*method)) + " " + label;

  if (a.stream || a.resume) {
    run_streaming(a, *method, wspec, aspec, label);
    return;
  }
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const LlamaConfig& cfg = model->config;
  std::unique_ptr<Tokenizer> tok;
  std::string tok_path;
  const bool needs_text = *method != Method::kRtn || !a.eval_text.empty() || !a.out.empty() || (mixed && (a.sensitivity.empty() || !a.calib.empty()));
  if (needs_text) {
    tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, cfg.vocab_size, "quantize") : a.tokenizer;
    Result<std::unique_ptr<Tokenizer>> t = load_tokenizer(tok_path, cfg.vocab_size);
    if (!t.ok()) fail(t.status());
    tok = std::move(*t);
  }
  Result<QuantPlan> plan = InvalidArgument("unset");
  std::optional<MixedPlan> mix;
  if (mixed) {
    mix = choose_mixed_plan(a, *model, aspec, tok.get());
    plan = mix->plan;
  } else if (!a.policy.empty()) {
    Result<QuantSpec> high = parse_spec(a.policy_high);
    if (!high.ok()) fail(kExitUsage, "--policy-high: " + high.status().message());
    plan = deepseek_plan(cfg, wspec, *high, aspec);
  } else {
    plan = is_gguf_scheme(a.scheme) ? make_gguf_plan(cfg, a.scheme, a.plan) : make_plan(cfg, wspec, aspec, a.plan);
  }
  if (!plan.ok()) fail(kExitUsage, plan.status().message());
  if (!a.plan_out.empty()) {
    if (Status s = write_file_atomic(a.plan_out, plan_overrides_json(*plan) + "\n"); !s.ok()) fail(s);
  }
  if (mixed) {
    fmt::print("{}", plan_table(*plan));
    const MixedChoice& m = mix->choice;
    fmt::print("target {:.3f} bpw: chose {:.3f} bpw over {} units ({} granularity, knapsack {}), predicted KLD {:.6f} "
               "(sum of measured ΔKLD), predicted ΔPPL {:+.4f}\n", a.target_bpw, m.bits_per_weight, mix->sens.units.size(),
               granularity_name(mix->sens.granularity), m.knapsack.exact ? "exact" : fmt::format("grid {} bits", m.knapsack.resolution),
               m.predicted_kld, m.predicted_dppl);
    if (mix->refine) {
      const RefineReport& r = *mix->refine;
      fmt::print("refine: {} round(s), {} forwards in {:.2f} s; measured KLD{} on {} calibration windows{} {:.6f} -> {:.6f} "
                 "({} of {} units changed; knapsack's plan {:.3f} bpw, predicted {:.6f})\n",
                 r.rounds.size(), r.evaluations, r.seconds, a.refine_exact ? " (exact: the pipeline's model of each mix)" : "", mix->windows.size(),
                 mix->windows_offset > 0 ? fmt::format(" (after GPTQ's {} calibration tokens)", mix->windows_offset) : "", r.kld_before, r.kld_after,
                 [&] { int n = 0; for (size_t i = 0; i < m.choice.size(); ++i) n += m.choice[i] != mix->knapsack.choice[i]; return n; }(),
                 m.choice.size(), mix->knapsack.bits_per_weight, mix->knapsack.predicted_kld);
    }
  }
  if (a.dry_run) {
    if (!mixed) fmt::print("{}", plan_table(*plan));
    if (!a.json.empty()) {
      if (Status s = write_file_atomic(a.json, plan_json(*plan) + "\n"); !s.ok()) fail(s);
    }
    return;
  }

  PipelineOptions opt;
  opt.method = *method;
  opt.plan = *plan;
  opt.sequential = !a.no_sequential;
  opt.gptq.damp = a.damp;
  opt.gptq.act_order = a.act_order;
  opt.gptq.static_groups = a.static_groups;
  opt.smooth_alpha = a.alpha;
  opt.outlier_threshold = a.threshold;

  const ModelFormat save_format = output_format(a);
  if (*method == Method::kOutliers && !a.out.empty()) {
    fail(kExitUsage, "quantize: -o: the outlier split (fp16 columns beside int8) cannot be written yet; use --eval to measure it");
  }
  const int ctx = std::min(a.ctx, cfg.seq_len);
  if (*method != Method::kRtn) {
    if (a.calib.empty()) fail(kExitUsage, fmt::format("quantize: --method {} needs --calib FILE", a.method));
    if (a.calib_tokens < 1 || ctx < 2) fail(kExitUsage, "quantize: --calib-tokens must be >= 1 and --ctx >= 2");
    const std::vector<int> tokens = tokenize_stories(*tok, a.calib, a.calib_split);
    if (static_cast<int>(tokens.size()) < ctx) {
      fail(kExitUsage, fmt::format("{}: calibration text (split {}) has {} tokens; one window needs --ctx {}", a.calib,
                                   a.calib_split, tokens.size(), ctx));
    }
    opt.calib = split_after_gptq(tokens, ctx, a.calib_tokens, ctx, 0).gptq;
  }
  if (!a.eval_text.empty() && !a.calib.empty() && same_file(a.calib, a.eval_text) &&
      (a.calib_split == a.eval_split || a.calib_split == "all" || a.eval_split == "all")) {
    warn(fmt::format("calibration and evaluation text overlap ({} split {} vs split {}); the evaluation is optimistic",
                     a.calib, a.calib_split, a.eval_split));
  }

  LlamaModel net(*model);
  if (!a.kv.empty()) {  // recorded in the saved model's metadata; the model then runs with this cache
    Result<KvSpec> kv = parse_kv_spec(a.kv);
    if (!kv.ok()) fail(kExitUsage, "--kv: " + kv.status().message());
    if (Status st = net.set_kv_cache(*kv); !st.ok()) fail(kExitUsage, "--kv: " + st.message());
  }
  std::unique_ptr<Progress> progress = std::make_unique<Progress>("quantize " + label, cfg.n_layers);
  opt.on_layer = [&](int, int) { progress->advance(); };
  Result<PipelineReport> rep = quantize_model(net, opt);
  progress->finish();
  if (!rep.ok()) fail(rep.status());
  const ModelSize size = model_size(net);

  nlohmann::json j = {{"model", a.model},
                      {"method", a.method},
                      {"scheme", plan->scheme},
                      {"scheme_name", a.scheme.empty() ? label : a.scheme},
                      {"calib", a.calib},
                      {"calib_split", a.calib_split},
                      {"calib_tokens", rep->calib_tokens},
                      {"sequential", opt.sequential},
                      {"seconds", rep->seconds},
                      {"peak_activation_bytes", rep->peak_activation_bytes},
                      {"bpw", size.bpw_total()},
                      {"bpw_weights", size.bpw_weights()},
                      {"size_bytes", size.total_bytes()}};
  nlohmann::json layers = nlohmann::json::array();
  for (const LinearReport& r : rep->linears) {
    nlohmann::json lj = {{"name", r.name}, {"spec", r.spec}};
    if (*method == Method::kAwq || *method == Method::kSmoothQuant) lj["alpha"] = r.alpha;
    if (*method == Method::kAwq) lj["rtn_error"] = r.rtn_error, lj["error"] = r.error;
    if (*method == Method::kOutliers) lj["outlier_cols"] = r.outlier_cols, lj["outlier_fraction"] = r.outlier_fraction;
    layers.push_back(lj);
  }
  j["linears"] = layers;
  j["bits_per_weight"] = plan->bits_per_weight();
  j["plan"] = nlohmann::json::parse(plan_overrides_json(*plan));
  if (mix) {
    j["target_bpw"] = a.target_bpw;
    j["predicted_kld"] = mix->choice.predicted_kld;
    j["predicted_delta_ppl"] = mix->choice.predicted_dppl;
    j["granularity"] = std::string(granularity_name(mix->sens.granularity));
    j["knapsack_exact"] = mix->choice.knapsack.exact;
    j["sensitivity_seconds"] = mix->sens.seconds;
    j["sensitivity_tokens"] = mix->sens.tokens_scored;
    if (mix->refine) {  // the search: measured on the calibration windows, never on --eval
      const RefineReport& r = *mix->refine;
      nlohmann::json rounds = nlohmann::json::array();
      for (const RefineRound& rr : r.rounds) {
        rounds.push_back({{"kld_before", rr.kld_before}, {"kld_after", rr.kld_after}, {"evaluations", rr.evaluations},
                          {"changed_units", rr.changed_units}, {"move", rr.move}});
      }
      int changed = 0;
      for (size_t i = 0; i < mix->choice.choice.size(); ++i) changed += mix->choice.choice[i] != mix->knapsack.choice[i];
      j["refine"] = {{"rounds_max", a.refine}, {"trials", a.refine_trials}, {"screen_windows", a.refine_screen}, {"windows_offset_tokens", mix->windows_offset}, {"method", a.method == "gptq" ? "gptq" : "rtn"}, {"exact", a.refine_exact},
                     {"calib_kld_before", r.kld_before}, {"calib_kld_after", r.kld_after}, {"evaluations", r.evaluations},
                     {"seconds", r.seconds}, {"units_changed", changed}, {"rounds", rounds},
                     {"knapsack_bits_per_weight", mix->knapsack.bits_per_weight},
                     {"knapsack_predicted_kld", mix->knapsack.predicted_kld},
                     {"knapsack_plan", nlohmann::json::parse(plan_overrides_json(make_mixed_plan(cfg, mix->sens, mix->knapsack, aspec).value()))}};
    }
    if (!mix->windows.empty()) {  // the chosen mix measured on the calibration windows (no additivity assumed)
      LlamaModel reference(*model);
      Result<double> k = mix_kld_on_windows(net, reference, mix->windows);
      if (!k.ok()) fail(k.status());
      j["measured_calib_kld"] = *k;
      j["measured_calib_offset_tokens"] = mix->windows_offset;
      fmt::print("mix: predicted KLD {:.6f} (sum of units), measured {:.6f} on the {} calibration windows{}\n", mix->choice.predicted_kld, *k,
                 mix->windows.size(), mix->windows_offset > 0 ? fmt::format(" after GPTQ's {} tokens", mix->windows_offset) : "");
    }
  }
  fmt::print("quantized {} with {} in {:.2f} s: {:.3f} bits per weight (linear weights, scales included), {:.1f} KiB\n",
             a.model, label, rep->seconds, size.bpw_total(), static_cast<double>(size.total_bytes()) / 1024.0);
  if (*method == Method::kOutliers) {
    for (const LinearReport& r : rep->linears) {
      if (r.outlier_cols > 0) fmt::print("  {}: {} outlier input columns ({:.2f}%) kept fp16\n", r.name, r.outlier_cols, 100.0 * r.outlier_fraction);
    }
  }

  if (!a.out.empty()) {
    SaveOptions so;
    so.format = save_format;
    so.tokenizer_path = tok_path;
    so.extra_metadata = {{"lowbit.method", a.method},
                         {"lowbit.scheme", a.scheme.empty() ? label : a.scheme},
                         {"lowbit.calib", a.calib},
                         {"lowbit.calib_split", a.calib_split},
                         {"lowbit.calib_tokens", std::to_string(rep->calib_tokens)},
                         {"lowbit.sequential", opt.sequential ? "true" : "false"}};
    Result<SaveReport> saved = save_model(net, a.out, so);
    if (!saved.ok()) fail(saved.status());
    for (const std::string& w : saved->warnings) warn(w);
    fmt::print("wrote {} ({}, {:.1f} KiB)\n", saved->path, model_format_name(saved->format), static_cast<double>(saved->bytes) / 1024.0);
    j["output"] = {{"path", saved->path}, {"format", std::string(model_format_name(saved->format))}, {"bytes", saved->bytes}};
  }
  if (!a.eval_text.empty()) {
    const std::vector<int> tokens = tokenize_stories(*tok, a.eval_text, a.eval_split);
    LlamaModel reference(*model);
    EvalOptions eo;
    eo.ctx = a.eval_ctx;
    eo.max_windows = a.eval_windows;
    std::unique_ptr<Progress> ep;
    eo.on_window = [&](int64_t done, int64_t total) {
      if (done == 1) ep = std::make_unique<Progress>("eval " + label, total);
      ep->advance();
    };
    Result<EvalResult> r = evaluate(net, reference, tokens, eo);
    if (ep) ep->finish();
    if (!r.ok()) fail(r.status());
    fmt::print("| model | PPL | ref PPL | ΔPPL ± SE | KLD mean | KLD p99 | top-1 | bpw | tokens |\n");
    fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    fmt::print("| {} | {:.4f} | {:.4f} | {:+.4f} ± {:.4f} | {:.6f} | {:.6f} | {:.2f}% | {:.3f} | {} |\n", label, r->ppl,
               r->ref_ppl, r->delta_ppl, r->delta_ppl_se, r->kld_mean, r->kld_p99, 100.0 * r->top1, size.bpw_total(),
               r->tokens_scored);
    if (mix) {
      const double p = mix->choice.predicted_kld;
      fmt::print("predicted KLD {:.6f} (calibration split) vs realized {:.6f} (evaluation split): ratio {:.3f}\n", p, r->kld_mean,
                 r->kld_mean > 0 ? p / r->kld_mean : 0.0);
      j["realized_kld"] = r->kld_mean;
      if (j.contains("measured_calib_kld")) {
        const double mk = j["measured_calib_kld"].get<double>();
        fmt::print("measured on calibration {:.6f} vs realized {:.6f}: ratio {:.3f}\n", mk, r->kld_mean, r->kld_mean > 0 ? mk / r->kld_mean : 0.0);
      }
    }
    j["eval"] = {{"text", a.eval_text}, {"split", a.eval_split}, {"ppl", r->ppl},       {"ref_ppl", r->ref_ppl},
                 {"delta_ppl", r->delta_ppl}, {"delta_ppl_se", r->delta_ppl_se}, {"kld_mean", r->kld_mean},
                 {"kld_p99", r->kld_p99}, {"top1", r->top1}, {"tokens_scored", r->tokens_scored}};
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  j["peak_rss_bytes"] = static_cast<int64_t>(ru.ru_maxrss) * 1024;
  if (!a.json.empty()) {
    if (Status s = write_file_atomic(a.json, j.dump(2) + "\n"); !s.ok()) fail(s);
  }
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a model (rtn, gptq, awq, smoothquant, outliers) and write it");
  cmd->add_option("--model", a->model, "Checkpoint to quantize")->required();
  cmd->add_option("--scheme", a->scheme, "Named scheme (see `lowbit schemes`)")->check(non_empty());
  cmd->add_option("--target-bpw", a->target_bpw, "Choose a spec per linear (measured sensitivity, exact knapsack) within this many bits per weight");
  cmd->add_option("--candidates", a->candidates, "--target-bpw: comma-separated schemes, specs or fp32")->default_val(kDefaultCandidates);
  cmd->add_option("--granularity", a->granularity, "--target-bpw: tensor | layer | role")->default_val("tensor");
  cmd->add_option("--sensitivity", a->sensitivity, "--target-bpw: reuse `lowbit sensitivity --json` output instead of measuring");
  cmd->add_option("--sens-windows", a->sens_windows, "--target-bpw: calibration windows of 128 tokens to measure on")->default_val(8);
  cmd->add_option("--refine", a->refine, "--target-bpw: rounds of interaction-aware refinement (the mix measured on --calib, kept only if its KLD falls; 0: off)")->default_val(0);
  cmd->add_option("--refine-trials", a->refine_trials, "--refine: single/pair moves measured per round beside the re-solved knapsack")->default_val(8);
  cmd->add_flag("--refine-exact", a->refine_exact, "--refine: measure the start and each proposal on the model the pipeline makes of the whole mix (GPTQ: sequential, as the output is made) instead of the per-unit surrogate");
  cmd->add_option("--refine-screen", a->refine_screen, "--refine: contextual sensitivities on the first N calibration windows (0: all); moves are accepted on all")->default_val(0);
  cmd->add_option("--policy", a->policy, "deepseek: norms fp32, embedding and first/last two blocks at --policy-high, the rest at --scheme");
  cmd->add_option("--policy-high", a->policy_high, "--policy deepseek: the high-precision spec")->default_val("int8:row:sym:fp32");
  cmd->add_option("--plan-out", a->plan_out, "Write the plan as the JSON --plan reads (one entry per tensor)");
  cmd->add_option("--weights", a->weights, "QuantSpec for linear weights (instead of --scheme)")->check(non_empty());
  cmd->add_option("--acts", a->acts, "QuantSpec for linear inputs (dynamic), with --weights")->check(non_empty());
  cmd->add_option("--kv", a->kv, "Quantized KV cache spec to record in the saved model (kv-int8, kv-int4-kivi, ...)");
  cmd->add_option("--method", a->method, "rtn | gptq | awq | smoothquant | outliers")->default_val("rtn");
  cmd->add_option("--calib", a->calib, "Calibration text (stories separated by blank lines)");
  cmd->add_option("--calib-split", a->calib_split, "Part of --calib to use: calib (first 10% of stories) | eval | all")->default_val("calib");
  cmd->add_option("--calib-tokens", a->calib_tokens, "Calibration tokens (whole windows of --ctx)")->default_val(8192);
  cmd->add_option("--ctx", a->ctx, "Calibration window length in tokens (clamped to the model's context)")->default_val(256);
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: the one beside the model)");
  cmd->add_option("--plan", a->plan, "JSON overrides {\"tensor glob\": \"spec\" | \"fp32\"}");
  cmd->add_flag("--dry-run", a->dry_run, "Print the plan (every tensor and its spec) and stop; with --stream also the peak-memory formula");
  cmd->add_flag("--stream", a->stream, "Hugging Face folder (sharded or not) block by block: one block in memory, out as sharded safetensors or one GGUF");
  cmd->add_flag("--resume", a->resume, "--stream: continue OUT.partial from its last completed block (implies --stream)");
  cmd->add_flag("--no-sequential", a->no_sequential, "Feed each block the fp32 outputs of the previous one (default: quantized)");
  cmd->add_flag("--act-order", a->act_order, "GPTQ: quantize columns by decreasing Hessian diagonal");
  cmd->add_flag("--static-groups", a->static_groups, "GPTQ: group scales from the original weights");
  cmd->add_option("--damp", a->damp, "GPTQ: damping as a fraction of the mean Hessian diagonal")->default_val(0.01);
  cmd->add_option("--alpha", a->alpha, "SmoothQuant: migration strength")->default_val(0.5);
  cmd->add_option("--threshold", a->threshold, "outliers: |x| above which an input column stays fp16")->default_val(6.0f);
  cmd->add_option("-o,--out", a->out, "Output: a folder (safetensors) or a .gguf file; written atomically");
  cmd->add_option("--format", a->format, "safetensors | gguf (default: gguf for a .gguf name, else safetensors)");
  cmd->add_option("--eval", a->eval_text, "Evaluate against the fp32 model on this text afterwards");
  cmd->add_option("--eval-split", a->eval_split, "Part of --eval to score")->default_val("eval");
  cmd->add_option("--eval-windows", a->eval_windows, "Windows to score (0: all)")->default_val(100);
  cmd->add_option("--json", a->json, "Write a JSON summary (with --dry-run: the plan)");
  cmd->callback([a] { run_quantize(*a); });
}

}  // namespace lowbit::cli
