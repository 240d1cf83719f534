// The run folder: where a program writes its effective config, log and metrics.
//
//   <output_dir>/config.yaml     the effective configuration (file + --set overrides + defaults)
//   <output_dir>/log.txt         everything logged, appended across resumes
//   <output_dir>/metrics.jsonl   one JSON object per step (grpo/core/metrics.h)
//
// Re-running into the same folder appends to the log and metrics; a config.yaml that differs from
// the new one is kept as config.N.yaml first, so nothing already written is lost.
// Under data parallelism (grpo/dist/launch_env.h) only rank 0 writes these three; the other ranks
// log warnings and errors to the console only, and their metrics() writes nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "grpo/config/config.h"
#include "grpo/core/metrics.h"
#include "grpo/dist/launch_env.h"

namespace grpo {

// The `run` section every program's YAML has.
struct RunConfig {
  std::string output_dir = "runs/default";  // run folder for config, log, metrics and checkpoints
  std::int64_t seed = 1234;                 // seeds every random source of the run
  std::string log_level = "info";           // trace | debug | info | warn | error
  double progress_interval_s = 10.0;        // seconds between progress lines (0 = every step)
  dist::DistConfig dist;                    // multi-process runs (grpo launch, torchrun, srun)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("output_dir", output_dir, "run folder: config.yaml, log.txt, metrics.jsonl, checkpoints", Check().nonempty());
    v("seed", seed, "seed for every random source (torch, data order, sampling)", Check().ge(0));
    v("log_level", log_level, "console and log.txt verbosity",
      Check().one_of({"trace", "debug", "info", "warn", "error"}));
    v("progress_interval_s", progress_interval_s, "seconds between progress lines", Check().ge(0));
    v("dist", dist,
      "multi-process runs: backend, collective timeout, gradient buckets, sharding, expert parallelism "
      "(docs/distributed.md)");
  }
};

class Run {
 public:
  // Creates the folder, takes its lock (rank 0: an exclusive flock on <dir>/.lock, which holds the
  // holder's PID; a second process on the folder is refused, naming it), sets the log level,
  // starts log.txt, logs `effective_config_yaml` in full and saves it as config.yaml, and opens
  // metrics.jsonl. Throws std::runtime_error naming the path that failed.
  Run(const RunConfig& cfg, std::string_view effective_config_yaml);
  ~Run();

  const std::string& dir() const { return dir_; }
  // <dir>/<name>
  std::string path(std::string_view name) const;
  MetricsWriter& metrics() { return *metrics_; }
  const RunConfig& config() const { return cfg_; }

 private:
  RunConfig cfg_;
  std::string dir_;
  int lock_fd_ = -1;  // <dir>/.lock, flock'ed by rank 0 while the Run lives (the kernel drops it on any exit)
  std::unique_ptr<MetricsWriter> metrics_;
};

}  // namespace grpo
