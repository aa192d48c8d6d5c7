// quantize_streaming: a checkpoint larger than RAM, one block at a time (stream.h).
#include "lowbit/stream.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/formats.h"
#include "lowbit/ggml_quant.h"
#include "lowbit/gguf.h"
#include "lowbit/llama.h"
#include "lowbit/parallel.h"
#include "lowbit/safetensors.h"
#include "lowbit/ptq.h"
#include "lowbit/quant.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kProgress = "progress.json";     // {"key": ..., "done": blocks completed}
constexpr const char* kResidual = "residual.f32";      // the residual stream feeding block `done`
constexpr const char* kGgufData = "model.gguf";        // a GGUF save, written at its offsets
const float kEmpty[1] = {0.0f};

ConstTensorView empty_matrix() {
  static const int64_t shape[2] = {0, 0};
  return ConstTensorView(kEmpty, DType::kF32, std::span<const int64_t>(shape, 2));
}

struct HfSlot { const char* hf; LinearSlot slot; bool rope; };
constexpr HfSlot kHfSlots[] = {{"self_attn.q_proj", LinearSlot::kWq, true},  {"self_attn.k_proj", LinearSlot::kWk, true},
                               {"self_attn.v_proj", LinearSlot::kWv, false}, {"self_attn.o_proj", LinearSlot::kWo, false},
                               {"mlp.gate_proj", LinearSlot::kW1, false},    {"mlp.down_proj", LinearSlot::kW2, false},
                               {"mlp.up_proj", LinearSlot::kW3, false}};

// A Model whose blocks are all empty views; the caller fills in what one step needs.
Model skeleton(const LlamaConfig& c) {
  Model m;
  m.config = c;
  LayerWeights empty;
  for (auto member : {&LayerWeights::attn_norm, &LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo,
                      &LayerWeights::ffn_norm, &LayerWeights::w1, &LayerWeights::w2, &LayerWeights::w3}) {
    empty.*member = empty_matrix();
  }
  m.weights.layers.assign(static_cast<size_t>(c.n_layers), empty);
  m.weights.tok_embeddings = m.weights.classifier = m.weights.final_norm = empty_matrix();
  return m;
}

// Loads tensor `name` into `slot` (reused when it has the shape already: every block has the same
// shapes, and fresh pages for each block's ~0.9 GB at the 8B width cost page faults and zeroing
// that were a third of a streamed RTN block's CPU) from the prefetched batch and points `dest` at it.
Status adopt(const HfCheckpoint& ck, const TensorPrefetch& pf, const std::string& name, std::vector<int64_t> shape,
             ConstTensorView* dest, int64_t* bytes_read, Tensor& slot, int64_t permute = 0) {
  const ConstTensorView v = slot.view();
  bool same = v.ndim() == static_cast<int>(shape.size()) && slot.numel() > 0;
  for (size_t d = 0; same && d < shape.size(); ++d) same = v.dim(static_cast<int>(d)) == shape[d];
  if (!same) {
    LOWBIT_ASSIGN_OR_RETURN(slot, Tensor::empty(DType::kF32, std::span<const int64_t>(shape)));
  }
  LOWBIT_RETURN_IF_ERROR(pf.load_f32_into(name, shape, std::span<float>(slot.data_as<float>(), static_cast<size_t>(slot.numel())), permute));
  const SafetensorsTensorInfo* info = ck.weights.file_of(name)->find(name);
  *bytes_read += static_cast<int64_t>(info->end - info->begin);
  *dest = slot.view();
  return OkStatus();
}

// Block l's tensors: Hugging Face name, shape, rope permutation (head_dim for q / k, else 0) and
// where the block's LayerWeights keeps it.
struct BlockTensor { std::string name; std::vector<int64_t> shape; int64_t permute; ConstTensorView LayerWeights::*member; };
std::vector<BlockTensor> block_tensors(const LlamaConfig& c, int l) {
  const std::string p = fmt::format("model.layers.{}.", l);
  std::vector<BlockTensor> t = {{p + "input_layernorm.weight", {c.dim}, 0, &LayerWeights::attn_norm},
                                {p + "post_attention_layernorm.weight", {c.dim}, 0, &LayerWeights::ffn_norm}};
  for (const HfSlot& s : kHfSlots) {
    const int64_t out = s.slot == LinearSlot::kWk || s.slot == LinearSlot::kWv ? c.kv_dim()
                        : s.slot == LinearSlot::kW1 || s.slot == LinearSlot::kW3 ? c.hidden_dim : c.dim;
    const int64_t in = s.slot == LinearSlot::kW2 ? c.hidden_dim : c.dim;
    t.push_back({p + s.hf + ".weight", {out, in}, s.rope ? c.head_dim() : 0, linear_weight_member(s.slot)});
  }
  return t;
}

// Starts reading block l's stored tensors (TensorPrefetch: on a thread of its own).
Status prefetch_block(TensorPrefetch& pf, const LlamaConfig& c, int l) {
  std::vector<std::string> names;
  for (BlockTensor& t : block_tensors(c, l)) names.push_back(std::move(t.name));
  return pf.start(std::move(names));
}

// Block l's norms and linears, as f32, into `arena` (9 tensors, kept from block to block), from
// the batch `pf` read (prefetch_block(pf, c, l), waited for).
Status load_block(Model& m, const HfCheckpoint& ck, const TensorPrefetch& pf, int l, int64_t* bytes_read, std::vector<Tensor>& arena) {
  const std::vector<BlockTensor> t = block_tensors(m.config, l);
  LayerWeights& lw = m.weights.layers[static_cast<size_t>(l)];
  arena.resize(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    LOWBIT_RETURN_IF_ERROR(adopt(ck, pf, t[i].name, t[i].shape, &(lw.*t[i].member), bytes_read, arena[i], t[i].permute));
  }
  return OkStatus();
}

// FNV-1a: the run's identity, stable across builds, for --resume.
uint64_t fnv(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (char ch : s) h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  return h;
}

