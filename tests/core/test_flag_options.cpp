// Command-line flags bound through the config system (tools/flag_options.h, used by the `grpo` tool
// and grpo_bench_generate): free text verbatim, numbers and switches as keys, every error in the
// config system's one-line format located at the flag as typed.
#include "flag_options.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "test_util.h"

namespace grpo::tools {
namespace {

using config::Check;

struct SamplingOpts {
  double top_p = 1.0;
  int64_t top_k = 0;
  template <class V>
  void visit(V& v) {
    v("top_p", top_p, "nucleus mass", Check().gt(0).le(1));
    v("top_k", top_k, "most likely tokens kept", Check().ge(0));
  }
};

struct GenOpts {
  int64_t max_new_tokens = 128;
  SamplingOpts sampling;
  std::vector<std::string> stop_strings;
  bool use_cache = true;
  bool ignore_eos = false;
  template <class V>
  void visit(V& v) {
    v("max_new_tokens", max_new_tokens, "tokens per completion", Check().ge(1));
    v("sampling", sampling, "sampling");
    v("stop_strings", stop_strings, "stop strings");
    v("use_cache", use_cache, "KV cache");
    v("ignore_eos", ignore_eos, "never stop on EOS");
  }
};

struct Opts {
  std::string model;
  std::vector<std::string> prompts;
  std::vector<std::vector<int64_t>> prompt_ids;
  GenOpts generation;
  std::string dtype = "float32";
  bool json = false;
  template <class V>
  void visit(V& v) {
    v("model", model, "checkpoint", Check().required().nonempty());
    v("prompts", prompts, "prompt texts");
    v("prompt_ids", prompt_ids, "prompt ids");
    v("generation", generation, "generation");
    v("dtype", dtype, "dtype", Check().one_of({"float32", "bfloat16"}));
    v("json", json, "JSON output");
  }
};

const std::vector<Flag> kFlags = {
    {"--model", "model", FlagKind::text, "DIR"},
    {"--prompt", "prompts", FlagKind::append_text, "TEXT"},
    {"--prompt-ids", "prompt_ids", FlagKind::append_ids, "1,2,3"},
    {"--max-new-tokens", "generation.max_new_tokens", FlagKind::value, "N"},
    {"--top-p", "generation.sampling.top_p", FlagKind::value, "P"},
    {"--top-k", "generation.sampling.top_k", FlagKind::value, "K"},
    {"--stop", "generation.stop_strings", FlagKind::append_text, "TEXT"},
    {"--ignore-eos", "generation.ignore_eos", FlagKind::on},
    {"--no-cache", "generation.use_cache", FlagKind::off},
    {"--dtype", "dtype", FlagKind::text, "float32|bfloat16"},
    {"--json", "json", FlagKind::on},
    {"--config", "", FlagKind::custom, "FILE"},
    {"--set", "", FlagKind::set, "KEY=VALUE"},
};

const std::vector<RemovedFlag> kRemoved = {{"--bench-batch", "use grpo_bench_generate"}};

ParsedFlags scan(const std::vector<std::string>& args) { return scan_flags(args, kFlags, "generate", kRemoved); }
Opts parse(const std::vector<std::string>& args) { return bind_flags<Opts>(scan(args), kFlags); }

const std::string kFlagList =
    "--model DIR, --prompt TEXT, --prompt-ids 1,2,3, --max-new-tokens N, --top-p P, --top-k K, --stop TEXT, "
    "--ignore-eos, --no-cache, --dtype float32|bfloat16, --json, --config FILE, --set KEY=VALUE";

TEST(FlagOptions, FreeTextArrivesVerbatim) {
  const auto o = parse({"--model",      "dir: with [brackets] # and",
                        "--prompt",     "a: b",
                        "--prompt",     "[x]",
                        "--prompt",     "# c",
                        "--prompt",     "  leading and trailing  ",
                        "--prompt",     "",
                        "--prompt",     "true",
                        "--prompt",     "1e3",
                        "--prompt=k=v", "--stop",
                        "</answer>",    "--stop",
                        "{y}",          "--stop",
                        "- item",       "--dtype",
                        "bfloat16"});
  EXPECT_EQ(o.model, "dir: with [brackets] # and");
  EXPECT_EQ(o.prompts,
            (std::vector<std::string>{"a: b", "[x]", "# c", "  leading and trailing  ", "", "true", "1e3", "k=v"}));
  EXPECT_EQ(o.generation.stop_strings, (std::vector<std::string>{"</answer>", "{y}", "- item"}));
  EXPECT_EQ(o.dtype, "bfloat16");
}

TEST(FlagOptions, NumbersSwitchesAndIdsSetTheirKeys) {
  const auto d = parse({"--model", "m"});
  EXPECT_EQ(d.generation.max_new_tokens, 128);
  EXPECT_TRUE(d.generation.use_cache);
  EXPECT_FALSE(d.json);
  EXPECT_EQ(d.dtype, "float32");

  const auto o = parse({"--model", "m", "--max-new-tokens", "12", "--top-p=0.5", "--top-k", "3", "--ignore-eos",
                        "--no-cache", "--json", "--prompt-ids", "1,2,3", "--prompt-ids", " 4, 5 "});
  EXPECT_EQ(o.generation.max_new_tokens, 12);
  EXPECT_DOUBLE_EQ(o.generation.sampling.top_p, 0.5);
  EXPECT_EQ(o.generation.sampling.top_k, 3);
  EXPECT_TRUE(o.generation.ignore_eos);
  EXPECT_FALSE(o.generation.use_cache);
  EXPECT_TRUE(o.json);
  EXPECT_EQ(o.prompt_ids, (std::vector<std::vector<int64_t>>{{1, 2, 3}, {4, 5}}));
}

TEST(FlagOptions, LaterFlagsOverrideEarlierOnesAndSetReachesEveryKey) {
  EXPECT_EQ(parse({"--model", "m", "--top-k", "3", "--set", "generation.sampling.top_k=7"}).generation.sampling.top_k,
            7);
  EXPECT_EQ(parse({"--model", "m", "--set=generation.sampling.top_k=7", "--top-k", "2"}).generation.sampling.top_k, 2);
  EXPECT_EQ(parse({"--set", "model=x"}).model, "x");
  EXPECT_EQ(parse({"--model", "m", "--set", "generation.stop_strings=[a, b]", "--stop", "c"}).generation.stop_strings,
            (std::vector<std::string>{"a", "b", "c"}));
}

TEST(FlagOptions, BoundAndTypeErrorsNameTheFlagAsTyped) {
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--top-p", "2"}), config::ConfigError,
                            "--top-p 2: generation.sampling.top_p: must be in (0, 1], found 2");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--top-p=0"}), config::ConfigError,
                            "--top-p=0: generation.sampling.top_p: must be in (0, 1], found 0");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--max-new-tokens", "0"}), config::ConfigError,
                            "--max-new-tokens 0: generation.max_new_tokens: must be >= 1, found 0");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--top-k", "abc"}), config::ConfigError,
                            "--top-k abc: generation.sampling.top_k: expected an integer, found 'abc'");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--prompt-ids", "1,x"}), config::ConfigError,
                            "--prompt-ids 1,x: prompt_ids[0][1]: expected an integer, found 'x'");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--dtype", "fp16"}), config::ConfigError,
                            "--dtype fp16: dtype: expected one of float32, bfloat16, found the string \"fp16\"");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", ""}), config::ConfigError, "--model : model: must not be empty");
}

