// QuantSpec: validation, the text form, block grids and storage accounting.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "lowbit/convert.h"
#include "lowbit/quant.h"

namespace lowbit {
namespace {

constexpr std::string_view kGranularityHelp = "tensor, row (channel, token), col, g<G>, block<R>x<C> (tile<R>x<C>)";
constexpr std::string_view kScaleHelp = "fp32, fp16, bf16, e8m0, e4m3, e4m3*fp32";
constexpr std::string_view kOptionHelp = "sym, asym, absmax, p<percent>, mse, divide, pow2, mxfloor, unit, rne, sr<seed>, sat, nosat";

bool parse_i64(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

bool parse_u64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) return out;
    start = pos + 1;
  }
}

bool is_scale_format(Format f) {
  return f == Format::kFp32 || f == Format::kFp16 || f == Format::kBf16 || f == Format::kE8m0 || f == Format::kE4m3;
}

// "128x128" -> (128, 128)
bool parse_dims(std::string_view s, int64_t* r, int64_t* c) {
  const size_t x = s.find('x');
  return x != std::string_view::npos && parse_i64(s.substr(0, x), r) && parse_i64(s.substr(x + 1), c);
}

}  // namespace

QuantSpec ggml_spec(GgmlType type) {
  QuantSpec s;
  s.ggml = type;
  const GgmlBlockInfo* info = ggml_block_info(type);
  s.granularity = Granularity::kGroup;  // the block grid: one block of block_size columns
  s.group = info ? info->block_size : 32;
  s.element = Format::kInt4;
  return s;
}

Status validate(const QuantSpec& s) {
  if (s.ggml != GgmlType::kF32) {
    if (ggml_block_info(s.ggml) == nullptr) {
      return InvalidArgument(fmt::format("gguf block type id {} is not one lowbit writes", static_cast<uint32_t>(s.ggml)));
    }
    return OkStatus();
  }
  const FormatTraits& e = traits(s.element);
  if (s.element == Format::kE8m0) return InvalidArgument("element format: e8m0 is a scale format, not an element format");
  if (s.granularity == Granularity::kGroup && s.group < 1) {
    return InvalidArgument(fmt::format("granularity: group size must be >= 1 (got {})", s.group));
  }
  if (s.granularity == Granularity::kBlock && (s.block_rows < 1 || s.block_cols < 1)) {
    return InvalidArgument(fmt::format("granularity: block dims must be >= 1 (got {}x{})", s.block_rows, s.block_cols));
  }
  if (!is_scale_format(s.scale_format)) {
    return InvalidArgument(fmt::format("scale format: '{}' cannot hold scales (accepted: {})", format_name(s.scale_format), kScaleHelp));
  }
  if (!s.symmetric && e.kind != FormatKind::kInteger) {
    return InvalidArgument(fmt::format("symmetry: asym (zero point) needs an integer element format, not {}", e.name));
  }
  if (s.tensor_scale && s.scale_format != Format::kE4m3) {
    return InvalidArgument("scale format: a second-level fp32 tensor scale is only supported with e4m3 block scales (e4m3*fp32)");
  }
  if (s.scale_rule == ScaleRule::kMxFloor && (e.kind != FormatKind::kFloat || s.scale_format != Format::kE8m0)) {
    return InvalidArgument("scale rule: mxfloor needs a float element format and e8m0 scales (OCP MX)");
  }
  if (s.scale_rule != ScaleRule::kDivide && !s.symmetric) {
    return InvalidArgument("scale rule: pow2/mxfloor/unit scales are symmetric only");
  }
  if (s.scale_rule == ScaleRule::kUnit && (s.tensor_scale || s.clip != ClipRule::kAbsMax)) {
    return InvalidArgument("scale rule: unit (no scaling) takes no clip rule and no tensor scale");
  }
  if (s.clip == ClipRule::kPercentile && !(s.percentile > 0.0 && s.percentile <= 100.0)) {
    return InvalidArgument(fmt::format("clipping: percentile must be in (0, 100] (got {})", s.percentile));
  }
  return OkStatus();
}

