#include "grpo/core/cli.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace grpo::cli {
namespace {

JobArgs parse(std::vector<const char*> args) {
  args.insert(args.begin(), "prog");
  return parse_job_args(static_cast<int>(args.size()), args.data());
}

TEST(Cli, ParsesConfigAndOverridesInOrder) {
  const auto a = parse({"--config", "x.yaml", "--set", "a.b=1", "--set=c=2", "--print-config"});
  EXPECT_EQ(a.config_path.value(), "x.yaml");
  EXPECT_EQ(a.overrides, (std::vector<std::string>{"a.b=1", "c=2"}));
  EXPECT_TRUE(a.print_config);
  EXPECT_FALSE(a.help);
  EXPECT_EQ(parse({"--config=y.yaml"}).config_path.value(), "y.yaml");
  EXPECT_TRUE(parse({"-h"}).help);
  EXPECT_TRUE(parse({"--resume"}).resume);
  EXPECT_FALSE(parse({}).resume);
}

TEST(Cli, RejectsUnknownAndIncompleteArguments) {
  GRPO_EXPECT_THROW_MESSAGE(parse({"--cofnig", "x"}), std::invalid_argument,
                            "unknown argument '--cofnig' (expected --config FILE, --set key=value, "
                            "--resume, --print-config or --help)");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--set"}), std::invalid_argument, "--set needs a value");
  GRPO_EXPECT_THROW_MESSAGE(parse({"--config", "a", "--config", "b"}), std::invalid_argument, "--config given twice");
}

}  // namespace
}  // namespace grpo::cli
