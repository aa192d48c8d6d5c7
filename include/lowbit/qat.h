// Quantization-aware training (QAT): the FP32 master weights of every linear train through
// the deployment QuantSpec's fake quantization — the forward pass multiplies by
// dequantize(quantize(W)) with the very codes and block scales the saved model holds, the
// backward treats the rounding as identity inside the clipping range and zero outside it
// (clipped straight-through estimator) — distilled from the frozen full-precision model
// (KL to its logits, LLM-QAT / EfficientQAT) and/or trained by cross-entropy on text.
// Block parameters (scales, zero points) start from a PTQ result (RTN, GPTQ or AWQ through
// the algo pipeline) and stay fixed, or are learned (LSQ, Esser et al. 2020).
//
//   QatOptions o{.init = Method::kGptq, .loss = QatLoss::kKd, .steps = 200};
//   o.plan = make_plan(net.config(), wspec, aspec).value();
//   LOWBIT_ASSIGN_OR_RETURN(QatResult r, run_qat(model, calib_tokens, o));   // model: the fp32 Model
//   save_model(*r.qat, "out", so);                                          // r.init: the PTQ start
//
// The estimator alone (src/train/fake_quant.cc):
//   LOWBIT_ASSIGN_OR_RETURN(FakeQuant fq, FakeQuant::from_quantized(gptq_result, "layers.0.wq"));
//   LOWBIT_RETURN_IF_ERROR(fq.forward(w, w_hat));   // w, w_hat (rows, cols); fq.quantized() = the codes
//   fq.backward(grad);                              // dL/dŵ -> dL/dw in place (clipped STE)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/llama.h"
#include "lowbit/pipeline.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"

namespace lowbit {

// ---- the estimator -------------------------------------------------------------------------

// Fake quantization of one weight (rows, cols) with fixed or learnable block parameters.
class FakeQuant {
 public:
  // Takes `init`'s spec, grid, scales and zero points (its codes are recomputed by forward()).
  // Errors name the tensor: a two-level (NVFP4) or stochastic-rounding spec, a scale format
  // narrower than a byte.
  static Result<FakeQuant> from_quantized(const QuantizedTensor& init, std::string name);

  // Codes of w (rows, cols) with the current block parameters (the per-element step of
  // quantize(), docs/schemes.md), stored in quantized(); w_hat (rows, cols) = dequantize(codes);
  // remembers which elements lay inside the clipping range and, for LSQ, w/s.
  Status forward(const float* w, float* w_hat);
  // Clipped STE on g (rows, cols) = dL/dŵ, in place: kept inside the range, zeroed outside.
  // With learnable scales, first accumulates dL/ds per block: Σ g · ∂ŵ/∂s, with
  // ∂ŵ/∂s = (q − z) − w/s inside and (q − z) outside (q the element's value), times LSQ's
  // gradient scale 1/sqrt(block elements · qmax).
  void backward(float* g);

  // Learnable scales (LSQ): the fp32 master scale per block (grid order) and its gradient.
  void set_learnable(bool on);
  bool learnable() const { return learnable_; }
  std::span<float> master_scales() { return master_; }
  std::span<float> scale_grads() { return sgrad_; }
  // Stores master_scales() into the block parameters, rounded to the spec's scale format (what
  // the saved file holds); forward() uses the stored ones. A non-positive or non-finite scale
  // is an error naming the tensor and block.
  Status commit_scales();

  const QuantizedTensor& quantized() const { return q_; }
  const std::string& name() const { return name_; }
  int64_t rows() const { return q_.rows; }
  int64_t cols() const { return q_.cols; }
  // Elements of the last forward() outside the clipping range.
  int64_t clipped() const { return clipped_; }
  // The clipping range of the element value v = w/s (+ z): [lo, hi], the element range widened
  // by half a step at each end (where the clamp or saturation does not change the code).
  float range_lo() const { return lo_; }
  float range_hi() const { return hi_; }

 private:
  std::string name_;
  QuantizedTensor q_;
  float lo_ = 0, hi_ = 0;
  bool learnable_ = false;
  int64_t clipped_ = 0;
  std::vector<uint8_t> inside_;  // (rows, cols) 1: inside the clipping range
  std::vector<float> u_;         // (rows, cols) w/s, kept for the LSQ gradient
  std::vector<float> master_, sgrad_;  // (blocks)
};

// ---- the QAT run ---------------------------------------------------------------------------

enum class QatLoss { kCe, kKd, kCeKd };
Result<QatLoss> parse_qat_loss(std::string_view name);  // ce | kd | ce+kd
std::string_view qat_loss_name(QatLoss l);

struct QatOptions {
  QuantPlan plan{};             // linear specs (and activation spec) as quantize's make_plan gives
  Method init = Method::kGptq;  // rtn | gptq | awq: the PTQ result QAT starts from
  QatLoss loss = QatLoss::kKd;
  bool learn_scales = false;    // LSQ
  int64_t steps = 100;
  int batch = 4;                // windows per step
  int ctx = 128;                // tokens per window
  float lr = 6e-4f;             // peak AdamW learning rate of the master weights (SmolLM2 QAT: docs/results.md)
  float scale_lr = 1e-4f;       // LSQ: Adam learning rate of the scales, relative (× scale)
  int64_t warmup = 0;
  float min_lr_ratio = 0.1f;
  float clip = 1.0f;            // global gradient-norm clip
  uint64_t seed = 1;            // window order
  int calib_windows = 32;       // PTQ calibration windows of ctx tokens (from the start of the text)
  PipelineOptions pipeline{};   // GPTQ / AWQ options (method, plan and calib are set from the above)
  std::function<void(int64_t step, int64_t steps, double loss)> on_step = nullptr;
  std::function<void(std::string_view stage)> on_stage = nullptr;  // "rtn", "init", "qat"
};

struct QatLogEntry {
  int64_t step = 0;
  double loss = 0, ce = 0, kd = 0;  // the step's training loss and its parts (nats per token)
  double grad_norm = 0;
  float lr = 0;                     // the master weights' learning rate this step
  int64_t clipped = 0;              // weights outside their clipping range
};

// A quantized model together with the Model it was built from (null: it views run_qat's
// fp32 model, which must outlive it).
struct QuantizedNet {
  std::unique_ptr<Model> model;
  std::unique_ptr<LlamaModel> net;
};

struct QatResult {
  QuantizedNet rtn, init, qat;  // RTN, the PTQ start, QAT (qat views `master`)
  std::unique_ptr<Model> master;       // the final fp32 master weights
  std::vector<FakeQuant> quantizers;   // one per quantized linear, holding the saved codes and scales
  std::vector<QatLogEntry> log;
  double rtn_seconds = 0, init_seconds = 0, qat_seconds = 0;
  int64_t train_tokens = 0;
  int64_t saved_activation_bytes = 0;
  int64_t master_bytes = 0;  // parameters + gradients + AdamW moments (+ fake-quant weights)
};

// QAT of `fp32` on `tokens` (the calibration split: PTQ calibrates on its first windows, QAT
// trains on windows drawn from all of it). Errors name the option: too little text for one
// window, a plan with activation specs on a non-linear tensor, steps < 1.
Result<QatResult> run_qat(const Model& fp32, std::span<const int> tokens, const QatOptions& opt);

// The quantized model QAT would deploy for master weights `m` (every linear's codes from its
// FakeQuant; embedding, norms and classifier per the plan), viewing a fresh Model.
Result<QuantizedNet> quantized_net(const Model& m, const QuantPlan& plan, std::span<const FakeQuant* const> linears);

}  // namespace lowbit
