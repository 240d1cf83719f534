// r1_pipeline: the DeepSeek-R1 recipe end to end, in R1's order:
//
//   sft          cold-start SFT of a new model on worked solutions          -> <run>/sft_model
//   grpo         reasoning-oriented GRPO with rule-based rewards            -> <run>/grpo_model
//   traces       rejection sampling: the RL model samples k completions per prompt, the correct
//                and well-formed ones are kept                              -> <run>/traces.jsonl
//   rs_sft       SFT of the RL model on those traces                       -> <run>/rs_sft_model
//   grpo2        a second GRPO stage: the final reasoning model (teacher)   -> <run>/teacher_model
//   student_sft  a new small dense student (Qwen2/Llama-style), SFT on the traces
//                (R1's distillation)                                        -> <run>/student_sft_model
//   distill      logit distillation of the student from the teacher         -> <run>/student_model
//   baseline     the same student, SFT only on the raw task data, as many steps as student_sft +
//                distill (the yardstick for the distillation)               -> <run>/baseline_model
//
// Each stage is a YAML section, writes an HF-format checkpoint and a summary
// (<run>/stages/<stage>.json, grpo/train/stage_ledger.h); run again into the same folder, the
// pipeline skips the finished stages and continues with the first unfinished one (--resume also
// continues that stage from its last checkpoint). `stages:` lists the stages to run. Ends with a
// table of held-out accuracy after every stage, with the models' sizes, and writes metrics.jsonl,
// completions.jsonl, training.png and results.json in the run folder.
//
//   r1_pipeline [--config FILE] [--set key=value]... [--resume] [--print-config]
//
// Without --config it runs its built-in default, configs/r1_pipeline.yaml (embedded at build time):
// a tiny DeepSeek-V3-style model learning 2-digit addition, and a smaller dense student, on a CPU
// in minutes.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "grpo/config/config.h"
#include "grpo/core/cli.h"
#include "grpo/core/files.h"
#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/run.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/train/distill_trainer.h"
#include "grpo/train/evaluate.h"
#include "grpo/train/grpo_trainer.h"
#include "grpo/train/job.h"
#include "grpo/train/rejection_sampling.h"
#include "grpo/train/sft_trainer.h"
#include "grpo/train/stage_ledger.h"
#include "r1_pipeline_default.h"  // kDefaultConfig: configs/r1_pipeline.yaml
#include "stage_table.h"

namespace {

using namespace grpo;

const std::vector<std::string> kStages = {"sft",   "grpo",        "traces",  "rs_sft",
                                          "grpo2", "student_sft", "distill", "baseline"};

struct PipelineConfig {
  RunConfig run;
  std::vector<std::string> stages = kStages;
  train::TokenizerSection tokenizer;
  train::ModelSection model;
  data::PromptConfig prompt;
  train::DataSection sft_data, rl_data, rs_data, eval_data;
  rewards::RewardsConfig rewards;
  train::EvalConfig eval;
  train::SftConfig sft;
  train::GrpoConfig grpo;
  train::RejectionSamplingConfig rejection_sampling;
  train::SftConfig rs_sft;
  train::GrpoConfig grpo2;
  train::ModelSection student;
  train::SftConfig student_sft;
  train::DistillConfig distill;

  template <class V>
  void visit(V& v) {
    v("run", run, "run folder, seed and logging");
    v("stages", stages,
      "stages to run, a subset of [sft, grpo, traces, rs_sft, grpo2, student_sft, distill, baseline] (run in that "
      "order)");
    v("tokenizer", tokenizer, "the tokenizer (teacher and student share it)");
    v("model", model, "the reasoning model: a new one from config, or an HF checkpoint (init)");
    v("prompt", prompt, "prompt template");
    v("sft_data", sft_data, "records with worked solutions: cold start, and the baseline student's data");
    v("rl_data", rl_data, "prompts with reference answers for both GRPO stages");
    v("rs_data", rs_data, "prompts with reference answers for rejection sampling");
    v("eval_data", eval_data, "held-out records for accuracy");
    v("rewards", rewards, "reward functions and weights (docs/rewards.md)");
    v("eval", eval, "held-out evaluation by generation + reward");
    v("sft", sft, "stage sft: cold-start SFT");
    v("grpo", grpo, "stage grpo: reasoning-oriented GRPO");
    v("rejection_sampling", rejection_sampling,
      "stage traces: k samples per rs_data prompt, keep the correct ones (output \"\" = <run>/traces.jsonl; "
      "seed 0 = from run.seed)");
    v("rs_sft", rs_sft, "stage rs_sft: SFT of the RL model on the traces");
    v("grpo2", grpo2, "stage grpo2: the second GRPO stage (its result is the teacher)");
    v("student", student, "the dense student: a new model from config (qwen2 or llama), or an HF checkpoint");
    v("student_sft", student_sft, "stage student_sft: the student's SFT on the traces");
    v("distill", distill, "stage distill: logit distillation of the student from the teacher");
  }

