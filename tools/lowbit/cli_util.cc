#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <sys/resource.h>

#include <fmt/format.h>

#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/mixed.h"
#include "lowbit/tokenizer.h"

#include "cli.h"

namespace lowbit::cli {

void fail(int code, std::string message) { throw CliError{code, std::move(message)}; }

void fail(const Status& status) {
  // Corrupt or truncated files are bad input (2), like bad flags; the OS refusing a read or
  // write, or a broken invariant, is a failure (1).
  const int code = status.code() == StatusCode::kIoError || status.code() == StatusCode::kInternal ? kExitFailure
                                                                                                      : kExitUsage;
  fail(code, status.message());
}

std::string format_value(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{:.9g}", v);
}

nlohmann::json json_value(double v) {
  if (std::isfinite(v)) return v;
  return format_value(v);
}

float parse_float_arg(const std::string& text, const std::string& what) {
  if (text.empty()) fail(kExitUsage, what + ": empty value (expected a number)");
  errno = 0;
  char* end = nullptr;
  const float v = std::strtof(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0') {
    fail(kExitUsage, what + ": '" + text + "' is not a number (expected e.g. 0.3, -1e-3, 0x1p-9, nan, inf)");
  }
  // ERANGE on overflow (±inf) and underflow (0 or subnormal) is fine: the fp32 value is
  // exactly what the format would receive.
  return v;
}

std::vector<int> tokenize_stories(const Tokenizer& tok, const std::string& path, const std::string& split) {
  Result<std::vector<int>> tokens = lowbit::stories_to_tokens(tok, path, split);
  if (!tokens.ok()) fail(tokens.status());
  return std::move(*tokens);
}

std::string find_tokenizer(const std::string& model_path, int vocab, std::string_view cmd) {
  Result<std::string> path = lowbit::find_tokenizer(model_path, vocab, cmd);
  if (!path.ok()) fail(path.status());
  return *path;
}

std::string model_weights_file(const std::string& model_path) { return lowbit::model_weights_file(model_path); }

std::string escape_control(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += ch;
    }
  }
  return out;
}

void warn(std::string_view message) { std::fprintf(stderr, "lowbit: warning: %s\n", escape_control(message).c_str()); }

void warn_lossless(const SensitivityReport& s, const std::string& model) {
  for (size_t k : lossless_candidates(s)) {
    warn(fmt::format("candidate {} leaves every unit within 1e-9 nats/token of {}: the reference's weights lie on its grid "
                     "(dequantized from a quantized file?), so it measures as free; leave it out of --candidates",
                     s.candidates[k].name, model));
  }
}

const CLI::Validator& non_empty() {
  static const CLI::Validator v([](const std::string& s) { return s.empty() ? std::string("empty value") : std::string(); },
                                "", "NONEMPTY");
  return v;
}

void add_ggml_acts_option(CLI::App* cmd, std::string* value, const char* default_value) {
  cmd->add_option("--ggml-acts", *value,
                  "Activations of a GGUF's Q4_K/Q6_K linears: q8_K (int8 per 256, integer dot products, as llama.cpp "
                  "runs them) or f32 (exact)")
      ->default_val(default_value)
      ->check(CLI::IsMember({"q8_K", "f32"}));
}

GgmlActs ggml_acts_from(const std::string& value) { return value == "q8_K" ? GgmlActs::kQ8K : GgmlActs::kF32; }

void check_range(std::string_view flag, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) fail(kExitUsage, fmt::format("{}: {} is out of range [{}, {}]", flag, value, lo, hi));
}

void check_output(std::string_view flag, const std::string& out, const std::vector<NamedPath>& inputs,
                  bool folder_ok) {
  if (out.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool is_folder = fs::is_directory(fs::symlink_status(out, ec));
  if (!(folder_ok && is_folder)) {
    if (Status s = check_output_path(out); !s.ok()) fail(kExitUsage, fmt::format("{}: {}", flag, s.message()));
  } else if (fs::is_symlink(fs::symlink_status(out, ec))) {
    fail(kExitUsage, fmt::format("{}: '{}' is a symbolic link; not replacing it (name its target instead)", flag, out));
  }
  const fs::path out_canon = fs::weakly_canonical(out, ec);
  for (const NamedPath& in : inputs) {
    if (in.path.empty()) continue;
    std::error_code e2;
    bool clash = fs::equivalent(out, in.path, e2);
    if (!clash && fs::is_directory(in.path, e2)) {  // a saved model folder: its files are inputs
      for (fs::directory_iterator it(in.path, e2), end; !e2 && !clash && it != end; it.increment(e2)) {
        std::error_code e3;
        clash = it->is_regular_file(e3) && fs::equivalent(out, it->path(), e3);
      }
    }
    if (!clash && is_folder) {  // -o DIR would replace DIR/model.safetensors given as --model
      const fs::path in_canon = fs::weakly_canonical(in.path, e2);
      const std::string o = out_canon.string() + "/";
      clash = !e2 && in_canon.string().starts_with(o);
    }
    if (clash) {
      fail(kExitUsage, fmt::format("{} '{}' would overwrite the input given as {} '{}'", flag, out, in.flag, in.path));
    }
  }
}


}  // namespace lowbit::cli

namespace lowbit::cli {

double peak_rss_mib() {
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

std::vector<std::vector<int>> split_windows(const std::vector<int>& tokens, int ctx, int max_windows) {
  std::vector<std::vector<int>> out;
  for (size_t p = 0; p + static_cast<size_t>(ctx) <= tokens.size() && static_cast<int>(out.size()) < max_windows; p += static_cast<size_t>(ctx)) {
    out.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(p), tokens.begin() + static_cast<std::ptrdiff_t>(p + static_cast<size_t>(ctx)));
  }
  return out;
}

GptqSplit split_after_gptq(const std::vector<int>& tokens, int gctx, int64_t calib_tokens, int ctx, int max_windows) {
  GptqSplit s;
  size_t p = 0;
  for (; p + static_cast<size_t>(gctx) <= tokens.size() && static_cast<int64_t>(s.gptq.size()) * gctx < calib_tokens; p += static_cast<size_t>(gctx)) {
    s.gptq.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(p), tokens.begin() + static_cast<std::ptrdiff_t>(p + static_cast<size_t>(gctx)));
  }
  s.offset = p;
  if (max_windows > 0) s.after = split_windows(std::vector<int>(tokens.begin() + static_cast<std::ptrdiff_t>(p), tokens.end()), ctx, max_windows);
  return s;
}

}  // namespace lowbit::cli
