// FP8 training parity (docs/fp8.md): the same SFT run in float32 and with the model's FP8 Linear
// layers (DeepSeek-V3's recipe), seed by seed, and what the difference is made of.
//
// For every seed in `parity.seeds` it trains, with the same data order and initial weights:
//   fp32   model.config.fp8.enabled = false
//   fp8    model.config.fp8 as configured, enabled
//   noise  (parity.noise_arm) float32 with every initial weight matrix w -> w (1 + parity.init_noise z),
//          z ~ N(0, 1): how far two float32 trajectories drift apart from a tiny zero-mean change,
//          the yardstick for the gap
// and reports the final training loss of each (the mean of the last `parity.last_steps` logged
// total losses, CE + MTP) and the held-out CE of the final weights on `heldout_data`, each model
// evaluated with the float32 forward and with the FP8 forward (fp8_enable switches a model both
// ways). The four held-out numbers split the FP8 gap: FP8 weights in a float32 forward against
// float32 weights is what FP8 *training* cost; the float32 weights through the FP8 forward is the
// quantised forward's own error at equal weights.
//
//   grpo_fp8_parity --config configs/fp8_parity.yaml [--set key=value]...
//
// Writes <output_dir>/seed<S>/<arm>/ (a run folder: log, metrics, final checkpoint, result.json)
// and <output_dir>/parity.md + parity.json. An arm whose result.json was written with the same
// settings is reused, not retrained (its final checkpoint is evaluated again): seeds can run in
// separate processes (--set parity.seeds=[2]) and a last call with every seed only collects. A
// finished arm with other settings is an error naming the first differing setting (nothing is
// deleted); an unfinished one (no result.json) is started over; an arm is flock-ed while a process
// works on it. Run with OMP_NUM_THREADS=1 for bit-reproducible trajectories (the float32 reduction
// order depends on the thread count). On CUDA the trainer's bf16 autocast makes "float32" bf16.
#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <sys/file.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/cli.h"
#include "grpo/core/files.h"
#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/metrics.h"
#include "grpo/core/progress.h"
#include "grpo/core/run.h"
#include "grpo/data/prompt.h"
#include "grpo/model/fp8_linear.h"
#include "grpo/train/job.h"
#include "grpo/train/sft_trainer.h"
#include "grpo/train/stage_ledger.h"

namespace {

using namespace grpo;
namespace fs = std::filesystem;
using json = nlohmann::json;

struct ParityConfig {
  std::vector<int64_t> seeds = {1, 2, 3};  // one float32 / FP8 (/ noise) triple per seed
  int64_t last_steps = 50;                 // final training loss = mean of the last this many steps
  bool noise_arm = true;                   // also train the float32 noise yardstick
  double init_noise = 0.005;               // the noise arm: relative std of a random factor on each initial weight
  double goal = 0.0025;                    // the target: |mean FP8 / float32 - 1| of the final loss
  std::string fp8_arm = "fp8";             // the FP8 arm's folder under seed<S>/ (name FP8 variants apart)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("seeds", seeds, "one float32 / FP8 (/ noise) set of runs per seed");
    v("last_steps", last_steps, "final training loss = mean of the last this many step losses", Check().ge(1));
    v("noise_arm", noise_arm, "also train float32 with a perturbed init (the trajectory-noise yardstick)");
    v("init_noise", init_noise,
      "noise arm: each initial weight matrix times (1 + init_noise z), z ~ N(0, 1) per element", Check().gt(0));
    v("goal", goal, "target relative gap of the final training loss", Check().gt(0));
    v("fp8_arm", fp8_arm, "folder of the FP8 arm under seed<S>/; FP8 variants under other names share the float32 arms",
      Check().nonempty());
  }
  std::string validate() const {
    if (seeds.empty()) return "parity.seeds: expected at least one seed";
    if (fp8_arm == "fp32" || fp8_arm == "noise" || fp8_arm.find('/') != std::string::npos) {
      return "parity.fp8_arm: expected a folder name other than fp32 and noise, got '" + fp8_arm + "'";
    }
    return "";
  }
};

struct ParityJob {
  RunConfig run;
  train::TokenizerSection tokenizer;
  train::ModelSection model;
  data::PromptConfig prompt;
  train::DataSection data, heldout_data;
  train::SftConfig sft;
  ParityConfig parity;

