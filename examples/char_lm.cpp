// char_lm: the main job until the trainers land. Trains a small character-level language model on
// generated addition problems ("37+45=82") and reports held-out exact-match accuracy, using the
// library's config loading, run folder, logging, metrics and progress line.
//
//   char_lm --config configs/char_lm.yaml [--set train.steps=200] [--print-config]
//
// The model reads "a+b=" and writes the sum's digits, least significant first, then a newline;
// that order lets a left-to-right model carry the way people do. Accuracy is greedy decoding of
// problems never seen in training.
#include <torch/torch.h>

#include <cstdint>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/cli.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/core/run.h"
#include "grpo/version.h"

namespace {

using grpo::config::Check;

struct TaskConfig {
  int digits = 2;           // operands have 1..digits digits
  int eval_problems = 200;  // held-out problems (never trained on)
  template <class V>
  void visit(V& v) {
    v("digits", digits, "maximum digits per operand", Check().in(1, 6));
    v("eval_problems", eval_problems, "held-out problems for accuracy", Check().ge(1));
  }
};

struct ModelConfig {
  int embed_dim = 32;    // character embedding width
  int hidden_dim = 128;  // GRU state width
  int layers = 1;        // stacked GRU layers
  template <class V>
  void visit(V& v) {
    v("embed_dim", embed_dim, "character embedding width", Check().ge(1));
    v("hidden_dim", hidden_dim, "GRU state width", Check().ge(1));
    v("layers", layers, "stacked GRU layers", Check().in(1, 8));
  }
};

struct TrainConfig {
  int steps = 3000;           // optimizer steps
  int batch_size = 64;        // problems per step
  double lr = 3e-3;           // AdamW peak learning rate
  double weight_decay = 0.0;  // AdamW decoupled weight decay
  double grad_clip = 1.0;     // max global gradient norm (0 = off)
  int eval_every = 500;       // steps between held-out evaluations
  template <class V>
  void visit(V& v) {
    v("steps", steps, "optimizer steps", Check().ge(1));
    v("batch_size", batch_size, "problems per step", Check().ge(1));
    v("lr", lr, "AdamW learning rate (cosine decay to 10%)", Check().gt(0));
    v("weight_decay", weight_decay, "AdamW decoupled weight decay", Check().ge(0));
    v("grad_clip", grad_clip, "max global gradient norm, 0 = off", Check().ge(0));
    v("eval_every", eval_every, "steps between held-out evaluations", Check().ge(1));
  }
};

struct JobConfig {
  grpo::RunConfig run;
  TaskConfig task;
  ModelConfig model;
  TrainConfig train;
  template <class V>
  void visit(V& v) {
    v("run", run, "run folder, seed and logging");
    v("task", task, "generated addition problems");
    v("model", model, "character GRU language model");
    v("train", train, "training loop");
  }
};

// Vocabulary: digits, '+', '=', newline (end), and padding.
constexpr int kPad = 13;
constexpr int kVocab = 14;
int char_id(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c == '+') return 10;
  if (c == '=') return 11;
  return 12;  // '\n'
}

struct Problem {
  int64_t a, b;
  std::string prompt() const { return std::to_string(a) + "+" + std::to_string(b) + "="; }
  std::string answer() const {  // least significant digit first, then the end mark
    std::string s = std::to_string(a + b);
    return std::string(s.rbegin(), s.rend()) + "\n";
  }
};

class Problems {
 public:
  Problems(const TaskConfig& cfg, uint64_t seed) : max_(1), rng_(seed) {
    for (int i = 0; i < cfg.digits; ++i) max_ *= 10;
    std::mt19937_64 eval_rng(seed ^ 0x5eedULL);
    while (static_cast<int>(eval_.size()) < cfg.eval_problems) {
      Problem p = draw(eval_rng);
      if (held_out_.insert({p.a, p.b}).second) eval_.push_back(p);
    }
  }
  Problem train_problem() {
    while (true) {
      Problem p = draw(rng_);
      if (!held_out_.count({p.a, p.b})) return p;
    }
  }
  const std::vector<Problem>& eval() const { return eval_; }

 private:
  Problem draw(std::mt19937_64& rng) const {
    std::uniform_int_distribution<int64_t> d(0, max_ - 1);
    return {d(rng), d(rng)};
  }
  int64_t max_;
  std::mt19937_64 rng_;
  std::set<std::pair<int64_t, int64_t>> held_out_;
  std::vector<Problem> eval_;
};

struct CharLmImpl : torch::nn::Module {
  CharLmImpl(const ModelConfig& cfg)
      : embed(register_module("embed", torch::nn::Embedding(kVocab, cfg.embed_dim))),
        gru(register_module(
            "gru", torch::nn::GRU(
                       torch::nn::GRUOptions(cfg.embed_dim, cfg.hidden_dim).num_layers(cfg.layers).batch_first(true)))),
        head(register_module("head", torch::nn::Linear(cfg.hidden_dim, kVocab))) {}

  // ids [B, T] -> logits [B, T, V]; `state` carries the GRU state for step-by-step decoding.
  torch::Tensor forward(const torch::Tensor& ids, torch::Tensor& state) {
    auto [out, next] = state.defined() ? gru(embed(ids), state) : gru(embed(ids));
    state = next;
    return head(out);
  }

  torch::nn::Embedding embed;
  torch::nn::GRU gru;
  torch::nn::Linear head;
};
TORCH_MODULE(CharLm);

