// The quantized KV cache (include/lowbit/kv_cache.h): spec parsing, the per-token and per-channel
// quantizers (fp16 scales rounded up so no value clips), the fp32 window, and attention that reads
// the codes through the kv kernels. docs/kv_cache.md has the layout and the window rules.
#include "lowbit/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/formats.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace {

constexpr float kInt8Max = 127.0f;      // symmetric int8, -128 unused
constexpr float kInt4Max = 7.0f;        // symmetric int4, stored as u = q + 8
constexpr float kUint4Max = 15.0f;      // affine 4-bit
constexpr float kE4m3Max = 448.0f;      // OCP OFP8 E4M3 largest finite
constexpr float kE5m2Max = 57344.0f;    // OCP OFP8 E5M2 largest finite
constexpr uint16_t kFp16MaxCode = 0x7BFF;  // 65504

// (name, text, description) of the named specs.
constexpr KvNamedSpec kNamed[] = {
    {"kv-int8", "int8:token", "int8 per token per head, fp16 scale (8.25 bits at head dim 64)"},
    {"kv-int8-g32", "int8:g32", "int8 in groups of 32 along the head dim, fp16 scale: llama.cpp's q8_0 cache layout"},
    {"kv-int4-g32", "int4:g32:asym", "4-bit affine groups of 32, fp16 scale + min: llama.cpp's q4_1 cache layout"},
    {"kv-int4-g32-sym", "int4:g32", "int4 symmetric groups of 32, fp16 scale (q4_0-like, codes -7..7)"},
    {"kv-int4-g64", "int4:g64:asym", "4-bit affine groups of 64, fp16 scale + min (4.5 bits)"},
    {"kv-int4-kivi", "k=int4:col:asym,v=int4:token:asym,block=64",
     "KIVI: keys 4-bit per channel over blocks of 64 tokens (the open block fp32), values 4-bit per token"},
    {"kv-e4m3", "e4m3:token", "e4m3 per token per head, fp16 scale (amax / 448)"},
    {"kv-e5m2", "e5m2:token", "e5m2 per token per head, fp16 scale (amax / 57344)"},
    {"kv-e4m3-tensor", "e4m3:tensor", "e4m3 plain cast, unit scale (vLLM's fp8 cache without calibration)"},
    {"kv-e5m2-tensor", "e5m2:tensor", "e5m2 plain cast, unit scale"},
};

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

float f16(uint16_t c) { return kv_half_to_float(c); }

// The smallest fp16 >= r (r >= 0), capped at the largest finite.
uint16_t f16_up(float r) {
  if (!(r < 65504.0f)) return kFp16MaxCode;
  uint16_t c = static_cast<uint16_t>(encode(Format::kFp16, r));
  if (f16(c) < r) ++c;
  return c;
}
// The largest fp16 <= r (finite r).
uint16_t f16_down(float r) {
  if (r > 65504.0f) return kFp16MaxCode;
  if (r < -65504.0f) return static_cast<uint16_t>(0x8000u | kFp16MaxCode);
  uint16_t c = static_cast<uint16_t>(encode(Format::kFp16, r));
  if (f16(c) > r) c = (c & 0x8000u) ? static_cast<uint16_t>(c + 1) : (c == 0 ? static_cast<uint16_t>(0x8001u) : static_cast<uint16_t>(c - 1));
  return c;
}

float rne(float x) { return std::nearbyint(x); }

Format fp8_format(KvCode c) { return c == KvCode::kE4m3 ? Format::kE4m3 : Format::kE5m2; }
bool is_fp8(KvCode c) { return c == KvCode::kE4m3 || c == KvCode::kE5m2; }

