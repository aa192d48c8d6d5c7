// TrainModel: the training forward agrees with the inference forward (Session), the whole
// model's gradients agree with jax.grad of an independent jax.numpy Llama (tests/train/
// jax_reference.py, float64), and results are bit-identical on any thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "lowbit/file.h"
#include "lowbit/llama.h"
#include "lowbit/parallel.h"
#include "lowbit/train.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

LlamaConfig odd_config(bool shared) {
  LlamaConfig c;
  c.dim = 6;
  c.hidden_dim = 7;
  c.n_layers = 2;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.vocab_size = 11;
  c.seq_len = 8;
  c.shared_classifier = shared;
  return c;
}

TrainRecipe recipe(std::string_view name) { return find_recipe(name).value(); }

// Random weights of a larger spread than init() so every path carries signal.
TrainModel random_model(const LlamaConfig& c, uint64_t seed, std::string_view r = "fp32") {
  TrainModel m = TrainModel::init(c, seed, recipe(r)).value();
  std::mt19937_64 g(seed + 1);
  std::normal_distribution<float> d(0.0f, 0.5f);
  for (const ParamInfo& p : m.param_info()) {
    for (int64_t i = 0; i < p.numel(); ++i) m.params()[static_cast<size_t>(p.offset + i)] = (p.rows == 1 ? 1.0f : 0.0f) + d(g);
  }
  return m;
}

void random_batch(int B, int T, int V, uint64_t seed, std::vector<int>* in, std::vector<int>* tg) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> u(0, V - 1);
  in->resize(static_cast<size_t>(B * T));
  tg->resize(static_cast<size_t>(B * T));
  for (int& x : *in) x = u(g);
  for (int& x : *tg) x = u(g);
}

void expect_logits_match_inference(TrainModel& tm, int B, int T, uint64_t seed, double tol) {
  const LlamaConfig& c = tm.config();
  std::vector<int> in, tg;
  random_batch(B, T, c.vocab_size, seed, &in, &tg);
  ASSERT_TRUE(tm.forward(in, tg, B, T).ok());
  const Model m = tm.to_model();
  const LlamaModel net(m);
  double worst = 0;
  for (int b = 0; b < B; ++b) {
    Session s(net);
    std::vector<float> logits;
    ASSERT_TRUE(s.forward(std::span(in).subspan(static_cast<size_t>(b * T), static_cast<size_t>(T)), 0, &logits).ok());
    for (int64_t i = 0; i < int64_t{T} * c.vocab_size; ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(logits[static_cast<size_t>(i)]) - tm.logits()[static_cast<size_t>(b * T * c.vocab_size + i)]));
    }
  }
  EXPECT_LT(worst, tol);
}

TEST(TrainModel, ForwardMatchesInferenceOnOddShapes) {
  for (bool shared : {true, false}) {
    TrainModel tm = random_model(odd_config(shared), 3);
    expect_logits_match_inference(tm, 2, 5, 4, 1e-5);
  }
}

TEST(TrainModel, ForwardMatchesInferenceOnStories260K) {
  const std::string path = std::string(LOWBIT_SOURCE_DIR) + "/../shared/models/stories260K.bin";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found (../shared is missing)";
  const Model m = load_model(path).value();
  TrainModel tm = TrainModel::from_model(m, recipe("fp32")).value();
  expect_logits_match_inference(tm, 2, 33, 5, 2e-4);
}

TEST(TrainModel, ToModelAndBackIsExact) {
  TrainModel a = random_model(odd_config(false), 6);
  const Model m = a.to_model();
  TrainModel b = TrainModel::from_model(m, recipe("fp32")).value();
  ASSERT_EQ(a.num_params(), b.num_params());
  for (int64_t i = 0; i < a.num_params(); ++i) ASSERT_EQ(a.params()[static_cast<size_t>(i)], b.params()[static_cast<size_t>(i)]);
}

TEST(TrainModel, BadShapesAreNamed) {
  LlamaConfig c = odd_config(true);
  c.n_kv_heads = 2;  // 3 heads
  Result<TrainModel> m = TrainModel::init(c, 1, recipe("fp32"));
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("kv-heads=2"), std::string::npos) << m.status().message();
  TrainModel ok = random_model(odd_config(true), 1);
  std::vector<int> in(10, 0), tg(10, 11);  // 11 is outside the vocab of 11
  Result<float> l = ok.forward(in, tg, 2, 5);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("vocab of 11"), std::string::npos) << l.status().message();
  EXPECT_FALSE(ok.forward(std::vector<int>(18, 0), std::vector<int>(18, 0), 2, 9).ok());  // T > seq_len 8
}

// One case for jax_reference.py: the model, a batch, and (after the script ran) its answer.
struct JaxCase {
  fs::path dir;
  std::vector<double> grads;
  double loss = 0;
};

