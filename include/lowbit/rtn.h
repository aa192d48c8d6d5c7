// Round-to-nearest (RTN) post-training quantization of a whole model: every linear weight
// quantized with one QuantSpec (norms and the embedding / classifier stay fp32), and,
// optionally, dynamic fake quantization of every linear's input activations.
//
//   LOWBIT_ASSIGN_OR_RETURN(Scheme s, find_scheme("w8a8"));
//   LOWBIT_RETURN_IF_ERROR(apply_scheme(net, s));
#pragma once

#include <optional>

#include "lowbit/llama.h"
#include "lowbit/quant.h"

namespace lowbit {

struct ModelSize {
  int64_t linear_params = 0;      // elements of the quantized linear weights
  int64_t linear_bytes = 0;       // their storage: codes + scales + zero points
  int64_t linear_code_bytes = 0;  // codes only
  int64_t other_params = 0;       // embedding, classifier (if untied), norms
  int64_t other_bytes = 0;        // their storage (fp32, or the classifier's / tied embedding's spec)
  double bpw_weights() const;     // linear weights, codes only
  double bpw_total() const;       // linear weights, scales (and outlier columns) included
  int64_t total_bytes() const { return linear_bytes + other_bytes; }
};

// Quantizes every linear of `net` with `weights` (RTN); `activations`, when set, fake-quantizes
// each linear's input dynamically. Errors name the tensor ("layers.3.wq: ...").
Status apply_rtn(LlamaModel& net, const QuantSpec& weights, const std::optional<QuantSpec>& activations);
// A named scheme: RTN with its weights/activations specs, or, for `gguf-*` schemes, llama.cpp's
// per-tensor types and fallbacks (make_gguf_plan) with plain rounding, as llama-quantize without
// an importance matrix does.
Status apply_scheme(LlamaModel& net, const Scheme& scheme);
// Storage of `net` as it stands (fp32 linears count 32 bits per weight).
ModelSize model_size(const LlamaModel& net);

}  // namespace lowbit
