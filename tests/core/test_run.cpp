#include "grpo/core/run.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "grpo/core/log.h"
#include "test_util.h"

namespace grpo {
namespace {

TEST(Run, CreatesFolderSavesConfigAndKeepsADifferentOldOne) {
  test::TempDir dir;
  RunConfig cfg;
  cfg.output_dir = dir.path("runs/a");
  {
    grpo::Run run(cfg, "x: 1\n");
    run.metrics().write(1, {{"loss", 1.0}});
    log::info("hello from the test");
  }
  EXPECT_EQ(test::read_text(dir.path("runs/a/config.yaml")), "x: 1\n");
  EXPECT_NE(test::read_text(dir.path("runs/a/log.txt")).find("hello from the test"), std::string::npos);
  { grpo::Run again(cfg, "x: 1\n"); }  // same config: nothing kept aside
  EXPECT_FALSE(std::filesystem::exists(dir.path("runs/a/config.1.yaml")));
  { grpo::Run changed(cfg, "x: 2\n"); }
  EXPECT_EQ(test::read_text(dir.path("runs/a/config.1.yaml")), "x: 1\n");
  EXPECT_EQ(test::read_text(dir.path("runs/a/config.yaml")), "x: 2\n");
  EXPECT_EQ(read_metrics(dir.path("runs/a/metrics.jsonl")).size(), 1u);
  log::set_level(log::Level::info);
}

TEST(Run, UnusableFolderIsNamed) {
  test::TempDir dir;
  dir.write("file", "not a folder");
  RunConfig cfg;
  cfg.output_dir = dir.path("file/run");
  try {
    grpo::Run run(cfg, "");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("cannot create run folder '" + cfg.output_dir + "'", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace grpo
