// Checkpoints: round trip of weights, optimizer state, RNG and values; a resumed run equal bit for
// bit to a straight one; atomic publication, pruning, and clean errors on damaged checkpoints.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "grpo/model/causal_lm.h"
#include "grpo/train/optimizer.h"
#include "grpo/train/schedule.h"
#include "grpo/train/train_state.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace grpo::train {
namespace {

namespace fs = std::filesystem;
using model::CausalLM;

std::map<std::string, torch::Tensor> snapshot(CausalLM& lm) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : lm->named_parameters()) out[item.key()] = item.value().detach().clone();
  for (const auto& item : lm->named_buffers()) out["buffer:" + item.key()] = item.value().detach().clone();
  return out;
}

// Number of tensors of `lm` that differ from `expected` (0 = bit-identical).
int count_different(CausalLM& lm, const std::map<std::string, torch::Tensor>& expected) {
  const auto now = snapshot(lm);
  EXPECT_EQ(now.size(), expected.size());
  int different = 0;
  for (const auto& [name, t] : now) {
    if (!torch::equal(t, expected.at(name))) {
      ++different;
      ADD_FAILURE() << name << " differs";
    }
  }
  return different;
}

// One training step on a batch drawn from torch's RNG: next-token cross-entropy, clipping, the
// scheduled learning rate, AdamW.
void train_step(CausalLM& lm, torch::optim::AdamW& optimizer, int64_t step, int64_t total) {
  const int64_t vocab = lm->config().vocab_size;
  const torch::Tensor ids = torch::randint(0, vocab, {2, 9}, torch::kLong);
  const auto out = lm->forward(ids);
  const auto logits = out.logits.narrow(1, 0, 8).reshape({-1, vocab});
  const auto loss = torch::nn::functional::cross_entropy(logits, ids.narrow(1, 1, 8).reshape({-1}));
  optimizer.zero_grad();
  loss.backward();
  clip_gradients(*lm, 1.0);
  ScheduleConfig schedule;
  schedule.warmup_steps = 2;
  set_learning_rate(optimizer, lr_at(schedule, 1e-2, step, total));
  optimizer.step();
}

TEST(TrainState, ResumeIsBitIdentical) {
  test::TempDir dir;
  const auto cfg = model::test::tiny_qwen2();
  constexpr int64_t kTotal = 6;

  torch::manual_seed(7);
  CausalLM straight(cfg);
  auto straight_optimizer = make_optimizer(*straight, OptimizerConfig{});
  for (int64_t s = 0; s < kTotal; ++s) train_step(straight, *straight_optimizer, s, kTotal);
  const auto expected = snapshot(straight);

  torch::manual_seed(7);
  CausalLM first(cfg);
  auto first_optimizer = make_optimizer(*first, OptimizerConfig{});
  for (int64_t s = 0; s < 3; ++s) train_step(first, *first_optimizer, s, kTotal);
  TrainState state;
  state.step = 3;
  state.values["stage"] = "rl";
  save_checkpoint(dir.path("ckpt"), 3, first, first_optimizer.get(), state, CheckpointConfig{});

  // A new process: other weights, an empty optimizer, the RNG elsewhere.
  torch::manual_seed(12345);
  CausalLM resumed(cfg);
  auto resumed_optimizer = make_optimizer(*resumed, OptimizerConfig{});
  torch::rand({17});
  const auto path = latest_checkpoint(dir.path("ckpt"));
  ASSERT_TRUE(path.has_value());
  const TrainState loaded = load_checkpoint(*path, resumed, resumed_optimizer.get());
  ASSERT_EQ(loaded.step, 3);
  EXPECT_EQ(loaded.values.at("stage"), "rl");
  for (int64_t s = loaded.step; s < kTotal; ++s) train_step(resumed, *resumed_optimizer, s, kTotal);
  EXPECT_EQ(count_different(resumed, expected), 0);
}

