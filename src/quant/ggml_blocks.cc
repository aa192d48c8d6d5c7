// ggml block types: the type table and the scalar dequantizers. Each dequantizer computes
// exactly ggml's float expression per element (same operands, same order: d * sc first, then
// times the code, then minus dmin * m), so results are bit-identical to dequantize_row_*.

#include "lowbit/ggml_blocks.h"

#include <array>
#include <cctype>
#include <cmath>
#include <cstring>

#include "lowbit/formats.h"

namespace lowbit {
namespace {

float half(ggml_half h) { return decode(Format::kFp16, h); }

// Q4/Q5 32-blocks: code of element j (0..31) without the fifth bit.
int nibble32(const uint8_t* qs, int j) { return j < kGgmlQK / 2 ? qs[j] & 0x0F : qs[j - kGgmlQK / 2] >> 4; }

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class Block, void (*Fn)(const Block*, float*, int64_t)>
void erased(const void* x, float* y, int64_t k) {
  Fn(static_cast<const Block*>(x), y, k);
}

// clang-format off
constexpr std::array<GgmlBlockInfo, 12> kTypes = {{
  // type              name      block      bytes                bpw                          dequantize
  {GgmlType::kQ4_0,   "q4_0",   kGgmlQK,   sizeof(BlockQ4_0),   8.0 * sizeof(BlockQ4_0) / 32,    erased<BlockQ4_0, dequantize_row_q4_0>},
  {GgmlType::kQ4_1,   "q4_1",   kGgmlQK,   sizeof(BlockQ4_1),   8.0 * sizeof(BlockQ4_1) / 32,    erased<BlockQ4_1, dequantize_row_q4_1>},
  {GgmlType::kQ5_0,   "q5_0",   kGgmlQK,   sizeof(BlockQ5_0),   8.0 * sizeof(BlockQ5_0) / 32,    erased<BlockQ5_0, dequantize_row_q5_0>},
  {GgmlType::kQ5_1,   "q5_1",   kGgmlQK,   sizeof(BlockQ5_1),   8.0 * sizeof(BlockQ5_1) / 32,    erased<BlockQ5_1, dequantize_row_q5_1>},
  {GgmlType::kQ8_0,   "q8_0",   kGgmlQK,   sizeof(BlockQ8_0),   8.0 * sizeof(BlockQ8_0) / 32,    erased<BlockQ8_0, dequantize_row_q8_0>},
  {GgmlType::kQ2_K,   "q2_K",   kGgmlQK_K, sizeof(BlockQ2_K),   8.0 * sizeof(BlockQ2_K) / 256,   erased<BlockQ2_K, dequantize_row_q2_K>},
  {GgmlType::kQ3_K,   "q3_K",   kGgmlQK_K, sizeof(BlockQ3_K),   8.0 * sizeof(BlockQ3_K) / 256,   erased<BlockQ3_K, dequantize_row_q3_K>},
  {GgmlType::kQ4_K,   "q4_K",   kGgmlQK_K, sizeof(BlockQ4_K),   8.0 * sizeof(BlockQ4_K) / 256,   erased<BlockQ4_K, dequantize_row_q4_K>},
  {GgmlType::kQ5_K,   "q5_K",   kGgmlQK_K, sizeof(BlockQ5_K),   8.0 * sizeof(BlockQ5_K) / 256,   erased<BlockQ5_K, dequantize_row_q5_K>},
  {GgmlType::kQ6_K,   "q6_K",   kGgmlQK_K, sizeof(BlockQ6_K),   8.0 * sizeof(BlockQ6_K) / 256,   erased<BlockQ6_K, dequantize_row_q6_K>},
  {GgmlType::kIQ4_NL, "iq4_nl", kGgmlQK,   sizeof(BlockIQ4_NL), 8.0 * sizeof(BlockIQ4_NL) / 32,  erased<BlockIQ4_NL, dequantize_row_iq4_nl>},
  {GgmlType::kIQ4_XS, "iq4_xs", kGgmlQK_K, sizeof(BlockIQ4_XS), 8.0 * sizeof(BlockIQ4_XS) / 256, erased<BlockIQ4_XS, dequantize_row_iq4_xs>},
}};
// clang-format on

}  // namespace

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK; ++i, y += kGgmlQK) {
    const float d = half(x[i].d);
    for (int j = 0; j < kGgmlQK; ++j) y[j] = static_cast<float>(nibble32(x[i].qs, j) - 8) * d;
  }
}

