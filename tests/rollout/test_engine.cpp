// The generation engine on tiny DeepSeek-V3 (MLA, MoE, MTP) and Qwen2 models: recorded log-probs
// equal a teacher-forced forward, cached and uncached decoding agree, seeds make a completion
// independent of the rest of the batch, group sampling, EOS and stop strings, finished rows
// leaving the batch, and bad requests.
#include "grpo/rollout/engine.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "grpo/data/bpe_tokenizer.h"
#include "model/model_test_util.h"
#include "rollout/cyclic_model.h"
#include "test_util.h"

namespace grpo::rollout {
namespace {

using model::CausalLM;
using model::ModelConfig;

std::vector<GenerationRequest> ragged_requests(int64_t vocab, std::vector<int64_t> lengths, uint64_t seed0 = 100) {
  std::vector<GenerationRequest> out;
  torch::manual_seed(static_cast<int64_t>(seed0));
  for (size_t i = 0; i < lengths.size(); ++i) {
    const auto ids = torch::randint(3, vocab, {lengths[i]}, torch::kLong);
    GenerationRequest r;
    r.prompt_ids.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + lengths[i]);
    r.seed = seed0 + i;
    out.push_back(std::move(r));
  }
  return out;
}

// Teacher-forced log-probs of each completion's tokens: one left-padded full forward without a
// cache over prompt + completion, log_softmax(logits / T) at the positions that predicted them.
// MLA models run it in the form the engine decodes with (absorbed, GenerationConfig::mla_absorbed);
// the two forms agree to float32 rounding (about 1e-5 on these log-probs), not bit for bit.
std::vector<std::vector<float>> teacher_forced(CausalLM& model, const std::vector<GenerationRequest>& reqs,
                                               const std::vector<Completion>& comps, double temperature) {
  c10::InferenceMode guard;
  const auto saved_impl = model->config().attention_impl;
  if (model->config().is_mla()) model->set_attention_impl(model::AttentionImpl::absorbed);
  int64_t len = 0;
  for (const auto& c : comps) {
    len = std::max<int64_t>(len, reqs[c.prompt_index].prompt_ids.size() + c.token_ids.size());
  }
  const int64_t n = static_cast<int64_t>(comps.size());
  auto ids = torch::zeros({n, len}, torch::kLong);
  auto mask = torch::zeros({n, len}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const auto& c = comps[static_cast<size_t>(i)];
    std::vector<int64_t> seq = reqs[c.prompt_index].prompt_ids;
    seq.insert(seq.end(), c.token_ids.begin(), c.token_ids.end());
    const int64_t m = static_cast<int64_t>(seq.size());
    ids[i].narrow(0, len - m, m).copy_(torch::tensor(seq, torch::kLong));
    mask[i].narrow(0, len - m, m).fill_(1);
  }
  const auto pos = (mask.cumsum(1) - 1).clamp_min(0);
  const double t = temperature == 0 ? 1.0 : temperature;
  const auto lp = torch::log_softmax(model(ids, pos, mask).logits.to(torch::kFloat) / t, -1);
  model->set_attention_impl(saved_impl);
  std::vector<std::vector<float>> out;
  for (int64_t i = 0; i < n; ++i) {
    const auto& c = comps[static_cast<size_t>(i)];
    const int64_t k = static_cast<int64_t>(c.token_ids.size());
    std::vector<float> row;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t at = len - k - 1 + j;  // position whose logits predict token j
      row.push_back(lp[i][at][c.token_ids[static_cast<size_t>(j)]].item<float>());
    }
    out.push_back(std::move(row));
  }
  return out;
}

double max_logprob_diff(CausalLM& model, const std::vector<GenerationRequest>& reqs,
                        const std::vector<Completion>& comps, double temperature) {
  const auto tf = teacher_forced(model, reqs, comps, temperature);
  double worst = 0;
  for (size_t i = 0; i < comps.size(); ++i) {
    EXPECT_EQ(comps[i].logprobs.size(), comps[i].token_ids.size());
    for (size_t j = 0; j < comps[i].logprobs.size(); ++j) {
      worst = std::max(worst, static_cast<double>(std::abs(comps[i].logprobs[j] - tf[i][j])));
    }
  }
  return worst;
}

