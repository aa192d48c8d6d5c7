// A tiny driver of llama.cpp's public C API (llama.h), the reference tests/model/ref_qwen2.py runs
// to pin what llama.cpp computes; built by that script against a llama.cpp build, never by CMake.
//
//   llamacpp_ref MODEL greedy STEPS < prompt.txt    prompt ids, then STEPS greedy ids (one line each)
//   llamacpp_ref MODEL prefill TOPK < prompt.txt    prompt ids, then per position: TOPK "id:logit" pairs
//
// Prompts are tokenized by llama.cpp itself (special tokens parsed, no BOS added: Qwen2 has
// add_bos_token false). f32 KV cache, no flash attention, 2 threads, one sequence.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "llama.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL greedy|prefill N < prompt\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[2];
  const int n = std::atoi(argv[3]);
  std::string prompt((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (model == nullptr) return 1;
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::vector<llama_token> ids(prompt.size() + 8);
  const int np = llama_tokenize(vocab, prompt.data(), static_cast<int32_t>(prompt.size()), ids.data(),
                                static_cast<int32_t>(ids.size()), /*add_special=*/false, /*parse_special=*/true);
  if (np < 0) return 1;
  ids.resize(static_cast<size_t>(np));
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512;
  cp.n_batch = 512;
  cp.n_ubatch = 512;
  cp.n_threads = 2;
  cp.n_threads_batch = 2;
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.flash_attn = false;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) return 1;
  const int nv = llama_vocab_n_tokens(vocab);
  for (llama_token t : ids) std::printf("%d ", t);
  std::printf("\n");

  llama_batch batch = llama_batch_init(512, 0, 1);
  const auto run = [&](const std::vector<llama_token>& toks, int pos0, bool all) {
    batch.n_tokens = static_cast<int32_t>(toks.size());
    for (size_t i = 0; i < toks.size(); ++i) {
      batch.token[i] = toks[i];
      batch.pos[i] = pos0 + static_cast<int>(i);
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = all || i + 1 == toks.size();
    }
    if (llama_decode(ctx, batch) != 0) std::exit(1);
  };
  if (mode == "prefill") {
    run(ids, 0, true);
    std::vector<int> order(static_cast<size_t>(nv));
    for (int i = 0; i < np; ++i) {
      const float* l = llama_get_logits_ith(ctx, i);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int a, int b) { return l[a] > l[b]; });
      for (int k = 0; k < n; ++k) std::printf("%d:%.9g ", order[static_cast<size_t>(k)], l[order[static_cast<size_t>(k)]]);
      std::printf("\n");
    }
  } else {
    run(ids, 0, false);
    int pos = np;
    for (int s = 0; s < n; ++s) {
      const float* l = llama_get_logits_ith(ctx, -1);
      const llama_token next = static_cast<llama_token>(std::max_element(l, l + nv) - l);
      std::printf("%d ", next);
      std::fflush(stdout);
      run({next}, pos++, false);
    }
    std::printf("\n");
  }
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
