// Measured sensitivity, the multiple-choice knapsack and mixed plans (mixed.h).
#include "lowbit/mixed.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace lowbit {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string linear_name(int layer, LinearSlot s) { return fmt::format("layers.{}.{}", layer, linear_slot_name(s)); }

// The input site statistics a linear reads (wq/wk/wv share one input, w1/w3 another).
int site_of(LinearSlot s) {
  switch (s) {
    case LinearSlot::kWq:
    case LinearSlot::kWk:
    case LinearSlot::kWv: return 0;
    case LinearSlot::kWo: return 1;
    case LinearSlot::kW1:
    case LinearSlot::kW3: return 2;
    case LinearSlot::kW2: return 3;
  }
  return 0;
}
constexpr int kSites = 4;

struct UnitDef {
  std::string name;
  std::vector<std::pair<int, LinearSlot>> linears;
};

std::vector<UnitDef> make_units(const LlamaConfig& c, UnitGranularity g) {
  std::vector<UnitDef> units;
  if (g == UnitGranularity::kRole) {
    for (LinearSlot s : kLinearSlots) {
      UnitDef u{std::string(linear_slot_name(s)), {}};
      for (int l = 0; l < c.n_layers; ++l) u.linears.emplace_back(l, s);
      units.push_back(std::move(u));
    }
    return units;
  }
  for (int l = 0; l < c.n_layers; ++l) {
    if (g == UnitGranularity::kLayer) {
      UnitDef u{fmt::format("layers.{}", l), {}};
      for (LinearSlot s : kLinearSlots) u.linears.emplace_back(l, s);
      units.push_back(std::move(u));
    } else {
      for (LinearSlot s : kLinearSlots) units.push_back({linear_name(l, s), {{l, s}}});
    }
  }
  return units;
}

int64_t storage_bits(const std::optional<QuantSpec>& spec, int64_t rows, int64_t cols) {
  const double bpw = spec ? bits_per_weight(*spec, rows, cols) : 32.0;
  return std::llround(bpw * static_cast<double>(rows) * static_cast<double>(cols));
}

double log_sum_exp(const float* x, int64_t n) {
  const float mx = *std::max_element(x, x + n);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
  return mx + std::log(s);
}

std::vector<double> ranks(std::span<const double> a) {
  std::vector<size_t> idx(a.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::sort(idx.begin(), idx.end(), [&](size_t i, size_t j) { return a[i] < a[j]; });
  std::vector<double> r(a.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && a[idx[j + 1]] == a[idx[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j);
    for (size_t k = i; k <= j; ++k) r[idx[k]] = avg;
    i = j + 1;
  }
  return r;
}

// H = Σ xᵀx at every input site (wq's for q/k/v, wo's, w1's for gate/up, w2's) of `net` over
// `windows`, summed as the pipeline sums it (float products folded into double). [l·kSites + site]
Result<std::vector<InputStats>> site_hessians(const LlamaModel& net, const std::vector<std::vector<int>>& windows) {
  const LlamaConfig& c = net.config();
  std::vector<InputStats> hess(static_cast<size_t>(c.n_layers * kSites));
  const LinearInputHook hook = [&](int layer, LinearSlot slot, const float* x, int64_t rows, int64_t cols) {
    if (slot == LinearSlot::kWk || slot == LinearSlot::kWv || slot == LinearSlot::kW3) return;
    InputStats& h = hess[static_cast<size_t>(layer * kSites + site_of(slot))];
    if (h.dim == 0) {
      h.init(cols, /*hessian=*/true, /*max_rows=*/0);
      h.fold_bytes = int64_t{4} << 20;  // every site's pending rows are held at once
    }
    h.add(x, rows);
  };
  for (size_t w = 0; w < windows.size(); ++w) {
    const int64_t n = static_cast<int64_t>(windows[w].size());
    if (n < 1 || n > c.seq_len) return InvalidArgument(fmt::format("GPTQ window {} has {} tokens; windows hold 1..{}", w, n, c.seq_len));
    std::vector<float> x(static_cast<size_t>(n * c.dim));  // (n, dim)
    LOWBIT_RETURN_IF_ERROR(embed_tokens(net, windows[w], x.data()));
    for (int l = 0; l < c.n_layers; ++l) LOWBIT_RETURN_IF_ERROR(run_block(net, l, x.data(), n, hook));
  }
  for (InputStats& h : hess) h.finish();
  return hess;
}

// Knapsack options valued +inf (or NaN) are unavailable.
bool available(const KnapsackItem& it, size_t k) { return it.value[k] < std::numeric_limits<double>::infinity(); }

// The smallest cost[k] over the available options (value[k] < +inf); -1 when none is.
int64_t cheapest_available(const std::vector<int64_t>& cost, const std::vector<double>& value) {
  int64_t lo = -1;
  for (size_t k = 0; k < cost.size(); ++k) {
    if (value[k] < std::numeric_limits<double>::infinity()) lo = lo < 0 ? cost[k] : std::min(lo, cost[k]);
  }
  return lo;
}

}  // namespace

bool candidate_fits(const Candidate& c, int64_t cols) {
  if (!c.spec || c.spec->ggml == GgmlType::kF32) return true;
  const GgmlBlockInfo* info = ggml_block_info(c.spec->ggml);
  return info != nullptr && cols % info->block_size == 0;
}

Result<UnitGranularity> parse_granularity(std::string_view name) {
  if (name == "tensor") return UnitGranularity::kTensor;
  if (name == "layer") return UnitGranularity::kLayer;
  if (name == "role") return UnitGranularity::kRole;
  return InvalidArgument(fmt::format("unknown granularity '{}' (known: tensor, layer, role)", name));
}

std::string_view granularity_name(UnitGranularity g) {
  switch (g) {
    case UnitGranularity::kTensor: return "tensor";
    case UnitGranularity::kLayer: return "layer";
    case UnitGranularity::kRole: return "role";
  }
  return "?";
}

Result<Candidate> parse_candidate(std::string_view text) {
  if (text == "fp32" || text == "none") return Candidate{"fp32", std::nullopt};
  if (Result<Scheme> s = find_scheme(text); s.ok()) {
    LOWBIT_ASSIGN_OR_RETURN(QuantSpec spec, parse_spec(s->weights));
    return Candidate{std::string(text), spec};
  }
  Result<QuantSpec> spec = parse_spec(text);
  if (!spec.ok()) {
    return InvalidArgument(fmt::format("'{}' is neither fp32, a scheme name (see `lowbit schemes`) nor a spec: {}", text,
                                       spec.status().message()));
  }
  return Candidate{std::string(text), *spec};
}

Result<std::vector<Candidate>> parse_candidates(std::string_view list, std::string_view flag) {
  std::vector<Candidate> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    const std::string_view item = list.substr(pos, comma - pos);
    if (item.empty()) return InvalidArgument(fmt::format("{}: empty entry in '{}'", flag, list));
    Result<Candidate> c = parse_candidate(item);
    if (!c.ok()) return InvalidArgument(fmt::format("{}: {}", flag, c.status().message()));
    for (const Candidate& o : out) {
      if (o.name == c->name) return InvalidArgument(fmt::format("{}: '{}' is listed twice", flag, item));
    }
    out.push_back(*c);
    pos = comma + 1;
  }
  if (out.size() > 255) return InvalidArgument(fmt::format("{}: {} candidates; at most 255", flag, out.size()));
  return out;
}

double spearman(std::span<const double> a_all, std::span<const double> b_all) {
  std::vector<double> a, b;
  for (size_t i = 0; i < std::min(a_all.size(), b_all.size()); ++i) {
    if (std::isfinite(a_all[i]) && std::isfinite(b_all[i])) a.push_back(a_all[i]), b.push_back(b_all[i]);
  }
  const size_t n = a.size();
  if (n < 2) return 0.0;
  const std::vector<double> ra = ranks(a), rb = ranks(b);
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / static_cast<double>(n);
  const double mb = std::accumulate(rb.begin(), rb.end(), 0.0) / static_cast<double>(n);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0;
}

