// Training a Llama in low precision: the whole-model forward and backward over a (B, T) batch
// (ops in train_ops.h), FP32 master weights with AdamW, loss scaling, the learning-rate
// schedule, and precision recipes as data — a QuantSpec per GEMM operand and role (forward X·Wᵀ,
// dgrad dY·W, wgrad dYᵀ·X). Parameters use the inference model's layout (model.h), so a
// TrainModel comes from any loaded Model and goes back to one that save_model writes.
//
//   LOWBIT_ASSIGN_OR_RETURN(TrainRecipe r, find_recipe("fp8-blockwise"));
//   LOWBIT_ASSIGN_OR_RETURN(TrainModel tm, TrainModel::from_model(m, r));   // or TrainModel::init(cfg, seed, r)
//   AdamW opt(tm, {.lr = 3e-4f});
//   tm.zero_grad();
//   LOWBIT_ASSIGN_OR_RETURN(float loss, tm.forward(inputs, targets, B, T));  // inputs, targets (B, T)
//   LOWBIT_RETURN_IF_ERROR(tm.backward(/*grad_scale=*/1.0f));
//   StepResult s = opt.step(tm, lr_at(sched, step));
//   Model out = tm.to_model();                                              // LlamaModel(out), save_model
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/kernels.h"
#include "lowbit/model.h"
#include "lowbit/observer.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"

namespace lowbit {

// ---- precision recipes ------------------------------------------------------------------------

// The operands of the three GEMMs of every linear y = x·Wᵀ, each in its natural storage layout:
// x (tokens, in), W (out, in), dY (tokens, out). nullopt: the operand stays fp32.
struct GemmOperandSpecs {
  std::optional<QuantSpec> fwd_x, fwd_w;      // Y  = X · Wᵀ   (K = in)
  std::optional<QuantSpec> dgrad_dy, dgrad_w; // dX = dY · W   (K = out)
  std::optional<QuantSpec> wgrad_dy, wgrad_x; // dW = dYᵀ · X  (K = tokens)
};

enum class ScaleMode : uint8_t {
  kDynamic,  // scales from the tensor being quantized (online)
  kDelayed,  // per-tensor scales from an amax history of earlier steps (Transformer Engine)
};

// All three GEMMs through the kernel registry — forward and dgrad by gemm_fp8_block (e4m3 1x128
// tiles x 128x128 blocks), wgrad by gemm_fp8_wgrad (1x128 tiles of dY and X along the tokens) —
// with this accumulation: the promotion experiment of docs/kernels.md in training.
struct KernelAccumulation {
  Fp8Accumulation mode = Fp8Accumulation::kPromoted;
  int bits = 14;  // significand bits of the emulated accumulator
};

struct TrainRecipe {
  std::string name;
  std::string description;
  GemmOperandSpecs gemm;
  ScaleMode scaling = ScaleMode::kDynamic;
  int amax_history_len = 16;  // kDelayed: Transformer Engine's default history is 1024; 16 reacts faster on short runs
  // The linear inputs saved for the wgrad GEMM are kept as fwd_x codes + scales instead of fp32
  // (DeepSeek-V3 caches activations in FP8); the backward dequantizes them.
  bool cache_quantized_inputs = false;
  // The classifier (output head) GEMMs follow the recipe; else they stay fp32 (DeepSeek-V3 keeps
  // the embedding and the output head in their original precision).
  bool quantize_classifier = false;
  // Set: the three GEMMs of the block linears run through the kernel registry (see above).
  std::optional<KernelAccumulation> kernel_accumulation{};
};

// fp32, bf16, fp8-tensor-delayed, fp8-blockwise, fp8-seed, and fp8-blockwise-kernel /
// fp8-blockwise-noprom (all three GEMMs through the kernel registry, FP32 promotion on / off).
std::span<const TrainRecipe> train_recipes();
// InvalidArgument naming the recipe and listing the known ones.
Result<TrainRecipe> find_recipe(std::string_view name);
// What runs in which format, one line per site (what `lowbit train --dry-run` prints).
std::string describe_recipe(const TrainRecipe& r);

// ---- the model ---------------------------------------------------------------------------------

// One named parameter tensor inside TrainModel's flat parameter block.
struct ParamInfo {
  std::string name;        // "tok_embeddings", "layers.0.wq", ..., "final_norm", "classifier"
  int64_t offset = 0;      // into params() / grads()
  int64_t rows = 0, cols = 0;  // (rows, cols); norms are (1, dim)
  bool decay = true;       // weight decay applies (matrices yes, norms no)
  int64_t numel() const { return rows * cols; }
};

class TrainModel {
 public:
  // A fresh model: normal(0, 0.02) matrices (wo and w2 scaled by 1/sqrt(2·layers), GPT-2 style),
  // unit norms, from a seeded generator. Errors name the config field that is invalid.
  static Result<TrainModel> init(const LlamaConfig& config, uint64_t seed, const TrainRecipe& recipe);
  // Copies the fp32 weights of a loaded model (quantized files give their dequantized weights).
  static Result<TrainModel> from_model(const Model& m, const TrainRecipe& recipe);
  // A Model over a copy of the current parameters (what LlamaModel and save_model take).
  Model to_model() const;

