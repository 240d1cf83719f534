#include "grpo/core/metrics.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace grpo {
namespace {

// Cuts a trailing partial line (no final newline) off `path`, if there is one.
void drop_partial_last_line(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.back() == '\n') return;
  const std::size_t last_newline = text.rfind('\n');
  const std::uintmax_t keep = last_newline == std::string::npos ? 0 : last_newline + 1;
  std::filesystem::resize_file(path, keep, ec);
  if (ec) throw std::runtime_error("cannot repair '" + path + "': " + ec.message());
}

}  // namespace

MetricsWriter::MetricsWriter(std::string path) : path_(std::move(path)) {
  if (path_.empty()) return;
  const std::filesystem::path p(path_);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  drop_partial_last_line(path_);
  file_ = std::fopen(path_.c_str(), "ab");
  if (file_ == nullptr) {
    throw std::runtime_error("cannot open metrics file '" + path_ + "': " + std::strerror(errno));
  }
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsWriter::write(std::int64_t step, const std::vector<Metric>& metrics) {
  nlohmann::ordered_json row;
  row["step"] = step;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  row["time"] = std::chrono::duration<double>(now).count();
  for (const auto& m : metrics) {
    if (row.contains(m.name)) {
      throw std::invalid_argument("metric '" + m.name + "' given twice (or reserved) at step " + std::to_string(step));
    }
    std::visit(
        [&](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, double>) {
            row[m.name] = std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
          } else {
            row[m.name] = v;
          }
        },
        m.value);
  }
  if (file_ == nullptr) return;  // a writer of nothing (empty path)
  const std::string line = row.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    throw std::runtime_error("cannot write metrics to '" + path_ + "': " + std::strerror(errno));
  }
}

double MetricsRow::get(const std::string& name, double fallback) const {
  for (const auto& [k, v] : numbers) {
    if (k == name) return v;
  }
  return fallback;
}

std::vector<MetricsRow> read_metrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read metrics file '" + path + "'");
  std::vector<MetricsRow> rows;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) continue;
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(line);
    } catch (const std::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(line_number) + ": malformed metrics line: " + e.what());
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
      throw std::runtime_error(path + ":" + std::to_string(line_number) +
                               ": expected an object with an integer \"step\"");
    }
    MetricsRow row;
    row.step = j["step"].get<std::int64_t>();
    for (const auto& [k, v] : j.items()) {
      if (k == "step") continue;
      if (v.is_number()) row.numbers.emplace_back(k, v.get<double>());
      if (v.is_boolean()) row.numbers.emplace_back(k, v.get<bool>() ? 1.0 : 0.0);
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace grpo