Result<SensitivityReport> measure_sensitivity(LlamaModel& net, const SensitivityOptions& opt) {
  const auto t0 = Clock::now();
  const LlamaConfig& c = net.config();
  if (opt.candidates.empty()) return InvalidArgument("sensitivity: no candidates");
  if (opt.windows.empty()) return InvalidArgument("sensitivity: no calibration windows");
  for (size_t w = 0; w < opt.windows.size(); ++w) {
    const size_t n = opt.windows[w].size();
    if (n < 2 || static_cast<int>(n) > c.seq_len) {
      return InvalidArgument(fmt::format("sensitivity: calibration window {} has {} tokens; windows hold 2..{}", w, n, c.seq_len));
    }
  }
  for (const Candidate& cand : opt.candidates) {
    if (cand.spec) LOWBIT_RETURN_IF_ERROR(validate(*cand.spec));
  }
  if (opt.method != Method::kRtn && opt.method != Method::kGptq) {
    return InvalidArgument(fmt::format("sensitivity: method {} is not supported (rtn, gptq)", method_name(opt.method)));
  }
  const bool gptq = opt.method == Method::kGptq;
  const int L = c.n_layers, V = c.vocab_size;
  const size_t nw = opt.windows.size();
  // The fp32 linears, to restore after each trial.
  std::vector<LayerLinears> original = net.layers();
  const std::optional<QuantSpec> acts = net.activation_quant().linear_input;
  net.activation_quant().linear_input.reset();

  // 1. Reference pass: the residual entering every block, E[x²] at every input site, the logits.
  std::vector<std::vector<std::vector<float>>> xin(static_cast<size_t>(L), std::vector<std::vector<float>>(nw));  // [l][w] (n, dim)
  std::vector<std::vector<double>> sumsq(static_cast<size_t>(L * kSites));  // [l·4 + site] (in)
  std::vector<int64_t> sq_rows(static_cast<size_t>(L * kSites), 0);
  // H from GPTQ's own windows (quantize's calibration tokens), else from the scored ones.
  std::vector<InputStats> hess;  // [l·4 + site]
  if (gptq) {
    LOWBIT_ASSIGN_OR_RETURN(hess, site_hessians(net, opt.gptq_windows.empty() ? opt.windows : opt.gptq_windows));
  }
  const LinearInputHook hook = [&](int layer, LinearSlot slot, const float* x, int64_t rows, int64_t cols) {
    if (slot == LinearSlot::kWk || slot == LinearSlot::kWv || slot == LinearSlot::kW3) return;
    const size_t k = static_cast<size_t>(layer * kSites + site_of(slot));
    std::vector<double>& s = sumsq[k];
    s.resize(static_cast<size_t>(cols), 0.0);
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = 0; j < cols; ++j) s[static_cast<size_t>(j)] += static_cast<double>(x[t * cols + j]) * x[t * cols + j];
    sq_rows[k] += rows;
  };
  std::vector<std::vector<float>> ref_logits(nw);  // [w] (scored rows, vocab)
  std::vector<std::vector<double>> ref_lz(nw);     // [w] (scored rows) log Σ exp
  auto first_scored = [&](size_t w) { return static_cast<int64_t>(opt.windows[w].size()) / 2; };
  auto n_scored = [&](size_t w) { return static_cast<int64_t>(opt.windows[w].size()) - 1 - first_scored(w); };
  double ref_nll = 0;
  int64_t scored = 0;
  std::vector<float> logits;  // (n, vocab)
  for (size_t w = 0; w < nw; ++w) {
    const int64_t n = static_cast<int64_t>(opt.windows[w].size());
    std::vector<float> x(static_cast<size_t>(n * c.dim));  // (n, dim)
    LOWBIT_RETURN_IF_ERROR(embed_tokens(net, opt.windows[w], x.data()));
    for (int l = 0; l < L; ++l) {
      xin[static_cast<size_t>(l)][w] = x;
      LOWBIT_RETURN_IF_ERROR(run_block(net, l, x.data(), n, hook));
    }
    const int64_t f = first_scored(w), m = n_scored(w);
    if (m == 0) continue;
    LOWBIT_RETURN_IF_ERROR(run_head(net, x.data() + f * c.dim, m, &logits));  // only the scored rows
    ref_logits[w].assign(logits.begin(), logits.begin() + m * V);
    ref_lz[w].resize(static_cast<size_t>(m));
    for (int64_t j = 0; j < m; ++j) {
      const float* row = ref_logits[w].data() + j * V;
      ref_lz[w][static_cast<size_t>(j)] = log_sum_exp(row, V);
      ref_nll += ref_lz[w][static_cast<size_t>(j)] - row[opt.windows[w][static_cast<size_t>(f + j + 1)]];
    }
    scored += m;
  }
  if (scored == 0) return InvalidArgument("sensitivity: the windows leave no token to score (each needs >= 2 tokens)");

  SensitivityReport rep;
  rep.candidates = opt.candidates;
  rep.granularity = opt.granularity;
  rep.method = opt.method;
  rep.act_order = opt.method == Method::kGptq && opt.gptq.act_order;
  rep.gptq_tokens = gptq && !hess.empty() ? hess.front().tokens : 0;
  rep.gptq_scored_apart = gptq && !opt.gptq_windows.empty();
  rep.tokens_scored = scored;
  rep.ref_ppl = std::exp(ref_nll / static_cast<double>(scored));
  const std::vector<UnitDef> defs = make_units(c, opt.granularity);
  const size_t nc = opt.candidates.size();
  const int64_t total_steps = static_cast<int64_t>(defs.size() * nc);
  int64_t step = 0;
  double proxy_seconds = 0;
  std::vector<GptqFactorCache> factors(kSites);  // [site] the last factor of H⁻¹: a unit's candidates share it

  for (const UnitDef& def : defs) {
    UnitSensitivity u;
    u.name = def.name;
    int start = L;
    for (const auto& [l, s] : def.linears) {
      u.tensors.push_back(linear_name(l, s));
      const ConstTensorView w = net.weights().layers[static_cast<size_t>(l)].*linear_weight_member(s);
      u.params += w.dim(0) * w.dim(1);
      start = std::min(start, l);
    }
    for (const Candidate& cand : opt.candidates) {
      const bool fits = std::all_of(def.linears.begin(), def.linears.end(), [&](const auto& ls) {
        const ConstTensorView w = net.weights().layers[static_cast<size_t>(ls.first)].*linear_weight_member(ls.second);
        return candidate_fits(cand, w.dim(1));
      });
      if (!fits) {  // not measured: nothing may choose it for this unit
        constexpr double kInf = std::numeric_limits<double>::infinity();
        u.bits.push_back(0);
        u.dkld.push_back(kInf);
        u.dppl.push_back(kInf);
        u.proxy.push_back(kInf);
        if (opt.on_step) opt.on_step(++step, total_steps);
        continue;
      }
      // 2. The unit's linears at this candidate (and the proxy from the same quantized weights).
      int64_t bits = 0;
      double proxy = 0;
      for (const auto& [l, s] : def.linears) {
        const ConstTensorView w = net.weights().layers[static_cast<size_t>(l)].*linear_weight_member(s);
        const int64_t rows = w.dim(0), cols = w.dim(1);
        bits += storage_bits(cand.spec, rows, cols);
        if (!cand.spec) {
          net.layers()[static_cast<size_t>(l)].at(s) = Linear::fp32(w);
          continue;
        }
        const auto tq = Clock::now();
        const size_t k = static_cast<size_t>(l * kSites + site_of(s));
        Result<QuantizedTensor> qr = gptq ? gptq_quantize(w, hess[k].hessian, *cand.spec, opt.gptq, linear_name(l, s), nullptr,
                                                          &factors[static_cast<size_t>(site_of(s))])
                                          : quantize(w, *cand.spec, {.name = linear_name(l, s)});
        if (!qr.ok()) {
          net.layers() = std::move(original);
          net.activation_quant().linear_input = acts;
          return qr.status();
        }
        const QuantizedTensor& q = *qr;
        LOWBIT_ASSIGN_OR_RETURN(Tensor w_hat, Tensor::empty(DType::kF32, {rows, cols}));  // (out, in)
        LOWBIT_RETURN_IF_ERROR(dequantize(q, w_hat.view()));
        const std::vector<double>& sq = sumsq[k];
        const double inv_rows = sq_rows[k] > 0 ? 1.0 / static_cast<double>(sq_rows[k]) : 0.0;
        const float* a = w.data_as<float>();
        const float* b = w_hat.data_as<float>();
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < cols; ++j) {
            const double d = static_cast<double>(a[r * cols + j]) - b[r * cols + j];
            proxy += d * d * (sq.empty() ? 0.0 : sq[static_cast<size_t>(j)] * inv_rows);
          }
        }
        proxy_seconds += since(tq);
        LOWBIT_ASSIGN_OR_RETURN(net.layers()[static_cast<size_t>(l)].at(s), Linear::quantized(q));
      }
      // 3. The forward from the first block the unit touches, scored against the reference.
      double kld = 0, nll = 0;
      for (size_t w = 0; w < nw; ++w) {
        const int64_t n = static_cast<int64_t>(opt.windows[w].size());
        std::vector<float> x = xin[static_cast<size_t>(start)][w];
        for (int l = start; l < L; ++l) LOWBIT_RETURN_IF_ERROR(run_block(net, l, x.data(), n));
        const int64_t f = first_scored(w), m = n_scored(w);
        if (m == 0) continue;
        LOWBIT_RETURN_IF_ERROR(run_head(net, x.data() + f * c.dim, m, &logits));
        for (int64_t j = 0; j < m; ++j) {
          const float* row = logits.data() + j * V;
          const float* ref = ref_logits[w].data() + j * V;
          const double lz = log_sum_exp(row, V), rz = ref_lz[w][static_cast<size_t>(j)];
          double kl = 0;
          for (int v = 0; v < V; ++v) {
            const double lp_ref = ref[v] - rz, lp = row[v] - lz;
            kl += std::exp(lp_ref) * (lp_ref - lp);
          }
          kld += std::max(0.0, kl);  // rounding can leave -1e-17 for identical rows
          nll += lz - row[opt.windows[w][static_cast<size_t>(f + j + 1)]];
        }
      }
      for (const auto& [l, s] : def.linears) net.layers()[static_cast<size_t>(l)].at(s) = original[static_cast<size_t>(l)].at(s);
      u.bits.push_back(bits);
      u.dkld.push_back(kld / static_cast<double>(scored));
      u.dppl.push_back(std::exp(nll / static_cast<double>(scored)) - rep.ref_ppl);
      u.proxy.push_back(proxy);
      if (opt.on_step) opt.on_step(++step, total_steps);
    }
    if (std::none_of(u.dkld.begin(), u.dkld.end(), [](double v) { return std::isfinite(v); })) {
      net.layers() = std::move(original);
      net.activation_quant().linear_input = acts;
      const auto& [l0, s0] = def.linears.front();
      const ConstTensorView w0 = net.weights().layers[static_cast<size_t>(l0)].*linear_weight_member(s0);
      return InvalidArgument(fmt::format("sensitivity: no candidate can hold {} ({}x{}: rows the candidates' blocks do not divide); "
                                         "add one with groups, such as int4:g32:sym:fp16", u.name, w0.dim(0), w0.dim(1)));
    }
    rep.units.push_back(std::move(u));
  }
  net.layers() = std::move(original);
  net.activation_quant().linear_input = acts;

  std::vector<double> all_p, all_m;
  rep.spearman_by_candidate.assign(nc, 0.0);
  for (size_t k = 0; k < nc; ++k) {
    if (!opt.candidates[k].spec) continue;
    std::vector<double> p, m;
    for (const UnitSensitivity& u : rep.units) p.push_back(u.proxy[k]), m.push_back(u.dkld[k]);
    rep.spearman_by_candidate[k] = spearman(p, m);
    all_p.insert(all_p.end(), p.begin(), p.end());
    all_m.insert(all_m.end(), m.begin(), m.end());
  }
  rep.spearman = spearman(all_p, all_m);
  rep.proxy_seconds = proxy_seconds;
  rep.seconds = since(t0);
  return rep;
}

