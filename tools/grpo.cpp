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
//               generates with the rollout engine and prints each completion; with --bench-batch it
//               times greedy generation on synthetic prompts and prints one JSON line
//   grpo reward --config FILE --input samples.jsonl [--tokenizer FILE] [--json] [--set key=value ...]
//               scores each sample with the `rewards` section of FILE; prints per-function and total
//               scores per sample and a summary
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/files.h"
#include "grpo/core/format.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/rollout/engine.h"

#include <sys/resource.h>
#include "grpo/data/tokenizer.h"
#include "grpo/io/safetensors.h"
#include "grpo/model/checkpoint.h"
#include "grpo/model/model_stats.h"
#include "grpo/version.h"

namespace {

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
    "         [--device cpu|cuda] [--threads K] [--json]\n"
    "         generates completions with the rollout engine (--config: a YAML `generation` section, the flags\n"
    "         override it); --json prints one object per completion with\n"
    "         token_ids, logprobs, text and finish_reason. Benchmark: --bench-batch B --bench-prompt-len L\n"
    "         [--bench-repeats R] times greedy generation of exactly --max-new-tokens tokens on synthetic\n"
    "         prompts ids[i][j] = (i*7 + j*13) % (vocab - 10) + 5 and prints one JSON line\n"
    "  reward --config FILE --input SAMPLES.jsonl [--tokenizer FILE] [--json] [--set KEY=VALUE ...]\n"
    "         scores each sample with the functions of FILE's `rewards` section; SAMPLES.jsonl lines hold\n"
    "         completion (required), prompt, answer, completion_ids and any other column (test cases, ...);\n"
    "         --tokenizer fills completion_ids where a line has none; --json prints one JSON object per sample\n"
    "  version\n";

// --key value pairs after the command; every key must be in `allowed`.
std::map<std::string, std::string> parse_options(int argc, char** argv, const std::vector<std::string>& allowed) {
  std::map<std::string, std::string> out;
  for (int i = 2; i < argc; ++i) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || std::find(allowed.begin(), allowed.end(), key.substr(2)) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "--" : ", --") + a;
      throw std::invalid_argument("unknown option '" + key + "' for '" + argv[1] + "' (expected " + list + ")");
    }
    if (i + 1 >= argc) throw std::invalid_argument(key + " needs a value");
    out[key.substr(2)] = argv[++i];
  }
  for (const auto& a : allowed) {
    if (!out.count(a)) throw std::invalid_argument(std::string(argv[1]) + " needs --" + a);
  }
  return out;
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

int cmd_info(int argc, char** argv) {
  const auto opts = parse_options(argc, argv, {"model"});
  const auto cfg = grpo::model::load_model_config(opts.at("model"));
  std::cout << grpo::model::describe(cfg, grpo::model::model_stats(cfg));
  return 0;
}

int cmd_logits(int argc, char** argv) {
  const auto opts = parse_options(argc, argv, {"model", "input", "output"});
  const auto ids = read_input_ids(opts.at("input"));
  auto model = grpo::model::load_hf_checkpoint(opts.at("model"));
  model->eval();
  const int64_t vocab = model->config().vocab_size;
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= vocab) {
    throw std::runtime_error(opts.at("input") + ": token ids must be in [0, " + std::to_string(vocab) + "), found " +
                             std::to_string(lo < 0 ? lo : hi));
  }
  torch::NoGradGuard no_grad;
  const auto logits = model(ids).logits.to(torch::kFloat).contiguous();
  grpo::io::save_safetensors(opts.at("output"), {{"logits", logits}});
  std::cout << "wrote logits " << logits.sizes() << " to " << opts.at("output") << "\n";
  return 0;
}

// Options of tokenize/detokenize: --tokenizer FILE, --json, and one more flag (`flag`).
struct TokenizerOptions {
  std::string tokenizer;
  bool json = false;
  bool flag = false;
};

TokenizerOptions parse_tokenizer_options(int argc, char** argv, const std::string& flag) {
  TokenizerOptions out;
  for (int i = 2; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "--tokenizer" && i + 1 < argc) {
      out.tokenizer = argv[++i];
    } else if (key == "--json") {
      out.json = true;
    } else if (key == "--" + flag) {
      out.flag = true;
    } else {
      throw std::invalid_argument("unknown option '" + key + "' for '" + argv[1] +
                                  "' (expected --tokenizer FILE, --json, --" + flag + ")");
    }
  }
  if (out.tokenizer.empty()) throw std::invalid_argument(std::string(argv[1]) + " needs --tokenizer FILE");
  return out;
}

int cmd_tokenize(int argc, char** argv) {
  const auto opts = parse_tokenizer_options(argc, argv, "add-special-tokens");
  const auto tokenizer = grpo::data::load_tokenizer(opts.tokenizer);
  std::ios::sync_with_stdio(false);
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    std::string text = line;
    if (opts.json) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_string()) throw std::runtime_error("stdin line " + std::to_string(n) + ": expected a JSON string");
      text = j.get<std::string>();
    }
    try {
      std::cout << nlohmann::json(tokenizer->encode(text, opts.flag)).dump() << '\n';
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error("stdin line " + std::to_string(n) + ": " + e.what());
    }
  }
  return 0;
}