  std::string validate() const {
    for (const auto& s : stages) {
      if (std::find(kStages.begin(), kStages.end(), s) == kStages.end()) {
        return "stages: unknown stage '" + s +
               "' (expected some of sft, grpo, traces, rs_sft, grpo2, student_sft, distill, baseline)";
      }
    }
    if (std::set<std::string>(stages.begin(), stages.end()).size() != stages.size())
      return "stages: a stage is listed twice";
    return "";
  }
  bool has(const std::string& stage) const { return std::find(stages.begin(), stages.end(), stage) != stages.end(); }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = cli::parse_job_args(argc, argv);
    if (args.help) {
      std::cout << cli::job_usage("r1_pipeline",
                                  "The R1 recipe: cold-start SFT, GRPO, rejection sampling + SFT, GRPO, distillation "
                                  "into a dense student; on the built-in default or --config.");
      return 0;
    }
    config::Value root = args.config_path ? config::parse_yaml_file(*args.config_path)
                                          : config::parse_yaml_string(kDefaultConfig, "r1_pipeline (built-in)");
    for (const auto& o : args.overrides) config::apply_override(root, o);
    const auto cfg = config::from_value<PipelineConfig>(root);
    if (args.print_config) {
      std::cout << config::to_yaml(cfg);
      return 0;
    }
    Run run(cfg.run, config::to_yaml(cfg));
    const std::string config_path = args.config_path.value_or("");

    const auto tokenizer = train::make_tokenizer(cfg.tokenizer);
    const auto eval_records = train::load_records(cfg.eval_data);
    const rewards::RewardSet reward_set(cfg.rewards, config_path);
    auto evaluate = [&](model::CausalLM& m) {
      return train::evaluate(m, *tokenizer, cfg.prompt, eval_records, reward_set, cfg.eval);
    };
    auto held_out = [&](model::CausalLM& m) {
      return train::held_out_eval(m, *tokenizer, cfg.prompt, eval_records, reward_set, cfg.eval);
    };
    auto load = [&](const train::ModelSection& like, const std::string& dir) {
      train::ModelSection s = like;
      s.init = dir;
      s.config.reset();
      return train::make_model(s, *tokenizer, cfg.prompt.eos_token);
    };

    // What every stage depends on; each stage adds its own sections (grpo/train/stage_ledger.h).
    using train::StageLedger;
    examples::StageRunner stages(run, {{"run", "seed=" + std::to_string(cfg.run.seed) + "\n"},
                                       {"tokenizer", StageLedger::section_text(cfg.tokenizer)},
                                       {"model", StageLedger::section_text(cfg.model)},
                                       {"prompt", StageLedger::section_text(cfg.prompt)},
                                       {"rewards", StageLedger::section_text(cfg.rewards)},
                                       {"eval", StageLedger::section_text(cfg.eval)},
                                       {"eval_data", StageLedger::section_text(cfg.eval_data)}});
    auto stage = [&](const std::string& name, const std::vector<std::pair<std::string, std::string>>& own,
                     const std::function<void(train::StageSummary&)>& body) { return stages.run(name, own, body); };
    std::vector<examples::Row> table;
    nlohmann::json stage_seconds = nlohmann::json::object();

    // The reasoning model's checkpoint so far ("" = none yet).
    std::string teacher_dir = cfg.model.init;
    auto need_teacher = [&](const std::string& name) {
      if (teacher_dir.empty()) {
        throw std::runtime_error("stage " + name +
                                 " needs the reasoning model: list stage sft before it, or set model.init");
      }
    };

    // ---- Stage sft: cold start --------------------------------------------------------------
    if (cfg.has("sft")) {
      const auto s = stage(
          "sft", {{"sft_data", StageLedger::section_text(cfg.sft_data)}, {"sft", StageLedger::section_text(cfg.sft)}},
          [&](train::StageSummary& s) {
            torch::manual_seed(cfg.run.seed);
            auto model = teacher_dir.empty() ? train::make_model(cfg.model, *tokenizer, cfg.prompt.eos_token)
                                             : load(cfg.model, teacher_dir);
            const int64_t params = examples::parameters_of(model->config());
            examples::put_eval(s, "before", evaluate(model), params);
            const auto records = train::load_records(cfg.sft_data);
            train::SftTrainer sft(model, *tokenizer, cfg.prompt, cfg.sft, run, "sft");
            sft.train(records, held_out(model), args.resume);
            examples::put_eval(s, "after", evaluate(model), params);
            s.texts["output"] = train::save_model(run, model, cfg.tokenizer, "sft_model");
          });
      table.push_back(examples::row_of(s, "before", "before SFT"));
      table.push_back(examples::row_of(s, "after", "after SFT (cold start)"));
      teacher_dir = s.texts.at("output");
      stage_seconds["sft"] = s.numbers.at("seconds");
    }

