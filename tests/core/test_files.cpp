#include "grpo/core/files.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.h"

namespace grpo {
namespace {

TEST(Files, AtomicWriteReplacesAndLeavesNoTemporary) {
  test::TempDir dir;
  const std::string path = dir.path("sub/folder/file.txt");
  write_file_atomic(path, "first");
  EXPECT_EQ(read_file(path), "first");
  write_file_atomic(path, std::string("second\0binary", 13));
  EXPECT_EQ(read_file(path), std::string("second\0binary", 13));
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path("sub/folder"))) ++entries;
  EXPECT_EQ(entries, 1);
}

TEST(Files, FailedWriteKeepsTheOldFile) {
  test::TempDir dir;
  const std::string path = dir.write("keep.txt", "old");
  // The target's folder path runs through a regular file, so the write must fail.
  EXPECT_THROW(write_file_atomic(dir.path("keep.txt/inner.txt"), "new"), std::runtime_error);
  EXPECT_EQ(read_file(path), "old");
  GRPO_EXPECT_THROW_MESSAGE(read_file(dir.path("missing.txt")), std::runtime_error,
                            "cannot read '" + dir.path("missing.txt") + "': No such file or directory");
}

}  // namespace
}  // namespace grpo
