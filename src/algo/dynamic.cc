// Run-time precision selection (mixed.h): two precisions of the most sensitive linears, one
// picked per input window from the loss or entropy of the low model on the window's first tokens.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "lowbit/mixed.h"

namespace lowbit {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double log_sum_exp(const float* x, int64_t n) {
  const float mx = *std::max_element(x, x + n);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
  return mx + std::log(s);
}

// logits (n, vocab) of the whole forward of `tokens` from position 0.
Status forward(const LlamaModel& net, std::span<const int> tokens, std::vector<float>* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> x(static_cast<size_t>(n * net.config().dim));  // (n, dim)
  LOWBIT_RETURN_IF_ERROR(embed_tokens(net, tokens, x.data()));
  for (int l = 0; l < net.config().n_layers; ++l) LOWBIT_RETURN_IF_ERROR(run_block(net, l, x.data(), n));
  return run_head(net, x.data(), n, logits);
}

// Σ over rows [first, n−1) of KL(ref ‖ model), the rows' logits (n, vocab) each.
double kld_sum(const std::vector<float>& ref, const std::vector<float>& got, int64_t first, int64_t n, int vocab) {
  double total = 0;
  for (int64_t j = first; j < n - 1; ++j) {
    const float* r = ref.data() + j * vocab;
    const float* g = got.data() + j * vocab;
    const double rz = log_sum_exp(r, vocab), gz = log_sum_exp(g, vocab);
    double kl = 0;
    for (int v = 0; v < vocab; ++v) {
      const double lr = r[v] - rz, lg = g[v] - gz;
      kl += std::exp(lr) * (lr - lg);
    }
    total += std::max(0.0, kl);
  }
  return total;
}

// The probe's signal: over rows 0..p−2 (predicting tokens 1..p−1), the mean NLL or entropy.
double probe_signal(const std::vector<float>& logits, std::span<const int> tokens, int p, int vocab, ProbeSignal sig) {
  double total = 0;
  for (int j = 0; j + 1 < p; ++j) {
    const float* row = logits.data() + static_cast<int64_t>(j) * vocab;
    const double lz = log_sum_exp(row, vocab);
    if (sig == ProbeSignal::kLoss) {
      total += lz - row[tokens[static_cast<size_t>(j + 1)]];
    } else {
      double h = 0;
      for (int v = 0; v < vocab; ++v) {
        const double lp = row[v] - lz;
        h -= std::exp(lp) * lp;
      }
      total += h;
    }
  }
  return total / std::max(1, p - 1);
}

}  // namespace

Result<ProbeSignal> parse_probe_signal(std::string_view name) {
  if (name == "loss") return ProbeSignal::kLoss;
  if (name == "entropy") return ProbeSignal::kEntropy;
  return InvalidArgument(fmt::format("unknown probe signal '{}' (known: loss, entropy)", name));
}

Result<std::vector<std::string>> most_sensitive_tensors(const SensitivityReport& s, std::string_view candidate, int k) {
  if (s.granularity != UnitGranularity::kTensor) {
    return InvalidArgument(fmt::format("dynamic precision: the sensitivity report is by {}; per-tensor is needed",
                                       granularity_name(s.granularity)));
  }
  if (k < 1) return InvalidArgument(fmt::format("dynamic precision: {} tensors asked for; at least 1", k));
  size_t c = s.candidates.size();
  for (size_t i = 0; i < s.candidates.size(); ++i) {
    if (s.candidates[i].name == candidate) c = i;
  }
  if (c == s.candidates.size()) return InvalidArgument(fmt::format("dynamic precision: '{}' is not a candidate of the report", candidate));
  std::vector<size_t> idx;  // units the candidate fits, by falling ΔKLD there
  for (size_t i = 0; i < s.units.size(); ++i) {
    if (unit_fits(s.units[i], c)) idx.push_back(i);
  }
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s.units[a].dkld[c] > s.units[b].dkld[c]; });
  std::vector<std::string> out;
  for (size_t i = 0; i < idx.size() && static_cast<int>(out.size()) < k; ++i) out.push_back(s.units[idx[i]].name);
  return out;
}