// Quantizes n values x[i·xs] of one scale block: codes (raw code per element: int8 byte, nibble u,
// fp8 byte), fp16 scale and min (affine) into *scale / *min (unit axis: untouched).
void quantize_set(KvCode code, bool unit, const float* x, int64_t n, int64_t xs, uint8_t* codes, uint16_t* scale,
                  uint16_t* min) {
  if (unit) {
    for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(encode(fp8_format(code), x[i * xs], {.saturate = true}));
    return;
  }
  if (code == KvCode::kUint4) {
    float lo = x[0], hi = x[0];
    for (int64_t i = 1; i < n; ++i) {
      lo = std::min(lo, x[i * xs]);
      hi = std::max(hi, x[i * xs]);
    }
    const uint16_t mc = f16_down(lo);
    const float m = f16(mc);
    const uint16_t sc = f16_up((hi - m) / kUint4Max);
    const float s = f16(sc);
    *scale = sc;
    *min = mc;
    for (int64_t i = 0; i < n; ++i) {
      codes[i] = s > 0.0f ? static_cast<uint8_t>(std::clamp(rne((x[i * xs] - m) / s), 0.0f, kUint4Max)) : 0;
    }
    return;
  }
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i * xs]));
  const float qmax = code == KvCode::kInt8 ? kInt8Max : code == KvCode::kInt4 ? kInt4Max : code == KvCode::kE4m3 ? kE4m3Max : kE5m2Max;
  const uint16_t sc = f16_up(amax / qmax);
  const float s = f16(sc);
  *scale = sc;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i * xs];
    if (s == 0.0f) {
      codes[i] = code == KvCode::kInt4 ? 8 : 0;
    } else if (code == KvCode::kInt8) {
      codes[i] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(rne(v / s), -kInt8Max, kInt8Max)));
    } else if (code == KvCode::kInt4) {
      codes[i] = static_cast<uint8_t>(std::clamp(rne(v / s), -kInt4Max, kInt4Max) + 8.0f);
    } else {
      codes[i] = static_cast<uint8_t>(encode(fp8_format(code), v / s, {.saturate = true}));
    }
  }
}

void put_code(uint8_t* row, int64_t j, uint8_t c, int bits) {
  if (bits == 8) {
    row[j] = c;
  } else {
    const int sh = 4 * static_cast<int>(j % 2);
    row[j / 2] = static_cast<uint8_t>((row[j / 2] & ~(0xF << sh)) | ((c & 0xF) << sh));
  }
}

float code_value(KvCode c, const uint8_t* row, int64_t j) {
  switch (c) {
    case KvCode::kInt8: return static_cast<float>(static_cast<int8_t>(row[j]));
    case KvCode::kInt4: return static_cast<float>(static_cast<int>((row[j / 2] >> (4 * (j % 2))) & 0xF) - 8);
    case KvCode::kUint4: return static_cast<float>((row[j / 2] >> (4 * (j % 2))) & 0xF);
    case KvCode::kE4m3: return decode(Format::kE4m3, row[j]);
    case KvCode::kE5m2: return decode(Format::kE5m2, row[j]);
  }
  return 0.0f;
}

Result<KvSideSpec> side_from(std::string_view text, bool is_key, std::string_view where) {
  Result<QuantSpec> q = parse_spec(text);
  if (!q.ok()) return InvalidArgument(fmt::format("kv spec {}: {}", where, q.status().message()));
  KvSideSpec s;
  s.quant = *q;
  const QuantSpec& p = *q;
  switch (p.element) {
    case Format::kInt8:
      if (!p.symmetric) return InvalidArgument(fmt::format("kv spec {}: int8 cache codes are symmetric (drop :asym)", where));
      s.code = KvCode::kInt8;
      break;
    case Format::kInt4: s.code = p.symmetric ? KvCode::kInt4 : KvCode::kUint4; break;
    case Format::kUint4: s.code = KvCode::kUint4; break;
    case Format::kE4m3: s.code = KvCode::kE4m3; break;
    case Format::kE5m2: s.code = KvCode::kE5m2; break;
    default:
      return InvalidArgument(fmt::format("kv spec {}: element {} is not a cache format (int8, int4, uint4, e4m3, e5m2)", where,
                                         format_name(p.element)));
  }
  if (p.scale_format != Format::kFp32 && p.scale_format != Format::kFp16) {
    return InvalidArgument(fmt::format("kv spec {}: cache scales are fp16; scale format {} is not supported", where,
                                       format_name(p.scale_format)));
  }
  switch (p.granularity) {
    case Granularity::kRow: s.axis = KvAxis::kToken; break;
    case Granularity::kGroup:
      s.axis = KvAxis::kToken;
      s.group = p.group;
      break;
    case Granularity::kCol:
      if (!is_key) return InvalidArgument(fmt::format("kv spec {}: values are quantized per token (token or g<G>), not per channel", where));
      s.axis = KvAxis::kChannel;
      break;
    case Granularity::kTensor:
      if (!is_fp8(s.code)) return InvalidArgument(fmt::format("kv spec {}: per-tensor (unit scale) caches are fp8 only (e4m3, e5m2)", where));
      s.axis = KvAxis::kTensor;
      break;
    default:
      return InvalidArgument(fmt::format("kv spec {}: granularity must be token, g<G>, col (keys) or tensor (fp8)", where));
  }
  return s;
}

