// The training loop, the train/validation split of a story file, and checkpoints.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <utility>

#include <fmt/format.h>

#include "lowbit/file.h"
#include "lowbit/llama.h"
#include "lowbit/save.h"
#include "lowbit/train.h"

namespace lowbit {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): a counter-based hash for window positions.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr char kStateMagic[4] = {'L', 'B', 'T', 'S'};
constexpr uint32_t kStateVersion = 2;  // 2: the run's flags and training data (run_signature)

// What a bit-exact resume needs to be the same run: every flag that changes the arithmetic of a
// step (by its CLI name) and a hash of the training tokens (--data / --tokenizer). Validation
// flags (--val-windows, --eval-every) and outputs may change. One "flag value" per line.
std::string run_signature(const TrainOptions& o, const std::vector<int>& train) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64 over the token ids
  for (int t : train) {
    for (int b = 0; b < 4; ++b) {
      h ^= (static_cast<uint32_t>(t) >> (8 * b)) & 0xFF;
      h *= 1099511628211ull;
    }
  }
  const LossScaleOptions& ls = o.loss_scale;
  return fmt::format(
      "--steps {}\n--batch {}\n--ctx {}\n--accum {}\n--lr {}\n--warmup {}\nmin-lr-ratio {}\n--clip {}\n--weight-decay {}\n"
      "--bf16-moments {}\n--loss-scale {}\n--seed {}\n--data {} training tokens, hash {:016x}\n",
      o.steps, o.batch, o.ctx, o.accum, o.lr, o.warmup, o.min_lr_ratio, o.clip, o.weight_decay, o.bf16_moments,
      ls.dynamic ? fmt::format("dynamic (start {}, growth every {}, min {})", ls.scale, ls.growth_interval, ls.min_scale)
                 : fmt::format("{}", ls.scale),
      o.seed, train.size(), h);
}

}  // namespace

Result<StorySplit> split_stories_for_training(const std::vector<std::string>& stories, const std::string& name) {
  const size_t n = stories.size();
  const size_t calib = static_cast<size_t>(std::ceil(kCalibFraction * static_cast<double>(n)));
  const size_t val = static_cast<size_t>(std::ceil(kValidationFraction * static_cast<double>(n)));
  if (n == 0 || calib + val >= n) {
    return InvalidArgument(fmt::format("{}: {} stories leave none to train on (the first 10% are calibration text, the last 10% validation)", name, n));
  }
  StorySplit s;
  s.train.assign(stories.begin() + static_cast<std::ptrdiff_t>(calib), stories.end() - static_cast<std::ptrdiff_t>(val));
  s.val.assign(stories.end() - static_cast<std::ptrdiff_t>(val), stories.end());
  return s;
}

Trainer::Trainer(TrainModel model, const TrainOptions& opt, std::vector<int> train, std::vector<int> val)
    : model_(std::move(model)),
      o_(opt),
      opt_(model_, {.lr = opt.lr, .weight_decay = opt.weight_decay, .clip = opt.clip, .bf16_moments = opt.bf16_moments}, opt.loss_scale),
      train_(std::move(train)),
      val_(std::move(val)) {}

Result<Trainer> Trainer::create(TrainModel model, const TrainOptions& opt, std::vector<int> train_tokens, std::vector<int> val_tokens) {
  auto bad = [](std::string_view flag, int64_t v, std::string_view want) {
    return InvalidArgument(fmt::format("train: {} {}: expected {}", flag, v, want));
  };
  if (opt.steps < 1) return bad("--steps", opt.steps, ">= 1");
  if (opt.batch < 1) return bad("--batch", opt.batch, ">= 1");
  if (opt.accum < 1) return bad("--accum", opt.accum, ">= 1");
  if (opt.ctx < 1 || opt.ctx > model.config().seq_len) {
    return bad("--ctx", opt.ctx, fmt::format("1 .. the model's context {}", model.config().seq_len));
  }
  if (opt.val_windows < 1) return bad("--val-windows", opt.val_windows, ">= 1");
  if (!(opt.lr > 0.0f) || !std::isfinite(opt.lr)) return InvalidArgument(fmt::format("train: --lr {}: expected a finite value > 0", opt.lr));
  if (!(opt.loss_scale.scale > 0.0f) || !std::isfinite(opt.loss_scale.scale)) {
    return InvalidArgument(fmt::format("train: --loss-scale {}: expected a finite value > 0", opt.loss_scale.scale));
  }
  if (static_cast<int64_t>(train_tokens.size()) < opt.ctx + 1) {
    return InvalidArgument(fmt::format("train: the training split has {} tokens; one window needs --ctx {} + 1", train_tokens.size(), opt.ctx));
  }
  if (static_cast<int64_t>(val_tokens.size()) < opt.ctx + 1) {
    return InvalidArgument(fmt::format("train: the validation split has {} tokens; one window needs --ctx {} + 1", val_tokens.size(), opt.ctx));
  }
  for (const std::vector<int>* v : {&train_tokens, &val_tokens}) {
    for (int t : *v) {
      if (t < 0 || t >= model.config().vocab_size) {
        return InvalidArgument(fmt::format("train: token id {} outside the model's vocab of {} (a tokenizer for another model?)", t, model.config().vocab_size));
      }
    }
  }
  return Trainer(std::move(model), opt, std::move(train_tokens), std::move(val_tokens));
}