Result<DynamicPrecisionReport> evaluate_dynamic_precision(
    LlamaModel& net, const DynamicPrecisionOptions& opt,
    std::span<const std::pair<std::string, std::vector<std::vector<int>>>> texts) {
  const LlamaConfig& c = net.config();
  const int V = c.vocab_size, P = opt.probe_tokens;
  if (P < 2) return InvalidArgument(fmt::format("dynamic precision: probe of {} tokens; at least 2", P));
  if (!(opt.upgrade_fraction >= 0.0 && opt.upgrade_fraction <= 1.0)) {
    return InvalidArgument(fmt::format("dynamic precision: upgrade fraction {} is outside [0, 1]", opt.upgrade_fraction));
  }
  if (opt.calib.empty()) return InvalidArgument("dynamic precision: no calibration windows to set the threshold on");
  auto check_windows = [&](const std::string& name, const std::vector<std::vector<int>>& ws) -> Status {
    for (size_t w = 0; w < ws.size(); ++w) {
      if (static_cast<int>(ws[w].size()) <= P + 1 || static_cast<int>(ws[w].size()) > c.seq_len) {
        return InvalidArgument(fmt::format("dynamic precision: {} window {} has {} tokens; windows hold {}..{} (probe {} + 2)", name, w,
                                           ws[w].size(), P + 2, c.seq_len, P));
      }
    }
    return OkStatus();
  };
  LOWBIT_RETURN_IF_ERROR(check_windows("calibration", opt.calib));
  for (const auto& [name, ws] : texts) LOWBIT_RETURN_IF_ERROR(check_windows(name, ws));
  LOWBIT_RETURN_IF_ERROR(validate(opt.low));
  LOWBIT_RETURN_IF_ERROR(validate(opt.high));

  // The three sets of linears: fp32 (the reference), all low, low with the high copies in.
  const std::vector<LayerLinears> ref_layers = net.layers();
  const std::optional<QuantSpec> acts = net.activation_quant().linear_input;
  net.activation_quant().linear_input.reset();
  std::vector<LayerLinears> low_layers = ref_layers, high_layers = ref_layers;
  DynamicPrecisionReport rep;
  std::vector<bool> used(opt.high_tensors.size(), false);
  for (int l = 0; l < c.n_layers; ++l) {
    for (LinearSlot s : kLinearSlots) {
      const std::string name = fmt::format("layers.{}.{}", l, linear_slot_name(s));
      const ConstTensorView w = net.weights().layers[static_cast<size_t>(l)].*linear_weight_member(s);
      const double elems = static_cast<double>(w.dim(0)) * static_cast<double>(w.dim(1));
      LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(w, opt.low, {.name = name}));
      LOWBIT_ASSIGN_OR_RETURN(low_layers[static_cast<size_t>(l)].at(s), Linear::quantized(q));
      high_layers[static_cast<size_t>(l)].at(s) = low_layers[static_cast<size_t>(l)].at(s);
      const int64_t low_bytes = std::llround(bits_per_weight(opt.low, w.dim(0), w.dim(1)) * elems / 8.0);
      rep.low_bytes += low_bytes;
      const auto it = std::find(opt.high_tensors.begin(), opt.high_tensors.end(), name);
      if (it == opt.high_tensors.end()) {
        rep.static_high_bytes += low_bytes;
        rep.dynamic_bytes += low_bytes;
        continue;
      }
      used[static_cast<size_t>(it - opt.high_tensors.begin())] = true;
      LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor qh, quantize(w, opt.high, {.name = name}));
      LOWBIT_ASSIGN_OR_RETURN(high_layers[static_cast<size_t>(l)].at(s), Linear::quantized(qh));
      const int64_t high_bytes = std::llround(bits_per_weight(opt.high, w.dim(0), w.dim(1)) * elems / 8.0);
      rep.static_high_bytes += high_bytes;
      rep.dynamic_bytes += low_bytes + high_bytes;
    }
  }
  for (size_t i = 0; i < used.size(); ++i) {
    if (!used[i]) {
      net.layers() = ref_layers;
      net.activation_quant().linear_input = acts;
      return InvalidArgument(fmt::format("dynamic precision: '{}' is not a linear of this model ({} blocks)", opt.high_tensors[i], c.n_layers));
    }
  }
  auto restore = [&] {
    net.layers() = ref_layers;
    net.activation_quant().linear_input = acts;
  };

  // The threshold: the (1 − fraction) quantile of the calibration windows' probe signals.
  std::vector<float> logits;
  net.layers() = low_layers;
  std::vector<double> calib_signal;
  for (const std::vector<int>& w : opt.calib) {
    const std::span<const int> probe(w.data(), static_cast<size_t>(P));
    if (Status s = forward(net, probe, &logits); !s.ok()) return restore(), s;
    calib_signal.push_back(probe_signal(logits, probe, P, V, opt.signal));
  }
  std::sort(calib_signal.begin(), calib_signal.end());
  const size_t n_up = static_cast<size_t>(std::llround(opt.upgrade_fraction * static_cast<double>(calib_signal.size())));
  rep.threshold = n_up == 0 ? std::numeric_limits<double>::infinity()
                : n_up >= calib_signal.size() ? -std::numeric_limits<double>::infinity()
                                               : 0.5 * (calib_signal[calib_signal.size() - n_up - 1] + calib_signal[calib_signal.size() - n_up]);

  for (const auto& [name, windows] : texts) {
    DynamicTextResult t;
    t.name = name;
    t.windows = static_cast<int64_t>(windows.size());
    std::vector<double> gain, signal, kl_low, kl_high;
    std::vector<float> ref, low, high;
    for (const std::vector<int>& w : windows) {
      const int64_t n = static_cast<int64_t>(w.size());
      net.layers() = ref_layers;
      if (Status s = forward(net, w, &ref); !s.ok()) return restore(), s;
      net.layers() = low_layers;
      auto t0 = Clock::now();
      if (Status s = forward(net, w, &low); !s.ok()) return restore(), s;
      const double s_low = since(t0);
      t.seconds_low += s_low;
      t0 = Clock::now();
      const std::span<const int> probe(w.data(), static_cast<size_t>(P));
      if (Status s = forward(net, probe, &logits); !s.ok()) return restore(), s;
      const double sig = probe_signal(logits, probe, P, V, opt.signal);
      const double s_probe = since(t0);
      t.seconds_probe += s_probe;
      net.layers() = high_layers;
      t0 = Clock::now();
      if (Status s = forward(net, w, &high); !s.ok()) return restore(), s;
      const double s_high = since(t0);
      t.seconds_high += s_high;
      const double kl = kld_sum(ref, low, P - 1, n, V), kh = kld_sum(ref, high, P - 1, n, V);
      const bool up = sig > rep.threshold;
      t.kld_low += kl;
      t.kld_high += kh;
      t.kld_dynamic += up ? kh : kl;
      t.fraction_high += up ? 1.0 : 0.0;
      t.seconds_dynamic += s_probe + (up ? s_high : s_low);  // the probe is recomputed, not reused
      t.tokens_scored += n - P;
      signal.push_back(sig);
      gain.push_back(kl - kh);
      kl_low.push_back(kl);
      kl_high.push_back(kh);
    }
    const double nw = std::max<double>(1.0, static_cast<double>(windows.size()));
    const double f_up = t.fraction_high / nw;
    // The oracle: the same number of windows upgraded, those with the largest gain.
    std::vector<size_t> idx(gain.size());
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return gain[a] > gain[b]; });
    const size_t k_up = static_cast<size_t>(t.fraction_high);
    for (size_t i = 0; i < idx.size(); ++i) t.kld_oracle += i < k_up ? kl_high[idx[i]] : kl_low[idx[i]];
    const double tok = static_cast<double>(std::max<int64_t>(1, t.tokens_scored));
    t.kld_low /= tok;
    t.kld_high /= tok;
    t.kld_dynamic /= tok;
    t.kld_oracle /= tok;
    t.fraction_high = f_up;
    t.mean_signal = signal.empty() ? 0 : std::accumulate(signal.begin(), signal.end(), 0.0) / nw;
    t.signal_gain_spearman = spearman(signal, gain);
    rep.texts.push_back(std::move(t));
  }
  restore();
  return rep;
}

}  // namespace lowbit