TEST(FlagOptions, SetErrorsAreTheConfigSystems) {
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--set", "generation.sampling.top_k=-1"}), config::ConfigError,
                            "--set generation.sampling.top_k=-1: generation.sampling.top_k: must be >= 0, found -1");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--model", "m", "--set", "generation.sampling.top_q=1"}), config::ConfigError,
                            "--set generation.sampling.top_q=1: unknown key 'generation.sampling.top_q' "
                            "(did you mean 'generation.sampling.top_p'?)");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--set", "generation=3", "--stop", "x"}), config::ConfigError,
                            "--stop x: 'generation' is '3', so it has no key 'stop_strings'");
}

TEST(FlagOptions, MissingRequiredKeyNamesItsFlag) {
  GRPO_EXPECT_THROW_MESSAGE(parse({"--prompt", "x"}), config::ConfigError,
                            "command line: missing required key 'model' (pass --model DIR)");
}

TEST(FlagOptions, UnknownFlagsAreNamedWithASuggestionOrTheList) {
  GRPO_EXPECT_THROW_MESSAGE(scan({"--model", "m", "--top-q", "1"}), std::invalid_argument,
                            "unknown flag '--top-q' for 'generate' (did you mean '--top-p'?)");
  GRPO_EXPECT_THROW_MESSAGE(scan({"--bench-batch", "4"}), std::invalid_argument,
                            "unknown flag '--bench-batch' for 'generate' (removed: use grpo_bench_generate)");
  GRPO_EXPECT_THROW_MESSAGE(scan({"--frobnicate"}), std::invalid_argument,
                            "unknown flag '--frobnicate' for 'generate'; the flags are " + kFlagList + ", --help");
  GRPO_EXPECT_THROW_MESSAGE(scan({"stray"}), std::invalid_argument,
                            "unexpected argument 'stray' for 'generate'; the flags are " + kFlagList + ", --help");
  GRPO_EXPECT_THROW_MESSAGE(scan({"--model", "m", "--top-p"}), std::invalid_argument, "--top-p needs a value (P)");
  GRPO_EXPECT_THROW_MESSAGE(scan({"--json=yes"}), std::invalid_argument, "--json takes no value, found '--json=yes'");
}

