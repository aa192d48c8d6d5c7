// lowbit train (--model M | --init dim=..,layers=..,heads=..,kv-heads=..,hidden=..,vocab-from=TOK | --resume DIR)
//              --data FILE [--recipe R | --compare R1,R2,...] [--steps N] [--batch B] [--ctx T] [--lr LR]
//              [--warmup W] [--accum K] [--clip C] [--loss-scale S|dynamic] [--seed S] [--eval-every N]
//              [--val-windows N] [--until N] [--save-every N] [-o OUT] [--log FILE.jsonl] [--json FILE]
//              [--plot FILE.svg] [--dry-run]
// Trains a Llama on the stories of FILE (first 10% skipped: PTQ calibration text; last 10%
// validation) under a precision recipe; writes a checkpoint eval/generate/quantize load and
// `train --resume` continues bit-exactly. --compare trains each recipe from the same seed and data.
#include <malloc.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/progress.h"
#include "lowbit/tokenizer.h"
#include "lowbit/train.h"

namespace lowbit::cli {
namespace {

struct TrainArgs {
  std::string model, init, resume, data, recipe = "fp32", compare, out, log, json, plot, tokenizer, loss_scale = "1";
  int64_t steps = 100, warmup = -1, eval_every = 0, until = 0, save_every = 0;
  int batch = 8, ctx = 128, accum = 1, val_windows = 16;
  float lr = 1e-3f, clip = 1.0f, weight_decay = 0.1f;
  uint64_t seed = 1;
  bool bf16_moments = false, dry_run = false;
};

// --init "dim=64,layers=2,heads=4,kv-heads=2,hidden=172,vocab-from=tok512.bin" (seq= optional: --ctx).
LlamaConfig parse_init(const std::string& text, int ctx, std::string* tokenizer) {
  LlamaConfig c;
  c.seq_len = ctx;
  c.shared_classifier = true;
  std::istringstream in(text);
  for (std::string kv; std::getline(in, kv, ',');) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) fail(kExitUsage, fmt::format("--init: '{}' is not key=value", kv));
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    if (k == "vocab-from") {
      *tokenizer = v;
      continue;
    }
    if (k == "tied") {
      if (v != "0" && v != "1") fail(kExitUsage, fmt::format("--init: tied={}: expected 0 or 1", v));
      c.shared_classifier = v == "1";
      continue;
    }
    int* dst = k == "dim" ? &c.dim : k == "layers" ? &c.n_layers : k == "heads" ? &c.n_heads : k == "kv-heads" ? &c.n_kv_heads
             : k == "hidden" ? &c.hidden_dim : k == "seq" ? &c.seq_len : nullptr;
    if (!dst) fail(kExitUsage, fmt::format("--init: unknown key '{}' (dim, layers, heads, kv-heads, hidden, vocab-from, seq, tied)", k));
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || x <= 0 || x > (1 << 20)) fail(kExitUsage, fmt::format("--init: {}={}: expected a positive integer", k, v));
    *dst = static_cast<int>(x);
  }
  if (c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
  for (auto [name, v] : {std::pair<const char*, int>{"dim", c.dim}, {"layers", c.n_layers}, {"heads", c.n_heads}, {"hidden", c.hidden_dim}}) {
    if (v == 0) fail(kExitUsage, fmt::format("--init: {}= is missing", name));
  }
  if (tokenizer->empty()) fail(kExitUsage, "--init: vocab-from=TOKENIZER is missing");
  return c;
}

std::vector<int> tokenize(const Tokenizer& tok, const std::vector<std::string>& stories) {
  const bool bos = tok.add_bos();  // as tokenize_stories: BOS per story, else the blank line that ends it
  std::vector<int> out;
  for (const std::string& s : stories) {
    Result<std::vector<int>> ids = tok.encode(bos ? s : s + "\n\n", bos, false);
    if (!ids.ok()) fail(ids.status());
    out.insert(out.end(), ids->begin(), ids->end());
  }
  return out;
}

struct RunSummary {
  std::string recipe;
  double final_train = NAN, final_val = NAN, tok_s = 0, peak_rss = 0;
  bool rss_per_recipe = false;  // peak_rss is this recipe's (reset before it), else the process's
  int64_t steps = 0, tokens = 0, skipped = 0, cached_bytes_per_token = 0, saved_bytes_per_token = 0;
  LossCurve curve;
};

