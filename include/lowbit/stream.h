// Quantizing models larger than RAM: a Hugging Face checkpoint (sharded or not; F32/F16/BF16) is
// read one block at a time from its memory-mapped shards, calibrated, quantized, written out and
// dropped, so peak memory is one block's weights + the calibration activations + that block's
// statistics, whatever the depth. The output is either
//   safetensors: a sharded folder (model-0000i-of-0000n.safetensors, one shard per block, +
//     model.safetensors.index.json + config.json + tokenizer), or
//   gguf: one file, laid out before block 0 (save.h's plan_gguf_save: every tensor's type and
//     offset follow from the plan), each block's tensors written at their offsets as it ends;
// either way byte-identical to save_model's after quantize_model (GGUF: the same file). It is
// built in "<out>.partial" (with a per-block checkpoint of the output and of the calibration
// residual stream feeding the next block) and renamed to <out> at the end.
//
//   StreamOptions so;  so.pipeline = {.method = Method::kGptq, .plan = plan, .calib = windows};
//   so.save.tokenizer_path = "Llama-3-8B/tokenizer.model";
//   LOWBIT_ASSIGN_OR_RETURN(StreamReport r, quantize_streaming("Llama-3-8B", "out", so));
//   so.resume = true;  // after a crash: continue from the last completed block
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lowbit/pipeline.h"
#include "lowbit/save.h"
#include "lowbit/sharded.h"

namespace lowbit {

// The test hook: with LOWBIT_STREAM_STOP_AFTER_BLOCK=k set, quantize_streaming stops with an
// Internal status right after block k's checkpoint is written, as a kill there would.
inline constexpr const char* kStreamStopEnv = "LOWBIT_STREAM_STOP_AFTER_BLOCK";

struct StreamOptions {
  PipelineOptions pipeline;  // method, plan (whole model), calibration, method options; the block range is set per block
  SaveOptions save;          // format (safetensors folder or GGUF file), tokenizer_path, extra_metadata
  bool resume = false;       // continue "<out>.partial" from its last completed block
  std::function<void(int block, int blocks)> on_block = nullptr;
};

// Test hook: with LOWBIT_STREAM_CHUNK_ROWS=n set, the embedding / classifier step works n rows
// at a time instead of 64 MiB of f32 rows (so small models exercise the chunk boundaries).
inline constexpr const char* kStreamChunkRowsEnv = "LOWBIT_STREAM_CHUNK_ROWS";
// f32 bytes of one chunk of embedding / classifier rows (4096 rows at width 4096).
inline constexpr int64_t kRestChunkBytes = int64_t{64} << 20;

// What stays resident at the peak, by part (bytes): stated before a run (quantize --dry-run)
// and compared with the measured peak after it. A block goes through four phases, each with its
// own resident parts; the peak is the largest phase.
struct StreamMemory {
  int64_t stored_block = 0;   // one block's weights as stored: the read buffer (TensorPrefetch)
  bool prefetch = false;      // RTN: block l + 1's stored weights are read into a second buffer while block l converts and quantizes
  int64_t block_f32 = 0;      // one block's weights in f32 (+ a working copy for AWQ / SmoothQuant, which rescale them) + its codes and scales twice
  int64_t statistics = 0;     // calibration: all four input sites' statistics (GPTQ: Hessians in double, 8·(3·dim² + hidden²))
  int64_t statistics_gptq = 0;  // GPTQ of the widest linear: the Hessians still needed then (8·(dim² + hidden²))
  int64_t calib_temp = 0;     // one calibration window's block buffers and its float Xᵀ X (GPTQ: 4·hidden²)
  int64_t gptq = 0;           // GPTQ's widest linear: float H⁻¹ factor (4·hidden²) + the inverse's temporaries (2·hidden²) + its working copy of W + codes
  int64_t activations = 0;    // the calibration residual stream (in and, without --sequential, out)
  int64_t rest = 0;           // embedding / classifier step: one chunk of rows (f32, stored, codes) + the table's scales
  int64_t blas = 0;           // BLAS work space while calibrating / factoring (OpenBLAS: measured, see stream.cc)
  int64_t base = 0;           // the process without a model (code, allocator), measured by the caller
  // The read buffers: the block being converted's, and with prefetch the next block's (both kept
  // from block to block); without prefetch, freed once the block is converted.
  int64_t read_buffers() const { return (prefetch ? 2 : 1) * stored_block; }
  int64_t load() const { return block_f32 + read_buffers() + activations; }
  int64_t calibrate() const { return block_f32 + statistics + calib_temp + activations + blas + (prefetch ? read_buffers() : 0); }
  int64_t quant_temp = 0;     // quantize()'s per-scale-block temporaries for the largest linear (32 bytes a block)
  int64_t quantize() const { return block_f32 + statistics_gptq + gptq + activations + blas + quant_temp + (prefetch ? read_buffers() : 0); }
  int64_t peak() const;      // max(load, calibrate, quantize, rest) + base + margin
  std::string formula() const;  // one line per phase, for --dry-run
};
// `plan` sizes the codes (the most any block's linears keep) and quantize()'s scale-block temporaries.
StreamMemory stream_memory(const LlamaConfig& c, DType stored, Method method, const QuantPlan& plan, int64_t calib_tokens, int64_t window);

struct StreamReport {
  PipelineReport pipeline;           // every linear quantized in this run, calibration tokens
  std::vector<double> block_seconds; // per block run in this run (resumed blocks absent)
  std::vector<double> block_cpu_seconds;  // the same blocks' CPU time (user + system, all threads): robust on a loaded machine
  double rest_seconds = 0;           // the embedding / classifier step
  double rest_cpu_seconds = 0;
  int first_block = 0;               // 0, or where --resume picked up
  int64_t bytes_read = 0;            // stored weight bytes converted
  int64_t bytes_written = 0;         // the output folder
  double seconds = 0;
  StreamMemory memory;
  int64_t peak_rss_bytes = 0;        // getrusage's maximum resident set at the end
  std::vector<std::string> warnings; // a GGUF save's F16 fallbacks (SaveReport's), known before block 0
};

// Errors (one line, naming the file and tensor; nothing written to `out_dir`): what
// open_hf_checkpoint / check_llama_tensors refuse, a method/plan quantize_model refuses, a
// --resume whose checkpoint does not match this run (another model, plan, method, format or
// calibration); for GGUF, a spec it cannot hold (before block 0) and an `out_dir` that is a folder.
Result<StreamReport> quantize_streaming(const std::string& model_dir, const std::string& out_dir, const StreamOptions& opt);

}  // namespace lowbit