void dequantize_row_q4_1(const BlockQ4_1* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK; ++i, y += kGgmlQK) {
    const float d = half(x[i].d), m = half(x[i].m);
    for (int j = 0; j < kGgmlQK; ++j) y[j] = static_cast<float>(nibble32(x[i].qs, j)) * d + m;
  }
}

void dequantize_row_q5_0(const BlockQ5_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK; ++i, y += kGgmlQK) {
    const float d = half(x[i].d);
    const uint32_t qh = load_u32(x[i].qh);
    for (int j = 0; j < kGgmlQK; ++j) {
      const int q = nibble32(x[i].qs, j) | static_cast<int>(((qh >> j) & 1u) << 4);
      y[j] = static_cast<float>(q - 16) * d;
    }
  }
}

void dequantize_row_q5_1(const BlockQ5_1* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK; ++i, y += kGgmlQK) {
    const float d = half(x[i].d), m = half(x[i].m);
    const uint32_t qh = load_u32(x[i].qh);
    for (int j = 0; j < kGgmlQK; ++j) {
      const int q = nibble32(x[i].qs, j) | static_cast<int>(((qh >> j) & 1u) << 4);
      y[j] = static_cast<float>(q) * d + m;
    }
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK; ++i, y += kGgmlQK) {
    const float d = half(x[i].d);
    for (int j = 0; j < kGgmlQK; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void dequantize_row_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK; ++i, y += kGgmlQK) {
    const float d = half(x[i].d);
    for (int j = 0; j < kGgmlQK; ++j) y[j] = d * static_cast<float>(kIq4nlValues[nibble32(x[i].qs, j)]);
  }
}

// Q2_K and Q3_K share one element order: element e = 128*n + 32*j + l (n < 2, j < 4, l < 32) holds
// bits 2j..2j+1 of qs[32*n + l]; its sub-block (scale) is e / 16.
void dequantize_row_q2_K(const BlockQ2_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, y += kGgmlQK_K) {
    const BlockQ2_K& b = x[i];
    const float d = half(b.d), dmin = half(b.dmin);
    for (int e = 0; e < kGgmlQK_K; ++e) {
      const int n = e / 128, j = (e / 32) % 4, l = e % 32;
      const uint8_t sc = b.scales[e / 16];
      const float dl = d * static_cast<float>(sc & 0x0F), ml = dmin * static_cast<float>(sc >> 4);
      const int q = (b.qs[32 * n + l] >> (2 * j)) & 3;
      y[e] = dl * static_cast<float>(q) - ml;
    }
  }
}

void ggml_q3_K_scales(const uint8_t packed[12], int8_t out[16]) {
  // Low 4 bits: nibble (i / 8) of byte i % 8; high 2 bits: bits 2*(i/4).. of byte 8 + i % 4.
  for (int i = 0; i < 16; ++i) {
    const int lo = (packed[i % 8] >> (4 * (i / 8))) & 0x0F;
    const int hi = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    out[i] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
}

void dequantize_row_q3_K(const BlockQ3_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, y += kGgmlQK_K) {
    const BlockQ3_K& b = x[i];
    const float d = half(b.d);
    int8_t sc[16];
    ggml_q3_K_scales(b.scales, sc);
    for (int e = 0; e < kGgmlQK_K; ++e) {
      const int n = e / 128, j = (e / 32) % 4, l = e % 32;
      const float dl = d * static_cast<float>(sc[e / 16]);
      const int lo = (b.qs[32 * n + l] >> (2 * j)) & 3;
      const bool hbit = (b.hmask[l] >> (4 * n + j)) & 1;
      y[e] = dl * static_cast<float>(lo - (hbit ? 0 : 4));
    }
  }
}