// Peak RSS per recipe: before each recipe the freed heap goes back to the OS (malloc_trim) and the
// kernel's high-water mark is reset to the current RSS (/proc/self/clear_refs "5", Linux >= 4.0);
// after it VmHWM is that recipe's peak, counting what the process holds across recipes (the text,
// its tokens, the tokenizer). Where the reset is refused the figure is the process's peak so far
// and peak_rss_scope says "process".
bool reset_peak_rss() {
  ::malloc_trim(0);
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

double vm_hwm_mib() {
  Result<std::string> st = read_file("/proc/self/status");
  if (st.ok()) {
    const size_t p = st->find("VmHWM:");
    if (p != std::string::npos) return std::strtod(st->c_str() + p + 6, nullptr) / 1024.0;  // kB
  }
  return peak_rss_mib();
}

bool progress_on() {
  const char* e = std::getenv("LOWBIT_NO_PROGRESS");
  return stderr_is_tty() && (e == nullptr || *e == '\0');
}

RunSummary run_one(const TrainArgs& a, const TrainRecipe& recipe, const std::optional<LlamaConfig>& init, const Model* base,
                   const std::vector<int>& train_tok, const std::vector<int>& val_tok, const std::string& tok_path,
                   const std::string& out, AtomicFile* log) {
  const bool rss_reset = reset_peak_rss();
  Result<TrainModel> tm = init ? TrainModel::init(*init, a.seed, recipe) : TrainModel::from_model(*base, recipe);
  if (!tm.ok()) fail(tm.status());
  TrainOptions o;
  o.steps = a.steps;
  o.batch = a.batch;
  o.ctx = a.ctx;
  o.accum = a.accum;
  o.lr = a.lr;
  o.warmup = a.warmup >= 0 ? a.warmup : std::min<int64_t>(100, a.steps / 10);
  o.clip = a.clip;
  o.weight_decay = a.weight_decay;
  o.bf16_moments = a.bf16_moments;
  o.seed = a.seed;
  o.val_windows = a.val_windows;
  if (a.loss_scale == "dynamic") {
    o.loss_scale = {.dynamic = true, .scale = 65536.0f};
  } else {
    o.loss_scale.scale = parse_float_arg(a.loss_scale, "--loss-scale");
  }
  Result<Trainer> tr = Trainer::create(std::move(*tm), o, train_tok, val_tok);
  if (!tr.ok()) fail(tr.status());
  if (!a.resume.empty()) {
    if (Status s = load_train_state(*tr, a.resume); !s.ok()) fail(s);
  }
  RunSummary sum;
  sum.recipe = recipe.name;
  sum.curve.recipe = recipe.name;
  const int64_t last = a.until > 0 ? std::min(a.until, a.steps) : a.steps;
  const int64_t eval_every = a.eval_every > 0 ? a.eval_every : std::max<int64_t>(1, a.steps / 10);
  const bool show = progress_on();
  std::vector<double> losses;
  double secs = 0;
  int64_t tokens_run = 0;
  auto write_log = [&](const nlohmann::json& j) {
    if (!log) return;
    if (Status s = log->write(j.dump() + "\n"); !s.ok()) fail(s);
  };
  while (tr->steps_done() < last) {
    const auto t0 = std::chrono::steady_clock::now();
    Result<TrainLogEntry> e = tr->step();
    secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!e.ok()) {
      if (show) std::fputs("\n", stderr);
      if (log) (void)log->commit();  // the log up to the failure is what explains it
      fail(kExitFailure, fmt::format("train ({}): {}; the last checkpoint{} is intact", recipe.name, e.status().message(),
                                     out.empty() ? "" : " in " + out));
    }
    tokens_run += int64_t{a.batch} * a.ctx * a.accum;
    // Bytes per token of what a training micro-batch saves (before a validation forward of another
    // batch size replaces them).
    const int64_t toks = int64_t{a.batch} * a.ctx;
    sum.cached_bytes_per_token = tr->model().cached_linear_input_bytes() / toks;
    sum.saved_bytes_per_token = tr->model().saved_activation_bytes() / toks;
    losses.push_back(e->loss);
    sum.curve.train.emplace_back(e->step, e->loss);
    nlohmann::json j = {{"recipe", recipe.name}, {"step", e->step}, {"loss", json_value(e->loss)}, {"lr", e->lr},
                        {"grad_norm", json_value(e->grad_norm)}, {"loss_scale", e->loss_scale}, {"skipped", e->skipped},
                        {"skipped_steps", e->skipped_total}, {"tokens", e->tokens}, {"tok_s", tokens_run / std::max(secs, 1e-9)}};
    if (e->step % eval_every == 0 || e->step == last) {
      Result<double> v = tr->validation_loss();
      if (!v.ok()) fail(v.status());
      sum.final_val = *v;
      sum.curve.val.emplace_back(e->step, *v);
      j["val_loss"] = json_value(*v);
    }
    write_log(j);
    if (show) {
      fmt::print(stderr, "\rtrain {} step {}/{} loss {:.4f} val {:.4f} lr {:.2e} {:.0f} tok/s{}   ", recipe.name, e->step, last,
                 e->loss, sum.final_val, e->lr, tokens_run / std::max(secs, 1e-9), e->skipped ? " (skipped: overflow)" : "");
    }
    if (!out.empty() && a.save_every > 0 && e->step % a.save_every == 0 && e->step != last) {
      if (Status s = save_checkpoint(*tr, out, tok_path); !s.ok()) fail(s);
    }
  }
  if (show) std::fputs("\n", stderr);
  if (!out.empty()) {
    if (Status s = save_checkpoint(*tr, out, tok_path); !s.ok()) fail(s);
  }
  // The final training loss: the mean over the last 10% of this run's steps (at least one).
  const size_t tail = std::max<size_t>(1, losses.size() / 10);
  double acc = 0;
  for (size_t i = losses.size() - std::min(tail, losses.size()); i < losses.size(); ++i) acc += losses[i];
  sum.final_train = losses.empty() ? NAN : acc / static_cast<double>(std::min(tail, losses.size()));
  sum.steps = tr->steps_done();
  sum.tokens = tokens_run;
  sum.tok_s = tokens_run / std::max(secs, 1e-9);
  sum.skipped = tr->optimizer().skipped_steps();
  sum.peak_rss = vm_hwm_mib();
  sum.rss_per_recipe = rss_reset;
  return sum;
}