Result<TrainLogEntry> Trainer::step() {
  const int B = o_.batch, T = o_.ctx;
  const int64_t span = static_cast<int64_t>(train_.size()) - T;  // window starts 0 .. span-1 (targets need +1)
  std::vector<int> in(static_cast<size_t>(B * T)), tg(static_cast<size_t>(B * T));
  model_.zero_grad();
  const float scale = opt_.loss_scale();
  double loss_sum = 0.0;
  for (int k = 0; k < o_.accum; ++k) {
    for (int b = 0; b < B; ++b) {
      const uint64_t h = mix(mix(mix(mix(o_.seed) ^ static_cast<uint64_t>(step_)) ^ static_cast<uint64_t>(k)) ^ static_cast<uint64_t>(b));
      const int64_t start = static_cast<int64_t>(h % static_cast<uint64_t>(span));
      std::memcpy(&in[static_cast<size_t>(b * T)], &train_[static_cast<size_t>(start)], sizeof(int) * static_cast<size_t>(T));
      std::memcpy(&tg[static_cast<size_t>(b * T)], &train_[static_cast<size_t>(start + 1)], sizeof(int) * static_cast<size_t>(T));
    }
    Result<float> loss = model_.forward(in, tg, B, T);
    if (!loss.ok()) return Status(loss.status().code(), fmt::format("step {}: {}", step_ + 1, loss.status().message()));
    if (!std::isfinite(*loss)) {
      return InvalidArgument(fmt::format("step {}: the training loss is {} (diverged; lower --lr or use --loss-scale dynamic)", step_ + 1, *loss));
    }
    loss_sum += *loss;
    LOWBIT_RETURN_IF_ERROR(model_.backward(scale / static_cast<float>(o_.accum)));
  }
  const LrSchedule sched{.peak = o_.lr, .warmup = o_.warmup, .total = o_.steps, .min_ratio = o_.min_lr_ratio};
  const StepResult r = opt_.step(model_, lr_at(sched, step_));
  // An overflow with nothing left to adjust is divergence, not a step to skip forever.
  if (r.skipped && (!o_.loss_scale.dynamic || scale <= o_.loss_scale.min_scale)) {
    return InvalidArgument(fmt::format("step {}: non-finite gradient at loss scale {} (diverged; lower --lr{})", step_ + 1, scale,
                                       o_.loss_scale.dynamic ? "" : " or use --loss-scale dynamic"));
  }
  // A weight past what a checkpoint may hold (load_model's bound, include/lowbit/model.h) is
  // divergence too: stop before such a state can be saved as the last good checkpoint.
  if (!r.skipped) {
    constexpr float kMaxAbsWeight = 1e6f;
    const std::span<const float> p = std::as_const(model_).params();
    for (const ParamInfo& info : model_.param_info()) {
      for (int64_t i = 0; i < info.numel(); ++i) {
        const float x = p[static_cast<size_t>(info.offset + i)];
        if (!(std::fabs(x) <= kMaxAbsWeight)) {
          return InvalidArgument(fmt::format("step {}: weight {}[{}] reached {} (diverged; lower --lr)", step_ + 1, info.name, i, x));
        }
      }
    }
  }
  ++step_;
  TrainLogEntry e;
  e.step = step_;
  e.loss = loss_sum / o_.accum;
  e.lr = r.lr;
  e.grad_norm = r.grad_norm;
  e.loss_scale = r.loss_scale;
  e.skipped = r.skipped;
  e.skipped_total = opt_.skipped_steps();
  e.tokens = step_ * o_.accum * int64_t{B} * T;
  return e;
}

