// distill: a reasoning teacher into a small dense student, in up to three stages:
//
//   traces   rejection sampling: the teacher samples k completions per prompt, the reward functions
//            keep the correct and well-formed ones                       -> <run>/traces.jsonl
//   sft      sequence-level distillation: SFT of the student on the traces (R1's distillation)
//                                                                         -> <run>/student_sft_model
//   distill  logit-level distillation (forward/reverse KL, JSD) on the traces and on the student's
//            own samples scored by the teacher (shared tokenizer)          -> <run>/student_model
//
// Each stage writes its output and a summary (<run>/stages/<stage>.json); run again into the same
// folder, finished stages are skipped (--resume also continues an unfinished one from its last
// checkpoint). Traces from elsewhere: leave out the traces stage and set traces_file.
//
//   distill --config configs/distill.yaml [--set key=value]... [--resume] [--print-config]
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "grpo/config/config.h"
#include "grpo/core/cli.h"
#include "grpo/core/files.h"
#include "grpo/core/log.h"
#include "grpo/core/run.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/train/distill_trainer.h"
#include "grpo/train/evaluate.h"
#include "grpo/train/job.h"
#include "grpo/train/rejection_sampling.h"
#include "grpo/train/sft_trainer.h"
#include "grpo/train/stage_ledger.h"
#include "stage_table.h"

namespace {

using namespace grpo;

struct DistillJob {
  RunConfig run;
  std::vector<std::string> stages = {"traces", "sft", "distill"};
  train::TokenizerSection tokenizer;
  train::ModelSection teacher;
  train::ModelSection student;
  data::PromptConfig prompt;
  train::DataSection prompts, eval_data;
  std::string traces_file;
  rewards::RewardsConfig rewards;
  train::EvalConfig eval;
  train::RejectionSamplingConfig rejection_sampling;
  train::SftConfig sft;
  train::DistillConfig distill;

  template <class V>
  void visit(V& v) {
    v("run", run, "run folder, seed and logging");
    v("stages", stages, "stages to run, a subset of [traces, sft, distill] (run in that order)");
    v("tokenizer", tokenizer, "the tokenizer teacher and student share");
    v("teacher", teacher, "the teacher: an HF checkpoint (init)");
    v("student", student, "the student: a new model from config (qwen2 or llama), or an HF checkpoint");
    v("prompt", prompt, "prompt template");
    v("prompts", prompts, "prompts with reference answers: rejection sampling and on-policy distillation");
    v("eval_data", eval_data, "held-out records for accuracy");
    v("traces_file", traces_file, "the traces JSONL; \"\" = <run>/traces.jsonl (written by the traces stage)");
    v("rewards", rewards, "reward functions: which traces are kept, and the evaluation");
    v("eval", eval, "held-out evaluation by generation + reward");
    v("rejection_sampling", rejection_sampling, "stage traces (its output is traces_file; seed 0 = from run.seed)");
    v("sft", sft, "stage sft: the student's SFT on the traces");
    v("distill", distill, "stage distill: logit distillation from the teacher");
  }
  std::string validate() const {
    for (const auto& s : stages) {
      if (s != "traces" && s != "sft" && s != "distill") {
        return "stages: unknown stage '" + s + "' (expected some of traces, sft, distill)";
      }
    }
    if (teacher.init.empty()) return "teacher.init: the teacher's HF checkpoint is required";
    return "";
  }
  bool has(const std::string& s) const { return std::find(stages.begin(), stages.end(), s) != stages.end(); }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = cli::parse_job_args(argc, argv);
    if (args.help || !args.config_path) {
      std::cout << cli::job_usage("distill",
                                  "Rejection sampling, SFT and logit distillation of a student "
                                  "(docs/distillation.md); --config is required.");
      return args.help ? 0 : 2;
    }
    const auto cfg = config::load<DistillJob>(*args.config_path, args.overrides);
    if (args.print_config) {
      std::cout << config::to_yaml(cfg);
      return 0;
    }
    Run run(cfg.run, config::to_yaml(cfg));
    const auto tokenizer = train::make_tokenizer(cfg.tokenizer);
    const auto eval_records = train::load_records(cfg.eval_data);
    const rewards::RewardSet reward_set(cfg.rewards, *args.config_path);
    auto evaluate = [&](model::CausalLM& m) {
      return train::evaluate(m, *tokenizer, cfg.prompt, eval_records, reward_set, cfg.eval);
    };
    auto held_out = [&](model::CausalLM& m) {
      return train::held_out_eval(m, *tokenizer, cfg.prompt, eval_records, reward_set, cfg.eval);
    };
    auto teacher = [&]() {
      try {
        return train::make_model(cfg.teacher, *tokenizer, cfg.prompt.eos_token);
      } catch (const std::exception& e) {
        throw std::runtime_error(std::string("teacher.init: ") + e.what());
      }
    }();
    train::RejectionSamplingConfig rs_cfg = cfg.rejection_sampling;
    rs_cfg.output = cfg.traces_file.empty() ? run.path("traces.jsonl") : cfg.traces_file;
    if (rs_cfg.seed == 0) rs_cfg.seed = static_cast<uint64_t>(cfg.run.seed) + 4;