std::string run_key(const std::string& model_dir, const StreamOptions& opt) {
  std::string s = fs::absolute(model_dir).lexically_normal().string() + "|" + std::string(model_format_name(opt.save.format)) + "|" +
                  std::string(method_name(opt.pipeline.method)) + "|" +
                  plan_json(opt.pipeline.plan) + "|" + (opt.pipeline.sequential ? "seq" : "par") +
                  fmt::format("|{}|{}|{}|{}|{}|{}|{}|{}", opt.pipeline.gptq.damp, opt.pipeline.gptq.block_size,
                              opt.pipeline.gptq.act_order, opt.pipeline.gptq.static_groups, opt.pipeline.awq.grid,
                              opt.pipeline.awq.max_samples, opt.pipeline.smooth_alpha, opt.pipeline.outlier_threshold);
  uint64_t h = fnv(s);
  for (const auto& w : opt.pipeline.calib) {
    h = fnv(std::string_view(reinterpret_cast<const char*>(w.data()), w.size() * sizeof(int)), h);
    h = fnv("|", h);
  }
  for (const auto& [k, v] : opt.save.extra_metadata) h = fnv(k + "=" + v + ";", h);
  return fmt::format("{:016x}", h);
}

std::string shard_name(int i, int n) { return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n); }

double cpu_seconds() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

int64_t current_peak_rss() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

Status write_residual(const std::string& path, const std::vector<std::vector<float>>& xs) {
  std::string bytes;
  size_t n = 0;
  for (const auto& x : xs) n += x.size() * sizeof(float);
  bytes.resize(n);
  size_t off = 0;
  for (const auto& x : xs) {
    std::memcpy(bytes.data() + off, x.data(), x.size() * sizeof(float));
    off += x.size() * sizeof(float);
  }
  return write_file_atomic(path, bytes);
}

Status read_residual(const std::string& path, std::vector<std::vector<float>>& xs, const StreamOptions& opt, int dim) {
  LOWBIT_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  size_t want = 0;
  for (const auto& w : opt.pipeline.calib) want += w.size() * static_cast<size_t>(dim) * sizeof(float);
  if (f.size() != want) return DataLoss(fmt::format("{}: {} bytes, expected {} for this calibration", path, f.size(), want));
  xs.assign(opt.pipeline.calib.size(), {});
  size_t off = 0;
  for (size_t w = 0; w < xs.size(); ++w) {
    xs[w].resize(opt.pipeline.calib[w].size() * static_cast<size_t>(dim));
    std::memcpy(xs[w].data(), f.bytes().data() + off, xs[w].size() * sizeof(float));
    off += xs[w].size() * sizeof(float);
  }
  return OkStatus();
}

// ---- the embedding / classifier step, a chunk of rows at a time --------------------------------

// A (rows, cols) table of the checkpoint (embedding or lm_head) read, cast or quantized and
// written `chunk` rows at a time, so neither its f32 copy nor its output is ever whole in RAM.
// Rows split only where quantize() is row-local: a spec without a tensor scale whose blocks
// chunks can start on (row or group blocks; a unit-scale cast of the whole tensor, whose one scale
// is 1 for every chunk). Otherwise the chunk is the whole table, as quantize_model does it.
class RowStream {
 public:
  RowStream(const HfCheckpoint& ck, std::string hf_name, std::string name, int64_t rows, int64_t cols,
            std::optional<QuantSpec> spec, int64_t chunk_rows)
      : ck_(ck), hf_(std::move(hf_name)), name_(std::move(name)), rows_(rows), cols_(cols), spec_(std::move(spec)) {
    chunk_ = rows_;
    if (!spec_ || spec_->ggml != GgmlType::kF32) {  // ggml blocks lie along a row
      chunk_ = std::min(rows_, chunk_rows);
    } else if (!spec_->tensor_scale && spec_->ggml == GgmlType::kF32 && traits(spec_->scale_format).bits % 8 == 0) {
      const BlockGrid g = block_grid(*spec_, rows_, cols_);
      if (g.grid_rows == 1 && spec_->scale_rule == ScaleRule::kUnit) {
        chunk_ = std::min(rows_, chunk_rows);
        one_scale_row_ = true;
      } else if (g.block_rows < rows_) {
        chunk_ = std::min(rows_, (chunk_rows + g.block_rows - 1) / g.block_rows * g.block_rows);
      }
    }
    chunk_ = std::max<int64_t>(1, chunk_);
  }
  int64_t chunk_rows() const { return chunk_; }
  const std::optional<QuantSpec>& spec() const { return spec_; }

