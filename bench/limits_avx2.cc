// Register-only AVX2 loops that measure the machine's int8 and fp32 peaks, and a streaming
// read for DRAM bandwidth (compiled with -mavx2 -mfma; called only when the CPU has AVX2).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace lowbit::bench {

// The loops are unrolled explicitly: GCC -O2 otherwise keeps acc[] on the stack, and the
// store-to-load forwarding on every iteration caps the loop well below the FMA/ALU throughput
// (this limit read 44 GFLOP/s on 2 cores while OpenBLAS sgemm reached 92).

// 6 independent vpmaddubsw -> vpmaddwd -> vpaddd chains on 6 distinct (x, b) operand pairs (with one
// shared pair GCC computes the product once; 6 keeps every chain in a register); 6 · 32 multiply-adds
// per iteration.
int64_t int8_peak_loop(int64_t iters) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i b0 = _mm256_set1_epi8(-2), b1 = _mm256_set1_epi8(5);
  __m256i acc[6];
#pragma GCC unroll 6
  for (auto& v : acc) v = _mm256_setzero_si256();
  __m256i x[3] = {_mm256_set1_epi8(3), _mm256_set1_epi8(11), _mm256_set1_epi8(7)};
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 6
    for (int c = 0; c < 6; ++c) {
      acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(x[c / 2], c % 2 ? b1 : b0), ones));
    }
    __asm__ volatile("" : "+x"(x[0]), "+x"(x[1]), "+x"(x[2]));  // keep the loop from being folded
  }
  __m256i s = acc[0];
  for (int c = 1; c < 6; ++c) s = _mm256_add_epi32(s, acc[c]);
  return _mm256_extract_epi32(s, 0);
}

// 12 independent FMA chains in registers (latency 4 x 2 FMA pipes needs 8); 12 · 8 multiply-adds
// per iteration.
float fp32_peak_loop(int64_t iters) {
  __m256 acc[12];
#pragma GCC unroll 12
  for (int c = 0; c < 12; ++c) acc[c] = _mm256_set1_ps(static_cast<float>(c));
  __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < 12; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    __asm__ volatile("" : "+x"(a));
  }
  __m256 s = acc[0];
  for (int c = 1; c < 12; ++c) s = _mm256_add_ps(s, acc[c]);
  return _mm256_cvtss_f32(s);
}

// Reads n bytes (multiple of 128, 32-byte aligned) with 4 streams of loads.
uint64_t stream_read(const uint8_t* p, size_t n) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < n; i += 128) {
    s0 = _mm256_xor_si256(s0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    s1 = _mm256_xor_si256(s1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    s2 = _mm256_xor_si256(s2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    s3 = _mm256_xor_si256(s3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  const __m256i s = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
  return static_cast<uint64_t>(_mm256_extract_epi64(s, 0));
}

}  // namespace lowbit::bench