std::string side_text(const KvSideSpec& s) {
  std::string g = s.axis == KvAxis::kChannel ? "col" : s.axis == KvAxis::kTensor ? "tensor" : s.group ? fmt::format("g{}", s.group) : "token";
  std::string e = std::string(kv_code_name(s.code));
  if (s.code == KvCode::kUint4) return fmt::format("int4:{}:asym", g);
  return fmt::format("{}:{}", e, g);
}

// The kernel group of a token-axis side over rows of `width` codes.
int64_t kernel_group(const KvSideSpec& s, int hs, int64_t width) {
  return s.axis != KvAxis::kToken || s.group == 0 || s.group == hs ? width : s.group;
}

struct SideSizes {
  int64_t row_bytes, groups, params, window;
};
SideSizes side_sizes(const KvSpec& spec, const KvSideSpec& s, bool is_key, int hs, int kvh, int max_seq) {
  const int64_t width = round_up(hs, 8);
  SideSizes z{};
  z.row_bytes = kv_code_bits(s.code) == 8 ? width : width / 2;
  const int64_t per_param = s.affine() ? 2 : 1;
  if (s.axis == KvAxis::kToken) {
    z.groups = width / kernel_group(s, hs, width);
    z.params = static_cast<int64_t>(max_seq) * kvh * z.groups * per_param;
  } else if (s.axis == KvAxis::kChannel) {
    z.params = static_cast<int64_t>(max_seq / spec.block) * kvh * width * per_param;
  }
  z.window = is_key && s.axis == KvAxis::kChannel ? std::max(spec.residual, spec.block) : spec.residual;
  z.window = std::min<int64_t>(z.window, max_seq);
  return z;
}

}  // namespace

std::span<const KvNamedSpec> named_kv_specs() { return kNamed; }

Result<KvSpec> parse_kv_spec(std::string_view text) {
  std::string body(text);
  std::string name(text);
  for (const KvNamedSpec& n : kNamed) {
    if (text == n.name) body = std::string(n.text);
  }
  if (body.rfind("kv-", 0) == 0) {
    std::string names;
    for (const KvNamedSpec& n : kNamed) names += (names.empty() ? "" : ", ") + std::string(n.name);
    return InvalidArgument(fmt::format("kv spec {}: unknown name (known: {})", text, names));
  }
  KvSpec spec;
  spec.name = name;
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= body.size()) {
    const size_t comma = body.find(',', start);
    parts.push_back(body.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  bool have_k = false, have_v = false;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    auto int_opt = [&](std::string_view key, int lo, int* out) -> Status {
      const std::string v = p.substr(key.size() + 1);
      char* end = nullptr;
      const long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || x < lo || x > (1 << 24)) {
        return InvalidArgument(fmt::format("kv spec {}: {}={} is not an integer >= {}", text, key, v, lo));
      }
      *out = static_cast<int>(x);
      return OkStatus();
    };
    if (p.rfind("k=", 0) == 0) {
      LOWBIT_ASSIGN_OR_RETURN(spec.k, side_from(p.substr(2), true, fmt::format("{} (keys)", text)));
      have_k = true;
    } else if (p.rfind("v=", 0) == 0) {
      LOWBIT_ASSIGN_OR_RETURN(spec.v, side_from(p.substr(2), false, fmt::format("{} (values)", text)));
      have_v = true;
    } else if (p.rfind("residual=", 0) == 0) {
      LOWBIT_RETURN_IF_ERROR(int_opt("residual", 0, &spec.residual));
    } else if (p.rfind("block=", 0) == 0) {
      LOWBIT_RETURN_IF_ERROR(int_opt("block", 1, &spec.block));
    } else if (p == "prerope") {
      spec.pre_rope = true;
    } else if (i == 0 && p.find('=') == std::string::npos) {
      LOWBIT_ASSIGN_OR_RETURN(spec.k, side_from(p, true, text));
      LOWBIT_ASSIGN_OR_RETURN(spec.v, side_from(p, false, text));
      have_k = have_v = true;
    } else {
      return InvalidArgument(fmt::format("kv spec {}: unknown part '{}' (expected k=SPEC, v=SPEC, residual=R, block=B, prerope)", text, p));
    }
  }
  if (!have_k || !have_v) return InvalidArgument(fmt::format("kv spec {}: needs both keys and values (k=SPEC,v=SPEC or one SPEC)", text));
  return spec;
}

