// Quantizers for ggml's block types (lowbit/ggml_blocks.h): codes and scales chosen within each
// type's exact constraints (fp16 d / dmin, integer sub-block scales and mins of the type's width,
// the IQ4 non-linear grid), by plain rounding or by an importance-weighted search, and a
// block coder that fixes a block's scales and then rounds element by element (what GPTQ needs).
// The search is described in docs/algorithms.md ("ggml block types").
//
//   std::vector<uint8_t> out(ggml_row_bytes(GgmlType::kQ4_K, cols));
//   quantize_row_ggml(GgmlType::kQ4_K, x, hdiag, out.data(), cols);   // hdiag: (cols) or nullptr
//
//   GgmlBlockCoder coder(GgmlType::kIQ4_NL);
//   coder.fit(x, w);                    // 32 values: scales fixed from them
//   float v = coder.round(j, x_j);      // element j's code (kept) and its dequantized value
//   coder.pack(block_bytes);
#pragma once

#include <cstdint>

#include "lowbit/ggml_blocks.h"

namespace lowbit {

struct GgmlQuantOptions {
  // false: plain rounding — one scale per (sub-)block from its largest magnitude (min and max for
  // the affine types), super-block scales from the largest sub-block scale, no refit; what
  // llama.cpp's reference quantizers do without an importance matrix, re-derived.
  // true: weighted search — candidate scales around the plain one, codes rounded and the scale
  // (and min) refitted by weighted least squares, sub-block scales quantized and the super-block
  // d / dmin refitted; the plain result is kept when it has the smaller weighted error.
  bool search = true;
};

// Bytes of a row of k elements; 0 when k is not a multiple of the block size or the type is not one
// of ggml_block_types().
int64_t ggml_row_bytes(GgmlType type, int64_t k);

// Quantizes x[0..k) into k / block_size blocks at `out`. `importance` (k values >= 0, e.g. the
// diagonal of the calibration Hessian XᵀX, llama.cpp's imatrix) weighs each element's squared
// error; nullptr weighs all equally. False (nothing written) for an unsupported type or k.
bool quantize_row_ggml(GgmlType type, const float* x, const float* importance, void* out, int64_t k,
                       const GgmlQuantOptions& opt = {});

// Σ importance · (x − dequantized)² over the row (importance nullptr: 1).
double ggml_weighted_error(GgmlType type, const float* x, const float* importance, const void* blocks, int64_t k);

// The code of the IQ4 level (kIq4nlValues) nearest to t, ties to the lower level; t <= -127 gives 0
// and t >= 113 gives 15.
int iq4_nearest_code(float t);

// One block whose scales are fixed while its codes are chosen one element at a time.
class GgmlBlockCoder {
 public:
  explicit GgmlBlockCoder(GgmlType type);
  int64_t block_size() const { return block_; }
  // Chooses scales (and codes) for the block's block_size() values as quantize_row_ggml does.
  void fit(const float* x, const float* importance, const GgmlQuantOptions& opt = {});
  // The nearest value element e can take under the fixed scales; its code is kept for pack().
  float round(int e, float x);
  // Writes the block (ggml layout) with the current scales and codes.
  void pack(void* out) const;

  // Internal state: fp16 d / dmin, integer sub-block scales and mins, codes (unsigned, per type).
  struct State {
    uint16_t d_bits = 0, dmin_bits = 0;
    int sc[16] = {}, mn[16] = {};
    uint8_t q[256] = {};
  };

 private:
  GgmlType type_;
  int64_t block_;
  State s_;
};

}  // namespace lowbit
