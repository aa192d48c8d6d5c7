// lowbit generate --model M [--tokenizer T] --prompt "..." [-n N] [--temp T] [--seed S] [--ids]
// Streams generated text (or, with --ids, prints the generated token ids on one line).
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct GenerateArgs {
  std::string model, tokenizer, prompt;
  int n = 64;
  float temp = 0.0f;
  uint64_t seed = 0;
  bool ids = false;
};

void run_generate(const GenerateArgs& a) {
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const int vocab = model->config.vocab_size;
  const std::string tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, vocab, "generate") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, vocab);
  if (!tok.ok()) fail(tok.status());
  Result<std::vector<int>> prompt = (*tok)->encode(a.prompt, /*bos=*/true, /*eos=*/false);
  if (!prompt.ok()) fail(prompt.status());
  if (a.n < 0) fail(kExitUsage, "generate: -n must be >= 0");
  if (!(a.temp >= 0.0f)) fail(kExitUsage, "generate: --temp must be >= 0");

  LlamaModel net(*model);
  GenerateOptions opt;
  opt.max_new_tokens = a.n;
  opt.temperature = a.temp;
  opt.seed = a.seed;
  opt.stop_token = (*tok)->bos_id();  // as llama2.c's run.c: a new BOS ends the story
  int prev = prompt->back();
  if (!a.ids) {
    for (size_t i = 1; i < prompt->size(); ++i) std::fputs((*tok)->decode((*prompt)[i - 1], (*prompt)[i]).c_str(), stdout);
    std::fflush(stdout);
  }
  std::vector<int> out_ids;
  Result<std::vector<int>> out = generate(net, *prompt, opt, [&](int id) {
    if (!a.ids) {
      std::fputs((*tok)->decode(prev, id).c_str(), stdout);
      std::fflush(stdout);
    }
    prev = id;
  });
  if (!out.ok()) fail(out.status());
  if (a.ids) {
    fmt::print("{}\n", fmt::join(*out, " "));
  } else {
    std::fputs("\n", stdout);
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Generate text with a model (greedy at --temp 0)");
  cmd->add_option("--model", a->model, "Checkpoint (llama2.c .bin)")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer (.model or llama2.c .bin); default: the one beside the model");
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("-n", a->n, "Tokens to generate")->default_val(64);
  cmd->add_option("--temp", a->temp, "Sampling temperature; 0 = greedy")->default_val(0.0f);
  cmd->add_option("--seed", a->seed, "Sampling seed")->default_val(0);
  cmd->add_flag("--ids", a->ids, "Print the generated token ids (space-separated, one line) instead of text");
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace lowbit::cli
