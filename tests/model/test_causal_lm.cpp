// CausalLM: naive and absorbed MLA agree, prefill + cached decode equals a full forward token by
// token on ragged batches, MTP and the 671B preset on the meta device.
#include "grpo/model/causal_lm.h"
#include "grpo/model/model_stats.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "model_test_util.h"

namespace grpo::model {
namespace {

using test::max_rel_error;

TEST(CausalLM, NaiveAndAbsorbedMlaGiveTheSameLogits) {
  for (bool q_lora : {true, false}) {
    auto cfg = test::tiny_dsv3();
    if (!q_lora) cfg.q_lora_rank.reset();
    torch::manual_seed(3);
    CausalLM model(cfg);
    model->eval();
    torch::NoGradGuard no_grad;
    const auto batch = test::ragged_batch(cfg.vocab_size, 3, 9);
    const auto naive = model(batch.ids, batch.positions, batch.mask).logits;
    model->set_attention_impl(AttentionImpl::absorbed);
    const auto absorbed = model(batch.ids, batch.positions, batch.mask).logits;
    EXPECT_LT(max_rel_error(absorbed, naive, batch.mask), 1e-5) << "q_lora " << q_lora;
  }
}

// Prefill the first `prefill` tokens, then feed the rest one at a time through the cache; each
// step's logits must equal the full forward's at that position.
void expect_cached_decode_matches(const ModelConfig& cfg, AttentionImpl impl) {
  torch::manual_seed(11);
  CausalLM model(cfg);
  model->eval();
  model->set_attention_impl(impl);
  torch::NoGradGuard no_grad;
  const int64_t b = 3, t = 10, prefill = 6;
  const auto batch = test::ragged_batch(cfg.vocab_size, b, t);
  const auto full = model(batch.ids, batch.positions, batch.mask).logits;
  auto cache = model->make_cache(b, t);
  const auto first = model(batch.ids.narrow(1, 0, prefill), batch.positions.narrow(1, 0, prefill),
                           batch.mask.narrow(1, 0, prefill), cache.get())
                         .logits;
  EXPECT_LT(max_rel_error(first, full.narrow(1, 0, prefill), batch.mask.narrow(1, 0, prefill)), 1e-5);
  for (int64_t i = prefill; i < t; ++i) {
    const auto step = model(batch.ids.narrow(1, i, 1), batch.positions.narrow(1, i, 1), batch.mask.narrow(1, 0, i + 1),
                            cache.get())
                          .logits;
    EXPECT_LT(max_rel_error(step, full.narrow(1, i, 1), batch.mask.narrow(1, i, 1)), 1e-5) << "position " << i;
  }
  EXPECT_EQ(cache->length(), t);
}

TEST(CausalLM, CachedDecodeMatchesFullForwardDeepSeekNaive) {
  expect_cached_decode_matches(test::tiny_dsv3(), AttentionImpl::naive);
}
TEST(CausalLM, CachedDecodeMatchesFullForwardDeepSeekAbsorbed) {
  expect_cached_decode_matches(test::tiny_dsv3(), AttentionImpl::absorbed);
}
TEST(CausalLM, CachedDecodeMatchesFullForwardDense) {
  expect_cached_decode_matches(test::tiny_qwen2(), AttentionImpl::naive);
}

TEST(CausalLM, MlaCacheHoldsOnlyTheLatentAndTheRopedKey) {
  const auto cfg = test::tiny_dsv3();
  CausalLM model(cfg);
  auto cache = model->make_cache(2, 16);
  const int64_t per_layer = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4;  // float32
  EXPECT_EQ(cache->bytes_per_token(), per_layer * cfg.num_hidden_layers);
  EXPECT_EQ(model->make_mtp_cache(2, 16)->bytes_per_token(), per_layer);  // the first MTP module's block
  EXPECT_EQ(KVCache::bytes_per_token(cfg, 2), (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2 * cfg.num_hidden_layers);
}

TEST(CausalLM, TiedEmbeddingsShareOneTensor) {
  auto cfg = test::tiny_qwen2();
  cfg.tie_word_embeddings = true;
  CausalLM model(cfg);
  EXPECT_TRUE(model->lm_head.is_same(model->embed_tokens));
  int count = 0;
  for (const auto& p : model->named_parameters()) count += p.key() == "lm_head";
  EXPECT_EQ(count, 0);
}

TEST(CausalLM, MtpLogitsPredictTokensFurtherAheadAndGiveAFiniteLoss) {
  const auto cfg = test::tiny_dsv3();
  torch::manual_seed(5);
  CausalLM model(cfg);
  const auto batch = test::ragged_batch(cfg.vocab_size, 2, 8);
  ForwardOptions opts;
  opts.mtp = true;
  const auto out = model(batch.ids, batch.positions, batch.mask, nullptr, opts);
  ASSERT_EQ(out.mtp_logits.size(), 1u);
  EXPECT_EQ(out.mtp_logits[0].sizes(), out.logits.sizes());
  const auto loss = mtp_loss(out, batch.ids, batch.mask, 0.3);
  // Untrained: cross-entropy near log(V), times lambda.
  EXPECT_NEAR(loss.item<double>(), 0.3 * std::log(static_cast<double>(cfg.vocab_size)), 0.3);
  loss.backward();
  auto* mtp = model->mtp[0]->as<MtpModuleImpl>();
  EXPECT_GT(mtp->eh_proj->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(CausalLM, MtpLossMatchesHandComputedCrossEntropy) {
  // Depth 1: logits at i predict input_ids[i + 2]. Logits are all zero except a large value on
  // the right token at position 0, so the loss is the mean over the two positions of
  // [~0, log V] times lambda / D.
  const int64_t v = 5;
  ForwardOutput out;
  auto logits = torch::zeros({1, 4, v});
  logits[0][0][3] = 100.0;
  out.mtp_logits.push_back(logits);
  const auto ids = torch::tensor({{0, 1, 3, 2}}, torch::kLong);
  const auto loss = mtp_loss(out, ids, torch::ones({1, 4}, torch::kLong), 0.5);
  EXPECT_NEAR(loss.item<double>(), 0.5 * (0.0 + std::log(5.0)) / 2.0, 1e-6);
}

TEST(CausalLM, TheRealDeepSeekV3ShapeBuildsOnTheMetaDevice) {
  const std::filesystem::path preset = std::filesystem::path(GRPO_SOURCE_DIR) / "configs/models/deepseek_v3_671b.yaml";
  const auto cfg = load_model_config(preset.string());
  CausalLM model(cfg, torch::TensorOptions().device(torch::kMeta).dtype(torch::kBFloat16));
  for (const auto& p : model->parameters()) EXPECT_TRUE(p.is_meta());
  // DeepSeek's README_WEIGHTS.md: main model 671B with 36.7B activated; MTP 11.5B unique; 685B stored.
  const ModelStats s = model_stats(cfg);
  EXPECT_NEAR(s.total_parameters / 1e9, 671.0, 671.0 * 0.01);
  EXPECT_NEAR(s.stored_with_mtp / 1e9, 685.0, 685.0 * 0.01);
  EXPECT_NEAR(s.mtp_parameters / 1e9, 11.5, 11.5 * 0.02);
  EXPECT_NEAR(s.active_parameters / 1e9, 36.7, 36.7 * 0.01);
  EXPECT_EQ(s.moe_layers, 58);
  EXPECT_EQ(s.kv_cache_bytes_per_token, (512 + 64) * 2 * 61);
}

// Packed sequences: three documents in one row (mask 1,1,..,2,2,..,3,..., positions restarting per
// document) give each document the logits it gets alone.
TEST(CausalLM, PackedDocumentsDoNotAttendAcrossEachOther) {
  for (const auto& cfg : {test::tiny_dsv3(), test::tiny_qwen2()}) {
    torch::manual_seed(21);
    CausalLM model(cfg);
    model->eval();
    torch::NoGradGuard no_grad;
    const std::vector<int64_t> lengths = {5, 3, 7};
    std::vector<torch::Tensor> docs, masks, positions;
    for (size_t d = 0; d < lengths.size(); ++d) {
      docs.push_back(torch::randint(1, cfg.vocab_size, {lengths[d]}, torch::kLong));
      masks.push_back(torch::full({lengths[d]}, static_cast<int64_t>(d + 1), torch::kLong));
      positions.push_back(torch::arange(lengths[d], torch::kLong));
    }
    // Two pads first, then the packed documents.
    const auto ids = torch::cat({torch::zeros({2}, torch::kLong), torch::cat(docs)}).unsqueeze(0);
    const auto mask = torch::cat({torch::zeros({2}, torch::kLong), torch::cat(masks)}).unsqueeze(0);
    const auto pos = torch::cat({torch::zeros({2}, torch::kLong), torch::cat(positions)}).unsqueeze(0);
    const auto packed = model(ids, pos, mask).logits;
    int64_t at = 2;
    for (size_t d = 0; d < lengths.size(); ++d) {
      const auto alone = model(docs[d].unsqueeze(0)).logits;
      const auto part = packed.narrow(1, at, lengths[d]);
      EXPECT_LT((part - alone).abs().max().item<double>() / alone.abs().max().item<double>(), 1e-5)
          << "document " << d << (cfg.is_mla() ? " (dsv3)" : " (qwen2)");
      at += lengths[d];
    }
    // A 0/1 mask over the same row lets the documents see each other: the later ones change.
    const auto one_doc = model(ids, pos, mask.ne(0).to(torch::kLong)).logits;
    EXPECT_GT((one_doc.narrow(1, 7, 3) - packed.narrow(1, 7, 3)).abs().max().item<double>(), 1e-3);
  }
}

}  // namespace
}  // namespace grpo::model
