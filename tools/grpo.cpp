// The `grpo` command-line tool (installed with the library).
//
//   grpo info   --model PATH                      sizes of a model: a checkpoint folder, a config.json or a YAML preset
//   grpo logits --model DIR --input ids.json --output logits.safetensors
//               ids.json: {"input_ids": [[...], ...]} with rows of equal length; writes `logits`
//               float32 [B, T, V], computed in float32
//   grpo tokenize   --tokenizer FILE [--json] [--add-special-tokens]   texts on stdin -> JSON id arrays
//   grpo detokenize --tokenizer FILE [--json] [--skip-special-tokens]  JSON id arrays on stdin -> texts
//               one item per line; with --json the texts are JSON strings, so they may hold newlines
//   grpo generate --model DIR [--config FILE] [--tokenizer FILE] (--prompt TEXT | --prompt-ids 1,2,3)... [options]
//               generates with the rollout engine and prints each completion (the benchmark mode is
//               bench/bench_generate_engine.cpp, grpo_bench_generate)
//   grpo reward --config FILE --input samples.jsonl [--tokenizer FILE] [--json] [--set key=value ...]
//               scores each sample with the `rewards` section of FILE; prints per-function and total
//               scores per sample and a summary
//   grpo launch --nproc-per-node N [options] [--] PROGRAM ARGS...
//               runs PROGRAM on N processes, torchrun-style (tools/launch.h; no torch in that code)
//
// Each command's flags are aliases of the keys of a typed options struct (InfoOptions, ...,
// GenerateOptions); the command line is bound through the config system (tools/flag_options.h), so
// types, bounds, required and unknown keys are checked there and reported in its one-line format
// at the flag as typed ("--top-p 2: generation.sampling.top_p: must be in (0, 1], found 2"), and
// `--set KEY=VALUE` reaches any key of the struct.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flag_options.h"
#include "grpo/config/config.h"
#include "grpo/core/files.h"
#include "grpo/core/format.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/rollout/engine.h"
#include "launch.h"

#include "grpo/data/tokenizer.h"
#include "grpo/io/safetensors.h"
#include "grpo/model/checkpoint.h"
#include "grpo/model/model_stats.h"
#include "grpo/version.h"

