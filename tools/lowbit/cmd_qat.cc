// lowbit qat --model M [--tokenizer T] (--scheme S | --weights SPEC [--acts SPEC]) --data FILE
//            --steps N [--init rtn|gptq|awq] [--loss ce|kd|ce+kd] [--lsq] -o OUT [--eval FILE] [--json J]
// Quantization-aware training (include/lowbit/qat.h): starts from the PTQ result, trains the
// fp32 master weights through the deployment quantizer on the calibration split of --data,
// writes the quantized model, and (with --eval) prints RTN, the PTQ start and QAT side by side.
#include <cmath>
#include <limits>
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/pipeline.h"
#include "lowbit/progress.h"
#include "lowbit/qat.h"
#include "lowbit/rtn.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct QatArgs {
  std::string model, tokenizer, scheme, weights, acts, data, data_split = "calib", init = "gptq", loss = "kd", out, format,
      eval_text, eval_split = "eval", json, plan;
  int64_t steps = 100;
  int batch = 4, ctx = 128, calib_windows = 32, eval_windows = 100, eval_ctx = 128;
  float lr = 6e-4f, scale_lr = 1e-4f, clip = 1.0f, min_lr = 0.1f;
  int64_t warmup = 0;
  uint64_t seed = 1;
  bool lsq = false, act_order = false;
  double damp = 0.01;
};

