#include "grpo/core/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "test_util.h"

namespace grpo {
namespace {

TEST(Metrics, OneJsonObjectPerStepInOrder) {
  test::TempDir dir;
  const std::string path = dir.path("run/metrics.jsonl");
  {
    MetricsWriter w(path);
    w.write(1, {{"loss", 2.5}, {"lr", 1e-4}, {"stage", "sft"}, {"tokens", 128}, {"ok", true}});
    w.write(2, {{"loss", std::nan("")}});
  }
  const std::string text = test::read_text(path);
  const auto first_line = text.substr(0, text.find('\n'));
  EXPECT_EQ(first_line.rfind("{\"step\":1,\"time\":", 0), 0u) << first_line;
  EXPECT_NE(first_line.find("\"loss\":2.5,\"lr\":0.0001,\"stage\":\"sft\",\"tokens\":128,\"ok\":true}"),
            std::string::npos)
      << first_line;
  EXPECT_NE(text.find("\"loss\":null"), std::string::npos) << text;

  const auto rows = read_metrics(path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].step, 1);
  EXPECT_DOUBLE_EQ(rows[0].get("loss", 0), 2.5);
  EXPECT_DOUBLE_EQ(rows[0].get("tokens", 0), 128);
  EXPECT_DOUBLE_EQ(rows[0].get("ok", 0), 1);
  EXPECT_DOUBLE_EQ(rows[1].get("loss", -1), -1);  // null is not a number
}

TEST(Metrics, ReopeningAppendsAndDropsACutOffLine) {
  test::TempDir dir;
  const std::string path = dir.path("metrics.jsonl");
  { MetricsWriter(path).write(1, {{"loss", 1.0}}); }
  { std::ofstream(path, std::ios::app) << "{\"step\":2,\"lo"; }  // a crash mid-line
  { MetricsWriter(path).write(2, {{"loss", 0.5}}); }
  const auto rows = read_metrics(path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].step, 2);
  EXPECT_DOUBLE_EQ(rows[1].get("loss", 0), 0.5);
}

TEST(Metrics, DuplicateOrReservedNamesThrow) {
  test::TempDir dir;
  MetricsWriter w(dir.path("m.jsonl"));
  GRPO_EXPECT_THROW_MESSAGE(w.write(3, {{"loss", 1.0}, {"loss", 2.0}}), std::invalid_argument,
                            "metric 'loss' given twice (or reserved) at step 3");
  EXPECT_THROW(w.write(3, {{"step", 1}}), std::invalid_argument);
}

TEST(Metrics, MalformedLineNamesFileAndLine) {
  test::TempDir dir;
  const std::string path = dir.write("m.jsonl", "{\"step\":1}\n{\"step\":\n");
  try {
    read_metrics(path);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ":2: malformed metrics line", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace grpo