namespace {

namespace config = grpo::config;
using grpo::tools::Flag;
using grpo::tools::FlagKind;

const char* kUsage =
    "usage: grpo <command> [options]\n"
    "\n"
    "  info   --model PATH\n"
    "         parameters (total, with MTP, active per token), layers, experts, KV-cache bytes per token;\n"
    "         PATH is a checkpoint folder, a config.json or a YAML preset (configs/models/*.yaml)\n"
    "  logits --model DIR --input IDS.json --output OUT.safetensors\n"
    "         float32 logits [B, T, V] of {\"input_ids\": [[...], ...]} (rows of equal length)\n"
    "  tokenize   --tokenizer FILE [--json] [--add-special-tokens]\n"
    "         one text per stdin line -> one JSON array of ids per line; FILE is a tokenizer.json or its\n"
    "         folder; with --json each line is a JSON string, so texts may hold newlines\n"
    "  detokenize --tokenizer FILE [--json] [--skip-special-tokens]\n"
    "         one JSON array of ids per stdin line -> one text per line (--json: as JSON strings)\n"
    "  generate --model DIR [--config FILE] [--tokenizer FILE] (--prompt TEXT | --prompt-ids 1,2,3)...\n"
    "         [--max-new-tokens N]\n"
    "         [--temperature T] [--top-k K] [--top-p P] [--min-p M] [--num-generations G] [--seed S]\n"
    "         [--stop TEXT]... [--ignore-eos] [--speculative-mtp] [--no-cache] [--dtype float32|bfloat16]\n"
    "         [--device cpu|cuda] [--threads K] [--json] [--set KEY=VALUE]...\n"
    "         generates completions with the rollout engine (--config: a YAML `generation` section, the flags\n"
    "         override it; max_new_tokens is 128 unless set); --json prints one object per completion with\n"
    "         token_ids, logprobs, text and finish_reason. Timing runs: grpo_bench_generate (bench/)\n"
    "  reward --config FILE --input SAMPLES.jsonl [--tokenizer FILE] [--json] [--set KEY=VALUE ...]\n"
    "         scores each sample with the functions of FILE's `rewards` section; SAMPLES.jsonl lines hold\n"
    "         completion (required), prompt, answer, completion_ids and any other column (test cases, ...);\n"
    "         --tokenizer fills completion_ids where a line has none; --json prints one JSON object per sample\n"
    "  launch --nproc-per-node N [--nnodes M] [--node-rank R] [--master-addr A] [--master-port P] [--no-prefix]\n"
    "         [--] PROGRAM [ARGS...]\n"
    "         runs PROGRAM on N processes (torchrun-style) with RANK, WORLD_SIZE, MASTER_ADDR, ... set, each\n"
    "         output line prefixed [rank K]; the first rank to fail stops the others (grpo launch --help)\n"
    "  version\n"
    "\n"
    "Every flag sets a key of the command's options (generate: --top-p P is generation.sampling.top_p=P,\n"
    "--max-new-tokens N is generation.max_new_tokens=N, ...); --set KEY=VALUE sets any key (VALUE is YAML:\n"
    "--set generation.eos_token_ids=[1,2]); info, logits, tokenize, detokenize take --set too. Flags also\n"
    "take the form --flag=VALUE. Values are checked as in a YAML config (docs/config.md).\n";

std::vector<std::string> command_args(int argc, char** argv) { return std::vector<std::string>(argv + 2, argv + argc); }

// The options of a command from its flags; nullopt after printing the usage for --help.
template <class T>
std::optional<T> parse_command(int argc, char** argv, const std::vector<Flag>& flags) {
  const auto parsed = grpo::tools::scan_flags(command_args(argc, argv), flags, argv[1]);
  if (parsed.help) {
    std::cout << kUsage;
    return std::nullopt;
  }
  return grpo::tools::bind_flags<T>(parsed, flags);
}

torch::Tensor read_input_ids(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(grpo::read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": invalid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("input_ids") || !j["input_ids"].is_array() || j["input_ids"].empty()) {
    throw std::runtime_error(path + ": expected {\"input_ids\": [[ids...], ...]} with at least one row");
  }
  const auto& rows = j["input_ids"];
  std::vector<int64_t> flat;
  size_t width = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r].is_array() || rows[r].empty()) {
      throw std::runtime_error(path + ": input_ids[" + std::to_string(r) + "] must be a non-empty list of token ids");
    }
    if (r == 0) width = rows[r].size();
    if (rows[r].size() != width) {
      throw std::runtime_error(path + ": input_ids rows must have equal length: row 0 has " + std::to_string(width) +
                               ", row " + std::to_string(r) + " has " + std::to_string(rows[r].size()));
    }
    for (size_t c = 0; c < width; ++c) {
      if (!rows[r][c].is_number_integer()) {
        throw std::runtime_error(path + ": input_ids[" + std::to_string(r) + "][" + std::to_string(c) +
                                 "] must be an integer, found " + rows[r][c].dump());
      }
      flat.push_back(rows[r][c].get<int64_t>());
    }
  }
  return torch::tensor(flat, torch::kLong).view({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)});
}

struct InfoOptions {
  std::string model;

  template <class V>
  void visit(V& v) {
    v("model", model, "a checkpoint folder, a config.json or a YAML preset", config::Check().required().nonempty());
  }
};

const std::vector<Flag> kInfoFlags = {
    {"--model", "model", FlagKind::text, "PATH"},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
};

int cmd_info(int argc, char** argv) {
  const auto opts = parse_command<InfoOptions>(argc, argv, kInfoFlags);
  if (!opts) return 0;
  const auto cfg = grpo::model::load_model_config(opts->model);
  std::cout << grpo::model::describe(cfg, grpo::model::model_stats(cfg));
  return 0;
}

