// lowbit bench model --model M [--scheme S] [--kv SPEC ...] [--prefill N] [--decode N] [--llamacpp-python PY]
//                    [--llama-bench BIN] [--limits] [--json out.json]
// Prefill and decode tokens/s of one model: lowbit fp32, lowbit quantized in memory with a named
// scheme, and — when --llamacpp-python names a Python with llama_cpp installed — llama.cpp on the
// same file (a GGUF) in a subprocess, with the same token ids and thread count; --llama-bench times
// the file with llama.cpp's own llama-bench instead (its prompt ids). A GGUF of k-quants (Q4_K/Q6_K)
// runs as stored, with Q8_K activations (llama.cpp's integer path) and with fp32 ones, and has no
// quantized row. --limits measures DRAM read bandwidth in the same run and
// prints the decode bound (bandwidth ÷ bytes one token reads). Peak RSS of the lowbit process is
// reported (getrusage). Without llama_cpp the peer row says "not measured".
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/file.h"
#include "lowbit/kv_cache.h"
#include "lowbit/llama.h"
#include "lowbit/parallel.h"
#include "lowbit/rtn.h"
#include "kernel_harness.h"

namespace lowbit::cli {
namespace {

struct BenchModelArgs {
  std::string model, scheme = "w4a16-g128", llamacpp_python, llama_bench, json;
  bool limits = false;
  std::vector<std::string> kv;
  int prefill = 128, decode = 32;
};

struct Speed {
  std::string name;
  std::optional<double> prefill_tok_s, decode_tok_s;
  std::string note;
};

// Token ids spread over the vocab, the same for every engine (no tokenizer involved).
std::vector<int> bench_tokens(int n, int vocab) {
  std::vector<int> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int>((1000003LL * (i + 1) + 17) % vocab);
  return ids;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One prefill of `ids`, then `decode` single-token steps through the KV cache (greedy).
Speed measure_lowbit(const std::string& name, const LlamaModel& net, const std::vector<int>& ids, int decode) {
  Session warm(net, 8);
  std::vector<float> logits;
  if (Status s = warm.forward(std::span<const int>(ids.data(), 4), 0, &logits, false); !s.ok()) fail(s);

  Session s(net, static_cast<int>(ids.size()) + decode + 1);
  auto t0 = std::chrono::steady_clock::now();
  if (Status st = s.forward(ids, 0, &logits, /*all_logits=*/false); !st.ok()) fail(st);
  const double prefill_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  int pos = static_cast<int>(ids.size());
  for (int i = 0; i < decode; ++i) {
    const int next[1] = {static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    if (Status st = s.forward(next, pos++, &logits, false); !st.ok()) fail(st);
  }
  const double decode_s = seconds_since(t0);
  Speed r{name, {}, {}, ""};
  r.prefill_tok_s = static_cast<double>(ids.size()) / prefill_s;
  if (decode > 0) r.decode_tok_s = decode / decode_s;
  return r;
}

// Decode in steps of kPairStep tokens, each right after one DRAM read pass, so every step's
// speed is judged against the bandwidth of the same second (the machine's share of DRAM can move
// by 2x within a run on a shared host). Ratio per step: tok/s ÷ (GB/s ÷ bytes per token).
constexpr int kPairStep = 4;
struct Paired {
  std::vector<double> ratio, gbs, tok_s;
};
// Paired decode steps: a token at position p reads the weights (per_token bytes) and p + 1 rows of
// the KV cache (kv_per_position bytes each), so the bound of a step counts both.
Paired measure_paired(const LlamaModel& net, const std::vector<int>& ids, int decode, double per_token, double kv_per_position) {
  Paired p;
  if (decode < kPairStep) return p;
  bench::DramProbe probe;
  Session s(net, static_cast<int>(ids.size()) + decode + 1);
  std::vector<float> logits;
  if (Status st = s.forward(ids, 0, &logits, false); !st.ok()) fail(st);
  int pos = static_cast<int>(ids.size());
  for (int r = 0; r < decode / kPairStep; ++r) {
    const double gbs = probe.read_gbs();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kPairStep; ++i) {
      const int next[1] = {static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
      if (Status st = s.forward(next, pos++, &logits, false); !st.ok()) fail(st);
    }
    const double tok_s = kPairStep / seconds_since(t0);
    if (gbs <= 0) continue;
    const double bytes = per_token + kv_per_position * (pos - kPairStep + (kPairStep + 1) / 2.0);  // the step's mean context
    p.gbs.push_back(gbs);
    p.tok_s.push_back(tok_s);
    p.ratio.push_back(tok_s / (gbs * 1e9 / bytes));
  }
  return p;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// llama.cpp through llama-cpp-python: the same ids, thread count and context; prints one JSON line.
constexpr const char* kLlamaCppScript = R"PY(
import json, sys, time
import numpy as np
from llama_cpp import Llama
path, threads, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = [int(t) for t in sys.argv[4].split(",")]
llm = Llama(model_path=path, n_ctx=len(ids) + decode + 8, n_batch=max(512, len(ids)), n_threads=threads,
            n_threads_batch=threads, logits_all=False, verbose=False)
llm.eval(ids[:4]); llm.reset()
t0 = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(decode):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
dec = time.perf_counter() - t0
import llama_cpp
print(json.dumps({"prefill_tok_s": len(ids) / prefill, "decode_tok_s": decode / dec if decode else None,
                  "version": getattr(llama_cpp, "__version__", "?")}))
)PY";

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Speed measure_llamacpp(const BenchModelArgs& a, const std::vector<int>& ids) {
  Speed r{"llama.cpp (llama-cpp-python)", {}, {}, ""};
  if (a.llamacpp_python.empty()) {
    r.note = "not measured (pass --llamacpp-python PY)";
    return r;
  }
  const std::filesystem::path script =
      std::filesystem::temp_directory_path() / fmt::format("lowbit_bench_llamacpp_{}.py", ::getpid());
  if (Status s = write_file_atomic(script.string(), kLlamaCppScript); !s.ok()) fail(s);
  std::string id_list;
  for (size_t i = 0; i < ids.size(); ++i) id_list += (i ? "," : "") + std::to_string(ids[i]);
  const std::string cmd = fmt::format("{} {} {} {} {} {}", shell_quote(a.llamacpp_python), shell_quote(script.string()),
                                      shell_quote(a.model), num_threads(), a.decode, id_list);
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p != nullptr) {
    char buf[4096];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  }
  const int rc = p != nullptr ? pclose(p) : -1;
  std::filesystem::remove(script);
  if (rc != 0) {
    r.note = fmt::format("not measured ({} could not run llama_cpp, status {})", a.llamacpp_python, rc);
    return r;
  }
  try {
    const auto j = nlohmann::json::parse(out.substr(out.rfind('{')));
    r.prefill_tok_s = j.at("prefill_tok_s").get<double>();
    if (!j.at("decode_tok_s").is_null()) r.decode_tok_s = j.at("decode_tok_s").get<double>();
    r.note = "llama_cpp " + j.value("version", std::string("?"));
  } catch (const std::exception&) {
    r.note = "not measured (unreadable output from the llama_cpp script)";
  }
  return r;
}

// llama.cpp's own llama-bench on the same file: -p prefill and -n decode at this thread count, 3
// repetitions (its mean). Its prompt is its own token ids, not ours (llama-bench takes no ids).
Speed measure_llama_bench(const BenchModelArgs& a) {
  Speed r{"llama.cpp (llama-bench)", {}, {}, ""};
  const std::string cmd = fmt::format("{} -m {} -t {} -p {} -n {} -r 3 -o json 2>/dev/null", shell_quote(a.llama_bench),
                                      shell_quote(a.model), num_threads(), a.prefill, a.decode);
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p != nullptr) {
    char buf[4096];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  }
  const int rc = p != nullptr ? pclose(p) : -1;
  if (rc != 0) {
    r.note = fmt::format("not measured ({} exited with status {})", a.llama_bench, rc);
    return r;
  }
  try {
    for (const auto& row : nlohmann::json::parse(out.substr(out.find('[')))) {
      const double ts = row.at("avg_ts").get<double>();
      if (row.at("n_prompt").get<int>() > 0) r.prefill_tok_s = ts;
      if (row.at("n_gen").get<int>() > 0) r.decode_tok_s = ts;
      r.note = fmt::format("build {} {}", row.value("build_commit", std::string("?")), row.value("model_type", std::string()));
    }
  } catch (const std::exception&) {
    r.note = "not measured (unreadable llama-bench output)";
  }
  return r;
}

// Bytes one decode step reads from memory besides the KV cache: every linear and the classifier
// whole (in their stored form), one embedding row, the norms and biases.
double weight_bytes_per_token(const LlamaModel& net) {
  const LlamaConfig& c = net.config();
  const auto bytes = [](const Linear& l) -> double {
    if (const GgmlMatrix* g = l.ggml()) return static_cast<double>(g->bytes());
    if (const QuantizedTensor* q = l.quant()) return static_cast<double>(q->storage_bytes());
    return 4.0 * static_cast<double>(l.out_features() * l.in_features());
  };
  double b = bytes(net.classifier()) + 4.0 * c.dim * (2.0 * c.n_layers + 2);
  if (c.qkv_bias) b += 4.0 * c.n_layers * (c.dim + 2 * c.kv_dim());
  for (const LayerLinears& ll : net.layers()) {
    for (LinearSlot s : kLinearSlots) b += bytes(ll.at(s));
  }
  return b;
}

// And the fp32 KV cache's bytes per position: a step at position p reads p + 1 of them (keys and
// values of every layer).
double kv_bytes_per_position(const LlamaConfig& c) { return 2.0 * c.n_layers * c.kv_dim() * sizeof(float); }

void run_bench_model(const BenchModelArgs& a) {
  if (a.prefill < 4) fail(kExitUsage, fmt::format("bench model: --prefill must be >= 4 (got {})", a.prefill));
  if (a.decode < 0) fail(kExitUsage, fmt::format("bench model: --decode must be >= 0 (got {})", a.decode));
  check_output("--json", a.json, {{"--model", a.model}});
  Result<Scheme> scheme = find_scheme(a.scheme);
  if (!scheme.ok()) fail(kExitUsage, "--scheme: " + scheme.status().message());
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const LlamaConfig& c = model->config;
  check_range("bench model --prefill", a.prefill, 4, c.seq_len - 1);
  check_range("bench model --decode", a.decode, 0, c.seq_len - 1 - a.prefill);
  if (a.prefill + a.decode + 1 > c.seq_len) {
    fail(kExitUsage, fmt::format("bench model: --prefill {} + --decode {} exceed the model's context {}", a.prefill,
                                 a.decode, c.seq_len));
  }
  const std::vector<int> ids = bench_tokens(a.prefill, c.vocab_size);

  std::vector<Speed> rows;
  // A GGUF with k-quant tensors runs from its blocks (no fp32 weights exist to re-quantize).
  const bool stored = !model->ggml.empty();
  double per_token = 0;
  if (stored) {  // k-quant blocks with Q8_K activations (llama.cpp's path; the first row), then with fp32 ones
    for (GgmlActs acts : {GgmlActs::kQ8K, GgmlActs::kF32}) {
      model->activations.ggml = acts;
      LlamaModel net(*model);
      per_token = weight_bytes_per_token(net);
      rows.push_back(measure_lowbit(fmt::format("lowbit (k-quant blocks as stored, {} activations)",
                                                acts == GgmlActs::kQ8K ? "Q8_K" : "fp32"),
                                    net, ids, a.decode));
      rows.back().note = net.layers().front().wq.kernel();
    }
    model->activations.ggml = GgmlActs::kQ8K;  // what --kv rows below run
  } else {
    LlamaModel net(*model);
    per_token = weight_bytes_per_token(net);
    rows.push_back(measure_lowbit("lowbit fp32", net, ids, a.decode));
  }
  if (!stored) {
    LlamaModel net(*model);
    if (Status s = apply_scheme(net, *scheme); !s.ok()) fail(s);
    rows.push_back(measure_lowbit("lowbit " + a.scheme, net, ids, a.decode));
  }
  // Quantized KV caches: the fp32 and the scheme's weights with each spec (decode at the end of
  // the prefill reads the whole cache: the long-context cost the quantized cache cuts).
  for (const std::string& text : a.kv) {
    Result<KvSpec> kv = parse_kv_spec(text);
    if (!kv.ok()) fail(kExitUsage, "--kv: " + kv.status().message());
    const std::string bytes = fmt::format("KV {:.0f} B/token (fp32 cache {})", kv_bytes_per_token(*kv, c, a.prefill + a.decode + 1),
                                          2 * c.n_layers * c.kv_dim() * 4);
    for (bool quantized : {false, true}) {
      LlamaModel net(*model);
      if (quantized) {
        if (Status s = apply_scheme(net, *scheme); !s.ok()) fail(s);
      }
      if (Status s = net.set_kv_cache(*kv); !s.ok()) fail(kExitUsage, "--kv: " + s.message());
      rows.push_back(measure_lowbit(fmt::format("lowbit {} + {}", quantized ? a.scheme : "fp32", kv->name), net, ids, a.decode));
      rows.back().note = bytes;
    }
  }
  const double rss = peak_rss_mib();  // before the subprocess and the bandwidth buffer: lowbit's own
  if (!a.llamacpp_python.empty() || a.llama_bench.empty()) rows.push_back(measure_llamacpp(a, ids));
  if (!a.llama_bench.empty()) rows.push_back(measure_llama_bench(a));
  // The decode bound: DRAM read bandwidth measured now ÷ bytes one token reads.
  const double gbs = a.limits ? bench::measure_limits().dram_gbs : 0.0;
  // And paired with each decode step, on the first row's model (its weights' bytes per token).
  Paired paired;
  if (a.limits) {
    LlamaModel net(*model);  // stored k-quants: Q8_K activations (the first row); else fp32
    paired = measure_paired(net, ids, a.decode, per_token, kv_bytes_per_position(c));
  }

  auto num = [](const std::optional<double>& v) { return v ? fmt::format("{:.1f}", *v) : std::string("—"); };
  fmt::print("model {} ({} layers, dim {}, vocab {}), prefill {} tokens, decode {} tokens, {} threads\n", a.model,
             c.n_layers, c.dim, c.vocab_size, a.prefill, a.decode, num_threads());
  fmt::print("| engine | prefill tok/s | decode tok/s | note |\n|---|---:|---:|---|\n");
  for (const Speed& r : rows) fmt::print("| {} | {} | {} | {} |\n", r.name, num(r.prefill_tok_s), num(r.decode_tok_s), r.note);
  fmt::print("lowbit peak RSS: {:.0f} MiB\n", rss);
  // The decode row's mean context: its tokens sit at positions prefill .. prefill + decode - 1.
  const double kv_mean = kv_bytes_per_position(c) * (a.prefill + (a.decode + 1) / 2.0);
  if (a.limits) {
    const double bound = gbs * 1e9 / (per_token + kv_mean);
    fmt::print("DRAM read {:.1f} GB/s (measured in this run) / ({:.0f} MB of weights + {:.1f} MB of KV cache at the mean "
               "context) per decode token = bound {:.1f} tok/s; lowbit decode = {:.2f} x bound\n",
               gbs, per_token / 1e6, kv_mean / 1e6, bound, rows.front().decode_tok_s.value_or(0.0) / bound);
    if (!paired.ratio.empty()) {
      const auto [rlo, rhi] = std::minmax_element(paired.ratio.begin(), paired.ratio.end());
      const auto [glo, ghi] = std::minmax_element(paired.gbs.begin(), paired.gbs.end());
      fmt::print("paired ({} decode steps of {} tokens, each after a DRAM read pass): decode / bound median {:.2f} "
                 "(range {:.2f}-{:.2f}); DRAM {:.1f}-{:.1f} GB/s; decode median {:.1f} tok/s\n",
                 paired.ratio.size(), kPairStep, median(paired.ratio), *rlo, *rhi, *glo, *ghi, median(paired.tok_s));
    }
  }

  if (!a.json.empty()) {
    nlohmann::json j = {{"model", a.model}, {"prefill_tokens", a.prefill}, {"decode_tokens", a.decode},
                        {"threads", num_threads()}, {"scheme", a.scheme}, {"peak_rss_mib", rss},
                        {"bytes_per_decode_token", per_token}, {"kv_bytes_per_position", kv_bytes_per_position(c)},
                        {"kv_bytes_mean_context", kv_mean}};
    if (a.limits) j["dram_read_gbs"] = gbs;
    if (!paired.ratio.empty()) {
      j["paired"] = {{"step_tokens", kPairStep}, {"ratio", paired.ratio}, {"dram_gbs", paired.gbs},
                     {"decode_tok_s", paired.tok_s}, {"ratio_median", median(paired.ratio)}};
    }
    for (const Speed& r : rows) {
      j["engines"].push_back({{"name", r.name},
                              {"prefill_tok_s", r.prefill_tok_s ? nlohmann::json(*r.prefill_tok_s) : nlohmann::json()},
                              {"decode_tok_s", r.decode_tok_s ? nlohmann::json(*r.decode_tok_s) : nlohmann::json()},
                              {"note", r.note}});
    }
    if (Status s = write_file_atomic(a.json, j.dump(2) + "\n"); !s.ok()) fail(s);
  }
}

}  // namespace

// `bench` is the parent register_bench (cmd_bench.cc) made: `lowbit bench model`.
void register_bench_model(CLI::App& bench_parent) {
  CLI::App* bench = &bench_parent;
  auto a = std::make_shared<BenchModelArgs>();
  auto* cmd = bench->add_subcommand("model", "Prefill and decode tokens/s: lowbit fp32, lowbit quantized, llama.cpp");
  cmd->add_option("--model", a->model, "Checkpoint (GGUF for the llama.cpp comparison)")->required();
  cmd->add_option("--scheme", a->scheme, "Named scheme for the quantized row (see `lowbit schemes`)")->default_val("w4a16-g128")->check(non_empty());
  cmd->add_option("--prefill", a->prefill, "Prompt tokens per prefill")->default_val(128);
  cmd->add_option("--decode", a->decode, "Tokens decoded one at a time after the prefill")->default_val(32);
  cmd->add_option("--kv", a->kv, "Also time each quantized KV cache spec (kv-int8, kv-int4-kivi, ...; repeat or ';')")
      ->delimiter(';');
  cmd->add_option("--llamacpp-python", a->llamacpp_python, "A Python with llama_cpp installed (llama-cpp-python)");
  cmd->add_option("--llama-bench", a->llama_bench, "llama.cpp's llama-bench binary: time the same file with it");
  cmd->add_flag("--limits", a->limits, "Measure DRAM read bandwidth in this run and print the decode bound it implies");
  cmd->add_option("--json", a->json, "Write the figures as JSON");
  cmd->callback([a] { run_bench_model(*a); });
}

}  // namespace lowbit::cli