// A batch of prompt+answer sequences. inputs [B, T], targets [B, T] with kPad-masked prompt
// positions (loss only on the answer, the same convention as SFT on completions).
std::pair<torch::Tensor, torch::Tensor> make_batch(Problems& problems, int batch_size) {
  std::vector<std::string> texts;
  std::vector<size_t> prompt_lengths;
  size_t max_len = 0;
  for (int i = 0; i < batch_size; ++i) {
    const Problem p = problems.train_problem();
    texts.push_back(p.prompt() + p.answer());
    prompt_lengths.push_back(p.prompt().size());
    max_len = std::max(max_len, texts.back().size());
  }
  auto inputs = torch::full({batch_size, static_cast<int64_t>(max_len - 1)}, kPad, torch::kLong);
  auto targets = torch::full_like(inputs, kPad);
  auto in_acc = inputs.accessor<int64_t, 2>();
  auto tg_acc = targets.accessor<int64_t, 2>();
  for (int i = 0; i < batch_size; ++i) {
    const std::string& t = texts[i];
    for (size_t j = 0; j + 1 < t.size(); ++j) {
      in_acc[i][j] = char_id(t[j]);
      if (j + 1 >= prompt_lengths[i]) tg_acc[i][j] = char_id(t[j + 1]);
    }
  }
  return {inputs, targets};
}

// Greedy decoding of every held-out problem; returns the share answered exactly.
double evaluate(CharLm& model, const std::vector<Problem>& problems) {
  torch::NoGradGuard no_grad;
  model->eval();
  int correct = 0;
  for (const Problem& p : problems) {
    const std::string prompt = p.prompt();
    std::vector<int64_t> ids;
    for (char c : prompt) ids.push_back(char_id(c));
    torch::Tensor state;
    auto logits = model->forward(torch::tensor(ids).unsqueeze(0), state);
    std::string out;
    for (int step = 0; step < 12; ++step) {
      const int64_t next = logits.index({0, -1}).argmax().item<int64_t>();
      if (next == 12) {
        out += '\n';
        break;
      }
      out += next < 10 ? static_cast<char>('0' + next) : '?';
      logits = model->forward(torch::tensor({next}).unsqueeze(0), state);
    }
    correct += out == p.answer();
  }
  model->train();
  return static_cast<double>(correct) / static_cast<double>(problems.size());
}

int run(const JobConfig& cfg, const std::string& effective_yaml) {
  grpo::Run run(cfg.run, effective_yaml);
  grpo::log::info("{}; run folder {}", grpo::build_info(), run.dir());
  torch::manual_seed(static_cast<uint64_t>(cfg.run.seed));
  Problems problems(cfg.task, static_cast<uint64_t>(cfg.run.seed));
  CharLm model(cfg.model);
  torch::optim::AdamW optim(model->parameters(),
                            torch::optim::AdamWOptions(cfg.train.lr).weight_decay(cfg.train.weight_decay));
  const double before = evaluate(model, problems.eval());
  grpo::log::info("held-out accuracy before training: {:.1f}%", 100 * before);

  grpo::Progress progress("train", cfg.train.steps, cfg.run.progress_interval_s);
  double accuracy = before;
  for (int step = 1; step <= cfg.train.steps; ++step) {
    const double lr = cfg.train.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * (step - 1) / cfg.train.steps)));
    for (auto& group : optim.param_groups()) group.options().set_lr(lr);
    auto [inputs, targets] = make_batch(problems, cfg.train.batch_size);
    torch::Tensor state;
    const auto logits = model->forward(inputs, state);
    const auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, kVocab}), targets.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kPad));
    optim.zero_grad();
    loss.backward();
    double grad_norm = 0;
    if (cfg.train.grad_clip > 0) {
      grad_norm = torch::nn::utils::clip_grad_norm_(model->parameters(), cfg.train.grad_clip);
    }
    optim.step();

    std::vector<grpo::Metric> metrics{{"loss", loss.item<double>()}, {"lr", lr}, {"grad_norm", grad_norm}};
    if (step % cfg.train.eval_every == 0 || step == cfg.train.steps) {
      accuracy = evaluate(model, problems.eval());
      metrics.emplace_back("eval_accuracy", accuracy);
    }
    run.metrics().write(step, metrics);
    progress.update(step, grpo::format("loss {:.4f} | held-out acc {:.1f}%", loss.item<double>(), 100 * accuracy));
  }
  grpo::log::info("held-out accuracy: {:.1f}% before training, {:.1f}% after {} steps ({} problems)", 100 * before,
                  100 * accuracy, cfg.train.steps, problems.eval().size());
  std::cout << grpo::format("RESULT accuracy_before={:.4f} accuracy_after={:.4f}", before, accuracy) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = grpo::cli::parse_job_args(argc, argv);
    if (args.help) {
      std::cout << grpo::cli::job_usage("char_lm", "Trains a character-level model on addition.");
      return 0;
    }
    const auto cfg = grpo::config::load<JobConfig>(args.config_path, args.overrides);
    const std::string yaml = grpo::config::to_yaml(cfg);
    if (args.print_config) {
      std::cout << yaml;
      return 0;
    }
    return run(cfg, yaml);
  } catch (const std::exception& e) {
    std::cerr << "char_lm: error: " << e.what() << std::endl;
    return 2;
  }
}