struct LogitsOptions {
  std::string model;
  std::string input;
  std::string output;

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("model", model, "HF checkpoint folder", Check().required().nonempty());
    v("input", input, "JSON file {\"input_ids\": [[...], ...]} (rows of equal length)", Check().required().nonempty());
    v("output", output, "safetensors file to write `logits` [B, T, V] float32 to", Check().required().nonempty());
  }
};

const std::vector<Flag> kLogitsFlags = {
    {"--model", "model", FlagKind::text, "DIR"},
    {"--input", "input", FlagKind::text, "IDS.json"},
    {"--output", "output", FlagKind::text, "OUT.safetensors"},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
};

int cmd_logits(int argc, char** argv) {
  const auto opts = parse_command<LogitsOptions>(argc, argv, kLogitsFlags);
  if (!opts) return 0;
  const auto ids = read_input_ids(opts->input);
  auto model = grpo::model::load_hf_checkpoint(opts->model);
  model->eval();
  const int64_t vocab = model->config().vocab_size;
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= vocab) {
    throw std::runtime_error(opts->input + ": token ids must be in [0, " + std::to_string(vocab) + "), found " +
                             std::to_string(lo < 0 ? lo : hi));
  }
  torch::NoGradGuard no_grad;
  const auto logits = model(ids).logits.to(torch::kFloat).contiguous();
  grpo::io::save_safetensors(opts->output, {{"logits", logits}});
  std::cout << "wrote logits " << logits.sizes() << " to " << opts->output << "\n";
  return 0;
}

struct TokenizeOptions {
  std::string tokenizer;
  bool json = false;
  bool add_special_tokens = false;

  template <class V>
  void visit(V& v) {
    v("tokenizer", tokenizer, "a tokenizer.json or its folder", config::Check().required().nonempty());
    v("json", json, "each stdin line is a JSON string (texts may hold newlines)");
    v("add_special_tokens", add_special_tokens, "add the tokenizer's special tokens (BOS, ...)");
  }
};

const std::vector<Flag> kTokenizeFlags = {
    {"--tokenizer", "tokenizer", FlagKind::text, "FILE"},
    {"--json", "json", FlagKind::on},
    {"--add-special-tokens", "add_special_tokens", FlagKind::on},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
};

struct DetokenizeOptions {
  std::string tokenizer;
  bool json = false;
  bool skip_special_tokens = false;

  template <class V>
  void visit(V& v) {
    v("tokenizer", tokenizer, "a tokenizer.json or its folder", config::Check().required().nonempty());
    v("json", json, "print each text as a JSON string (texts may hold newlines)");
    v("skip_special_tokens", skip_special_tokens, "drop special tokens from the texts");
  }
};

const std::vector<Flag> kDetokenizeFlags = {
    {"--tokenizer", "tokenizer", FlagKind::text, "FILE"},
    {"--json", "json", FlagKind::on},
    {"--skip-special-tokens", "skip_special_tokens", FlagKind::on},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
};

int cmd_tokenize(int argc, char** argv) {
  const auto opts = parse_command<TokenizeOptions>(argc, argv, kTokenizeFlags);
  if (!opts) return 0;
  const auto tokenizer = grpo::data::load_tokenizer(opts->tokenizer);
  std::ios::sync_with_stdio(false);
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    std::string text = line;
    if (opts->json) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_string()) throw std::runtime_error("stdin line " + std::to_string(n) + ": expected a JSON string");
      text = j.get<std::string>();
    }
    try {
      std::cout << nlohmann::json(tokenizer->encode(text, opts->add_special_tokens)).dump() << '\n';
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error("stdin line " + std::to_string(n) + ": " + e.what());
    }
  }
  return 0;
}