std::string to_string(const KvSpec& s) {
  std::string out = fmt::format("k={},v={}", side_text(s.k), side_text(s.v));
  if (s.residual) out += fmt::format(",residual={}", s.residual);
  if (s.k.axis == KvAxis::kChannel) out += fmt::format(",block={}", s.block);
  if (s.pre_rope) out += ",prerope";
  return out;
}

Status validate_kv_spec(const KvSpec& spec, int head_dim) {
  if (head_dim < 1 || head_dim > kKvMaxWidth) {
    return InvalidArgument(fmt::format("kv spec {}: head dim {} outside the cache kernels' 1..{}", spec.name, head_dim, kKvMaxWidth));
  }
  for (const KvSideSpec* s : {&spec.k, &spec.v}) {
    if (s->axis != KvAxis::kToken || s->group == 0) continue;
    if (head_dim % s->group != 0) {
      return InvalidArgument(fmt::format("kv spec {}: group {} does not divide head dim {}", spec.name, s->group, head_dim));
    }
    if (s->group % 8 != 0 && s->group != head_dim) {
      return InvalidArgument(fmt::format("kv spec {}: group {} must be a multiple of 8 (or the head dim {})", spec.name, s->group, head_dim));
    }
  }
  if (spec.pre_rope && head_dim % 2 != 0) {
    return InvalidArgument(fmt::format("kv spec {}: prerope needs an even head dim (RoPE pairs), not {}", spec.name, head_dim));
  }
  return OkStatus();
}

double kv_bytes_per_token(const KvSpec& spec, const LlamaConfig& c, int max_seq) {
  const int hs = c.head_dim();
  double total = 0.0;
  for (bool key : {true, false}) {
    const KvSideSpec& s = key ? spec.k : spec.v;
    const SideSizes z = side_sizes(spec, s, key, hs, c.n_kv_heads, max_seq);
    total += static_cast<double>(max_seq) * c.n_kv_heads * z.row_bytes + 2.0 * z.params + 4.0 * z.window * c.kv_dim();
  }
  return total * c.n_layers / max_seq;
}

double kv_bits_per_value(const KvSpec& spec, int head_dim) {
  double bits = 0.0;
  for (const KvSideSpec* s : {&spec.k, &spec.v}) {
    double b = kv_code_bits(s->code);
    const double params = s->affine() ? 32.0 : 16.0;
    if (s->axis == KvAxis::kToken) b += params / static_cast<double>(s->group ? s->group : head_dim);
    if (s->axis == KvAxis::kChannel) b += params / static_cast<double>(spec.block);
    bits += b / 2.0;
  }
  return bits;
}

std::string llama_cpp_cache_type(const KvSideSpec& s, int head_dim) {
  if (s.axis != KvAxis::kToken) return "";
  const int64_t g = s.group ? s.group : head_dim;
  if (g != 32) return "";
  switch (s.code) {
    case KvCode::kInt8: return "q8_0";
    case KvCode::kInt4: return "q4_0";
    case KvCode::kUint4: return "q4_1";
    default: return "";
  }
}

