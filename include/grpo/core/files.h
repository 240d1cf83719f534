// Small file helpers that the run folder, checkpoints and datasets share.
#pragma once

#include <string>
#include <string_view>

namespace grpo {

// Reads a whole file. Throws std::runtime_error naming the path when it cannot be read.
std::string read_file(const std::string& path);

// Writes `content` to `path` so that readers see either the old file or the new one, never a
// mix: a temporary file beside it is written, flushed to disk and renamed over `path`. Parent
// folders are created. Throws std::runtime_error naming the path on failure (the old file stays).
void write_file_atomic(const std::string& path, std::string_view content);

}  // namespace grpo
