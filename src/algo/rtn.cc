#include "lowbit/rtn.h"

#include <utility>

#include "lowbit/pipeline.h"
#include "lowbit/save.h"

#include <fmt/format.h>

namespace lowbit {
namespace {

constexpr const char* kLinearNames[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
constexpr Linear LayerLinears::*kLinearMembers[] = {&LayerLinears::wq, &LayerLinears::wk, &LayerLinears::wv,
                                                    &LayerLinears::wo, &LayerLinears::w1, &LayerLinears::w2,
                                                    &LayerLinears::w3};
ConstTensorView LayerWeights::*const kWeightMembers[] = {&LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv,
                                                         &LayerWeights::wo, &LayerWeights::w1, &LayerWeights::w2,
                                                         &LayerWeights::w3};

}  // namespace

double ModelSize::bpw_weights() const {
  return linear_params ? 8.0 * static_cast<double>(linear_code_bytes) / static_cast<double>(linear_params) : 0.0;
}
double ModelSize::bpw_total() const {
  return linear_params ? 8.0 * static_cast<double>(linear_bytes) / static_cast<double>(linear_params) : 0.0;
}

Status apply_rtn(LlamaModel& net, const QuantSpec& weights, const std::optional<QuantSpec>& activations) {
  for (size_t l = 0; l < net.layers().size(); ++l) {
    for (size_t i = 0; i < std::size(kLinearMembers); ++i) {
      const std::string name = fmt::format("layers.{}.{}", l, kLinearNames[i]);
      ConstTensorView w = net.weights().layers[l].*kWeightMembers[i];
      Tensor decoded;  // (out, in): a k-quant matrix dequantized alone, dropped after quantizing it
      if (const GgmlMatrix* g = (net.layers()[l].*kLinearMembers[i]).ggml(); g != nullptr && w.data() == nullptr) {
        LOWBIT_ASSIGN_OR_RETURN(decoded, ggml_decode(*g));
        w = std::as_const(decoded).view();
      }
      QuantizeOptions opt;
      opt.name = name;
      LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(w, weights, opt));
      LOWBIT_ASSIGN_OR_RETURN(net.layers()[l].*kLinearMembers[i], Linear::quantized(q, activations));
    }
  }
  net.activation_quant().linear_input = activations;
  return OkStatus();
}

Status apply_scheme(LlamaModel& net, const Scheme& scheme) {
  if (is_gguf_scheme(scheme.name)) {  // llama.cpp's per-tensor types and fallbacks, plain rounding as llama-quantize
    PipelineOptions opt;
    LOWBIT_ASSIGN_OR_RETURN(opt.plan, make_gguf_plan(net.config(), scheme.name));
    return quantize_model(net, opt).status();
  }
  LOWBIT_ASSIGN_OR_RETURN(QuantSpec w, parse_spec(scheme.weights));
  std::optional<QuantSpec> a;
  if (!scheme.activations.empty()) {
    LOWBIT_ASSIGN_OR_RETURN(QuantSpec as, parse_spec(scheme.activations));
    a = as;
  }
  return apply_rtn(net, w, a);
}

ModelSize model_size(const LlamaModel& net) {
  ModelSize s;
  const LlamaConfig& c = net.config();
  for (const LayerLinears& ll : net.layers()) {
    for (const auto member : kLinearMembers) {
      const Linear& lin = ll.*member;
      const int64_t n = lin.out_features() * lin.in_features();
      s.linear_params += n;
      if (const QuantizedTensor* q = lin.quant()) {
        s.linear_bytes += q->storage_bytes();
        s.linear_code_bytes += static_cast<int64_t>(q->codes.size());
      } else if (const GgmlMatrix* g = lin.ggml()) {  // k-quant blocks: scales live inside them
        s.linear_bytes += g->bytes();
        s.linear_code_bytes += g->bytes();
      } else {
        s.linear_bytes += 4 * n;
        s.linear_code_bytes += 4 * n;
      }
    }
    for (const OutlierSplit& split : ll.outliers) s.linear_bytes += split.storage_bytes;
  }
  const int64_t emb = static_cast<int64_t>(c.vocab_size) * c.dim;
  s.other_params = emb + static_cast<int64_t>(c.n_layers) * 2 * c.dim + c.dim;
  s.other_bytes = 4 * (s.other_params - emb) + (c.qkv_bias ? 4 * static_cast<int64_t>(c.n_layers) * (c.dim + 2 * c.kv_dim()) : 0);
  if (c.qkv_bias) s.other_params += static_cast<int64_t>(c.n_layers) * (c.dim + 2 * c.kv_dim());
  const QuantizedTensor* cq = net.classifier().quant();
  const GgmlMatrix* cg = net.classifier().ggml();
  const GgmlMatrix* eg = net.embedding_blocks();
  const QuantizedTensor* eq = net.embedding_quant();
  const bool emb16 = net.embedding_spec() && is_fp16_cast(*net.embedding_spec());  // saved as F16
  const int64_t emb_bytes = eq ? eq->storage_bytes() : eg ? eg->bytes() : (emb16 ? 2 : 4) * emb;
  const int64_t cls_bytes = cq ? cq->storage_bytes() : cg ? cg->bytes() : 4 * emb;
  if (c.shared_classifier) {
    s.other_bytes += eq || eg ? emb_bytes : cls_bytes;  // the classifier is the embedding
  } else {
    s.other_params += emb;
    s.other_bytes += emb_bytes + cls_bytes;
  }
  return s;
}

}  // namespace lowbit