void check_logprobs(const ModelConfig& cfg, const char* name) {
  torch::manual_seed(5);
  CausalLM model(cfg);
  const auto reqs = ragged_requests(cfg.vocab_size, {3, 9, 6, 1});
  for (bool use_cache : {true, false}) {
    for (double temperature : {0.0, 0.7, 1.3}) {
      GenerationConfig gc;
      gc.max_new_tokens = 20;
      gc.ignore_eos = true;
      gc.use_cache = use_cache;
      gc.num_generations = 2;
      gc.sampling.temperature = temperature;
      gc.sampling.top_p = temperature > 1 ? 0.9 : 1.0;
      Engine engine(model, nullptr, gc);
      const auto comps = engine.generate(reqs);
      ASSERT_EQ(comps.size(), 8u);
      const double diff = max_logprob_diff(model, reqs, comps, temperature);
      EXPECT_LE(diff, 1e-5) << name << " cache " << use_cache << " T " << temperature;
      std::cout << name << " cache " << use_cache << " T " << temperature << ": max |logprob - teacher forced| " << diff
                << "\n";
    }
  }
}

TEST(Engine, RecordedLogprobsEqualTeacherForcedDeepSeek) { check_logprobs(model::test::tiny_dsv3(), "dsv3"); }
TEST(Engine, RecordedLogprobsEqualTeacherForcedQwen2) { check_logprobs(model::test::tiny_qwen2(), "qwen2"); }

TEST(Engine, CachedAndUncachedDecodingAgree) {
  for (const auto& cfg : {model::test::tiny_dsv3(), model::test::tiny_qwen2()}) {
    torch::manual_seed(6);
    CausalLM model(cfg);
    const auto reqs = ragged_requests(cfg.vocab_size, {4, 11, 2});
    GenerationConfig gc;
    gc.max_new_tokens = 24;
    gc.ignore_eos = true;
    gc.sampling.temperature = 0.9;
    gc.sampling.top_k = 20;
    const auto cached = Engine(model, nullptr, gc).generate(reqs);
    gc.use_cache = false;
    const auto uncached = Engine(model, nullptr, gc).generate(reqs);
    for (size_t i = 0; i < cached.size(); ++i) {
      EXPECT_EQ(cached[i].token_ids, uncached[i].token_ids) << "row " << i;
      for (size_t j = 0; j < cached[i].logprobs.size(); ++j) {
        EXPECT_NEAR(cached[i].logprobs[j], uncached[i].logprobs[j], 1e-5);
      }
    }
  }
}

// The decode hook (partial rollouts load newer weights there): called before every decode forward,
// counted over the call's chunks; weights changed in it take effect from the next token on, the
// tokens before keep what the old weights gave.
TEST(Engine, DecodeHookRunsBeforeEveryDecodeForwardAndNewWeightsTakeEffectThere) {
  torch::manual_seed(6);
  CausalLM model(model::test::tiny_qwen2());
  const auto reqs = ragged_requests(model->config().vocab_size, {4, 11, 2});
  GenerationConfig gc;
  gc.max_new_tokens = 10;
  gc.ignore_eos = true;
  gc.sampling.temperature = 0.9;
  gc.max_batch_rows = 1;  // three chunks
  Engine engine(model, nullptr, gc);
  const auto plain = engine.generate(reqs);
  std::vector<int64_t> seen;
  GenerationStats stats;
  engine.set_decode_hook([&](int64_t forwards) { seen.push_back(forwards); });
  const auto hooked = engine.generate(reqs, &stats);
  ASSERT_EQ(static_cast<int64_t>(seen.size()), stats.steps);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<int64_t>(i));
  for (size_t i = 0; i < plain.size(); ++i)
    EXPECT_EQ(plain[i].token_ids, hooked[i].token_ids) << "a hook that does nothing";
  // Weights scaled after the 4th decode forward: each row's first tokens are the plain run's up
  // to the switch of its chunk, and differ after (the lm head sharpened 3x changes the draws).
  engine.set_decode_hook([&](int64_t forwards) {
    if (forwards != 4) return;
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key().find("embed_tokens") != std::string::npos || p.key().find("lm_head") != std::string::npos) {
        p.value().mul_(3.0);
      }
    }
  });
  const auto switched = engine.generate(reqs);
  // The first chunk has 9 decode forwards; the switch is before its 5th, after token 5.
  ASSERT_EQ(switched[0].token_ids.size(), 10u);
  for (size_t t = 0; t < 5; ++t) EXPECT_EQ(switched[0].token_ids[t], plain[0].token_ids[t]) << t;
  for (size_t t = 0; t < 5; ++t) EXPECT_EQ(switched[0].logprobs[t], plain[0].logprobs[t]) << t;
  bool differs = false;
  for (size_t t = 5; t < 10; ++t) differs |= switched[0].logprobs[t] != plain[0].logprobs[t];
  EXPECT_TRUE(differs) << "the new weights took effect";
}