    // ---- GRPO stages --------------------------------------------------------------------------
    std::optional<std::vector<data::Record>> rl_records;
    auto grpo_stage = [&](const std::string& name, const train::GrpoConfig& gcfg, const std::string& out,
                          const std::string& label) {
      need_teacher(name);
      const auto s = stage(
          name, {{"rl_data", StageLedger::section_text(cfg.rl_data)}, {name, StageLedger::section_text(gcfg)}},
          [&](train::StageSummary& s) {
            torch::manual_seed(cfg.run.seed);
            if (!rl_records) rl_records = train::load_records(cfg.rl_data);
            auto policy = load(cfg.model, teacher_dir);
            train::GrpoTrainer grpo(policy, *tokenizer, cfg.prompt, gcfg, reward_set, run, name);
            grpo.train(*rl_records, held_out(policy), args.resume);
            examples::put_eval(s, "after", evaluate(policy), examples::parameters_of(policy->config()));
            s.texts["output"] = train::save_model(run, policy, cfg.tokenizer, out);
          });
      table.push_back(examples::row_of(s, "after", label));
      teacher_dir = s.texts.at("output");
      stage_seconds[name] = s.numbers.at("seconds");
    };
    if (cfg.has("grpo")) grpo_stage("grpo", cfg.grpo, "grpo_model", "after GRPO");

    // ---- Stage traces: rejection sampling ---------------------------------------------------
    train::RejectionSamplingConfig rs_cfg = cfg.rejection_sampling;
    if (rs_cfg.output.empty()) rs_cfg.output = run.path("traces.jsonl");
    if (rs_cfg.seed == 0) rs_cfg.seed = static_cast<uint64_t>(cfg.run.seed) + 4;
    if (cfg.has("traces")) {
      need_teacher("traces");
      const auto s = stage("traces",
                           {{"rs_data", StageLedger::section_text(cfg.rs_data)},
                            {"rejection_sampling", StageLedger::section_text(cfg.rejection_sampling)}},
                           [&](train::StageSummary& s) {
                             auto teacher = load(cfg.model, teacher_dir);
                             const auto prompts = train::load_records(cfg.rs_data);
                             // A partial file is continued only when nothing before it ran again here.
                             const auto r = train::generate_traces(teacher, *tokenizer, cfg.prompt, prompts, reward_set,
                                                                   rs_cfg, {teacher_dir}, !stages.ran());
                             s.numbers["prompts"] = static_cast<double>(r.prompts);
                             s.numbers["completions"] = static_cast<double>(r.completions);
                             s.numbers["kept"] = static_cast<double>(r.kept);
                             s.numbers["pass_rate"] = r.pass_rate;
                             s.numbers["malformed"] = static_cast<double>(r.malformed);
                             s.numbers["incorrect"] = static_cast<double>(r.incorrect);
                             s.texts["output"] = rs_cfg.output;
                           });
      const auto count = [&](const char* k) { return static_cast<int64_t>(std::llround(s.numbers.at(k))); };
      log::info("traces: {} of {} sampled completions passed ({:.1f}%), {} kept from {} prompts, in {}",
                static_cast<int64_t>(std::llround(s.numbers.at("pass_rate") * s.numbers.at("completions"))),
                count("completions"), 100 * s.numbers.at("pass_rate"), count("kept"), count("prompts"),
                s.texts.at("output"));
      stage_seconds["traces"] = s.numbers.at("seconds");
    }
    auto trace_records = [&](const std::string& name) { return examples::load_traces(rs_cfg.output, name); };
    const auto traces_text = "output=" + rs_cfg.output + "\n";

    // ---- Stage rs_sft: SFT of the RL model on the traces ------------------------------------
    if (cfg.has("rs_sft")) {
      need_teacher("rs_sft");
      const auto s = stage("rs_sft", {{"traces", traces_text}, {"rs_sft", StageLedger::section_text(cfg.rs_sft)}},
                           [&](train::StageSummary& s) {
                             torch::manual_seed(cfg.run.seed);
                             auto model = load(cfg.model, teacher_dir);
                             train::SftTrainer sft(model, *tokenizer, cfg.prompt, cfg.rs_sft, run, "rs_sft");
                             sft.train(trace_records("rs_sft"), held_out(model), args.resume);
                             examples::put_eval(s, "after", evaluate(model), examples::parameters_of(model->config()));
                             s.texts["output"] = train::save_model(run, model, cfg.tokenizer, "rs_sft_model");
                           });
      table.push_back(examples::row_of(s, "after", "after rejection sampling + SFT"));
      teacher_dir = s.texts.at("output");
      stage_seconds["rs_sft"] = s.numbers.at("seconds");
    }
    if (cfg.has("grpo2")) grpo_stage("grpo2", cfg.grpo2, "teacher_model", "after GRPO 2 (the teacher)");

