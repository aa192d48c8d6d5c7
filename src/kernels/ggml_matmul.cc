// ggml_matmul's driver (include/lowbit/ggml_matmul.h): cuts W into blocks of rows × kKc columns,
// decodes each block once into a per-thread fp32 tile and multiplies it with every token block of
// x, accumulating over the column blocks. Threads take row blocks, so no two write one output.
// Q4_K and Q6_K decode through the per-ISA microkernels; every other ggml block type through its
// bit-exact reference row dequantizer (lowbit/ggml_blocks.h), the same at every ISA level.
#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ggml_internal.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace ki = kernels_internal;
namespace {

constexpr int64_t kKc = 1024;           // columns decoded per tile: 4 super-blocks (16 KiB of fp32 a row)
constexpr int64_t kTokenBlock = 32;     // tokens per x tile: 32 × kKc fp32 = 128 KiB
constexpr int64_t kRowsDecode = 16;     // rows per tile when m <= 4 (decode): 64 KiB of fp32, L2
constexpr int64_t kRowsPrefill = 64;    // rows per tile otherwise: 256 KiB, reused by every token block
constexpr int64_t kSuperBlock = 256;    // QK_K

const ki::GgmlMicrokernels& microkernels() {
#if defined(LOWBIT_HAVE_AVX2)
  if (active_isa() >= Isa::kAvx2) return ki::ggml_avx2_microkernels();
#endif
  return ki::ggml_scalar_microkernels();
}

// Rows r0..r1 of w, columns c0 .. c0+kc, decoded into tile (r1-r0, kc). c0 and kc are multiples
// of the type's block (kKc is a multiple of every block size, and cols of its own).
void decode_block(const ki::GgmlMicrokernels& mk, const GgmlMatrix& w, int64_t r0, int64_t r1, int64_t c0, int64_t kc,
                  float* tile) {
  const GgmlBlockInfo& info = *ggml_block_info(w.type);
  const int64_t rb = w.row_bytes(), b0 = c0 / info.block_size, nb = kc / info.block_size;
  for (int64_t r = r0; r < r1; ++r) {
    const auto* row = static_cast<const std::byte*>(w.blocks) + r * rb;
    float* out = tile + (r - r0) * kc;
    if (w.type == GgmlType::kQ4_K) {
      mk.decode_q4_K(reinterpret_cast<const BlockQ4_K*>(row) + b0, nb, out);
    } else if (w.type == GgmlType::kQ6_K) {
      mk.decode_q6_K(reinterpret_cast<const BlockQ6_K*>(row) + b0, nb, out);
    } else {
      info.dequantize(row + b0 * info.type_size, out, kc);
    }
  }
}

Status check(const GgmlMatrix& w) {
  const GgmlBlockInfo* info = ggml_block_info(w.type);
  if (info == nullptr) {
    return Unsupported(fmt::format("ggml_matmul: ggml type id {} is not a block type lowbit decodes "
                                   "(q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K iq4_nl iq4_xs)",
                                   static_cast<uint32_t>(w.type)));
  }
  if (w.blocks == nullptr || w.rows < 1 || w.cols < 1 || w.cols % info->block_size != 0) {
    return InvalidArgument(fmt::format("ggml_matmul: a ({}, {}) {} matrix; expected rows >= 1 and cols a positive multiple of {}",
                                       w.rows, w.cols, info->name, info->block_size));
  }
  return OkStatus();
}

}  // namespace

int64_t GgmlMatrix::row_bytes() const {
  const GgmlBlockInfo* info = ggml_block_info(type);
  return info ? cols / info->block_size * info->type_size : 0;
}

bool ggml_matmul_supports(GgmlType type) { return ggml_block_info(type) != nullptr; }

bool ggml_q8_supports(GgmlType type) { return type == GgmlType::kQ4_K || type == GgmlType::kQ6_K; }