Result<QuantSpec> parse_spec(std::string_view text) {
  if (text.starts_with("gguf:")) {
    const GgmlBlockInfo* info = ggml_block_info(text.substr(5));
    if (info == nullptr) {
      return InvalidArgument(fmt::format("quant spec '{}': gguf block type '{}' is not valid (accepted: q4_0 q4_1 q5_0 "
                                         "q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K iq4_nl iq4_xs)", text, text.substr(5)));
    }
    return ggml_spec(info->type);
  }
  const std::vector<std::string_view> parts = split(text, ':');
  auto bad = [&](std::string_view field, std::string_view got, std::string_view accepted) {
    return InvalidArgument(fmt::format("quant spec '{}': {} '{}' is not valid (accepted: {})", text, field, got, accepted));
  };
  QuantSpec s;
  Result<Format> elem = parse_format(parts[0]);
  if (!elem.ok()) return bad("element format", parts[0], "int8, uint8, int4, uint4, nf4, e4m3, e5m2, e2m1, fp16, bf16, fp32");
  s.element = *elem;
  if (parts.size() < 2) return InvalidArgument(fmt::format("quant spec '{}': missing granularity (accepted: {})", text, kGranularityHelp));
  const std::string_view g = parts[1];
  int64_t a = 0, b = 0;
  if (g == "tensor") {
    s.granularity = Granularity::kTensor;
  } else if (g == "row" || g == "channel" || g == "token") {
    s.granularity = Granularity::kRow;
  } else if (g == "col") {
    s.granularity = Granularity::kCol;
  } else if (g.size() > 1 && g[0] == 'g' && parse_i64(g.substr(1), &a)) {
    s.granularity = Granularity::kGroup;
    s.group = a;
    if (a < 1) return bad("group size", g.substr(1), "an integer >= 1");
  } else if (g.starts_with("block") && parse_dims(g.substr(5), &a, &b)) {
    s.granularity = Granularity::kBlock;
    s.block_rows = a;
    s.block_cols = b;
  } else if (g.starts_with("tile") && parse_dims(g.substr(4), &a, &b)) {
    s.granularity = Granularity::kBlock;
    s.block_rows = a;
    s.block_cols = b;
  } else {
    return bad("granularity", g, kGranularityHelp);
  }
  bool scale_given = false, rule_given = false;
  // Each kind of field may be given once: "int4:g128:asym:fp16:sym" contradicts itself.
  std::map<std::string_view, std::string_view> seen;  // kind -> the field that set it
  for (size_t i = 2; i < parts.size(); ++i) {
    const std::string_view p = parts[i];
    const std::string_view kind = p == "sym" || p == "asym"                                   ? "symmetry"
                                  : p == "absmax" || p == "mse" || (p.size() > 1 && p[0] == 'p' && p[1] >= '0' && p[1] <= '9') ? "clip rule"
                                  : p == "pow2" || p == "unit" || p == "divide" || p == "mxfloor" ? "scale rule"
                                  : p == "rne" || p.starts_with("sr")                             ? "rounding"
                                  : p == "sat" || p == "nosat"                                    ? "saturation"
                                                                                                  : "scale format";
    const bool known = kind != "scale format" || p == "e4m3*fp32" || parse_format(p).ok();  // else: error below
    if (const auto [it, fresh] = known ? seen.emplace(kind, p) : std::pair{seen.end(), true}; !fresh) {
      return InvalidArgument(fmt::format("quant spec '{}': {} given twice ('{}' and '{}')", text, kind, it->second, p));
    }
    if (p == "sym") {
      s.symmetric = true;
    } else if (p == "asym") {
      s.symmetric = false;
    } else if (p == "absmax") {
      s.clip = ClipRule::kAbsMax;
    } else if (p == "mse") {
      s.clip = ClipRule::kMse;
    } else if (p.size() > 1 && p[0] == 'p' && (p[1] >= '0' && p[1] <= '9')) {
      char* end = nullptr;
      const std::string num(p.substr(1));
      const double pct = std::strtod(num.c_str(), &end);
      if (*end != '\0' || !(pct > 0.0 && pct <= 100.0)) return bad("percentile", p, "p<percent> with percent in (0, 100], e.g. p99.9");
      s.clip = ClipRule::kPercentile;
      s.percentile = pct;
    } else if (p == "pow2") {
      s.scale_rule = ScaleRule::kPow2Ceil;
      rule_given = true;
    } else if (p == "unit") {
      s.scale_rule = ScaleRule::kUnit;
      rule_given = true;
    } else if (p == "divide") {
      s.scale_rule = ScaleRule::kDivide;
      rule_given = true;
    } else if (p == "mxfloor") {
      s.scale_rule = ScaleRule::kMxFloor;
      rule_given = true;
    } else if (p == "rne") {
      s.rounding = Rounding::kNearestEven;
    } else if (p.starts_with("sr")) {
      uint64_t seed = 0;
      if (p.size() > 2 && !parse_u64(p.substr(2), &seed)) return bad("rounding", p, "rne, sr, sr<seed>");
      s.rounding = Rounding::kStochastic;
      s.seed = seed;
    } else if (p == "sat") {
      s.saturate = true;
    } else if (p == "nosat") {
      s.saturate = false;
    } else if (p == "e4m3*fp32") {
      s.scale_format = Format::kE4m3;
      s.tensor_scale = true;
      scale_given = true;
    } else if (Result<Format> sf = parse_format(p); sf.ok()) {
      if (!is_scale_format(*sf)) return bad("scale format", p, kScaleHelp);
      s.scale_format = *sf;
      scale_given = true;
    } else {
      return bad("field", p, std::string(kOptionHelp) + "; scale formats " + std::string(kScaleHelp));
    }
  }
  // e8m0 scales of float elements follow the OCP MX rule unless told otherwise.
  if (scale_given && s.scale_format == Format::kE8m0 && !rule_given && traits(s.element).kind == FormatKind::kFloat) {
    s.scale_rule = ScaleRule::kMxFloor;
  }
  if (Status st = validate(s); !st.ok()) return InvalidArgument(fmt::format("quant spec '{}': {}", text, st.message()));
  return s;
}