Result<KvCache> KvCache::create(const KvSpec& spec, const LlamaConfig& c, int max_seq) {
  LOWBIT_RETURN_IF_ERROR(validate_kv_spec(spec, c.head_dim()));
  if (max_seq < 1) return InvalidArgument("kv cache: max_seq must be >= 1");
  KvCache kc;
  kc.spec_ = spec;
  kc.c_ = c;
  kc.max_seq_ = max_seq;
  kc.hs_ = c.head_dim();
  kc.width_ = static_cast<int>(round_up(kc.hs_, 8));
  kc.kvh_ = c.n_kv_heads;
  kc.blocks_ = max_seq / spec.block;
  for (bool key : {true, false}) {
    const KvSideSpec& s = key ? spec.k : spec.v;
    Side& d = key ? kc.k_ : kc.v_;
    const SideSizes z = side_sizes(spec, s, key, kc.hs_, kc.kvh_, max_seq);
    d.row_bytes = z.row_bytes;
    d.groups = z.groups;
    d.window = static_cast<int>(z.window);
    d.codes.assign(static_cast<size_t>(c.n_layers) * max_seq * kc.kvh_ * z.row_bytes, 0);
    const int64_t per_param = s.affine() ? 2 : 1;
    d.scale.assign(static_cast<size_t>(c.n_layers * (z.params / per_param)), 0);
    if (s.affine()) d.min.assign(d.scale.size(), 0);
    d.ring.assign(static_cast<size_t>(c.n_layers) * z.window * c.kv_dim(), 0.0f);
  }
  if (spec.pre_rope) {
    const int half = kc.hs_ / 2;
    kc.rope_cos_.resize(static_cast<size_t>(max_seq) * half);
    kc.rope_sin_.resize(kc.rope_cos_.size());
    for (int p = 0; p < max_seq; ++p) {
      for (int i = 0; i < half; ++i) {
        // layer_forward's RoPE, term for term (llama.cc).
        const float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(kc.hs_));
        const float val = static_cast<float>(p) * freq;
        kc.rope_cos_[static_cast<size_t>(p) * half + i] = std::cos(val);
        kc.rope_sin_[static_cast<size_t>(p) * half + i] = std::sin(val);
      }
    }
  }
  return kc;
}

int64_t KvCache::buffer_bytes() const {
  int64_t b = 0;
  for (const Side* d : {&k_, &v_}) {
    b += static_cast<int64_t>(d->codes.size() + 2 * d->scale.size() + 2 * d->min.size() + 4 * d->ring.size());
  }
  return b;
}

bool KvCache::key_quantized(int s, int p) const {
  int end = spec_.residual > 0 ? std::max(0, p - spec_.residual + 1) : p + 1;
  if (spec_.k.axis == KvAxis::kChannel) end = std::min(end, (p + 1) / spec_.block * spec_.block);
  return s < end;
}

bool KvCache::value_quantized(int s, int p) const {
  return s < (spec_.residual > 0 ? std::max(0, p - spec_.residual + 1) : p + 1);
}

void KvCache::quantize_token_rows(const KvSideSpec& s, Side& d, int l, int t, const float* row) {
  const int bits = kv_code_bits(s.code);
  const int64_t g = kernel_group(s, hs_, width_);
  uint8_t codes[kKvMaxWidth];
  for (int h = 0; h < kvh_; ++h) {
    const float* x = row + static_cast<int64_t>(h) * hs_;
    const int64_t slot = (static_cast<int64_t>(l) * max_seq_ + t) * kvh_ + h;
    uint8_t* out = &d.codes[static_cast<size_t>(slot * d.row_bytes)];
    std::memset(out, 0, static_cast<size_t>(d.row_bytes));
    for (int64_t gi = 0; gi * g < hs_; ++gi) {
      const int64_t j0 = gi * g, n = std::min<int64_t>(g, hs_ - j0);
      const int64_t pi = slot * d.groups + gi;
      uint16_t* sc = d.scale.empty() ? nullptr : &d.scale[static_cast<size_t>(pi)];
      uint16_t* mn = d.min.empty() ? nullptr : &d.min[static_cast<size_t>(pi)];
      quantize_set(s.code, s.axis == KvAxis::kTensor, x + j0, n, 1, codes, sc, mn);
      for (int64_t j = 0; j < n; ++j) put_code(out, j0 + j, codes[j], bits);
    }
  }
}