  template <class V>
  void visit(V& v) {
    v("run", run, "output_dir holds seed<S>/<arm> and parity.md; run.seed is replaced by each parity seed");
    v("tokenizer", tokenizer, "the tokenizer");
    v("model", model, "a new model from config (config.fp8 configures the FP8 arm)");
    v("prompt", prompt, "prompt template");
    v("data", data, "training records with worked solutions");
    v("heldout_data", heldout_data, "held-out records with worked solutions (held-out CE)");
    v("sft", sft, "the SFT run every arm makes");
    v("parity", parity, "seeds, arms and the goal");
  }
};

// Held-out CE per completion token of `model` on `examples`, batches of `batch_size`, no MTP.
double heldout_ce(model::CausalLM& model, const std::vector<data::TokenizedExample>& examples, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  const auto device = model->embed_tokens.device();
  double sum = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < examples.size(); i += static_cast<size_t>(batch_size)) {
    std::vector<const data::TokenizedExample*> batch;
    for (size_t j = i; j < std::min(examples.size(), i + static_cast<size_t>(batch_size)); ++j)
      batch.push_back(&examples[j]);
    const auto b = train::pad_batch(batch);
    const auto out = model->forward(b.input_ids.to(device), b.position_ids.to(device), b.attention_mask.to(device));
    sum += train::sft_token_loss_sum(out.logits, b).item<double>();
    tokens += b.completion_tokens;
  }
  return sum / static_cast<double>(std::max<int64_t>(tokens, 1));
}

// The logged total loss of every step of the run folder's metrics.jsonl (the last line per step).
std::vector<double> step_losses(const std::string& metrics_path, int64_t steps) {
  std::vector<double> losses(static_cast<size_t>(steps), std::nan(""));
  for (const auto& row : read_metrics(metrics_path)) {
    if (row.step >= 1 && row.step <= steps) {
      const double loss = row.get("loss", std::nan(""));
      if (!std::isnan(loss)) losses[static_cast<size_t>(row.step - 1)] = loss;
    }
  }
  for (size_t i = 0; i < losses.size(); ++i) {
    if (std::isnan(losses[i])) {
      throw std::runtime_error(metrics_path + ": no loss logged for step " + std::to_string(i + 1));
    }
  }
  return losses;
}

double tail_mean(const std::vector<double>& v, int64_t n) {
  n = std::min<int64_t>(n, static_cast<int64_t>(v.size()));
  double s = 0;
  for (int64_t i = static_cast<int64_t>(v.size()) - n; i < static_cast<int64_t>(v.size()); ++i)
    s += v[static_cast<size_t>(i)];
  return s / static_cast<double>(n);
}

// An exclusive lock on a file for as long as it lives (flock): two processes never work on one arm.
class ArmLock {
 public:
  explicit ArmLock(const std::string& path) : fd_(::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open the lock file");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      throw std::runtime_error(path + ": this arm is in use by another grpo_fp8_parity process");
    }
  }
  ~ArmLock() { ::close(fd_); }
  ArmLock(const ArmLock&) = delete;
  ArmLock& operator=(const ArmLock&) = delete;

 private:
  int fd_;
};

// The noise arm's change of the initial weights: every weight matrix w -> w (1 + eps z), z ~ N(0, 1)
// per element, from a generator of its own (the global stream, and with it the data order, stays as
// in the other arms). The vectors (norm weights at 1, biases at 0) stay, and so the perturbed
// initial weights are as likely a draw of the init as the original ones: any systematic difference
// between the noise arm and float32 is chance. Scaling the init instead (initializer_range *
// (1 + eps)) is a systematic change: at 900 steps it moved the final loss by -2% to -5% on each of
// three seeds.
// eps far below E4M3's rounding (2^-4 relative) makes this the floor an FP8 gap is read against.
void perturb_weights(model::CausalLM& model, double eps, int64_t seed) {
  torch::NoGradGuard no_grad;
  auto generator = at::detail::createCPUGenerator(static_cast<uint64_t>(seed) ^ 0x9E3779B97F4A7C15ULL);
  for (auto& p : model->parameters()) {
    if (p.dim() < 2) continue;
    const auto z = at::randn(p.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat32));
    p.mul_((1 + eps * z).to(p.options()));
  }
}