  TrainModel(TrainModel&&) noexcept;
  TrainModel& operator=(TrainModel&&) noexcept;
  ~TrainModel();

  const LlamaConfig& config() const { return cfg_; }
  const TrainRecipe& recipe() const { return recipe_; }
  std::span<const ParamInfo> param_info() const { return info_; }
  std::span<float> params() { return params_; }
  std::span<const float> params() const { return params_; }
  std::span<float> grads() { return grads_; }
  std::span<const float> grads() const { return grads_; }
  int64_t num_params() const { return static_cast<int64_t>(params_.size()); }

  // Mean cross-entropy of targets given inputs, both (B, T) row-major; saves the activations
  // the backward needs. T <= seq_len; ids inside the vocab (InvalidArgument otherwise).
  Result<float> forward(std::span<const int> inputs, std::span<const int> targets, int B, int T);
  // Adds the gradient of grad_scale · (mean loss of the last forward) into grads().
  Status backward(float grad_scale);
  // Adds the gradient of a loss whose gradient w.r.t. the last forward's logits is `dlogits`
  // (B·T, vocab) into grads() (distillation losses, include/lowbit/qat.h).
  Status backward_from_logits(std::span<const float> dlogits);
  // QAT: the forward and dgrad GEMMs of parameter `index` read `w` (its shape; nullptr: the
  // parameter itself) — the fake-quantized weight; the wgrad still lands in grads().
  void set_weight_override(size_t index, const float* w);
  // A frozen parameter's wgrad is skipped (its gradient stays what zero_grad() left); the
  // gradient still flows through it to the layers below. QAT freezes the classifier this way.
  void set_frozen(size_t index, bool frozen = true);
  bool frozen(size_t index) const { return index < frozen_.size() && frozen_[index]; }
  void zero_grad();
  // Per-token losses (B·T) and logits (B·T, vocab) of the last forward.
  std::span<const float> losses() const;
  std::span<const float> logits() const;
  std::span<const float> probs() const;  // softmax of logits() (B·T, vocab)
  // Bytes the last forward kept for the backward (activations, probabilities, cached GEMM inputs).
  int64_t saved_activation_bytes() const;
  // Of those, the linear inputs cached for the wgrad GEMMs (fp32 or fwd_x codes + scales).
  int64_t cached_linear_input_bytes() const;
  // Delayed-scaling amax histories (per operand), for checkpoints; empty for other recipes.
  std::string serialize_scaling() const;
  Status deserialize_scaling(std::string_view bytes, const std::string& name);

 private:
  struct Acts;
  TrainModel() = default;
  void layout();
  Status backward_impl(float grad_scale, std::span<const float> dlogits);
  LlamaConfig cfg_;
  TrainRecipe recipe_;
  std::vector<ParamInfo> info_;
  std::vector<float> params_, grads_;
  std::vector<const float*> weight_override_;  // (params) QAT: set_weight_override
  std::vector<uint8_t> frozen_;                 // (params) set_frozen
  std::unique_ptr<Acts> acts_;
};

// ---- optimizer ---------------------------------------------------------------------------------

struct AdamWOptions {
  float lr = 3e-4f;           // peak; the schedule scales it per step
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;  // decoupled (AdamW), only on ParamInfo::decay tensors
  float clip = 1.0f;          // global L2 norm of the (unscaled) gradient; 0: no clipping
  bool bf16_moments = false;  // keep m and v in BF16 (DeepSeek-V3), updated in fp32, stored RNE
};

// Loss scaling. Static: grads are computed at ×scale and divided back before the update.
// Dynamic: additionally, a step whose gradient holds inf/NaN is skipped and the scale halved;
// after `growth_interval` good steps in a row the scale doubles.
struct LossScaleOptions {
  bool dynamic = false;
  float scale = 1.0f;
  int growth_interval = 1000;
  float min_scale = 1.0f / 65536.0f;
};

struct StepResult {
  bool skipped = false;     // the gradient overflowed; parameters unchanged
  double grad_norm = 0.0;   // global L2 norm of the unscaled gradient (before clipping); inf when skipped
  float lr = 0.0f;
  float loss_scale = 1.0f;  // the scale that applies to the next backward
};

class AdamW {
 public:
  // Moments for every parameter the model does not mark frozen (TrainModel::set_frozen, before
  // this constructor); frozen ones are never updated and hold no moments.
  AdamW(const TrainModel& m, const AdamWOptions& opt, const LossScaleOptions& ls = {});
  // One update of m.params() from m.grads() (which hold grad · loss_scale()); does not zero them.
  StepResult step(TrainModel& m, float lr);
  float loss_scale() const { return scale_; }
  int64_t steps() const { return t_; }                 // updates applied
  int64_t skipped_steps() const { return skipped_; }   // the named overflow counter
  const AdamWOptions& options() const { return opt_; }
  // State for checkpoints: t, scale, good-step streak, skipped, then m and v as raw fp32 or bf16.
  std::string serialize() const;
  Status deserialize(std::string_view bytes, const std::string& name);

