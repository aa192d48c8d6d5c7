// Bindings for models, eval and the PTQ pipeline: load_model, Model.logits / generate / tensors,
// evaluate (the figures and keys of `lowbit eval --json`) and quantize_model (`lowbit quantize`,
// with a progress callback). Each call assembles library pieces the way the CLI subcommand does
// (tools/lowbit/cmd_eval.cc, cmd_quantize.cc); the work itself runs without the GIL.
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/evp.h>

#include "common.h"
#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/kv_cache.h"
#include "lowbit/llama.h"
#include "lowbit/mixed.h"
#include "lowbit/model.h"
#include "lowbit/pipeline.h"
#include "lowbit/progress.h"
#include "lowbit/rtn.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"

namespace lowbit::python {
namespace {

// A loaded checkpoint and a runnable network over it. `model` owns the weights' bytes (the mapped
// file); `net` views them (fp32) or holds quantized linears. Arrays handed out by tensors() keep
// this object, hence the bytes, alive.
struct PyModel {
  std::shared_ptr<const Model> model;
  std::shared_ptr<LlamaModel> net;
  std::shared_ptr<const Tokenizer> tok;  // null when none was found
  std::string tok_path;
  Status tok_status;  // why there is none
  std::string label = "fp32";

  const Tokenizer& tokenizer() const {
    if (!tok) throw StatusError{tok_status};
    return *tok;
  }
};

std::shared_ptr<PyModel> load_py(const std::string& path, const std::string& tokenizer) {
  auto pm = std::make_shared<PyModel>();
  {
    py::gil_scoped_release nogil;
    Result<Model> m = load_model(path);
    if (!m.ok()) throw StatusError{m.status()};
    pm->model = std::make_shared<const Model>(std::move(m).value());
    const int vocab = pm->model->config.vocab_size;
    Result<std::string> tp = tokenizer.empty() ? find_tokenizer(path, vocab, "load_model") : Result<std::string>(tokenizer);
    if (tp.ok()) {
      Result<std::unique_ptr<Tokenizer>> t = load_tokenizer(*tp, vocab);
      if (!tokenizer.empty() && !t.ok()) throw StatusError{t.status()};
      if (t.ok()) {
        pm->tok = std::move(*t);
        pm->tok_path = *tp;
      } else {
        pm->tok_status = t.status();
      }
    } else {
      pm->tok_status = tp.status();
    }
    pm->net = std::make_shared<LlamaModel>(*pm->model);
  }
  return pm;
}

std::vector<int> ids_arg(py::handle ids, const char* what) {
  try {
    return ids.cast<std::vector<int>>();
  } catch (const py::cast_error&) {
    bad_input(fmt::format("{}: expected a sequence of int token ids", what));
  }
}

std::vector<int> encode_text(const PyModel& pm, const std::string& text) {
  const Tokenizer& t = pm.tokenizer();
  return unwrap(t.encode(text, t.add_bos(), /*eos=*/false));
}

// The scheme / spec given to evaluate or Model.quantize, applied by RTN as `lowbit eval` does.
std::shared_ptr<LlamaModel> quantized_net(const Model& m, const std::optional<Scheme>& scheme, const std::string& weights,
                                          const std::string& acts) {
  auto net = std::make_shared<LlamaModel>(m);
  if (scheme) {
    check(apply_scheme(*net, *scheme));
  } else {
    const QuantSpec w = unwrap(parse_spec(weights));
    std::optional<QuantSpec> a;
    if (!acts.empty()) a = unwrap(parse_spec(acts));
    check(apply_rtn(*net, w, a));
  }
  return net;
}

std::string sha256_file(const std::string& path) {
  const MappedFile f = unwrap(MappedFile::open(path));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(f.bytes().data(), f.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

double peak_rss_mib() {
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

// A Python progress callback called from C++ work that runs without the GIL: each call takes
// the GIL; the first exception it raises is kept (later calls are skipped) and re-raised by
// rethrow() once the work is over.
struct Callback {
  py::object fn;
  std::exception_ptr error;
  template <class... A>
  void operator()(A... args) {
    if (fn.is_none() || error) return;
    py::gil_scoped_acquire gil;
    try {
      fn(args...);
    } catch (...) {
      error = std::current_exception();
    }
  }
  void rethrow() {
    if (error) std::rethrow_exception(error);
  }
};

// lowbit eval: each scheme (or the --weights spec) against the fp32 reference, the keys of `eval --json`.
py::object evaluate_py(const PyModel& pm, const std::string& text, const std::vector<std::string>& scheme_names,
                       const std::string& weights, const std::string& acts, int ctx, int stride, int max_windows,
                       const std::string& split, py::object ref, int decode_tokens, py::object progress) {
  if (!scheme_names.empty() && !weights.empty()) bad_input("evaluate: schemes and weights exclude each other");
  if (!acts.empty() && weights.empty()) bad_input("evaluate: acts needs weights (or use schemes)");
  if (ctx < 2) bad_input(fmt::format("evaluate: ctx must be >= 2 (got {})", ctx));
  std::vector<Scheme> schemes;
  for (const std::string& name : scheme_names) schemes.push_back(unwrap(find_scheme(name)));
  const PyModel* ref_pm = ref.is_none() ? nullptr : &ref.cast<const PyModel&>();
  const Model& model = *pm.model;
  const std::string model_path = model.path;
  Callback cb{std::move(progress), nullptr};
  std::vector<EvalResult> results;
  std::vector<std::string> labels;
  std::vector<double> decode_tok_s;
  std::vector<ModelSize> sizes;
  struct KvFields {
    std::string spec;
    double bytes_per_token, bits_per_value;
  };
  std::vector<KvFields> kv_fields;
  int decode_ctx_used = 0;  // as eval --json reports the cache each model runs with
  double ref_decode_tok_s = 0;
  const Tokenizer& tok = pm.tokenizer();
  {
    py::gil_scoped_release nogil;
    const std::vector<int> tokens = unwrap(stories_to_tokens(tok, text, split));
    LlamaModel reference(ref_pm ? *ref_pm->model : model);
    std::vector<std::shared_ptr<LlamaModel>> nets;
    for (const Scheme& s : schemes) {
      nets.push_back(quantized_net(model, s, "", ""));
      labels.emplace_back(s.name);
    }
    if (!weights.empty()) {
      nets.push_back(quantized_net(model, std::nullopt, weights, acts));
      const QuantSpec w = unwrap(parse_spec(weights));
      labels.push_back(to_string(w) + (acts.empty() ? "" : " / acts " + to_string(unwrap(parse_spec(acts)))));
    }
    // The model against itself (as `lowbit eval` without --ref), unless it was quantized in memory.
    const bool same = nets.empty() && !ref_pm && pm.label == "fp32";
    if (nets.empty() && !same) nets.push_back(pm.net);
    if (labels.empty()) labels.push_back(pm.label);
    std::vector<const LlamaModel*> evaluated;
    for (const auto& n : nets) evaluated.push_back(n.get());
    if (same) evaluated.push_back(&reference);

    EvalOptions opt;
    opt.ctx = ctx;
    opt.stride = stride;
    opt.max_windows = max_windows;
    opt.on_window = [&cb](int64_t done, int64_t total) { cb(done, total); };
    results = unwrap(evaluate_many(evaluated, reference, tokens, opt));

    // Decode speed as `lowbit eval` measures it: greedy tokens after an 8-token prompt, each model
    // and the reference alternating, best of two.
    GenerateOptions g;
    g.max_new_tokens = decode_tokens;
    const std::vector<int> prompt(tokens.begin(), tokens.begin() + std::min<size_t>(8, tokens.size()));
    decode_ctx_used = static_cast<int>(prompt.size());
    auto decode_speed = [&](const LlamaModel& m) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<int> gen = unwrap(generate(m, prompt, g));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return secs > 0 ? static_cast<double>(gen.size()) / secs : 0.0;
    };
    decode_tok_s.assign(evaluated.size(), 0.0);
    for (int rep = 0; rep < 2; ++rep) {
      for (size_t i = 0; i < evaluated.size(); ++i) decode_tok_s[i] = std::max(decode_tok_s[i], decode_speed(*evaluated[i]));
      ref_decode_tok_s = same ? decode_tok_s.front() : std::max(ref_decode_tok_s, decode_speed(reference));
    }
    for (const LlamaModel* n : evaluated) {
      sizes.push_back(model_size(*n));
      const std::optional<KvSpec>& kv = n->kv_cache_spec();
      const LlamaConfig& cfg = n->config();
      const int ctx_eff = std::min(ctx, cfg.seq_len);
      kv_fields.push_back({kv ? to_string(*kv) : "fp32",
                           kv ? kv_bytes_per_token(*kv, cfg, ctx_eff) : 2.0 * cfg.n_layers * cfg.kv_dim() * sizeof(float),
                           kv ? kv_bits_per_value(*kv, cfg.head_dim()) : 32.0});
    }
  }
  cb.rethrow();

  const int seq_len = model.config.seq_len;
  std::error_code ec;
  const std::string weights_file = model_weights_file(model_path);
  const auto file_bytes = static_cast<int64_t>(std::filesystem::file_size(weights_file, ec));
  py::dict inputs;
  inputs["model"] = model_path;
  inputs["model_sha256"] = sha256_file(weights_file);
  inputs["ref"] = ref_pm ? ref_pm->model->path : model_path;
  inputs["text"] = text;
  inputs["text_sha256"] = sha256_file(text);
  inputs["tokenizer"] = pm.tok_path;
  inputs["split"] = split;
  inputs["scheme"] = fmt::format("{}", fmt::join(scheme_names, ","));
  inputs["weights"] = weights;
  inputs["acts"] = acts;
  inputs["ctx"] = std::min(ctx, seq_len);
  inputs["stride"] = stride > 0 ? stride : std::min(ctx, seq_len) / 2;
  inputs["max_windows"] = max_windows;
  inputs["kv"] = "";
  inputs["decode_ctx"] = decode_ctx_used;
  py::list all;
  for (size_t i = 0; i < results.size(); ++i) {
    const EvalResult& r = results[i];
    const ModelSize& size = sizes[i];
    py::dict d;
    d["model"] = labels[i];
    d["ppl"] = r.ppl;
    d["ref_ppl"] = r.ref_ppl;
    d["delta_ppl"] = r.delta_ppl;
    d["delta_ppl_se"] = r.delta_ppl_se;
    d["kld_mean"] = r.kld_mean;
    d["kld_p99"] = r.kld_p99;
    d["kld_max"] = r.kld_max;
    d["top1"] = r.top1;
    d["bpw"] = size.bpw_total();
    d["kv_spec"] = kv_fields[i].spec;
    d["kv_bytes_per_token"] = kv_fields[i].bytes_per_token;
    d["kv_bits_per_value"] = kv_fields[i].bits_per_value;
    d["bpw_weights"] = size.bpw_weights();
    d["size_bytes"] = size.total_bytes();
    d["linear_bytes"] = size.linear_bytes;
    d["file_bytes"] = file_bytes;
    d["prefill_tok_s"] = r.prefill_tok_s;
    d["decode_tok_s"] = decode_tok_s[i];
    d["ref_prefill_tok_s"] = r.ref_prefill_tok_s;
    d["ref_decode_tok_s"] = ref_decode_tok_s;
    d["decode_speedup"] = ref_decode_tok_s > 0 ? decode_tok_s[i] / ref_decode_tok_s : 0.0;
    d["tokens_scored"] = r.tokens_scored;
    d["windows"] = r.windows;
    d["peak_rss_mib"] = peak_rss_mib();
    d["inputs"] = inputs;
    all.append(d);
  }
  if (all.size() == 1) return all[0];
  return all;
}

struct QuantizeArgs {
  std::string model, scheme, weights, acts, method, calib, calib_split, out, format, tokenizer, plan, eval_text, eval_split;
  int calib_tokens, ctx, eval_windows, eval_ctx;
  bool sequential, act_order, static_groups;
  double damp, alpha;
  float threshold;
};

// lowbit quantize: the same steps and the same summary (`quantize --json`) as the CLI.
py::dict quantize_model_py(const QuantizeArgs& a, py::object progress) {
  if (a.scheme.empty() == a.weights.empty()) bad_input("quantize_model: give exactly one of scheme and weights");
  if (!a.acts.empty() && a.weights.empty()) bad_input("quantize_model: acts needs weights (or use scheme)");
  const Method method = unwrap(parse_method(a.method));
  QuantSpec wspec;
  std::optional<QuantSpec> aspec;
  std::string label;
  if (!a.scheme.empty()) {
    const Scheme s = unwrap(find_scheme(a.scheme));
    wspec = unwrap(parse_spec(s.weights));
    if (!s.activations.empty()) aspec = unwrap(parse_spec(s.activations));
    label = a.scheme;
  } else {
    wspec = unwrap(parse_spec(a.weights));
    if (!a.acts.empty()) aspec = unwrap(parse_spec(a.acts));
    label = to_string(wspec) + (aspec ? "+" + to_string(*aspec) : "");
  }
  label = std::string(method_name(method)) + " " + label;
  ModelFormat save_format = ModelFormat::kSafetensors;
  if (!a.format.empty()) {
    save_format = unwrap(parse_model_format(a.format));
  } else if (a.out.ends_with(".gguf")) {
    save_format = ModelFormat::kGguf;
  }
  if (method == Method::kOutliers && !a.out.empty()) {
    bad_input("quantize_model: out: the outlier split (fp16 columns beside int8) cannot be written yet; use eval to measure it");
  }
  if (method != Method::kRtn && a.calib.empty()) bad_input(fmt::format("quantize_model: method {} needs calib", a.method));

  Callback cb{std::move(progress), nullptr};
  const bool show_bar = cb.fn.is_none();
  py::dict j;
  {
    py::gil_scoped_release nogil;
    const Model model = unwrap(load_model(a.model));
    const LlamaConfig& cfg = model.config;
    const QuantPlan plan = unwrap(make_plan(cfg, wspec, aspec, a.plan));
    PipelineOptions opt;
    opt.method = method;
    opt.plan = plan;
    opt.sequential = a.sequential;
    opt.gptq.damp = a.damp;
    opt.gptq.act_order = a.act_order;
    opt.gptq.static_groups = a.static_groups;
    opt.smooth_alpha = a.alpha;
    opt.outlier_threshold = a.threshold;
    std::unique_ptr<Tokenizer> tok;
    std::string tok_path;
    if (method != Method::kRtn || !a.eval_text.empty() || !a.out.empty()) {
      tok_path = a.tokenizer.empty() ? unwrap(find_tokenizer(a.model, cfg.vocab_size, "quantize_model")) : a.tokenizer;
      tok = unwrap(load_tokenizer(tok_path, cfg.vocab_size));
    }
    const int ctx = std::min(a.ctx, cfg.seq_len);
    if (method != Method::kRtn) {
      if (a.calib_tokens < 1 || ctx < 2) bad_input("quantize_model: calib_tokens must be >= 1 and ctx >= 2");
      const std::vector<int> tokens = unwrap(stories_to_tokens(*tok, a.calib, a.calib_split));
      if (static_cast<int>(tokens.size()) < ctx) {
        bad_input(fmt::format("{}: calibration text (split {}) has {} tokens; one window needs ctx {}", a.calib,
                              a.calib_split, tokens.size(), ctx));
      }
      // Whole windows of ctx tokens from the start, until calib_tokens are covered (as the CLI).
      for (size_t p = 0; p + static_cast<size_t>(ctx) <= tokens.size() &&
                         static_cast<int64_t>(opt.calib.size()) * ctx < a.calib_tokens; p += static_cast<size_t>(ctx)) {
        opt.calib.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(p),
                               tokens.begin() + static_cast<std::ptrdiff_t>(p) + ctx);
      }
    }
    LlamaModel net(model);
    std::unique_ptr<Progress> bar;
    if (show_bar) bar = std::make_unique<Progress>("quantize " + label, cfg.n_layers);
    opt.on_layer = [&](int layer, int layers) {
      if (bar) bar->advance();
      cb(layer, layers);
    };
    Result<PipelineReport> rep = quantize_model(net, opt);
    if (bar) bar->finish();
    {
      py::gil_scoped_acquire gil;
      cb.rethrow();  // a callback that raised stops here: nothing is written
    }
    const PipelineReport report = unwrap(std::move(rep));
    const ModelSize size = model_size(net);
    py::gil_scoped_acquire gil;
    j["model"] = a.model;
    j["method"] = a.method;
    j["scheme"] = plan.scheme;
    j["scheme_name"] = a.scheme.empty() ? label : a.scheme;
    j["calib"] = a.calib;
    j["calib_split"] = a.calib_split;
    j["calib_tokens"] = report.calib_tokens;
    j["sequential"] = opt.sequential;
    j["seconds"] = report.seconds;
    j["peak_activation_bytes"] = report.peak_activation_bytes;
    j["bpw"] = size.bpw_total();
    j["bpw_weights"] = size.bpw_weights();
    j["size_bytes"] = size.total_bytes();
    py::list layers;
    for (const LinearReport& r : report.linears) {
      py::dict lj;
      lj["name"] = r.name;
      lj["spec"] = r.spec;
      if (method == Method::kAwq || method == Method::kSmoothQuant) lj["alpha"] = r.alpha;
      if (method == Method::kAwq) lj["rtn_error"] = r.rtn_error, lj["error"] = r.error;
      if (method == Method::kOutliers) lj["outlier_cols"] = r.outlier_cols, lj["outlier_fraction"] = r.outlier_fraction;
      layers.append(lj);
    }
    j["linears"] = layers;
    j["bits_per_weight"] = plan.bits_per_weight();
    j["plan"] = py::module_::import("json").attr("loads")(plan_overrides_json(plan));
    {
      py::gil_scoped_release again;
      if (!a.out.empty()) {
        SaveOptions so;
        so.format = save_format;
        so.tokenizer_path = tok_path;
        so.extra_metadata = {{"lowbit.method", a.method},
                             {"lowbit.scheme", a.scheme.empty() ? label : a.scheme},
                             {"lowbit.calib", a.calib},
                             {"lowbit.calib_split", a.calib_split},
                             {"lowbit.calib_tokens", std::to_string(report.calib_tokens)},
                             {"lowbit.sequential", opt.sequential ? "true" : "false"}};
        const SaveReport saved = unwrap(save_model(net, a.out, so));
        py::gil_scoped_acquire g2;
        py::dict o;
        o["path"] = saved.path;
        o["format"] = std::string(model_format_name(saved.format));
        o["bytes"] = saved.bytes;
        j["output"] = o;
        py::list warnings;
        for (const std::string& w : saved.warnings) warnings.append(w);
        j["warnings"] = warnings;
      }
      if (!a.eval_text.empty()) {
        const std::vector<int> tokens = unwrap(stories_to_tokens(*tok, a.eval_text, a.eval_split));
        LlamaModel reference(model);
        EvalOptions eo;
        eo.ctx = a.eval_ctx;
        eo.max_windows = a.eval_windows;
        const EvalResult r = unwrap(evaluate(net, reference, tokens, eo));
        py::gil_scoped_acquire g2;
        py::dict e;
        e["text"] = a.eval_text;
        e["split"] = a.eval_split;
        e["ppl"] = r.ppl;
        e["ref_ppl"] = r.ref_ppl;
        e["delta_ppl"] = r.delta_ppl;
        e["delta_ppl_se"] = r.delta_ppl_se;
        e["kld_mean"] = r.kld_mean;
        e["kld_p99"] = r.kld_p99;
        e["top1"] = r.top1;
        e["tokens_scored"] = r.tokens_scored;
        j["eval"] = e;
      }
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    j["peak_rss_bytes"] = static_cast<int64_t>(ru.ru_maxrss) * 1024;
  }
  return j;
}

// A read-only numpy view of a model tensor; the array keeps the Model object (and the mapping) alive.
py::array tensor_view(py::handle self, const ConstTensorView& v) {
  std::vector<py::ssize_t> shape, strides;
  for (int d = 0; d < v.ndim(); ++d) {
    shape.push_back(v.dim(d));
    strides.push_back(v.stride(d) * static_cast<py::ssize_t>(sizeof(float)));
  }
  LOWBIT_CHECK(v.dtype() == DType::kF32, "model tensors are f32 views");
  // Strides from the view (elements) times sizeof(float); see new_array for why never from a dtype.
  py::array a = py::array_t<float>(shape, strides, static_cast<const float*>(v.data()), self);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

}  // namespace

void init_models(py::module_& m) {
  py::class_<PyModel, std::shared_ptr<PyModel>>(m, "Model",
                                               "A loaded checkpoint (llama2.c .bin, GGUF, safetensors folder) and its tokenizer.\n\n"
                                               "    m = lowbit.load_model('../shared/models/stories260K.bin'); m.generate('Once upon a time', n=32)")
      .def_property_readonly("path", [](const PyModel& p) { return p.model->path; })
      .def_property_readonly("label", [](const PyModel& p) { return p.label; })
      .def_property_readonly("tokenizer_path", [](const PyModel& p) -> py::object {
        if (!p.tok) return py::none();
        return py::str(p.tok_path);
      })
      .def_property_readonly("config", [](const PyModel& p) {
        const LlamaConfig& c = p.model->config;
        py::dict d;
        d["dim"] = c.dim;
        d["hidden_dim"] = c.hidden_dim;
        d["n_layers"] = c.n_layers;
        d["n_heads"] = c.n_heads;
        d["n_kv_heads"] = c.n_kv_heads;
        d["vocab_size"] = c.vocab_size;
        d["seq_len"] = c.seq_len;
        d["rope_theta"] = c.rope_theta;
        d["norm_eps"] = c.norm_eps;
        d["shared_classifier"] = c.shared_classifier;
        return d;
      })
      .def("tensors", [](py::object self) -> py::dict {
        const PyModel& p = self.cast<const PyModel&>();
        const LlamaWeights& w = p.net->weights();
        py::dict d;
        d["tok_embeddings"] = tensor_view(self, w.tok_embeddings);
        for (size_t l = 0; l < w.layers.size(); ++l) {
          const LayerWeights& lw = w.layers[l];
          d[py::str(fmt::format("layers.{}.attn_norm", l))] = tensor_view(self, lw.attn_norm);
          for (LinearSlot s : kLinearSlots) {
            d[py::str(fmt::format("layers.{}.{}", l, linear_slot_name(s)))] = tensor_view(self, lw.*linear_weight_member(s));
          }
          d[py::str(fmt::format("layers.{}.ffn_norm", l))] = tensor_view(self, lw.ffn_norm);
        }
        d["final_norm"] = tensor_view(self, w.final_norm);
        d["classifier"] = tensor_view(self, w.classifier);
        return d;
      }, "tensors() -> dict: name -> read-only float32 view of the weights (zero copy; keeps the model alive).")
      .def("kernels", [](const PyModel& p) {
        py::dict d;
        for (size_t l = 0; l < p.net->layers().size(); ++l) {
          for (LinearSlot s : kLinearSlots) {
            d[py::str(fmt::format("layers.{}.{}", l, linear_slot_name(s)))] = p.net->layers()[l].at(s).kernel();
          }
        }
        d["classifier"] = p.net->classifier().kernel();
        return d;
      }, "kernels() -> dict: linear name -> the kernel its forward runs ('fp32' on the fp32 path).")
      .def("tokenize", [](const PyModel& p, const std::string& text, py::object bos) {
        const Tokenizer& t = p.tokenizer();
        return unwrap(t.encode(text, bos.is_none() ? t.add_bos() : bos.cast<bool>(), false));
      }, py::arg("text"), py::arg("bos") = py::none(),
         "tokenize(text, bos=None) -> list[int] (BOS as the tokenizer expects unless bos is given).\n\n    m.tokenize('Once upon a time')")
      .def("detokenize", [](const PyModel& p, py::handle ids) {
        const Tokenizer& t = p.tokenizer();
        const std::vector<int> v = ids_arg(ids, "detokenize: ids");
        std::string out;
        for (size_t i = 0; i < v.size(); ++i) {
          if (i == 0 && v[0] == t.bos_id()) continue;
          out += t.decode(i == 0 ? -1 : v[i - 1], v[i]);
        }
        return py::bytes(out).attr("decode")("utf-8", "replace");
      }, py::arg("ids"), "detokenize(ids) -> str.\n\n    m.detokenize(m.generate([1, 403], n=8))")
      .def("logits", [](const PyModel& p, py::handle ids) {
        const std::vector<int> v = ids_arg(ids, "logits: ids");
        if (v.empty()) bad_input("logits: ids is empty");
        std::vector<float> logits;
        Status s;
        {
          py::gil_scoped_release nogil;
          Session sess(*p.net, std::min<int>(static_cast<int>(v.size()), p.model->config.seq_len));
          s = sess.forward(v, 0, &logits, /*all_logits=*/true);
        }
        check(s);
        const int vocab = p.model->config.vocab_size;
        py::array_t<float> out = new_array<float>({static_cast<py::ssize_t>(v.size()), static_cast<py::ssize_t>(vocab)});
        std::copy(logits.begin(), logits.end(), out.mutable_data());
        return out;
      }, py::arg("ids"), "logits(ids) -> (len(ids), vocab) float32: the forward pass from position 0. Releases the GIL.\n\n"
                         "    m.logits(m.tokenize('Once upon a time'))[-1].argmax()")
      .def("generate", [](const PyModel& p, py::handle prompt, int n, float temp, uint64_t seed) -> py::object {
        if (n < 0) bad_input("generate: n must be >= 0");
        if (!(temp >= 0.0f)) bad_input("generate: temp must be >= 0");
        const bool text = py::isinstance<py::str>(prompt);
        const std::vector<int> ids = text ? encode_text(p, prompt.cast<std::string>()) : ids_arg(prompt, "generate: prompt");
        GenerateOptions opt;
        opt.max_new_tokens = n;
        opt.temperature = temp;
        opt.seed = seed;
        if (p.tok) {  // as the CLI: a new BOS ends a llama2.c story; GGUF vocabularies end at EOS
          const bool runc = p.tok->kind() == "llama2c" || p.tok->kind() == "sentencepiece";
          opt.stop_token = runc ? p.tok->bos_id() : p.tok->eos_id();
        }
        Result<std::vector<int>> out = InvalidArgument("unset");
        {
          py::gil_scoped_release nogil;
          out = generate(*p.net, ids, opt);
        }
        const std::vector<int> gen = unwrap(std::move(out));
        if (!text) return py::cast(gen);
        std::string s;
        int prev = ids.back();
        for (int id : gen) {
          s += p.tok->decode(prev, id);
          prev = id;
        }
        return py::bytes(s).attr("decode")("utf-8", "replace");
      }, py::arg("prompt"), py::arg("n") = 64, py::arg("temp") = 0.0f, py::arg("seed") = 0,
         "generate(prompt, n=64, temp=0.0, seed=0) -> str for a str prompt, list[int] for ids (as `lowbit generate`).\n\n"
         "    m.generate('Once upon a time', n=32)")
      .def("quantize", [](const PyModel& p, const std::string& scheme, const std::string& weights, const std::string& acts) {
        if (scheme.empty() == weights.empty()) bad_input("Model.quantize: give exactly one of scheme and weights");
        std::optional<Scheme> s;
        if (!scheme.empty()) s = unwrap(find_scheme(scheme));
        auto q = std::make_shared<PyModel>(p);
        {
          py::gil_scoped_release nogil;
          q->net = quantized_net(*p.model, s, weights, acts);
        }
        q->label = !scheme.empty() ? scheme : weights + (acts.empty() ? "" : " / acts " + acts);
        return q;
      }, py::arg("scheme") = "", py::kw_only(), py::arg("weights") = "", py::arg("acts") = "",
         "quantize(scheme='', *, weights='', acts='') -> Model: a copy with every linear quantized by RTN in memory.\n\n"
         "    m.quantize('w4a16-g128').logits(ids)")
      .def("__repr__", [](const PyModel& p) {
        const LlamaConfig& c = p.model->config;
        return fmt::format("Model('{}', {}, dim={}, layers={}, vocab={})", p.model->path, p.label, c.dim, c.n_layers, c.vocab_size);
      });

  m.def("load_model", &load_py, py::arg("path"), py::kw_only(), py::arg("tokenizer") = "",
        "load_model(path, *, tokenizer='') -> Model (weights memory-mapped; the tokenizer beside the model unless given).\n\n"
        "    m = lowbit.load_model('../shared/models/stories260K.bin')");
  m.def("evaluate", &evaluate_py, py::arg("model"), py::arg("text"), py::kw_only(),
        py::arg("schemes") = std::vector<std::string>{}, py::arg("weights") = "", py::arg("acts") = "",
        py::arg("ctx") = 128, py::arg("stride") = 0, py::arg("max_windows") = 0, py::arg("split") = "all",
        py::arg("ref") = py::none(), py::arg("decode_tokens") = 32, py::arg("progress") = py::none(),
        "evaluate(model, text, *, schemes=[], weights='', acts='', ctx=128, stride=0, max_windows=0, split='all',\n"
        "         ref=None, decode_tokens=32, progress=None) -> dict (one row) or list of dicts\n\n"
        "`lowbit eval --json`: the same keys and figures. Each scheme (or the weights/acts specs) is applied by RTN in\n"
        "memory and scored against the fp32 reference (ref, or the model itself); progress(done, total) per window.\n\n"
        "    lowbit.evaluate(m, 'val.txt', schemes=['w4a16-g128'], ctx=128)['kld_mean']");
  m.def("quantize_model",
        [](const std::string& model, const std::string& scheme, const std::string& method, const std::string& calib,
           const std::string& out, const std::string& weights, const std::string& acts, const std::string& calib_split,
           int calib_tokens, int ctx, const std::string& tokenizer, const std::string& plan, bool sequential,
           bool act_order, bool static_groups, double damp, double alpha, float threshold, const std::string& format,
           const std::string& eval, const std::string& eval_split, int eval_windows, int eval_ctx, py::object progress) {
          QuantizeArgs a{model, scheme, weights, acts, method, calib, calib_split, out, format, tokenizer, plan, eval,
                         eval_split, calib_tokens, ctx, eval_windows, eval_ctx, sequential, act_order, static_groups,
                         damp, alpha, threshold};
          return quantize_model_py(a, std::move(progress));
        },
        py::arg("model"), py::arg("scheme") = "", py::arg("method") = "rtn", py::arg("calib") = "",
        py::arg("out") = "", py::kw_only(), py::arg("weights") = "", py::arg("acts") = "",
        py::arg("calib_split") = "calib", py::arg("calib_tokens") = 8192, py::arg("ctx") = 256,
        py::arg("tokenizer") = "", py::arg("plan") = "", py::arg("sequential") = true, py::arg("act_order") = false,
        py::arg("static_groups") = false, py::arg("damp") = 0.01, py::arg("alpha") = 0.5, py::arg("threshold") = 6.0f,
        py::arg("format") = "", py::arg("eval") = "", py::arg("eval_split") = "eval", py::arg("eval_windows") = 100,
        py::arg("eval_ctx") = 128, py::arg("progress") = py::none(),
        "quantize_model(model, scheme='', method='rtn', calib='', out='', *, weights='', acts='', ...) -> dict\n\n"
        "`lowbit quantize`: the same steps, options (calib_split, calib_tokens, ctx, plan, act_order, damp, alpha, format,\n"
        "eval, eval_windows, ...) and summary (`quantize --json`); progress(layer, layers) after each block (an exception\n"
        "it raises stops the run before anything is written).\n\n"
        "    lowbit.quantize_model('stories260K.bin', 'w4a16-g32', 'gptq', 'calib.txt', 'out/')['bpw']");
}

}  // namespace lowbit::python