TEST(Engine, SameSeedSameOutputWhateverElseIsInTheBatch) {
  const auto cfg = model::test::tiny_dsv3();
  torch::manual_seed(7);
  CausalLM model(cfg);
  GenerationConfig gc;
  gc.max_new_tokens = 24;
  gc.ignore_eos = true;
  gc.num_generations = 3;
  gc.sampling.temperature = 1.0;
  Engine engine(model, nullptr, gc);
  auto reqs = ragged_requests(cfg.vocab_size, {5, 12, 2, 8});
  const auto alone = engine.generate({reqs[1]});
  const auto together = engine.generate(reqs);
  std::swap(reqs[0], reqs[3]);
  const auto shuffled = engine.generate({reqs[2], reqs[1]});
  for (int64_t g = 0; g < 3; ++g) {
    EXPECT_EQ(alone[g].token_ids, together[3 + g].token_ids) << "sample " << g;
    EXPECT_EQ(alone[g].token_ids, shuffled[3 + g].token_ids) << "sample " << g;
  }
  // The G samples of a prompt differ from each other (distinct streams).
  EXPECT_NE(alone[0].token_ids, alone[1].token_ids);
  // And a different seed gives a different completion.
  auto other = reqs[1];
  other.seed = 999;
  EXPECT_NE(engine.generate({other})[0].token_ids, alone[0].token_ids);
}

TEST(Engine, GroupSamplingSharesThePrefillAndGreedyGroupsAreIdentical) {
  const auto cfg = model::test::tiny_qwen2();
  torch::manual_seed(8);
  CausalLM model(cfg);
  GenerationConfig gc;
  gc.max_new_tokens = 10;
  gc.ignore_eos = true;
  gc.num_generations = 4;
  gc.sampling.temperature = 0;
  GenerationStats stats;
  const auto reqs = ragged_requests(cfg.vocab_size, {7, 3});
  const auto comps = Engine(model, nullptr, gc).generate(reqs, &stats);
  ASSERT_EQ(comps.size(), 8u);
  EXPECT_EQ(stats.prompt_tokens, 10);  // each prompt prefilled once
  EXPECT_EQ(stats.generated_tokens, 80);
  EXPECT_EQ(stats.steps, 9);  // the 10th token needs no forward
  for (int g = 1; g < 4; ++g) {
    EXPECT_EQ(comps[g].token_ids, comps[0].token_ids);
    EXPECT_EQ(comps[4 + g].token_ids, comps[4].token_ids);
    EXPECT_EQ(comps[4 + g].prompt_index, 1);
    EXPECT_EQ(comps[4 + g].sample_index, g);
  }
}

TEST(Engine, EosEndsACompletionAndFinishedRowsLeaveTheBatch) {
  const auto cfg = model::test::tiny_dsv3();
  torch::manual_seed(9);
  CausalLM model(cfg);
  const auto reqs = ragged_requests(cfg.vocab_size, {4, 6, 5});
  GenerationConfig gc;
  gc.max_new_tokens = 30;
  gc.ignore_eos = true;
  gc.sampling.temperature = 0;
  const auto free_run = Engine(model, nullptr, gc).generate(reqs);
  // Make an early token of row 1 the EOS id: that row must end there with reason eos, the others
  // run on unchanged.
  const int64_t eos = free_run[1].token_ids[5];
  gc.ignore_eos = false;
  gc.eos_token_ids = {eos};
  GenerationStats stats;
  const auto stopped = Engine(model, nullptr, gc).generate(reqs, &stats);
  size_t first = 0;
  while (free_run[1].token_ids[first] != eos) ++first;
  EXPECT_EQ(stopped[1].finish_reason, FinishReason::eos);
  EXPECT_EQ(stopped[1].token_ids,
            std::vector<int64_t>(free_run[1].token_ids.begin(), free_run[1].token_ids.begin() + first + 1));
  for (size_t r : {0u, 2u}) {
    const auto& f = free_run[r].token_ids;
    const auto it = std::find(f.begin(), f.end(), eos);
    EXPECT_EQ(stopped[r].token_ids, std::vector<int64_t>(f.begin(), it == f.end() ? f.end() : it + 1)) << "row " << r;
    EXPECT_EQ(stopped[r].finish_reason, it == f.end() ? FinishReason::length : FinishReason::eos);
  }
  // Steps = the longest completion - 1: no forward runs for rows that left.
  size_t longest = 0;
  for (const auto& c : stopped) longest = std::max(longest, c.token_ids.size());
  EXPECT_EQ(stats.steps, static_cast<int64_t>(longest) - 1);
  EXPECT_EQ(stats.generated_tokens, static_cast<int64_t>(stopped[0].token_ids.size() + stopped[1].token_ids.size() +
                                                         stopped[2].token_ids.size()));
}