int cmd_detokenize(int argc, char** argv) {
  const auto opts = parse_tokenizer_options(argc, argv, "skip-special-tokens");
  const auto tokenizer = grpo::data::load_tokenizer(opts.tokenizer);
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
      text = tokenizer->decode(ids, opts.flag);
    } catch (const std::out_of_range& e) {
      throw std::runtime_error("stdin line " + std::to_string(n) + ": " + e.what());
    }
    std::cout << (opts.json ? nlohmann::json(text).dump() : text) << '\n';
  }
  return 0;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

std::vector<int64_t> parse_id_list(const std::string& text) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw std::invalid_argument("--prompt-ids: expected comma-separated integers, found '" + item + "'");
    }
    start = end + 1;
  }
  return ids;
}

int cmd_generate(int argc, char** argv) {
  std::string model_dir, tokenizer_path, dtype = "float32", device = "cpu";
  std::vector<std::string> prompts;
  std::vector<std::vector<int64_t>> prompt_ids;
  grpo::rollout::GenerationConfig gc;
  gc.max_new_tokens = 128;
  bool as_json = false;
  int64_t threads = 0, bench_batch = 0, bench_len = 0, bench_repeats = 3;
  // --config FILE first: its `generation` section, then the flags on top.
  for (int i = 2; i + 1 < argc; ++i) {
    if (std::string(argv[i]) != "--config") continue;
    const grpo::config::Value root = grpo::config::parse_yaml_file(argv[i + 1]);
    const grpo::config::Value* section = root.find("generation");
    if (section == nullptr) throw std::runtime_error(std::string(argv[i + 1]) + ": no `generation` section");
    grpo::config::read_value(*section, gc, "generation", grpo::config::Check{});
  }
  for (int i = 2; i < argc; ++i) {
    const std::string key = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(key + " needs a value");
      return argv[++i];
    };
    if (key == "--config") {
      value();
      continue;
    }
    auto number = [&](auto& out) {
      const std::string v = value();
      try {
        size_t used = 0;
        if constexpr (std::is_floating_point_v<std::remove_reference_t<decltype(out)>>) {
          out = std::stod(v, &used);
        } else {
          out = static_cast<std::remove_reference_t<decltype(out)>>(std::stoll(v, &used));
        }
        if (used != v.size()) throw std::invalid_argument(v);
      } catch (const std::exception&) {
        throw std::invalid_argument(key + ": expected a number, found '" + v + "'");
      }
    };
    if (key == "--model") model_dir = value();
    else if (key == "--tokenizer") tokenizer_path = value();
    else if (key == "--prompt") prompts.push_back(value());
    else if (key == "--prompt-ids") prompt_ids.push_back(parse_id_list(value()));
    else if (key == "--max-new-tokens") number(gc.max_new_tokens);
    else if (key == "--temperature") number(gc.sampling.temperature);
    else if (key == "--top-k") number(gc.sampling.top_k);
    else if (key == "--top-p") number(gc.sampling.top_p);
    else if (key == "--min-p") number(gc.sampling.min_p);
    else if (key == "--num-generations") number(gc.num_generations);
    else if (key == "--seed") number(gc.seed);
    else if (key == "--stop") gc.stop_strings.push_back(value());
    else if (key == "--ignore-eos") gc.ignore_eos = true;
    else if (key == "--speculative-mtp") gc.speculative_mtp = true;
    else if (key == "--no-cache") gc.use_cache = false;
    else if (key == "--dtype") dtype = value();
    else if (key == "--device") device = value();
    else if (key == "--threads") number(threads);
    else if (key == "--json") as_json = true;
    else if (key == "--bench-batch") number(bench_batch);
    else if (key == "--bench-prompt-len") number(bench_len);
    else if (key == "--bench-repeats") number(bench_repeats);
    else throw std::invalid_argument("unknown option '" + key + "' for 'generate' (see grpo --help)");
  }
  if (model_dir.empty()) throw std::invalid_argument("generate needs --model DIR");
  // The same checks a YAML config gets.
  {
    if (const std::string problem = gc.validate(); !problem.empty()) throw std::invalid_argument(problem);
    if (gc.max_new_tokens < 1) throw std::invalid_argument("--max-new-tokens must be >= 1");
    if (gc.num_generations < 1) throw std::invalid_argument("--num-generations must be >= 1");
    if (gc.sampling.temperature < 0) throw std::invalid_argument("--temperature must be >= 0");
    if (gc.sampling.top_p <= 0 || gc.sampling.top_p > 1) throw std::invalid_argument("--top-p must be in (0, 1]");
  }
  if (threads > 0) {
    torch::set_num_threads(static_cast<int>(threads));
    torch::set_num_interop_threads(1);
  }
  grpo::model::LoadOptions lo;
  if (dtype == "bfloat16") lo.dtype = torch::kBFloat16;
  else if (dtype != "float32") throw std::invalid_argument("--dtype: expected float32 or bfloat16, found '" + dtype + "'");
  lo.device = torch::Device(device);
  const double rss0 = peak_rss_mb();
  auto model = grpo::model::load_hf_checkpoint(model_dir, lo);
  if (model->config().is_mla()) model->set_attention_impl(grpo::model::AttentionImpl::absorbed);
  std::unique_ptr<grpo::data::Tokenizer> tokenizer;
  if (!tokenizer_path.empty()) tokenizer = grpo::data::load_tokenizer(tokenizer_path);

  if (bench_batch > 0) {
    if (bench_len < 1) throw std::invalid_argument("--bench-batch needs --bench-prompt-len >= 1");
    const int64_t vocab = model->config().vocab_size;
    std::vector<grpo::rollout::GenerationRequest> reqs;
    for (int64_t i = 0; i < bench_batch; ++i) {
      grpo::rollout::GenerationRequest r;
      for (int64_t j = 0; j < bench_len; ++j) r.prompt_ids.push_back((i * 7 + j * 13) % (vocab - 10) + 5);
      reqs.push_back(r);
    }
    gc.sampling.temperature = 0;
    gc.ignore_eos = true;
    const double rss_loaded = peak_rss_mb();
    grpo::rollout::Engine engine(model, nullptr, gc);
    engine.generate(reqs);  // warm-up
    std::vector<double> times;
    grpo::rollout::GenerationStats stats;
    for (int64_t r = 0; r < bench_repeats; ++r) {
      const double t0 = now_seconds();
      engine.generate(reqs, &stats);
      times.push_back(now_seconds() - t0);
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    nlohmann::json j = {{"impl", "grpo"},
                        {"model", std::filesystem::path(model_dir).filename().string()},
                        {"batch", bench_batch},
                        {"prompt_len", bench_len},
                        {"new_tokens", gc.max_new_tokens},
                        {"repeats", bench_repeats},
                        {"seconds", median},
                        {"seconds_all", times},
                        {"tokens_per_s", static_cast<double>(bench_batch * gc.max_new_tokens) / median},
                        {"peak_rss_mb", peak_rss_mb()},
                        {"rss_before_mb", rss_loaded},
                        {"rss_start_mb", rss0},
                        {"torch_threads", torch::get_num_threads()},
                        {"attn", model->config().is_mla() ? "mla-absorbed" : "gqa"},
                        {"speculative_mtp", gc.speculative_mtp},
                        {"drafted", stats.drafted},
                        {"accepted", stats.accepted},
                        {"dtype", dtype},
                        {"device", device}};
    std::cout << j.dump() << std::endl;
    return 0;
  }

  std::vector<grpo::rollout::GenerationRequest> reqs;
  for (const auto& text : prompts) {
    if (!tokenizer) throw std::invalid_argument("--prompt needs --tokenizer FILE (or pass --prompt-ids)");
    grpo::rollout::GenerationRequest r;
    r.prompt_ids = tokenizer->encode(text, false);
    reqs.push_back(r);
  }
  for (const auto& ids : prompt_ids) {
    grpo::rollout::GenerationRequest r;
    r.prompt_ids = ids;
    reqs.push_back(r);
  }
  if (reqs.empty()) throw std::invalid_argument("generate needs at least one --prompt or --prompt-ids");
  grpo::rollout::Engine engine(model, tokenizer.get(), gc);
  grpo::rollout::GenerationStats stats;
  const auto comps = engine.generate(reqs, &stats);
  for (const auto& c : comps) {
    if (as_json) {
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

int cmd_reward(int argc, char** argv) {
  std::string config_path, input_path, tokenizer_path;
  std::vector<std::string> overrides;
  bool as_json = false;
  for (int i = 2; i < argc; ++i) {
    const std::string key = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(key + " needs a value");
      return argv[++i];
    };
    if (key == "--config") {
      config_path = value();
    } else if (key == "--input") {
      input_path = value();
    } else if (key == "--tokenizer") {
      tokenizer_path = value();
    } else if (key == "--set") {
      overrides.push_back(value());
    } else if (key == "--json") {
      as_json = true;
    } else {
      throw std::invalid_argument("unknown option '" + key +
                                  "' for 'reward' (expected --config, --input, --tokenizer, --json, --set)");
    }
  }
  if (config_path.empty()) throw std::invalid_argument("reward needs --config FILE");
  if (input_path.empty()) throw std::invalid_argument("reward needs --input SAMPLES.jsonl");

  // Only the `rewards` section is read, so a whole training config works too.
  grpo::config::Value root = grpo::config::parse_yaml_file(config_path);
  for (const auto& o : overrides) grpo::config::apply_override(root, o);
  const grpo::config::Value* section = root.find("rewards");
  if (section == nullptr) throw std::runtime_error(config_path + ": no `rewards` section");
  grpo::rewards::RewardsConfig cfg;
  grpo::config::read_value(*section, cfg, "rewards", grpo::config::Check{});

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
      throw std::runtime_error(where + ": invalid JSON (" + std::string(e.what()).substr(std::string(e.what()).find(':') + 2) + ")");
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
