#include "grpo/train/stage_ledger.h"

#include "grpo/dist/launch_env.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <stdexcept>

#include "grpo/core/files.h"
#include "grpo/core/log.h"

namespace grpo::train {

namespace {

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

StageLedger::StageLedger(const Run& run) : dir_(run.path("stages")) {}

std::string StageLedger::path(const std::string& stage) const { return dir_ + "/" + stage + ".json"; }

std::string StageLedger::first_difference(const std::string& was, const std::string& now) {
  auto split = [](const std::string& s) {
    std::map<std::string, std::string> out;
    size_t at = 0;
    while (at < s.size()) {
      size_t end = s.find('\n', at);
      if (end == std::string::npos) end = s.size();
      const std::string line = s.substr(at, end - at);
      const size_t eq = line.find('=');
      out[line.substr(0, eq)] = eq == std::string::npos ? "" : line.substr(eq + 1);
      at = end + 1;
    }
    return out;
  };
  const auto a = split(was), b = split(now);
  for (const auto& [k, v] : b) {
    const auto it = a.find(k);
    if (it == a.end()) return k + " (new)";
    if (it->second != v) return k + " (was '" + it->second + "', now '" + v + "')";
  }
  for (const auto& [k, v] : a) {
    if (!b.count(k)) return k + " (gone)";
  }
  return "?";
}

std::string StageLedger::lines_of(const config::Value& tree) {
  std::map<std::string, std::string> sorted;
  for (auto& [k, v] : config::leaf_values(tree)) sorted[k] = v;
  std::string out;
  for (const auto& [k, v] : sorted) out += k + "=" + v + "\n";
  return out;
}

std::optional<StageSummary> StageLedger::finished(const std::string& stage,
                                                  const std::map<std::string, std::string>& inputs) {
  const std::string file = path(stage);
  if (!std::filesystem::exists(file)) return std::nullopt;
  if (ran_) return std::nullopt;  // an earlier stage ran again: this one's input changed
  StageSummary s;
  try {
    const auto j = nlohmann::json::parse(read_file(file));
    s.stage = j.at("stage").get<std::string>();
    s.finished = j.value("finished", "");
    s.inputs = j.at("inputs").get<std::map<std::string, std::string>>();
    s.numbers = j.value("numbers", std::map<std::string, double>{});
    s.texts = j.value("texts", std::map<std::string, std::string>{});
  } catch (const std::exception& e) {
    throw std::runtime_error(file + ": not a stage summary (" + e.what() + "); delete it to run stage '" + stage +
                             "' again");
  }
  for (const auto& [section, text] : inputs) {
    const auto it = s.inputs.find(section);
    const std::string was = it == s.inputs.end() ? std::string() : it->second;
    if (was != text) {
      throw std::runtime_error(file + ": stage '" + stage + "' finished with other settings: " + section + "." +
                               first_difference(was, text) +
                               "; delete the file to redo this stage and the ones after it, or use another "
                               "run.output_dir");
    }
  }
  log::info("stage {}: done ({}), skipped", stage, file);
  return s;
}

void StageLedger::record(StageSummary summary) {
  if (summary.finished.empty()) summary.finished = utc_now();
  nlohmann::json j = {{"stage", summary.stage},
                      {"finished", summary.finished},
                      {"inputs", summary.inputs},
                      {"numbers", summary.numbers},
                      {"texts", summary.texts}};
  if (dist::is_main_process()) write_file_atomic(path(summary.stage), j.dump(2) + "\n");  // rank 0's folder
  ran_ = true;
}

}  // namespace grpo::train
