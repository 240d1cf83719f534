// grpo_bench_generate: generation speed and peak memory of the rollout engine on a real checkpoint,
// as one JSON line (bench/generate_vs_hf.py runs it beside HF transformers' generate).
//
//   grpo_bench_generate --model DIR [--batch B] [--prompt-len L] [--max-new-tokens N] [--repeats R]
//                       [--threads K] [--dtype float32|bfloat16] [--device cpu|cuda] [--speculative-mtp]
//                       [--no-cache] [--set KEY=VALUE]...
//
// Times generation of exactly N tokens per row (greedy, EOS ignored, unless --set says otherwise)
// on B synthetic prompts ids[i][j] = (i*7 + j*13) % (vocab - 10) + 5 of length L, no padding: one
// warm-up, then R timed runs. Prints {"impl": "grpo", "model", "batch", "prompt_len",
// "new_tokens", "repeats", "seconds" (median), "seconds_all", "tokens_per_s" (B*N/median),
// "peak_rss_mb", "rss_before_mb" (after loading), "rss_start_mb", "torch_threads", "attn",
// "speculative_mtp", "drafted", "accepted", "dtype", "device"}.
//
// The flags are keys of BenchGenerateOptions, bound through the config system like the `grpo`
// tool's (tools/flag_options.h): "--batch 0: batch: must be >= 1, found 0". --bench-batch,
// --bench-prompt-len and --bench-repeats (the names of the former `grpo generate` benchmark mode)
// are aliases of --batch, --prompt-len and --repeats.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "flag_options.h"
#include "grpo/config/config.h"
#include "grpo/model/checkpoint.h"
#include "grpo/rollout/engine.h"

namespace {

using grpo::tools::Flag;
using grpo::tools::FlagKind;

const char* kUsage =
    "usage: grpo_bench_generate --model DIR [--batch B] [--prompt-len L] [--max-new-tokens N] [--repeats R]\n"
    "                           [--threads K] [--dtype float32|bfloat16] [--device cpu|cuda]\n"
    "                           [--speculative-mtp] [--no-cache] [--set KEY=VALUE]...\n"
    "\n"
    "Times the rollout engine generating exactly N new tokens per row (greedy, EOS ignored) on B synthetic\n"
    "prompts ids[i][j] = (i*7 + j*13) % (vocab - 10) + 5 of length L: one warm-up, then R timed runs.\n"
    "Prints one JSON line: tokens_per_s (B*N / median seconds), peak_rss_mb, ...\n"
    "Defaults: B 8, L 32, N 128, R 3. --set reaches every key (generation.* as in docs/rollouts.md);\n"
    "--bench-batch, --bench-prompt-len, --bench-repeats are aliases of --batch, --prompt-len, --repeats.\n";

grpo::rollout::GenerationConfig bench_defaults() {
  grpo::rollout::GenerationConfig gc;
  gc.max_new_tokens = 128;
  gc.sampling.temperature = 0;  // greedy
  gc.ignore_eos = true;         // every row generates exactly max_new_tokens
  return gc;
}

struct BenchGenerateOptions {
  std::string model;
  int64_t batch = 8;
  int64_t prompt_len = 32;
  int64_t repeats = 3;
  grpo::rollout::GenerationConfig generation = bench_defaults();
  std::string dtype = "float32";
  std::string device = "cpu";
  int64_t threads = 0;