void run(const QatArgs& a) {
  if ((!a.scheme.empty()) + (!a.weights.empty()) != 1) fail(kExitUsage, "qat: give exactly one of --scheme and --weights");
  if (!a.acts.empty() && a.weights.empty()) fail(kExitUsage, "qat: --acts needs --weights (or use --scheme)");
  if (a.out.empty() && a.eval_text.empty()) fail(kExitUsage, "qat: give -o OUT (or --eval to measure only)");
  const std::vector<NamedPath> inputs = {{"--model", a.model}, {"--data", a.data}, {"--tokenizer", a.tokenizer},
                                         {"--eval", a.eval_text}, {"--plan", a.plan}};
  check_output("-o", a.out, inputs, /*folder_ok=*/true);
  std::vector<NamedPath> json_clashes = inputs;
  json_clashes.push_back({"-o", a.out});
  check_output("--json", a.json, json_clashes);
  check_range("qat --steps", a.steps, 1, 100'000'000);
  check_range("qat --batch", a.batch, 1, 4096);
  check_range("qat --ctx", a.ctx, 2, 1 << 20);
  check_range("qat --calib-windows", a.calib_windows, 1, 1 << 20);
  check_range("qat --eval-windows", a.eval_windows, 0, std::numeric_limits<int>::max());
  check_range("qat --warmup", a.warmup, 0, a.steps);
  if (!(a.lr > 0.0f) || !std::isfinite(a.lr)) fail(kExitUsage, fmt::format("qat --lr: {} must be a finite value > 0", a.lr));
  if (!(a.scale_lr > 0.0f) || !std::isfinite(a.scale_lr)) fail(kExitUsage, fmt::format("qat --scale-lr: {} must be a finite value > 0", a.scale_lr));
  if (!(a.clip >= 0.0f) || !std::isfinite(a.clip)) fail(kExitUsage, fmt::format("qat --clip: {} must be a finite value >= 0", a.clip));
  if (!(a.damp > 0.0) || !std::isfinite(a.damp)) fail(kExitUsage, fmt::format("qat --damp: {} must be > 0", a.damp));
  Result<Method> init = parse_method(a.init);
  if (!init.ok() || (*init != Method::kRtn && *init != Method::kGptq && *init != Method::kAwq)) {
    fail(kExitUsage, fmt::format("--init: '{}' is not one of rtn, gptq, awq", a.init));
  }
  if (a.act_order && *init != Method::kGptq) fail(kExitUsage, "qat: --act-order is a GPTQ option; --init is " + a.init);
  Result<QatLoss> loss = parse_qat_loss(a.loss);
  if (!loss.ok()) fail(kExitUsage, "--loss: " + loss.status().message());

  QuantSpec wspec;
  std::optional<QuantSpec> aspec;
  std::string label;
  if (!a.scheme.empty()) {
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
  ModelFormat save_format = ModelFormat::kSafetensors;
  if (!a.format.empty()) {
    Result<ModelFormat> f = parse_model_format(a.format);
    if (!f.ok()) fail(kExitUsage, "--format: " + f.status().message());
    save_format = *f;
  } else if (a.out.size() >= 5 && a.out.compare(a.out.size() - 5, 5, ".gguf") == 0) {
    save_format = ModelFormat::kGguf;
  }

  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const LlamaConfig& cfg = model->config;
  const std::string tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, cfg.vocab_size, "qat") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, cfg.vocab_size);
  if (!tok.ok()) fail(tok.status());
  std::string overrides;
  if (!a.plan.empty()) {
    Result<std::string> t = read_file(a.plan);
    if (!t.ok()) fail(t.status());
    overrides = *t;
  }
  Result<QuantPlan> plan = make_plan(cfg, wspec, aspec, overrides);
  if (!plan.ok()) fail(kExitUsage, plan.status().message());
  if (a.ctx > cfg.seq_len) fail(kExitUsage, fmt::format("qat --ctx {}: the model's context is {}", a.ctx, cfg.seq_len));
  const std::vector<int> tokens = tokenize_stories(**tok, a.data, a.data_split);
  if (static_cast<int64_t>(tokens.size()) < a.ctx + 1) {
    fail(kExitUsage, fmt::format("{}: the {} split has {} tokens; one window needs --ctx {} + 1", a.data, a.data_split, tokens.size(), a.ctx));
  }
  if (!a.eval_text.empty() && a.data_split != "calib" && a.eval_split != "calib") {
    fmt::print(stderr, "lowbit: warning: --data-split {} may overlap the evaluation split {}; the evaluation is optimistic\n",
               a.data_split, a.eval_split);
  }

  // The save's options, and for a GGUF its layout, checked before any training: a spec GGUF cannot
  // hold is refused now, not after the run.
  SaveOptions so;
  so.format = save_format;
  so.tokenizer_path = tok_path;
  so.extra_metadata = {{"lowbit.method", "qat"},          {"lowbit.scheme", label},
                       {"lowbit.qat.init", a.init},        {"lowbit.qat.loss", a.loss},
                       {"lowbit.qat.steps", std::to_string(a.steps)}, {"lowbit.calib", a.data},
                       {"lowbit.calib_split", a.data_split}};
  if (!a.out.empty() && save_format == ModelFormat::kGguf) {
    const LlamaModel skeleton(*model);
    Result<GgufSaveLayout> layout = plan_gguf_save(skeleton, a.out, so, [&](const std::string& name) -> std::optional<QuantSpec> {
      const PlanEntry* e = plan->find(name);
      return e ? e->spec : std::nullopt;
    });
    if (!layout.ok()) fail(kExitUsage, layout.status().message());
  }

  QatOptions o;
  o.plan = *plan;
  o.init = *init;
  o.loss = *loss;
  o.learn_scales = a.lsq;
  o.steps = a.steps;
  o.batch = a.batch;
  o.ctx = a.ctx;
  o.lr = a.lr;
  o.scale_lr = a.scale_lr;
  o.warmup = a.warmup;
  o.min_lr_ratio = a.min_lr;
  o.clip = a.clip;
  o.seed = a.seed;
  o.calib_windows = a.calib_windows;
  o.pipeline.gptq.damp = a.damp;
  o.pipeline.gptq.act_order = a.act_order;
  std::unique_ptr<Progress> bar;
  o.on_stage = [&](std::string_view s) {
    bar.reset();
    if (s == "qat") bar = std::make_unique<Progress>(fmt::format("qat {} from {} ({})", label, a.init, a.loss), a.steps);
    else fmt::print(stderr, "{}", stderr_is_tty() ? fmt::format("qat: {} ...\n", s == "rtn" ? "rtn" : a.init) : "");
  };
  std::vector<nlohmann::json> log;
  o.on_step = [&](int64_t, int64_t, double) {
    if (bar) bar->advance();
  };
  Result<QatResult> r = run_qat(*model, tokens, o);
  if (bar) bar->finish();
  if (!r.ok()) fail(r.status());

  nlohmann::json j = {{"model", a.model},       {"scheme", plan->scheme}, {"scheme_name", label},
                      {"data", a.data},         {"data_split", a.data_split}, {"init", a.init},
                      {"loss", a.loss},         {"lsq", a.lsq},           {"steps", a.steps},
                      {"batch", a.batch},       {"ctx", a.ctx},           {"lr", a.lr},
                      {"min_lr", a.min_lr},     {"warmup", a.warmup},     {"scale_lr", a.scale_lr},
                      {"train_tokens", r->train_tokens}, {"rtn_seconds", r->rtn_seconds},
                      {"init_seconds", r->init_seconds}, {"qat_seconds", r->qat_seconds},
                      {"master_bytes", r->master_bytes}, {"saved_activation_bytes", r->saved_activation_bytes}};
  nlohmann::json jl = nlohmann::json::array();
  for (const QatLogEntry& e : r->log) {
    jl.push_back({{"step", e.step}, {"loss", json_value(e.loss)}, {"ce", json_value(e.ce)}, {"kd", json_value(e.kd)},
                  {"grad_norm", json_value(e.grad_norm)}, {"lr", e.lr}, {"clipped", e.clipped}});
  }
  j["log"] = jl;
  const QatLogEntry& first = r->log.front();
  const QatLogEntry& last = r->log.back();
  fmt::print("qat {} from {} ({} loss, {} steps x {} x {} tokens): loss {:.4f} -> {:.4f} (ce {:.4f} -> {:.4f}, kd {:.4f} -> {:.4f}); "
             "rtn {:.2f} s, {} {:.2f} s, qat {:.2f} s\n",
             label, a.init, a.loss, a.steps, a.batch, a.ctx, first.loss, last.loss, first.ce, last.ce, first.kd, last.kd,
             r->rtn_seconds, a.init, r->init_seconds, r->qat_seconds);

  if (!a.out.empty()) {
    Result<SaveReport> saved = save_model(*r->qat.net, a.out, so);
    if (!saved.ok()) fail(saved.status());
    for (const std::string& w : saved->warnings) fmt::print(stderr, "lowbit: warning: {}\n", w);
    fmt::print("wrote {} ({}, {:.1f} KiB)\n", saved->path, model_format_name(saved->format), static_cast<double>(saved->bytes) / 1024.0);
    j["output"] = {{"path", saved->path}, {"format", std::string(model_format_name(saved->format))}, {"bytes", saved->bytes}};
  }
  if (!a.eval_text.empty()) {
    const std::vector<int> etok = tokenize_stories(**tok, a.eval_text, a.eval_split);
    const LlamaModel reference(*model);
    EvalOptions eo;
    eo.ctx = a.eval_ctx;
    eo.max_windows = a.eval_windows;
    std::unique_ptr<Progress> ep;
    eo.on_window = [&](int64_t done, int64_t total) {
      if (done == 1) ep = std::make_unique<Progress>("eval " + label, total);
      ep->advance();
    };
    const LlamaModel* nets[] = {r->rtn.net.get(), r->init.net.get(), r->qat.net.get()};
    Result<std::vector<EvalResult>> ev = evaluate_many(nets, reference, etok, eo);
    if (ep) ep->finish();
    if (!ev.ok()) fail(ev.status());
    const std::string names[] = {"rtn " + label, a.init + " " + label, fmt::format("qat({}, {}) {}", a.init, a.loss, label)};
    const char* keys[] = {"rtn", "init", "qat"};
    fmt::print("| model | PPL | ref PPL | ΔPPL ± SE | KLD mean | KLD p99 | top-1 | bpw | tokens |\n");
    fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    nlohmann::json je;
    for (size_t i = 0; i < 3; ++i) {
      const EvalResult& e = (*ev)[i];
      const double bpw = model_size(*nets[i]).bpw_total();
      fmt::print("| {} | {:.4f} | {:.4f} | {:+.4f} ± {:.4f} | {:.6f} | {:.6f} | {:.2f}% | {:.3f} | {} |\n", names[i], e.ppl, e.ref_ppl,
                 e.delta_ppl, e.delta_ppl_se, e.kld_mean, e.kld_p99, 100.0 * e.top1, bpw, e.tokens_scored);
      je[keys[i]] = {{"ppl", e.ppl}, {"ref_ppl", e.ref_ppl}, {"delta_ppl", e.delta_ppl}, {"delta_ppl_se", e.delta_ppl_se},
                     {"kld_mean", e.kld_mean}, {"kld_p99", e.kld_p99}, {"top1", e.top1}, {"bpw", bpw},
                     {"tokens_scored", e.tokens_scored}};
    }
    const double kg = (*ev)[1].kld_mean, kq = (*ev)[2].kld_mean;
    if (kg > 0) fmt::print("QAT removes {:.1f}% of the KLD {} leaves\n", 100.0 * (kg - kq) / kg, a.init);
    je["text"] = a.eval_text;
    je["split"] = a.eval_split;
    j["eval"] = je;
  }
  j["peak_rss_mib"] = peak_rss_mib();
  fmt::print("peak RSS {:.0f} MiB\n", peak_rss_mib());
  if (!a.json.empty()) {
    if (Status s = write_file_atomic(a.json, j.dump(2) + "\n"); !s.ok()) fail(s);
  }
}

}  // namespace