Result<KnapsackResult> solve_knapsack(std::span<const KnapsackItem> items, int64_t budget, const KnapsackOptions& opt) {
  int64_t g = 0, min_total = 0, max_total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const KnapsackItem& it = items[i];
    if (it.cost.empty() || it.cost.size() != it.value.size() || it.cost.size() > 255) {
      return InvalidArgument(fmt::format("knapsack: item {} has {} costs and {} values (1..255 options, one value each)", i,
                                         it.cost.size(), it.value.size()));
    }
    int64_t lo = -1, hi = -1;
    for (size_t k = 0; k < it.cost.size(); ++k) {
      const int64_t cst = it.cost[k];
      if (cst < 0) return InvalidArgument(fmt::format("knapsack: item {} has a negative cost {}", i, cst));
      if (!available(it, k)) continue;
      g = std::gcd(g, cst);
      lo = lo < 0 ? cst : std::min(lo, cst);
      hi = std::max(hi, cst);
    }
    if (lo < 0) return InvalidArgument(fmt::format("knapsack: item {} has no available option (every value is +inf)", i));
    min_total += lo;
    max_total += hi;
  }
  if (budget < min_total) {
    return InvalidArgument(fmt::format("knapsack: budget {} bits is below the cheapest plan, {} bits", budget, min_total));
  }
  KnapsackResult r;
  const size_t n = items.size();
  if (n == 0) return r;
  if (g == 0) g = 1;
  const int64_t cap = std::min(budget, max_total);
  int64_t res = g;
  if (cap / g > opt.max_cells) {
    res = ((cap + opt.max_cells - 1) / opt.max_cells + g - 1) / g * g;
    r.exact = false;
  }
  r.resolution = res;
  const int64_t C = cap / res;
  std::vector<std::vector<int64_t>> cw(n);
  int64_t min_cells = 0;
  for (size_t i = 0; i < n; ++i) {
    for (const int64_t cst : items[i].cost) cw[i].push_back((cst + res - 1) / res);
    min_cells += cheapest_available(cw[i], items[i].value);
  }
  auto cheapest = [&](size_t i) {
    int best = -1;
    for (size_t k = 0; k < items[i].cost.size(); ++k) {
      if (available(items[i], k) && (best < 0 || items[i].cost[k] < items[i].cost[static_cast<size_t>(best)])) best = static_cast<int>(k);
    }
    return best;
  };
  auto finish = [&]() {
    r.value = 0;
    r.cost = 0;
    for (size_t i = 0; i < n; ++i) {
      r.value += items[i].value[static_cast<size_t>(r.choice[i])];
      r.cost += items[i].cost[static_cast<size_t>(r.choice[i])];
    }
    return r;
  };
  if (min_cells > C) {  // only when coarsened: the cheapest choice fits the true budget
    for (size_t i = 0; i < n; ++i) r.choice.push_back(cheapest(i));
    return finish();
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const size_t cells = static_cast<size_t>(C) + 1;
  std::vector<double> dp(cells, 0.0), next(cells);           // dp[c]: least value with cost ≤ c cells
  std::vector<uint8_t> pick(n * cells);                      // (items, cells) option taken
  for (size_t i = 0; i < n; ++i) {
    const KnapsackItem& it = items[i];
    uint8_t* pi = &pick[i * cells];
    for (size_t c = 0; c < cells; ++c) {
      double best = kInf;
      uint8_t bk = 0;
      for (size_t k = 0; k < it.cost.size(); ++k) {
        const size_t w = static_cast<size_t>(cw[i][k]);
        if (!available(it, k) || w > c || dp[c - w] == kInf) continue;
        const double v = dp[c - w] + it.value[k];
        if (v < best) best = v, bk = static_cast<uint8_t>(k);
      }
      next[c] = best;
      pi[c] = bk;
    }
    dp.swap(next);
  }
  if (dp[cells - 1] == kInf) return Internal("knapsack: no feasible choice although the cheapest fits");
  r.choice.assign(n, 0);
  size_t c = cells - 1;
  for (size_t i = n; i-- > 0;) {
    const uint8_t k = pick[i * cells + c];
    r.choice[i] = k;
    c -= static_cast<size_t>(cw[i][k]);
  }
  return finish();
}