void write_jax_case(const TrainModel& tm, const std::vector<int>& in, const std::vector<int>& tg, int B, int T, const fs::path& dir) {
  fs::create_directories(dir);
  const LlamaConfig& c = tm.config();
  std::string params = "[";
  for (const ParamInfo& p : tm.param_info()) {
    params += fmt::format("{}{{\"name\":\"{}\",\"offset\":{},\"rows\":{},\"cols\":{}}}", params.size() > 1 ? "," : "", p.name, p.offset, p.rows, p.cols);
  }
  params += "]";
  std::ofstream(dir / "config.json") << fmt::format(
      "{{\"dim\":{},\"heads\":{},\"kv_heads\":{},\"layers\":{},\"eps\":{},\"theta\":{},\"B\":{},\"T\":{},\"params\":{}}}", c.dim,
      c.n_heads, c.n_kv_heads, c.n_layers, c.norm_eps, c.rope_theta, B, T, params);
  std::ofstream(dir / "params.f32", std::ios::binary).write(reinterpret_cast<const char*>(tm.params().data()), static_cast<std::streamsize>(tm.params().size_bytes()));
  std::vector<int32_t> toks(in.begin(), in.end());
  toks.insert(toks.end(), tg.begin(), tg.end());
  std::ofstream(dir / "tokens.i32", std::ios::binary).write(reinterpret_cast<const char*>(toks.data()), static_cast<std::streamsize>(toks.size() * 4));
}

void read_jax_case(JaxCase& jc, size_t n) {
  jc.grads.assign(n, 0.0);
  std::ifstream gf(jc.dir / "grads.f64", std::ios::binary);
  gf.read(reinterpret_cast<char*>(jc.grads.data()), static_cast<std::streamsize>(n * 8));
  EXPECT_TRUE(gf.good()) << "no gradient in " << jc.dir;
  std::ifstream(jc.dir / "loss.txt") >> jc.loss;
}

// Tolerance: per tensor, max |lowbit - jax| <= 1e-4 · max |jax| (lowbit computes in fp32,
// the reference in fp64; fp32 round-off on these sizes is ~1e-6 relative); the loss to 1e-5.
TEST(TrainModel, GradientsMatchJax) {
  const fs::path root = fs::temp_directory_path() / fmt::format("lowbit_train_jax_{}", ::getpid());
  const int B = 2, T = 5;
  std::vector<TrainModel> models;
  std::vector<float> losses;
  std::vector<JaxCase> cases;
  for (bool shared : {true, false}) {
    TrainModel tm = random_model(odd_config(shared), 11);
    std::vector<int> in, tg;
    random_batch(B, T, 11, 12, &in, &tg);
    tm.zero_grad();
    losses.push_back(tm.forward(in, tg, B, T).value());
    ASSERT_TRUE(tm.backward(1.0f).ok());
    cases.push_back({root / (shared ? "tied" : "untied"), {}, 0});
    write_jax_case(tm, in, tg, B, T, cases.back().dir);
    models.push_back(std::move(tm));
  }
  const std::string cmd = fmt::format("{0}/.venv/bin/python {0}/tests/train/jax_reference.py {1} {2}", LOWBIT_SOURCE_DIR,
                                      cases[0].dir.string(), cases[1].dir.string());
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << " failed (the test venv needs jax: scripts/setup)";
  for (size_t k = 0; k < cases.size(); ++k) {
    SCOPED_TRACE(cases[k].dir.filename().string());
    const TrainModel& tm = models[k];
    read_jax_case(cases[k], tm.grads().size());
    const std::vector<double>& ref = cases[k].grads;
    EXPECT_NEAR(losses[k], cases[k].loss, 1e-5 * std::fabs(cases[k].loss));
    for (const ParamInfo& p : tm.param_info()) {
      double mx = 0, err = 0;
      for (int64_t i = p.offset; i < p.offset + p.numel(); ++i) {
        mx = std::max(mx, std::fabs(ref[static_cast<size_t>(i)]));
        err = std::max(err, std::fabs(ref[static_cast<size_t>(i)] - tm.grads()[static_cast<size_t>(i)]));
      }
      EXPECT_GT(mx, 0.0) << p.name;
      EXPECT_LE(err, 1e-4 * mx) << p.name << ": max |grad| " << mx;
    }
  }
  fs::remove_all(root);
}

// Same bits whatever the thread count, for the fp32 and the fp8-blockwise recipe.
TEST(TrainModel, DeterministicOnAnyThreadCount) {
  LlamaConfig c = odd_config(false);
  // Large enough that every op splits into several parallel chunks.
  c.dim = 96;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.hidden_dim = 260;
  c.vocab_size = 301;
  c.seq_len = 32;
  const int threads = num_threads();
  for (std::string_view r : {"fp32", "fp8-blockwise"}) {
    std::vector<float> grads[2];
    float losses[2];
    for (int k = 0; k < 2; ++k) {
      ASSERT_TRUE(set_num_threads(k == 0 ? 1 : 3).ok());
      TrainModel tm = random_model(c, 21, r);
      std::vector<int> in, tg;
      random_batch(4, 32, c.vocab_size, 22, &in, &tg);
      tm.zero_grad();
      losses[k] = tm.forward(in, tg, 4, 32).value();
      ASSERT_TRUE(tm.backward(1.0f).ok());
      grads[k].assign(tm.grads().begin(), tm.grads().end());
    }
    ASSERT_TRUE(set_num_threads(threads).ok());
    EXPECT_EQ(losses[0], losses[1]) << r;
    EXPECT_TRUE(grads[0] == grads[1]) << r << ": gradients differ between 1 and 3 threads";
  }
}

}  // namespace
}  // namespace lowbit
