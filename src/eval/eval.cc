// Perplexity, KL divergence and top-1 agreement against a reference model.
#include "lowbit/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/file.h"

namespace lowbit {
namespace {

// log-softmax normaliser: log sum exp(x), in double.
double log_sum_exp(std::span<const float> x) {
  const double mx = *std::max_element(x.begin(), x.end());
  double s = 0.0;
  for (float v : x) s += std::exp(static_cast<double>(v) - mx);
  return mx + std::log(s);
}

}  // namespace

TokenScore score_position(std::span<const float> logits, std::span<const float> ref_logits, int target) {
  TokenScore s;
  const double lz = log_sum_exp(logits), rz = log_sum_exp(ref_logits);
  s.nll = lz - logits[static_cast<size_t>(target)];
  s.ref_nll = rz - ref_logits[static_cast<size_t>(target)];
  double kld = 0.0;
  for (size_t v = 0; v < logits.size(); ++v) {
    const double lp_ref = ref_logits[v] - rz, lp = logits[v] - lz;
    kld += std::exp(lp_ref) * (lp_ref - lp);
  }
  s.kld = std::max(0.0, kld);  // rounding can leave -1e-17 for identical rows
  s.top1_agree = std::max_element(logits.begin(), logits.end()) - logits.begin() ==
                 std::max_element(ref_logits.begin(), ref_logits.end()) - ref_logits.begin();
  return s;
}

namespace {

// One model's running sums over the windows.
struct Tally {
  std::vector<double> klds, diffs;
  double nll = 0, ref_nll = 0, seconds = 0;
  int64_t agree = 0;
};

EvalResult summarise(Tally& t, int64_t n_windows, int ctx, double ref_prefill_tok_s, std::vector<float> kld_by_position) {
  EvalResult r;
  r.windows = n_windows;
  r.kld_by_position = std::move(kld_by_position);
  const double n = static_cast<double>(t.klds.size());
  r.tokens_scored = static_cast<int64_t>(t.klds.size());
  r.nll_mean = t.nll / n;
  r.ref_nll_mean = t.ref_nll / n;
  r.ppl = std::exp(r.nll_mean);
  r.ref_ppl = std::exp(r.ref_nll_mean);
  // ln(PPL/PPL_ref) is the mean of the per-token NLL differences; its standard error carries
  // over to ΔPPL through the derivative of exp (delta method), as llama.cpp reports it.
  double dmean = 0, dvar = 0;
  for (double d : t.diffs) dmean += d;
  dmean /= n;
  for (double d : t.diffs) dvar += (d - dmean) * (d - dmean);
  dvar /= std::max(1.0, n - 1);
  r.delta_ppl = r.ppl - r.ref_ppl;
  r.delta_ppl_se = r.ppl * std::sqrt(dvar / n);
  double ksum = 0;
  for (double k : t.klds) ksum += k;
  r.kld_mean = ksum / n;
  std::vector<double> sorted = t.klds;
  const size_t p99 = std::min(sorted.size() - 1, static_cast<size_t>(std::ceil(0.99 * n)) - 1);
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(p99), sorted.end());
  r.kld_p99 = sorted[p99];
  r.kld_max = *std::max_element(t.klds.begin(), t.klds.end());
  r.top1 = static_cast<double>(t.agree) / n;
  r.prefill_tok_s = t.seconds > 0 ? static_cast<double>(n_windows) * ctx / t.seconds : 0.0;
  r.ref_prefill_tok_s = ref_prefill_tok_s > 0 ? ref_prefill_tok_s : r.prefill_tok_s;
  return r;
}

}  // namespace