 private:
  AdamWOptions opt_;
  LossScaleOptions ls_;
  float scale_;
  int64_t t_ = 0, good_ = 0, skipped_ = 0;
  std::vector<float> m_, v_;          // fp32 moments
  std::vector<uint16_t> mb_, vb_;     // bf16 moments
  std::vector<int64_t> moff_;         // (params) offset of each parameter's moments; -1: frozen
};

// Linear warm-up from 0 to peak over `warmup` steps, then cosine to min_ratio · peak at `total`.
struct LrSchedule {
  float peak = 3e-4f;
  int64_t warmup = 0;
  int64_t total = 1;
  float min_ratio = 0.1f;
};
float lr_at(const LrSchedule& s, int64_t step);  // step counts from 0

// ---- the training loop -------------------------------------------------------------------------

// Stories for training, consistent with eval and quantize (load_stories): the first 10% (rounded
// up) stay PTQ calibration text and are not trained on, the last 10% (rounded up) are validation,
// the stories between are the training split. InvalidArgument naming `name` when a split is empty.
inline constexpr double kCalibFraction = 0.1;      // load_stories' default calib_fraction
inline constexpr double kValidationFraction = 0.1;
struct StorySplit {
  std::vector<std::string> train, val;
};
Result<StorySplit> split_stories_for_training(const std::vector<std::string>& stories, const std::string& name);

struct TrainOptions {
  int64_t steps = 100;       // optimizer steps
  int batch = 8;             // windows per micro-batch
  int ctx = 128;             // tokens per window
  int accum = 1;             // micro-batches per step
  float lr = 1e-3f;          // peak learning rate
  int64_t warmup = 0;        // linear warm-up steps, then cosine to min_lr_ratio · lr at `steps`
  float min_lr_ratio = 0.1f;
  float clip = 1.0f;         // global-norm clip; 0: none
  float weight_decay = 0.1f;
  bool bf16_moments = false;
  LossScaleOptions loss_scale{};
  uint64_t seed = 1;         // initialisation (--init) and the order of training windows
  int val_windows = 16;      // validation windows of ctx tokens (from the start of the validation split)
};

struct TrainLogEntry {
  int64_t step = 0;          // 1-based index of the step just taken
  double loss = 0;           // mean training loss over the step's micro-batches
  float lr = 0;
  double grad_norm = 0;
  float loss_scale = 1;
  bool skipped = false;
  int64_t skipped_total = 0; // the overflow counter so far
  int64_t tokens = 0;        // trained on so far
};

// The loop: windows drawn from the training tokens by a counter-based hash of (seed, step,
// micro-batch, row), so any step's batch is known without replaying earlier ones and a resumed
// run sees exactly the batches an uninterrupted one would.
class Trainer {
 public:
  // Errors name the option: batch/ctx/accum/steps < 1, a context the model cannot hold, too few
  // training or validation tokens for one window.
  static Result<Trainer> create(TrainModel model, const TrainOptions& opt, std::vector<int> train_tokens,
                                std::vector<int> val_tokens);
  // One optimizer step over `accum` micro-batches. A non-finite loss, or a non-finite gradient
  // under a static loss scale (or a dynamic one already at its minimum), is an error naming the
  // step; the model is then not updated. Under dynamic scaling an overflow skips the step.
  Result<TrainLogEntry> step();
  // Mean loss over the validation windows (forward only).
  Result<double> validation_loss();
  int64_t steps_done() const { return step_; }
  TrainModel& model() { return model_; }
  const TrainModel& model() const { return model_; }
  const AdamW& optimizer() const { return opt_; }
  const TrainOptions& options() const { return o_; }
  // Everything beyond the weights a bit-exact resume needs: step, optimizer, scaling histories.
  std::string serialize_state() const;
  Status restore_state(std::string_view bytes, const std::string& name);

 private:
  Trainer(TrainModel model, const TrainOptions& opt, std::vector<int> train, std::vector<int> val);
  TrainModel model_;
  TrainOptions o_;
  AdamW opt_;
  std::vector<int> train_, val_;
  int64_t step_ = 0;
};

// A checkpoint: the model as a safetensors folder (what eval, generate and quantize load; the
// tokenizer copied in) plus `train_state.bin` (Trainer::serialize_state) inside it. Both are
// written to a sibling temp folder that is then swapped in whole (renameat2 RENAME_EXCHANGE), so
// an interrupted save leaves the previous checkpoint intact; an existing `out` holding anything
// else is refused.
inline constexpr const char* kTrainStateFile = "train_state.bin";
Status save_checkpoint(const Trainer& t, const std::string& out, const std::string& tokenizer_path);
// Reads `dir`/train_state.bin into t (whose model was loaded from `dir`).
Status load_train_state(Trainer& t, const std::string& dir);

// One recipe's curves for `lowbit train --compare`: (step, loss) points.
struct LossCurve {
  std::string recipe;
  std::vector<std::pair<int64_t, double>> train, val;
};
// An SVG line chart: training loss solid, validation loss dashed with markers, one colour per recipe.
std::string loss_curves_svg(std::span<const LossCurve> curves, const std::string& title);

}  // namespace lowbit