std::vector<size_t> lossless_candidates(const SensitivityReport& s, double tol) {
  std::vector<size_t> out;
  for (size_t k = 0; k < s.candidates.size(); ++k) {
    if (!s.candidates[k].spec) continue;
    bool any = false, all_within = true;
    for (const UnitSensitivity& u : s.units) {
      if (!unit_fits(u, k)) continue;
      any = true;
      all_within = all_within && std::fabs(u.dkld[k]) <= tol;
    }
    if (any && all_within) out.push_back(k);
  }
  return out;
}

Result<MixedChoice> choose_mix(const SensitivityReport& s, double target_bpw, const KnapsackOptions& opt) {
  if (!(target_bpw > 0) || !std::isfinite(target_bpw)) {
    return InvalidArgument(fmt::format("--target-bpw: expected a positive number of bits per weight, got {}", target_bpw));
  }
  std::vector<KnapsackItem> items;
  int64_t params = 0, cheapest = 0;
  for (const UnitSensitivity& u : s.units) {
    items.push_back({u.bits, u.dkld});
    params += u.params;
    const int64_t lo = cheapest_available(u.bits, u.dkld);
    if (lo < 0) return InvalidArgument(fmt::format("mixed precision: no candidate fits unit {}", u.name));
    cheapest += lo;
  }
  if (params == 0) return InvalidArgument("mixed precision: the sensitivity report has no units");
  const double cheapest_bpw = static_cast<double>(cheapest) / static_cast<double>(params);
  const int64_t budget = static_cast<int64_t>(std::floor(target_bpw * static_cast<double>(params)));
  if (budget < cheapest) {
    return InvalidArgument(fmt::format("--target-bpw {:.3f} is below the cheapest candidate mix, {:.3f} bits per weight",
                                       target_bpw, cheapest_bpw));
  }
  LOWBIT_ASSIGN_OR_RETURN(KnapsackResult k, solve_knapsack(items, budget, opt));
  MixedChoice m;
  m.target_bpw = target_bpw;
  m.choice = k.choice;
  m.bits_per_weight = static_cast<double>(k.cost) / static_cast<double>(params);
  m.predicted_kld = k.value;
  for (size_t i = 0; i < s.units.size(); ++i) m.predicted_dppl += s.units[i].dppl[static_cast<size_t>(k.choice[i])];
  m.knapsack = std::move(k);
  return m;
}

Result<double> mix_kld_on_windows(const LlamaModel& quantized, const LlamaModel& reference,
                                  const std::vector<std::vector<int>>& windows) {
  const LlamaConfig& c = reference.config();
  if (windows.empty()) return InvalidArgument("mix KLD: no windows");
  if (quantized.config().dim != c.dim || quantized.config().vocab_size != c.vocab_size || quantized.config().n_layers != c.n_layers) {
    return InvalidArgument("mix KLD: the quantized model and the reference differ in shape");
  }
  const int V = c.vocab_size;
  double kld = 0;
  int64_t scored = 0;
  std::vector<float> lq, lr;  // (m, vocab) each
  for (size_t w = 0; w < windows.size(); ++w) {
    const int64_t n = static_cast<int64_t>(windows[w].size());
    if (n < 2 || n > c.seq_len) {
      return InvalidArgument(fmt::format("mix KLD: window {} has {} tokens; windows hold 2..{}", w, n, c.seq_len));
    }
    const int64_t f = n / 2, m = n - 1 - f;  // as measure_sensitivity scores
    if (m == 0) continue;
    for (int which = 0; which < 2; ++which) {
      const LlamaModel& net = which == 0 ? quantized : reference;
      std::vector<float> x(static_cast<size_t>(n * c.dim));  // (n, dim)
      LOWBIT_RETURN_IF_ERROR(embed_tokens(net, windows[w], x.data()));
      for (int l = 0; l < c.n_layers; ++l) LOWBIT_RETURN_IF_ERROR(run_block(net, l, x.data(), n));
      LOWBIT_RETURN_IF_ERROR(run_head(net, x.data() + f * c.dim, m, which == 0 ? &lq : &lr));
    }
    for (int64_t j = 0; j < m; ++j) {
      const float* q = lq.data() + j * V;
      const float* r = lr.data() + j * V;
      const double qz = log_sum_exp(q, V), rz = log_sum_exp(r, V);
      double kl = 0;
      for (int v = 0; v < V; ++v) {
        const double lpr = r[v] - rz, lpq = q[v] - qz;
        kl += std::exp(lpr) * (lpr - lpq);
      }
      kld += std::max(0.0, kl);
    }
    scored += m;
  }
  if (scored == 0) return InvalidArgument("mix KLD: the windows leave no token to score");
  return kld / static_cast<double>(scored);
}

namespace {

// KL(reference ‖ model) summed over m rows of logits (m, vocab) against the reference rows and
// their log Σ exp.
double kl_sum(const float* logits, const float* ref, const double* ref_lz, int64_t m, int V) {
  double kld = 0;
  for (int64_t j = 0; j < m; ++j) {
    const float* q = logits + j * V;
    const float* r = ref + j * V;
    const double qz = log_sum_exp(q, V), rz = ref_lz[j];
    double kl = 0;
    for (int v = 0; v < V; ++v) {
      const double lpr = r[v] - rz, lpq = q[v] - qz;
      kl += std::exp(lpr) * (lpr - lpq);
    }
    kld += std::max(0.0, kl);
  }
  return kld;
}

// "layers.3.wq" → (3, wq); nullopt for anything else.
std::optional<std::pair<int, LinearSlot>> parse_linear_name(const std::string& name, int n_layers) {
  int layer = -1;
  char slot[8] = {};
  if (std::sscanf(name.c_str(), "layers.%d.%7s", &layer, slot) != 2 || layer < 0 || layer >= n_layers) return std::nullopt;
  for (LinearSlot ls : kLinearSlots) {
    if (linear_slot_name(ls) == slot && name == linear_name(layer, ls)) return std::make_pair(layer, ls);
  }
  return std::nullopt;
}

// The mix measured on the windows, with every (unit, candidate)'s linears quantized once and
// swapped in: a full forward keeps the residual entering every block, so a unit moved alone
// against the current mix runs only from its first block.
class MixEvaluator {
 public:
  MixEvaluator(const Model& model, const SensitivityReport& s, const RefineOptions& opt)
      : model_(model), s_(s), opt_(opt), ref_(model), work_(model) {}