Result<std::vector<EvalResult>> evaluate_many(std::span<const LlamaModel* const> models, const LlamaModel& reference,
                                              std::span<const int> tokens, const EvalOptions& opt) {
  if (models.empty()) return InvalidArgument("eval: no model to evaluate");
  const LlamaConfig& rc = reference.config();
  int ctx = std::min(opt.ctx, rc.seq_len);
  for (const LlamaModel* m : models) {
    if (m->config().vocab_size != rc.vocab_size) {
      return InvalidArgument(fmt::format("eval: model vocab {} differs from the reference's {}", m->config().vocab_size,
                                         rc.vocab_size));
    }
    ctx = std::min(ctx, m->config().seq_len);
  }
  if (ctx < 2) return InvalidArgument(fmt::format("eval: --ctx must be >= 2 (got {})", opt.ctx));
  const int stride = opt.stride > 0 ? opt.stride : std::max(1, ctx / 2);
  if (static_cast<int64_t>(tokens.size()) < ctx + 1) {
    return InvalidArgument(fmt::format("eval: the text has {} tokens; a window needs ctx + 1 = {}", tokens.size(), ctx + 1));
  }
  const int64_t n_windows_all = (static_cast<int64_t>(tokens.size()) - ctx - 1) / stride + 1;
  const int64_t n_windows = opt.max_windows > 0 ? std::min<int64_t>(opt.max_windows, n_windows_all) : n_windows_all;
  const int first_scored = ctx / 2;
  const int V = rc.vocab_size;
  const size_t nm = models.size();

  std::vector<Tally> tally(nm);
  std::vector<std::vector<float>> kld_pos(nm, std::vector<float>(static_cast<size_t>(ctx - first_scored), 0.0f));
  double ref_seconds = 0;
  Session sr(reference, ctx);
  std::vector<Session> sm;
  sm.reserve(nm);
  for (const LlamaModel* m : models) sm.emplace_back(*m, ctx);
  std::vector<float> lr, lm;
  for (int64_t w = 0; w < n_windows; ++w) {
    const std::span<const int> win = tokens.subspan(static_cast<size_t>(w * stride), static_cast<size_t>(ctx));
    const auto t0 = std::chrono::steady_clock::now();
    LOWBIT_RETURN_IF_ERROR(sr.forward(win, 0, &lr));
    ref_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (size_t i = 0; i < nm; ++i) {
      Tally& t = tally[i];
      const std::vector<float>* logits = &lr;
      if (models[i] == &reference) {
        t.seconds = -1;  // the reference's own time is its prefill time
      } else {
        const auto t1 = std::chrono::steady_clock::now();
        LOWBIT_RETURN_IF_ERROR(sm[i].forward(win, 0, &lm));
        t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        logits = &lm;
      }
      for (int j = first_scored; j < ctx; ++j) {
        // Logits at j predict the token after the window's j-th one.
        const int target = tokens[static_cast<size_t>(w * stride + j + 1)];
        const TokenScore s = score_position({logits->data() + static_cast<size_t>(j) * V, static_cast<size_t>(V)},
                                            {lr.data() + static_cast<size_t>(j) * V, static_cast<size_t>(V)}, target);
        // A NaN/Inf logit (damaged weights, fp32 overflow) must stop the run, not average into
        // "PPL -nan, KLD 0, top-1 100%".
        if (!std::isfinite(s.nll) || !std::isfinite(s.ref_nll) || !std::isfinite(s.kld)) {
          return DataLoss(fmt::format("eval: {} gives non-finite logits at window {}, position {} (NaN/Inf weights or "
                                      "activations overflowing fp32)",
                                      !std::isfinite(s.ref_nll) ? std::string("the reference model")
                                                                : fmt::format("model {} of {}", i + 1, nm),
                                      w, j));
        }
        t.nll += s.nll;
        t.ref_nll += s.ref_nll;
        t.klds.push_back(s.kld);
        t.diffs.push_back(s.nll - s.ref_nll);
        t.agree += s.top1_agree;
        kld_pos[i][static_cast<size_t>(j - first_scored)] += static_cast<float>(s.kld / static_cast<double>(n_windows));
      }
    }
    if (opt.on_window) opt.on_window(w + 1, n_windows);
  }
  const double ref_tok_s = ref_seconds > 0 ? static_cast<double>(n_windows) * ctx / ref_seconds : 0.0;
  std::vector<EvalResult> out;
  out.reserve(nm);
  for (size_t i = 0; i < nm; ++i) {
    if (tally[i].seconds < 0) tally[i].seconds = ref_seconds;
    out.push_back(summarise(tally[i], n_windows, ctx, ref_tok_s, std::move(kld_pos[i])));
  }
  return out;
}

