// The QuantPlan and the layer-by-layer calibration pipeline (pipeline.h).
#include "lowbit/pipeline.h"

#include <fnmatch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "algo_internal.h"
#include "lowbit/file.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace {

using algo_internal::clone_f32;

// Swaps a block's linears for fp32 ones over given weights and puts the originals back when it
// goes out of scope (also on an early return). The weights must outlive it.
class BlocksAside {
 public:
  explicit BlocksAside(LayerLinears& ll) : ll_(ll) {}
  BlocksAside(const BlocksAside&) = delete;
  BlocksAside& operator=(const BlocksAside&) = delete;
  ~BlocksAside() {
    for (LinearSlot s : kLinearSlots) {
      if (aside_[static_cast<size_t>(s)]) ll_.at(s) = std::move(held_[static_cast<size_t>(s)]);
    }
  }
  void run_f32(LinearSlot s, ConstTensorView w) {
    const size_t i = static_cast<size_t>(s);
    if (!aside_[i]) held_[i] = std::move(ll_.at(s));
    aside_[i] = true;
    ll_.at(s) = Linear::fp32(w);
  }

 private:
  LayerLinears& ll_;
  std::array<Linear, kNumLinearSlots> held_{};
  std::array<bool, kNumLinearSlots> aside_{};
};

// The four places a block's linears read their input.
enum Site { kAttnIn, kAttnOut, kFfnIn, kFfnMid, kNumSites };
Site site_of(LinearSlot s) {
  switch (s) {
    case LinearSlot::kWq:
    case LinearSlot::kWk:
    case LinearSlot::kWv: return kAttnIn;
    case LinearSlot::kWo: return kAttnOut;
    case LinearSlot::kW1:
    case LinearSlot::kW3: return kFfnIn;
    case LinearSlot::kW2: return kFfnMid;
  }
  return kAttnIn;
}

std::string linear_name(int layer, LinearSlot s) { return fmt::format("layers.{}.{}", layer, linear_slot_name(s)); }

Result<QuantSpec> fp16_cast() { return parse_spec("fp16:tensor:unit"); }

}  // namespace

Result<Method> parse_method(std::string_view name) {
  if (name == "rtn") return Method::kRtn;
  if (name == "gptq") return Method::kGptq;
  if (name == "awq") return Method::kAwq;
  if (name == "smoothquant") return Method::kSmoothQuant;
  if (name == "outliers") return Method::kOutliers;
  return InvalidArgument(fmt::format("unknown method '{}' (known: rtn, gptq, awq, smoothquant, outliers)", name));
}

std::string_view method_name(Method m) {
  switch (m) {
    case Method::kRtn: return "rtn";
    case Method::kGptq: return "gptq";
    case Method::kAwq: return "awq";
    case Method::kSmoothQuant: return "smoothquant";
    case Method::kOutliers: return "outliers";
  }
  return "?";
}

