// The logit-distillation trainer on a tiny DeepSeek-V3 teacher and a tiny Qwen2 student with the
// byte tokenizer: the logged divergence is the mean of the plain formula over every completion
// token, training lowers it, the teacher never changes, on-policy steps come at the configured
// rate, resume is bit-identical, and bad set-ups are refused at the start.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "grpo/core/metrics.h"
#include "grpo/core/run.h"
#include "grpo/train/distill_loss.h"
#include "grpo/train/distill_trainer.h"
#include "grpo/train/sft_trainer.h"
#include "test_util.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

using test::addition;
using test::Fixture;
using test::params_of;
using test::byte_tokenizer;
using test::prompt_config;
using test::tiny_config;

model::ModelConfig student_config(int64_t vocab) {
  auto c = model::test::tiny_qwen2();
  c.vocab_size = vocab;
  c.max_position_embeddings = 128;
  c.eos_token_ids = {256};
  c.initializer_range = 0.02;
  return c;
}

DistillConfig small_distill(int64_t steps) {
  DistillConfig c;
  c.steps = steps;
  c.batch_size = 4;
  c.max_length = 128;
  c.optim.lr = 3e-3;
  c.schedule.kind = "constant";
  c.generation.max_new_tokens = 16;
  c.generation.sampling.temperature = 1.0;
  c.generation.stop_strings = {"</answer>"};
  c.checkpoint.every_steps = 2;
  c.checkpoint.keep_last = 0;
  c.loss.chunk_size = 100;  // several vocabulary chunks (V = 261)
  return c;
}

// The mean divergence over every completion token of `records`, from whole logits.
double mean_divergence(model::CausalLM& student, model::CausalLM& teacher, const data::Tokenizer& tok,
                       const std::vector<data::Record>& records, const DistillLossConfig& cfg) {
  torch::NoGradGuard no_grad;
  std::vector<data::TokenizedExample> ex;
  for (const auto& r : records) ex.push_back(data::tokenize_example(tok, prompt_config(), r, 128));
  std::vector<const data::TokenizedExample*> ptrs;
  for (const auto& e : ex) ptrs.push_back(&e);
  const auto b = pad_batch(ptrs);
  const auto ls = student->forward(b.input_ids, b.position_ids, b.attention_mask).logits;
  const auto lt = teacher->forward(b.input_ids, b.position_ids, b.attention_mask).logits;
  const int64_t t = b.input_ids.size(1), v = ls.size(2);
  const auto idx = b.loss_mask.narrow(1, 1, t - 1).reshape({-1}).nonzero().squeeze(1);
  const auto s = ls.narrow(1, 0, t - 1).reshape({-1, v}).index_select(0, idx);
  const auto te = lt.narrow(1, 0, t - 1).reshape({-1, v}).index_select(0, idx);
  return token_divergence_reference(s, te, cfg).mean().item<double>();
}

TEST(DistillTrainer, OnPolicyStepsComeAtTheConfiguredRate) {
  int64_t on = 0;
  for (int64_t s = 0; s < 20000; ++s) on += on_policy_step(7, s, 0.3);
  EXPECT_NEAR(static_cast<double>(on) / 20000.0, 0.3, 0.015);
  for (int64_t s = 0; s < 100; ++s) {
    EXPECT_FALSE(on_policy_step(7, s, 0.0));
    EXPECT_TRUE(on_policy_step(7, s, 1.0));
    EXPECT_EQ(on_policy_step(7, s, 0.5), on_policy_step(7, s, 0.5));
  }
}

TEST(DistillTrainer, LoggedDivergenceIsTheFormulaOverAllCompletionTokens) {
  Fixture f("formula");
  const auto records = addition(6, 4, true);
  torch::manual_seed(1);
  model::CausalLM teacher(tiny_config(f.tok->vocab_size()));
  model::CausalLM student(student_config(f.tok->vocab_size()));
  for (const auto kind : {Divergence::forward_kl, Divergence::reverse_kl, Divergence::jsd}) {
    auto cfg = small_distill(1);
    cfg.batch_size = 6;  // one step sees every record
    cfg.optim.lr = 0.0;
    cfg.loss.divergence = kind;
    cfg.loss.beta = 0.3;
    cfg.loss.temperature = 1.5;
    cfg.checkpoint.every_steps = 0;
    const double want = mean_divergence(student, teacher, *f.tok, records, cfg.loss);
    Fixture g(std::string("formula_") + std::string(config::enum_name(kind)));
    DistillTrainer(student, teacher, *g.tok, prompt_config(), cfg, *g.run).train(records);
    const auto rows = read_metrics(g.run->path("metrics.jsonl"));
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_NEAR(rows[0].get("divergence", -1), want, 1e-5 * std::max(1.0, want)) << config::enum_name(kind);
    EXPECT_GT(want, 0.0);
  }
}