void ggml_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q4_K / Q5_K element e = 64*p + 32*h + l (p < 4, h < 2, l < 32): nibble h of qs[32*p + l],
// Q5_K's fifth bit is bit 2p + h of qh[l]; the sub-block is e / 32 = 2p + h.
void dequantize_row_q4_K(const BlockQ4_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, y += kGgmlQK_K) {
    const BlockQ4_K& b = x[i];
    const float d = half(b.d), dmin = half(b.dmin);
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      ggml_scale_min_k4(s, b.scales, &sc, &m);
      const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * (s / 2);
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> (4 * (s % 2))) & 0x0F;
        y[32 * s + l] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

void dequantize_row_q5_K(const BlockQ5_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, y += kGgmlQK_K) {
    const BlockQ5_K& b = x[i];
    const float d = half(b.d), dmin = half(b.dmin);
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      ggml_scale_min_k4(s, b.scales, &sc, &m);
      const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * (s / 2);
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> (4 * (s % 2))) & 0x0F) | (((b.qh[l] >> s) & 1) << 4);
        y[32 * s + l] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

// Q6_K element e = 128*n + 32*j + l (n < 2, j < 4, l < 32): low 4 bits are nibble (j / 2) of
// ql[64*n + 32*(j % 2) + l], high 2 bits are bits 2j.. of qh[32*n + l]; sub-block e / 16.
void dequantize_row_q6_K(const BlockQ6_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, y += kGgmlQK_K) {
    const BlockQ6_K& b = x[i];
    const float d = half(b.d);
    for (int e = 0; e < kGgmlQK_K; ++e) {
      const int n = e / 128, j = (e / 32) % 4, l = e % 32;
      const int lo = (b.ql[64 * n + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0x0F;
      const int hi = (b.qh[32 * n + l] >> (2 * j)) & 3;
      y[e] = d * static_cast<float>(b.scales[e / 16]) * static_cast<float>((lo | (hi << 4)) - 32);
    }
  }
}

void quantize_row_q8_K(const float* x, BlockQ8_K* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, x += kGgmlQK_K) {
    BlockQ8_K& b = y[i];
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kGgmlQK_K; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    std::memset(b.bsums, 0, sizeof b.bsums);
    if (amax == 0.0f) {
      b.d = 0.0f;
      std::memset(b.qs, 0, sizeof b.qs);
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < kGgmlQK_K; ++j) {
      const long v = std::lrint(iscale * x[j]);  // ggml's nearest_int: round half to even
      b.qs[j] = static_cast<int8_t>(v < 127 ? v : 127);
      b.bsums[j / 16] = static_cast<int16_t>(b.bsums[j / 16] + b.qs[j]);
    }
    b.d = 1.0f / iscale;
  }
}

void dequantize_row_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kGgmlQK_K; ++i, y += kGgmlQK_K) {
    const BlockIQ4_XS& b = x[i];
    const float d = half(b.d);
    for (int s = 0; s < 8; ++s) {
      const int ls = ((b.scales_l[s / 2] >> (4 * (s % 2))) & 0x0F) | (((b.scales_h >> (2 * s)) & 3) << 4);
      const float dl = d * static_cast<float>(ls - 32);
      for (int j = 0; j < kGgmlQK; ++j) {
        y[32 * s + j] = dl * static_cast<float>(kIq4nlValues[nibble32(b.qs + 16 * s, j)]);
      }
    }
  }
}

std::span<const GgmlBlockInfo> ggml_block_types() { return kTypes; }

const GgmlBlockInfo* ggml_block_info(GgmlType type) {
  for (const auto& t : kTypes) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

const GgmlBlockInfo* ggml_block_info(std::string_view name) {
  for (const auto& t : kTypes) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(t.name[i])) == std::tolower(static_cast<unsigned char>(name[i]));
    }
    if (same) return &t;
  }
  return nullptr;
}

bool dequantize_row(GgmlType type, const void* blocks, float* y, int64_t k) {
  const GgmlBlockInfo* info = ggml_block_info(type);
  if (info == nullptr || k < 0 || k % info->block_size != 0) return false;
  info->dequantize(blocks, y, k);
  return true;
}

}  // namespace lowbit
