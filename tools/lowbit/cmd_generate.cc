// lowbit generate --model M [--tokenizer T] --prompt "..." [--chat [--system S]] [-n N] [--temp T] [--seed S] [--ids]
// Streams generated text (or, with --ids, prints the generated token ids on one line). A GGUF
// model with an embedded tokenizer needs no --tokenizer; --chat wraps the prompt in the model's
// chat template (tokenizer.chat_template; the ChatML form) and stops at <|im_end|>.
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/chat.h"
#include "lowbit/kv_cache.h"
#include "lowbit/gguf.h"
#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/tokenizer.h"

namespace lowbit::cli {
namespace {

struct GenerateArgs {
  std::string model, tokenizer, prompt, system, kv, ggml_acts = "q8_K";
  bool chat = false, system_given = false;
  int n = 64;
  float temp = 0.0f;
  uint64_t seed = 0;
  bool ids = false;
};

constexpr std::string_view kImEnd = kChatImEnd;

// The prompt as the model's ChatML template renders one user turn with a generation prompt
// (chat.h): the system turn is --system, else the template's default (SmolLM2's "You are a helpful
// AI assistant named SmolLM, ...", Qwen2's "You are Qwen, created by Alibaba Cloud. ..."), else none.
std::string chat_prompt(const std::string& model_path, const GenerateArgs& a) {
  Result<GgufFile> f = open_gguf(model_path);
  if (!f.ok() || f->find("tokenizer.chat_template") == nullptr) {
    fail(kExitUsage, fmt::format("generate --chat: {} has no tokenizer.chat_template (a GGUF model with a chat "
                                 "template is needed)", model_path));
  }
  Result<std::string> tmpl = f->get_string("tokenizer.chat_template");
  if (!tmpl.ok()) fail(tmpl.status());
  Result<std::string> out = chatml_prompt(*tmpl, a.prompt, a.system_given ? std::optional<std::string>(a.system) : std::nullopt);
  if (!out.ok()) fail(kExitUsage, fmt::format("generate --chat: {}: {}", model_path, out.status().message()));
  return *out;
}

void run_generate(const GenerateArgs& a) {
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  const int vocab = model->config.vocab_size;
  const std::string tok_path = a.tokenizer.empty() ? find_tokenizer(a.model, vocab, "generate") : a.tokenizer;
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, vocab);
  if (!tok.ok()) fail(tok.status());
  const std::string text = a.chat ? chat_prompt(a.model, a) : a.prompt;
  Result<std::vector<int>> prompt = (*tok)->encode(text, (*tok)->add_bos(), /*eos=*/false);
  if (!prompt.ok()) fail(prompt.status());
  // More than the context holds could never be generated; a bound also keeps int sums exact.
  check_range("generate -n", a.n, 0, model->config.seq_len);
  if (!(a.temp >= 0.0f)) fail(kExitUsage, "generate: --temp must be >= 0");

  model->activations.ggml = ggml_acts_from(a.ggml_acts);
  LlamaModel net(*model);
  if (!a.kv.empty()) {
    Result<KvSpec> kv = parse_kv_spec(a.kv);
    if (!kv.ok()) fail(kExitUsage, "--kv: " + kv.status().message());
    if (Status st = net.set_kv_cache(*kv); !st.ok()) fail(kExitUsage, "--kv: " + st.message());
    const LlamaConfig& c = model->config;
    const int ctx = std::min(c.seq_len, static_cast<int>(prompt->size()) + a.n);
    fmt::print(stderr, "kv cache {}: {:.0f} bytes/token at {} tokens (fp32 cache: {} bytes/token)\n", to_string(*kv),
               kv_bytes_per_token(*kv, c, std::max(ctx, 1)), ctx, 2 * c.n_layers * c.kv_dim() * 4);
  }
  GenerateOptions opt;
  opt.max_new_tokens = a.n;
  opt.temperature = a.temp;
  opt.seed = a.seed;
  // As llama2.c's run.c, a new BOS ends a story; GGUF vocabularies end at EOS, a chat turn at <|im_end|>.
  const bool runc = (*tok)->kind() == "llama2c" || (*tok)->kind() == "sentencepiece";
  opt.stop_token = runc ? (*tok)->bos_id() : (*tok)->eos_id();
  if (a.chat && (*tok)->find_token(kImEnd) >= 0) opt.stop_token = (*tok)->find_token(kImEnd);
  if (prompt->empty()) fail(kExitUsage, "generate: the prompt has no tokens (give a non-empty --prompt)");
  int prev = prompt->back();
  if (!a.ids && !a.chat) {
    for (size_t i = 0; i < prompt->size(); ++i) {
      if (i == 0 && (*prompt)[0] == (*tok)->bos_id()) continue;
      std::fputs((*tok)->decode(i == 0 ? -1 : (*prompt)[i - 1], (*prompt)[i]).c_str(), stdout);
    }
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
  cmd->add_option("--model", a->model, "Checkpoint (llama2.c .bin, GGUF, safetensors folder)")->required();
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer (.model, llama2.c .bin or GGUF); default: the GGUF model's own, else the one beside the model");
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_flag("--chat", a->chat, "Wrap the prompt as a user turn in the model's chat template (ChatML); print only the reply");
  cmd->add_option("--system", a->system, "System message for --chat (default: the template's own, if any)")
      ->each([a](const std::string&) { a->system_given = true; })
      ->needs("--chat");
  cmd->add_option("-n", a->n, "Tokens to generate")->default_val(64);
  cmd->add_option("--kv", a->kv, "Quantized KV cache spec (kv-int8, kv-int4-kivi, kv-e4m3, ...: see `lowbit eval --help`)");
  add_ggml_acts_option(cmd, &a->ggml_acts, "q8_K");
  cmd->add_option("--temp", a->temp, "Sampling temperature; 0 = greedy")->default_val(0.0f);
  cmd->add_option("--seed", a->seed, "Sampling seed")->default_val(0);
  cmd->add_flag("--ids", a->ids, "Print the generated token ids (space-separated, one line) instead of text");
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace lowbit::cli