void register_qat(CLI::App& app) {
  auto a = std::make_shared<QatArgs>();
  auto* cmd = app.add_subcommand("qat", "Quantization-aware training (clipped STE, distillation) from a PTQ start; writes the quantized model");
  cmd->add_option("--model", a->model, "fp32 checkpoint (the teacher and the start)")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: the one beside the model)");
  cmd->add_option("--scheme", a->scheme, "Named scheme (see `lowbit schemes`)")->check(non_empty());
  cmd->add_option("--weights", a->weights, "QuantSpec for linear weights (instead of --scheme)")->check(non_empty());
  cmd->add_option("--acts", a->acts, "QuantSpec for linear inputs (dynamic), with --weights")->check(non_empty());
  cmd->add_option("--plan", a->plan, "JSON overrides {\"tensor glob\": \"spec\" | \"fp32\"} (as quantize --plan)");
  cmd->add_option("--data", a->data, "Training text (stories separated by blank lines)")->required();
  cmd->add_option("--data-split", a->data_split, "Part of --data to train on: calib (first 10% of stories) | eval | all")->default_val("calib");
  cmd->add_option("--steps", a->steps, "Optimizer steps")->default_val(100);
  cmd->add_option("--batch", a->batch, "Windows per step")->default_val(4);
  cmd->add_option("--ctx", a->ctx, "Tokens per window (also the PTQ calibration window)")->default_val(128);
  cmd->add_option("--calib-windows", a->calib_windows, "PTQ calibration windows of --ctx tokens")->default_val(32);
  cmd->add_option("--init", a->init, "PTQ start: rtn | gptq | awq")->default_val("gptq");
  cmd->add_option("--loss", a->loss, "ce (text) | kd (KL to the fp32 model's logits) | ce+kd")->default_val("kd");
  cmd->add_flag("--lsq", a->lsq, "Learn the block scales (LSQ gradient); default: fixed at the PTQ start's");
  cmd->add_option("--lr", a->lr, "Peak AdamW learning rate of the master weights (cosine to --min-lr x peak)")->default_val(6e-4f);
  cmd->add_option("--min-lr", a->min_lr, "Floor of the cosine schedule, as a fraction of --lr (0 .. 1)")->default_val(0.1f);
  cmd->add_option("--scale-lr", a->scale_lr, "--lsq: relative Adam step of the scales")->default_val(1e-4f);
  cmd->add_option("--warmup", a->warmup, "Linear warm-up steps")->default_val(0);
  cmd->add_option("--clip", a->clip, "Global gradient-norm clip (0: none)")->default_val(1.0f);
  cmd->add_option("--seed", a->seed, "Order of training windows")->default_val(1);
  cmd->add_flag("--act-order", a->act_order, "--init gptq: columns by decreasing Hessian diagonal");
  cmd->add_option("--damp", a->damp, "--init gptq: damping as a fraction of the mean Hessian diagonal")->default_val(0.01);
  cmd->add_option("-o,--out", a->out, "Output: a folder (safetensors) or a .gguf file; written atomically");
  cmd->add_option("--format", a->format, "safetensors | gguf (default: gguf for a .gguf name, else safetensors)");
  cmd->add_option("--eval", a->eval_text, "Score RTN, the PTQ start and QAT against the fp32 model on this text");
  cmd->add_option("--eval-split", a->eval_split, "Part of --eval to score")->default_val("eval");
  cmd->add_option("--eval-windows", a->eval_windows, "Windows to score (0: all)")->default_val(100);
  cmd->add_option("--eval-ctx", a->eval_ctx, "Evaluation window length")->default_val(128);
  cmd->add_option("--json", a->json, "Write a JSON summary (per-step log, evaluation, peak RSS)");
  cmd->callback([a] { run(*a); });
}

}  // namespace lowbit::cli