Result<double> Trainer::validation_loss() {
  const int T = o_.ctx;
  const int64_t windows = std::min<int64_t>(o_.val_windows, (static_cast<int64_t>(val_.size()) - 1) / T);
  double sum = 0.0;
  int64_t done = 0;
  while (done < windows) {
    const int B = static_cast<int>(std::min<int64_t>(o_.batch, windows - done));
    std::vector<int> in(static_cast<size_t>(B * T)), tg(static_cast<size_t>(B * T));
    for (int b = 0; b < B; ++b) {
      const size_t start = static_cast<size_t>((done + b) * T);
      std::memcpy(&in[static_cast<size_t>(b * T)], &val_[start], sizeof(int) * static_cast<size_t>(T));
      std::memcpy(&tg[static_cast<size_t>(b * T)], &val_[start + 1], sizeof(int) * static_cast<size_t>(T));
    }
    LOWBIT_ASSIGN_OR_RETURN(float loss, model_.forward(in, tg, B, T));
    sum += static_cast<double>(loss) * B;
    done += B;
  }
  return sum / static_cast<double>(windows);
}

std::string Trainer::serialize_state() const {
  std::string s(kStateMagic, 4);
  auto put = [&](const void* d, size_t n) { s.append(static_cast<const char*>(d), n); };
  auto put_str = [&](std::string_view v) {
    const uint64_t n = v.size();
    put(&n, 8);
    put(v.data(), n);
  };
  put(&kStateVersion, 4);
  put(&step_, 8);
  put_str(model_.recipe().name);
  put_str(model_.serialize_scaling());
  put_str(opt_.serialize());
  put_str(run_signature(o_, train_));
  return s;
}

Status Trainer::restore_state(std::string_view b, const std::string& name) {
  auto bad = [&](std::string_view what) { return DataLoss(fmt::format("{}: {}", name, what)); };
  if (b.size() < 16 || std::memcmp(b.data(), kStateMagic, 4) != 0) return bad("not a lowbit training state (magic LBTS)");
  size_t off = 4;
  uint32_t ver = 0;
  int64_t step = 0;
  std::memcpy(&ver, b.data() + off, 4);
  off += 4;
  if (ver != kStateVersion && ver != 1) return bad(fmt::format("version {}, expected 1 or {}", ver, kStateVersion));
  std::memcpy(&step, b.data() + off, 8);
  off += 8;
  auto get_str = [&](std::string_view* out) -> bool {
    uint64_t n = 0;
    if (b.size() - off < 8) return false;
    std::memcpy(&n, b.data() + off, 8);
    off += 8;
    if (n > b.size() - off) return false;
    *out = b.substr(off, n);
    off += n;
    return true;
  };
  std::string_view recipe, scaling, optim, signature;
  if (!get_str(&recipe) || !get_str(&scaling) || !get_str(&optim) || (ver >= 2 && !get_str(&signature)) || off != b.size()) {
    return bad("truncated or corrupt");
  }
  if (recipe != model_.recipe().name) {
    return InvalidArgument(fmt::format("{}: trained with recipe {}; resume it with --recipe {}", name, recipe, recipe));
  }
  if (ver >= 2) {  // version 1 states carry no flags: nothing to compare
    const std::string mine = run_signature(o_, train_);
    size_t a = 0, c = 0;
    while (a < signature.size() && c < mine.size()) {
      const size_t ea = signature.find('\n', a), ec = mine.find('\n', c);
      const std::string_view theirs = signature.substr(a, ea - a), ours = std::string_view(mine).substr(c, ec - c);
      if (theirs != ours) {
        const size_t sp = ours.find(' ');
        return InvalidArgument(fmt::format("{}: {} is '{}' here but '{}' in the checkpoint; resume with the flags (and data) the run was started with",
                                           name, ours.substr(0, sp), ours.substr(sp + 1), theirs.substr(std::min(theirs.size(), sp + 1))));
      }
      a = ea == std::string_view::npos ? signature.size() : ea + 1;
      c = ec == std::string::npos ? mine.size() : ec + 1;
    }
    if (a < signature.size() || c < mine.size()) return bad("truncated or corrupt run flags");
  }
  if (step < 0) return bad("negative step");
  LOWBIT_RETURN_IF_ERROR(model_.deserialize_scaling(scaling, name));
  LOWBIT_RETURN_IF_ERROR(opt_.deserialize(optim, name));
  step_ = step;
  return OkStatus();
}