  // The f32 rows as stored (no spec) or as the spec rounds them (dequantized), chunk by chunk;
  // with `f16`, as fp16 (exact when the spec is an fp16 cast).
  Status emit_f32(const std::function<Status(std::span<const std::byte>)>& emit, bool f16 = false) {
    std::vector<uint16_t> h;
    // An fp16 cast written as fp16 is F16C's rounding of the values themselves (the codes
    // quantize() gives, which dequantize and f32_to_f16 return unchanged): checked as
    // quantize_rows checks them, then converted once.
    const bool direct_f16 = f16 && spec_ && is_fp16_cast(*spec_);
    for (int64_t r0 = 0; r0 < rows_; r0 += chunk_) {
      const int64_t r1 = std::min(rows_, r0 + chunk_);
      LOWBIT_ASSIGN_OR_RETURN(const TensorView x, read(r0, r1));
      if (direct_f16) {
        LOWBIT_RETURN_IF_ERROR(check_cast(x, r0));
      } else if (spec_) {
        LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize_rows(x, r0));
        LOWBIT_RETURN_IF_ERROR(dequantize(q, x));
      }
      const std::span<const float> v(x.data_as<float>(), static_cast<size_t>(x.numel()));
      if (f16) {
        h.resize(v.size());
        parallel_for(0, static_cast<int64_t>(v.size()), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {  // elementwise: any split
          f32_to_f16(v.subspan(static_cast<size_t>(i0), static_cast<size_t>(i1 - i0)),
                     std::span<uint16_t>(h).subspan(static_cast<size_t>(i0), static_cast<size_t>(i1 - i0)));
        });
        LOWBIT_RETURN_IF_ERROR(emit(std::as_bytes(std::span<const uint16_t>(h))));
      } else {
        LOWBIT_RETURN_IF_ERROR(emit(std::as_bytes(v)));
      }
    }
    return OkStatus();
  }
  // The codes (rows, row_bytes) chunk by chunk; keeps the scale codes and zero points, which
  // the ".scales" and ".zeros" entries written after them hand out.
  Status emit_codes(const std::function<Status(std::span<const std::byte>)>& emit) {
    scale_codes_.clear();
    zeros_.clear();
    for (int64_t r0 = 0; r0 < rows_; r0 += chunk_) {
      const int64_t r1 = std::min(rows_, r0 + chunk_);
      LOWBIT_ASSIGN_OR_RETURN(const TensorView x, read(r0, r1));
      LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize_rows(x, r0));
      LOWBIT_RETURN_IF_ERROR(emit(std::as_bytes(std::span<const uint8_t>(q.codes))));
      if (one_scale_row_ && r0 > 0) {
        if (q.scale_codes != scale_codes_ || q.zero_points != zeros_) {
          return Internal(fmt::format("{}: a unit-scale cast gave chunk {} other scales", name_, r0 / chunk_));
        }
        continue;
      }
      scale_codes_.insert(scale_codes_.end(), q.scale_codes.begin(), q.scale_codes.end());
      zeros_.insert(zeros_.end(), q.zero_points.begin(), q.zero_points.end());
    }
    return OkStatus();
  }
  Status emit_scales(const std::function<Status(std::span<const std::byte>)>& emit) const {
    return scale_codes_.empty() ? OkStatus() : emit(std::as_bytes(std::span<const uint8_t>(scale_codes_)));
  }
  Status emit_zeros(const std::function<Status(std::span<const std::byte>)>& emit) const {
    return zeros_.empty() ? OkStatus() : emit(std::as_bytes(std::span<const int32_t>(zeros_)));
  }
  // The tensor as a GGUF save stores it as `type` (save.h's plan_gguf_save chose it): f32 rows
  // as stored or as the spec rounds them, F16 of those, or the spec's blocks; chunk by chunk.
  Status emit_gguf(const std::string& gguf_name, GgmlType type, const std::function<Status(std::span<const std::byte>)>& emit) {
    for (int64_t r0 = 0; r0 < rows_; r0 += chunk_) {
      const int64_t r1 = std::min(rows_, r0 + chunk_);
      LOWBIT_ASSIGN_OR_RETURN(const TensorView x, read(r0, r1));
      GgufWriteTensor t{gguf_name, {r1 - r0, cols_}, {}, type};
      std::optional<QuantizedTensor> q;
      if (type == GgmlType::kF16 && spec_ && is_fp16_cast(*spec_)) {  // as emit_f32's direct_f16: F16 of the values themselves
        LOWBIT_RETURN_IF_ERROR(check_cast(x, r0));
      } else if (spec_) {
        LOWBIT_ASSIGN_OR_RETURN(q, quantize_rows(x, r0));
        if (type == GgmlType::kF32 || type == GgmlType::kF16) {
          LOWBIT_RETURN_IF_ERROR(dequantize(*q, x));
          q.reset();
        }
      }
      if (q) {
        t.quant = &*q;
      } else {
        t.data = std::span<const float>(x.data_as<float>(), static_cast<size_t>(x.numel()));
      }
      LOWBIT_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, encode_gguf_tensor(t));
      LOWBIT_RETURN_IF_ERROR(emit(std::as_bytes(std::span<const uint8_t>(bytes))));
    }
    return OkStatus();
  }
  // The entries write_quantized_safetensors would give `hf_name` (qweight, scales, zeros), produced
  // by this stream; `self` outlives the write.
  std::vector<SafetensorsPiecewiseEntry> quantized_entries(const std::string& hf_name) {
    const QuantSpec& spec = *spec_;
    const BlockGrid g = block_grid(spec, rows_, cols_);
    const int64_t row_bytes = static_cast<int64_t>(packed_bytes(spec.element, static_cast<size_t>(cols_)));
    std::vector<SafetensorsPiecewiseEntry> e;
    e.push_back({hf_name + ".qweight", DType::kU8, {rows_, row_bytes}, [this](const auto& emit) { return emit_codes(emit); }});
    e.push_back({hf_name + ".scales", quantized_scale_dtype(spec.scale_format), {g.grid_rows, g.grid_cols},
                 [this](const auto& emit) { return emit_scales(emit); }});
    if (!spec.symmetric) {
      e.push_back({hf_name + ".zeros", DType::kI32, {g.grid_rows, g.grid_cols}, [this](const auto& emit) { return emit_zeros(emit); }});
    }
    return e;
  }

 private:
  // Rows [r0, r1) as f32, in one buffer reused by every chunk (a fresh one per chunk cost page
  // faults and zeroing on every chunk); valid until the next read.
  Result<TensorView> read(int64_t r0, int64_t r1) {
    if (!reader_) {
      LOWBIT_ASSIGN_OR_RETURN(DirectRowReader r, DirectRowReader::open(ck_.weights, hf_, {rows_, cols_}));
      reader_.emplace(std::move(r));
      rows_f32_.resize(static_cast<size_t>(chunk_ * cols_));
    }
    const std::span<float> out(rows_f32_.data(), static_cast<size_t>((r1 - r0) * cols_));
    LOWBIT_RETURN_IF_ERROR(reader_->rows_into(r0, r1, out));
    if (r1 < rows_) reader_->prefetch(r1, std::min(rows_, r1 + chunk_));  // chunks are read in order: the next one meanwhile
    return TensorView(out.data(), DType::kF32, {r1 - r0, cols_});
  }
  // quantize() of rows [r0, r0 + x.rows), refusing what quantize_model's cast check refuses
  // (a value the unit-scale cast would clamp), with the index in the whole table.
  Result<QuantizedTensor> quantize_rows(ConstTensorView x, int64_t r0) const {
    if (spec_->scale_rule == ScaleRule::kUnit) LOWBIT_RETURN_IF_ERROR(check_cast(x, r0));
    return quantize(x, *spec_, {.name = name_});
  }
  // A unit-scale cast's checks on rows [r0, r0 + x.rows): every value finite (quantize()'s rule)
  // and within the element's range (quantize_model's: the cast would clamp it); the index is
  // the whole table's.
  Status check_cast(ConstTensorView x, int64_t r0) const {
    const QuantSpec& spec = *spec_;
    const double max = traits(spec.element).max_finite;
    const float maxf = static_cast<float>(max);  // exact: every element format's range fits a float
    const float* v = x.data_as<float>();
    const int64_t n = x.numel();
    std::atomic<bool> any_bad{false};  // one vector pass on every thread; the loop below names the first bad value
    parallel_for(0, n, int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      bool b = false;
#pragma omp simd reduction(| : b)
      for (int64_t i = i0; i < i1; ++i) b |= !(std::fabs(v[i]) <= maxf);
      if (b) any_bad = true;
    });
    const bool bad = any_bad.load();
    for (int64_t i = 0; bad && i < n; ++i) {
      if (!(std::fabs(v[i]) <= maxf)) {
        const int64_t at = r0 * cols_ + i;
        if (std::isnan(v[i])) {
          return InvalidArgument(fmt::format("{}: NaN at row {}, column {} (of {} x {}); quantize needs finite values", name_,
                                             at / cols_, at % cols_, rows_, cols_));
        }
        return InvalidArgument(fmt::format("{}: value {} at index {} is beyond {}'s +-{:g}, which the plan's {} cast would "
                                           "clamp; keep it fp32 (--plan '{{\"{}\": \"fp32\"}}')",
                                           name_, v[i], at, format_name(spec.element), max, to_string(spec), name_));
      }
    }
    return OkStatus();
  }

  const HfCheckpoint& ck_;
  std::string hf_, name_;
  int64_t rows_, cols_;
  std::optional<QuantSpec> spec_;
  int64_t chunk_ = 0;
  bool one_scale_row_ = false;  // the whole table has one row of blocks: every chunk has the same scales
  std::vector<uint8_t> scale_codes_;
  std::vector<int32_t> zeros_;
  std::optional<DirectRowReader> reader_;  // opened by the first read
  std::vector<float> rows_f32_;            // chunk_ rows: what read() returns
};