  Status init(const QuantPlan& start_plan) {
    const LlamaConfig& c = model_.config;
    L_ = c.n_layers;
    V_ = c.vocab_size;
    // The non-linear tensors as the plan has them (embedding / classifier casts): the RTN pipeline.
    LOWBIT_RETURN_IF_ERROR(quantize_model(work_, {.plan = start_plan}).status());
    for (const UnitSensitivity& u : s_.units) {
      std::vector<std::pair<int, LinearSlot>> ls;
      int start = L_;
      for (const std::string& t : u.tensors) {
        const auto p = parse_linear_name(t, L_);
        if (!p) return InvalidArgument(fmt::format("refine: unit {} names '{}', not a linear of this model", u.name, t));
        ls.push_back(*p);
        start = std::min(start, p->first);
      }
      linears_.push_back(std::move(ls));
      start_.push_back(start);
    }
    // For GPTQ, Σ xᵀx at every input site of the fp32 model; then the reference logits on the scored rows.
    if (opt_.method == Method::kGptq) {
      for (const std::vector<int>& win : opt_.gptq_windows) {
        const int64_t n = static_cast<int64_t>(win.size());
        if (n < 1 || n > c.seq_len) return InvalidArgument(fmt::format("refine: a GPTQ window has {} tokens; windows hold 1..{}", n, c.seq_len));
      }
      LOWBIT_RETURN_IF_ERROR(collect_hessians(ref_));
    }
    const size_t nw = opt_.windows.size();
    ref_logits_.resize(nw);
    ref_lz_.resize(nw);
    resid_.assign(nw, std::vector<std::vector<float>>(static_cast<size_t>(L_)));
    scored_prefix_.assign(nw + 1, 0);
    std::vector<float> logits;
    for (size_t w = 0; w < nw; ++w) {
      const int64_t n = static_cast<int64_t>(opt_.windows[w].size());
      std::vector<float> x(static_cast<size_t>(n * c.dim));  // (n, dim)
      LOWBIT_RETURN_IF_ERROR(embed_tokens(ref_, opt_.windows[w], x.data()));
      for (int l = 0; l < L_; ++l) LOWBIT_RETURN_IF_ERROR(run_block(ref_, l, x.data(), n));
      const int64_t f = n / 2, m = n - 1 - f;
      if (m == 0) continue;
      LOWBIT_RETURN_IF_ERROR(run_head(ref_, x.data() + f * c.dim, m, &logits));
      ref_logits_[w].assign(logits.begin(), logits.begin() + m * V_);
      ref_lz_[w].resize(static_cast<size_t>(m));
      for (int64_t j = 0; j < m; ++j) ref_lz_[w][static_cast<size_t>(j)] = log_sum_exp(ref_logits_[w].data() + j * V_, V_);
      scored_ += m;
      scored_prefix_[w + 1] = scored_;
    }
    if (scored_ == 0) return InvalidArgument("refine: the windows leave no token to score");
    cache_.assign(s_.units.size(), std::vector<std::vector<Linear>>(s_.candidates.size()));
    return OkStatus();
  }

  // GPTQ's surrogate re-fitted to the inputs `net` feeds its linears (the pipeline's model of the
  // current mix, whose blocks see the quantized blocks before them): the Hessians re-collected, every
  // (unit, candidate) quantized again on first use. The surrogate's residuals need a full forward next.
  Status refit(const LlamaModel& net) {
    LOWBIT_RETURN_IF_ERROR(collect_hessians(net));
    for (std::vector<std::vector<Linear>>& unit : cache_)
      for (std::vector<Linear>& lin : unit) lin.clear();
    return OkStatus();
  }

  // Puts unit i's linears at candidate k (quantized on first use).
  Status set(size_t i, size_t k) {
    std::vector<Linear>& lin = cache_[i][k];
    if (lin.empty()) {
      const std::optional<QuantSpec>& spec = s_.candidates[k].spec;
      for (const auto& [l, slot] : linears_[i]) {
        const ConstTensorView w = model_weights(l, slot);
        if (!spec) {
          lin.push_back(Linear::fp32(w));
          continue;
        }
        const std::string name = linear_name(l, slot);
        Result<QuantizedTensor> q = opt_.method == Method::kGptq
                                        ? gptq_quantize(w, hess_[static_cast<size_t>(l * kSites + site_of(slot))].hessian, *spec, opt_.gptq, name,
                                                        nullptr, &factors_[static_cast<size_t>(site_of(slot))])
                                        : quantize(w, *spec, {.name = name});
        if (!q.ok()) return q.status();
        LOWBIT_ASSIGN_OR_RETURN(Linear ql, Linear::quantized(*q, opt_.activations));
        lin.push_back(std::move(ql));
      }
    }
    for (size_t t = 0; t < linears_[i].size(); ++t) {
      const auto& [l, slot] = linears_[i][t];
      work_.layers()[static_cast<size_t>(l)].at(slot) = lin[t];
    }
    return OkStatus();
  }

  Status set_all(const std::vector<int>& choice) {
    for (size_t i = 0; i < choice.size(); ++i) LOWBIT_RETURN_IF_ERROR(set(i, static_cast<size_t>(choice[i])));
    return OkStatus();
  }

  // Mean KL of the current model over the first `nwin` windows (all when 0), from block `start`
  // (the residuals entering it are those of the last full forward with keep = true).
  Result<double> measure(int start, bool keep, size_t nwin = 0) { return measure_net(work_, start, keep, nwin); }

  // Mean KL of another model of the same shape (the pipeline's quantization of a mix) over all windows.
  Result<double> measure_model(const LlamaModel& net) { return measure_net(net, 0, /*keep=*/false, 0); }

  int start_block(size_t i) const { return start_[i]; }
  int64_t evaluations() const { return evaluations_; }

 private:
  // H at every input site of `net` over GPTQ's windows (`windows` when it has none).
  Status collect_hessians(const LlamaModel& net) {
    LOWBIT_ASSIGN_OR_RETURN(hess_, site_hessians(net, opt_.gptq_windows.empty() ? opt_.windows : opt_.gptq_windows));
    return OkStatus();
  }

  Result<double> measure_net(const LlamaModel& net, int start, bool keep, size_t nwin) {
    const LlamaConfig& c = model_.config;
    if (nwin == 0 || nwin > opt_.windows.size()) nwin = opt_.windows.size();
    double kld = 0;
    std::vector<float> logits;
    for (size_t w = 0; w < nwin; ++w) {
      const int64_t n = static_cast<int64_t>(opt_.windows[w].size());
      std::vector<float> x;
      if (start == 0) {
        x.resize(static_cast<size_t>(n * c.dim));  // (n, dim)
        LOWBIT_RETURN_IF_ERROR(embed_tokens(net, opt_.windows[w], x.data()));
      } else {
        x = resid_[w][static_cast<size_t>(start)];
      }
      for (int l = start; l < L_; ++l) {
        if (keep) resid_[w][static_cast<size_t>(l)] = x;
        LOWBIT_RETURN_IF_ERROR(run_block(net, l, x.data(), n));
      }
      const int64_t f = n / 2, m = n - 1 - f;
      if (m == 0) continue;
      LOWBIT_RETURN_IF_ERROR(run_head(net, x.data() + f * c.dim, m, &logits));
      kld += kl_sum(logits.data(), ref_logits_[w].data(), ref_lz_[w].data(), m, V_);
    }
    ++evaluations_;
    if (opt_.on_eval) opt_.on_eval(evaluations_);
    return scored_prefix_[nwin] > 0 ? kld / static_cast<double>(scored_prefix_[nwin]) : 0.0;
  }

  ConstTensorView model_weights(int l, LinearSlot slot) const { return ref_.weights().layers[static_cast<size_t>(l)].*linear_weight_member(slot); }

  const Model& model_;
  const SensitivityReport& s_;
  const RefineOptions& opt_;
  LlamaModel ref_, work_;
  int L_ = 0, V_ = 0;
  int64_t scored_ = 0, evaluations_ = 0;
  std::vector<int64_t> scored_prefix_;                            // [w] tokens scored in windows [0, w)
  std::vector<std::vector<std::pair<int, LinearSlot>>> linears_;  // [unit] its linears
  std::vector<int> start_;                                        // [unit] first block it touches
  std::vector<InputStats> hess_;                                  // [l·4 + site] H (in, in), GPTQ only
  std::vector<GptqFactorCache> factors_ = std::vector<GptqFactorCache>(kSites);  // [site] the last factor of H⁻¹
  std::vector<std::vector<float>> ref_logits_;                    // [w] (scored rows, vocab)
  std::vector<std::vector<double>> ref_lz_;                       // [w] (scored rows)
  std::vector<std::vector<std::vector<float>>> resid_;            // [w][l] (n, dim) entering block l
  std::vector<std::vector<std::vector<Linear>>> cache_;           // [unit][candidate] its linears
};

// A proposal: units and the candidates they move to, its bits and the contextual prediction.
struct Move {
  std::vector<std::pair<size_t, int>> changes;
  double predicted = 0;
  std::string kind;
};

}  // namespace