void KvCache::quantize_key_block(int l, int b, const float* rows) {
  const int kv_dim = c_.kv_dim(), B = spec_.block;
  const int bits = kv_code_bits(spec_.k.code);
  std::vector<uint8_t> codes(static_cast<size_t>(B));
  for (int h = 0; h < kvh_; ++h) {
    for (int j = 0; j < hs_; ++j) {
      const int64_t pi = ((static_cast<int64_t>(l) * blocks_ + b) * kvh_ + h) * width_ + j;
      quantize_set(spec_.k.code, false, rows + h * hs_ + j, B, kv_dim, codes.data(), &k_.scale[static_cast<size_t>(pi)],
                   k_.min.empty() ? nullptr : &k_.min[static_cast<size_t>(pi)]);
      for (int t = 0; t < B; ++t) {
        const int64_t slot = (static_cast<int64_t>(l) * max_seq_ + b * B + t) * kvh_ + h;
        put_code(&k_.codes[static_cast<size_t>(slot * k_.row_bytes)], j, codes[static_cast<size_t>(t)], bits);
      }
    }
  }
}

const float* KvCache::ring_row(const Side& d, int l, int s) const {
  return &d.ring[(static_cast<size_t>(l) * d.window + static_cast<size_t>(s % d.window)) * c_.kv_dim()];
}

void KvCache::write(int l, int pos, int64_t n, const float* k_rope, const float* k_raw, const float* v) {
  const int kv_dim = c_.kv_dim();
  const float* kq = spec_.pre_rope ? k_raw : k_rope;
  for (int64_t t = 0; t < n; ++t) {
    const int s = pos + static_cast<int>(t);
    if (spec_.k.axis != KvAxis::kChannel) quantize_token_rows(spec_.k, k_, l, s, kq + t * kv_dim);
    quantize_token_rows(spec_.v, v_, l, s, v + t * kv_dim);
  }
  if (spec_.k.axis == KvAxis::kChannel) {
    // Blocks completed inside this chunk; their earlier rows come from the window (pre-RoPE specs
    // keep raw keys there for this, rotated when read as fp32).
    const int B = spec_.block;
    std::vector<float> rows(static_cast<size_t>(B) * kv_dim);  // (block, kv_dim)
    for (int b = pos / B; (b + 1) * B <= pos + n; ++b) {
      if ((b + 1) * B - 1 < pos) continue;
      for (int t = 0; t < B; ++t) {
        const int s = b * B + t;
        const float* src = s >= pos ? kq + static_cast<int64_t>(s - pos) * kv_dim : ring_row(k_, l, s);
        std::memcpy(&rows[static_cast<size_t>(t) * kv_dim], src, sizeof(float) * kv_dim);
      }
      quantize_key_block(l, b, rows.data());
    }
  }
}

KvRows KvCache::rows(const KvSideSpec& s, const Side& d, int l, int h, int t0) const {
  KvRows r;
  r.code = s.code;
  r.stride = kvh_ * d.row_bytes;
  r.codes = &d.codes[static_cast<size_t>(((static_cast<int64_t>(l) * max_seq_ + t0) * kvh_ + h) * d.row_bytes)];
  r.width = width_;
  r.group = kernel_group(s, hs_, width_);
  if (s.axis == KvAxis::kToken) {
    r.pstride = kvh_ * d.groups;
    const size_t off = static_cast<size_t>(((static_cast<int64_t>(l) * max_seq_ + t0) * kvh_ + h) * d.groups);
    r.scale = &d.scale[off];
    if (!d.min.empty()) r.min = &d.min[off];
  }
  return r;
}

void KvCache::dequant_row(const KvSideSpec& s, const Side& d, int l, int t, int h, float* out) const {
  const uint8_t* row = &d.codes[static_cast<size_t>(((static_cast<int64_t>(l) * max_seq_ + t) * kvh_ + h) * d.row_bytes)];
  for (int j = 0; j < hs_; ++j) {
    float sc = 1.0f, mn = 0.0f;
    if (s.axis == KvAxis::kToken) {
      const size_t pi = static_cast<size_t>(((static_cast<int64_t>(l) * max_seq_ + t) * kvh_ + h) * d.groups + j / kernel_group(s, hs_, width_));
      sc = f16(d.scale[pi]);
      if (!d.min.empty()) mn = f16(d.min[pi]);
    } else if (s.axis == KvAxis::kChannel) {
      const size_t pi = static_cast<size_t>(((static_cast<int64_t>(l) * blocks_ + t / spec_.block) * kvh_ + h) * width_ + j);
      sc = f16(d.scale[pi]);
      if (!d.min.empty()) mn = f16(d.min[pi]);
    }
    out[j] = code_value(s.code, row, j) * sc + mn;
  }
}