std::optional<QuantSpec> plan_spec(const QuantPlan& p, std::string_view name) {
  const PlanEntry* e = p.find(std::string(name));
  return e ? e->spec : std::nullopt;
}

}  // namespace

// Allocator arenas, output and checkpoint buffers, thread stacks: a margin, not a measured part.
constexpr int64_t kStreamMargin = int64_t{64} << 20;
constexpr int64_t kBlasWorkBytes = int64_t{128} << 20;

int64_t StreamMemory::peak() const { return std::max({load(), calibrate(), quantize(), rest}) + base + kStreamMargin; }

std::string StreamMemory::formula() const {
  const auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
  const std::string next = prefetch ? fmt::format(" + next block being read {:.0f}", mib(stored_block)) : "";
  const std::string buffers = prefetch ? fmt::format(" + read buffers (this block's, the next being read) {:.0f}", mib(read_buffers())) : "";
  return fmt::format(
      "peak = max(load, calibrate, quantize, rest) + base + 64 MiB margin = {:.0f} MiB\n"
      "  load      = f32 block {:.0f} + stored block (read buffer) {:.0f}{} + calibration stream {:.0f} = {:.0f} MiB\n"
      "  calibrate = f32 block {:.0f} + statistics {:.0f} + window buffers and X^T X {:.0f} + calibration stream {:.0f} + BLAS {:.0f}{} = {:.0f} MiB\n"
      "  quantize  = f32 block {:.0f} + Hessians still needed {:.0f} + GPTQ factor and working copy {:.0f} + calibration stream {:.0f} + BLAS {:.0f} + scale blocks {:.0f}{} = {:.0f} MiB\n"
      "  rest      = embedding / classifier, {} MiB of f32 rows at a time (+ stored rows, two chunks), + the table's scales = {:.0f} MiB\n"
      "  base      = process without a model {:.0f} MiB\n",
      mib(peak()), mib(block_f32), mib(stored_block), next, mib(activations), mib(load()), mib(block_f32), mib(statistics), mib(calib_temp),
      mib(activations), mib(blas), buffers, mib(calibrate()), mib(block_f32), mib(statistics_gptq), mib(gptq), mib(activations), mib(blas), mib(quant_temp),
      buffers, mib(quantize()),
      kRestChunkBytes >> 20, mib(rest), mib(base));
}

namespace {

// What one block's quantized linears keep, the most over the blocks (packed codes, packed scale
// codes, and the float scales and zero points a QuantizedTensor holds beside them), and
// quantize()'s per-scale-block temporaries for the largest linear (statistics 12, scale 16 and
// scale code 4 bytes a block).
std::pair<int64_t, int64_t> code_bytes(const QuantPlan& plan) {
  std::map<int, int64_t> kept;
  int64_t temp = 0;
  for (const PlanEntry& e : plan.entries) {
    if (!e.spec || e.shape.size() != 2 || !e.name.starts_with("layers.")) continue;
    const int64_t rows = e.shape[0], cols = e.shape[1];
    int64_t bytes = 0, blocks = 0;
    if (e.spec->ggml != GgmlType::kF32) {
      bytes = ggml_row_bytes(e.spec->ggml, cols) * rows;
    } else {
      const BlockGrid g = block_grid(*e.spec, rows, cols);
      blocks = g.grid_rows * g.grid_cols;
      bytes = rows * static_cast<int64_t>(packed_bytes(e.spec->element, static_cast<size_t>(cols))) +
              static_cast<int64_t>(packed_bytes(e.spec->scale_format, static_cast<size_t>(blocks))) + 4 * blocks * (e.spec->symmetric ? 1 : 2);
    }
    kept[std::atoi(e.name.c_str() + 7)] += bytes;
    temp = std::max(temp, 32 * blocks);
  }
  int64_t most = 0;
  for (const auto& [layer, b] : kept) most = std::max(most, b);
  return {most, temp};
}

}  // namespace