Result<RefineReport> refine_mix(const Model& model, const SensitivityReport& s, const MixedChoice& start, const RefineOptions& opt) {
  const auto t0 = Clock::now();
  if (opt.rounds < 0) return InvalidArgument(fmt::format("refine: rounds must be >= 0, got {}", opt.rounds));
  if (opt.trials < 0) return InvalidArgument(fmt::format("refine: trials must be >= 0, got {}", opt.trials));
  if (opt.screen_windows < 0) return InvalidArgument(fmt::format("refine: screen_windows must be >= 0, got {}", opt.screen_windows));
  if (opt.method != Method::kRtn && opt.method != Method::kGptq) {
    return InvalidArgument(fmt::format("refine: method {} is not supported (rtn, gptq)", method_name(opt.method)));
  }
  if (start.choice.size() != s.units.size()) {
    return InvalidArgument(fmt::format("refine: {} choices for {} units", start.choice.size(), s.units.size()));
  }
  if (opt.windows.empty()) return InvalidArgument("refine: no calibration windows");
  const LlamaConfig& c = model.config;
  for (size_t w = 0; w < opt.windows.size(); ++w) {
    const size_t n = opt.windows[w].size();
    if (n < 2 || static_cast<int>(n) > c.seq_len) {
      return InvalidArgument(fmt::format("refine: window {} has {} tokens; windows hold 2..{}", w, n, c.seq_len));
    }
  }
  const size_t nu = s.units.size(), nc = s.candidates.size();
  const size_t screen = opt.screen_windows > 0 ? std::min(opt.windows.size(), static_cast<size_t>(opt.screen_windows)) : opt.windows.size();
  int64_t params = 0;
  for (const UnitSensitivity& u : s.units) params += u.params;
  const int64_t budget = static_cast<int64_t>(std::floor(start.target_bpw * static_cast<double>(params)));
  auto bits_of = [&](const std::vector<int>& ch) {
    int64_t b = 0;
    for (size_t i = 0; i < nu; ++i) b += s.units[i].bits[static_cast<size_t>(ch[i])];
    return b;
  };
  if (params == 0 || bits_of(start.choice) > budget) {
    return InvalidArgument(fmt::format("refine: the start mix ({} bits) exceeds the budget of {:.3f} bpw", bits_of(start.choice), start.target_bpw));
  }
  LOWBIT_ASSIGN_OR_RETURN(QuantPlan plan, make_mixed_plan(c, s, start, opt.activations));
  MixEvaluator ev(model, s, opt);
  LOWBIT_RETURN_IF_ERROR(ev.init(plan));

  // With `exact`, a mix's KLD is measured on the pipeline's quantization of the whole mix (kept in
  // *out when given); otherwise on the surrogate (each unit's linears swapped in).
  auto measure_exact = [&](const std::vector<int>& choice, std::unique_ptr<LlamaModel>* out) -> Result<double> {
    MixedChoice mc;
    mc.choice = choice;
    LOWBIT_ASSIGN_OR_RETURN(QuantPlan p, make_mixed_plan(c, s, mc, opt.activations));
    auto q = std::make_unique<LlamaModel>(model);
    PipelineOptions po{.method = opt.method, .plan = std::move(p), .calib = opt.gptq_windows.empty() ? opt.windows : opt.gptq_windows};
    po.gptq = opt.gptq;
    LOWBIT_RETURN_IF_ERROR(quantize_model(*q, po).status());
    LOWBIT_ASSIGN_OR_RETURN(double k, ev.measure_model(*q));
    if (out != nullptr) *out = std::move(q);
    return k;
  };
  // With exact GPTQ, the surrogate that ranks proposals is re-fitted to the inputs of the pipeline's
  // model of the current mix (`refit`) each time the mix changes.
  const bool refit = opt.exact && opt.method == Method::kGptq;
  std::unique_ptr<LlamaModel> exact_cur, exact_best;

  std::vector<int> cur = start.choice;
  double kld = 0;
  if (opt.exact) {
    LOWBIT_ASSIGN_OR_RETURN(kld, measure_exact(cur, refit ? &exact_cur : nullptr));
    if (refit) LOWBIT_RETURN_IF_ERROR(ev.refit(*exact_cur));
  }
  LOWBIT_RETURN_IF_ERROR(ev.set_all(cur));
  LOWBIT_ASSIGN_OR_RETURN(double surrogate, ev.measure(0, /*keep=*/true));  // the residuals the screening starts from
  if (!opt.exact) kld = surrogate;
  RefineReport rep;
  rep.kld_before = kld;
  for (int round = 0; round < opt.rounds; ++round) {
    RefineRound rr;
    rr.kld_before = kld;
    const int64_t ev0 = ev.evaluations();
    // 1. Each unit moved alone against the current mix (its residual entering the unit's first block is
    //    kept), on the first `screen_windows` windows.
    double kld_screen = surrogate;
    if (screen < opt.windows.size()) {
      LOWBIT_ASSIGN_OR_RETURN(kld_screen, ev.measure(0, /*keep=*/false, screen));
    }
    std::vector<std::vector<double>> d(nu, std::vector<double>(nc, 0.0));  // (units, candidates) contextual ΔKLD
    for (size_t i = 0; i < nu; ++i) {
      for (size_t k = 0; k < nc; ++k) {
        if (static_cast<int>(k) == cur[i]) continue;
        if (!unit_fits(s.units[i], k)) {
          d[i][k] = std::numeric_limits<double>::infinity();
          continue;
        }
        LOWBIT_RETURN_IF_ERROR(ev.set(i, k));
        LOWBIT_ASSIGN_OR_RETURN(double kk, ev.measure(ev.start_block(i), /*keep=*/false, screen));
        d[i][k] = kk - kld_screen;
      }
      LOWBIT_RETURN_IF_ERROR(ev.set(i, static_cast<size_t>(cur[i])));
    }
    // 2. Proposals: the knapsack on the contextual ΔKLDs, then the best-predicted singles and pairs.
    const int64_t cur_bits = bits_of(cur);
    std::vector<Move> moves;
    {
      std::vector<KnapsackItem> items;
      for (size_t i = 0; i < nu; ++i) items.push_back({s.units[i].bits, d[i]});
      LOWBIT_ASSIGN_OR_RETURN(KnapsackResult kr, solve_knapsack(items, budget, opt.knapsack));
      Move m{{}, kr.value, "re-solve"};
      for (size_t i = 0; i < nu; ++i)
        if (kr.choice[i] != cur[i]) m.changes.emplace_back(i, kr.choice[i]);
      if (!m.changes.empty()) moves.push_back(std::move(m));
    }
    std::vector<std::pair<size_t, int>> one;  // every (unit, candidate) other than the current
    for (size_t i = 0; i < nu; ++i)
      for (size_t k = 0; k < nc; ++k)
        if (static_cast<int>(k) != cur[i] && unit_fits(s.units[i], k)) one.emplace_back(i, static_cast<int>(k));
    auto dbits = [&](const std::pair<size_t, int>& a) {
      return s.units[a.first].bits[static_cast<size_t>(a.second)] - s.units[a.first].bits[static_cast<size_t>(cur[a.first])];
    };
    std::vector<Move> local;
    for (size_t a = 0; a < one.size(); ++a) {
      const double da = d[one[a].first][static_cast<size_t>(one[a].second)];
      if (cur_bits + dbits(one[a]) <= budget && da < 0) local.push_back({{one[a]}, da, "single"});
      for (size_t b = a + 1; b < one.size(); ++b) {
        if (one[b].first == one[a].first) continue;
        const double p = da + d[one[b].first][static_cast<size_t>(one[b].second)];
        if (p < 0 && cur_bits + dbits(one[a]) + dbits(one[b]) <= budget) local.push_back({{one[a], one[b]}, p, "pair"});
      }
    }
    const size_t keep = std::min(local.size(), static_cast<size_t>(opt.trials));
    std::partial_sort(local.begin(), local.begin() + static_cast<std::ptrdiff_t>(keep), local.end(),
                      [](const Move& x, const Move& y) { return x.predicted < y.predicted; });  // ties: enumeration order
    for (size_t t = 0; t < keep; ++t) {
      if (!moves.empty() && moves[0].changes == local[t].changes) continue;  // the re-solve proposed it already
      moves.push_back(std::move(local[t]));
    }
    // 3. Measure each; accept the best only if it lowers the measured KLD.
    double best = kld;
    const Move* chosen = nullptr;
    for (const Move& m : moves) {
      std::vector<int> next = cur;
      for (const auto& [i, k] : m.changes) next[i] = k;
      double kk = 0;
      if (opt.exact) {
        std::unique_ptr<LlamaModel> q;
        LOWBIT_ASSIGN_OR_RETURN(kk, measure_exact(next, refit ? &q : nullptr));
        if (kk < best) exact_best = std::move(q);
      } else {
        LOWBIT_RETURN_IF_ERROR(ev.set_all(next));
        LOWBIT_ASSIGN_OR_RETURN(kk, ev.measure(0, /*keep=*/false));
      }
      if (kk < best) best = kk, chosen = &m;
    }
    if (chosen != nullptr) {
      for (const auto& [i, k] : chosen->changes) cur[i] = k;
      rr.changed_units = static_cast<int>(chosen->changes.size());
      rr.move = chosen->kind;
    } else {
      rr.move = "none";
    }
    if (chosen != nullptr && refit) {
      exact_cur = std::move(exact_best);
      LOWBIT_RETURN_IF_ERROR(ev.refit(*exact_cur));
    }
    LOWBIT_RETURN_IF_ERROR(ev.set_all(cur));
    if (chosen != nullptr) {  // the kept mix's residuals, for the next round
      LOWBIT_ASSIGN_OR_RETURN(surrogate, ev.measure(0, /*keep=*/true));
      kld = opt.exact ? best : surrogate;
    }
    rr.kld_after = kld;
    rr.evaluations = ev.evaluations() - ev0;
    rep.rounds.push_back(rr);
    if (chosen == nullptr) break;
  }
  rep.kld_after = kld;
  rep.evaluations = ev.evaluations();
  MixedChoice& m = rep.choice;
  m.target_bpw = start.target_bpw;
  m.choice = cur;
  m.bits_per_weight = static_cast<double>(bits_of(cur)) / static_cast<double>(params);
  for (size_t i = 0; i < nu; ++i) {
    m.predicted_kld += s.units[i].dkld[static_cast<size_t>(cur[i])];
    m.predicted_dppl += s.units[i].dppl[static_cast<size_t>(cur[i])];
  }
  m.knapsack = start.knapsack;
  m.knapsack.choice = cur;
  m.knapsack.cost = bits_of(cur);
  m.knapsack.value = m.predicted_kld;
  rep.seconds = since(t0);
  return rep;
}

