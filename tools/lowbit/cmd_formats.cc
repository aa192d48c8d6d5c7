// lowbit formats [--json]                 the traits table
// lowbit formats encode FORMAT [...] X... fp32 values -> codes
// lowbit formats decode FORMAT CODE...    codes -> fp32 values
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/formats.h"

namespace lowbit::cli {
namespace {

std::string_view kind_name(FormatKind k) {
  switch (k) {
    case FormatKind::kFloat: return "float";
    case FormatKind::kInteger: return "integer";
    case FormatKind::kLookup: return "lookup";
  }
  return "?";
}

// Gap between 1.0 and the next representable value above it (below it when 1.0 is the
// largest value, as for nf4).
double epsilon_at_one(Format f) {
  const FormatTraits& t = traits(f);
  if (t.kind == FormatKind::kFloat) {
    const uint32_t one = encode(f, 1.0f);
    return static_cast<double>(decode(f, one + 1)) - 1.0;  // positive codes increase with value
  }
  double above = INFINITY, below = INFINITY;
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const double v = decode(f, c);
    if (v > 1.0) above = std::min(above, v - 1.0);
    if (v < 1.0) below = std::min(below, 1.0 - v);
  }
  return std::isfinite(above) ? above : below;
}

std::string code_hex(Format f, uint32_t code) {
  const int digits = (traits(f).bits + 3) / 4;
  return fmt::format("0x{:0{}X}", code, digits);
}

Format parse_format_arg(const std::string& name) {
  Result<Format> f = parse_format(name);
  if (!f.ok()) fail(kExitUsage, f.status().message());
  return *f;
}

void print_table(bool json) {
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const FormatTraits& t : kFormatTraits) {
      out.push_back({{"name", t.name},
                     {"bits", t.bits},
                     {"kind", kind_name(t.kind)},
                     {"signed", t.is_signed},
                     {"exp_bits", t.exp_bits},
                     {"man_bits", t.man_bits},
                     {"bias", t.bias},
                     {"max", t.max_finite},
                     {"lowest", t.lowest},
                     {"min_normal", t.min_normal},
                     {"min_subnormal", t.min_subnormal},
                     {"epsilon", epsilon_at_one(t.format)},
                     {"has_inf", t.has_inf},
                     {"has_nan", t.nan != NanStyle::kNone},
                     {"nan_encodings", t.nan_encodings},
                     {"source", t.source}});
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{:<6} {:>4} {:<7} {:>3} {:>3} {:>4} {:>15} {:>15} {:>15} {:>15} {:>12} {:>4}  {}\n", "name", "bits",
             "kind", "e", "m", "bias", "max", "lowest", "min_normal", "min_subnormal", "eps@1.0", "inf", "NaN");
  for (const FormatTraits& t : kFormatTraits) {
    fmt::print("{:<6} {:>4} {:<7} {:>3} {:>3} {:>4} {:>15} {:>15} {:>15} {:>15} {:>12} {:>4}  {}\n", t.name, t.bits,
               kind_name(t.kind), t.exp_bits, t.man_bits, t.bias, format_value(t.max_finite), format_value(t.lowest),
               format_value(t.min_normal), format_value(t.min_subnormal), format_value(epsilon_at_one(t.format)),
               t.has_inf ? "yes" : "no", t.nan_encodings);
  }
}

struct EncodeArgs {
  std::string format;
  std::vector<std::string> values;
  bool saturate = false;
  bool no_saturate = false;
  bool stochastic = false;
  uint64_t seed = 0;
  bool json = false;
};

void run_encode(const EncodeArgs& a) {
  const Format f = parse_format_arg(a.format);
  const FormatTraits& t = traits(f);
  if (a.saturate && a.no_saturate) fail(kExitUsage, "formats encode: --saturate and --no-saturate exclude each other");
  const EncodeOptions opt{.saturate = a.saturate,
                          .rounding = a.stochastic ? Rounding::kStochastic : Rounding::kNearestEven,
                          .seed = a.seed};
  // Parse and validate everything before printing anything: no partial output.
  std::vector<float> xs;
  for (size_t i = 0; i < a.values.size(); ++i) {
    const float x = parse_float_arg(a.values[i], fmt::format("formats encode: value {}", i + 1));
    if (std::isnan(x) && t.nan == NanStyle::kNone) {
      fail(kExitUsage, fmt::format("formats encode: {} has no NaN encoding (value {} is nan)", t.name, i + 1));
    }
    xs.push_back(x);
  }
  nlohmann::json out = nlohmann::json::array();
  std::string text;
  for (size_t i = 0; i < xs.size(); ++i) {
    const uint32_t code = encode(f, xs[i], opt, i);  // index = position: --seed reproduces
    const float v = decode(f, code);
    if (a.json) {
      out.push_back({{"input", json_value(xs[i])}, {"code", code_hex(f, code)}, {"value", json_value(v)}});
    } else {
      text += fmt::format("{} {} {}\n", format_value(xs[i]), code_hex(f, code), format_value(v));
    }
  }
  if (a.json) {
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("{}", text);
  }
}

struct DecodeArgs {
  std::string format;
  std::vector<std::string> codes;
  bool json = false;
};

