#include "grpo/core/run.h"

#include <gtest/gtest.h>

#include <unistd.h>

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

// One run per folder: a second Run on a folder that one holds is refused naming the holder's PID
// (the kernel's flock: the same holds for another process, which the lock is for); once the first
// ends, the folder is free again.
TEST(Run, ASecondRunOnAHeldFolderIsRefusedNamingTheHolder) {
  test::TempDir dir;
  RunConfig cfg;
  cfg.output_dir = dir.path("run");
  {
    grpo::Run first(cfg, "x: 1\n");
    first.metrics().write(1, {{"loss", 1.0}});
    EXPECT_EQ(test::read_text(dir.path("run/.lock")), std::to_string(::getpid()) + "\n");
    try {
      grpo::Run second(cfg, "x: 2\n");
      FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), "run folder '" + cfg.output_dir + "' is in use by another run (process " +
                                           std::to_string(::getpid()) + " holds " + cfg.output_dir +
                                           "/.lock); wait for it to end or choose another run.output_dir");
    }
    // Nothing of the first run was touched by the refused one.
    EXPECT_EQ(test::read_text(dir.path("run/config.yaml")), "x: 1\n");
    EXPECT_FALSE(std::filesystem::exists(dir.path("run/config.1.yaml")));
  }
  EXPECT_EQ(read_metrics(dir.path("run/metrics.jsonl")).size(), 1u);
  { grpo::Run again(cfg, "x: 1\n"); }  // released with the first
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