TEST(Engine, StopStringsEndAtTheTokenThatCompletesThemNotBefore) {
  // A byte-level tokenizer, so every stop string spans several tokens; the model's head is cut to
  // printable ASCII so the greedy text has plain substrings to stop on.
  test::TempDir dir;
  const std::string path = dir.write("tokenizer.json", data::byte_tokenizer_json({"<eos>"}));
  const auto tokenizer = data::load_tokenizer(path);
  auto cfg = model::test::tiny_dsv3();
  cfg.vocab_size = tokenizer->vocab_size();
  cfg.max_position_embeddings = 128;
  torch::manual_seed(10);
  CausalLM model(cfg);
  {
    torch::NoGradGuard no_grad;
    for (int64_t v = 0; v < cfg.vocab_size; ++v) {
      if (v < 0x61 || v > 0x7a) model->lm_head[v].zero_();  // only a..z can win
    }
  }
  const std::vector<GenerationRequest> reqs = {{tokenizer->encode("The answer"), 1}, {tokenizer->encode("Hi"), 2}};
  GenerationConfig gc;
  gc.max_new_tokens = 40;
  gc.ignore_eos = true;
  gc.sampling.temperature = 0;
  const auto free_run = Engine(model, tokenizer.get(), gc).generate(reqs);
  const std::string text = free_run[0].text;
  ASSERT_EQ(text.size(), 40u);
  const std::string stop = text.substr(20, 3);  // three tokens
  // The first prefix of the free run whose text contains the stop string.
  size_t want = 1;
  while (tokenizer->decode(std::vector<int64_t>(free_run[0].token_ids.begin(), free_run[0].token_ids.begin() + want))
             .find(stop) == std::string::npos) {
    ++want;
  }
  gc.stop_strings = {"never-appears", stop};
  const auto stopped = Engine(model, tokenizer.get(), gc).generate(reqs);
  EXPECT_EQ(stopped[0].finish_reason, FinishReason::stop);
  EXPECT_EQ(stopped[0].stop_string, stop);
  EXPECT_EQ(stopped[0].token_ids.size(), want);
  EXPECT_EQ(stopped[0].text, text.substr(0, text.find(stop) + 3));
  EXPECT_EQ(stopped[0].logprobs, std::vector<float>(free_run[0].logprobs.begin(), free_run[0].logprobs.begin() + want));
  // The other row is unaffected unless the string occurs in it too.
  if (free_run[1].text.find(stop) == std::string::npos) {
    EXPECT_EQ(stopped[1].token_ids, free_run[1].token_ids);
    EXPECT_EQ(stopped[1].finish_reason, FinishReason::length);
  }
}

TEST(Engine, MaxBatchRowsSplitsWholeGroupsWithTheSameResult) {
  const auto cfg = model::test::tiny_qwen2();
  torch::manual_seed(12);
  CausalLM model(cfg);
  const auto reqs = ragged_requests(cfg.vocab_size, {4, 9, 2, 6, 5});
  GenerationConfig gc;
  gc.max_new_tokens = 12;
  gc.ignore_eos = true;
  gc.num_generations = 2;
  const auto all = Engine(model, nullptr, gc).generate(reqs);
  gc.max_batch_rows = 4;  // two prompts x two samples per chunk
  const auto chunked = Engine(model, nullptr, gc).generate(reqs);
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].token_ids, chunked[i].token_ids) << "row " << i;
}

TEST(Engine, BadRequestsAndConfigsAreRefusedWithAReason) {
  const auto cfg = model::test::tiny_qwen2();
  CausalLM model(cfg);
  GenerationConfig gc;
  Engine engine(model, nullptr, gc);
  auto req = [](std::vector<int64_t> ids) {
    GenerationRequest r;
    r.prompt_ids = std::move(ids);
    return r;
  };
  GRPO_EXPECT_THROW_MESSAGE(engine.generate({req({1, 2}), req({})}), std::invalid_argument,
                            "request 1: the prompt is empty");
  GRPO_EXPECT_THROW_MESSAGE(engine.generate({req({1, 61})}), std::invalid_argument,
                            "request 0: token id 61 is outside the vocabulary [0, 61)");
  gc.stop_strings = {"</answer>"};
  GRPO_EXPECT_THROW_MESSAGE(Engine(model, nullptr, gc), std::invalid_argument,
                            "stop_strings need a tokenizer to decode the completions");
  gc.stop_strings.clear();
  gc.speculative_mtp = true;
  GRPO_EXPECT_THROW_MESSAGE(Engine(model, nullptr, gc), std::invalid_argument,
                            "speculative_mtp needs greedy sampling (sampling.temperature: 0)");
  gc.sampling.temperature = 0;
  GRPO_EXPECT_THROW_MESSAGE(Engine(model, nullptr, gc), std::invalid_argument,
                            "speculative_mtp needs a model with MTP modules (num_nextn_predict_layers >= 1)");
}

