// grpo::log: leveled logging to the console and, optionally, to files in a run folder.
//
// The implementation (src/core/log.cpp) uses spdlog and is compiled without torch's include path,
// so spdlog's fmt 9 and torch's fmt 12 never meet (see docs/foundation.md). Messages are formatted
// with grpo::format before they reach spdlog.
//
//   grpo::log::info("step {} loss {:.4f}", step, loss);
#pragma once

#include <string>
#include <string_view>

#include "grpo/core/format.h"

namespace grpo::log {

enum class Level { trace, debug, info, warn, error, off };

// "trace" | "debug" | "info" | "warn" | "error" | "off"; throws std::invalid_argument otherwise.
Level parse_level(std::string_view name);
std::string_view level_name(Level level);

void set_level(Level level);
Level level();
inline bool enabled(Level l) { return l >= level() && l != Level::off; }

// Writes one finished message at `level` to every sink.
void write(Level level, std::string_view message);

// Also appends every message to `path` (created with its parent folders). Throws std::runtime_error
// naming the path when it cannot be opened.
void add_file(const std::string& path);
// Stops writing to files added with add_file (flushing them first).
void close_files();
// Flushes every sink.
void flush();

template <class... A>
void trace(std::string_view fmt, const A&... a) {
  if (enabled(Level::trace)) write(Level::trace, grpo::format(fmt, a...));
}
template <class... A>
void debug(std::string_view fmt, const A&... a) {
  if (enabled(Level::debug)) write(Level::debug, grpo::format(fmt, a...));
}
template <class... A>
void info(std::string_view fmt, const A&... a) {
  if (enabled(Level::info)) write(Level::info, grpo::format(fmt, a...));
}
template <class... A>
void warn(std::string_view fmt, const A&... a) {
  if (enabled(Level::warn)) write(Level::warn, grpo::format(fmt, a...));
}
template <class... A>
void error(std::string_view fmt, const A&... a) {
  if (enabled(Level::error)) write(Level::error, grpo::format(fmt, a...));
}

}  // namespace grpo::log