Result<QuantPlan> make_mixed_plan(const LlamaConfig& c, const SensitivityReport& s, const MixedChoice& m,
                                  const std::optional<QuantSpec>& activations) {
  if (m.choice.size() != s.units.size()) {
    return InvalidArgument(fmt::format("mixed plan: {} choices for {} units", m.choice.size(), s.units.size()));
  }
  LOWBIT_ASSIGN_OR_RETURN(QuantSpec half, parse_spec("fp16:tensor:unit"));
  LOWBIT_ASSIGN_OR_RETURN(QuantPlan plan, make_plan(c, half, activations));
  plan.scheme = fmt::format("mixed {:.3f} bpw ({} units by {})", m.bits_per_weight, s.units.size(), granularity_name(s.granularity));
  for (size_t i = 0; i < s.units.size(); ++i) {
    const UnitSensitivity& u = s.units[i];
    const size_t k = static_cast<size_t>(m.choice[i]);
    for (const std::string& t : u.tensors) {
      auto it = std::find_if(plan.entries.begin(), plan.entries.end(), [&](const PlanEntry& e) { return e.name == t; });
      if (it == plan.entries.end()) return InvalidArgument(fmt::format("mixed plan: unit {} names {}, which the model lacks", u.name, t));
      it->spec = s.candidates[k].spec;
      it->rule = fmt::format("target-bpw: {} ΔKLD {:.3g}", u.name, u.dkld[k]);
    }
  }
  return plan;
}

Result<QuantPlan> deepseek_plan(const LlamaConfig& c, const QuantSpec& weights, const std::optional<QuantSpec>& high,
                                const std::optional<QuantSpec>& activations) {
  LOWBIT_ASSIGN_OR_RETURN(QuantSpec half, parse_spec("fp16:tensor:unit"));
  const QuantSpec hi = high ? *high : half;
  LOWBIT_ASSIGN_OR_RETURN(QuantPlan plan, make_plan(c, weights, activations));
  plan.scheme = fmt::format("deepseek: {} (first/last two blocks, embedding: {})", to_string(weights), to_string(hi));
  for (PlanEntry& e : plan.entries) {
    if (e.role == "embedding" || e.role == "classifier") {
      e.spec = hi;
      e.rule = "policy deepseek: embeddings high";
      continue;
    }
    if (e.role != "linear") continue;
    int layer = -1;
    if (std::sscanf(e.name.c_str(), "layers.%d.", &layer) != 1) continue;
    if (layer < 2 || layer >= c.n_layers - 2) {
      e.spec = hi;
      e.rule = "policy deepseek: first/last two blocks high";
    }
  }
  return plan;
}

std::string plan_overrides_json(const QuantPlan& plan) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const PlanEntry& e : plan.entries) {
    if (e.role == "norm") continue;
    j[e.name] = e.spec ? to_string(*e.spec) : "fp32";
  }
  return j.dump(2);
}

std::string sensitivity_json(const SensitivityReport& s) {
  nlohmann::ordered_json j;
  j["granularity"] = std::string(granularity_name(s.granularity));
  j["method"] = std::string(method_name(s.method));
  j["act_order"] = s.act_order;
  if (s.method == Method::kGptq) {
    j["gptq_tokens"] = s.gptq_tokens;
    j["gptq_scored_apart"] = s.gptq_scored_apart;
  }
  nlohmann::ordered_json cands = nlohmann::ordered_json::array();
  for (const Candidate& c : s.candidates) cands.push_back({{"name", c.name}, {"spec", c.spec ? to_string(*c.spec) : "fp32"}});
  j["candidates"] = cands;
  j["tokens_scored"] = s.tokens_scored;
  j["ref_ppl"] = s.ref_ppl;
  j["seconds"] = s.seconds;
  j["proxy_seconds"] = s.proxy_seconds;
  j["spearman"] = s.spearman;
  j["spearman_by_candidate"] = s.spearman_by_candidate;
  nlohmann::ordered_json units = nlohmann::ordered_json::array();
  for (const UnitSensitivity& u : s.units) {
    units.push_back({{"name", u.name}, {"tensors", u.tensors}, {"params", u.params}, {"bits", u.bits},
                     {"dkld", u.dkld}, {"dppl", u.dppl}, {"proxy", u.proxy}});
  }
  j["units"] = units;
  return j.dump(2);
}