Status save_checkpoint(const Trainer& t, const std::string& out, const std::string& tokenizer_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target(out);
  if (target.filename().empty()) target = target.parent_path();  // "out/"
  // Replace only what a checkpoint holds, so `-o .` cannot wipe a working directory.
  static constexpr std::string_view kFiles[] = {"model.safetensors", "config.json", "tokenizer.model", "tokenizer.bin", kTrainStateFile};
  if (fs::exists(target, ec)) {
    if (!fs::is_directory(target, ec)) return InvalidArgument(fmt::format("{}: exists and is not a folder (a checkpoint is a folder)", out));
    for (const fs::directory_entry& e : fs::directory_iterator(target, ec)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || std::find(std::begin(kFiles), std::end(kFiles), name) == std::end(kFiles)) {
        return InvalidArgument(fmt::format("{}: exists and holds {}, which a checkpoint does not; not replacing it", out, name));
      }
    }
  }
  // The model and the state go into a fresh sibling folder, which is then swapped in whole.
  const std::string temp = target.string() + fmt::format(".train-tmp.{}", ::getpid());
  fs::remove_all(temp, ec);
  const Model m = t.model().to_model();
  const LlamaModel net(m);
  SaveOptions so{.format = ModelFormat::kSafetensors, .tokenizer_path = tokenizer_path,
                 .extra_metadata = {{"lowbit.train.recipe", t.model().recipe().name},
                                    {"lowbit.train.steps", std::to_string(t.steps_done())}}};
  Status st = save_model(net, temp, so).status();
  if (st.ok()) st = write_file_atomic((fs::path(temp) / kTrainStateFile).string(), t.serialize_state());
  if (st.ok()) {
    const bool exists = fs::exists(target, ec);
    const int rc = exists ? ::renameat2(AT_FDCWD, temp.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE)
                          : ::rename(temp.c_str(), target.c_str());
    if (rc != 0) st = IoError(fmt::format("{}: cannot move the finished checkpoint into place: {}", out, std::strerror(errno)));
  }
  fs::remove_all(temp, ec);  // on success, the previous checkpoint
  return st;
}

Status load_train_state(Trainer& t, const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kTrainStateFile).string();
  LOWBIT_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  return t.restore_state(bytes, path);
}

}  // namespace lowbit

namespace lowbit {

std::string loss_curves_svg(std::span<const LossCurve> curves, const std::string& title) {
  constexpr double W = 720, H = 420, L = 60, R = 150, T = 40, B = 50;
  static constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"};
  double ymin = 1e30, ymax = -1e30;
  int64_t xmax = 1;
  for (const LossCurve& c : curves) {
    for (const auto* v : {&c.train, &c.val}) {
      for (const auto& [s, y] : *v) {
        if (!std::isfinite(y)) continue;
        ymin = std::min(ymin, y);
        ymax = std::max(ymax, y);
        xmax = std::max(xmax, s);
      }
    }
  }
  if (ymin > ymax) ymin = 0, ymax = 1;
  if (ymax - ymin < 1e-9) ymax = ymin + 1e-3;
  auto px = [&](int64_t s) { return L + (W - L - R) * static_cast<double>(s) / static_cast<double>(xmax); };
  auto py = [&](double y) { return H - B - (H - T - B) * (y - ymin) / (ymax - ymin); };
  auto esc = [](const std::string& s) {
    std::string o;
    for (char ch : s) o += ch == '<' ? "&lt;" : ch == '>' ? "&gt;" : ch == '&' ? "&amp;" : std::string(1, ch);
    return o;
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"14\">{3}</text>\n"
      "<line x1=\"{2}\" y1=\"{4}\" x2=\"{5}\" y2=\"{4}\" stroke=\"black\"/>\n<line x1=\"{2}\" y1=\"{6}\" x2=\"{2}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<text x=\"{7}\" y=\"{8}\" text-anchor=\"middle\">step</text>\n"
      "<text x=\"{2}\" y=\"{6}\" text-anchor=\"end\" dx=\"-4\">{9:.3f}</text>\n<text x=\"{2}\" y=\"{4}\" text-anchor=\"end\" dx=\"-4\">{10:.3f}</text>\n"
      "<text x=\"{5}\" y=\"{4}\" text-anchor=\"end\" dy=\"14\">{11}</text>\n"
      "<text x=\"14\" y=\"{12}\" transform=\"rotate(-90 14 {12})\" text-anchor=\"middle\">loss (nats/token); solid train, dashed validation</text>\n",
      W, H, L, esc(title), H - B, W - R, T, (L + W - R) / 2, H - 12, ymax, ymin, xmax, (T + H - B) / 2);
  for (size_t i = 0; i < curves.size(); ++i) {
    const char* col = kColors[i % std::size(kColors)];
    for (int k = 0; k < 2; ++k) {
      const auto& v = k == 0 ? curves[i].train : curves[i].val;
      std::string pts;
      for (const auto& [s, y] : v) {
        if (std::isfinite(y)) pts += fmt::format("{:.1f},{:.1f} ", px(s), py(y));
      }
      svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"{} points=\"{}\"/>\n", col, k == 0 ? 1.2 : 2.0,
                         k == 0 ? "" : " stroke-dasharray=\"5,3\"", pts);
    }
    svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n", W - R + 8, T + 16 * static_cast<double>(i + 1), col, esc(curves[i].recipe));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace lowbit