void KvCache::read_row(int l, int s, int p, const float* k_rope_fp32, const float* v_fp32, float* k, float* v) const {
  for (int h = 0; h < kvh_; ++h) {
    float* kh = k + h * hs_;
    if (key_quantized(s, p)) {
      dequant_row(spec_.k, k_, l, s, h, kh);
      if (spec_.pre_rope) {
        for (int i = 0; i < hs_ / 2; ++i) {
          const float c = rope_cos_[static_cast<size_t>(s) * (hs_ / 2) + i], sn = rope_sin_[static_cast<size_t>(s) * (hs_ / 2) + i];
          const float a = kh[2 * i], b = kh[2 * i + 1];
          kh[2 * i] = a * c - b * sn;
          kh[2 * i + 1] = a * sn + b * c;
        }
      }
    } else {
      std::memcpy(kh, k_rope_fp32 + h * hs_, sizeof(float) * hs_);
    }
    if (value_quantized(s, p)) {
      dequant_row(spec_.v, v_, l, s, h, v + h * hs_);
    } else {
      std::memcpy(v + h * hs_, v_fp32 + h * hs_, sizeof(float) * hs_);
    }
  }
}

void KvCache::attend(int l, int pos, int64_t n, const float* q, const float* k_rope, const float* k_raw, const float* v,
                     float* out) {
  const int dim = c_.dim, kv_dim = c_.kv_dim(), hs = hs_, W = width_;
  const int kv_mul = c_.n_heads / c_.n_kv_heads, half = hs / 2, B = spec_.block;
  const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(hs));
  const bool channel = spec_.k.axis == KvAxis::kChannel;
  const int64_t kgroup = kernel_group(spec_.k, hs, W);
  // Fp32 rows of the window: the chunk's own, else the ring. Keys in the ring are post-RoPE,
  // except for pre-RoPE per-channel specs, whose ring holds raw keys (the block quantizer reads them).
  const bool ring_raw = spec_.pre_rope && channel;
  parallel_for(0, n * c_.n_heads, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> att(static_cast<size_t>(max_seq_));
    float x[kKvMaxWidth], xs[kKvMaxWidth], xsum[kKvMaxWidth / 8], acc[kKvMaxWidth], kr[kKvMaxWidth];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / c_.n_heads;
      const int h = static_cast<int>(i % c_.n_heads), kh = h / kv_mul;
      const int p = pos + static_cast<int>(t);
      const float* qh = q + t * dim + h * hs;
      int ke = spec_.residual > 0 ? std::max(0, p - spec_.residual + 1) : p + 1;
      if (channel) ke = std::min(ke, (p + 1) / B * B);
      const int ve = spec_.residual > 0 ? std::max(0, p - spec_.residual + 1) : p + 1;
      std::fill(x, x + W, 0.0f);
      std::memcpy(x, qh, sizeof(float) * hs);
      auto sums = [&](const float* xv) {
        for (int64_t g = 0; g < W / kgroup; ++g) {
          float sm = 0.0f;
          for (int64_t j = g * kgroup; j < (g + 1) * kgroup; ++j) sm += xv[j];
          xsum[g] = sm;
        }
      };
      // Keys from the codes: scores for s < ke.
      if (!spec_.pre_rope && !channel) {
        if (spec_.k.affine()) sums(x);
        kv_scores(rows(spec_.k, k_, l, kh, 0), x, xsum, ke, att.data());
      } else {
        const int step = spec_.pre_rope ? 1 : B;
        for (int s0 = 0; s0 < ke; s0 += step) {
          const int s1 = std::min(ke, s0 + step);
          const float* xq = x;
          if (spec_.pre_rope) {  // q · R_s k = (R_sᵀ q) · k
            const size_t r = static_cast<size_t>(s0) * half;
            for (int m = 0; m < half; ++m) {
              const float a = qh[2 * m], b = qh[2 * m + 1], c = rope_cos_[r + m], sn = rope_sin_[r + m];
              kr[2 * m] = a * c + b * sn;
              kr[2 * m + 1] = b * c - a * sn;
            }
            std::fill(kr + hs, kr + W, 0.0f);
            xq = kr;
          }
          float bias = 0.0f;
          KvRows kr_rows = rows(spec_.k, k_, l, kh, s0);
          if (channel) {  // per-channel scales fold into the query; minimums into one constant per block
            const size_t pi = static_cast<size_t>(((static_cast<int64_t>(l) * blocks_ + s0 / B) * kvh_ + kh) * W);
            for (int j = 0; j < W; ++j) xs[j] = j < hs ? xq[j] * f16(k_.scale[pi + j]) : 0.0f;
            if (!k_.min.empty()) {
              for (int j = 0; j < hs; ++j) bias = std::fma(xq[j], f16(k_.min[pi + j]), bias);
            }
            kr_rows.min = nullptr;
            xq = xs;
          } else if (spec_.k.affine()) {
            sums(xq);
          }
          kv_scores(kr_rows, xq, xsum, s1 - s0, att.data() + s0);
          if (bias != 0.0f) {
            for (int s = s0; s < s1; ++s) att[static_cast<size_t>(s)] += bias;
          }
        }
      }
      // Keys in fp32 (window, open block): s in ke..p.
      for (int s = ke; s <= p; ++s) {
        // Pre-RoPE per-channel specs read raw keys rotated here (ring and chunk alike, so a
        // prefill and a token-by-token decode compute the same bits).
        const float* kchunk = ring_raw ? k_raw : k_rope;
        const float* ks = s >= pos ? kchunk + static_cast<int64_t>(s - pos) * kv_dim + kh * hs : ring_row(k_, l, s) + kh * hs;
        float score = 0.0f;
        if (ring_raw) {
          for (int m = 0; m < half; ++m) {
            const float c = rope_cos_[static_cast<size_t>(s) * half + m], sn = rope_sin_[static_cast<size_t>(s) * half + m];
            score += qh[2 * m] * (ks[2 * m] * c - ks[2 * m + 1] * sn) + qh[2 * m + 1] * (ks[2 * m] * sn + ks[2 * m + 1] * c);
          }
        } else {
          for (int j = 0; j < hs; ++j) score += qh[j] * ks[j];
        }
        att[static_cast<size_t>(s)] = score;
      }
      float mx = -INFINITY;
      for (int s = 0; s <= p; ++s) mx = std::max(mx, att[static_cast<size_t>(s)] *= inv_sqrt);
      float sum = 0.0f;
      for (int s = 0; s <= p; ++s) sum += (att[static_cast<size_t>(s)] = std::exp(att[static_cast<size_t>(s)] - mx));
      for (int s = 0; s <= p; ++s) att[static_cast<size_t>(s)] /= sum;
      // Values: codes for s < ve, fp32 for the window.
      std::fill(acc, acc + W, 0.0f);
      kv_accumulate(rows(spec_.v, v_, l, kh, 0), att.data(), ve, acc);
      for (int s = ve; s <= p; ++s) {
        const float* vs = s >= pos ? v + static_cast<int64_t>(s - pos) * kv_dim + kh * hs : ring_row(v_, l, s) + kh * hs;
        const float a = att[static_cast<size_t>(s)];
        for (int j = 0; j < hs; ++j) acc[j] += a * vs[j];
      }
      std::memcpy(out + t * dim + h * hs, acc, sizeof(float) * hs);
    }
  });
  // The window keeps the chunk's last rows.
  for (Side* d : {&k_, &v_}) {
    if (d->window == 0) continue;
    const float* src = d == &k_ ? (ring_raw ? k_raw : k_rope) : v;
    for (int64_t t = std::max<int64_t>(0, n - d->window); t < n; ++t) {
      const int s = pos + static_cast<int>(t);
      float* dst = &d->ring[(static_cast<size_t>(l) * d->window + static_cast<size_t>(s % d->window)) * kv_dim];
      std::memcpy(dst, src + t * kv_dim, sizeof(float) * kv_dim);
    }
  }
}

}  // namespace lowbit
