#include "grpo/rewards/code_reward.h"

#include <nlohmann/json.hpp>

#include <stdexcept>

#include "grpo/core/log.h"

namespace grpo::rewards {

namespace {

using json = nlohmann::json;

std::string kind_of(const json& j) { return j.type_name(); }

// Lines with trailing whitespace removed, and trailing empty lines dropped.
std::vector<std::string> normalized_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// A test's text shortened for a one-line reason.
std::string short_text(std::string s, size_t max = 60) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (s.size() > max) s = s.substr(0, max) + "...";
  return s;
}

}  // namespace

CodeTests parse_code_tests(const std::string& column) {
  json j;
  try {
    j = json::parse(column);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(
        "tests: expected a JSON list of test statements or {\"inputs\": [...], "
        "\"outputs\": [...]}, found text that is not JSON");
  }
  CodeTests tests;
  if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) {
      if (!j[i].is_string()) {
        throw std::invalid_argument("tests[" + std::to_string(i) + "]: expected a string (a test statement), found " +
                                    kind_of(j[i]));
      }
      tests.statements.push_back(j[i].get<std::string>());
    }
    return tests;
  }
  if (j.is_object()) {
    if (!j.contains("inputs") || !j.contains("outputs")) {
      throw std::invalid_argument("tests: an object needs both \"inputs\" and \"outputs\" lists");
    }
    const json& in = j["inputs"];
    const json& out = j["outputs"];
    if (!in.is_array() || !out.is_array()) {
      throw std::invalid_argument("tests: \"inputs\" and \"outputs\" must be lists, found " + kind_of(in) + " and " +
                                  kind_of(out));
    }
    if (in.size() != out.size()) {
      throw std::invalid_argument("tests: " + std::to_string(in.size()) + " inputs but " + std::to_string(out.size()) +
                                  " outputs");
    }
    for (size_t i = 0; i < in.size(); ++i) {
      if (!in[i].is_string() || !out[i].is_string()) {
        throw std::invalid_argument("tests: inputs[" + std::to_string(i) + "] and outputs[" + std::to_string(i) +
                                    "] must be strings");
      }
      tests.io.emplace_back(in[i].get<std::string>(), out[i].get<std::string>());
    }
    return tests;
  }
  throw std::invalid_argument("tests: expected a JSON list or object, found " + kind_of(j));
}

double score_code(const CodeRewardConfig& cfg, const std::string& completion, const CodeTests& tests,
                  std::string* reason, bool* stopped) {
  if (stopped) *stopped = false;
  const auto code = extract_code(completion);
  if (!code) {
    if (reason) *reason = "no code block";
    return 0.0;
  }
  const size_t total = tests.size();
  if (total == 0) {
    if (reason) *reason = "the record has no tests";
    return 0.0;
  }
  const size_t limit = cfg.max_tests > 0 ? std::min<size_t>(total, static_cast<size_t>(cfg.max_tests)) : total;
  size_t passed = 0, run = 0;
  std::string first_failure;
  auto record = [&](size_t index, bool ok, const std::string& why, const std::string& what) {
    ++run;
    if (ok) {
      ++passed;
    } else if (first_failure.empty()) {
      first_failure = "test " + std::to_string(index + 1) + " (" + short_text(what) + "): " + why;
    }
    return ok || !cfg.stop_at_first_failure;
  };
  bool go_on = true;
  for (size_t i = 0; i < tests.statements.size() && run < limit && go_on; ++i) {
    std::vector<TestCaseResult> details;
    run_tests(cfg.sandbox, *code, {tests.statements[i]}, &details);
    const TestCaseResult& t = details.at(0);
    if (t.stopped && stopped) *stopped = true;
    go_on = record(i, t.passed, t.reason, t.test);
  }
  for (size_t k = 0; k < tests.io.size() && run < limit && go_on; ++k) {
    const auto& [input, expected] = tests.io[k];
    const SandboxResult r = run_sandboxed(cfg.sandbox, *code, input);
    if ((r.timed_out || r.killed_for_memory || r.signal != 0) && stopped) *stopped = true;
    std::string why;
    bool ok = false;
    if (!r.ok()) {
      why = r.reason;
    } else if (normalized_lines(r.stdout_text) != normalized_lines(expected)) {
      why = "wrong output '" + short_text(r.stdout_text, 40) + "', expected '" + short_text(expected, 40) + "'";
    } else {
      ok = true;
    }
    go_on = record(tests.statements.size() + k, ok, why, "stdin '" + short_text(input, 30) + "'");
  }
  if (reason) {
    *reason = std::to_string(passed) + "/" + std::to_string(total) + " tests passed";
    if (!first_failure.empty()) *reason += "; " + first_failure;
    if (run < total) *reason += "; " + std::to_string(total - run) + " not run";
  }
  return static_cast<double>(passed) / static_cast<double>(total);
}

namespace {

class CodeReward : public RewardFunction {
 public:
  explicit CodeReward(CodeRewardConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "code_execution"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    int64_t applied = 0, with_code = 0, stopped_runs = 0;
    double tests_run = 0;
    for (const auto& s : batch) {
      const auto it = s.extra.find(cfg_.tests_field);
      if (it == s.extra.end()) {
        out.scores.push_back(std::nullopt);
        out.reasons.push_back("the record has no '" + cfg_.tests_field + "' column");
        continue;
      }
      CodeTests tests;
      try {
        tests = parse_code_tests(it->second);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument("column '" + cfg_.tests_field + "': " + e.what());
      }
      ++applied;
      with_code += extract_code(s.completion).has_value();
      std::string reason;
      bool stopped = false;
      out.scores.push_back(score_code(cfg_, s.completion, tests, &reason, &stopped));
      tests_run += static_cast<double>(tests.size());
      stopped_runs += stopped;
      if (stopped && cfg_.log_failures != "none") {
        log::warn("code_execution: sample {}: {}", s.index, reason);
      } else if (*out.scores.back() < 1.0 && cfg_.log_failures == "all") {
        log::info("code_execution: sample {}: {}", s.index, reason);
      }
      out.reasons.push_back(std::move(reason));
    }
    if (applied > 0) {
      out.metrics["code_block_fraction"] = static_cast<double>(with_code) / static_cast<double>(applied);
      out.metrics["stopped_fraction"] = static_cast<double>(stopped_runs) / static_cast<double>(applied);
      out.metrics["tests_per_sample"] = tests_run / static_cast<double>(applied);
    }
    return out;
  }

 private:
  CodeRewardConfig cfg_;
};

}  // namespace

std::unique_ptr<RewardFunction> make_code_reward(const CodeRewardConfig& cfg) {
  return std::make_unique<CodeReward>(cfg);
}

}  // namespace grpo::rewards