Result<EvalResult> evaluate(const LlamaModel& model, const LlamaModel& reference, std::span<const int> tokens,
                            const EvalOptions& opt) {
  const LlamaModel* one[] = {&model};
  LOWBIT_ASSIGN_OR_RETURN(std::vector<EvalResult> r, evaluate_many(one, reference, tokens, opt));
  return std::move(r.front());
}

}  // namespace lowbit

namespace lowbit {

std::string kld_curve_svg(const EvalResult& r, const std::string& title) {
  constexpr double W = 640, H = 360, L = 60, R = 20, T = 40, B = 50;
  const std::vector<float>& k = r.kld_by_position;
  double ymax = 0;
  for (float v : k) ymax = std::max(ymax, static_cast<double>(v));
  if (ymax <= 0) ymax = 1e-6;
  std::string pts;
  for (size_t i = 0; i < k.size(); ++i) {
    const double x = L + (W - L - R) * (k.size() > 1 ? static_cast<double>(i) / static_cast<double>(k.size() - 1) : 0.5);
    const double y = H - B - (H - T - B) * (k[i] / ymax);
    pts += fmt::format("{:.1f},{:.1f} ", x, y);
  }
  auto esc = [](const std::string& s) {
    std::string o;
    for (char ch : s) {
      if (ch == '<') o += "&lt;";
      else if (ch == '>') o += "&gt;";
      else if (ch == '&') o += "&amp;";
      else o += ch;
    }
    return o;
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"14\">{3}</text>\n"
      "<line x1=\"{2}\" y1=\"{4}\" x2=\"{5}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<line x1=\"{2}\" y1=\"{6}\" x2=\"{2}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<text x=\"{7}\" y=\"{8}\" text-anchor=\"middle\">scored position within the window (offset from ctx/2)</text>\n"
      "<text x=\"{2}\" y=\"{9}\" text-anchor=\"end\" dx=\"-4\">{10:.3g}</text>\n"
      "<text x=\"{2}\" y=\"{4}\" text-anchor=\"end\" dx=\"-4\">0</text>\n"
      "<text x=\"14\" y=\"{11}\" transform=\"rotate(-90 14 {11})\" text-anchor=\"middle\">mean KLD (nats)</text>\n"
      "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{12}\"/>\n"
      "<text x=\"{5}\" y=\"{9}\" text-anchor=\"end\">PPL {13:.4f} (ref {14:.4f}), KLD mean {15:.3g}, p99 {16:.3g}, top-1 {17:.2f}%</text>\n"
      "</svg>\n",
      W, H, L, esc(title), H - B, W - R, T, (L + W - R) / 2, H - 12, T + 4, ymax, (T + H - B) / 2, pts, r.ppl, r.ref_ppl,
      r.kld_mean, r.kld_p99, 100.0 * r.top1);
  return svg;
}

std::string kld_curves_svg(std::span<const EvalResult> rs, std::span<const std::string> labels, const std::string& title) {
  constexpr double W = 720, H = 400, L = 60, R = 180, T = 40, B = 50;
  static constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  double ymax = 0;
  size_t n = 0;
  for (const EvalResult& r : rs) {
    n = std::max(n, r.kld_by_position.size());
    for (float v : r.kld_by_position) ymax = std::max(ymax, static_cast<double>(v));
  }
  if (ymax <= 0) ymax = 1e-6;
  auto esc = [](const std::string& s) {
    std::string o;
    for (char ch : s) o += ch == '<' ? std::string("&lt;") : ch == '>' ? std::string("&gt;") : ch == '&' ? std::string("&amp;") : std::string(1, ch);
    return o;
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"14\">{3}</text>\n"
      "<line x1=\"{2}\" y1=\"{4}\" x2=\"{5}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<line x1=\"{2}\" y1=\"{6}\" x2=\"{2}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<text x=\"{7}\" y=\"{8}\" text-anchor=\"middle\">scored position within the window (offset from ctx/2)</text>\n"
      "<text x=\"{2}\" y=\"{9}\" text-anchor=\"end\" dx=\"-4\">{10:.3g}</text>\n"
      "<text x=\"{2}\" y=\"{4}\" text-anchor=\"end\" dx=\"-4\">0</text>\n"
      "<text x=\"14\" y=\"{11}\" transform=\"rotate(-90 14 {11})\" text-anchor=\"middle\">mean KLD (nats)</text>\n",
      W, H, L, esc(title), H - B, W - R, T, (L + W - R) / 2, H - 12, T + 4, ymax, (T + H - B) / 2);
  for (size_t c = 0; c < rs.size(); ++c) {
    const std::vector<float>& k = rs[c].kld_by_position;
    std::string pts;
    for (size_t i = 0; i < k.size(); ++i) {
      const double x = L + (W - L - R) * (n > 1 ? static_cast<double>(i) / static_cast<double>(n - 1) : 0.5);
      pts += fmt::format("{:.1f},{:.1f} ", x, H - B - (H - T - B) * (k[i] / ymax));
    }
    const char* color = kColors[c % std::size(kColors)];
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.2\" points=\"{}\"/>\n", color, pts);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{} (mean {:.3g})</text>\n", W - R + 8, T + 16 * (c + 1), color,
                       esc(c < labels.size() ? labels[c] : std::string()), rs[c].kld_mean);
  }
  return svg + "</svg>\n";
}