// MTP speculative decoding must give exactly the plain greedy output. A random tiny model drafts
// badly, so most drafts are rejected; the MTP head is then copied from the main model's last layer
// output path so that drafts are often right too, which exercises the accepted branch.
TEST(Engine, SpeculativeMtpGivesExactlyThePlainGreedyOutput) {
  for (auto impl : {model::AttentionImpl::absorbed, model::AttentionImpl::naive}) {
    auto cfg = model::test::tiny_dsv3();
    torch::manual_seed(13);
    CausalLM model(cfg);
    model->set_attention_impl(impl);
    const auto reqs = ragged_requests(cfg.vocab_size, {5, 1, 9, 3});
    GenerationConfig gc;
    gc.max_new_tokens = 40;
    gc.sampling.temperature = 0;
    gc.ignore_eos = true;
    gc.num_generations = 2;
    const auto plain = Engine(model, nullptr, gc).generate(reqs);
    // An EOS id that occurs early in one row, so rows leave at different steps.
    gc.ignore_eos = false;
    gc.eos_token_ids = {plain[2].token_ids[7]};
    const auto plain_eos = Engine(model, nullptr, gc).generate(reqs);
    for (bool with_eos : {false, true}) {
      gc.ignore_eos = !with_eos;
      gc.speculative_mtp = true;
      GenerationStats stats;
      const auto spec = Engine(model, nullptr, gc).generate(reqs, &stats);
      const auto& want = with_eos ? plain_eos : plain;
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(spec[i].token_ids, want[i].token_ids) << "row " << i << " eos " << with_eos;
        EXPECT_EQ(spec[i].finish_reason, want[i].finish_reason);
        ASSERT_EQ(spec[i].logprobs.size(), want[i].logprobs.size());
        for (size_t j = 0; j < want[i].logprobs.size(); ++j)
          EXPECT_NEAR(spec[i].logprobs[j], want[i].logprobs[j], 1e-5);
      }
      EXPECT_GT(stats.drafted, 0);
      std::cout << "impl " << static_cast<int>(impl) << " eos " << with_eos << ": drafts accepted " << stats.accepted
                << "/" << stats.drafted << ", " << stats.steps << " verify steps for " << stats.generated_tokens
                << " tokens\n";
      gc.speculative_mtp = false;
    }
  }
}

TEST(Engine, SpeculativeMtpOnATrainedModelAcceptsMostDraftsAndStaysExact) {
  const auto cfg = stride::stride_model_config();
  torch::manual_seed(14);
  CausalLM model(cfg);
  const double loss = stride::train_stride_model(model, 150);
  std::vector<GenerationRequest> reqs;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
  const auto prompts = stride::stride_sequences(6, 8, gen);
  for (int64_t i = 0; i < 6; ++i) {
    GenerationRequest r;
    const int64_t len = 3 + i;  // ragged
    r.prompt_ids.assign(prompts[i].data_ptr<int64_t>(), prompts[i].data_ptr<int64_t>() + len);
    reqs.push_back(r);
  }
  GenerationConfig gc;
  gc.max_new_tokens = 48;
  gc.sampling.temperature = 0;
  gc.ignore_eos = true;
  const auto plain = Engine(model, nullptr, gc).generate(reqs);
  gc.speculative_mtp = true;
  GenerationStats stats;
  const auto spec = Engine(model, nullptr, gc).generate(reqs, &stats);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(spec[i].token_ids, plain[i].token_ids) << "row " << i;
  const double rate = static_cast<double>(stats.accepted) / static_cast<double>(stats.drafted);
  std::cout << "trained (loss " << loss << "): drafts accepted " << stats.accepted << "/" << stats.drafted << " ("
            << 100 * rate << "%), " << stats.steps << " verify steps for " << gc.max_new_tokens << " tokens per row\n";
  EXPECT_GT(rate, 0.5);
  EXPECT_LT(stats.steps, gc.max_new_tokens - 10);
}

}  // namespace
}  // namespace grpo::rollout
