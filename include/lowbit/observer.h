// Calibration observers: watch f32 tensors (activations over calibration batches, or a
// weight) and produce one clip value c per block of a QuantSpec's grid, which quantize()
// turns into static scales. dynamic_clip() is the online counterpart: the per-block
// absmax of the tensor being quantized. AmaxHistory is Transformer Engine's delayed
// scaling for FP8 training: the scale of step t comes from the amaxes of earlier steps.
//
//   LOWBIT_ASSIGN_OR_RETURN(QuantSpec spec, parse_spec("int8:tensor"));
//   LOWBIT_ASSIGN_OR_RETURN(PercentileObserver obs, PercentileObserver::create(spec, 99.99, "layers.0.mlp.in"));
//   for (const Tensor& act : calib_activations)              // (tokens, hidden)
//     LOWBIT_RETURN_IF_ERROR(obs.observe(act.view()));
//   std::vector<float> c = obs.clip();                       // (grid_rows, grid_cols), row-major
//   LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(x, spec, {.name = "layers.0.mlp.in", .clip = c}));
//
// Tensors are seen as quantize() sees them: leading dimensions flattened into rows, the last
// dimension is cols, any strides; the blocks are block_grid(spec, rows, cols) (docs/schemes.md).
// Every observed tensor must have the same cols, and the same rows unless the granularity
// spans all rows (tensor, col), where batches of different lengths are welcome. NaN or ±inf
// is an error naming the tensor and the position, and leaves the observer unchanged.
// Observer specs must be symmetric: quantize() accepts static clips for symmetric specs only.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowbit/quant.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {

namespace detail {
// What every block observer shares: the spec, the name, and the (rows, cols) it is bound to.
class BlockObserverBase {
 public:
  const QuantSpec& spec() const { return spec_; }
  const std::string& name() const { return name_; }
  // The grid of the first non-empty observed tensor; num_blocks() == 0 before that.
  const BlockGrid& grid() const { return grid_; }
  int64_t num_observed() const { return num_observed_; }  // successful observe() calls

 protected:
  BlockObserverBase(const QuantSpec& spec, std::string name) : spec_(spec), name_(std::move(name)) {}
  // Checks dtype, finiteness and shape against the bound grid (binding it on the first call).
  // On success *grid holds the grid of x (its rows may differ from grid_.rows, see above).
  Status check_and_bind(ConstTensorView x, BlockGrid* grid);

  QuantSpec spec_;
  std::string name_;
  BlockGrid grid_;
  int64_t num_observed_ = 0;
};
}  // namespace detail

// Running max |x| per block over every observe() call: static absmax scales.
class AbsMaxObserver : public detail::BlockObserverBase {
 public:
  // Validates the spec; `name` names the tensor in error messages.
  static Result<AbsMaxObserver> create(const QuantSpec& spec, std::string name = {});
  Status observe(ConstTensorView x);  // f32, at least one dimension
  // Per-block clip values in grid order; empty before anything was observed.
  std::vector<float> clip() const { return amax_; }

 private:
  using BlockObserverBase::BlockObserverBase;
  std::vector<float> amax_;  // (grid_rows, grid_cols)
};

// The exact P-th percentile of |x| per block over everything observed: keeps every |x|
// (4 bytes per observed element) and selects index ceil(P/100 · n) − 1 of the sorted |x|.
class PercentileObserver : public detail::BlockObserverBase {
 public:
  // percentile in (0, 100]; 100 is the absmax.
  static Result<PercentileObserver> create(const QuantSpec& spec, double percentile, std::string name = {});
  Status observe(ConstTensorView x);
  std::vector<float> clip() const;
  double percentile() const { return percentile_; }

 private:
  PercentileObserver(const QuantSpec& spec, double percentile, std::string name)
      : BlockObserverBase(spec, std::move(name)), percentile_(percentile) {}
  double percentile_;
  std::vector<std::vector<float>> abs_;  // per block, every |x| seen
};

// Per block, the clip c = r · absmax with r ∈ {1.00, 0.99, …, 0.50} whose quantize→dequantize
// MSE over everything observed in that block is smallest under the spec (ties: the larger r),
// so never worse than absmax. Keeps every sample (4 bytes per observed element). Each block is
// evaluated as its own 1×n tensor, so an NVFP4 spec (e4m3*fp32) takes its tensor scale from
// the block rather than the whole tensor; the result is then close to, not exactly, optimal.
class MseObserver : public detail::BlockObserverBase {
 public:
  static Result<MseObserver> create(const QuantSpec& spec, std::string name = {});
  Status observe(ConstTensorView x);
  // Candidates the spec cannot represent (a scale its format cannot hold) are skipped;
  // a block where none can falls back to its absmax, and quantize() reports the error.
  std::vector<float> clip() const;

  static constexpr int kNumRatios = 51;  // r = 1.00, 0.99, ..., 0.50
  // The k-th candidate ratio, k in [0, kNumRatios), in fp32 exactly as quantize's own
  // ClipRule::kMse search forms it, so one observed batch gives the same clips as that rule.
  static float ratio(int k) { return 1.0f - 0.01f * static_cast<float>(k); }

 private:
  using BlockObserverBase::BlockObserverBase;
  std::vector<std::vector<float>> samples_;  // per block, every x seen (signed: nf4 is asymmetric)
};

// Transformer Engine's delayed scaling: remember the amax of the last N steps and derive
// the next step's scale from them, so the scale is known before the tensor is produced.
//
//   LOWBIT_ASSIGN_OR_RETURN(AmaxHistory h, AmaxHistory::create(16, 0, 448.0f, "fc1.weight"));  // e4m3
//   float s = h.scale();                     // quantize this step with s (0 on the first step)
//   LOWBIT_RETURN_IF_ERROR(h.record(amax));  // then remember this step's amax
class AmaxHistory {
 public:
  // history_len >= 1; margin scales the clip by 2^margin (TE's margin, headroom for growth);
  // element_max > 0 is the element format's largest value (448 for e4m3, 57344 for e5m2).
  static Result<AmaxHistory> create(int history_len, int margin, float element_max, std::string name = {});

  // Appends one step's amax (finite, >= 0), dropping the oldest beyond history_len.
  Status record(float amax);
  // max over the history × 2^margin; 0 when nothing is recorded.
  float clip() const;
  // The dequantization scale clip / element_max (x ≈ code · scale); 0 when nothing is recorded.
  float scale() const { return clip() / element_max_; }
  // The remembered amaxes, oldest first (at most history_len).
  std::span<const float> history() const { return history_; }

  int64_t num_recorded() const { return num_recorded_; }  // every record() that succeeded
  int history_len() const { return history_len_; }
  int margin() const { return margin_; }
  float element_max() const { return element_max_; }
  const std::string& name() const { return name_; }

 private:
  AmaxHistory(int history_len, int margin, float element_max, std::string name)
      : history_len_(history_len), margin_(margin), element_max_(element_max), name_(std::move(name)) {}
  int history_len_;
  int margin_;
  float element_max_;
  std::string name_;
  std::vector<float> history_;  // oldest first
  int64_t num_recorded_ = 0;
};

// Per-block max |x| of x itself, in grid order: the clip values of dynamic (online)
// quantization. Errors: a non-f32 or 0-d tensor, NaN/±inf (naming `name` and the position),
// an invalid spec.
Result<std::vector<float>> dynamic_clip(ConstTensorView x, const QuantSpec& spec, std::string_view name = {});

}  // namespace lowbit