void run_train(const TrainArgs& a) {
  const int sources = !a.model.empty() + !a.init.empty() + !a.resume.empty();
  if (sources != 1) fail(kExitUsage, "train: give exactly one of --model, --init and --resume");
  if (a.data.empty()) fail(kExitUsage, "train: --data FILE is required");
  if (a.steps < 1) fail(kExitUsage, fmt::format("train: --steps {}: expected >= 1", a.steps));
  if (a.batch < 1 || a.ctx < 2 || a.accum < 1) fail(kExitUsage, "train: --batch and --accum must be >= 1, --ctx >= 2");
  std::vector<TrainRecipe> recipes;
  {
    std::vector<std::string> names;
    if (a.compare.empty()) {
      names.push_back(a.recipe);
    } else {
      std::istringstream in(a.compare);
      for (std::string r; std::getline(in, r, ',');) names.push_back(r);
      if (!a.resume.empty()) fail(kExitUsage, "train: --compare trains from scratch or --model; it cannot --resume");
    }
    for (const std::string& n : names) {
      Result<TrainRecipe> r = find_recipe(n);
      if (!r.ok()) fail(kExitUsage, r.status().message());
      recipes.push_back(*r);
    }
  }
  // The model and its tokenizer.
  std::optional<LlamaConfig> init;
  std::optional<Model> base;
  std::string tok_path = a.tokenizer;
  if (!a.init.empty()) {
    std::string from;
    init = parse_init(a.init, a.ctx, &from);
    if (tok_path.empty()) tok_path = from;
    Result<std::unique_ptr<Tokenizer>> t = load_tokenizer(tok_path);
    if (!t.ok()) fail(t.status());
    init->vocab_size = (*t)->vocab_size();
  } else {
    const std::string& path = a.model.empty() ? a.resume : a.model;
    Result<Model> m = load_model(path);
    if (!m.ok()) fail(m.status());
    base = std::move(*m);
    if (tok_path.empty()) tok_path = find_tokenizer(path, base->config.vocab_size, "train");
  }
  // Outputs, before any of them is written: never a special file, a symlink or an input (issue 21).
  // -o may name the --resume folder (the run continues there, rewriting the tokenizer found in it).
  const std::vector<NamedPath> inputs = {{"--model", a.model}, {"--data", a.data},
                                         {"--tokenizer", a.resume.empty() ? tok_path : a.tokenizer}};
  check_output("-o", a.out, inputs, /*folder_ok=*/true);
  std::vector<NamedPath> file_clashes = inputs;
  file_clashes.push_back({"--resume", a.resume});
  file_clashes.push_back({"-o", a.out});
  for (const auto& [flag, path] : {std::pair<std::string_view, const std::string&>{"--log", a.log}, {"--json", a.json}, {"--plot", a.plot}}) {
    check_output(flag, path, file_clashes);
    file_clashes.push_back({flag, path});
  }
  const LlamaConfig cfg = init ? *init : base->config;
  if (init) {
    Result<TrainModel> probe = TrainModel::init(cfg, a.seed, recipes[0]);  // shapes checked before reading data
    if (!probe.ok()) fail(kExitUsage, probe.status().message());
  }
  if (a.ctx > cfg.seq_len) fail(kExitUsage, fmt::format("train: --ctx {} exceeds the model's context {}", a.ctx, cfg.seq_len));
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, cfg.vocab_size);
  if (!tok.ok()) fail(tok.status());
  Result<std::vector<std::string>> stories = load_stories(a.data, "all");
  if (!stories.ok()) fail(stories.status());
  Result<StorySplit> split = split_stories_for_training(*stories, a.data);
  if (!split.ok()) fail(split.status());
  const std::vector<int> train_tok = tokenize(**tok, split->train), val_tok = tokenize(**tok, split->val);

  const int64_t params = [&] {
    Result<TrainModel> m = TrainModel::init(cfg, a.seed, recipes[0]);
    return m.ok() ? m->num_params() : 0;
  }();
  if (a.dry_run) {
    fmt::print("model: dim {} layers {} heads {} kv-heads {} hidden {} vocab {} ({} parameters, {})\n", cfg.dim, cfg.n_layers,
               cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size, params,
               init ? "from scratch, seed " + std::to_string(a.seed) : "from " + (a.model.empty() ? a.resume : a.model));
    fmt::print("data: {} stories: {} train ({} tokens), {} validation ({} tokens); the first 10% skipped (calibration text)\n",
               stories->size(), split->train.size(), train_tok.size(), split->val.size(), val_tok.size());
    fmt::print("steps {} x {} micro-batch(es) of {} x {} tokens; lr {} (warm-up then cosine), clip {}, loss scale {}\n", a.steps,
               a.accum, a.batch, a.ctx, a.lr, a.clip, a.loss_scale);
    for (const TrainRecipe& r : recipes) fmt::print("{}", describe_recipe(r));
    return;
  }

  std::optional<AtomicFile> log;
  if (!a.log.empty()) {
    Result<AtomicFile> f = AtomicFile::create(a.log);
    if (!f.ok()) fail(f.status());
    log.emplace(std::move(*f));
  }
  std::vector<RunSummary> runs;
  for (const TrainRecipe& r : recipes) {
    std::string out = a.out;
    if (!out.empty() && recipes.size() > 1) out = (std::filesystem::path(a.out) / r.name).string();
    if (!out.empty() && recipes.size() > 1) std::filesystem::create_directories(a.out);
    if (!a.resume.empty() && out.empty()) out = a.resume;
    runs.push_back(run_one(a, r, init, base ? &*base : nullptr, train_tok, val_tok, tok_path, out, log ? &*log : nullptr));
  }
  if (log) {
    if (Status s = log->commit(); !s.ok()) fail(s);
  }
  const double ref_val = runs[0].final_val, ref_train = runs[0].final_train;
  fmt::print("| recipe | steps | tokens | final train loss | Δ vs {} | final val loss | Δ vs {} | tok/s | peak RSS MiB | cached GEMM inputs B/token | saved activations B/token |\n",
             runs[0].recipe, runs[0].recipe);
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const RunSummary& s : runs) {
    fmt::print("| {} | {} | {} | {:.4f} | {:+.2f}% | {:.4f} | {:+.2f}% | {:.0f} | {:.0f} | {} | {} |\n", s.recipe, s.steps, s.tokens,
               s.final_train, 100.0 * (s.final_train - ref_train) / ref_train, s.final_val, 100.0 * (s.final_val - ref_val) / ref_val,
               s.tok_s, s.peak_rss, s.cached_bytes_per_token, s.saved_bytes_per_token);
  }
  if (!a.json.empty()) {
    nlohmann::json j = nlohmann::json::array();
    for (const RunSummary& s : runs) {
      j.push_back({{"recipe", s.recipe}, {"final_train_loss", json_value(s.final_train)}, {"final_val_loss", json_value(s.final_val)},
                   {"tokens_per_s", s.tok_s}, {"peak_rss_mib", s.peak_rss},
                   {"peak_rss_scope", s.rss_per_recipe ? "recipe" : "process"}, {"steps", s.steps}, {"tokens", s.tokens},
                   {"skipped_steps", s.skipped}, {"cached_linear_input_bytes_per_token", s.cached_bytes_per_token},
                   {"saved_activation_bytes_per_token", s.saved_bytes_per_token}, {"parameters", params}});
    }
    if (Status s = write_file_atomic(a.json, j.dump(2) + "\n"); !s.ok()) fail(s);
  }
  if (!a.plot.empty()) {
    std::vector<LossCurve> curves;
    for (const RunSummary& s : runs) curves.push_back(s.curve);
    if (Status s = write_file_atomic(a.plot, loss_curves_svg(curves, fmt::format("lowbit train: {} ({} parameters)", a.data, params))); !s.ok()) fail(s);
  }
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a Llama in fp32, bf16 or FP8 (recipes: fp32 bf16 fp8-tensor-delayed fp8-blockwise fp8-seed)");
  cmd->add_option("--model", a->model, "Continue from this checkpoint (llama2.c .bin, GGUF, safetensors folder)");
  cmd->add_option("--init", a->init, "From scratch: dim=..,layers=..,heads=..,kv-heads=..,hidden=..,vocab-from=TOKENIZER[,seq=..][,tied=0|1]");
  cmd->add_option("--resume", a->resume, "Continue a run lowbit train saved (-o OUT of that run); pass the same flags");
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: vocab-from, or the one beside --model)");
  cmd->add_option("--data", a->data, "UTF-8 stories separated by blank lines: 10%-90% train, last 10% validation");
  cmd->add_option("--recipe", a->recipe, "Precision recipe")->default_val("fp32");
  cmd->add_option("--compare", a->compare, "Train each recipe (comma-separated) from the same seed and data; a table, --plot SVG");
  cmd->add_option("--steps", a->steps, "Optimizer steps (the LR schedule spans them)")->default_val(100);
  cmd->add_option("--until", a->until, "Stop after this step (the schedule still spans --steps); 0: --steps");
  cmd->add_option("--batch", a->batch, "Windows per micro-batch")->default_val(8);
  cmd->add_option("--ctx", a->ctx, "Tokens per window")->default_val(128);
  cmd->add_option("--accum", a->accum, "Micro-batches per step (gradient accumulation)")->default_val(1);
  cmd->add_option("--lr", a->lr, "Peak learning rate")->default_val(1e-3f);
  cmd->add_option("--warmup", a->warmup, "Warm-up steps (default: min(100, steps/10))");
  cmd->add_option("--clip", a->clip, "Global gradient-norm clip; 0: none")->default_val(1.0f);
  cmd->add_option("--weight-decay", a->weight_decay, "AdamW decoupled weight decay (matrices only)")->default_val(0.1f);
  cmd->add_flag("--bf16-moments", a->bf16_moments, "Keep AdamW moments in BF16 (DeepSeek-V3)");
  cmd->add_option("--loss-scale", a->loss_scale, "Static loss scale (e.g. 1024) or 'dynamic' (skip-on-overflow, halve)")->default_val("1");
  cmd->add_option("--seed", a->seed, "Seed of initialisation and batch order")->default_val(1);
  cmd->add_option("--eval-every", a->eval_every, "Validation loss every N steps (default: steps/10)");
  cmd->add_option("--val-windows", a->val_windows, "Validation windows of --ctx tokens")->default_val(16);
  cmd->add_option("--save-every", a->save_every, "Also write the checkpoint every N steps");
  cmd->add_option("-o,--out", a->out, "Checkpoint folder (safetensors + tokenizer + train_state.bin); with --compare one per recipe");
  cmd->add_option("--log", a->log, "JSON lines, one per step");
  cmd->add_option("--json", a->json, "Summary per recipe: final_train_loss, final_val_loss, tokens_per_s, peak_rss_mib, ...");
  cmd->add_option("--plot", a->plot, "SVG of training and validation loss curves");
  cmd->add_flag("--dry-run", a->dry_run, "Print the model, data split and what runs in which format; train nothing");
  cmd->callback([a] { run_train(*a); });
}

}  // namespace lowbit::cli