TEST(DistillTrainer, LowersTheDivergenceAndLeavesTheTeacherAlone) {
  Fixture f("learns");
  const auto records = addition(16, 4, true);
  torch::manual_seed(2);
  model::CausalLM teacher(tiny_config(f.tok->vocab_size()));
  {  // a teacher with something to teach: a few SFT steps
    SftConfig s;
    s.steps = 30;
    s.batch_size = 8;
    s.max_length = 128;
    s.optim.lr = 3e-3;
    s.schedule.kind = "constant";
    s.checkpoint.every_steps = 0;
    Fixture t("teacher");
    SftTrainer(teacher, *t.tok, prompt_config(), s, *t.run).train(records);
  }
  model::CausalLM student(student_config(f.tok->vocab_size()));
  const auto teacher_before = params_of(teacher);
  auto cfg = small_distill(30);
  cfg.on_policy_fraction = 0.3;
  const double before = mean_divergence(student, teacher, *f.tok, records, cfg.loss);
  DistillTrainer(student, teacher, *f.tok, prompt_config(), cfg, *f.run).train(records);
  const double after = mean_divergence(student, teacher, *f.tok, records, cfg.loss);
  EXPECT_LT(after, 0.5 * before) << "before " << before << " after " << after;
  const auto teacher_after = params_of(teacher);
  for (size_t i = 0; i < teacher_before.size(); ++i) EXPECT_TRUE(torch::equal(teacher_before[i], teacher_after[i]));
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.requires_grad());
  const auto rows = read_metrics(f.run->path("metrics.jsonl"));
  ASSERT_EQ(rows.size(), 30u);
  int64_t on = 0;
  for (const auto& r : rows) on += r.get("on_policy", -1) > 0.5;
  EXPECT_GT(on, 0);  // both kinds of steps happened
  EXPECT_LT(on, 30);
}

TEST(DistillTrainer, ResumesBitIdentically) {
  const auto records = addition(12, 4, true);
  Fixture straight("straight"), resumed("resumed");
  auto cfg = small_distill(4);
  cfg.on_policy_fraction = 0.5;
  torch::manual_seed(3);
  model::CausalLM teacher(tiny_config(straight.tok->vocab_size()));
  torch::manual_seed(4);
  model::CausalLM a(student_config(straight.tok->vocab_size()));
  DistillTrainer(a, teacher, *straight.tok, prompt_config(), cfg, *straight.run).train(records);

  torch::manual_seed(4);
  model::CausalLM b(student_config(resumed.tok->vocab_size()));
  auto half = cfg;
  half.steps = 2;
  DistillTrainer(b, teacher, *resumed.tok, prompt_config(), half, *resumed.run).train(records);
  torch::manual_seed(99);
  model::CausalLM c(student_config(resumed.tok->vocab_size()));
  DistillTrainer(c, teacher, *resumed.tok, prompt_config(), cfg, *resumed.run).train(records, {}, /*resume=*/true);
  const auto pa = params_of(a), pc = params_of(c);
  ASSERT_EQ(pa.size(), pc.size());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pc[i])) << "parameter " << i;
}

TEST(DistillTrainer, RefusesBadSetUps) {
  Fixture f("bad");
  torch::manual_seed(5);
  model::CausalLM teacher(tiny_config(f.tok->vocab_size()));
  auto sc = student_config(f.tok->vocab_size() + 3);
  model::CausalLM wide(sc);
  try {
    DistillTrainer(wide, teacher, *f.tok, prompt_config(), small_distill(1), *f.run);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "must share the vocabulary: the student's output head has 264 rows, the teacher's 261"),
              std::string::npos)
        << e.what();
  }
  model::CausalLM student(student_config(f.tok->vocab_size()));
  // Off-policy steps without traces.
  EXPECT_THROW(
      DistillTrainer(student, teacher, *f.tok, prompt_config(), small_distill(1), *f.run).train(addition(4, 4, false)),
      std::runtime_error);
  auto g = small_distill(1);
  g.generation.num_generations = 2;
  EXPECT_THROW(DistillTrainer(student, teacher, *f.tok, prompt_config(), g, *f.run), std::invalid_argument);
  // On-policy only: prompts alone are enough.
  auto on = small_distill(1);
  on.on_policy_fraction = 1.0;
  DistillTrainer(student, teacher, *f.tok, prompt_config(), on, *f.run).train(addition(4, 4, false));
  const auto rows = read_metrics(f.run->path("metrics.jsonl"));
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows.back().get("on_policy", -1), 1.0);
}

}  // namespace
}  // namespace grpo::train
