// Glue the multi-stage example programs (r1_pipeline, distill) share: running a stage through the
// stage ledger, evaluation results kept in a stage's summary (so a skipped stage still has its
// row), the traces file as SFT records, and the closing table.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/model/model_stats.h"
#include "grpo/train/evaluate.h"
#include "grpo/train/job.h"
#include "grpo/train/stage_ledger.h"

namespace grpo::examples {

// Runs a program's stages in order through the ledger. Every stage depends on the common inputs,
// on each earlier stage's own sections and on the list of stages so far.
class StageRunner {
 public:
  StageRunner(const Run& run, std::map<std::string, std::string> common) : ledger_(run), inputs_(std::move(common)) {}

  // `body` fills the summary of stage `name` (its outputs and numbers) unless the ledger has the
  // stage finished with these inputs; returns the summary either way.
  train::StageSummary run(const std::string& name, const std::vector<std::pair<std::string, std::string>>& own,
                          const std::function<void(train::StageSummary&)>& body) {
    stages_ += name + "\n";
    inputs_["stages"] = stages_;
    for (const auto& [k, v] : own) inputs_[k] = v;
    if (auto done = ledger_.finished(name, inputs_)) return *done;
    log::info("stage {}: start", name);
    const auto t0 = std::chrono::steady_clock::now();
    train::StageSummary s;
    s.stage = name;
    s.inputs = inputs_;
    body(s);
    s.numbers["seconds"] = seconds_since(t0);
    ledger_.record(s);
    return s;
  }

  // Whether a stage ran in this process (a partial output of an earlier one must then not be continued).
  bool ran() const { return ledger_.ran(); }

 private:
  train::StageLedger ledger_;
  std::map<std::string, std::string> inputs_;
  std::string stages_;
};

// The traces JSONL (rejection_sampling.h) as SFT records: prompt, the teacher's reasoning and answer.
inline std::vector<data::Record> load_traces(const std::string& path, const std::string& stage) {
  if (!std::filesystem::exists(path)) {
    throw std::runtime_error("stage " + stage + " needs the traces " + path +
                             ": list the traces stage before it, or point to a traces file");
  }
  train::DataSection d;
  d.jsonl.emplace();
  d.jsonl->path = path;
  d.jsonl->fields.reasoning = "reasoning";
  return train::load_records(d);
}

// One row of the closing table: a model after some stage, measured on the held-out records.
struct Row {
  std::string label;  // "after SFT", "student after distillation", ...
  double accuracy = 0, mean_reward = 0, mean_length = 0;
  int64_t parameters = 0;  // the model's parameters (without MTP modules)
};

// Stores `r` under "<key>.accuracy" etc. in the summary; `row_of` reads it back.
inline void put_eval(train::StageSummary& s, const std::string& key, const train::EvalResult& r, int64_t parameters) {
  s.numbers[key + ".accuracy"] = r.accuracy;
  s.numbers[key + ".mean_reward"] = r.mean_reward;
  s.numbers[key + ".mean_length"] = r.mean_length;
  s.numbers[key + ".parameters"] = static_cast<double>(parameters);
}

inline Row row_of(const train::StageSummary& s, const std::string& key, const std::string& label) {
  auto get = [&](const std::string& k) {
    const auto it = s.numbers.find(key + "." + k);
    return it == s.numbers.end() ? 0.0 : it->second;
  };
  return {label, get("accuracy"), get("mean_reward"), get("mean_length"), static_cast<int64_t>(get("parameters"))};
}

// Parameters of the main model (the MTP modules, used only in training, left out).
inline int64_t parameters_of(const model::ModelConfig& cfg) { return model::model_stats(cfg).total_parameters; }

// The table as text, and as JSON for results.json.
inline std::string table_text(const std::vector<Row>& rows) {
  std::string text = grpo::format("\n{:<38} {:18} {:12} {:12} {:12}\n", "model", "held-out accuracy", "mean reward",
                                  "mean length", "parameters");
  for (const auto& r : rows) {
    text += grpo::format("{:<38} {:18} {:12} {:12} {:12}\n", r.label, grpo::format("{:.3f}", r.accuracy),
                         grpo::format("{:.3f}", r.mean_reward), grpo::format("{:.1f}", r.mean_length),
                         std::to_string(r.parameters));
  }
  return text;
}

inline nlohmann::json table_json(const std::vector<Row>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows) {
    out.push_back({{"stage", r.label},
                   {"accuracy", r.accuracy},
                   {"mean_reward", r.mean_reward},
                   {"mean_length", r.mean_length},
                   {"parameters", r.parameters}});
  }
  return out;
}

}  // namespace grpo::examples
