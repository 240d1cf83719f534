#include "grpo/train/job.h"

#include "grpo/dist/world.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <stdexcept>

#include "grpo/core/files.h"
#include "grpo/core/log.h"
#include "grpo/core/plot.h"
#include "grpo/data/bpe_tokenizer.h"
#include "grpo/model/checkpoint.h"

namespace grpo::train {

std::string DataSection::validate() const {
  if (generator.has_value() == jsonl.has_value()) {
    return "give exactly one of `generator` and `jsonl`";
  }
  return "";
}

std::string ModelSection::validate() const {
  if (init.empty() == !config.has_value())
    return "give exactly one of `init` (a checkpoint) and `config` (a new model)";
  return "";
}

std::unique_ptr<data::Tokenizer> make_tokenizer(const TokenizerSection& cfg) {
  if (!cfg.path.empty()) return data::load_tokenizer(cfg.path);
  return data::BpeTokenizer::from_json(data::byte_tokenizer_json(cfg.special_tokens), "built-in byte tokenizer");
}

model::CausalLM make_model(const ModelSection& cfg, const data::Tokenizer& tokenizer, const std::string& eos_token) {
  // Under a launcher, "cuda" is this rank's GPU, and the process group starts here (grpo/dist/world.h).
  const torch::Device device = dist::device_for(cfg.device);
  dist::world(device);
  const auto dtype = cfg.dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
  if (!cfg.init.empty()) {
    model::LoadOptions lo;
    lo.dtype = dtype;
    lo.device = device;
    auto m = model::load_hf_checkpoint(cfg.init, lo);
    if (m->config().vocab_size < tokenizer.vocab_size()) {
      throw std::invalid_argument(cfg.init + ": the model's vocab_size " + std::to_string(m->config().vocab_size) +
                                  " is smaller than the tokenizer's " + std::to_string(tokenizer.vocab_size()));
    }
    return m;
  }
  model::ModelConfig mc = *cfg.config;
  if (mc.vocab_size == 0) mc.vocab_size = tokenizer.vocab_size();
  if (mc.vocab_size < tokenizer.vocab_size()) {
    throw std::invalid_argument("model.config.vocab_size " + std::to_string(mc.vocab_size) +
                                " is smaller than the tokenizer's " + std::to_string(tokenizer.vocab_size()));
  }
  if (mc.eos_token_ids.empty() && !eos_token.empty()) {
    if (const auto id = tokenizer.token_to_id(eos_token)) mc.eos_token_ids = {*id};
  }
  model::CausalLM m(mc, torch::TensorOptions().dtype(dtype).device(device));
  return m;
}

std::vector<data::Record> load_records(const DataSection& cfg) {
  if (cfg.generator) return data::generate(*cfg.generator);
  return data::load_jsonl(*cfg.jsonl);
}

std::string save_model(const Run& run, model::CausalLM& model, const TokenizerSection& tokenizer,
                       const std::string& name) {
  const std::string dir = run.path(name);
  auto& world = dist::world();
  if (world.is_main()) {  // rank 0 writes; every rank returns once the folder is complete
    model::save_hf_checkpoint(model, dir);
    if (tokenizer.path.empty()) {
      write_file_atomic(dir + "/tokenizer.json", data::byte_tokenizer_json(tokenizer.special_tokens));
    }
    log::info("saved {}", dir);
  }
  world.barrier();
  return dir;
}

std::function<std::vector<Metric>(int64_t)> held_out_eval(model::CausalLM model, const data::Tokenizer& tokenizer,
                                                          const data::PromptConfig& prompt,
                                                          const std::vector<data::Record>& records,
                                                          const rewards::RewardSet& rewards, const EvalConfig& cfg) {
  return [model, &tokenizer, &prompt, &records, &rewards, &cfg](int64_t) mutable {
    const auto r = evaluate(model, tokenizer, prompt, records, rewards, cfg);
    log::info("held-out accuracy {:.3f} (mean reward {:.3f}, length {:.1f})", r.accuracy, r.mean_reward, r.mean_length);
    return std::vector<Metric>{
        {"eval_accuracy", r.accuracy}, {"eval_reward", r.mean_reward}, {"eval_length", r.mean_length}};
  };
}

std::string write_training_plot(const Run& run) {
  const std::string path = run.path("training.png");
  if (!dist::is_main_process()) return path;  // rank 0's
  try {
    const auto rows = read_metrics(run.path("metrics.jsonl"));
    // Steps restart per stage; plot against the row index (global step) with one series per stage.
    std::map<std::string, PlotSeries> reward, accuracy, loss;
    double x = 0;
    for (const auto& row : rows) {
      x += 1;
      const double has_reward = row.get("reward", NAN), has_acc = row.get("eval_accuracy", NAN),
                   train_acc = row.get("accuracy", NAN), l = row.get("loss", NAN);
      const std::string stage = std::isnan(has_reward) ? "sft" : "grpo";
      if (!std::isnan(has_reward)) {
        reward["reward (grpo)"].x.push_back(x);
        reward["reward (grpo)"].y.push_back(has_reward);
      }
      if (!std::isnan(train_acc)) {
        accuracy["train accuracy (grpo samples)"].x.push_back(x);
        accuracy["train accuracy (grpo samples)"].y.push_back(train_acc);
      }
      if (!std::isnan(has_acc)) {
        accuracy["held-out accuracy"].x.push_back(x);
        accuracy["held-out accuracy"].y.push_back(has_acc);
      }
      if (!std::isnan(l)) {
        loss["loss (" + stage + ")"].x.push_back(x);
        loss["loss (" + stage + ")"].y.push_back(l);
      }
    }
    auto panel = [](std::string title, std::string y, std::map<std::string, PlotSeries>& series) {
      PlotPanel p;
      p.title = std::move(title);
      p.x_label = "step (all stages)";
      p.y_label = std::move(y);
      for (auto& [name, s] : series) {
        s.name = name;
        p.series.push_back(s);
      }
      return p;
    };
    std::vector<PlotPanel> panels = {panel("reward per step", "reward", reward),
                                     panel("accuracy per step", "accuracy", accuracy),
                                     panel("training loss", "loss", loss)};
    panels[1].y_min = 0;
    panels[1].y_max = 1;
    write_plot_png(path, panels);
    return path;
  } catch (const std::exception& e) {
    log::warn("could not write the training plot {}: {}", path, e.what());
    return "";
  }
}

}  // namespace grpo::train
