// lowbit convert --model M [--tokenizer T | --no-tokenizer] -o OUT [--format safetensors|gguf]
//                [--scheme S | --weights SPEC] [--gguf-f16] [--json]
// Saves a model (optionally RTN-quantized with a named scheme) as a safetensors folder or a GGUF
// file that `lowbit eval` / `lowbit generate` (and, for GGUF, llama.cpp) load back.
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/rtn.h"
#include "lowbit/save.h"

namespace lowbit::cli {
namespace {

struct ConvertArgs {
  std::string model, tokenizer, out, format = "safetensors", scheme, weights;
  bool gguf_f16 = false, json = false, no_tokenizer = false;
};

void run_convert(const ConvertArgs& a) {
  check_output("-o", a.out, {{"--model", a.model}, {"--tokenizer", a.tokenizer}}, /*folder_ok=*/true);
  Result<ModelFormat> format = parse_model_format(a.format);
  if (!format.ok()) fail(kExitUsage, "--format: " + format.status().message());
  Result<Model> model = load_model(a.model);
  if (!model.ok()) fail(model.status());
  LlamaModel net(*model);
  SaveOptions opt;
  opt.format = *format;
  opt.gguf_fallback_f16 = a.gguf_f16;
  if (!a.no_tokenizer) {
    opt.tokenizer_path = a.tokenizer.empty() ? find_tokenizer(a.model, model->config.vocab_size, "convert") : a.tokenizer;
  }
  if (!a.scheme.empty() && !a.weights.empty()) fail(kExitUsage, "convert: --scheme and --weights exclude each other");
  if (!a.scheme.empty()) {
    Result<Scheme> s = find_scheme(a.scheme);
    if (!s.ok()) fail(kExitUsage, "--scheme: " + s.status().message());
    if (Status st = apply_scheme(net, *s); !st.ok()) fail(st);
    opt.extra_metadata = {{"lowbit.method", "rtn"}, {"lowbit.scheme", a.scheme}};
  } else if (!a.weights.empty()) {
    Result<QuantSpec> w = parse_spec(a.weights);
    if (!w.ok()) fail(kExitUsage, "--weights: " + w.status().message());
    if (Status st = apply_rtn(net, *w, std::nullopt); !st.ok()) fail(st);
    opt.extra_metadata = {{"lowbit.method", "rtn"}, {"lowbit.weights", to_string(*w)}};
  }
  Result<SaveReport> r = save_model(net, a.out, opt);
  if (!r.ok()) fail(r.status());
  for (const std::string& w : r->warnings) warn(w);
  const ModelSize size = model_size(net);
  if (a.json) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const SavedTensor& t : r->tensors) tensors.push_back({{"name", t.name}, {"stored", t.stored}});
    const nlohmann::json j = {{"path", r->path},
                              {"format", model_format_name(r->format)},
                              {"bytes", r->bytes},
                              {"scheme", a.scheme},
                              {"weights", a.weights},
                              {"tokenizer", opt.tokenizer_path},
                              {"bpw", size.bpw_total()},
                              {"tensors", tensors},
                              {"warnings", r->warnings}};
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("wrote {} ({}, {} tensors, {} bytes{})\n", r->path, model_format_name(r->format), r->tensors.size(),
               r->bytes, a.scheme.empty() ? "" : fmt::format(", scheme {} at {:.3f} bpw", a.scheme, size.bpw_total()));
  }
}

}  // namespace

void register_convert(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  auto* cmd = app.add_subcommand("convert", "Save a model (optionally RTN-quantized) as safetensors or GGUF");
  cmd->add_option("--model", a->model, "Checkpoint to read (llama2.c .bin, GGUF, safetensors folder)")->required();
  cmd->add_option("-o,--output", a->out, "Output: a folder (safetensors) or a file (gguf); replaced atomically")->required();
  cmd->add_option("--format", a->format, "safetensors | gguf")->default_val("safetensors");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer (.model or llama2.c .bin) to copy (safetensors) or embed (gguf); default: the one beside the model");
  cmd->add_flag("--no-tokenizer", a->no_tokenizer, "Save without a tokenizer")->excludes("--tokenizer");
  cmd->add_option("--scheme", a->scheme, "Quantize the linears with a named scheme first (RTN; see `lowbit schemes`)")->check(non_empty());
  cmd->add_option("--weights", a->weights, "Quantize the linears with this QuantSpec first (RTN), e.g. int8:g32:sym:fp16 (GGUF Q8_0)")->check(non_empty());
  cmd->add_flag("--gguf-f16", a->gguf_f16, "GGUF: store linears whose spec has no GGUF type dequantized as F16");
  cmd->add_flag("--json", a->json, "Print a JSON summary (path, format, bytes, bpw, each tensor's stored type, warnings)");
  cmd->callback([a] { run_convert(*a); });
}

}  // namespace lowbit::cli
