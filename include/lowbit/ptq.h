// Post-training quantization methods, one linear (or one group of linears sharing an input)
// at a time: GPTQ (Frantar et al. 2022), AWQ (Lin et al. 2023), SmoothQuant (Xiao et al.
// 2022) and LLM.int8()-style outlier decomposition (Dettmers et al. 2022). The layer-by-layer
// pipeline that feeds them calibration statistics lives in pipeline.h; the arithmetic of each
// is in docs/algorithms.md.
//
//   InputStats x;  x.init(in, /*hessian=*/true, /*max_samples=*/0);
//   x.add(acts, tokens);                                   // (tokens, in), every calibration batch
//   x.finish();                                            // before reading x.hessian
//   LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, gptq_quantize(w, x.hessian, spec, {}, "layers.0.wq"));
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "lowbit/quant.h"
#include "lowbit/tensor.h"

namespace lowbit {

// What calibration saw at one linear input: (tokens, dim) rows accumulated batch by batch.
// The Hessian's rows are gathered and folded in as one symmetric rank-k update per ~64 MiB of
// rows (a (dim, dim) pass per fold, not per batch: at a 1.5B FFN's 8960 inputs that pass is
// 0.3 GiB), into the lower triangle only; finish() folds what is pending and mirrors. Adding
// after finish() is allowed (finish again before reading).
struct InputStats {
  int64_t dim = 0;
  int64_t tokens = 0;
  std::vector<double> hessian;  // (dim, dim) H = Σ xᵀx, when asked for; complete after finish()
  std::vector<float> absmax;    // (dim) max |x_j|
  std::vector<double> abs_sum;  // (dim) Σ |x_j|
  std::vector<float> samples;   // (≤ max_samples, dim): the first rows seen, for output-error searches
  int64_t max_samples = 0;
  std::vector<float> pending;   // (rows, dim) not yet folded into hessian
  int64_t fold_bytes = int64_t{64} << 20;  // fold once pending holds this much

