// Greedy generation against HF transformers' generate: generate_oracle.py saves a tiny DeepSeek-V3
// and a tiny Qwen2 checkpoint with HF's greedy continuations of a ragged, left-padded batch (64 new
// tokens); our engine, on the same weights, must produce the same tokens, with and without the
// cache and with both MLA forms.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>

#include "grpo/core/files.h"
#include "grpo/model/checkpoint.h"
#include "grpo/rollout/engine.h"

namespace grpo::rollout {
namespace {

void check_model(const std::string& name) {
  const char* dir_env = std::getenv("GRPO_ROLLOUT_ORACLE_DIR");
  if (dir_env == nullptr) GTEST_SKIP() << "GRPO_ROLLOUT_ORACLE_DIR not set (run through ctest)";
  const std::string dir = std::string(dir_env) + "/" + name;
  const auto ref = nlohmann::json::parse(read_file(dir + "/generate.json"));
  std::vector<GenerationRequest> reqs;
  for (const auto& p : ref["prompts"]) {
    GenerationRequest r;
    r.prompt_ids = p.get<std::vector<int64_t>>();
    reqs.push_back(r);
  }
  const auto want = ref["greedy"].get<std::vector<std::vector<int64_t>>>();
  auto model = model::load_hf_checkpoint(dir);
  std::vector<std::pair<std::string, model::AttentionImpl>> impls = {{"naive", model::AttentionImpl::naive}};
  if (model->config().is_mla()) impls.push_back({"absorbed", model::AttentionImpl::absorbed});
  for (const auto& [impl_name, impl] : impls) {
    model->set_attention_impl(impl);
    for (bool use_cache : {true, false}) {
      GenerationConfig gc;
      gc.max_new_tokens = ref["max_new_tokens"].get<int64_t>();
      gc.ignore_eos = true;  // HF ran with eos_token_id=None
      gc.sampling.temperature = 0;
      gc.use_cache = use_cache;
      const auto got = Engine(model, nullptr, gc).generate(reqs);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(got[i].token_ids, want[i]) << name << " " << impl_name << " cache " << use_cache << " row " << i
                                             << " (prompt length " << reqs[i].prompt_ids.size() << ")";
      }
    }
  }
  std::cout << name << ": " << want.size() << " rows x " << want[0].size()
            << " greedy tokens identical to HF generate (min top-2 margin " << ref["min_margin"].get<double>() << ")\n";
}

TEST(GenerateOracle, GreedyMatchesHfDeepSeekV3) { check_model("dsv3"); }
TEST(GenerateOracle, GreedyMatchesHfQwen2) { check_model("qwen2"); }

}  // namespace
}  // namespace grpo::rollout