    // ---- Student stages ----------------------------------------------------------------------
    const std::string student_text = StageLedger::section_text(cfg.student);
    auto new_student = [&]() {
      torch::manual_seed(cfg.run.seed + 100);  // the same initial student for student_sft and baseline
      return train::make_model(cfg.student, *tokenizer, cfg.prompt.eos_token);
    };
    std::string student_dir;
    if (cfg.has("student_sft")) {
      const auto s = stage("student_sft",
                           {{"traces", traces_text},
                            {"student", student_text},
                            {"student_sft", StageLedger::section_text(cfg.student_sft)}},
                           [&](train::StageSummary& s) {
                             auto student = new_student();
                             const int64_t params = examples::parameters_of(student->config());
                             examples::put_eval(s, "before", evaluate(student), params);
                             train::SftTrainer sft(student, *tokenizer, cfg.prompt, cfg.student_sft, run,
                                                   "student_sft");
                             sft.train(trace_records("student_sft"), held_out(student), args.resume);
                             examples::put_eval(s, "after", evaluate(student), params);
                             s.texts["output"] = train::save_model(run, student, cfg.tokenizer, "student_sft_model");
                           });
      table.push_back(examples::row_of(s, "before", "student before distillation"));
      table.push_back(examples::row_of(s, "after", "student after SFT on traces"));
      student_dir = s.texts.at("output");
      stage_seconds["student_sft"] = s.numbers.at("seconds");
    }
    if (cfg.has("distill")) {
      need_teacher("distill");
      const auto s = stage(
          "distill",
          {{"traces", traces_text}, {"student", student_text}, {"distill", StageLedger::section_text(cfg.distill)}},
          [&](train::StageSummary& s) {
            auto student = student_dir.empty() ? new_student() : load(cfg.student, student_dir);
            auto teacher = load(cfg.model, teacher_dir);
            // Off-policy steps learn on the traces; on-policy ones on the student's own samples
            // of the same prompts.
            train::DistillTrainer d(student, teacher, *tokenizer, cfg.prompt, cfg.distill, run, "distill");
            d.train(trace_records("distill"), held_out(student), args.resume);
            examples::put_eval(s, "after", evaluate(student), examples::parameters_of(student->config()));
            s.texts["output"] = train::save_model(run, student, cfg.tokenizer, "student_model");
          });
      table.push_back(examples::row_of(s, "after", "student after logit distillation"));
      stage_seconds["distill"] = s.numbers.at("seconds");
    }
    if (cfg.has("baseline")) {
      train::SftConfig base_cfg = cfg.student_sft;
      base_cfg.steps = (cfg.has("student_sft") ? cfg.student_sft.steps : 0) +
                       (cfg.has("distill") ? cfg.distill.steps : 0);
      if (base_cfg.steps == 0) base_cfg.steps = cfg.student_sft.steps;
      const auto s = stage("baseline",
                           {{"sft_data", StageLedger::section_text(cfg.sft_data)},
                            {"student", student_text},
                            {"student_sft", StageLedger::section_text(cfg.student_sft)}},
                           [&](train::StageSummary& s) {
                             auto student = new_student();
                             train::SftTrainer sft(student, *tokenizer, cfg.prompt, base_cfg, run, "baseline");
                             sft.train(train::load_records(cfg.sft_data), held_out(student), args.resume);
                             examples::put_eval(s, "after", evaluate(student),
                                                examples::parameters_of(student->config()));
                             s.numbers["steps"] = static_cast<double>(base_cfg.steps);
                             s.texts["output"] = train::save_model(run, student, cfg.tokenizer, "baseline_model");
                           });
      table.push_back(examples::row_of(
          s, "after",
          grpo::format("student, SFT on raw data ({} steps)", static_cast<int64_t>(s.numbers.at("steps")))));
      stage_seconds["baseline"] = s.numbers.at("seconds");
    }

    const std::string plot = train::write_training_plot(run);
    nlohmann::json results = {{"seed", cfg.run.seed},
                              {"eval_records", eval_records.size()},
                              {"stages", examples::table_json(table)},
                              {"stage_seconds", stage_seconds}};
    write_file_atomic(run.path("results.json"), results.dump(2) + "\n");
    log::info("{}", examples::table_text(table));
    log::info("run folder {}: metrics.jsonl, completions.jsonl, results.json, stages/{}", run.dir(),
              plot.empty() ? "" : ", training.png");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "r1_pipeline: error: " << e.what() << "\n";
    return 1;
  }
}
