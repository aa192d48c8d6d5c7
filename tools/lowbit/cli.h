// Shared pieces of the `lowbit` command: subcommand registration, exit codes, and
// printing helpers. Logic other layers need does not live here.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowbit/ggml_matmul.h"
#include "lowbit/status.h"

namespace lowbit {
class Tokenizer;
struct SensitivityReport;
}

namespace lowbit::cli {

// Exit codes (documented in README.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // the operation failed (the OS refused I/O, internal error)
inline constexpr int kExitUsage = 2;     // bad flag, value, name or input file (corrupt, truncated, wrong kind)

// Thrown inside a subcommand callback to end the run with a one-line error; main() prints
// "lowbit: <message>" and exits with `code`. Never crosses the library API.
struct CliError {
  int code;
  std::string message;
};
[[noreturn]] void fail(int code, std::string message);
[[noreturn]] void fail(const Status& status);  // exit code from the status code

// Prints a float exactly: %.9g, with nan / inf / -inf spelled so.
std::string format_value(double v);
// JSON for a float: a number when finite, else "nan" / "inf" / "-inf".
nlohmann::json json_value(double v);
// Parses a decimal, hex-float, "nan", "inf" or "-inf" fp32 value; `what` names it in errors.
float parse_float_arg(const std::string& text, const std::string& what);

// The model's own tokenizer when it is a GGUF with one embedded, else the tokenizer beside a
// model whose vocab matches: tok<vocab>.model/.bin, then tokenizer.model/.bin; a usage error
// naming `cmd` when there is none.
std::string find_tokenizer(const std::string& model_path, int vocab, std::string_view cmd);
// The stories of `path` (split all | calib | eval) as one token stream, the way eval, quantize's
// calibration and quantize --eval all read text: a story opens with BOS where the tokenizer
// expects one; otherwise (GPT-2-style vocabularies) it keeps the blank line that ends it.
std::vector<int> tokenize_stories(const Tokenizer& tok, const std::string& path, const std::string& split);
// The file holding a model's weights: `model_path` itself, or model.safetensors in a folder.
std::string model_weights_file(const std::string& model_path);

// Non-overlapping windows of `ctx` tokens from the start of `tokens`, at most `max_windows`.
std::vector<std::vector<int>> split_windows(const std::vector<int>& tokens, int ctx, int max_windows);
// GPTQ's calibration windows as the pipeline takes them (the first `calib_tokens` of `tokens`, whole
// windows of `gctx`), and up to `max_windows` windows of `ctx` from the tokens after them.
struct GptqSplit {
  std::vector<std::vector<int>> gptq, after;
  size_t offset = 0;  // where `after` starts in `tokens`
};
GptqSplit split_after_gptq(const std::vector<int>& tokens, int gctx, int64_t calib_tokens, int ctx, int max_windows);
// Candidates `sensitivity` and `quantize --target-bpw` try unless told: 3 to 8 bits.
inline constexpr const char* kDefaultCandidates = "w3a16-g64,w4a16-g128,int4:g64:sym:fp16,q4_0,uint4:g32:asym:fp16,w8a16";

// A CLI11 check that refuses an empty value (`--weights ''` must not mean "not given").
const CLI::Validator& non_empty();

// --ggml-acts q8_K|f32: how a GGUF's k-quant linears take activations (ggml_matmul.h GgmlActs).
// Adds the option to `cmd` with the given default and the help text every command shares.
void add_ggml_acts_option(CLI::App* cmd, std::string* value, const char* default_value);
// "q8_K" or "f32" (the option's check has refused anything else).
GgmlActs ggml_acts_from(const std::string& value);

// An integer flag's value in [lo, hi], else a one-line usage error naming the flag and the range
// (checked before anything is sized from it).
void check_range(std::string_view flag, int64_t value, int64_t lo, int64_t hi);

// One output flag's value, checked before any work: refused (exit 2, one line) when it is a
// symbolic link, a device, FIFO or socket (or a directory, unless `folder_ok`), when it is one
// of `inputs` (same file, by device and inode), or when it is a folder that holds one of them.
// Entries with an empty path are skipped. Example:
//   check_output("-o", a.out, {{"--model", a.model}, {"--calib", a.calib}}, /*folder_ok=*/true);
struct NamedPath {
  std::string_view flag;
  std::string path;
};
void check_output(std::string_view flag, const std::string& out, const std::vector<NamedPath>& inputs,
                  bool folder_ok = false);

// `text` with control bytes (NUL, newline, ESC, DEL, ...) written as \xNN, so that an error
// naming a hostile tensor or file name stays one line and cannot drive the terminal.
std::string escape_control(std::string_view text);

// Prints "lowbit: warning: <message>" on stderr, control bytes escaped (a hostile tensor or file
// name in a warning stays one line).
void warn(std::string_view message);
// A warning per sensitivity candidate that measures as lossless on every unit (lossless_candidates):
// the reference `model` is on that format's grid, so its figures do not describe a full-precision model.
void warn_lossless(const SensitivityReport& s, const std::string& model);

// Peak resident set size of this process so far (getrusage ru_maxrss), MiB.
double peak_rss_mib();

// Stands for a "--" after `formats encode` (see main.cc).
inline constexpr const char* kEndOfFlagsMarker = "\x1d--";

void register_formats(CLI::App& app);
void register_cpu(CLI::App& app);
void register_schemes(CLI::App& app);
void register_generate(CLI::App& app);
void register_eval(CLI::App& app);
void register_quantize(CLI::App& app);
void register_sensitivity(CLI::App& app);
void register_dynamic(CLI::App& app);
void register_convert(CLI::App& app);
void register_kernels(CLI::App& app);
void register_bench(CLI::App& app);
void register_train(CLI::App& app);
void register_qat(CLI::App& app);
// Adds `bench model` under the `bench` command register_bench makes.
void register_bench_model(CLI::App& bench);

}  // namespace lowbit::cli