Result<double> decode_tokens_per_second(const LlamaModel& model, std::span<const int> prompt, int n) {
  if (prompt.empty() || n < 1) return InvalidArgument("decode speed: needs a prompt and at least one token");
  const int ctx = static_cast<int>(prompt.size()) + n;
  if (ctx > model.config().seq_len) {
    return InvalidArgument(fmt::format("decode speed: {} prompt + {} new tokens exceed the context of {}", prompt.size(), n,
                                       model.config().seq_len));
  }
  Session s(model, ctx);
  std::vector<float> logits;
  LOWBIT_RETURN_IF_ERROR(s.forward(prompt, 0, &logits, /*all_logits=*/false));
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    const int next[1] = {static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    LOWBIT_RETURN_IF_ERROR(s.forward(next, static_cast<int>(prompt.size()) + i, &logits, false));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return secs > 0 ? n / secs : 0.0;
}

Result<std::vector<std::string>> load_stories(const std::string& path, const std::string& split, double calib_fraction) {
  if (split != "all" && split != "calib" && split != "eval") {
    return InvalidArgument(fmt::format("--split: '{}' is not valid (accepted: all, calib, eval)", split));
  }
  LOWBIT_ASSIGN_OR_RETURN(std::string text, read_file(path));
  if (text.empty()) return InvalidArgument(fmt::format("{}: the text file is empty", path));
  // UTF-8 validation (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
  for (size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    bool ok = len != 0 && i + len <= text.size();
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1Fu) : len == 3 ? (b & 0x0Fu) : (b & 0x07u);
    for (size_t k = 1; ok && k < len; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      ok = (c & 0xC0) == 0x80;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    if (ok) {
      ok = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) && !(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
           !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (!ok) return InvalidArgument(fmt::format("{}: not valid UTF-8 at byte {}", path, i));
    i += len;
  }
  std::vector<std::string> stories;
  std::string cur;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const bool blank = line.find_first_not_of(" \t") == std::string::npos;
    if (blank) {
      if (!cur.empty()) stories.push_back(std::move(cur));
      cur.clear();
    } else {
      if (!cur.empty()) cur += '\n';
      cur += line;
    }
    start = end + 1;
  }
  if (!cur.empty()) stories.push_back(std::move(cur));
  if (stories.empty()) return InvalidArgument(fmt::format("{}: no text (only blank lines)", path));
  if (split == "all") return stories;
  const size_t n_calib = static_cast<size_t>(std::ceil(calib_fraction * static_cast<double>(stories.size())));
  if (split == "calib") return std::vector<std::string>(stories.begin(), stories.begin() + static_cast<std::ptrdiff_t>(n_calib));
  if (n_calib >= stories.size()) return InvalidArgument(fmt::format("{}: too few stories ({}) for an eval split", path, stories.size()));
  return std::vector<std::string>(stories.begin() + static_cast<std::ptrdiff_t>(n_calib), stories.end());
}

}  // namespace lowbit