int cmd_detokenize(int argc, char** argv) {
  const auto opts = parse_command<DetokenizeOptions>(argc, argv, kDetokenizeFlags);
  if (!opts) return 0;
  const auto tokenizer = grpo::data::load_tokenizer(opts->tokenizer);
  std::ios::sync_with_stdio(false);
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    std::vector<int64_t> ids;
    if (j.is_array() && std::all_of(j.begin(), j.end(), [](const auto& v) { return v.is_number_integer(); })) {
      ids = j.get<std::vector<int64_t>>();
    } else {
      throw std::runtime_error("stdin line " + std::to_string(n) + ": expected a JSON array of token ids");
    }
    std::string text;
    try {
      text = tokenizer->decode(ids, opts->skip_special_tokens);
    } catch (const std::out_of_range& e) {
      throw std::runtime_error("stdin line " + std::to_string(n) + ": " + e.what());
    }
    std::cout << (opts->json ? nlohmann::json(text).dump() : text) << '\n';
  }
  return 0;
}

// `grpo generate` generates 128 tokens per completion unless --config or a flag says otherwise
// (the engine's own default is 256).
grpo::rollout::GenerationConfig generate_defaults() {
  grpo::rollout::GenerationConfig gc;
  gc.max_new_tokens = 128;
  return gc;
}

struct GenerateOptions {
  std::string model;
  std::string tokenizer;
  std::vector<std::string> prompts;
  std::vector<std::vector<int64_t>> prompt_ids;
  grpo::rollout::GenerationConfig generation = generate_defaults();
  std::string dtype = "float32";
  std::string device = "cpu";
  int64_t threads = 0;
  bool json = false;

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("model", model, "HF checkpoint folder", Check().required().nonempty());
    v("tokenizer", tokenizer, "tokenizer.json or its folder: encodes prompts, decodes completions, stop strings");
    v("prompts", prompts, "prompt texts (need a tokenizer)");
    v("prompt_ids", prompt_ids, "prompts as token ids");
    v("generation", generation, "the rollout engine's settings (docs/rollouts.md); max_new_tokens 128 unless set");
    v("dtype", dtype, "dtype of the model's parameters", Check().one_of({"float32", "bfloat16"}));
    v("device", device, "cpu, cuda, cuda:1, ...", Check().nonempty());
    v("threads", threads, "torch intra-op threads; 0 = torch's default", Check().ge(0).le(4096));
    v("json", json, "print one JSON object per completion");
  }
  std::string validate() const {
    if (!prompts.empty() && tokenizer.empty()) return "--prompt needs --tokenizer FILE (or pass --prompt-ids)";
    if (prompts.empty() && prompt_ids.empty()) return "generate needs at least one --prompt or --prompt-ids";
    return "";
  }
};

const std::vector<Flag> kGenerateFlags = {
    {"--model", "model", FlagKind::text, "DIR"},
    {"--config", "", FlagKind::custom, "FILE"},
    {"--tokenizer", "tokenizer", FlagKind::text, "FILE"},
    {"--prompt", "prompts", FlagKind::append_text, "TEXT"},
    {"--prompt-ids", "prompt_ids", FlagKind::append_ids, "1,2,3"},
    {"--max-new-tokens", "generation.max_new_tokens", FlagKind::value, "N"},
    {"--temperature", "generation.sampling.temperature", FlagKind::value, "T"},
    {"--top-k", "generation.sampling.top_k", FlagKind::value, "K"},
    {"--top-p", "generation.sampling.top_p", FlagKind::value, "P"},
    {"--min-p", "generation.sampling.min_p", FlagKind::value, "M"},
    {"--num-generations", "generation.num_generations", FlagKind::value, "G"},
    {"--seed", "generation.seed", FlagKind::value, "S"},
    {"--stop", "generation.stop_strings", FlagKind::append_text, "TEXT"},
    {"--ignore-eos", "generation.ignore_eos", FlagKind::on},
    {"--speculative-mtp", "generation.speculative_mtp", FlagKind::on},
    {"--no-cache", "generation.use_cache", FlagKind::off},
    {"--dtype", "dtype", FlagKind::text, "float32|bfloat16"},
    {"--device", "device", FlagKind::text, "cpu|cuda"},
    {"--threads", "threads", FlagKind::value, "K"},
    {"--json", "json", FlagKind::on},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
};