Result<SensitivityReport> parse_sensitivity_json(const std::string& text, const std::string& path, const LlamaConfig& c) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& what) { return InvalidArgument(fmt::format("{}: {}", path, what)); };
  if (j.is_discarded() || !j.is_object()) return bad("expected the JSON object `lowbit sensitivity --json` writes");
  if (!j.contains("granularity") || !j["granularity"].is_string() || !j.contains("candidates") || !j["candidates"].is_array() ||
      !j.contains("units") || !j["units"].is_array()) {
    return bad("expected fields granularity (string), candidates and units (arrays)");
  }
  SensitivityReport s;
  LOWBIT_ASSIGN_OR_RETURN(s.granularity, parse_granularity(j["granularity"].get<std::string>()));
  if (j.contains("method")) {
    if (!j["method"].is_string()) return bad("method must be a string (rtn, gptq)");
    Result<Method> m = parse_method(j["method"].get<std::string>());
    if (!m.ok()) return bad("method: " + m.status().message());
    s.method = *m;
  }
  if (j.contains("act_order")) {
    if (!j["act_order"].is_boolean()) return bad("act_order must be true or false");
    s.act_order = j["act_order"].get<bool>();
  }
  if (j.contains("gptq_tokens")) {
    if (!j["gptq_tokens"].is_number_integer() || j["gptq_tokens"].get<int64_t>() < 0) return bad("gptq_tokens must be an integer >= 0");
    s.gptq_tokens = j["gptq_tokens"].get<int64_t>();
  }
  if (j.contains("gptq_scored_apart")) {
    if (!j["gptq_scored_apart"].is_boolean()) return bad("gptq_scored_apart must be true or false");
    s.gptq_scored_apart = j["gptq_scored_apart"].get<bool>();
  }
  for (const auto& cj : j["candidates"]) {
    if (!cj.is_object() || !cj.contains("spec") || !cj["spec"].is_string() || !cj.contains("name") || !cj["name"].is_string()) {
      return bad("candidates: each needs name and spec strings");
    }
    Result<Candidate> cand = parse_candidate(cj["spec"].get<std::string>());
    if (!cand.ok()) return bad("candidates: " + cand.status().message());
    cand->name = cj["name"].get<std::string>();
    s.candidates.push_back(*cand);
  }
  if (s.candidates.empty() || s.candidates.size() > 255) return bad("candidates: expected 1..255");
  const size_t nc = s.candidates.size();
  std::set<std::string> seen;
  for (const auto& uj : j["units"]) {
    UnitSensitivity u;
    const char* arrays[] = {"bits", "dkld", "dppl", "proxy"};
    if (!uj.is_object() || !uj.contains("name") || !uj["name"].is_string() || !uj.contains("tensors") || !uj["tensors"].is_array()) {
      return bad("units: each needs a name and tensors");
    }
    u.name = uj["name"].get<std::string>();
    for (const char* a : arrays) {
      if (!uj.contains(a) || !uj[a].is_array() || uj[a].size() != nc) return bad(fmt::format("unit {}: {} must hold {} numbers", u.name, a, nc));
      const bool nullable = std::string_view(a) != "bits";  // null: the candidate does not fit the unit
      for (const auto& v : uj[a]) {
        if (!v.is_number() && !(nullable && v.is_null())) return bad(fmt::format("unit {}: {} must hold numbers", u.name, a));
      }
    }
    u.bits = uj["bits"].get<std::vector<int64_t>>();
    const auto reals = [&](const char* a) {
      std::vector<double> out;
      for (const auto& v : uj[a]) out.push_back(v.is_null() ? std::numeric_limits<double>::infinity() : v.get<double>());
      return out;
    };
    u.dkld = reals("dkld");
    u.dppl = reals("dppl");
    u.proxy = reals("proxy");
    for (size_t k = 0; k < nc; ++k) {
      if (u.bits[k] < 0) return bad(fmt::format("unit {}: bits must not be negative", u.name));
      if (std::isfinite(u.dkld[k]) != std::isfinite(u.dppl[k]) || std::isfinite(u.dkld[k]) != std::isfinite(u.proxy[k])) {
        return bad(fmt::format("unit {}: candidate {} is null in some of dkld, dppl, proxy but not all", u.name, k));
      }
    }
    if (std::none_of(u.dkld.begin(), u.dkld.end(), [](double v) { return std::isfinite(v); })) {
      return bad(fmt::format("unit {}: no candidate fits it (every dkld is null)", u.name));
    }
    for (const auto& t : uj["tensors"]) {
      if (!t.is_string()) return bad(fmt::format("unit {}: tensors must be names", u.name));
      const std::string name = t.get<std::string>();
      int layer = -1;
      char slot[8] = {};
      bool ok = std::sscanf(name.c_str(), "layers.%d.%7s", &layer, slot) == 2 && layer >= 0 && layer < c.n_layers;
      if (ok) {
        ok = false;
        for (LinearSlot ls : kLinearSlots) {
          if (linear_slot_name(ls) == slot) {
            ok = true;
            const int64_t rows = ls == LinearSlot::kWk || ls == LinearSlot::kWv ? c.kv_dim() : ls == LinearSlot::kW1 || ls == LinearSlot::kW3 ? c.hidden_dim : c.dim;
            const int64_t cols = ls == LinearSlot::kW2 ? c.hidden_dim : c.dim;
            u.params += rows * cols;
          }
        }
      }
      if (!ok) return bad(fmt::format("unit {}: '{}' is not a linear of this model ({} layers)", u.name, name, c.n_layers));
      if (!seen.insert(name).second) return bad(fmt::format("tensor {} is in two units", name));
      u.tensors.push_back(name);
    }
    s.units.push_back(std::move(u));
  }
  if (s.units.empty()) return bad("units: empty");
  if (j.contains("tokens_scored") && j["tokens_scored"].is_number()) s.tokens_scored = j["tokens_scored"].get<int64_t>();
  if (j.contains("ref_ppl") && j["ref_ppl"].is_number()) s.ref_ppl = j["ref_ppl"].get<double>();
  if (j.contains("seconds") && j["seconds"].is_number()) s.seconds = j["seconds"].get<double>();
  if (j.contains("spearman") && j["spearman"].is_number()) s.spearman = j["spearman"].get<double>();
  return s;
}

std::string sensitivity_svg(const SensitivityReport& s, const std::string& title) {
  constexpr int kW = 760, kH = 380, kL = 70, kR = 150, kT = 40, kB = 50;
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const UnitSensitivity& u : s.units)
    for (double v : u.dkld)
      if (v > 0 && std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo < hi)) lo = 1e-6, hi = 1.0;
  const double ylo = std::floor(std::log10(lo)), yhi = std::ceil(std::log10(hi));
  const size_t nu = s.units.size();
  auto px = [&](size_t i) { return kL + (nu > 1 ? static_cast<double>(i) / static_cast<double>(nu - 1) : 0.5) * (kW - kL - kR); };
  auto py = [&](double v) {
    const double t = (std::log10(std::max(v, lo)) - ylo) / std::max(1e-9, yhi - ylo);
    return kH - kB - t * (kH - kT - kB);
  };
  std::string out = fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n", kW, kH);
  out += fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" font-size=\"14\">{}</text>\n", kW, kH, kL, title);
  for (double e = ylo; e <= yhi; e += 1) {
    const double y = py(std::pow(10.0, e));
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">1e{}</text>\n",
                       kL, kW - kR, y, y, kL - 4, y + 4, static_cast<int>(e));
  }
  out += fmt::format("<text x=\"{}\" y=\"{}\">units ({}), in model order</text>\n", kL, kH - 12, granularity_name(s.granularity));
  out += fmt::format("<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\">ΔKLD (nats, log)</text>\n", kH / 2, kH / 2);
  for (size_t k = 0; k < s.candidates.size(); ++k) {
    if (!s.candidates[k].spec) continue;
    const char* col = kColors[k % 8];
    std::string pts;
    for (size_t i = 0; i < nu; ++i) {
      if (unit_fits(s.units[i], k)) pts += fmt::format("{:.1f},{:.1f} ", px(i), py(s.units[i].dkld[k]));
    }
    out += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n", col, pts);
    out += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n", kW - kR + 8, kT + 14 * static_cast<int>(k), col, s.candidates[k].name);
  }
  out += "</svg>\n";
  return out;
}

}  // namespace lowbit