namespace {

// The Q8_K path: every token's row quantized once (threads over tokens), then threads over row
// blocks; within one, token blocks of kQ8Tokens (their Q8_K rows, ≤ 32 × 292 B per super-block
// column, stay in L2) are swept by each weight row, which stays in L1 across them.
constexpr int64_t kQ8Tokens = 32;

// Rows r0..r1 of w against the Q8_K rows a (m tokens, nb super-blocks each).
void q8_rows(const ki::GgmlMicrokernels& mk, const GgmlMatrix& w, const BlockQ8_K* a, int64_t nb, int64_t m, float* y,
             int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t rb = w.row_bytes();
  for (int64_t t0 = 0; t0 < m; t0 += kQ8Tokens) {
    const int64_t nt = std::min(kQ8Tokens, m - t0);
    const BlockQ8_K* at = a + t0 * nb;
    for (int64_t r = r0; r < r1; ++r) {
      const auto* row = static_cast<const std::byte*>(w.blocks) + r * rb;
      float* yr = y + t0 * ldy + r;
      if (w.type == GgmlType::kQ4_K) {
        mk.dot_q4_K(reinterpret_cast<const BlockQ4_K*>(row), at, nb, nt, yr, ldy);
      } else {
        mk.dot_q6_K(reinterpret_cast<const BlockQ6_K*>(row), at, nb, nt, yr, ldy);
      }
    }
  }
}

// Matrices ws[i] (same cols) over one x: x quantized once, then one parallel region over the row
// blocks of all of them in order (a thread's share stays contiguous within each matrix).
void matmul_q8(const ki::GgmlMicrokernels& mk, std::span<const GgmlMatrix* const> ws, const float* x, int64_t m,
               int64_t ldx, std::span<float* const> ys, std::span<const int64_t> ldys) {
  const int64_t nb = ws[0]->cols / kSuperBlock;
  std::vector<BlockQ8_K> a(static_cast<size_t>(m * nb));
  parallel_for(0, m, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) mk.quantize_q8_K(x + t * ldx, nb, a.data() + t * nb);
  });
  const int64_t rows_per_task = m <= 4 ? kRowsDecode : kRowsPrefill;
  std::vector<int64_t> first(ws.size() + 1, 0);  // first task of each matrix
  for (size_t i = 0; i < ws.size(); ++i) first[i + 1] = first[i] + (ws[i]->rows + rows_per_task - 1) / rows_per_task;
  auto body = [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const size_t i = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), k) - first.begin() - 1);
      const int64_t r0 = (k - first[i]) * rows_per_task, r1 = std::min(r0 + rows_per_task, ws[i]->rows);
      q8_rows(mk, *ws[i], a.data(), nb, m, ys[i], ldys[i], r0, r1);
    }
  };
  parallel_for_balanced(0, first.back(), 1, body);
}

}  // namespace

Status ggml_matmul(const GgmlMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, GgmlActs acts) {
  LOWBIT_RETURN_IF_ERROR(check(w));
  if (m < 0 || ldx < w.cols || ldy < w.rows) {
    return InvalidArgument(fmt::format("ggml_matmul: m={} ldx={} ldy={} for a ({}, {}) matrix", m, ldx, ldy, w.rows, w.cols));
  }
  if (m == 0) return OkStatus();
  const ki::GgmlMicrokernels& mk = microkernels();
  if (acts == GgmlActs::kQ8K && ggml_q8_supports(w.type)) {
    const GgmlMatrix* ws[] = {&w};
    float* ys[] = {y};
    const int64_t ldys[] = {ldy};
    matmul_q8(mk, ws, x, m, ldx, ys, ldys);
    return OkStatus();
  }
  const int64_t rows_per_tile = m <= 4 ? kRowsDecode : kRowsPrefill;
  const int64_t kc_max = std::min(kKc, w.cols);
  parallel_for(0, w.rows, rows_per_tile, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> tile;  // (rows_per_tile, kc_max): grows once per thread
    if (tile.size() < static_cast<size_t>(rows_per_tile * kc_max)) tile.resize(static_cast<size_t>(rows_per_tile * kc_max));
    for (int64_t c0 = 0; c0 < w.cols; c0 += kKc) {
      const int64_t kc = std::min(kKc, w.cols - c0);
      decode_block(mk, w, r0, r1, c0, kc, tile.data());
      for (int64_t t0 = 0; t0 < m; t0 += kTokenBlock) {
        const int64_t nt = std::min(kTokenBlock, m - t0);
        mk.tile(tile.data(), kc, r1 - r0, x + t0 * ldx + c0, ldx, nt, kc, y + t0 * ldy + r0, ldy, c0 > 0);
      }
    }
  });
  return OkStatus();
}

