// Decode's k-quant matmul on one thread (issue 14): one token's Q8_K row against Q4_K / Q6_K
// weights, as `generate` runs it, in bytes of weights read per second. Two working sets:
//   l2   — 256 rows × 1536 columns (221 KiB of Q4_K, 315 KiB of Q6_K), resident in L2: what the
//          kernel's arithmetic allows;
//   dram — 512 MiB of rows, swept once per iteration: what the kernel reaches streaming from DRAM.
// Beside them, in the same run, the baseline: a pure AVX2 read loop over the same 512 MiB
// (`read/dram`), i.e. what one core can stream at all. Decode/bound in `lowbit bench model --limits`
// is this ratio on two threads with the whole forward pass around it.
// And decode's attention over the fp32 cache for one key/value group of Qwen2.5-1.5B (6 query heads,
// head width 128, a context of 1024): `attn/per_head` (scores + accumulate per head, the baseline)
// against `attn/grouped` (attn_*_f32_heads, the rows read once for the group; the same bits).
//
//   build/release/bench/bench_ggml_decode --benchmark_repetitions=3          (LOWBIT_ISA=scalar|avx2)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "lowbit/ggml_blocks.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/kv_attention.h"
#include "lowbit/parallel.h"

namespace lowbit::bench {
uint64_t stream_read(const uint8_t* p, size_t n);  // limits_avx2.cc
}

namespace {

constexpr int64_t kCols = 1536;                  // Qwen2.5-1.5B's width: 6 super-blocks a row
constexpr size_t kDramBytes = size_t{512} << 20;  // far beyond L3

// Random codes and scales; fp16 d/dmin of moderate size so sums stay finite.
std::vector<uint8_t> random_blocks(lowbit::GgmlType type, int64_t rows, uint32_t seed) {
  const lowbit::GgmlMatrix shape{type, nullptr, rows, kCols};
  std::vector<uint8_t> bytes(static_cast<size_t>(shape.bytes()));
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  const uint16_t half = 0x1400;  // ~0.001
  if (type == lowbit::GgmlType::kQ4_K) {
    auto* blk = reinterpret_cast<lowbit::BlockQ4_K*>(bytes.data());
    for (size_t i = 0; i < bytes.size() / sizeof(lowbit::BlockQ4_K); ++i) std::memcpy(&blk[i].d, &half, 2), std::memcpy(&blk[i].dmin, &half, 2);
  } else {
    auto* blk = reinterpret_cast<lowbit::BlockQ6_K*>(bytes.data());
    for (size_t i = 0; i < bytes.size() / sizeof(lowbit::BlockQ6_K); ++i) std::memcpy(&blk[i].d, &half, 2);
  }
  return bytes;
}

void BM_decode(benchmark::State& state, lowbit::GgmlType type, bool dram) {
  (void)lowbit::set_num_threads(1);
  const lowbit::GgmlMatrix probe{type, nullptr, 1, kCols};
  const int64_t rows = dram ? static_cast<int64_t>(kDramBytes) / probe.row_bytes() : 256;
  const std::vector<uint8_t> w = random_blocks(type, rows, 7);
  const lowbit::GgmlMatrix m{type, w.data(), rows, kCols};
  std::vector<float> x(kCols), y(static_cast<size_t>(rows));
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  for (auto _ : state) {
    const lowbit::Status s = lowbit::ggml_matmul(m, x.data(), 1, kCols, y.data(), rows, lowbit::GgmlActs::kQ8K);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * m.bytes());
}

void BM_read(benchmark::State& state) {
  std::vector<uint8_t, std::allocator<uint8_t>> buf(kDramBytes + 32, 1);
  const uint8_t* p = buf.data() + (32 - reinterpret_cast<uintptr_t>(buf.data()) % 32) % 32;
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::bench::stream_read(p, kDramBytes));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kDramBytes));
}

void BM_attn(benchmark::State& state, bool grouped) {
  constexpr int64_t kHeads = 6, kWidth = 128, kCtx = 1024, kStride = 256;  // 2 KV heads of 128 in a row
  std::vector<float> kc(static_cast<size_t>(kCtx * kStride)), vc(kc.size()), q(static_cast<size_t>(kHeads * kWidth));
  std::vector<float> att(static_cast<size_t>(kHeads * kCtx)), out(static_cast<size_t>(kHeads * kWidth));
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (auto* v : {&kc, &vc, &q}) {
    for (float& f : *v) f = nd(rng);
  }
  for (float& f : att) f = 1.0f / kCtx;
  for (auto _ : state) {
    if (grouped) {
      lowbit::attn_scores_f32_heads(kc.data(), kStride, kWidth, q.data(), kWidth, kHeads, kCtx, att.data(), kCtx);
      lowbit::attn_accumulate_f32_heads(vc.data(), kStride, kWidth, att.data(), kCtx, kHeads, kCtx, out.data(), kWidth);
    } else {
      for (int64_t h = 0; h < kHeads; ++h) {
        lowbit::attn_scores_f32(kc.data(), kStride, kWidth, q.data() + h * kWidth, kCtx, att.data() + h * kCtx);
        lowbit::attn_accumulate_f32(vc.data(), kStride, kWidth, att.data() + h * kCtx, kCtx, out.data() + h * kWidth);
      }
    }
    for (float& f : att) f = 1.0f / kCtx;  // scores overwrote the weights: keep the values bounded
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kHeads * kCtx);  // (head, position) pairs
}

BENCHMARK_CAPTURE(BM_attn, per_head, false)->Name("attn/per_head")->MinTime(0.5);
BENCHMARK_CAPTURE(BM_attn, grouped, true)->Name("attn/grouped")->MinTime(0.5);
BENCHMARK_CAPTURE(BM_decode, q4_K/l2, lowbit::GgmlType::kQ4_K, false)->MinTime(0.5);
BENCHMARK_CAPTURE(BM_decode, q6_K/l2, lowbit::GgmlType::kQ6_K, false)->MinTime(0.5);
BENCHMARK_CAPTURE(BM_decode, q4_K/dram, lowbit::GgmlType::kQ4_K, true)->MinTime(1.0)->UseRealTime();
BENCHMARK_CAPTURE(BM_decode, q6_K/dram, lowbit::GgmlType::kQ6_K, true)->MinTime(1.0)->UseRealTime();
BENCHMARK(BM_read)->Name("read/dram")->MinTime(1.0)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