    using train::StageLedger;
    examples::StageRunner stages(run, {{"run", "seed=" + std::to_string(cfg.run.seed) + "\n"},
                                       {"tokenizer", StageLedger::section_text(cfg.tokenizer)},
                                       {"teacher", StageLedger::section_text(cfg.teacher)},
                                       {"student", StageLedger::section_text(cfg.student)},
                                       {"prompt", StageLedger::section_text(cfg.prompt)},
                                       {"prompts", StageLedger::section_text(cfg.prompts)},
                                       {"rewards", StageLedger::section_text(cfg.rewards)},
                                       {"eval", StageLedger::section_text(cfg.eval)},
                                       {"eval_data", StageLedger::section_text(cfg.eval_data)},
                                       {"traces_file", "path=" + rs_cfg.output + "\n"}});
    auto stage = [&](const std::string& name, const std::string& section, const std::string& text,
                     const std::function<void(train::StageSummary&)>& body) {
      return stages.run(name, {{section, text}}, body);
    };
    std::vector<examples::Row> table;
    const int64_t teacher_params = examples::parameters_of(teacher->config());

    if (cfg.has("traces")) {
      const auto s = stage("traces", "rejection_sampling", StageLedger::section_text(cfg.rejection_sampling),
                           [&](train::StageSummary& s) {
                             examples::put_eval(s, "teacher", evaluate(teacher), teacher_params);
                             const auto r = train::generate_traces(teacher, *tokenizer, cfg.prompt,
                                                                   train::load_records(cfg.prompts), reward_set, rs_cfg,
                                                                   {cfg.teacher.init}, !stages.ran());
                             s.numbers["kept"] = static_cast<double>(r.kept);
                             s.numbers["pass_rate"] = r.pass_rate;
                           });
      table.push_back(examples::row_of(s, "teacher", "teacher"));
      log::info("traces: pass rate {:.3f}, {} kept, in {}", s.numbers.at("pass_rate"),
                static_cast<int64_t>(s.numbers.at("kept")), rs_cfg.output);
    }
    auto traces = [&]() { return examples::load_traces(rs_cfg.output, "sft/distill"); };
    std::string student_dir = cfg.student.init;
    auto student_model = [&]() {
      train::ModelSection s = cfg.student;
      if (!student_dir.empty()) {
        s.init = student_dir;
        s.config.reset();
      }
      torch::manual_seed(cfg.run.seed);
      return train::make_model(s, *tokenizer, cfg.prompt.eos_token);
    };
    if (cfg.has("sft")) {
      const auto s = stage("sft", "sft", StageLedger::section_text(cfg.sft), [&](train::StageSummary& s) {
        auto student = student_model();
        const int64_t params = examples::parameters_of(student->config());
        examples::put_eval(s, "before", evaluate(student), params);
        train::SftTrainer sft(student, *tokenizer, cfg.prompt, cfg.sft, run, "student_sft");
        sft.train(traces(), held_out(student), args.resume);
        examples::put_eval(s, "after", evaluate(student), params);
        s.texts["output"] = train::save_model(run, student, cfg.tokenizer, "student_sft_model");
      });
      table.push_back(examples::row_of(s, "before", "student before"));
      table.push_back(examples::row_of(s, "after", "student after SFT on traces"));
      student_dir = s.texts.at("output");
    }
    if (cfg.has("distill")) {
      const auto s = stage("distill", "distill", StageLedger::section_text(cfg.distill), [&](train::StageSummary& s) {
        auto student = student_model();
        // On-policy steps draw prompts from the traces' prompts; with on_policy_fraction 1 and no
        // traces, from `prompts`.
        const auto records = (cfg.distill.on_policy_fraction >= 1.0 && !std::filesystem::exists(rs_cfg.output))
                                 ? train::load_records(cfg.prompts)
                                 : traces();
        train::DistillTrainer d(student, teacher, *tokenizer, cfg.prompt, cfg.distill, run, "distill");
        d.train(records, held_out(student), args.resume);
        examples::put_eval(s, "after", evaluate(student), examples::parameters_of(student->config()));
        s.texts["output"] = train::save_model(run, student, cfg.tokenizer, "student_model");
      });
      table.push_back(examples::row_of(s, "after", "student after logit distillation"));
    }
    write_file_atomic(run.path("results.json"),
                      nlohmann::json({{"seed", cfg.run.seed}, {"stages", examples::table_json(table)}}).dump(2) + "\n");
    log::info("{}", examples::table_text(table));
    log::info("run folder {}", run.dir());
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "distill: error: " << e.what() << "\n";
    return 1;
  }
}