StreamMemory stream_memory(const LlamaConfig& c, DType stored, Method method, const QuantPlan& plan, int64_t calib_tokens, int64_t window) {
  const int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
  const int64_t params = 2 * d + 2 * d * d + 2 * kv * d + 3 * h * d;
  const int64_t widest = std::max(d, h);
  StreamMemory m;
  m.stored_block = params * static_cast<int64_t>(dtype_size(stored)) + 9 * 2 * 4096;  // + each tensor's read rounded out to 4 KiB
  m.prefetch = method == Method::kRtn;
  // RTN and GPTQ read the loaded f32 weights in place; AWQ / SmoothQuant rescale a clone. + the plan's codes and scales.
  const bool in_place = method == Method::kRtn || method == Method::kGptq;
  const auto [codes, quant_temp] = code_bytes(plan);
  m.block_f32 = (in_place ? 1 : 2) * 4 * params + 2 * codes;  // + codes and scales twice (the pipeline's, the save's copy)
  m.quant_temp = quant_temp;
  const bool calib = method != Method::kRtn;
  if (method == Method::kGptq) {
    m.statistics = 8 * (3 * d * d + h * h);          // Hessians of the four input sites, double
    m.statistics_gptq = 8 * (d * d + h * h);         // at w1 / w2: the FFN input and hidden Hessians (the attention ones are freed)
    // float factor of the widest input (4·W²; the Cholesky and the triangular inverse run in place)
    // + the updated copy of W + codes. Not covered: the double retry when the float Cholesky fails
    // (an ill-conditioned H), which needs 3x the factor's bytes (a double factor, then its float copy).
    m.gptq = 4 * widest * widest + 4 * h * d + h * d / 2;
  } else if (calib) {
    m.statistics = 4 * 3 * (3 * d + h);
  }
#if LOWBIT_HAVE_OPENBLAS
  // OpenBLAS's work space for the calibration GEMMs, Xᵀ X and the factor's products, which its API
  // does not itemize: at the 8B width with GPTQ the peak was 119 MiB above the itemized terms, the
  // same on 1 and 2 threads (4360 / 4361 MiB measured, 4241 counted; docs/results.md), so one term.
  if (calib) m.blas = kBlasWorkBytes;
#endif
  if (calib) {
    m.activations = 2 * calib_tokens * d * 4;
    // one window's block buffers, and for GPTQ the float Xᵀ X of the widest site
    m.calib_temp = window * (8 * d + 3 * h + window * c.n_heads) * 4 + (method == Method::kGptq ? 4 * widest * widest : 0);
    if (method == Method::kGptq) {  // + each site's rows gathered for the Hessian's next fold (InputStats::add)
      const int64_t fold = InputStats{}.fold_bytes;
      for (int64_t site : {d, d, d, h}) m.calib_temp += std::min(calib_tokens * site * 4, fold + window * site * 4);
    }
  }
  // a chunk of rows: f32, its stored bytes twice (the chunk converted, the next one being read) and
  // its codes (<= 4 bytes each); the classifier's scale codes of the whole table (<= 2 bytes per 16 elements)
  const int64_t chunk = std::clamp<int64_t>(kRestChunkBytes / (4 * std::max<int64_t>(1, d)), 1, std::max<int64_t>(1, v));
  m.rest = chunk * d * (4 + 2 * static_cast<int64_t>(dtype_size(stored)) + 4) + v * d / 8;
  return m;
}

