// lowbit dynamic --model M --calib FILE --text NAME=FILE [--text NAME=FILE ...] [--low SPEC]
//                [--high SPEC] [--top K] [--probe N] [--signal loss|entropy] [--upgrade F]
//                [--ctx N] [--windows K] [--sensitivity sens.json] [--json out.json]
// Run-time precision selection as an experiment (issue 17): every linear at --low, the --top K
// most sensitive (measured ΔKLD at --low, or read from --sensitivity) held a second time at
// --high, one of the two picked per window from the loss (or entropy) of the low model on the
// window's first --probe tokens. Prints, per text, KLD against fp32 for all-low, all-high,
// dynamic and an oracle that upgrades the same number of windows, the share upgraded, and the
// cost in memory and time. The logic is evaluate_dynamic_precision (mixed.h).
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/mixed.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct DynamicArgs {
  std::string model, calib, tokenizer, low = "int4:g64:sym:fp16", high = "int8:row:sym:fp32", signal = "loss", sensitivity, json;
  std::vector<std::string> texts;
  int top = 4, probe = 16, ctx = 128, windows = 16;
  double upgrade = 0.25;
};

void run_dynamic(const DynamicArgs& a) {
  Result<QuantSpec> low = parse_spec(a.low), high = parse_spec(a.high);
  if (!low.ok()) fail(kExitUsage, "--low: " + low.status().message());
  if (!high.ok()) fail(kExitUsage, "--high: " + high.status().message());
  Result<ProbeSignal> sig = parse_probe_signal(a.signal);
  if (!sig.ok()) fail(kExitUsage, "--signal: " + sig.status().message());
  check_range("dynamic --top", a.top, 1, 1 << 20);
  check_range("dynamic --windows", a.windows, 1, 1 << 20);
  check_range("dynamic --probe", a.probe, 2, 1 << 20);
  if (!(a.upgrade >= 0.0 && a.upgrade <= 1.0)) fail(kExitUsage, fmt::format("dynamic --upgrade: {} is outside [0, 1]", a.upgrade));
  std::vector<std::pair<std::string, std::string>> named;  // (name, path)
  std::vector<NamedPath> inputs = {{"--model", a.model}, {"--calib", a.calib}, {"--tokenizer", a.tokenizer}, {"--sensitivity", a.sensitivity}};
  for (const std::string& t : a.texts) {
    const size_t eq = t.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == t.size()) fail(kExitUsage, fmt::format("--text: '{}' is not NAME=FILE", t));
    named.emplace_back(t.substr(0, eq), t.substr(eq + 1));
    inputs.push_back({"--text", named.back().second});
  }
  check_output("--json", a.json, inputs);

  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const LlamaConfig& cfg = model->config;
  const int ctx = std::min(a.ctx, cfg.seq_len);
  if (ctx < a.probe + 2) fail(kExitUsage, fmt::format("dynamic: --ctx {} leaves no token after the probe of {}", ctx, a.probe));
  const std::string tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, cfg.vocab_size, "dynamic") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, cfg.vocab_size);
  if (!tok.ok()) fail(tok.status());
  DynamicPrecisionOptions opt{.low = *low, .high = *high, .probe_tokens = a.probe, .signal = *sig, .upgrade_fraction = a.upgrade};
  opt.calib = split_windows(tokenize_stories(**tok, a.calib, "calib"), ctx, a.windows);
  if (opt.calib.empty()) fail(kExitUsage, fmt::format("{}: calibration text (split calib) is shorter than one window of {} tokens", a.calib, ctx));
  std::vector<std::pair<std::string, std::vector<std::vector<int>>>> texts;
  for (const auto& [name, path] : named) {
    texts.emplace_back(name, split_windows(tokenize_stories(**tok, path, "eval"), ctx, a.windows));
    if (texts.back().second.empty()) fail(kExitUsage, fmt::format("{}: text (split eval) is shorter than one window of {} tokens", path, ctx));
  }

  LlamaModel net(*model);
  Result<SensitivityReport> sens = InvalidArgument("unset");
  if (!a.sensitivity.empty()) {
    Result<std::string> text = read_file(a.sensitivity);
    if (!text.ok()) fail(text.status());
    sens = parse_sensitivity_json(*text, a.sensitivity, cfg);
    if (!sens.ok()) fail(kExitUsage, sens.status().message());
  } else {
    sens = measure_sensitivity(net, {.candidates = {{a.low, *low}}, .granularity = UnitGranularity::kTensor, .windows = opt.calib});
    if (!sens.ok()) fail(sens.status());
  }
  std::string cand = a.low;
  for (const Candidate& c : sens->candidates) {
    if (c.spec && to_string(*c.spec) == to_string(*low)) cand = c.name;
  }
  Result<std::vector<std::string>> top = most_sensitive_tensors(*sens, cand, a.top);
  if (!top.ok()) fail(kExitUsage, top.status().message());
  opt.high_tensors = *top;
  Result<DynamicPrecisionReport> r = evaluate_dynamic_precision(net, opt, texts);
  if (!r.ok()) fail(r.status());

  fmt::print("dynamic precision on {}: every linear {}, {} held twice (also {}): {}\n", a.model, a.low, opt.high_tensors.size(), a.high,
             fmt::join(opt.high_tensors, ", "));
  fmt::print("signal: mean {} of the first {} tokens; threshold {:.4f} sends {:.0f}% of {} calibration windows high\n", a.signal, a.probe,
             r->threshold, 100.0 * a.upgrade, opt.calib.size());
  fmt::print("linear storage: low {} B, static (top {} at high) {} B, dynamic (both copies) {} B\n\n", r->low_bytes, a.top,
             r->static_high_bytes, r->dynamic_bytes);
  fmt::print("| text | windows | KLD low | KLD high | KLD dynamic | KLD oracle | upgraded | signal↔gain Spearman | time low s | time high s | time dynamic s |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const DynamicTextResult& t : r->texts) {
    fmt::print("| {} | {} | {:.5f} | {:.5f} | {:.5f} | {:.5f} | {:.0f}% | {:.2f} | {:.3f} | {:.3f} | {:.3f} |\n", t.name, t.windows, t.kld_low,
               t.kld_high, t.kld_dynamic, t.kld_oracle, 100.0 * t.fraction_high, t.signal_gain_spearman, t.seconds_low, t.seconds_high,
               t.seconds_dynamic);
  }
  if (!a.json.empty()) {
    nlohmann::ordered_json j;
    j["low"] = a.low;
    j["high"] = a.high;
    j["high_tensors"] = opt.high_tensors;
    j["signal"] = a.signal;
    j["probe_tokens"] = a.probe;
    j["upgrade_fraction"] = a.upgrade;
    j["threshold"] = json_value(r->threshold);
    j["low_bytes"] = r->low_bytes;
    j["static_high_bytes"] = r->static_high_bytes;
    j["dynamic_bytes"] = r->dynamic_bytes;
    nlohmann::ordered_json ts = nlohmann::ordered_json::array();
    for (const DynamicTextResult& t : r->texts) {
      ts.push_back({{"name", t.name}, {"windows", t.windows}, {"tokens_scored", t.tokens_scored}, {"kld_low", t.kld_low},
                    {"kld_high", t.kld_high}, {"kld_dynamic", t.kld_dynamic}, {"kld_oracle", t.kld_oracle},
                    {"fraction_high", t.fraction_high}, {"mean_signal", t.mean_signal}, {"signal_gain_spearman", t.signal_gain_spearman},
                    {"seconds_low", t.seconds_low}, {"seconds_high", t.seconds_high}, {"seconds_probe", t.seconds_probe},
                    {"seconds_dynamic", t.seconds_dynamic}});
    }
    j["texts"] = ts;
    if (Status s = write_file_atomic(a.json, j.dump(2) + "\n"); !s.ok()) fail(s);
  }
}

}  // namespace