  template <class V>
  void visit(V& v) {
    using grpo::config::Check;
    v("model", model, "HF checkpoint folder", Check().required().nonempty());
    v("batch", batch, "prompts generated together", Check().ge(1));
    v("prompt_len", prompt_len, "tokens per synthetic prompt", Check().ge(1));
    v("repeats", repeats, "timed runs after the warm-up (the median is reported)", Check().ge(1));
    v("generation", generation, "the rollout engine's settings; greedy, EOS ignored, 128 new tokens unless set");
    v("dtype", dtype, "dtype of the model's parameters", Check().one_of({"float32", "bfloat16"}));
    v("device", device, "cpu, cuda, cuda:1, ...", Check().nonempty());
    v("threads", threads, "torch intra-op threads; 0 = torch's default", Check().ge(0).le(4096));
  }
};

const std::vector<Flag> kFlags = {
    {"--model", "model", FlagKind::text, "DIR"},
    {"--batch", "batch", FlagKind::value, "B"},
    {"--prompt-len", "prompt_len", FlagKind::value, "L"},
    {"--max-new-tokens", "generation.max_new_tokens", FlagKind::value, "N"},
    {"--repeats", "repeats", FlagKind::value, "R"},
    {"--threads", "threads", FlagKind::value, "K"},
    {"--dtype", "dtype", FlagKind::text, "float32|bfloat16"},
    {"--device", "device", FlagKind::text, "cpu|cuda"},
    {"--speculative-mtp", "generation.speculative_mtp", FlagKind::on},
    {"--no-cache", "generation.use_cache", FlagKind::off},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
    {"--bench-batch", "batch", FlagKind::value, "B"},
    {"--bench-prompt-len", "prompt_len", FlagKind::value, "L"},
    {"--bench-repeats", "repeats", FlagKind::value, "R"},
};

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

int run(int argc, char** argv) {
  const auto parsed = grpo::tools::scan_flags(std::vector<std::string>(argv + 1, argv + argc), kFlags,
                                              "grpo_bench_generate");
  if (parsed.help) {
    std::cout << kUsage;
    return 0;
  }
  const auto opts = grpo::tools::bind_flags<BenchGenerateOptions>(parsed, kFlags);
  const grpo::rollout::GenerationConfig& gc = opts.generation;

  if (opts.threads > 0) {
    torch::set_num_threads(static_cast<int>(opts.threads));
    torch::set_num_interop_threads(1);
  }
  grpo::model::LoadOptions lo;
  if (opts.dtype == "bfloat16") lo.dtype = torch::kBFloat16;
  lo.device = torch::Device(opts.device);
  const double rss0 = peak_rss_mb();
  auto model = grpo::model::load_hf_checkpoint(opts.model, lo);
  if (model->config().is_mla()) model->set_attention_impl(grpo::model::AttentionImpl::absorbed);

  const int64_t vocab = model->config().vocab_size;
  if (vocab <= 15) {
    throw std::invalid_argument(opts.model + ": the synthetic prompts need a vocabulary of more than 15 ids, found " +
                                std::to_string(vocab));
  }
  std::vector<grpo::rollout::GenerationRequest> reqs;
  for (int64_t i = 0; i < opts.batch; ++i) {
    grpo::rollout::GenerationRequest r;
    for (int64_t j = 0; j < opts.prompt_len; ++j) r.prompt_ids.push_back((i * 7 + j * 13) % (vocab - 10) + 5);
    reqs.push_back(r);
  }
  const double rss_loaded = peak_rss_mb();
  grpo::rollout::Engine engine(model, nullptr, gc);
  engine.generate(reqs);  // warm-up
  std::vector<double> times;
  grpo::rollout::GenerationStats stats;
  for (int64_t r = 0; r < opts.repeats; ++r) {
    const double t0 = now_seconds();
    engine.generate(reqs, &stats);
    times.push_back(now_seconds() - t0);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const nlohmann::json j = {{"impl", "grpo"},
                            {"model", std::filesystem::path(opts.model).filename().string()},
                            {"batch", opts.batch},
                            {"prompt_len", opts.prompt_len},
                            {"new_tokens", gc.max_new_tokens},
                            {"repeats", opts.repeats},
                            {"seconds", median},
                            {"seconds_all", times},
                            {"tokens_per_s", static_cast<double>(opts.batch * gc.max_new_tokens) / median},
                            {"peak_rss_mb", peak_rss_mb()},
                            {"rss_before_mb", rss_loaded},
                            {"rss_start_mb", rss0},
                            {"torch_threads", torch::get_num_threads()},
                            {"attn", model->config().is_mla() ? "mla-absorbed" : "gqa"},
                            {"speculative_mtp", gc.speculative_mtp},
                            {"drafted", stats.drafted},
                            {"accepted", stats.accepted},
                            {"dtype", opts.dtype},
                            {"device", opts.device}};
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    std::cerr << "grpo_bench_generate: error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "grpo_bench_generate: error: " << e.what() << "\n";
  }
  return 1;
}