const std::vector<grpo::tools::RemovedFlag> kGenerateRemoved = {
    {"--bench-batch", "the benchmark mode is the program grpo_bench_generate, built in bench/"},
    {"--bench-prompt-len", "the benchmark mode is the program grpo_bench_generate, built in bench/"},
    {"--bench-repeats", "the benchmark mode is the program grpo_bench_generate, built in bench/"},
};

int cmd_generate(int argc, char** argv) {
  const auto parsed = grpo::tools::scan_flags(command_args(argc, argv), kGenerateFlags, "generate", kGenerateRemoved);
  if (parsed.help) {
    std::cout << kUsage;
    return 0;
  }
  config::Value root = grpo::tools::flag_tree(kGenerateFlags);
  // --config FILE first: its `generation` section becomes the `generation` key, the flags go on top.
  const auto config_uses = parsed.uses_of("--config");
  if (config_uses.size() > 1) throw std::invalid_argument("--config given twice");
  if (!config_uses.empty()) {
    const std::string& path = config_uses.front()->value;
    const config::Value file = config::parse_yaml_file(path);
    const config::Value* section = file.find("generation");
    if (section == nullptr) throw std::runtime_error(path + ": no `generation` section");
    grpo::tools::node_at(root, "generation", grpo::tools::command_line_location()) = *section;
    grpo::tools::ensure_flag_maps(root, kGenerateFlags);
  }
  grpo::tools::apply_flags(root, parsed);
  const auto opts = grpo::tools::bind_tree<GenerateOptions>(root, kGenerateFlags);
  const grpo::rollout::GenerationConfig& gc = opts.generation;

  if (opts.threads > 0) {
    torch::set_num_threads(static_cast<int>(opts.threads));
    torch::set_num_interop_threads(1);
  }
  grpo::model::LoadOptions lo;
  if (opts.dtype == "bfloat16") lo.dtype = torch::kBFloat16;
  lo.device = torch::Device(opts.device);
  auto model = grpo::model::load_hf_checkpoint(opts.model, lo);
  if (model->config().is_mla()) model->set_attention_impl(grpo::model::AttentionImpl::absorbed);
  std::unique_ptr<grpo::data::Tokenizer> tokenizer;
  if (!opts.tokenizer.empty()) tokenizer = grpo::data::load_tokenizer(opts.tokenizer);

  std::vector<grpo::rollout::GenerationRequest> reqs;
  for (const auto& text : opts.prompts) {
    grpo::rollout::GenerationRequest r;
    r.prompt_ids = tokenizer->encode(text, false);
    reqs.push_back(r);
  }
  for (const auto& ids : opts.prompt_ids) {
    grpo::rollout::GenerationRequest r;
    r.prompt_ids = ids;
    reqs.push_back(r);
  }
  grpo::rollout::Engine engine(model, tokenizer.get(), gc);
  grpo::rollout::GenerationStats stats;
  const auto comps = engine.generate(reqs, &stats);
  for (const auto& c : comps) {
    if (opts.json) {
      nlohmann::json j = {{"prompt_index", c.prompt_index},
                          {"sample_index", c.sample_index},
                          {"token_ids", c.token_ids},
                          {"logprobs", c.logprobs},
                          {"text", c.text},
                          {"finish_reason", std::string(grpo::rollout::finish_reason_name(c.finish_reason))},
                          {"seconds", c.seconds}};
      std::cout << j.dump() << "\n";
    } else {
      std::cout << "[" << c.prompt_index << "." << c.sample_index << "] "
                << grpo::rollout::finish_reason_name(c.finish_reason) << ", " << c.token_ids.size() << " tokens\n";
      if (tokenizer) {
        std::cout << c.text << "\n";
      } else {
        std::cout << nlohmann::json(c.token_ids).dump() << "\n";
      }
    }
  }
  std::cout.flush();
  std::cerr << stats.completions << " completions, " << stats.generated_tokens << " tokens in "
            << grpo::format("{:.3f}", stats.total_seconds) << " s (" << grpo::format("{:.1f}", stats.tokens_per_second)
            << " tokens/s; prefill " << grpo::format("{:.3f}", stats.prefill_seconds) << " s, decode "
            << grpo::format("{:.3f}", stats.decode_seconds) << " s)";
  if (gc.speculative_mtp && stats.drafted > 0) {
    std::cerr << "; MTP drafts accepted " << stats.accepted << "/" << stats.drafted << " ("
              << grpo::format("{:.1f}", 100.0 * stats.accepted / stats.drafted) << "%)";
  }
  std::cerr << "\n";
  return 0;
}