  void init(int64_t dim, bool hessian, int64_t max_samples);
  void add(const float* x, int64_t rows);  // x (rows, dim)
  void finish();                           // fold pending rows; hessian symmetric
  void fold_pending();                     // lower triangle += pending rows' XᵀX
  int64_t sample_rows() const { return dim ? static_cast<int64_t>(samples.size()) / dim : 0; }
  std::vector<float> mean_abs() const;     // (dim) Σ |x_j| / tokens
};

// ---- GPTQ --------------------------------------------------------------------------------
struct GptqOptions {
  double damp = 0.01;          // λ = damp · mean(diag H), added to the diagonal
  int64_t block_size = 128;    // lazy-batch width (columns)
  bool act_order = false;      // columns by decreasing diag(H)
  bool static_groups = false;  // group scales from the original weights, fixed before any update
  int max_damp_retries = 4;    // not positive definite: retry with 10x the damping, this many times
  bool f64_factor = false;     // H⁻¹'s factor by the double solve + second Cholesky (slow reference); else
                               // one Cholesky + triangular inverse in float (double where float fails)
};
struct GptqStats {
  double damp = 0;          // the damping fraction that worked
  int64_t dead_cols = 0;    // inputs never active (diag H = 0): weights zeroed
  double seconds = 0;
};
// Quantizes w (out, in) with the spec, minimising ‖X Wᵀ − X Ŵᵀ‖² for the inputs whose
// Σ xᵀx is `hessian` (in × in, row-major). Group scales follow the spec's grid over the
// original column order (consistent with act-order: a group's scale is fixed when its first
// column is reached). Errors name the tensor: a spec GPTQ cannot use (stochastic rounding,
// two-level NVFP4 scales), a Hessian of the wrong size, not positive definite after damping.
//
// GPTQ's factor of H⁻¹ costs O(in³) and depends only on the Hessian, the damping and the order, so
// linears that share one input (q/k/v, gate/up) and the candidates of a sensitivity sweep can share
// it: pass the same GptqFactorCache to those calls. It holds one factor, keyed by the Hessian's
// contents (a 64-bit hash over every entry, its size) and the options that shape it; a call on
// another Hessian replaces it. The results are bit-identical with and without a cache.
struct GptqFactorCache {
  struct Entry;  // src/algo/gptq.cc
  std::unique_ptr<Entry> entry;
  int64_t hits = 0, misses = 0;
  GptqFactorCache();
  ~GptqFactorCache();
  GptqFactorCache(GptqFactorCache&&) noexcept;
  GptqFactorCache& operator=(GptqFactorCache&&) noexcept;
  void clear();  // frees the factor (the counts stay)
};
Result<QuantizedTensor> gptq_quantize(ConstTensorView w, std::span<const double> hessian, const QuantSpec& spec,
                                      const GptqOptions& opt, std::string_view name, GptqStats* stats = nullptr,
                                      GptqFactorCache* cache = nullptr);

// GPTQ's factor of H⁻¹ on its own (tests, tools): U (in, in) row-major upper triangular with
// Uᵀ U = (H + λ I)⁻¹, λ = damp · mean(diag H), in `order` (the column order; empty = natural) —
// the float path gptq_quantize uses (double where float fails) or the f64 reference. False when
// the matrix is not positive definite at this damping.
bool gptq_factor(std::span<const double> hessian, std::span<const int64_t> order, double damp, bool f64_reference,
                 std::vector<float>& u);

// ‖X (W − Ŵ)ᵀ‖² over the sample rows x (n, in) — the output error the methods minimise.
double output_error(ConstTensorView w, ConstTensorView w_hat, std::span<const float> x, int64_t n);

// ---- AWQ ---------------------------------------------------------------------------------
struct AwqOptions {
  int grid = 20;             // α ∈ {0, 1/grid, …, 1}
  int64_t max_samples = 512; // calibration rows used to score a candidate
};
struct AwqResult {
  std::vector<float> scales;  // (in) s_j; weights are multiplied by s, the input divided by it
  double alpha = 0;
  double error = 0;       // Σ output error of the group with the chosen scales
  double rtn_error = 0;   // … with s = 1 (plain RTN)
};
// Searches s = mean|x|^α (normalised so max·min = 1) over α for the linears `weights` (each
// (out_i, in)) that share one input, quantized with `spec`; x_mean (in) is mean |x_j| (the
// caller may tie channels by averaging), samples (n, in) the rows scored.
Result<AwqResult> awq_search(std::span<const ConstTensorView> weights, std::span<const float> x_mean,
                             std::span<const float> samples, int64_t n, const QuantSpec& spec, const AwqOptions& opt,
                             std::string_view name);

// ---- SmoothQuant -------------------------------------------------------------------------
// s_j = max|X_j|^α / max|W_j|^(1−α) over the linears sharing the input (max over all their
// rows); channels that never fire keep s = 1. Weights are multiplied by s, inputs divided.
std::vector<float> smoothquant_scales(std::span<const ConstTensorView> weights, std::span<const float> act_absmax,
                                      double alpha);

// ---- LLM.int8() outlier decomposition ------------------------------------------------------
struct OutlierDecomposition {
  std::vector<int32_t> cols;  // input columns with max |x_j| > threshold, ascending
  QuantizedTensor main;       // w with those columns zeroed, quantized with the spec
  Tensor part;                // (out, cols.size()) f32 holding fp16-rounded weight columns
  int64_t part_bytes = 0;     // fp16 values + int32 column indices
};
Result<OutlierDecomposition> split_outliers(ConstTensorView w, std::span<const float> act_absmax, float threshold,
                                            const QuantSpec& spec, std::string_view name);

// Scales the columns (in) of w (out, in) by s: w[:, j] *= s[j]; or its rows by 1/s.
void scale_columns(TensorView w, std::span<const float> s);
void divide_rows(TensorView w, std::span<const float> s);

}  // namespace lowbit
