#include "grpo/core/run.h"

#include <filesystem>

#include "grpo/core/files.h"
#include "grpo/core/log.h"

namespace grpo {
namespace fs = std::filesystem;

Run::Run(const RunConfig& cfg, std::string_view effective_config_yaml) : cfg_(cfg), dir_(cfg.output_dir) {
  dist::set_config(cfg.dist);
  log::set_level(log::parse_level(cfg.log_level));
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw std::runtime_error("cannot create run folder '" + dir_ + "': " + ec.message());
  if (!dist::is_main_process()) {  // rank 0 owns the run folder's log, config and metrics
    if (log::level() < log::Level::warn) log::set_level(log::Level::warn);
    metrics_ = std::make_unique<MetricsWriter>("");
    return;
  }
  log::add_file(path("log.txt"));

  const std::string config_path = path("config.yaml");
  if (fs::exists(config_path) && read_file(config_path) != effective_config_yaml) {
    int n = 1;
    while (fs::exists(path("config." + std::to_string(n) + ".yaml"))) ++n;
    const std::string kept = path("config." + std::to_string(n) + ".yaml");
    fs::rename(config_path, kept, ec);
    if (ec) throw std::runtime_error("cannot keep old '" + config_path + "': " + ec.message());
    log::info("run folder held a different config.yaml; kept it as {}", kept);
  }
  write_file_atomic(config_path, effective_config_yaml);
  log::info("effective configuration (saved to {}):\n{}", config_path, effective_config_yaml);
  metrics_ = std::make_unique<MetricsWriter>(path("metrics.jsonl"));
}

Run::~Run() { log::close_files(); }

std::string Run::path(std::string_view name) const { return (fs::path(dir_) / name).string(); }

}  // namespace grpo