Status ggml_matmul_many(std::span<const GgmlMatrix* const> ws, const float* x, int64_t m, int64_t ldx,
                        std::span<float* const> ys, GgmlActs acts) {
  if (ws.size() != ys.size() || ws.empty()) {
    return InvalidArgument(fmt::format("ggml_matmul_many: {} matrices and {} outputs", ws.size(), ys.size()));
  }
  bool fused = acts == GgmlActs::kQ8K;
  std::vector<int64_t> ldys;
  for (const GgmlMatrix* w : ws) {
    LOWBIT_RETURN_IF_ERROR(check(*w));
    if (w->cols != ws[0]->cols) {
      return InvalidArgument(fmt::format("ggml_matmul_many: matrices of {} and {} columns over one x", ws[0]->cols, w->cols));
    }
    fused = fused && ggml_q8_supports(w->type);
    ldys.push_back(w->rows);
  }
  if (m < 0 || ldx < ws[0]->cols) return InvalidArgument(fmt::format("ggml_matmul_many: m={} ldx={} for {} columns", m, ldx, ws[0]->cols));
  if (m == 0) return OkStatus();
  if (!fused) {
    for (size_t i = 0; i < ws.size(); ++i) LOWBIT_RETURN_IF_ERROR(ggml_matmul(*ws[i], x, m, ldx, ys[i], ws[i]->rows, acts));
    return OkStatus();
  }
  matmul_q8(microkernels(), ws, x, m, ldx, ys, ldys);
  return OkStatus();
}

Status ggml_decode_rows(const GgmlMatrix& w, int64_t r0, int64_t r1, float* out) {
  LOWBIT_RETURN_IF_ERROR(check(w));
  if (r0 < 0 || r1 < r0 || r1 > w.rows) return InvalidArgument(fmt::format("ggml_decode_rows: rows [{}, {}) of {}", r0, r1, w.rows));
  decode_block(microkernels(), w, r0, r1, 0, w.cols, out);
  return OkStatus();
}

Status ggml_decode_row(const GgmlMatrix& w, int64_t r, float* out) { return ggml_decode_rows(w, r, r + 1, out); }

Result<Tensor> ggml_decode(const GgmlMatrix& w) {
  LOWBIT_RETURN_IF_ERROR(check(w));
  LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, {w.rows, w.cols}));
  LOWBIT_RETURN_IF_ERROR(ggml_decode_rows(w, 0, w.rows, t.data_as<float>()));
  return t;
}

std::string ggml_kernel_name(GgmlType type, Isa isa, GgmlActs acts) {
  // k-quants as ggml's kernels name them ("q4K"); the 32-element types by their ggml name ("q5_0", "iq4_nl").
  const GgmlBlockInfo* info = ggml_block_info(type);
  std::string t = info ? std::string(info->name) : "unsupported";
  if (t.size() == 4 && t[2] == '_' && t[3] == 'K') t.erase(2, 1);
  const char* a = acts == GgmlActs::kQ8K && ggml_q8_supports(type) ? "a8" : "a16";
  return fmt::format("gemm_{}_{}_f32__{}", a, t, isa_name(isa));
}

Isa ggml_kernel_isa() { return microkernels().isa; }

}  // namespace lowbit