const PlanEntry* QuantPlan::find(std::string_view name) const {
  for (const PlanEntry& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

double QuantPlan::bits_per_weight() const {
  double bits = 0, n = 0;
  for (const PlanEntry& e : entries) {
    if (e.role != "linear") continue;
    const double numel = static_cast<double>(e.shape[0] * e.shape[1]);
    bits += numel * (e.spec ? lowbit::bits_per_weight(*e.spec, e.shape[0], e.shape[1]) : 32.0);
    n += numel;
  }
  return n > 0 ? bits / n : 0.0;
}

namespace {

// A plain cast (unit scale, e.g. the default fp16 embedding) would clamp what its format cannot
// hold to the format's largest value without a word: refuse instead, naming the value.
Status check_cast_range(ConstTensorView v, const QuantSpec& spec, std::string_view name) {
  if (spec.scale_rule != ScaleRule::kUnit || v.dtype() != DType::kF32) return OkStatus();
  const double max = traits(spec.element).max_finite;
  const float* x = v.data_as<float>();
  for (int64_t i = 0; i < v.numel(); ++i) {
    if (std::fabs(static_cast<double>(x[i])) > max) {
      return InvalidArgument(fmt::format("{}: value {} at index {} is beyond {}'s +-{:g}, which the plan's {} cast would "
                                         "clamp; keep it fp32 (--plan '{{\"{}\": \"fp32\"}}')",
                                         name, x[i], i, format_name(spec.element), max, to_string(spec), name));
    }
  }
  return OkStatus();
}

}  // namespace

Result<QuantPlan> make_plan(const LlamaConfig& c, const QuantSpec& weights, const std::optional<QuantSpec>& activations,
                            const std::string& overrides_json) {
  LOWBIT_RETURN_IF_ERROR(validate(weights));
  if (activations) LOWBIT_RETURN_IF_ERROR(validate(*activations));
  LOWBIT_ASSIGN_OR_RETURN(QuantSpec half, fp16_cast());
  QuantPlan plan;
  plan.activations = activations;
  plan.scheme = to_string(weights) + (activations ? " / acts " + to_string(*activations) : "");
  const int64_t dim = c.dim, hid = c.hidden_dim, kv = c.kv_dim(), vocab = c.vocab_size;
  plan.entries.push_back({"tok_embeddings", "embedding", {vocab, dim}, half, "default: embeddings fp16"});
  for (int l = 0; l < c.n_layers; ++l) {
    plan.entries.push_back({fmt::format("layers.{}.attn_norm", l), "norm", {dim}, std::nullopt, "default: norms stay fp32"});
    for (LinearSlot s : kLinearSlots) {
      std::vector<int64_t> shape;
      switch (s) {
        case LinearSlot::kWq:
        case LinearSlot::kWo: shape = {dim, dim}; break;
        case LinearSlot::kWk:
        case LinearSlot::kWv: shape = {kv, dim}; break;
        case LinearSlot::kW1:
        case LinearSlot::kW3: shape = {hid, dim}; break;
        case LinearSlot::kW2: shape = {dim, hid}; break;
      }
      plan.entries.push_back({linear_name(l, s), "linear", shape, weights, "scheme"});
    }
    plan.entries.push_back({fmt::format("layers.{}.ffn_norm", l), "norm", {dim}, std::nullopt, "default: norms stay fp32"});
  }
  plan.entries.push_back({"final_norm", "norm", {dim}, std::nullopt, "default: norms stay fp32"});
  if (!c.shared_classifier) plan.entries.push_back({"classifier", "classifier", {vocab, dim}, half, "default: classifier fp16"});

  if (overrides_json.empty()) return plan;
  LOWBIT_ASSIGN_OR_RETURN(std::string text, read_file(overrides_json));
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument(fmt::format("{}: expected a JSON object {{\"tensor pattern\": \"spec\" | \"fp32\", ...}}", overrides_json));
  }
  for (const auto& [pattern, value] : j.items()) {
    if (!value.is_string()) return InvalidArgument(fmt::format("{}: pattern '{}': the value must be a spec string or \"fp32\"", overrides_json, pattern));
    const std::string v = value.get<std::string>();
    std::optional<QuantSpec> spec;
    if (v != "fp32" && v != "none") {
      Result<QuantSpec> s = parse_spec(v);
      if (!s.ok()) return InvalidArgument(fmt::format("{}: pattern '{}': {}", overrides_json, pattern, s.status().message()));
      spec = *s;
    }
    int matched = 0;
    for (PlanEntry& e : plan.entries) {
      if (fnmatch(pattern.c_str(), e.name.c_str(), 0) != 0) continue;
      if (e.role == "norm" && spec) return InvalidArgument(fmt::format("{}: pattern '{}' matches norm {}; norms stay fp32", overrides_json, pattern, e.name));
      e.spec = spec;
      e.rule = "override " + pattern;
      ++matched;
    }
    if (matched == 0) return InvalidArgument(fmt::format("{}: pattern '{}' matches no tensor (names look like layers.0.wq, tok_embeddings)", overrides_json, pattern));
  }
  return plan;
}

std::string plan_table(const QuantPlan& plan) {
  std::string out = "| tensor | shape | spec | bpw | rule |\n|---|---|---|---:|---|\n";
  for (const PlanEntry& e : plan.entries) {
    std::string shape;
    for (int64_t d : e.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    const int64_t rows = e.shape.size() == 2 ? e.shape[0] : 1, cols = e.shape.back();
    const double bpw = e.spec ? bits_per_weight(*e.spec, rows, cols) : 32.0;
    out += fmt::format("| {} | {} | {} | {:.3f} | {} |\n", e.name, shape, e.spec ? to_string(*e.spec) : "fp32", bpw, e.rule);
  }
  out += fmt::format("\nactivations: {}; linear weights: {:.3f} bits per weight\n",
                     plan.activations ? to_string(*plan.activations) : "fp32", plan.bits_per_weight());
  return out;
}

std::string plan_json(const QuantPlan& plan) {
  nlohmann::ordered_json j;
  j["scheme"] = plan.scheme;
  j["activations"] = plan.activations ? to_string(*plan.activations) : "fp32";
  j["bpw_linear"] = plan.bits_per_weight();
  nlohmann::ordered_json ts = nlohmann::ordered_json::array();
  for (const PlanEntry& e : plan.entries) {
    ts.push_back({{"name", e.name}, {"role", e.role}, {"shape", e.shape}, {"spec", e.spec ? to_string(*e.spec) : "fp32"}, {"rule", e.rule}});
  }
  j["tensors"] = ts;
  return j.dump(2);
}

namespace {

// Which specs a method can use; an error says which ones it can.
Status check_method(const PipelineOptions& opt) {
  const QuantPlan& p = opt.plan;
  for (const PlanEntry& e : p.entries) {
    if (e.role != "linear" || !e.spec) continue;
    const QuantSpec& s = *e.spec;
    switch (opt.method) {
      case Method::kGptq:
        if (s.tensor_scale || s.rounding != Rounding::kNearestEven) {
          return InvalidArgument(fmt::format("{}: gptq cannot use {} (two-level or stochastic); it supports every "
                                             "round-to-nearest spec: int8/int4/uint4/nf4/fp8/e2m1 with one-level scales", e.name, to_string(s)));
        }
        break;
      case Method::kSmoothQuant:
        if (!p.activations) {
          return InvalidArgument("smoothquant needs a scheme that quantizes activations (w8a8, w4a8-g128, fp8-tensor, fp8-block, mxfp8)");
        }
        break;
      case Method::kOutliers:
        if (s.element != Format::kInt8 || s.granularity != Granularity::kRow || !s.symmetric) {
          return InvalidArgument(fmt::format("{}: outliers needs int8 per-row symmetric weights (schemes w8a8, w8a16, "
                                             "int8-channel), not {}", e.name, to_string(s)));
        }
        break;
      default: break;
    }
  }
  return OkStatus();
}

Status check_finite(const std::vector<float>& x, int layer, size_t window) {
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      return InvalidArgument(fmt::format("layers.{}: non-finite activation in the block output (calibration window {}, "
                                         "element {}); the weights or the input overflow", layer, window, i));
    }
  }
  return OkStatus();
}

// x (n, dim) = mean |x| over heads that share a kv head: AWQ scales on wo's input are folded
// into wv's rows, which feed every query head of the group alike.
std::vector<float> tie_heads(std::vector<float> m, const LlamaConfig& c) {
  const int hs = c.head_dim(), mul = c.n_heads / c.n_kv_heads;
  if (mul == 1) return m;
  for (int g = 0; g < c.n_kv_heads; ++g) {
    for (int d = 0; d < hs; ++d) {
      double sum = 0;
      for (int h = g * mul; h < (g + 1) * mul; ++h) sum += m[static_cast<size_t>(h * hs + d)];
      for (int h = g * mul; h < (g + 1) * mul; ++h) m[static_cast<size_t>(h * hs + d)] = static_cast<float>(sum / mul);
    }
  }
  return m;
}

// wo's input scales (dim) as wv row scales (kv_dim): the first head of each group.
std::vector<float> kv_rows(const std::vector<float>& s, const LlamaConfig& c) {
  const int hs = c.head_dim(), mul = c.n_heads / c.n_kv_heads;
  std::vector<float> r(static_cast<size_t>(c.kv_dim()));
  for (int g = 0; g < c.n_kv_heads; ++g)
    for (int d = 0; d < hs; ++d) r[static_cast<size_t>(g * hs + d)] = s[static_cast<size_t>(g * mul * hs + d)];
  return r;
}

void divide_vector(TensorView v, const std::vector<float>& s) {
  float* p = v.data_as<float>();
  for (size_t j = 0; j < s.size(); ++j) p[j] /= s[j];
}

}  // namespace