// Held-out CE of `model` (the float32 weights of an arm) through the float32 forward, the FP8
// forward, and the FP8 forward with one layer kind, then one attention projection, at a time in FP8
// (where the forward's error is).
json evaluate(model::CausalLM& model, const model::Fp8Config& fp8, const std::vector<data::TokenizedExample>& heldout,
              int64_t batch_size) {
  auto ce_with = [&](model::Fp8Config cfg) {
    model::fp8_enable(*model, cfg);
    const double ce = heldout_ce(model, heldout, batch_size);
    model::fp8_enable(*model, model::Fp8Config{});
    return ce;
  };
  model::Fp8Config on = fp8;
  on.enabled = true;
  json out = {{"heldout_fp32_forward", ce_with(model::Fp8Config{})}, {"heldout_fp8_forward", ce_with(on)}};
  for (const char* kind : {"attention", "dense_mlp", "shared_experts", "experts"}) {
    model::Fp8Config only = on;
    only.attention = only.dense_mlp = only.shared_experts = only.experts = false;
    const std::string k = kind;
    (k == "attention"        ? only.attention
     : k == "dense_mlp"      ? only.dense_mlp
     : k == "shared_experts" ? only.shared_experts
                             : only.experts) = true;
    out["heldout_fp8_" + k + "_only"] = ce_with(only);
  }
  // Each attention projection alone in FP8 (the same projection of every layer and the MTP block).
  std::vector<std::pair<std::string, model::LinearImpl*>> attention;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    if (auto* linear = dynamic_cast<model::LinearImpl*>(item.value().get());
        linear != nullptr && item.key().find("self_attn.") != std::string::npos) {
      attention.emplace_back(item.key().substr(item.key().rfind('.') + 1), linear);
    }
  }
  json projections = json::object();
  for (const auto& [name, unused] : attention) {
    if (projections.contains(name)) continue;
    for (auto& [other, linear] : attention) {
      if (other == name) linear->fp8 = on;
    }
    projections[name] = heldout_ce(model, heldout, batch_size);
    model::fp8_enable(*model, model::Fp8Config{});
  }
  out["heldout_fp8_attention_projection_only"] = projections;
  return out;
}

// One arm of one seed: trains (or reuses an earlier run with the same settings: its result.json
// and final checkpoint), then evaluates the final weights with every forward (always recomputed).
// Returns {seed, losses, seconds, final_loss (of the last parity.last_steps), heldout_*}.
// `arm` is fp32, fp8 or noise; the FP8 arm's folder is parity.fp8_arm.
json run_arm(const ParityJob& job, int64_t seed, const std::string& arm, const data::Tokenizer& tokenizer,
             const std::vector<data::TokenizedExample>& heldout) {
  ParityJob arm_job = job;
  arm_job.run.seed = seed;
  arm_job.run.output_dir = (fs::path(job.run.output_dir) / ("seed" + std::to_string(seed)) /
                            (arm == "fp8" ? job.parity.fp8_arm : arm))
                               .string();
  auto& mc = *arm_job.model.config;
  mc.fp8.enabled = arm == "fp8";
  // What the training depends on: the seed but not the rest of the run section, not the parity
  // section (but the noise arm's perturbation) and,
  // for the float32 arms, not the FP8 settings (so FP8 variants share their float32 arms).
  ParityJob settings = arm_job;
  settings.run = RunConfig{};  // not where the folder is, nor the logging
  settings.run.seed = seed;
  settings.parity = ParityConfig{};
  settings.parity.seeds = {seed};
  if (arm == "noise") settings.parity.init_noise = job.parity.init_noise;
  if (arm != "fp8") settings.model.config->fp8 = model::Fp8Config{};
  const std::string settings_text = train::StageLedger::section_text(settings);  // "key=value" lines
  const fs::path dir = arm_job.run.output_dir;
  fs::create_directories(dir.parent_path());
  const ArmLock lock(dir.string() + ".lock");
  const std::string result_path = (dir / "result.json").string();
  const std::string final_checkpoint =
      (dir / "checkpoints" / "sft" / ("step_" + std::to_string(job.sft.steps))).string();

  json result;
  if (fs::exists(result_path)) {
    json old;
    try {
      old = json::parse(read_file(result_path));
    } catch (const json::exception& e) {
      throw std::runtime_error(result_path + ": not a result of this bench (" + e.what() +
                               "); remove the arm's folder");
    }
    const std::string old_settings = old.is_object() ? old.value("settings", "") : "";
    if (old_settings != settings_text) {
      throw std::runtime_error(dir.string() + ": finished with other settings: " +
                               train::StageLedger::first_difference(old_settings, settings_text) +
                               "; choose another run.output_dir or parity.fp8_arm, or remove that folder");
    }
    if (!fs::exists(final_checkpoint)) throw std::runtime_error(final_checkpoint + ": missing (result.json is there)");
    log::info("seed {} {}: reusing {}", seed, arm, result_path);
    result = old;
  } else {
    fs::remove_all(dir);  // an unfinished arm (no result.json): start it over
    Run run(arm_job.run, config::to_yaml(arm_job));
    torch::manual_seed(seed);
    auto model = train::make_model(arm_job.model, tokenizer, arm_job.prompt.eos_token);
    if (arm == "noise") perturb_weights(model, job.parity.init_noise, seed);
    const auto records = train::load_records(arm_job.data);
    train::SftTrainer trainer(model, tokenizer, arm_job.prompt, arm_job.sft, run, "sft");
    const auto trained = trainer.train(records);
    const auto losses = step_losses(run.path("metrics.jsonl"), arm_job.sft.steps);
    result = {{"seed", seed}, {"losses", losses}, {"seconds", trained.seconds}, {"settings", settings_text}};
    write_file_atomic(result_path, result.dump(1));
  }
  // The final weights into a float32 model (FP8 is switched per evaluation).
  train::ModelSection plain = arm_job.model;
  plain.config->fp8.enabled = false;
  torch::manual_seed(seed);
  auto model = train::make_model(plain, tokenizer, arm_job.prompt.eos_token);
  train::load_checkpoint(final_checkpoint, model, nullptr);
  result["final_loss"] = tail_mean(result["losses"].get<std::vector<double>>(), job.parity.last_steps);
  const json evaluation = evaluate(model, job.model.config->fp8, heldout, job.sft.batch_size);
  for (const auto& [key, value] : evaluation.items()) result[key] = value;
  log::info("seed {} {}: final loss {:.5f}, held-out CE {:.5f} (float32 forward) {:.5f} (FP8 forward)", seed, arm,
            result["final_loss"].get<double>(), result["heldout_fp32_forward"].get<double>(),
            result["heldout_fp8_forward"].get<double>());
  return result;
}