// One JSONL line -> a Sample. Columns other than prompt/completion/answer/completion_ids go to
// `extra` (a string as its text, anything else as compact JSON), as the dataset loader does.
grpo::rewards::Sample sample_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw std::runtime_error(where + ": expected a JSON object, found " + std::string(j.type_name()));
  grpo::rewards::Sample s;
  if (!j.contains("completion") || !j["completion"].is_string()) {
    throw std::runtime_error(where + ": expected a string field \"completion\"");
  }
  for (const auto& [key, value] : j.items()) {
    if (key == "completion") {
      s.completion = value.get<std::string>();
    } else if (key == "prompt" || key == "answer") {
      if (!value.is_string() && !value.is_number()) {
        throw std::runtime_error(where + ": \"" + key + "\" must be a string or a number, found " +
                                 std::string(value.type_name()));
      }
      (key == "prompt" ? s.prompt : s.answer) = value.is_string() ? value.get<std::string>() : value.dump();
    } else if (key == "completion_ids") {
      if (!value.is_array() ||
          !std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_number_integer(); })) {
        throw std::runtime_error(where + ": \"completion_ids\" must be a list of integers");
      }
      s.completion_ids = value.get<std::vector<int64_t>>();
    } else {
      s.extra[key] = value.is_string() ? value.get<std::string>() : value.dump();
    }
  }
  return s;
}

struct RewardOptions {
  std::string config;
  std::string input;
  std::string tokenizer;
  bool json = false;

  template <class V>
  void visit(V& v) {
    using grpo::config::Check;
    v("config", config, "YAML file with a `rewards` section (a whole training config works too)",
      Check().required().nonempty());
    v("input", input, "JSONL samples: completion (required), prompt, answer, completion_ids, ...",
      Check().required().nonempty());
    v("tokenizer", tokenizer, "tokenizer.json or its folder: fills completion_ids where a line has none");
    v("json", json, "print one JSON object per sample");
  }
};

// --set applies to the tree of the --config file (its `rewards` section), not to these options.
const std::vector<Flag> kRewardFlags = {
    {"--config", "config", FlagKind::text, "FILE"},       {"--input", "input", FlagKind::text, "SAMPLES.jsonl"},
    {"--tokenizer", "tokenizer", FlagKind::text, "FILE"}, {"--json", "json", FlagKind::on},
    {"--set", "", FlagKind::custom, "KEY=VALUE"},
};