std::string to_string(const QuantSpec& s) {
  if (s.ggml != GgmlType::kF32) {
    const GgmlBlockInfo* info = ggml_block_info(s.ggml);
    return "gguf:" + std::string(info ? info->name : "unknown");
  }
  std::string out(format_name(s.element));
  switch (s.granularity) {
    case Granularity::kTensor: out += ":tensor"; break;
    case Granularity::kRow: out += ":row"; break;
    case Granularity::kCol: out += ":col"; break;
    case Granularity::kGroup: out += fmt::format(":g{}", s.group); break;
    case Granularity::kBlock: out += fmt::format(":block{}x{}", s.block_rows, s.block_cols); break;
  }
  out += s.symmetric ? ":sym" : ":asym";
  out += s.tensor_scale ? std::string(":e4m3*fp32") : ":" + std::string(format_name(s.scale_format));
  const ScaleRule implied = s.scale_format == Format::kE8m0 && traits(s.element).kind == FormatKind::kFloat
                                ? ScaleRule::kMxFloor
                                : ScaleRule::kDivide;
  if (s.scale_rule != implied) {
    switch (s.scale_rule) {
      case ScaleRule::kPow2Ceil: out += ":pow2"; break;
      case ScaleRule::kMxFloor: out += ":mxfloor"; break;
      case ScaleRule::kUnit: out += ":unit"; break;
      case ScaleRule::kDivide: out += ":divide"; break;
    }
  }
  if (s.clip == ClipRule::kPercentile) out += fmt::format(":p{}", s.percentile);
  if (s.clip == ClipRule::kMse) out += ":mse";
  if (s.rounding == Rounding::kStochastic) out += fmt::format(":sr{}", s.seed);
  if (!s.saturate) out += ":nosat";
  return out;
}

size_t percentile_index(double p, size_t n) {
  if (n == 0) return 0;
  double q = p / 100.0 * static_cast<double>(n);
  const double nearest = std::round(q);
  if (std::fabs(q - nearest) <= 1e-12 * std::max(1.0, q)) q = nearest;
  const size_t rank = static_cast<size_t>(std::ceil(q));
  return std::clamp<size_t>(rank, 1, n) - 1;
}

double element_qmax(const QuantSpec& s) { return traits(s.element).max_finite; }

BlockGrid block_grid(const QuantSpec& s, int64_t rows, int64_t cols) {
  BlockGrid g;
  g.rows = rows;
  g.cols = cols;
  switch (s.granularity) {
    case Granularity::kTensor: g.block_rows = rows; g.block_cols = cols; break;
    case Granularity::kRow: g.block_rows = 1; g.block_cols = cols; break;
    case Granularity::kCol: g.block_rows = rows; g.block_cols = 1; break;
    case Granularity::kGroup: g.block_rows = 1; g.block_cols = s.group; break;
    case Granularity::kBlock: g.block_rows = s.block_rows; g.block_cols = s.block_cols; break;
  }
  g.block_rows = std::max<int64_t>(1, std::min(g.block_rows, std::max<int64_t>(rows, 1)));
  g.block_cols = std::max<int64_t>(1, std::min(g.block_cols, std::max<int64_t>(cols, 1)));
  g.grid_rows = rows == 0 ? 0 : (rows + g.block_rows - 1) / g.block_rows;
  g.grid_cols = cols == 0 ? 0 : (cols + g.block_cols - 1) / g.block_cols;
  return g;
}

double bits_per_weight(const QuantSpec& s, int64_t rows, int64_t cols) {
  if (s.ggml != GgmlType::kF32) {
    const GgmlBlockInfo* info = ggml_block_info(s.ggml);
    return info ? info->bpw : 0.0;
  }
  const BlockGrid g = block_grid(s, rows, cols);
  const int64_t row_bytes = static_cast<int64_t>(packed_bytes(s.element, cols));
  int64_t bytes = rows * row_bytes;
  bytes += static_cast<int64_t>(packed_bytes(s.scale_format, static_cast<size_t>(g.num_blocks())));
  if (!s.symmetric) bytes += static_cast<int64_t>(packed_bytes(s.element, static_cast<size_t>(g.num_blocks())));
  if (s.tensor_scale) bytes += 4;
  return rows * cols != 0 ? 8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols) : 0.0;
}

int64_t QuantizedTensor::storage_bytes() const {
  int64_t bytes = static_cast<int64_t>(codes.size() + scale_codes.size());
  if (!spec.symmetric) bytes += static_cast<int64_t>(packed_bytes(spec.element, zero_points.size()));
  if (spec.tensor_scale) bytes += 4;
  return bytes;
}

int32_t QuantizedTensor::code_at(int64_t r, int64_t c) const {
  const int bits = traits(spec.element).bits;
  const uint32_t code = load_code(spec.element, codes.data() + r * row_bytes, static_cast<size_t>(c));
  if (traits(spec.element).kind == FormatKind::kInteger && traits(spec.element).is_signed) {
    const int shift = 32 - bits;
    return static_cast<int32_t>(code << shift) >> shift;
  }
  return static_cast<int32_t>(code);
}

}  // namespace lowbit