TEST(FlagOptions, HelpAndCustomFlagsAreLeftToTheProgram) {
  EXPECT_TRUE(scan({"--model", "m", "--help"}).help);
  EXPECT_TRUE(scan({"-h"}).help);
  EXPECT_FALSE(scan({"--model", "m"}).help);
  const auto parsed = scan({"--config", "gen.yaml", "--model", "m"});
  const auto configs = parsed.uses_of("--config");
  ASSERT_EQ(configs.size(), 1u);
  EXPECT_EQ(configs[0]->value, "gen.yaml");
  EXPECT_EQ(bind_flags<Opts>(parsed, kFlags).model, "m");
}

// What `grpo generate --config FILE` does: the file's section under its key, the flags on top, the
// file's own errors at the file's lines.
TEST(FlagOptions, ASeededSectionKeepsItsLocationsAndTheFlagsGoOnTop) {
  config::Value root = flag_tree(kFlags);
  node_at(root, "generation", command_line_location()) = config::parse_yaml_string(
      "max_new_tokens: 256\nstop_strings: [\"</s>\"]\n", "gen.yaml");
  ensure_flag_maps(root, kFlags);
  apply_flags(root, scan({"--model", "m", "--stop", "x", "--top-p", "0.5"}));
  const auto o = bind_tree<Opts>(root, kFlags);
  EXPECT_EQ(o.generation.max_new_tokens, 256);
  EXPECT_EQ(o.generation.stop_strings, (std::vector<std::string>{"</s>", "x"}));
  EXPECT_DOUBLE_EQ(o.generation.sampling.top_p, 0.5);

  config::Value bad = flag_tree(kFlags);
  node_at(bad, "generation", command_line_location()) = config::parse_yaml_string("max_new_tokens: 0\n", "gen.yaml");
  ensure_flag_maps(bad, kFlags);
  apply_flags(bad, scan({"--model", "m"}));
  GRPO_EXPECT_THROW_MESSAGE(bind_tree<Opts>(bad, kFlags), config::ConfigError,
                            "gen.yaml:1:17: generation.max_new_tokens: must be >= 1, found 0");
}

TEST(FlagOptions, ApplyOverrideWithASourceLocatesEverythingAtIt) {
  config::Value root = config::Value::make_map();
  config::apply_override(root, "a.b=2", "--b 2");
  const config::Value* b = root.find("a")->find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->text, "2");
  EXPECT_EQ(b->loc.str(), "--b 2");
  EXPECT_EQ(b->key_loc.str(), "--b 2");
  config::apply_override(root, "a.c=3");
  EXPECT_EQ(root.find("a")->find("c")->loc.str(), "--set a.c=3");
  GRPO_EXPECT_THROW_MESSAGE(config::apply_override(root, "=2", "--b"), config::ConfigError,
                            "--b: expected key=value, such as trainer.lr=3e-6");
}

}  // namespace
}  // namespace grpo::tools