void register_dynamic(CLI::App& app) {
  auto a = std::make_shared<DynamicArgs>();
  auto* cmd = app.add_subcommand("dynamic", "Experiment: run-time precision selection per window (two precisions of the most sensitive linears)");
  cmd->add_option("--model", a->model, "Checkpoint (fp32 reference)")->required();
  cmd->add_option("--calib", a->calib, "Calibration text: sensitivities and the threshold (split calib)")->required();
  cmd->add_option("--text", a->texts, "NAME=FILE to evaluate on (split eval), repeatable (e.g. easy=… hard=…)")->required();
  cmd->add_option("--low", a->low, "Spec of every linear")->default_val("int4:g64:sym:fp16");
  cmd->add_option("--high", a->high, "Spec of the second copy of the most sensitive linears")->default_val("int8:row:sym:fp32");
  cmd->add_option("--top", a->top, "How many linears are held twice")->default_val(4);
  cmd->add_option("--probe", a->probe, "Tokens at the start of each window the signal is computed on")->default_val(16);
  cmd->add_option("--signal", a->signal, "loss | entropy of the low model on the probe")->default_val("loss");
  cmd->add_option("--upgrade", a->upgrade, "Share of calibration windows sent high (sets the threshold)")->default_val(0.25);
  cmd->add_option("--ctx", a->ctx, "Window length in tokens")->default_val(128);
  cmd->add_option("--windows", a->windows, "Windows per text (and of calibration)")->default_val(16);
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: the one beside the model)");
  cmd->add_option("--sensitivity", a->sensitivity, "Reuse `lowbit sensitivity --granularity tensor --json` output (must list --low)");
  cmd->add_option("--json", a->json, "Write the result as JSON");
  cmd->callback([a] { run_dynamic(*a); });
}

}  // namespace lowbit::cli
