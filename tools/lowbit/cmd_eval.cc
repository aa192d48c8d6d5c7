// lowbit eval --model M [--scheme S[,S2...] | --weights SPEC [--acts SPEC]] [--ref R] --text FILE
//             [--tokenizer T] [--split all|calib|eval] [--ctx N] [--stride S] [--max-windows K]
//             [--kv SPEC ...] [--decode-ctx N] [--json out.json] [--plot out.svg]
// Quantizes M in memory (RTN) when schemes or a spec are given, then measures each against the
// fp32 reference (R, or M itself): PPL, ΔPPL ± SE, KLD mean / p99, top-1, bpw, size, tokens/s.
// Several schemes share one pass of the reference over the text (one table row each). --kv runs
// each row with a quantized KV cache per spec (include/lowbit/kv_cache.h): a row per (weights, kv).
#include <chrono>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/evp.h>

#include "cli.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/kv_cache.h"
#include "lowbit/progress.h"
#include "lowbit/rtn.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct EvalArgs {
  std::string model, ref, text, tokenizer, weights, acts, split = "all", json, plot, ggml_acts = "f32";
  std::vector<std::string> schemes, kv;
  int ctx = 128, stride = 0, max_windows = 0, decode_tokens = 32, decode_ctx = 8;
};

std::string sha256_file(const std::string& path) {
  Result<MappedFile> f = MappedFile::open(path);
  if (!f.ok()) fail(f.status());
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(f->bytes().data(), f->size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

void run_eval(const EvalArgs& a) {
  if (!a.schemes.empty() && !a.weights.empty()) fail(kExitUsage, "eval: --scheme and --weights exclude each other");
  if (!a.acts.empty() && a.weights.empty()) fail(kExitUsage, "eval: --acts needs --weights (or use --scheme)");
  if (a.ctx < 2) fail(kExitUsage, fmt::format("eval: --ctx must be >= 2 (got {})", a.ctx));
  check_range("eval --stride", a.stride, 0, std::numeric_limits<int>::max());
  check_range("eval --max-windows", a.max_windows, 0, std::numeric_limits<int>::max());
  if (a.decode_ctx < 1) fail(kExitUsage, fmt::format("eval: --decode-ctx must be >= 1 (got {})", a.decode_ctx));
  std::vector<KvSpec> kvs;
  for (const std::string& text : a.kv) {
    Result<KvSpec> k = parse_kv_spec(text);
    if (!k.ok()) fail(kExitUsage, "--kv: " + k.status().message());
    kvs.push_back(*k);
  }
  if (!a.plot.empty() && a.schemes.size() > 1) {
    fail(kExitUsage, fmt::format("eval: --plot draws one model; got {} schemes", a.schemes.size()));
  }
  const std::vector<NamedPath> input_paths = {
      {"--model", a.model}, {"--ref", a.ref}, {"--text", a.text}, {"--tokenizer", a.tokenizer}};
  check_output("--json", a.json, input_paths);
  std::vector<NamedPath> plot_clashes = input_paths;
  plot_clashes.push_back({"--json", a.json});
  check_output("--plot", a.plot, plot_clashes);
  std::vector<Scheme> schemes;
  for (const std::string& name : a.schemes) {
    Result<Scheme> s = find_scheme(name);
    if (!s.ok()) fail(kExitUsage, "--scheme: " + s.status().message());
    schemes.push_back(*s);
  }
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  Result<Model> ref_model = a.ref.empty() ? Result<Model>(InvalidArgument("unused")) : load_model(a.ref);
  if (!a.ref.empty() && !ref_model.ok()) fail(ref_model.status());
  const int vocab = model->config.vocab_size;
  const std::string tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, vocab, "eval") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, vocab);
  if (!tok.ok()) fail(tok.status());
  const std::vector<int> tokens = tokenize_stories(**tok, a.text, a.split);

  LlamaModel reference(a.ref.empty() ? *model : *ref_model);
  (void)reference.set_kv_cache(std::nullopt);  // the reference keeps an fp32 cache, whatever a saved model records
  // The reference runs k-quant blocks with fp32 activations; the evaluated rows as --ggml-acts says.
  const bool q8_rows = ggml_acts_from(a.ggml_acts) == GgmlActs::kQ8K && !model->ggml.empty();
  model->activations.ggml = ggml_acts_from(a.ggml_acts);
  // One entry per row: the model itself (fp32), each scheme, or the --weights/--acts spec.
  std::vector<std::unique_ptr<LlamaModel>> nets;
  std::vector<std::string> labels;
  for (const Scheme& s : schemes) {
    nets.push_back(std::make_unique<LlamaModel>(*model));
    if (Status st = apply_scheme(*nets.back(), s); !st.ok()) fail(st);
    labels.emplace_back(s.name);
  }
  if (!a.weights.empty()) {
    Result<QuantSpec> w = parse_spec(a.weights);
    if (!w.ok()) fail(kExitUsage, "--weights: " + w.status().message());
    std::optional<QuantSpec> act;
    if (!a.acts.empty()) {
      Result<QuantSpec> as = parse_spec(a.acts);
      if (!as.ok()) fail(kExitUsage, "--acts: " + as.status().message());
      act = *as;
    }
    nets.push_back(std::make_unique<LlamaModel>(*model));
    if (Status st = apply_rtn(*nets.back(), *w, act); !st.ok()) fail(st);
    labels.push_back(to_string(*w) + (act ? " / acts " + to_string(*act) : ""));
  }
  if (!kvs.empty() && nets.empty()) {  // KV specs alone: the fp32 weights with each cache
    nets.push_back(std::make_unique<LlamaModel>(*model));
    labels.emplace_back("fp32");
  }
  if (!kvs.empty()) {  // a row per (weights, kv spec); the linears are shared, not re-quantized
    std::vector<std::unique_ptr<LlamaModel>> rows;
    std::vector<std::string> row_labels;
    for (size_t i = 0; i < nets.size(); ++i) {
      for (const KvSpec& k : kvs) {
        rows.push_back(std::make_unique<LlamaModel>(*nets[i]));
        if (Status st = rows.back()->set_kv_cache(k); !st.ok()) fail(kExitUsage, "--kv: " + st.message());
        row_labels.push_back(labels[i] + " + " + k.name);
      }
    }
    nets = std::move(rows);
    labels = std::move(row_labels);
  }
  // The model against itself (no row differs from the reference).
  const bool same = nets.empty() && a.ref.empty() && model->activations.kv_cache.empty() && !q8_rows;
  if (nets.empty() && !same) nets.push_back(std::make_unique<LlamaModel>(*model));
  if (labels.empty()) {
    labels.emplace_back(!model->activations.kv_cache.empty() ? "model + kv " + model->activations.kv_cache
                        : q8_rows                            ? "k-quant blocks, Q8_K activations"
                                                             : "fp32");
  }
  std::vector<const LlamaModel*> evaluated;
  for (const auto& n : nets) evaluated.push_back(n.get());
  if (same) evaluated.push_back(&reference);

  EvalOptions opt;
  opt.ctx = a.ctx;
  opt.stride = a.stride;
  opt.max_windows = a.max_windows;
  std::unique_ptr<Progress> progress;
  const std::string what = labels.size() == 1 ? labels.front() : fmt::format("{} models", labels.size());
  opt.on_window = [&](int64_t done, int64_t total) {
    if (done == 1) progress = std::make_unique<Progress>("eval " + what, total);
    progress->advance();
  };
  Result<std::vector<EvalResult>> results = evaluate_many(evaluated, reference, tokens, opt);
  if (progress) progress->finish();
  if (!results.ok()) fail(results.status());

  // Decode speed: greedy tokens after a prompt of --decode-ctx tokens (prefill untimed), one at a
  // time through the KV cache, for each model and the fp32 reference in the same run (alternating,
  // best of two each, so a noisy neighbour or a cold cache does not favour either).
  const int ctx_eff = std::min(a.ctx, model->config.seq_len);
  // A model with a short context (a tiny trained one) times fewer decode tokens rather than none.
  const int decode_tokens = std::max(1, std::min(a.decode_tokens, model->config.seq_len / 2));
  const int decode_ctx = std::min<int>({a.decode_ctx, static_cast<int>(tokens.size()), model->config.seq_len - decode_tokens});
  if (decode_ctx < 1) fail(kExitUsage, fmt::format("eval: --decode-ctx leaves no room for {} decode tokens", decode_tokens));
  const std::vector<int> prompt(tokens.begin(), tokens.begin() + decode_ctx);
  auto decode_speed = [&](const LlamaModel& m) {
    Result<double> r = decode_tokens_per_second(m, prompt, decode_tokens);
    if (!r.ok()) fail(r.status());
    return *r;
  };
  std::vector<double> decode_tok_s(evaluated.size(), 0.0);
  double ref_decode_tok_s = 0;
  for (int rep = 0; rep < 2; ++rep) {
    for (size_t i = 0; i < evaluated.size(); ++i) decode_tok_s[i] = std::max(decode_tok_s[i], decode_speed(*evaluated[i]));
    ref_decode_tok_s = same ? decode_tok_s.front() : std::max(ref_decode_tok_s, decode_speed(reference));
  }

  std::error_code ec;
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(model_weights_file(a.model), ec));
  const nlohmann::json inputs = {{"model", a.model},
                                 {"model_sha256", sha256_file(model_weights_file(a.model))},
                                 {"ref", a.ref.empty() ? a.model : a.ref},
                                 {"text", a.text},
                                 {"text_sha256", sha256_file(a.text)},
                                 {"tokenizer", tok_path},
                                 {"split", a.split},
                                 {"scheme", fmt::format("{}", fmt::join(a.schemes, ","))},
                                 {"weights", a.weights},
                                 {"acts", a.acts},
                                 {"ctx", std::min(a.ctx, model->config.seq_len)},
                                 {"stride", a.stride > 0 ? a.stride : std::min(a.ctx, model->config.seq_len) / 2},
                                 {"max_windows", a.max_windows},
                                 {"kv", fmt::format("{}", fmt::join(a.kv, ";"))},
                                 {"decode_ctx", decode_ctx}};
  nlohmann::json all = nlohmann::json::array();
  std::string rows, kv_rows;
  for (size_t i = 0; i < evaluated.size(); ++i) {
    const EvalResult& r = (*results)[i];
    const ModelSize size = model_size(*evaluated[i]);
    const double speedup = ref_decode_tok_s > 0 ? decode_tok_s[i] / ref_decode_tok_s : 0.0;
    const std::optional<KvSpec>& kv = evaluated[i]->kv_cache_spec();
    const LlamaConfig& cfg = evaluated[i]->config();
    const double kv_bytes = kv ? kv_bytes_per_token(*kv, cfg, ctx_eff) : 2.0 * cfg.n_layers * cfg.kv_dim() * sizeof(float);
    all.push_back({{"model", labels[i]},
                   {"ppl", r.ppl},
                   {"ref_ppl", r.ref_ppl},
                   {"delta_ppl", r.delta_ppl},
                   {"delta_ppl_se", r.delta_ppl_se},
                   {"kld_mean", r.kld_mean},
                   {"kld_p99", r.kld_p99},
                   {"kld_max", r.kld_max},
                   {"top1", r.top1},
                   {"bpw", size.bpw_total()},
                   {"bpw_weights", size.bpw_weights()},
                   {"size_bytes", size.total_bytes()},
                   {"linear_bytes", size.linear_bytes},
                   {"file_bytes", file_bytes},
                   {"prefill_tok_s", r.prefill_tok_s},
                   {"decode_tok_s", decode_tok_s[i]},
                   {"ref_prefill_tok_s", r.ref_prefill_tok_s},
                   {"ref_decode_tok_s", ref_decode_tok_s},
                   {"decode_speedup", speedup},
                   {"tokens_scored", r.tokens_scored},
                   {"windows", r.windows},
                   {"kv_spec", kv ? to_string(*kv) : "fp32"},
                   {"kv_bytes_per_token", kv_bytes},
                   {"kv_bits_per_value", kv ? kv_bits_per_value(*kv, cfg.head_dim()) : 32.0},
                   {"peak_rss_mib", peak_rss_mib()},
                   {"inputs", inputs}});
    rows += fmt::format("| {} | {:.4f} | {:.4f} | {:+.4f} ± {:.4f} | {:.6f} | {:.6f} | {:.2f}% | {:.3f} | {:.1f} KiB | {:.0f} | {:.1f} | {:.2f}x | {} | {:.0f} MiB |\n",
                        labels[i], r.ppl, r.ref_ppl, r.delta_ppl, r.delta_ppl_se, r.kld_mean, r.kld_p99, 100.0 * r.top1,
                        size.bpw_total(), static_cast<double>(size.total_bytes()) / 1024.0, r.prefill_tok_s,
                        decode_tok_s[i], speedup, r.tokens_scored, peak_rss_mib());
    if (!kvs.empty()) {
      kv_rows += fmt::format("| {} | {} | {:.2f} | {:.0f} | {:.6f} | {:.6f} | {:.2f}% | {:.1f} | {:.2f}x |\n", labels[i],
                             kv ? to_string(*kv) : "fp32", kv ? kv_bits_per_value(*kv, cfg.head_dim()) : 32.0, kv_bytes,
                             r.kld_mean, r.kld_p99, 100.0 * r.top1, decode_tok_s[i], speedup);
    }
  }
  if (!a.json.empty()) {
    const std::string text = (all.size() == 1 ? all.front() : all).dump(2) + "\n";
    if (Status s = write_file_atomic(a.json, text); !s.ok()) fail(s);
  }
  if (!a.plot.empty()) {
    const std::string svg = results->size() > 1
                                ? kld_curves_svg(*results, labels, fmt::format("lowbit eval: KLD by position vs fp32, ctx {}", ctx_eff))
                                : kld_curve_svg(results->front(), "lowbit eval: " + labels.front() + " vs fp32");
    if (Status s = write_file_atomic(a.plot, svg); !s.ok()) fail(s);
  }
  fmt::print("| model | PPL | ref PPL | ΔPPL ± SE | KLD mean | KLD p99 | top-1 | bpw | size | prefill tok/s | decode tok/s | decode vs fp32 | tokens | peak RSS |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  fmt::print("{}", rows);
  fmt::print("\nfp32 reference in the same run: prefill {:.0f} tok/s, decode {:.1f} tok/s\n",
             results->front().ref_prefill_tok_s, ref_decode_tok_s);
  if (!kvs.empty()) {
    fmt::print("\nKV cache (bytes per token at ctx {} over all layers, keys + values, window included; fp32 cache {:.0f}; "
               "decode after {} tokens):\n",
               ctx_eff, 2.0 * model->config.n_layers * model->config.kv_dim() * sizeof(float), decode_ctx);
    fmt::print("| model | kv spec | bits/value | KV bytes/token | KLD mean | KLD p99 | top-1 | decode tok/s | decode vs fp32 |\n");
    fmt::print("|---|---|---:|---:|---:|---:|---:|---:|---:|\n{}", kv_rows);
  }
}

}  // namespace
void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Measure a (quantized) model against the fp32 reference: PPL, KLD, top-1, size, speed");
  cmd->add_option("--model", a->model, "Checkpoint to evaluate")->required();
  cmd->add_option("--scheme", a->schemes,
                  "Quantize the model in memory with named schemes (see `lowbit schemes`); several (S1,S2 or repeated) "
                  "share one reference pass, a row each")
      ->delimiter(',')
      ->check(non_empty());
  cmd->add_option("--weights", a->weights, "Quantize linear weights with this QuantSpec (e.g. int4:g32:sym:fp16)")->check(non_empty());
  cmd->add_option("--acts", a->acts, "Fake-quantize linear inputs with this QuantSpec (dynamic), with --weights")->check(non_empty());
  cmd->add_option("--ref", a->ref, "Reference checkpoint (default: --model in fp32)");
  cmd->add_option("--text", a->text, "UTF-8 text to score (stories separated by blank lines)")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: the one beside the model)");
  cmd->add_option("--split", a->split, "all | calib (first 10% of stories) | eval (the other 90%)")->default_val("all");
  cmd->add_option("--ctx", a->ctx, "Window length in tokens")->default_val(128);
  cmd->add_option("--stride", a->stride, "Window stride (default ctx/2: every token scored once)");
  cmd->add_option("--max-windows", a->max_windows, "Score at most this many windows (0: all)")->default_val(0);
  cmd->add_option("--kv", a->kv,
                  "Quantized KV cache spec(s): kv-int8 kv-int8-g32 kv-int4-g32 kv-int4-g32-sym kv-int4-g64 kv-int4-kivi kv-e4m3 "
                  "kv-e5m2 kv-e4m3-tensor kv-e5m2-tensor, or k=SPEC,v=SPEC[,residual=R][,block=B][,prerope]; several "
                  "(repeat, or separate with ';') share one reference pass, a row each")
      ->delimiter(';');
  cmd->add_option("--decode-ctx", a->decode_ctx, "Tokens of context before the timed decode steps")->default_val(8);
  add_ggml_acts_option(cmd, &a->ggml_acts, "f32");
  cmd->add_option("--json", a->json, "Write every figure and the exact inputs as JSON");
  cmd->add_option("--plot", a->plot, "Write an SVG of mean KLD by position");
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace lowbit::cli
