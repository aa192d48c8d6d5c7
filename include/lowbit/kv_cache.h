// The quantized KV cache: keys and values stored as codes + fp16 scales (+ minimums) per a
// QuantSpec for each side, with an optional window of the most recent tokens kept in fp32, and
// attention that reads the codes directly (include/lowbit/kv_attention.h). No fp32 copy of the
// whole cache exists: only the window (and, for keys per channel, the block not yet full).
//
//   LOWBIT_ASSIGN_OR_RETURN(KvSpec spec, parse_kv_spec("kv-int4-kivi"));
//   LOWBIT_RETURN_IF_ERROR(validate_kv_spec(spec, cfg.head_dim()));   // group divides head dim ...
//   Session s(net, 2048, spec);                                        // llama.h: the session's cache
//   double bytes = kv_bytes_per_token(spec, cfg, 2048);               // codes + scales + window
//
// Text form (parse_kv_spec): a name (kv-int8 kv-int8-g32 kv-int4-g32 kv-int4-g32-sym kv-int4-kivi
// kv-e4m3 kv-e5m2 kv-e4m3-tensor kv-e5m2-tensor), or `<qspec>` for both sides, or
// `k=<qspec>,v=<qspec>` plus options `,residual=R` (fp32 window), `,block=B` (tokens per key block
// for per-channel keys), `,prerope` (keys quantized before RoPE), where <qspec> is a QuantSpec
// text form over one head's (tokens, head_dim) rows: int8:token | int4:g<G>[:asym] |
// uint4:g<G>:asym | int4:channel:asym (per channel over blocks of B tokens, KIVI's keys) |
// e4m3:token | e5m2:token | e4m3:tensor (unit scale, vLLM's uncalibrated fp8 cache). Scales are
// stored in fp16 (rounded up, so nothing clips). Layout and arithmetic: docs/kv_cache.md.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/kv_attention.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"

namespace lowbit {

enum class KvAxis : uint8_t {
  kToken,    // a scale per token per head per group of `group` along the head dim
  kChannel,  // a scale per channel per block of `block` tokens (keys only; KIVI)
  kTensor,   // fp8 only: unit scale, a plain cast (vLLM's fp8 cache without calibration)
};

struct KvSideSpec {
  QuantSpec quant;                 // what the user asked for (canonical QuantSpec form)
  KvCode code = KvCode::kInt8;
  KvAxis axis = KvAxis::kToken;
  int64_t group = 0;               // kToken: codes per scale; 0 = the whole head
  bool affine() const { return code == KvCode::kUint4; }
};

struct KvSpec {
  std::string name;                // as given ("kv-int8" or the text form)
  KvSideSpec k, v;
  int residual = 0;                // most recent tokens kept in fp32 (both sides)
  int block = 32;                  // tokens per block of per-channel keys
  bool pre_rope = false;           // keys quantized before RoPE (rotation applied to the query)
};

Result<KvSpec> parse_kv_spec(std::string_view text);
std::string to_string(const KvSpec& spec);  // canonical text form (k=...,v=...[,residual=R]...)
struct KvNamedSpec {
  std::string_view name, text, description;
};
std::span<const KvNamedSpec> named_kv_specs();
// Errors name both numbers: "kv spec kv-int4-g32: group 32 does not divide head dim 8".
Status validate_kv_spec(const KvSpec& spec, int head_dim);
// Bytes the cache holds per token at a context of `max_seq`: codes + scales + minimums + the
// fp32 window / key block, divided by max_seq (all layers, keys and values).
double kv_bytes_per_token(const KvSpec& spec, const LlamaConfig& c, int max_seq);
// Bits per cached value of the quantized part alone (codes + scales + minimums, no window).
double kv_bits_per_value(const KvSpec& spec, int head_dim);
// The llama.cpp --cache-type-k / --cache-type-v that is the same granularity and format, or
// "" where llama.cpp has none (fp8, per-channel keys, per-token scales over a whole head).
std::string llama_cpp_cache_type(const KvSideSpec& side, int head_dim);

// One layer's cache for a sequence of up to max_seq tokens.
class KvCache {
 public:
  static Result<KvCache> create(const KvSpec& spec, const LlamaConfig& c, int max_seq);
  const KvSpec& spec() const { return spec_; }
  int max_seq() const { return max_seq_; }
  // Bytes of every buffer this cache allocated (all layers).
  int64_t buffer_bytes() const;

  // Stores tokens pos..pos+n-1 of layer l: k_rope, v (n, kv_dim) fp32 (keys after RoPE) and, for a
  // pre-RoPE spec, k_raw (n, kv_dim) the keys before it. Call before attend for the same chunk.
  void write(int l, int pos, int64_t n, const float* k_rope, const float* k_raw, const float* v);
  // Causal attention of queries q (n, n_heads·hs) at positions pos..pos+n-1 over layer l's cache,
  // into out (n, n_heads·hs); k_rope, k_raw (pre-RoPE specs), v are the chunk's own fp32 rows (for
  // the window). Threaded over (token, head). Then keeps the chunk's last rows in the window.
  void attend(int l, int pos, int64_t n, const float* q, const float* k_rope, const float* k_raw, const float* v,
              float* out);

  // Reference: the values attention reads for token s of layer l as seen by a query at position p
  // (dequantized codes, or the fp32 row inside the window), keys after RoPE: k, v (kv_dim) each.
  // Valid for s <= p < the positions written so far, while s is in the window when read as fp32.
  void read_row(int l, int s, int p, const float* k_rope_fp32, const float* v_fp32, float* k, float* v) const;
  // Whether a query at position p reads token s's key / value from the codes (else fp32).
  bool key_quantized(int s, int p) const;
  bool value_quantized(int s, int p) const;

 private:
  struct Side {
    int64_t row_bytes = 0;             // codes per (token, head) row, padded to width
    int64_t groups = 0;                // token axis: scales per row
    std::vector<uint8_t> codes;        // (layers, max_seq, kv_heads, row_bytes)
    std::vector<uint16_t> scale, min;  // token axis: (layers, max_seq, kv_heads, groups); channel: (layers, blocks, kv_heads, width)
    std::vector<float> ring;           // (layers, window, kv_dim) fp32 rows of the last `window` tokens
    int window = 0;
  };
  KvSpec spec_;
  LlamaConfig c_;
  int max_seq_ = 0, hs_ = 0, width_ = 0, kvh_ = 0, blocks_ = 0;
  Side k_, v_;
  std::vector<float> rope_cos_, rope_sin_;  // (max_seq, hs/2), pre-RoPE keys only

  void quantize_token_rows(const KvSideSpec& s, Side& d, int l, int t, const float* row);
  void quantize_key_block(int l, int b, const float* rows /* (block, kv_dim) */);
  KvRows rows(const KvSideSpec& s, const Side& d, int l, int h, int t0) const;
  const float* ring_row(const Side& d, int l, int s) const;
  void dequant_row(const KvSideSpec& s, const Side& d, int l, int t, int h, float* out) const;
};

}  // namespace lowbit