std::string pct(double a, double b) { return format("{:.2f}%", 100.0 * (a / b - 1)); }

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = cli::parse_job_args(argc, argv);
    if (args.help || !args.config_path) {
      std::cout << cli::job_usage("grpo_fp8_parity",
                                  "FP8 vs float32 training parity (docs/fp8.md); --config is required.");
      return args.help ? 0 : 2;
    }
    const auto job = config::load<ParityJob>(*args.config_path, args.overrides);
    if (args.print_config) {
      std::cout << config::to_yaml(job);
      return 0;
    }
    if (!job.model.init.empty() || !job.model.config) {
      throw std::invalid_argument("model: expected a new model from model.config (init must be empty)");
    }
    const auto tokenizer = train::make_tokenizer(job.tokenizer);
    const auto heldout_records = train::load_records(job.heldout_data);
    const auto heldout = data::tokenize_examples(*tokenizer, job.prompt, heldout_records, job.sft.max_length).examples;
    if (heldout.empty()) throw std::invalid_argument("heldout_data: no examples left after tokenization");

    std::vector<std::string> arms = {"fp32", "fp8"};
    if (job.parity.noise_arm) arms.push_back("noise");
    json all = json::array();
    std::ostringstream md;
    md << "| seed | float32 | FP8 | FP8 vs float32 |" << (job.parity.noise_arm ? " noise | noise vs float32 |" : "")
       << " held-out: float32 | FP8 | FP8 weights, float32 forward | float32 weights, FP8 forward |\n|---|---|---|---|"
       << (job.parity.noise_arm ? "---|---|" : "") << "---|---|---|---|\n";
    double gap_sum = 0, noise_sum = 0, noise_abs = 0, h_gap = 0, h_train = 0, h_forward = 0;
    std::vector<double> gaps;
    for (const int64_t seed : job.parity.seeds) {
      std::map<std::string, json> r;
      for (const auto& arm : arms) r[arm] = run_arm(job, seed, arm, *tokenizer, heldout);
      for (auto& [name, v] : r) {
        json row = v;
        row.erase("settings");
        row["arm"] = name == "fp8" ? job.parity.fp8_arm : name;
        all.push_back(row);
      }
      const double f32 = r["fp32"]["final_loss"], f8 = r["fp8"]["final_loss"];
      const double h32 = r["fp32"]["heldout_fp32_forward"], h8 = r["fp8"]["heldout_fp8_forward"];
      const double h8w32f = r["fp8"]["heldout_fp32_forward"], h32w8f = r["fp32"]["heldout_fp8_forward"];
      gaps.push_back(f8 / f32 - 1);
      gap_sum += f8 / f32 - 1;
      h_gap += h8 / h32 - 1;
      h_train += h8w32f / h32 - 1;
      h_forward += h32w8f / h32 - 1;
      md << "| " << seed << " | " << format("{:.5f}", f32) << " | " << format("{:.5f}", f8) << " | " << pct(f8, f32)
         << " |";
      if (job.parity.noise_arm) {
        const double fn = r["noise"]["final_loss"];
        noise_sum += fn / f32 - 1;
        noise_abs += std::abs(fn / f32 - 1);
        md << " " << format("{:.5f}", fn) << " | " << pct(fn, f32) << " |";
      }
      md << " " << format("{:.5f}", h32) << " | " << format("{:.5f}", h8) << " (" << pct(h8, h32) << ") | "
         << format("{:.5f}", h8w32f) << " (" << pct(h8w32f, h32) << ") | " << format("{:.5f}", h32w8f) << " ("
         << pct(h32w8f, h32) << ") |\n";
    }
    md << "\nThe FP8 forward's error at the float32 run's final weights, one layer kind at a time in FP8 (held-out CE "
          "vs the float32 forward):\n\n| seed | all | attention | dense_mlp | shared_experts | experts |\n"
          "|---|---|---|---|---|---|\n";
    for (const auto& row : all) {
      if (row["arm"] != "fp32") continue;
      const double base = row["heldout_fp32_forward"];
      md << "| " << row["seed"].get<int64_t>() << " | " << pct(row["heldout_fp8_forward"].get<double>(), base);
      for (const char* kind : {"attention", "dense_mlp", "shared_experts", "experts"}) {
        md << " | " << pct(row[std::string("heldout_fp8_") + kind + "_only"].get<double>(), base);
      }
      md << " |\n";
    }
    md << "\nThe same, one attention projection at a time (in every layer):\n\n| seed |";
    std::string rule = "|---|";
    for (const auto& row : all) {
      if (row["arm"] != "fp32") continue;
      const auto& proj = row["heldout_fp8_attention_projection_only"];
      if (rule == "|---|") {
        for (const auto& [name, unused] : proj.items()) {
          md << " " << name << " |";
          rule += "---|";
        }
        md << "\n" << rule << "\n";
      }
      md << "| " << row["seed"].get<int64_t>() << " |";
      for (const auto& [name, ce] : proj.items())
        md << " " << pct(ce.get<double>(), row["heldout_fp32_forward"].get<double>()) << " |";
      md << "\n";
    }
    const double n = static_cast<double>(job.parity.seeds.size());
    const double mean_gap = gap_sum / n;
    double var = 0;
    for (const double g : gaps) var += (g - mean_gap) * (g - mean_gap);
    const double sem = gaps.size() > 1 ? std::sqrt(var / (n - 1) / n) : 0.0;
    md << "\nmean over " << job.parity.seeds.size() << " seeds: final training loss FP8 vs float32 "
       << format("{:.2f}% (standard error {:.2f}%)", 100 * mean_gap, 100 * sem);
    if (job.parity.noise_arm) {
      md << format(", noise arm vs float32 {:.2f}% (mean |.| {:.2f}%)", 100 * noise_sum / n, 100 * noise_abs / n);
    }
    md << format(
              "; held-out CE: FP8 {:.2f}%, of which training (FP8 weights, float32 forward) {:.2f}% and the "
              "FP8 forward at float32 weights {:.2f}%",
              100 * h_gap / n, 100 * h_train / n, 100 * h_forward / n)
       << "\ngoal |mean gap| <= " << format("{:.2f}%", 100 * job.parity.goal) << ": "
       << (std::abs(mean_gap) <= job.parity.goal ? "met" : "NOT met") << "\n";
    fs::create_directories(job.run.output_dir);
    write_file_atomic((fs::path(job.run.output_dir) / "parity.json").string(),
                      json{{"runs", all}, {"mean_gap", mean_gap}, {"standard_error", sem}}.dump(1));
    write_file_atomic((fs::path(job.run.output_dir) / "parity.md").string(), md.str());
    std::cout << md.str();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "grpo_fp8_parity: error: " << e.what() << "\n";
    return 1;
  }
}
