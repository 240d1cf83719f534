// Per-step metrics, one JSON object per line in <run folder>/metrics.jsonl:
//   {"step": 12, "time": 1763812345.123, "loss": 2.31, "lr": 0.0003, "stage": "sft"}
// Each line is written with one write call and flushed, so a reader (or a plot) can follow a run
// live. Opening a file whose last line was cut off (a crash mid-write) drops that partial line
// first, so the file stays valid JSONL. Non-finite numbers are written as null (JSON has no NaN).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace grpo {

using MetricValue = std::variant<double, std::int64_t, bool, std::string>;

struct Metric {
  std::string name;
  MetricValue value;

  Metric(std::string n, double v) : name(std::move(n)), value(v) {}
  Metric(std::string n, float v) : name(std::move(n)), value(static_cast<double>(v)) {}
  Metric(std::string n, std::int64_t v) : name(std::move(n)), value(v) {}
  Metric(std::string n, int v) : name(std::move(n)), value(static_cast<std::int64_t>(v)) {}
  Metric(std::string n, bool v) : name(std::move(n)), value(v) {}
  Metric(std::string n, std::string v) : name(std::move(n)), value(std::move(v)) {}
  Metric(std::string n, const char* v) : name(std::move(n)), value(std::string(v)) {}
};

class MetricsWriter {
 public:
  // Opens `path` for appending (creating parent folders). Throws std::runtime_error naming it.
  // An empty path writes nothing (the metrics of ranks other than 0 under data parallelism).
  explicit MetricsWriter(std::string path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends {"step": step, "time": <unix seconds>, <metrics in order>}. A name repeated, or named
  // "step" or "time", throws std::invalid_argument.
  void write(std::int64_t step, const std::vector<Metric>& metrics);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Reads a metrics.jsonl back as (step, name -> number) rows; used by tests and plotting.
// Throws std::runtime_error naming the file and line of a malformed line.
struct MetricsRow {
  std::int64_t step = 0;
  std::vector<std::pair<std::string, double>> numbers;  // numeric and boolean fields, in order
  double get(const std::string& name, double fallback) const;
};
std::vector<MetricsRow> read_metrics(const std::string& path);

}  // namespace grpo
