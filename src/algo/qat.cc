// The QAT run: PTQ initialisation through the pipeline, the fake-quantized TrainModel,
// distillation from the frozen fp32 model, and the deployed model (include/lowbit/qat.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>

#include <fmt/format.h>

#include "lowbit/parallel.h"
#include "lowbit/qat.h"
#include "lowbit/train.h"

namespace lowbit {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// dL/dlogit entries below this are set to 0 (2^-100: products with weights of O(1) stay far
// from fp32's subnormal range, 2^-126; the gradients they join are O(1/N) or larger).
constexpr float kNegligibleGrad = 0x1p-100f;

std::string linear_param_name(int l, LinearSlot s) { return fmt::format("layers.{}.{}", l, linear_slot_name(s)); }

}  // namespace

Result<QatLoss> parse_qat_loss(std::string_view name) {
  if (name == "ce") return QatLoss::kCe;
  if (name == "kd") return QatLoss::kKd;
  if (name == "ce+kd") return QatLoss::kCeKd;
  return InvalidArgument(fmt::format("unknown loss '{}' (known: ce, kd, ce+kd)", name));
}

std::string_view qat_loss_name(QatLoss l) {
  switch (l) {
    case QatLoss::kCe: return "ce";
    case QatLoss::kKd: return "kd";
    case QatLoss::kCeKd: return "ce+kd";
  }
  return "?";
}

Result<QuantizedNet> quantized_net(const Model& src, const QuantPlan& plan, std::span<const FakeQuant* const> linears) {
  QuantizedNet out;
  out.model = std::make_unique<Model>();
  Model& m = *out.model;
  m.config = src.config;
  m.weights = src.weights;
  m.path = src.path;
  m.file = src.file;
  // m.weights view src's tensors (src must outlive the result); m owns only what is new here.
  for (const FakeQuant* f : linears) {
    if (f) m.quantized.emplace(f->name(), f->quantized());
  }
  m.activations.linear_input = plan.activations;
  const LlamaConfig& c = m.config;
  if (const PlanEntry* e = plan.find("tok_embeddings"); e && e->spec) {
    LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(m.weights.tok_embeddings, *e->spec, {.name = "tok_embeddings"}));
    LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, {c.vocab_size, c.dim}));
    LOWBIT_RETURN_IF_ERROR(dequantize(q, t.view()));
    m.owned.push_back(std::move(t));
    m.weights.tok_embeddings = ConstTensorView(m.owned.back().view());
    if (c.shared_classifier) {
      m.weights.classifier = m.weights.tok_embeddings;
      m.quantized.emplace("classifier", std::move(q));
    }
  }
  if (const PlanEntry* e = plan.find("classifier"); e && e->spec && !c.shared_classifier) {
    LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(m.weights.classifier, *e->spec, {.name = "classifier"}));
    m.quantized.emplace("classifier", std::move(q));
  }
  out.net = std::make_unique<LlamaModel>(m);
  return out;
}