uint32_t parse_code(Format f, const std::string& text, size_t position) {
  const std::string what = fmt::format("formats decode: code {}", position);
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 0);  // 0x.. hex, else decimal
  if (text.empty() || text[0] == '-' || end == text.c_str() || *end != '\0' || errno == ERANGE) {
    fail(kExitUsage, what + ": '" + text + "' is not a code (expected e.g. 0x7E or 126)");
  }
  if (v >= num_codes(f)) {
    fail(kExitUsage, fmt::format("{}: {} does not fit in {} bits (max {})", what, text, traits(f).bits,
                                 code_hex(f, static_cast<uint32_t>(num_codes(f) - 1))));
  }
  return static_cast<uint32_t>(v);
}

void run_decode(const DecodeArgs& a) {
  const Format f = parse_format_arg(a.format);
  std::vector<uint32_t> codes;
  for (size_t i = 0; i < a.codes.size(); ++i) codes.push_back(parse_code(f, a.codes[i], i + 1));
  nlohmann::json out = nlohmann::json::array();
  std::string text;
  for (uint32_t code : codes) {
    const float v = decode(f, code);
    if (a.json) {
      out.push_back({{"code", code_hex(f, code)}, {"value", json_value(v)}});
    } else {
      text += fmt::format("{} {}\n", code_hex(f, code), format_value(v));
    }
  }
  if (a.json) {
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("{}", text);
  }
}

}  // namespace

void register_formats(CLI::App& app) {
  auto* cmd = app.add_subcommand("formats", "Number formats: the traits table, and encode/decode by hand");
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "Machine-readable output");
  cmd->require_subcommand(0, 1);
  cmd->callback([cmd, json] {
    if (cmd->get_subcommands().empty()) print_table(*json);
  });

  auto enc = std::make_shared<EncodeArgs>();
  auto* e = cmd->add_subcommand("encode", "Encode fp32 values to FORMAT codes: prints input, code (hex), decoded value");
  e->add_option("format", enc->format, "Format name (see `lowbit formats`)")->required();
  // Values are taken raw (CLI11 would read "-inf" or "-0x1p-3" as flags): everything after
  // FORMAT that is not one of this command's flags is a value; "--" ends flag parsing.
  e->prefix_command();
  e->allow_extras();
  e->footer("VALUES: fp32 values after FORMAT: decimal, hex float (0x1p-9), nan, inf, -inf; negatives need no quoting.");
  e->add_flag("--saturate", enc->saturate, "Clamp overflow and ±inf to ±max finite");
  e->add_flag("--no-saturate", enc->no_saturate, "Overflow to inf or NaN as the format's spec says (default)");
  e->add_flag("--stochastic", enc->stochastic, "Stochastic rounding (seeded; value i uses counter i)");
  e->add_option("--seed", enc->seed, "Seed for --stochastic")->default_val(0);
  e->add_flag("--json", enc->json, "Print a JSON list of {input, code, value}");
  e->callback([e, enc, json] {
    EncodeArgs a = *enc;
    a.json = a.json || *json;  // `lowbit formats --json encode ...`
    const std::vector<std::string> rest = e->remaining();
    bool flags_done = false;
    for (size_t i = 0; i < rest.size(); ++i) {
      const std::string& tok = rest[i];
      if (!flags_done && (tok == "--" || tok == kEndOfFlagsMarker)) {
        flags_done = true;
      } else if (!flags_done && tok == "--saturate") {
        a.saturate = true;
      } else if (!flags_done && tok == "--no-saturate") {
        a.no_saturate = true;
      } else if (!flags_done && tok == "--stochastic") {
        a.stochastic = true;
      } else if (!flags_done && tok == "--json") {
        a.json = true;
      } else if (!flags_done && (tok == "--seed" || tok.rfind("--seed=", 0) == 0)) {
        std::string v = tok == "--seed" ? (i + 1 < rest.size() ? rest[++i] : "") : tok.substr(7);
        char* end = nullptr;
        errno = 0;
        a.seed = std::strtoull(v.c_str(), &end, 0);
        if (v.empty() || v[0] == '-' || *end != '\0' || errno == ERANGE) {
          fail(kExitUsage, "formats encode: --seed: '" + v + "' is not a non-negative integer");
        }
      } else if (!flags_done && tok.rfind("--", 0) == 0) {
        fail(kExitUsage, "formats encode: unknown flag " + tok + " (see --help)");
      } else {
        a.values.push_back(tok);
      }
    }
    if (a.values.empty()) fail(kExitUsage, "formats encode: no values given (expected FORMAT X...)");
    run_encode(a);
  });

  auto dec = std::make_shared<DecodeArgs>();
  auto* d = cmd->add_subcommand("decode", "Decode FORMAT codes to fp32 values: prints code (hex), value");
  d->add_option("format", dec->format, "Format name (see `lowbit formats`)")->required();
  d->add_option("codes", dec->codes, "Codes, hex (0x7E) or decimal")->required();
  d->add_flag("--json", dec->json, "Print a JSON list of {code, value}");
  d->callback([dec, json] {
    DecodeArgs a = *dec;
    a.json = a.json || *json;
    run_decode(a);
  });
}

}  // namespace lowbit::cli
