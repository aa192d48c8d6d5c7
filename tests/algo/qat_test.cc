// run_qat on stories260K (genuine fp32) and TinyStories text: QAT at w4 trained on the
// calibration split lowers the KLD to the fp32 model on the unseen evaluation split below RTN's
// and GPTQ's; the saved model holds exactly the codes the final master weights quantize to and
// runs bit-identically to the in-memory QAT model.
#include <gtest/gtest.h>

#include <filesystem>

#include <fmt/format.h>

#include "lowbit/eval.h"
#include "lowbit/qat.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"
#include "lowbit/train.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
const std::string kShared = std::string(LOWBIT_SOURCE_DIR) + "/../shared";
const std::string kModel = kShared + "/models/stories260K.bin";
const std::string kTok = kShared + "/models/tok512.bin";
const std::string kText = kShared + "/data/tinystories_val.txt";

TEST(Qat, W4FromGptqBeatsRtnAndGptqOnHeldOutTextAndSavesWhatItTrained) {
  if (!fs::exists(kModel) || !fs::exists(kText)) GTEST_SKIP() << "../shared is missing";
  const Model m = load_model(kModel).value();
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok, m.config.vocab_size).value();
  const std::vector<int> calib = stories_to_tokens(*tok, kText, "calib").value();
  std::vector<int> held_out = stories_to_tokens(*tok, kText, "eval").value();
  held_out.resize(std::min<size_t>(held_out.size(), 64 * 40));

  QatOptions o;
  o.plan = make_plan(m.config, parse_spec("int4:g32:sym:fp16").value(), std::nullopt).value();
  o.init = Method::kGptq;
  o.loss = QatLoss::kKd;
  o.steps = 60;
  o.batch = 4;
  o.ctx = 64;
  o.lr = 1e-3f;
  o.calib_windows = 16;
  const QatResult r = run_qat(m, calib, o).value();
  ASSERT_EQ(r.log.size(), 60u);

  const LlamaModel ref(m);
  const LlamaModel* nets[] = {r.rtn.net.get(), r.init.net.get(), r.qat.net.get()};
  const std::vector<EvalResult> ev = evaluate_many(nets, ref, held_out, {.ctx = 64}).value();
  const double rtn = ev[0].kld_mean, gptq = ev[1].kld_mean, qat = ev[2].kld_mean;
  RecordProperty("kld", fmt::format("rtn {:.5f} gptq {:.5f} qat {:.5f}", rtn, gptq, qat));
  EXPECT_LT(gptq, rtn);
  EXPECT_LT(qat, gptq);
  EXPECT_LT(qat, rtn);

  // The saved codes are the quantization of the final master weights with the saved scales.
  const std::string dir = testing::TempDir() + "/qat_w4_" + std::to_string(::getpid());
  fs::remove_all(dir);
  ASSERT_TRUE(save_model(*r.qat.net, dir, {}).ok());
  const Model loaded = load_model(dir).value();
  const TrainModel master = TrainModel::from_model(*r.master, find_recipe("fp32").value()).value();
  ASSERT_EQ(r.quantizers.size(), static_cast<size_t>(7 * m.config.n_layers));
  for (const FakeQuant& saved_fq : r.quantizers) {
    FakeQuant fq = saved_fq;  // requantize the master weights with the saved block parameters
    const ParamInfo* p = nullptr;
    for (const ParamInfo& i : master.param_info()) p = i.name == fq.name() ? &i : p;
    ASSERT_NE(p, nullptr) << fq.name();
    std::vector<float> w_hat(static_cast<size_t>(p->numel()));
    ASSERT_TRUE(fq.forward(master.params().data() + p->offset, w_hat.data()).ok());
    const auto it = loaded.quantized.find(fq.name());
    ASSERT_NE(it, loaded.quantized.end()) << fq.name();
    EXPECT_EQ(it->second.codes, fq.quantized().codes) << fq.name();
    EXPECT_EQ(it->second.scale_codes, fq.quantized().scale_codes) << fq.name();
  }
  // Eval of the saved model equals eval of the in-memory one, logits bit for bit.
  const LlamaModel from_file(loaded);
  const std::span<const int> window(held_out.data(), 64);
  std::vector<float> a, b;
  ASSERT_TRUE(Session(*r.qat.net).forward(window, 0, &a).ok());
  ASSERT_TRUE(Session(from_file).forward(window, 0, &b).ok());
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
  const EvalResult e_file = evaluate(from_file, ref, held_out, {.ctx = 64}).value();
  EXPECT_EQ(e_file.kld_mean, qat);
  EXPECT_EQ(e_file.ppl, ev[2].ppl);
  fs::remove_all(dir);
}

TEST(Qat, ErrorsNameTheOption) {
  if (!fs::exists(kModel)) GTEST_SKIP() << "../shared is missing";
  const Model m = load_model(kModel).value();
  QatOptions o;
  o.plan = make_plan(m.config, parse_spec("int4:g32:sym:fp16").value(), std::nullopt).value();
  const std::vector<int> few(20, 3);
  o.ctx = 64;
  Result<QatResult> r = run_qat(m, few, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--ctx 64"), std::string::npos) << r.status().message();
  o.steps = 0;
  r = run_qat(m, few, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--steps"), std::string::npos);
  o.steps = 1;
  o.init = Method::kSmoothQuant;
  r = run_qat(m, std::vector<int>(200, 3), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--init"), std::string::npos);
}

}  // namespace
}  // namespace lowbit
