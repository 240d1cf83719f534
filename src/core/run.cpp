#include "grpo/core/run.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
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
  // One run per folder: before anything in it is touched.
  const std::string lock_path = path(".lock");
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0)
    throw std::runtime_error("cannot open the run folder's lock '" + lock_path + "': " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder;
    try {
      holder = read_file(lock_path);
    } catch (const std::exception&) {
    }
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (err == EWOULDBLOCK) {
      throw std::runtime_error("run folder '" + dir_ + "' is in use by another run (process " +
                               (holder.empty() ? std::string("unknown") : holder) + " holds " + lock_path +
                               "); wait for it to end or choose another run.output_dir");
    }
    throw std::runtime_error("cannot lock '" + lock_path + "': " + std::strerror(err));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    log::warn("cannot write the PID into {}: {}", lock_path, std::strerror(errno));
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

Run::~Run() {
  log::close_files();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::string Run::path(std::string_view name) const { return (fs::path(dir_) / name).string(); }

}  // namespace grpo
