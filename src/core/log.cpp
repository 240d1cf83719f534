// spdlog behind grpo::log. This file must not see torch's include path (fmt clash); CMake builds
// it in the grpo_log object library for that reason.
#include "grpo/core/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace grpo::log {
namespace {

std::atomic<Level> g_level{Level::info};

struct Logger {
  std::mutex mutex;
  std::shared_ptr<spdlog::logger> logger;
  std::vector<spdlog::sink_ptr> files;

  Logger() {
    auto console = std::make_shared<spdlog::sinks::stdout_color_sink_mt>();
    logger = std::make_shared<spdlog::logger>("grpo", console);
    logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    logger->set_level(spdlog::level::trace);  // filtering happens in grpo::log::enabled
    logger->flush_on(spdlog::level::warn);
  }
};

Logger& instance() {
  static Logger l;
  return l;
}

spdlog::level::level_enum to_spdlog(Level l) {
  switch (l) {
    case Level::trace: return spdlog::level::trace;
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
    case Level::off: return spdlog::level::off;
  }
  return spdlog::level::info;
}

constexpr std::string_view kNames[] = {"trace", "debug", "info", "warn", "error", "off"};

}  // namespace

Level parse_level(std::string_view name) {
  for (int i = 0; i < 6; ++i) {
    if (kNames[i] == name) return static_cast<Level>(i);
  }
  throw std::invalid_argument("unknown log level '" + std::string(name) +
                              "' (expected trace, debug, info, warn, error or off)");
}

std::string_view level_name(Level level) { return kNames[static_cast<int>(level)]; }

void set_level(Level level) { g_level = level; }
Level level() { return g_level; }

void write(Level level, std::string_view message) {
  Logger& l = instance();
  l.logger->log(to_spdlog(level), "{}", message);
}

void add_file(const std::string& path) {
  Logger& l = instance();
  std::lock_guard<std::mutex> lock(l.mutex);
  try {
    const std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
    sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
    l.logger->sinks().push_back(sink);
    l.files.push_back(sink);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot open log file '" + path + "': " + e.what());
  }
}

void close_files() {
  Logger& l = instance();
  std::lock_guard<std::mutex> lock(l.mutex);
  l.logger->flush();
  auto& sinks = l.logger->sinks();
  for (const auto& f : l.files) {
    for (auto it = sinks.begin(); it != sinks.end(); ++it) {
      if (*it == f) {
        sinks.erase(it);
        break;
      }
    }
  }
  l.files.clear();
}

void flush() { instance().logger->flush(); }

}  // namespace grpo::log