Result<PipelineReport> quantize_model(LlamaModel& net, const PipelineOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const LlamaConfig& c = net.config();
  LOWBIT_RETURN_IF_ERROR(check_method(opt));
  const bool needs_calib = opt.method != Method::kRtn;
  if (!opt.runnable && needs_calib) {
    return InvalidArgument(fmt::format("quantize_model: --method {} runs the quantized blocks; they must be runnable", method_name(opt.method)));
  }
  if (needs_calib && opt.calib.empty()) {
    return InvalidArgument(fmt::format("{} needs calibration text (at least one window of tokens)", method_name(opt.method)));
  }
  for (size_t w = 0; w < opt.calib.size(); ++w) {
    if (opt.calib[w].empty() || static_cast<int>(opt.calib[w].size()) > c.seq_len) {
      return InvalidArgument(fmt::format("calibration window {} has {} tokens; windows hold 1..{}", w, opt.calib[w].size(), c.seq_len));
    }
  }
  PipelineReport rep;
  for (const auto& w : opt.calib) rep.calib_tokens += static_cast<int64_t>(w.size());

  // The residual stream entering the current block, per window.
  const int first = opt.first_block, end = opt.end_block < 0 ? c.n_layers : opt.end_block;
  if (first < 0 || first > end || end > c.n_layers) {
    return InvalidArgument(fmt::format("blocks [{}, {}) are not within the model's {}", first, end, c.n_layers));
  }
  std::vector<std::vector<float>> xs(opt.calib.size());
  if (needs_calib && opt.residual != nullptr) {
    if (opt.residual->size() != opt.calib.size()) {
      return InvalidArgument(fmt::format("residual stream has {} windows, calibration {}", opt.residual->size(), opt.calib.size()));
    }
    xs = std::move(*opt.residual);
    for (size_t w = 0; w < xs.size(); ++w) {
      if (xs[w].size() != opt.calib[w].size() * static_cast<size_t>(c.dim)) {
        return InvalidArgument(fmt::format("residual stream window {} has {} values, expected {} x {}", w, xs[w].size(), opt.calib[w].size(), c.dim));
      }
    }
  } else if (needs_calib) {
    for (size_t w = 0; w < opt.calib.size(); ++w) {
      xs[w].resize(opt.calib[w].size() * static_cast<size_t>(c.dim));
      LOWBIT_RETURN_IF_ERROR(embed_tokens(net, opt.calib[w], xs[w].data()));
    }
  }
  const std::optional<QuantSpec> acts = opt.plan.activations;
  // AWQ and SmoothQuant change weights they may leave unquantized (a rescaled row or column).
  const bool rescales = opt.method == Method::kAwq || opt.method == Method::kSmoothQuant;
  net.activation_quant().linear_input.reset();  // calibration sees fp32 activations

  for (int l = first; l < end; ++l) {
    LayerWeights& lw = net.mutable_weights().layers[static_cast<size_t>(l)];
    LayerLinears& ll = net.layers()[static_cast<size_t>(l)];
    // fp32 working copies of the block's weights: the methods that rescale them (AWQ,
    // SmoothQuant, outliers) get clones; RTN and GPTQ only read them, so an f32 weight is used in
    // place (one f32 copy of the block resident, not two: what bounds a streamed 8B block).
    // A linear the model runs from GGUF blocks (a k-quant file loaded as is) has no fp32 weight:
    // it is decoded here, for this block only, and dropped once quantized (no fp32 copy of the
    // model builds up; the quantized linear, or the blocks it was read from, is what runs).
    const bool in_place = opt.method == Method::kRtn || opt.method == Method::kGptq;
    std::array<Tensor, kNumLinearSlots> w;
    std::array<bool, kNumLinearSlots> cloned{};   // false: w[s] is empty, the weight is lw's own view
    std::array<bool, kNumLinearSlots> decoded{};  // w[s] was decoded from the linear's ggml blocks
    for (LinearSlot s : kLinearSlots) {
      const ConstTensorView src = lw.*linear_weight_member(s);
      const size_t i = static_cast<size_t>(s);
      if (const GgmlMatrix* g = ll.at(s).ggml(); g != nullptr && src.data() == nullptr) {
        LOWBIT_ASSIGN_OR_RETURN(w[i], ggml_decode(*g));
        cloned[i] = decoded[i] = true;
        continue;
      }
      if (in_place && src.dtype() == DType::kF32 && src.is_contiguous()) continue;
      LOWBIT_ASSIGN_OR_RETURN(w[i], clone_f32(src));
      cloned[i] = true;
    }
    // qwen2's v bias is scaled with wv's rows when AWQ / SmoothQuant fold a scale into them.
    Tensor bv;
    if (c.qkv_bias && rescales) {
      LOWBIT_ASSIGN_OR_RETURN(bv, clone_f32(lw.bv));
    }
    LOWBIT_ASSIGN_OR_RETURN(Tensor attn_norm, clone_f32(lw.attn_norm));
    LOWBIT_ASSIGN_OR_RETURN(Tensor ffn_norm, clone_f32(lw.ffn_norm));

    // 1. Statistics of the four input sites over the calibration windows (fp32 block).
    std::array<InputStats, kNumSites> st;
    const int64_t site_dim[kNumSites] = {c.dim, c.dim, c.dim, c.hidden_dim};
    const int64_t samples = opt.method == Method::kAwq ? opt.awq.max_samples : 0;
    for (int s = 0; s < kNumSites; ++s) st[static_cast<size_t>(s)].init(site_dim[s], opt.method == Method::kGptq, samples);
    std::vector<std::vector<float>> fp32_out;
    int64_t act_bytes = 0;
    if (needs_calib) {
      const LinearInputHook hook = [&](int, LinearSlot slot, const float* x, int64_t rows, int64_t) {
        if (slot == LinearSlot::kWk || slot == LinearSlot::kWv || slot == LinearSlot::kW3) return;  // same input as wq / w1
        st[static_cast<size_t>(site_of(slot))].add(x, rows);
      };
      if (!opt.sequential) fp32_out.resize(xs.size());
      // A linear decoded from blocks runs its fp32 decode while the statistics are gathered: the
      // F32 GEMM on the same values, and the very computation calibrating the model's F32 decode
      // does (w[s] outlives the guard).
      BlocksAside aside(ll);
      for (LinearSlot s : kLinearSlots) {
        if (decoded[static_cast<size_t>(s)]) aside.run_f32(s, w[static_cast<size_t>(s)].view());
      }
      for (size_t win = 0; win < xs.size(); ++win) {
        std::vector<float> y = xs[win];
        LOWBIT_RETURN_IF_ERROR(run_block(net, l, y.data(), static_cast<int64_t>(opt.calib[win].size()), hook));
        LOWBIT_RETURN_IF_ERROR(check_finite(y, l, win));
        if (!opt.sequential) fp32_out[win] = std::move(y);
      }
      for (InputStats& s : st) s.finish();
      for (const auto& x : xs) act_bytes += static_cast<int64_t>(x.size() * sizeof(float));
      act_bytes *= opt.sequential ? 1 : 2;
      for (const InputStats& s : st) {
        act_bytes += static_cast<int64_t>(s.hessian.size() * sizeof(double) + s.samples.size() * sizeof(float));
      }
    }
    rep.peak_activation_bytes = std::max(rep.peak_activation_bytes, act_bytes);

    auto spec_of = [&](LinearSlot s) -> std::optional<QuantSpec> {
      const PlanEntry* e = opt.plan.find(linear_name(l, s));
      return e ? e->spec : std::nullopt;
    };
    auto view = [&](LinearSlot s) {
      return cloned[static_cast<size_t>(s)] ? ConstTensorView(w[static_cast<size_t>(s)].view()) : ConstTensorView(lw.*linear_weight_member(s));
    };
    std::map<LinearSlot, LinearReport> reports;

    // 2. Method-specific rescaling (AWQ, SmoothQuant): weights *= s, the previous op /= s.
    if (opt.method == Method::kAwq) {
      struct Group { Site site; std::vector<LinearSlot> slots; };
      const Group groups[] = {{kAttnIn, {LinearSlot::kWq, LinearSlot::kWk, LinearSlot::kWv}},
                              {kFfnIn, {LinearSlot::kW1, LinearSlot::kW3}},
                              {kFfnMid, {LinearSlot::kW2}},
                              {kAttnOut, {LinearSlot::kWo}}};
      for (const Group& g : groups) {
        const std::optional<QuantSpec> spec = spec_of(g.slots[0]);
        if (!spec) continue;
        std::vector<ConstTensorView> ws;
        for (LinearSlot s : g.slots) ws.push_back(view(s));
        const InputStats& x = st[static_cast<size_t>(g.site)];
        std::vector<float> mean = x.mean_abs();
        if (g.site == kAttnOut) mean = tie_heads(std::move(mean), c);
        LOWBIT_ASSIGN_OR_RETURN(AwqResult r, awq_search(ws, mean, x.samples, x.sample_rows(), *spec, opt.awq, linear_name(l, g.slots[0])));
        for (LinearSlot s : g.slots) {
          scale_columns(w[static_cast<size_t>(s)].view(), r.scales);
          reports[s].alpha = r.alpha;
          reports[s].rtn_error = r.rtn_error;
          reports[s].error = r.error;
        }
        switch (g.site) {
          case kAttnIn: divide_vector(attn_norm.view(), r.scales); break;
          case kFfnIn: divide_vector(ffn_norm.view(), r.scales); break;
          case kFfnMid: divide_rows(w[static_cast<size_t>(LinearSlot::kW3)].view(), r.scales); break;
          case kAttnOut:
            divide_rows(w[static_cast<size_t>(LinearSlot::kWv)].view(), kv_rows(r.scales, c));
            if (c.qkv_bias) divide_vector(bv.view(), kv_rows(r.scales, c));
            break;
          default: break;
        }
      }
    } else if (opt.method == Method::kSmoothQuant) {
      // The paper's two sites (inputs of the norms) and, like AWQ, the FFN hidden state (folded
      // into w3's rows) and the attention output (folded into wv's rows, tied across the query
      // heads that share a kv head).
      const std::pair<Site, std::vector<LinearSlot>> groups[] = {
          {kAttnIn, {LinearSlot::kWq, LinearSlot::kWk, LinearSlot::kWv}},
          {kFfnIn, {LinearSlot::kW1, LinearSlot::kW3}},
          {kFfnMid, {LinearSlot::kW2}},
          {kAttnOut, {LinearSlot::kWo}}};
      for (const auto& [site, slots] : groups) {
        std::vector<ConstTensorView> ws;
        for (LinearSlot s : slots) ws.push_back(view(s));
        std::vector<float> sc = smoothquant_scales(ws, st[static_cast<size_t>(site)].absmax, opt.smooth_alpha);
        if (site == kAttnOut) sc = tie_heads(std::move(sc), c);
        for (LinearSlot s : slots) {
          scale_columns(w[static_cast<size_t>(s)].view(), sc);
          reports[s].alpha = opt.smooth_alpha;
        }
        switch (site) {
          case kAttnIn: divide_vector(attn_norm.view(), sc); break;
          case kFfnIn: divide_vector(ffn_norm.view(), sc); break;
          case kFfnMid: divide_rows(w[static_cast<size_t>(LinearSlot::kW3)].view(), sc); break;
          case kAttnOut:
            divide_rows(w[static_cast<size_t>(LinearSlot::kWv)].view(), kv_rows(sc, c));
            if (c.qkv_bias) divide_vector(bv.view(), kv_rows(sc, c));
            break;
          default: break;
        }
      }
    }

    // 3. Quantize every linear of the block. Linears on one input share GPTQ's factor of H⁻¹.
    std::vector<GptqFactorCache> factors(st.size());
    for (LinearSlot s : kLinearSlots) {
      const std::string name = linear_name(l, s);
      Tensor& ws = w[static_cast<size_t>(s)];
      const std::optional<QuantSpec> spec = spec_of(s);
      LinearReport& r = reports[s];
      r.name = name;
      r.spec = spec ? to_string(*spec) : "fp32";
      ll.outliers[static_cast<size_t>(s)] = OutlierSplit{};
      const bool from_blocks = decoded[static_cast<size_t>(s)];
      if (!spec && from_blocks && !rescales) {  // unchanged: the model keeps running its blocks
        w[static_cast<size_t>(s)] = Tensor();
        rep.linears.push_back(r);
        continue;
      }
      // The (rescaled) fp32 weight, kept for writers and later passes; one decoded from blocks is
      // kept only while this linear is quantized (the writers store the QuantizedTensor).
      const ConstTensorView kept = !cloned[static_cast<size_t>(s)] ? ConstTensorView(lw.*linear_weight_member(s))
                                   : from_blocks && spec ? ConstTensorView(std::as_const(ws).view())
                                                         : net.adopt(std::move(ws));
      if (!from_blocks || !spec) lw.*linear_weight_member(s) = kept;
      if (!spec) {
        ll.at(s) = Linear::fp32(kept);
        rep.linears.push_back(r);
        continue;
      }
      QuantizedTensor q;
      if (opt.method == Method::kGptq) {
        GptqStats gs;
        LOWBIT_ASSIGN_OR_RETURN(q, gptq_quantize(kept, st[static_cast<size_t>(site_of(s))].hessian, *spec, opt.gptq, name, &gs,
                                                 &factors[static_cast<size_t>(site_of(s))]));
      } else if (opt.method == Method::kOutliers) {
        LOWBIT_ASSIGN_OR_RETURN(OutlierDecomposition d, split_outliers(kept, st[static_cast<size_t>(site_of(s))].absmax, opt.outlier_threshold, *spec, name));
        q = std::move(d.main);
        OutlierSplit& split = ll.outliers[static_cast<size_t>(s)];
        split.cols = d.cols;
        split.storage_bytes = d.part_bytes;
        if (!d.cols.empty()) split.part = Linear::fp32(net.adopt(std::move(d.part)));
        r.outlier_cols = static_cast<int64_t>(d.cols.size());
        r.outlier_fraction = static_cast<double>(d.cols.size()) / static_cast<double>(kept.dim(1));
      } else {
        LOWBIT_ASSIGN_OR_RETURN(q, quantize(kept, *spec, {.name = name}));
      }
      // The kernels quantize a linear's whole input themselves: not with an outlier split.
      const bool split = !ll.outliers[static_cast<size_t>(s)].cols.empty();
      if (opt.runnable || split) {
        LOWBIT_ASSIGN_OR_RETURN(ll.at(s), Linear::quantized(q, split ? std::nullopt : acts));
      } else {
        ll.at(s) = Linear::stored(std::move(q));
      }
      rep.linears.push_back(r);
      if (from_blocks) ws = Tensor();
      // A site's Hessian and factor are dropped after its last linear (wv, wo, w2, w3 in this
      // order), so the widest ones (w2's, hidden²) are not resident beside the others' when w3 runs.
      const auto later = std::find(std::begin(kLinearSlots), std::end(kLinearSlots), s) + 1;
      if (std::none_of(later, std::end(kLinearSlots), [&](LinearSlot t) { return site_of(t) == site_of(s); })) {
        std::vector<double>().swap(st[static_cast<size_t>(site_of(s))].hessian);
        factors[static_cast<size_t>(site_of(s))].clear();
      }
    }
    lw.attn_norm = net.adopt(std::move(attn_norm));
    lw.ffn_norm = net.adopt(std::move(ffn_norm));
    if (bv.numel() > 0) lw.bv = net.adopt(std::move(bv));

    // 4. The next block's input: this block's outputs, quantized (sequential) or fp32.
    if (needs_calib) {
      if (opt.sequential) {
        // Linears quantized to ggml blocks run with fp32 inputs here: their dequantized weights
        // through the F32 GEMM (the same values; the ggml fp32-input tile path is several times slower).
        std::array<Tensor, kNumLinearSlots> deq;  // outlives `aside`, whose linears view it
        BlocksAside aside(ll);
        if (!acts) {
          for (LinearSlot s : kLinearSlots) {
            const Linear& lin = ll.at(s);
            if (lin.ggml() == nullptr || lin.quant() == nullptr || !ll.outliers[static_cast<size_t>(s)].cols.empty()) continue;
            LOWBIT_ASSIGN_OR_RETURN(deq[static_cast<size_t>(s)], Tensor::empty(DType::kF32, {lin.out_features(), lin.in_features()}));
            LOWBIT_RETURN_IF_ERROR(dequantize(*lin.quant(), deq[static_cast<size_t>(s)].view()));
            aside.run_f32(s, deq[static_cast<size_t>(s)].view());
          }
        }
        net.activation_quant().linear_input = acts;
        for (size_t win = 0; win < xs.size(); ++win) {
          LOWBIT_RETURN_IF_ERROR(run_block(net, l, xs[win].data(), static_cast<int64_t>(opt.calib[win].size())));
          LOWBIT_RETURN_IF_ERROR(check_finite(xs[win], l, win));
        }
        net.activation_quant().linear_input.reset();
      } else {
        xs = std::move(fp32_out);
      }
    }
    if (opt.on_layer) opt.on_layer(l, c.n_layers);
  }

  if (opt.residual != nullptr) *opt.residual = std::move(xs);
  if (!opt.embeddings) {
    net.activation_quant().linear_input = acts;
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rep;
  }
  // Embedding and classifier: a cast (fp16 by default) or RTN per the plan.
  // A k-quant model's embedding and classifier are blocks: decoded here one table at a time.
  LlamaWeights& mw = net.mutable_weights();
  const auto f32_of = [](ConstTensorView v, const GgmlMatrix* g, Tensor& store) -> Result<ConstTensorView> {
    if (g == nullptr || v.data() != nullptr) return v;
    LOWBIT_ASSIGN_OR_RETURN(store, ggml_decode(*g));
    return ConstTensorView(std::as_const(store).view());
  };
  if (const PlanEntry* e = opt.plan.find("tok_embeddings"); e && e->spec) {
    Tensor store;
    LOWBIT_ASSIGN_OR_RETURN(const ConstTensorView emb, f32_of(mw.tok_embeddings, net.embedding_blocks(), store));
    LOWBIT_RETURN_IF_ERROR(check_cast_range(emb, *e->spec, "tok_embeddings"));
    LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(emb, *e->spec, {.name = "tok_embeddings"}));
    store = Tensor();
    if (q.spec.ggml != GgmlType::kF32) {
      // ggml blocks: lookups decode rows of them (no fp32 table); a tied classifier runs them too.
      if (c.shared_classifier) {
        LOWBIT_ASSIGN_OR_RETURN(net.classifier(), Linear::quantized(q));
      }
      net.set_embedding_quant(std::move(q), /*lookups=*/true);
      mw.tok_embeddings = ConstTensorView();
      if (c.shared_classifier) mw.classifier = ConstTensorView();
    } else {
      LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, {c.vocab_size, c.dim}));
      LOWBIT_RETURN_IF_ERROR(dequantize(q, t.view()));
      mw.tok_embeddings = net.adopt(std::move(t));
      net.set_embedding_quant(std::nullopt);  // the dequantized table, not the file's blocks, is looked up
      net.set_embedding_spec(q.spec);
      if (c.shared_classifier) {
        mw.classifier = mw.tok_embeddings;
        LOWBIT_ASSIGN_OR_RETURN(net.classifier(), Linear::quantized(q));
      }
    }
  }
  if (const PlanEntry* e = opt.plan.find("classifier"); e && e->spec && !c.shared_classifier) {
    Tensor store;
    LOWBIT_ASSIGN_OR_RETURN(const ConstTensorView head, f32_of(mw.classifier, net.classifier().ggml(), store));
    LOWBIT_RETURN_IF_ERROR(check_cast_range(head, *e->spec, "classifier"));
    LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(head, *e->spec, {.name = "classifier"}));
    store = Tensor();
    LOWBIT_ASSIGN_OR_RETURN(net.classifier(), Linear::quantized(q));
  }
  net.activation_quant().linear_input = acts;
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace lowbit