TEST(TrainState, RoundTripRestoresEverything) {
  test::TempDir dir;
  const auto cfg = model::test::tiny_dsv3();
  torch::manual_seed(3);
  CausalLM lm(cfg);
  auto optimizer = make_optimizer(*lm, OptimizerConfig{});
  train_step(lm, *optimizer, 0, 4);
  train_step(lm, *optimizer, 1, 4);
  lm->update_router_biases(0.01);  // a non-zero router bias buffer must come back too
  const auto expected = snapshot(lm);

  TrainState state;
  state.step = 2;
  state.values = {{"data_order", "{\"epoch\": 1}"}, {"best", "0.25"}, {"note", "a \"quoted\"\nline"}};
  const std::string path = save_checkpoint(dir.path(), 2, lm, optimizer.get(), state, CheckpointConfig{});
  EXPECT_EQ(path, dir.path("step_2"));
  EXPECT_TRUE(fs::is_regular_file(dir.path("step_2/model/config.json")));
  EXPECT_TRUE(fs::is_regular_file(dir.path("step_2/optimizer.pt")));
  EXPECT_TRUE(fs::is_regular_file(dir.path("step_2/rng.pt")));
  EXPECT_EQ(test::read_text(dir.path("latest")), "step_2\n");
  const torch::Tensor next_random = torch::rand({8});

  torch::manual_seed(99);
  CausalLM other(cfg);
  auto other_optimizer = make_optimizer(*other, OptimizerConfig{});
  const TrainState loaded = load_checkpoint(path, other, other_optimizer.get());
  EXPECT_EQ(loaded.step, 2);
  EXPECT_EQ(loaded.values, state.values);
  EXPECT_EQ(count_different(other, expected), 0);
  EXPECT_TRUE(torch::equal(torch::rand({8}), next_random)) << "the RNG was not restored";

  ASSERT_EQ(other_optimizer->param_groups().size(), optimizer->param_groups().size());
  std::size_t compared = 0;
  for (std::size_t g = 0; g < optimizer->param_groups().size(); ++g) {
    const auto& saved_params = optimizer->param_groups()[g].params();
    const auto& loaded_params = other_optimizer->param_groups()[g].params();
    ASSERT_EQ(saved_params.size(), loaded_params.size());
    for (std::size_t i = 0; i < saved_params.size(); ++i) {
      // Parameters that never had a gradient (the MTP module here) have no state, before or after.
      const bool has_state = optimizer->state().count(saved_params[i].unsafeGetTensorImpl()) > 0;
      EXPECT_EQ(other_optimizer->state().count(loaded_params[i].unsafeGetTensorImpl()) > 0, has_state);
      if (!has_state) continue;
      const auto& a = static_cast<const torch::optim::AdamWParamState&>(
          *optimizer->state().at(saved_params[i].unsafeGetTensorImpl()));
      const auto& b = static_cast<const torch::optim::AdamWParamState&>(
          *other_optimizer->state().at(loaded_params[i].unsafeGetTensorImpl()));
      EXPECT_EQ(a.step(), b.step());
      EXPECT_TRUE(torch::equal(a.exp_avg(), b.exp_avg()));
      EXPECT_TRUE(torch::equal(a.exp_avg_sq(), b.exp_avg_sq()));
      ++compared;
    }
  }
  EXPECT_GT(compared, 10u);
  EXPECT_DOUBLE_EQ(other_optimizer->param_groups()[0].options().get_lr(),
                   optimizer->param_groups()[0].options().get_lr());
}

TEST(TrainState, LeftoverTmpIsIgnoredAndCleaned) {
  test::TempDir dir;
  EXPECT_FALSE(latest_checkpoint(dir.path()).has_value());
  EXPECT_FALSE(latest_checkpoint(dir.path("does_not_exist")).has_value());
  // A crash in the middle of writing step 9 (even after its state.json).
  dir.write("step_9.tmp/state.json", "{}");
  dir.write("step_9.tmp/optimizer.pt", "partial");
  EXPECT_FALSE(latest_checkpoint(dir.path()).has_value());

  torch::manual_seed(0);
  CausalLM lm(model::test::tiny_qwen2());
  save_checkpoint(dir.path(), 4, lm, nullptr, TrainState{4, {}}, CheckpointConfig{});
  EXPECT_FALSE(fs::exists(dir.path("step_9.tmp")));
  EXPECT_FALSE(fs::exists(dir.path("step_4.tmp")));
  EXPECT_FALSE(fs::exists(dir.path("step_4/optimizer.pt")));
  EXPECT_EQ(latest_checkpoint(dir.path()), dir.path("step_4"));

  // `latest` naming a folder that is gone: the newest complete step_<N> instead.
  dir.write("latest", "step_12\n");
  EXPECT_EQ(latest_checkpoint(dir.path()), dir.path("step_4"));
}

TEST(TrainState, KeepLastRemovesTheOldest) {
  test::TempDir dir;
  torch::manual_seed(0);
  CausalLM lm(model::test::tiny_qwen2());
  auto optimizer = make_optimizer(*lm, OptimizerConfig{});
  CheckpointConfig cfg;
  cfg.keep_last = 2;
  for (int64_t step : {1, 2, 3}) save_checkpoint(dir.path(), step, lm, optimizer.get(), TrainState{step, {}}, cfg);
  EXPECT_FALSE(fs::exists(dir.path("step_1")));
  EXPECT_TRUE(fs::exists(dir.path("step_2")));
  EXPECT_TRUE(fs::exists(dir.path("step_3")));
  EXPECT_EQ(latest_checkpoint(dir.path()), dir.path("step_3"));
  // Saving the same step again replaces it.
  save_checkpoint(dir.path(), 3, lm, optimizer.get(), TrainState{3, {{"again", "yes"}}}, cfg);
  EXPECT_EQ(load_checkpoint(dir.path("step_3"), lm, optimizer.get()).values.at("again"), "yes");
  cfg.keep_last = 0;  // keep all
  save_checkpoint(dir.path(), 4, lm, optimizer.get(), TrainState{4, {}}, cfg);
  EXPECT_TRUE(fs::exists(dir.path("step_2")));
}

class DamagedCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(5);
    CausalLM lm(model::test::tiny_qwen2());
    auto optimizer = make_optimizer(*lm, OptimizerConfig{});
    train_step(lm, *optimizer, 0, 3);
    path_ = save_checkpoint(dir_.path(), 1, lm, optimizer.get(), TrainState{1, {}}, CheckpointConfig{});
    torch::manual_seed(6);
    target_ = CausalLM(model::test::tiny_qwen2());
    optimizer_ = make_optimizer(*target_, OptimizerConfig{});
    before_ = snapshot(target_);
  }

  // Loading must fail with exactly one line starting with `prefix`, and change nothing.
  void expect_clean_failure(const std::string& prefix) {
    torch::manual_seed(6);
    const torch::Tensor expected_next = torch::rand({4});
    torch::manual_seed(6);
    try {
      load_checkpoint(path_, target_, optimizer_.get());
      ADD_FAILURE() << "expected std::runtime_error";
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(prefix, 0), 0u) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
    EXPECT_EQ(count_different(target_, before_), 0);
    EXPECT_TRUE(optimizer_->state().empty());
    EXPECT_TRUE(torch::equal(torch::rand({4}), expected_next)) << "the RNG was changed";
  }

  test::TempDir dir_;
  std::string path_;
  CausalLM target_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::map<std::string, torch::Tensor> before_;
};

TEST_F(DamagedCheckpoint, TruncatedOptimizer) {
  const std::string file = path_ + "/optimizer.pt";
  fs::resize_file(file, fs::file_size(file) / 2);
  expect_clean_failure(file + ": cannot read the optimizer state: ");
}

TEST_F(DamagedCheckpoint, MissingModelFile) {
  ASSERT_TRUE(fs::remove(path_ + "/model/model.safetensors"));
  expect_clean_failure(path_ + "/model");
}

TEST_F(DamagedCheckpoint, TruncatedModelFile) {
  const std::string file = path_ + "/model/model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  expect_clean_failure(path_ + "/model");
}

TEST_F(DamagedCheckpoint, MissingStateJson) {
  ASSERT_TRUE(fs::remove(path_ + "/state.json"));
  expect_clean_failure(path_ + "/state.json: missing");
}

TEST_F(DamagedCheckpoint, TruncatedRng) {
  const std::string file = path_ + "/rng.pt";
  fs::resize_file(file, 10);
  expect_clean_failure(file + ": not an RNG state: ");
}

TEST_F(DamagedCheckpoint, OptimizerOfAnotherModel) {
  CausalLM dsv3(model::test::tiny_dsv3());
  auto other = make_optimizer(*dsv3, OptimizerConfig{});
  const auto before = snapshot(dsv3);
  try {
    load_checkpoint(path_, dsv3, other.get());
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path_ + "/optimizer.pt: ", 0), 0u) << e.what();
  }
  EXPECT_EQ(count_different(dsv3, before), 0);
  EXPECT_TRUE(other->state().empty());
}

TEST(TrainState, RngHelpers) {
  torch::manual_seed(11);
  const std::string saved = capture_rng_state();
  const torch::Tensor a = torch::randn({5});
  torch::rand({3});
  restore_rng_state(saved);
  EXPECT_TRUE(torch::equal(torch::randn({5}), a));
  EXPECT_THROW(restore_rng_state("not an archive"), std::runtime_error);
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: CUDA generator states not checked";
  const std::string with_cuda = capture_rng_state();
  const torch::Tensor b = torch::rand({4}, torch::kCUDA);
  restore_rng_state(with_cuda);
  EXPECT_TRUE(torch::equal(torch::rand({4}, torch::kCUDA), b));
}

TEST(TrainState, MtStateRoundTrip) {
  std::mt19937_64 rng(42);
  rng.discard(1000);
  const std::string text = mt_state(rng);
  const uint64_t next = rng();
  std::mt19937_64 other(7);
  set_mt_state(other, text);
  EXPECT_EQ(other(), next);
  std::mt19937_64 untouched(7);
  const std::mt19937_64 copy = untouched;
  EXPECT_THROW(set_mt_state(untouched, "1 2 3"), std::runtime_error);
  EXPECT_THROW(set_mt_state(untouched, text + " extra"), std::runtime_error);
  EXPECT_TRUE(untouched == copy);
}

}  // namespace
}  // namespace grpo::train
