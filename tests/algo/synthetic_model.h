// A seeded random Llama for the algo tests (pipeline, mixed precision), weights owned by the
// Model, and seeded random token windows.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <random>
#include <vector>

#include "lowbit/model.h"

namespace lowbit::testutil {

// A random Llama with `layers` blocks (GQA: 4 heads, 2 kv heads), weights owned by the Model.
inline Model synthetic_model(int layers, uint64_t seed, int dim = 64, int hidden = 96) {
  Model m;
  LlamaConfig& c = m.config;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 80;
  c.seq_len = 64;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto make = [&](std::initializer_list<int64_t> dims, float sd, float mean = 0.0f) {
    Tensor t = Tensor::empty(DType::kF32, dims).value();
    for (int64_t i = 0; i < t.view().numel(); ++i) t.data_as<float>()[i] = mean + sd * nd(rng);
    m.owned.push_back(std::move(t));
    return ConstTensorView(m.owned.back().view());
  };
  m.owned.reserve(static_cast<size_t>(layers) * 9 + 3);
  const int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  m.weights.tok_embeddings = make({c.vocab_size, d}, 1.0f);
  for (int l = 0; l < layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = make({d}, 0.1f, 1.0f);
    lw.wq = make({d, d}, 0.125f);
    lw.wk = make({kv, d}, 0.125f);
    lw.wv = make({kv, d}, 0.125f);
    lw.wo = make({d, d}, 0.125f);
    lw.ffn_norm = make({d}, 0.1f, 1.0f);
    lw.w1 = make({h, d}, 0.125f);
    lw.w2 = make({d, h}, 0.1f);
    lw.w3 = make({h, d}, 0.125f);
    m.weights.layers.push_back(lw);
  }
  m.weights.final_norm = make({d}, 0.1f, 1.0f);
  m.weights.classifier = m.weights.tok_embeddings;
  return m;
}

inline std::vector<std::vector<int>> random_windows(int n, int len, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int>> w(static_cast<size_t>(n), std::vector<int>(static_cast<size_t>(len)));
  for (auto& win : w)
    for (int& t : win) t = static_cast<int>(rng() % static_cast<uint64_t>(vocab));
  return w;
}

}  // namespace lowbit::testutil