Result<StreamReport> quantize_streaming(const std::string& model_dir, const std::string& out_dir, const StreamOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const bool gguf = opt.save.format == ModelFormat::kGguf;
  LOWBIT_ASSIGN_OR_RETURN(HfCheckpoint ck, open_hf_checkpoint(model_dir));
  LOWBIT_RETURN_IF_ERROR(check_llama_tensors(ck));
  const LlamaConfig& c = ck.config;
  const int L = c.n_layers, n_shards = L + 1;
  const bool needs_calib = opt.pipeline.method != Method::kRtn;

  fs::path out(out_dir);
  if (out.filename().empty()) out = out.parent_path();
  const fs::path work = out.string() + ".partial";
  std::error_code ec;
  if (gguf) {
    if (fs::is_directory(out, ec)) return InvalidArgument(fmt::format("{}: is a folder (a GGUF save is one file)", out.string()));
    LOWBIT_RETURN_IF_ERROR(check_output_path(out.string()));
  } else if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
    return InvalidArgument(fmt::format("{}: exists and is not a folder (a streamed safetensors save is a folder)", out.string()));
  }
  const std::string key = run_key(model_dir, opt);
  StreamReport rep;
  rep.memory = stream_memory(c, ck.stored, opt.pipeline.method, opt.pipeline.plan, [&] {
    int64_t n = 0;
    for (const auto& w : opt.pipeline.calib) n += static_cast<int64_t>(w.size());
    return n;
  }(), opt.pipeline.calib.empty() ? 0 : static_cast<int64_t>(opt.pipeline.calib.front().size()));
  for (const auto& w : opt.pipeline.calib) rep.pipeline.calib_tokens += static_cast<int64_t>(w.size());

  // The metadata of a save of this run's model (activation / KV specs, extra keys); a GGUF's
  // whole layout, fixed before any block runs, and its file, kept across --resume.
  std::map<std::string, std::string> meta;
  std::optional<GgufSaveLayout> gl;
  {
    Model m = skeleton(c);
    LlamaModel net(m);
    PipelineOptions po = opt.pipeline;
    po.calib.clear();
    po.method = Method::kRtn;
    po.first_block = po.end_block = L;
    po.embeddings = false;
    po.residual = nullptr;
    po.on_layer = nullptr;
    LOWBIT_RETURN_IF_ERROR(quantize_model(net, po).status());
    if (gguf) {
      LOWBIT_ASSIGN_OR_RETURN(gl, plan_gguf_save(net, out.string(), opt.save,
                                                 [&](const std::string& name) { return plan_spec(opt.pipeline.plan, name); }));
      rep.warnings = gl->warnings;
    } else {
      LOWBIT_ASSIGN_OR_RETURN(meta, safetensors_shard_metadata(net, out.string(), opt.save));
    }
  }
  std::vector<std::vector<float>> xs;
  int start = 0;
  if (opt.resume && fs::exists(work / kProgress, ec)) {
    LOWBIT_ASSIGN_OR_RETURN(std::string text, read_file((work / kProgress).string()));
    const json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.contains("key") || !j.contains("done") || !j["done"].is_number_integer()) {
      return DataLoss(fmt::format("{}: not a streamed-quantization checkpoint", (work / kProgress).string()));
    }
    if (j["key"] != key) {
      return InvalidArgument(fmt::format("{}: the checkpoint is of another run (model, plan, method or calibration differ); "
                                         "drop --resume to start over", (work / kProgress).string()));
    }
    start = std::clamp(j["done"].get<int>(), 0, L);
    if (needs_calib && start > 0) LOWBIT_RETURN_IF_ERROR(read_residual((work / kResidual).string(), xs, opt, c.dim));
  } else {
    fs::remove_all(work, ec);
    fs::create_directories(work, ec);
    if (ec) return IoError(fmt::format("{}: cannot create the work folder: {}", work.string(), ec.message()));
  }
  rep.first_block = start;

  if (needs_calib && start == 0) {  // the embedding rows of the calibration tokens only
    Model m = skeleton(c);
    const SafetensorsFile* f = ck.weights.file_of("model.embed_tokens.weight");
    xs.resize(opt.pipeline.calib.size());
    for (size_t w = 0; w < xs.size(); ++w) {
      xs[w].resize(opt.pipeline.calib[w].size() * static_cast<size_t>(c.dim));
      for (size_t t = 0; t < opt.pipeline.calib[w].size(); ++t) {
        const int tok = opt.pipeline.calib[w][t];
        if (tok < 0 || tok >= c.vocab_size) return InvalidArgument(fmt::format("calibration token {} is outside the vocab of {}", tok, c.vocab_size));
      }
    }
    (void)f;
    // Row by row through load_f32 would convert the whole table; convert just the rows needed.
    const SafetensorsTensorInfo* info = f->find("model.embed_tokens.weight");
    const std::span<const std::byte> src = f->data(*info);
    const size_t esize = dtype_size(info->dtype);
    for (size_t w = 0; w < xs.size(); ++w) {
      for (size_t t = 0; t < opt.pipeline.calib[w].size(); ++t) {
        const auto* in = reinterpret_cast<const uint8_t*>(src.data()) + static_cast<size_t>(opt.pipeline.calib[w][t]) * c.dim * esize;
        const std::span<const uint8_t> bytes(in, static_cast<size_t>(c.dim) * esize);
        const std::span<float> dst(xs[w].data() + t * c.dim, static_cast<size_t>(c.dim));
        switch (info->dtype) {
          case DType::kF16: decode_span(Format::kFp16, bytes, dst); break;
          case DType::kBF16: decode_span(Format::kBf16, bytes, dst); break;
          default: std::memcpy(dst.data(), in, bytes.size()); break;
        }
      }
    }
    release_pages(ck.weights, "model.embed_tokens.weight");
  }

  PatchFile gguf_file;
  const auto put = [&](const std::string& name, std::span<const std::byte> bytes, uint64_t at) -> Status {
    const size_t i = gl->index(name);
    if (at + bytes.size() > gl->layout.sizes[i]) {
      return Internal(fmt::format("{}: {} has {} bytes in the layout, written up to {}", out.string(), name, gl->layout.sizes[i], at + bytes.size()));
    }
    return gguf_file.write_at(gl->layout.offsets[i] + at, bytes);
  };
  if (gguf) {
    const fs::path data = work / kGgufData;
    if (start > 0 && !fs::exists(data, ec)) return DataLoss(fmt::format("{}: missing; drop --resume to start over", data.string()));
    LOWBIT_ASSIGN_OR_RETURN(gguf_file, PatchFile::open(data.string(), gl->layout.file_size, /*keep=*/start > 0));
    LOWBIT_RETURN_IF_ERROR(gguf_file.write_at(0, std::as_bytes(std::span(gl->layout.header))));
  }

  const char* stop_env = std::getenv(kStreamStopEnv);
  const int stop_after = stop_env ? std::atoi(stop_env) : -1;
  std::vector<Tensor> arena;  // the block's f32 tensors, reused by every block
  // Block l + 1 is read while block l converts and computes where that is most of the time (RTN:
  // the disk and the CPU at once); the calibrated methods, whose blocks compute for a minute, read
  // each block when they need it and free the buffer (each buffer is the stored block: memory).
  // Two buffers: block l + 1 is being read while block l is converted from the other.
  const bool overlap = !needs_calib;
  TensorPrefetch pf0(ck.weights), pf1(ck.weights);
  const auto pf_of = [&](int l) -> TensorPrefetch& { return l % 2 ? pf1 : pf0; };
  if (start < L) LOWBIT_RETURN_IF_ERROR(prefetch_block(pf_of(start), c, start));
  for (int l = start; l < L; ++l) {
    const auto tb = std::chrono::steady_clock::now();
    const double cb = cpu_seconds();
    Model m = skeleton(c);
    TensorPrefetch& pf = pf_of(l);
    if (l > start && !overlap) LOWBIT_RETURN_IF_ERROR(prefetch_block(pf, c, l));
    LOWBIT_RETURN_IF_ERROR(pf.wait());
    if (overlap && l + 1 < L) LOWBIT_RETURN_IF_ERROR(prefetch_block(pf_of(l + 1), c, l + 1));
    LOWBIT_RETURN_IF_ERROR(load_block(m, ck, pf, l, &rep.bytes_read, arena));
    if (!overlap) pf.release();
    LlamaModel net(m);
    PipelineOptions po = opt.pipeline;
    po.first_block = l;
    po.end_block = l + 1;
    po.embeddings = false;
    po.residual = needs_calib ? &xs : nullptr;
    po.on_layer = nullptr;
    po.runnable = needs_calib;  // RTN's blocks are saved, never run: no kernel packing
    LOWBIT_ASSIGN_OR_RETURN(PipelineReport pr, quantize_model(net, po));
    rep.pipeline.linears.insert(rep.pipeline.linears.end(), pr.linears.begin(), pr.linears.end());
    rep.pipeline.peak_activation_bytes = std::max(rep.pipeline.peak_activation_bytes, pr.peak_activation_bytes);
    if (gguf) {
      LOWBIT_ASSIGN_OR_RETURN(const auto data, gguf_block_data(net, l, out.string(), opt.save));
      for (const auto& [name, bytes] : data) {
        if (bytes.size() != gl->layout.sizes[gl->index(name)]) return Internal(fmt::format("{}: {} is not the size its layout says", out.string(), name));
        LOWBIT_RETURN_IF_ERROR(put(name, std::as_bytes(std::span<const uint8_t>(bytes)), 0));
      }
      LOWBIT_RETURN_IF_ERROR(gguf_file.sync());
    } else {
      LOWBIT_RETURN_IF_ERROR(save_safetensors_shard(net, (work / shard_name(l, n_shards)).string(), l, l + 1, false, false, opt.save).status());
    }
    if (needs_calib) LOWBIT_RETURN_IF_ERROR(write_residual((work / kResidual).string(), xs));
    LOWBIT_RETURN_IF_ERROR(write_file_atomic((work / kProgress).string(), json({{"key", key}, {"done", l + 1}}).dump() + "\n"));
    rep.block_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - tb).count());
    rep.block_cpu_seconds.push_back(cpu_seconds() - cb);
    if (opt.on_block) opt.on_block(l, L);
    if (l == stop_after) return Internal(fmt::format("stopped after block {} ({} is set)", l, kStreamStopEnv));
  }

  arena.clear();

  // The rest: embedding (+ final norm) and the classifier, each read, cast / quantized and
  // written a chunk of rows at a time (RowStream), in the last shard(s); the tensors, names and
  // metadata are save_safetensors_shard's after quantize_model.
  const auto t_rest = std::chrono::steady_clock::now();
  const double c_rest = cpu_seconds();
  const bool untied = !c.shared_classifier && ck.weights.file_of("lm_head.weight") != nullptr;
  const std::optional<QuantSpec> emb_spec = plan_spec(opt.pipeline.plan, "tok_embeddings");
  const std::optional<QuantSpec> head_spec = untied ? plan_spec(opt.pipeline.plan, "classifier") : std::nullopt;
  const bool classifier_stored = untied || emb_spec.has_value();  // what config.json's tie_word_embeddings must say
  const int64_t chunk_rows = [&] {
    const char* env = std::getenv(kStreamChunkRowsEnv);
    const int64_t n = env ? std::atoll(env) : 0;
    return n > 0 ? n : std::max<int64_t>(1, kRestChunkBytes / (4 * std::max<int64_t>(1, c.dim)));
  }();
  LOWBIT_ASSIGN_OR_RETURN(Tensor final_norm, load_f32(ck.weights, "model.norm.weight", {c.dim}));
  rep.bytes_read += static_cast<int64_t>(ck.weights.file_of("model.norm.weight")->find("model.norm.weight")->end -
                                         ck.weights.file_of("model.norm.weight")->find("model.norm.weight")->begin);
  const auto stored_bytes = [&](const std::string& name) {
    const SafetensorsTensorInfo* i = ck.weights.file_of(name)->find(name);
    return static_cast<int64_t>(i->end - i->begin);
  };
  if (gguf) {  // token_embd, output_norm, output (when stored) at their offsets; the file renamed into place
    const auto rows_of = [&](const std::string& name, RowStream& rs) -> Status {
      const size_t i = gl->index(name);
      uint64_t at = 0;
      LOWBIT_RETURN_IF_ERROR(rs.emit_gguf(name, gl->tensors[i].type, [&](std::span<const std::byte> b) {
        const Status st = put(name, b, at);
        at += b.size();
        return st;
      }));
      if (at != gl->layout.sizes[i]) return Internal(fmt::format("{}: {} wrote {} of its {} bytes", out.string(), name, at, gl->layout.sizes[i]));
      return OkStatus();
    };
    RowStream emb(ck, "model.embed_tokens.weight", kTokEmbeddingsName, c.vocab_size, c.dim, emb_spec, chunk_rows);
    LOWBIT_RETURN_IF_ERROR(rows_of("token_embd.weight", emb));
    rep.bytes_read += stored_bytes("model.embed_tokens.weight");
    LOWBIT_RETURN_IF_ERROR(put("output_norm.weight", std::as_bytes(std::span<const float>(final_norm.data_as<float>(), static_cast<size_t>(c.dim))), 0));
    if (std::any_of(gl->tensors.begin(), gl->tensors.end(), [](const GgufTensorDecl& t) { return t.name == "output.weight"; })) {
      const std::string src = untied ? "lm_head.weight" : "model.embed_tokens.weight";
      RowStream head(ck, src, untied ? "classifier" : kTokEmbeddingsName, c.vocab_size, c.dim, untied ? head_spec : emb_spec, chunk_rows);
      LOWBIT_RETURN_IF_ERROR(rows_of("output.weight", head));
      rep.bytes_read += stored_bytes(src);
    }
    LOWBIT_RETURN_IF_ERROR(gguf_file.close());
    rep.rest_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_rest).count();
    rep.rest_cpu_seconds = cpu_seconds() - c_rest;
    fs::rename(work / kGgufData, out, ec);
    if (ec) return IoError(fmt::format("{}: cannot move the finished file into place: {}", out.string(), ec.message()));
    fs::remove_all(work, ec);
    rep.bytes_written = static_cast<int64_t>(fs::file_size(out, ec));
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rep.peak_rss_bytes = current_peak_rss();
    return rep;
  }
  {
    RowStream emb(ck, "model.embed_tokens.weight", "tok_embeddings", c.vocab_size, c.dim, emb_spec, chunk_rows);
    RowStream tied_head(ck, "model.embed_tokens.weight", "tok_embeddings", c.vocab_size, c.dim, emb_spec, chunk_rows);
    std::vector<SafetensorsPiecewiseEntry> entries;
    std::map<std::string, std::string> m = meta;
    if (!untied && emb_spec) {  // the tied classifier is the embedding's quantized table
      entries = tied_head.quantized_entries("lm_head.weight");
      m.insert(quantization_config_entry({{"lm_head.weight", {*emb_spec, {c.vocab_size, c.dim}}}}));
    }
    const bool f16 = emb_spec && is_fp16_cast(*emb_spec);  // as save_model stores it
    entries.push_back({"model.embed_tokens.weight", f16 ? DType::kF16 : DType::kF32, {c.vocab_size, c.dim},
                       [&, f16](const auto& emit) { return emb.emit_f32(emit, f16); }});
    const std::span<const std::byte> norm = std::as_bytes(std::span<const float>(final_norm.data_as<float>(), static_cast<size_t>(c.dim)));
    entries.push_back({"model.norm.weight", DType::kF32, {c.dim}, [norm](const auto& emit) { return emit(norm); }});
    LOWBIT_RETURN_IF_ERROR(write_safetensors_piecewise((work / (shard_name(L, n_shards) + ".emb")).string(), entries, m));
    rep.bytes_read += stored_bytes("model.embed_tokens.weight");
  }
  std::vector<std::string> last_parts = {shard_name(L, n_shards) + ".emb"};
  if (untied) {
    RowStream head(ck, "lm_head.weight", "classifier", c.vocab_size, c.dim, head_spec, chunk_rows);
    std::vector<SafetensorsPiecewiseEntry> entries;
    std::map<std::string, std::string> m = meta;
    if (head_spec) {
      entries = head.quantized_entries("lm_head.weight");
      m.insert(quantization_config_entry({{"lm_head.weight", {*head_spec, {c.vocab_size, c.dim}}}}));
    } else {
      entries.push_back({"lm_head.weight", DType::kF32, {c.vocab_size, c.dim}, [&](const auto& emit) { return head.emit_f32(emit); }});
    }
    LOWBIT_RETURN_IF_ERROR(write_safetensors_piecewise((work / (shard_name(L, n_shards) + ".head")).string(), entries, m));
    rep.bytes_read += stored_bytes("lm_head.weight");
    last_parts.push_back(shard_name(L, n_shards) + ".head");
  }
  rep.rest_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_rest).count();
  rep.rest_cpu_seconds = cpu_seconds() - c_rest;
  // The classifier's file stands as shard n+1 (its name and metadata are the save's own).
  std::vector<std::string> shards;
  for (int l = 0; l < L; ++l) shards.push_back(shard_name(l, n_shards + static_cast<int>(last_parts.size()) - 1));
  for (int l = 0; l < L; ++l) fs::rename(work / shard_name(l, n_shards), work / shards[static_cast<size_t>(l)], ec);
  for (size_t i = 0; i < last_parts.size(); ++i) {
    const std::string name = shard_name(L + static_cast<int>(i), n_shards + static_cast<int>(last_parts.size()) - 1);
    fs::rename(work / last_parts[i], work / name, ec);
    if (ec) return IoError(fmt::format("{}: cannot rename {}: {}", work.string(), last_parts[i], ec.message()));
    shards.push_back(name);
  }

  // Index, config and tokenizer; then the folder is swapped in.
  json wm = json::object();
  int64_t total = 0;
  for (const std::string& s : shards) {
    LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile f, open_safetensors((work / s).string()));
    for (const SafetensorsTensorInfo& t : f.tensors()) {
      wm[t.name] = s;
      total += static_cast<int64_t>(t.end - t.begin);
    }
  }
  LOWBIT_RETURN_IF_ERROR(write_file_atomic((work / kShardIndexName).string(),
                                           json({{"metadata", {{"total_size", total}}}, {"weight_map", wm}}).dump(2) + "\n"));
  {
    Model m = skeleton(c);
    m.config.shared_classifier = !classifier_stored;
    static const float one = 0.0f;
    const int64_t shape[2] = {1, 1};
    m.weights.classifier = ConstTensorView(&one, DType::kF32, std::span<const int64_t>(shape, 2));
    LOWBIT_RETURN_IF_ERROR(save_safetensors_sidecar(LlamaModel(m), work.string(), opt.save));
  }
  fs::remove(work / kProgress, ec);
  fs::remove(work / kResidual, ec);
  for (const fs::directory_entry& e : fs::directory_iterator(work, ec)) rep.bytes_written += static_cast<int64_t>(e.file_size(ec));
  if (fs::exists(out, ec)) {
    const fs::path aside = out.string() + ".old";
    fs::remove_all(aside, ec);
    fs::rename(out, aside, ec);
    if (ec) return IoError(fmt::format("{}: cannot move the old folder aside: {}", out.string(), ec.message()));
    fs::rename(work, out, ec);
    if (ec) return IoError(fmt::format("{}: cannot move the finished folder into place: {}", out.string(), ec.message()));
    fs::remove_all(aside, ec);
  } else {
    fs::rename(work, out, ec);
    if (ec) return IoError(fmt::format("{}: cannot move the finished folder into place: {}", out.string(), ec.message()));
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.peak_rss_bytes = current_peak_rss();
  return rep;
}

}  // namespace lowbit