Result<QatResult> run_qat(const Model& fp32, std::span<const int> tokens, const QatOptions& o) {
  const LlamaConfig& cfg = fp32.config;
  if (o.steps < 1) return InvalidArgument(fmt::format("qat: --steps {}: expected >= 1", o.steps));
  if (o.batch < 1) return InvalidArgument(fmt::format("qat: --batch {}: expected >= 1", o.batch));
  if (o.ctx < 2 || o.ctx > cfg.seq_len) return InvalidArgument(fmt::format("qat: --ctx {}: expected 2 .. the model's context {}", o.ctx, cfg.seq_len));
  if (o.init != Method::kRtn && o.init != Method::kGptq && o.init != Method::kAwq) {
    return InvalidArgument(fmt::format("qat: --init {}: expected rtn, gptq or awq", method_name(o.init)));
  }
  if (!(o.lr > 0.0f) || !std::isfinite(o.lr)) return InvalidArgument(fmt::format("qat: --lr {}: expected a finite value > 0", o.lr));
  if (!(o.min_lr_ratio >= 0.0f && o.min_lr_ratio <= 1.0f)) {
    return InvalidArgument(fmt::format("qat: --min-lr {}: expected a fraction of --lr in 0 .. 1", o.min_lr_ratio));
  }
  if (static_cast<int64_t>(tokens.size()) < o.ctx + 1) {
    return InvalidArgument(fmt::format("qat: the training text has {} tokens; one window needs --ctx {} + 1", tokens.size(), o.ctx));
  }
  for (int t : tokens) {
    if (t < 0 || t >= cfg.vocab_size) return InvalidArgument(fmt::format("qat: token id {} outside the model's vocab of {}", t, cfg.vocab_size));
  }
  auto stage = [&](std::string_view s) {
    if (o.on_stage) o.on_stage(s);
  };
  QatResult res;

  // 1. RTN and the PTQ start, through the pipeline.
  stage("rtn");
  auto t0 = std::chrono::steady_clock::now();
  res.rtn.net = std::make_unique<LlamaModel>(fp32);
  {
    PipelineOptions po = o.pipeline;
    po.method = Method::kRtn;
    po.plan = o.plan;
    po.calib.clear();
    po.on_layer = nullptr;
    LOWBIT_RETURN_IF_ERROR(quantize_model(*res.rtn.net, po).status());
  }
  res.rtn_seconds = seconds_since(t0);
  stage("init");
  t0 = std::chrono::steady_clock::now();
  res.init.net = std::make_unique<LlamaModel>(fp32);
  {
    PipelineOptions po = o.pipeline;
    po.method = o.init;
    po.plan = o.plan;
    po.calib.clear();
    for (size_t p = 0; p + static_cast<size_t>(o.ctx) <= tokens.size() && static_cast<int>(po.calib.size()) < o.calib_windows;
         p += static_cast<size_t>(o.ctx)) {
      po.calib.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(p), tokens.begin() + static_cast<std::ptrdiff_t>(p) + o.ctx);
    }
    LOWBIT_RETURN_IF_ERROR(quantize_model(*res.init.net, po).status());
  }
  res.init_seconds = seconds_since(t0);

  // 2. The master weights: the PTQ model's fp32 tensors (AWQ's rescaled ones), every quantized
  // linear replaced by its dequantized codes, the classifier by its stored (fp16) values.
  stage("qat");
  t0 = std::chrono::steady_clock::now();
  const LlamaModel& init = *res.init.net;
  Model start;
  start.config = cfg;
  start.weights = init.weights();
  start.path = fp32.path;
  TrainRecipe recipe;
  recipe.name = "qat";
  recipe.description = "fake-quantized linears (QAT)";
  if (o.plan.activations) {
    recipe.gemm.fwd_x = o.plan.activations;  // dynamic fake quantization of every linear input
    recipe.cache_quantized_inputs = true;    // the wgrad GEMM reads the quantized input (STE)
  }
  LOWBIT_ASSIGN_OR_RETURN(TrainModel tm, TrainModel::from_model(start, recipe));
  const std::span<const ParamInfo> info = tm.param_info();
  auto param_index = [&](std::string_view name) -> size_t {
    for (size_t i = 0; i < info.size(); ++i) {
      if (info[i].name == name) return i;
    }
    LOWBIT_CHECK(false, fmt::format("qat: no parameter {}", name));
    return 0;
  };
  struct Site {
    size_t param;
    FakeQuant fq;
    std::vector<float> w_hat;  // (rows, cols) the fake-quantized weight the GEMMs read
  };
  std::vector<Site> sites;
  for (int l = 0; l < cfg.n_layers; ++l) {
    for (LinearSlot s : kLinearSlots) {
      const QuantizedTensor* q = init.layers()[static_cast<size_t>(l)].at(s).quant();
      if (!q) continue;
      const std::string name = linear_param_name(l, s);
      LOWBIT_ASSIGN_OR_RETURN(FakeQuant fq, FakeQuant::from_quantized(*q, name));
      fq.set_learnable(o.learn_scales);
      const size_t idx = param_index(name);
      float* w = tm.params().data() + info[idx].offset;
      LOWBIT_RETURN_IF_ERROR(dequantize(*q, TensorView(w, DType::kF32, {q->rows, q->cols})));
      sites.push_back({idx, std::move(fq), std::vector<float>(static_cast<size_t>(q->rows * q->cols))});
    }
  }
  const size_t emb = param_index("tok_embeddings");
  const size_t cls = cfg.shared_classifier ? emb : param_index("classifier");
  if (!cfg.shared_classifier && init.classifier().quant()) {
    const QuantizedTensor& q = *init.classifier().quant();
    LOWBIT_RETURN_IF_ERROR(dequantize(q, TensorView(tm.params().data() + info[cls].offset, DType::kF32, {q.rows, q.cols})));
  }
  for (Site& s : sites) tm.set_weight_override(s.param, s.w_hat.data());
  tm.set_frozen(emb);  // no wgrad GEMM for the (tied) classifier, no AdamW update
  tm.set_frozen(cls);

  // 3. The loop. AdamW without weight decay on the master weights; embedding and classifier
  // stay frozen (stored fp16 per the plan); norms train in fp32.
  std::optional<AdamW> opt(std::in_place, tm, AdamWOptions{.lr = o.lr, .weight_decay = 0.0f, .clip = o.clip});
  const LrSchedule sched{.peak = o.lr, .warmup = o.warmup, .total = o.steps, .min_ratio = o.min_lr_ratio};
  // LSQ: Adam on each block scale, step size relative to the scale.
  constexpr float kBeta1 = 0.9f, kBeta2 = 0.999f, kEps = 1e-12f;
  std::vector<std::vector<float>> sm(sites.size()), sv(sites.size());
  for (size_t k = 0; k < sites.size(); ++k) {
    sm[k].assign(sites[k].fq.master_scales().size(), 0.0f);
    sv[k].assign(sites[k].fq.master_scales().size(), 0.0f);
  }
  const LlamaModel teacher(fp32);
  const int B = o.batch, T = o.ctx, V = cfg.vocab_size;
  const int64_t N = int64_t{B} * T;
  const double w_ce = o.loss == QatLoss::kKd ? 0.0 : 1.0, w_kd = o.loss == QatLoss::kCe ? 0.0 : 1.0;
  std::vector<int> in(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
  std::vector<float> tlogits(static_cast<size_t>(N * V)), dlogits(static_cast<size_t>(N * V));  // (N, V)
  std::vector<double> row_kd(static_cast<size_t>(N));
  const int64_t span = static_cast<int64_t>(tokens.size()) - T;
  std::mt19937_64 rng(o.seed);
  for (int64_t step = 0; step < o.steps; ++step) {
    for (Site& s : sites) {
      LOWBIT_RETURN_IF_ERROR(s.fq.forward(tm.params().data() + info[s.param].offset, s.w_hat.data()));
    }
    for (int b = 0; b < B; ++b) {
      const int64_t start_tok = static_cast<int64_t>(rng() % static_cast<uint64_t>(span));
      std::memcpy(&in[static_cast<size_t>(b * T)], &tokens[static_cast<size_t>(start_tok)], sizeof(int) * static_cast<size_t>(T));
      std::memcpy(&tg[static_cast<size_t>(b * T)], &tokens[static_cast<size_t>(start_tok + 1)], sizeof(int) * static_cast<size_t>(T));
    }
    tm.zero_grad();
    for (Site& s : sites) std::fill(s.fq.scale_grads().begin(), s.fq.scale_grads().end(), 0.0f);
    Result<float> ce = tm.forward(in, tg, B, T);
    if (!ce.ok()) return Status(ce.status().code(), fmt::format("qat step {}: {}", step + 1, ce.status().message()));
    if (w_kd > 0) {
      for (int b = 0; b < B; ++b) {
        Session sess(teacher, T);
        std::vector<float> lg;
        LOWBIT_RETURN_IF_ERROR(sess.forward(std::span<const int>(&in[static_cast<size_t>(b * T)], static_cast<size_t>(T)), 0, &lg));
        std::copy(lg.begin(), lg.end(), tlogits.begin() + static_cast<std::ptrdiff_t>(int64_t{b} * T * V));
      }
    }
    // dL/dlogits = w_ce (p − onehot) / N + w_kd (p − p_teacher) / N; KD = KL(teacher ‖ student).
    const std::span<const float> p = tm.probs(), z = tm.logits();
    parallel_for(0, N, std::max<int64_t>(1, (int64_t{1} << 18) / V), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* pr = p.data() + r * V;
        float* d = dlogits.data() + r * V;
        for (int v = 0; v < V; ++v) d[v] = static_cast<float>((w_ce + w_kd) * pr[v] / static_cast<double>(N));
        if (w_ce > 0) d[tg[static_cast<size_t>(r)]] -= static_cast<float>(w_ce / static_cast<double>(N));
        if (w_kd > 0) {
          const float* tl = tlogits.data() + r * V;
          const float* sl = z.data() + r * V;
          const double tmax = *std::max_element(tl, tl + V), smax = *std::max_element(sl, sl + V);
          double ts = 0, ss = 0;
          for (int v = 0; v < V; ++v) ts += std::exp(tl[v] - tmax), ss += std::exp(sl[v] - smax);
          const double tlse = tmax + std::log(ts), slse = smax + std::log(ss);
          double kl = 0;
          for (int v = 0; v < V; ++v) {
            const double lpt = tl[v] - tlse, lps = sl[v] - slse, pt = std::exp(lpt);
            kl += pt * (lpt - lps);
            d[v] -= static_cast<float>(w_kd * pt / static_cast<double>(N));
          }
          row_kd[static_cast<size_t>(r)] = kl;
        }
        // Flush the negligible: a vocabulary entry whose probability underflows leaves |d| near
        // the subnormal range, and the dgrad GEMM's products with it (subnormal results) cost ~100x
        // a normal multiply-add. Terms this small change no sum they enter at fp32 precision.
        for (int v = 0; v < V; ++v) {
          if (std::fabs(d[v]) < kNegligibleGrad) d[v] = 0.0f;
        }
      }
    });
    double kd = 0;
    if (w_kd > 0) {
      for (double x : row_kd) kd += x;
      kd /= static_cast<double>(N);
    }
    LOWBIT_RETURN_IF_ERROR(tm.backward_from_logits(dlogits));
    int64_t clipped = 0;
    for (Site& s : sites) {
      s.fq.backward(tm.grads().data() + info[s.param].offset);
      clipped += s.fq.clipped();
    }
    for (size_t idx : {emb, cls}) {
      std::fill_n(tm.grads().data() + info[idx].offset, info[idx].numel(), 0.0f);
    }
    const float lr = lr_at(sched, step);
    const StepResult sr = opt->step(tm, lr);
    if (sr.skipped) return InvalidArgument(fmt::format("qat step {}: non-finite gradient (diverged; lower --lr)", step + 1));
    if (o.learn_scales) {
      const float lr_s = o.scale_lr * (lr / o.lr);
      const double bc1 = 1.0 - std::pow(double{kBeta1}, static_cast<double>(step + 1));
      const double bc2 = 1.0 - std::pow(double{kBeta2}, static_cast<double>(step + 1));
      for (size_t k = 0; k < sites.size(); ++k) {
        std::span<float> s = sites[k].fq.master_scales();
        std::span<const float> g = sites[k].fq.scale_grads();
        for (size_t i = 0; i < s.size(); ++i) {
          sm[k][i] = kBeta1 * sm[k][i] + (1 - kBeta1) * g[i];
          sv[k][i] = kBeta2 * sv[k][i] + (1 - kBeta2) * g[i] * g[i];
          const double upd = (sm[k][i] / bc1) / (std::sqrt(sv[k][i] / bc2) + kEps);
          s[i] = static_cast<float>(s[i] * (1.0 - lr_s * upd));  // relative step: scales stay positive
        }
        LOWBIT_RETURN_IF_ERROR(sites[k].fq.commit_scales());
      }
    }
    QatLogEntry e;
    e.step = step + 1;
    e.ce = *ce;
    e.kd = kd;
    e.loss = w_ce * *ce + w_kd * kd;
    e.grad_norm = sr.grad_norm;
    e.lr = lr;
    e.clipped = clipped;
    res.log.push_back(e);
    if (o.on_step) o.on_step(e.step, o.steps, e.loss);
  }
  res.train_tokens = o.steps * N;
  res.saved_activation_bytes = tm.saved_activation_bytes();
  int64_t wq = 0;
  for (const Site& s : sites) wq += static_cast<int64_t>(s.w_hat.size());
  int64_t trained = 0;  // parameters with AdamW moments (not frozen)
  for (size_t i = 0; i < info.size(); ++i) trained += tm.frozen(i) ? 0 : info[i].numel();
  res.master_bytes = static_cast<int64_t>(sizeof(float)) * (2 * tm.num_params() + 2 * trained + wq);

  // 4. The deployed model: codes of the final master weights.
  std::vector<const FakeQuant*> fqs;
  for (Site& s : sites) {
    LOWBIT_RETURN_IF_ERROR(s.fq.forward(tm.params().data() + info[s.param].offset, s.w_hat.data()));
    fqs.push_back(&s.fq);
  }
  opt.reset();  // the moments are done with: not held beside the copy of the master weights below
  std::vector<float>().swap(tlogits);
  std::vector<float>().swap(dlogits);
  res.master = std::make_unique<Model>(tm.to_model());
  LOWBIT_ASSIGN_OR_RETURN(res.qat, quantized_net(*res.master, o.plan, fqs));
  for (Site& s : sites) res.quantizers.push_back(std::move(s.fq));
  res.qat_seconds = seconds_since(t0);
  return res;
}

}  // namespace lowbit
