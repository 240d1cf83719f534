// Glue the multi-stage example programs (r1_pipeline, distill) share: evaluation results kept in a
// stage's summary (so a skipped stage still has its row), and the closing table.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "grpo/core/format.h"
#include "grpo/model/model_stats.h"
#include "grpo/train/evaluate.h"
#include "grpo/train/stage_ledger.h"

namespace grpo::examples {

// One row of the closing table: a model after some stage, measured on the held-out records.
struct Row {
  std::string label;        // "after SFT", "student after distillation", ...
  double accuracy = 0, mean_reward = 0, mean_length = 0;
  int64_t parameters = 0;   // the model's parameters (without MTP modules)
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
  std::string text = grpo::format("\n{:<36} {:18} {:12} {:12} {:12}\n", "model", "held-out accuracy", "mean reward",
                                  "mean length", "parameters");
  for (const auto& r : rows) {
    text += grpo::format("{:<36} {:18} {:12} {:12} {:12}\n", r.label, grpo::format("{:.3f}", r.accuracy),
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
