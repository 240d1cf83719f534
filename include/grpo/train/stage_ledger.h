// The stage ledger of a multi-stage job (r1_pipeline, distill): which stages of a run folder are
// finished, with what inputs, and what they measured; so an interrupted pipeline run again into
// the same folder skips what is done and continues with the first unfinished stage.
//
//   <run>/stages/<stage>.json   {"stage": "grpo", "finished": "2026-11-22T12:00:00Z",
//                                "inputs": {"grpo": "steps=200\n...", "model": "..."},
//                                "numbers": {"accuracy": 0.9, "seconds": 116.2},
//                                "texts": {"output": "runs/r1_pipeline/grpo_model"}}
//
// A stage's `inputs` are the config sections it depends on (its own and every earlier stage's), as
// "key=value" lines of their effective values, so that a changed setting is never mistaken for a
// finished stage. The file is written atomically after the stage's outputs, so its presence means
// they are complete.
//
//   StageLedger ledger(run);
//   const auto inputs = StageLedger::inputs_of({{"sft", sft_cfg}, {"model", model_cfg}});
//   if (auto done = ledger.finished("sft", inputs)) { use done->numbers; } else { run; ledger.record(...); }
//
// Rules: a stage is skipped when its file exists with the same inputs and no earlier stage ran in
// this process (once one stage runs, the later ones run again, since their input model changed).
// A finished stage whose inputs differ is an error naming the stage, the first differing key and
// the file: delete the file (to redo that stage and the ones after it) or use another output_dir.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/run.h"

namespace grpo::train {

struct StageSummary {
  std::string stage;                          // the stage's name
  std::string finished;                       // UTC time it was recorded (ISO 8601)
  std::map<std::string, std::string> inputs;  // section -> "key=value" lines it ran with
  std::map<std::string, double> numbers;      // what it measured (accuracy, seconds, kept traces...)
  std::map<std::string, std::string> texts;   // paths of its outputs and other notes
};

class StageLedger {
 public:
  explicit StageLedger(const Run& run);

  // A config section's effective values as sorted "key=value" lines, one per leaf (list items by
  // index: "functions.0.name=\"format\""; comments left out).
  template <class T>
  static std::string section_text(const T& section) {
    return lines_of(config::Writer::to_value(section));
  }

  // The summary of `stage` when it can be skipped (see the rules above); nullopt when it must run.
  // Throws std::runtime_error naming the file when it is unreadable or ran with other inputs.
  std::optional<StageSummary> finished(const std::string& stage, const std::map<std::string, std::string>& inputs);

  // Writes <run>/stages/<stage>.json (atomically) and marks that a stage ran in this process.
  void record(StageSummary summary);

  // Whether a stage ran (was recorded) in this process: later stages then run again too, and
  // their partial outputs from an earlier process must not be continued.
  bool ran() const { return ran_; }

  // <run>/stages/<stage>.json
  std::string path(const std::string& stage) const;

  // The first key where two section_text()s differ, as "key (was 'a', now 'b')", "key (new)" or
  // "key (gone)".
  static std::string first_difference(const std::string& was, const std::string& now);

 private:
  static std::string lines_of(const config::Value& tree);
  std::string dir_;
  bool ran_ = false;
};

}  // namespace grpo::train