int cmd_reward(int argc, char** argv) {
  const auto parsed = grpo::tools::scan_flags(command_args(argc, argv), kRewardFlags, "reward");
  if (parsed.help) {
    std::cout << kUsage;
    return 0;
  }
  const auto opts = grpo::tools::bind_flags<RewardOptions>(parsed, kRewardFlags);
  const std::string& config_path = opts.config;
  const std::string& input_path = opts.input;
  const std::string& tokenizer_path = opts.tokenizer;
  const bool as_json = opts.json;

  // Only the `rewards` section is read, so a whole training config works too.
  config::Value root = config::parse_yaml_file(config_path);
  for (const auto* use : parsed.uses_of("--set")) config::apply_override(root, use->value);
  const config::Value* section = root.find("rewards");
  if (section == nullptr) throw std::runtime_error(config_path + ": no `rewards` section");
  grpo::rewards::RewardsConfig cfg;
  config::read_value(*section, cfg, "rewards", config::Check{});

  std::shared_ptr<grpo::data::Tokenizer> tokenizer;
  if (!tokenizer_path.empty()) tokenizer = grpo::data::load_tokenizer(tokenizer_path);

  std::vector<grpo::rewards::Sample> samples;
  const std::string text = grpo::read_file(input_path);
  size_t line_no = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = input_path + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(where + ": invalid JSON (" +
                               std::string(e.what()).substr(std::string(e.what()).find(':') + 2) + ")");
    }
    auto s = sample_from_json(j, where);
    if (s.completion_ids.empty() && tokenizer) s.completion_ids = tokenizer->encode(s.completion, false);
    samples.push_back(std::move(s));
  }
  if (samples.empty()) throw std::runtime_error(input_path + ": no samples");

  const grpo::rewards::RewardSet set(cfg, config_path);
  const auto r = set.score(samples);
  const size_t F = r.labels.size();
  for (size_t i = 0; i < samples.size(); ++i) {
    if (as_json) {
      nlohmann::json o = nlohmann::json::object();
      o["index"] = i;
      o["total"] = r.total[i];
      nlohmann::json scores = nlohmann::json::object(), reasons = nlohmann::json::object();
      for (size_t f = 0; f < F; ++f) {
        scores[r.labels[f]] = r.scores[f][i] ? nlohmann::json(*r.scores[f][i]) : nlohmann::json(nullptr);
        if (!r.reasons[f][i].empty()) reasons[r.labels[f]] = r.reasons[f][i];
      }
      o["scores"] = scores;
      o["reasons"] = reasons;
      std::cout << o.dump() << "\n";
    } else {
      std::cout << "sample " << i << ": total " << grpo::format("{:.4f}", r.total[i]);
      for (size_t f = 0; f < F; ++f) {
        std::cout << "  " << r.labels[f] << " "
                  << (r.scores[f][i] ? grpo::format("{:.4f}", *r.scores[f][i]) : std::string("absent"));
      }
      std::cout << "\n";
      for (size_t f = 0; f < F; ++f) {
        if (!r.reasons[f][i].empty()) std::cout << "    " << r.labels[f] << ": " << r.reasons[f][i] << "\n";
      }
    }
  }
  // Summary on stderr, so --json output stays one object per line.
  std::cout.flush();
  std::cerr << samples.size() << " samples; total mean " << grpo::format("{:.4f}", r.metrics.at("rewards/total/mean"));
  for (size_t f = 0; f < F; ++f) {
    const auto it = r.metrics.find("rewards/" + r.labels[f] + "/mean");
    std::cerr << "; " << r.labels[f] << " (weight " << r.weights[f] << ") mean "
              << (it == r.metrics.end() ? std::string("-") : grpo::format("{:.4f}", it->second)) << " in "
              << grpo::format("{:.3f}", r.metrics.at("rewards/" + r.labels[f] + "/seconds")) << " s";
  }
  std::cerr << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "launch") return grpo::tools::launch_main(std::vector<std::string>(argv + 2, argv + argc));
    if (cmd == "info") return cmd_info(argc, argv);
    if (cmd == "logits") return cmd_logits(argc, argv);
    if (cmd == "tokenize") return cmd_tokenize(argc, argv);
    if (cmd == "detokenize") return cmd_detokenize(argc, argv);
    if (cmd == "reward") return cmd_reward(argc, argv);
    if (cmd == "generate") return cmd_generate(argc, argv);
    if (cmd == "version") {
      std::cout << grpo::build_info() << "\n";
      return 0;
    }
    std::cerr << "grpo: unknown command '" << cmd << "'\n" << kUsage;
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "grpo " << cmd << ": error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "grpo " << cmd << ": error: " << e.what() << "\n";
  }
  return 1;
}
