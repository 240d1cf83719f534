// The code-execution reward: runs the completion's code against the record's tests in the sandbox
// (sandbox.h) and scores the share of tests passed.
//
//   rewards:
//     functions:
//       - name: code_execution
//         options: {tests_field: tests, sandbox: {wall_seconds: 5, memory_mb: 512}}
//
// The code is the last fenced block of the completion (```python ... ``` or a plain ``` block;
// extract_code). The record's `tests_field` column holds the tests, in one of two forms:
//   - a JSON list of Python statements, run after the code, each in its own sandbox run
//     (MBPP / HumanEval style): ["assert add(1, 2) == 3", "assert add(0, 0) == 0"];
//   - a JSON object {"inputs": [...], "outputs": [...]} of stdin/stdout pairs (APPS /
//     CodeContests style): the code runs once per pair with the input on stdin, and passes when its
//     stdout equals the output, compared line by line with trailing whitespace and trailing empty
//     lines ignored.
// A record without the column does not apply (absent). A completion without a code block scores 0.
// Each sample's reason says how many tests passed and why the first failure failed. By default a
// run the sandbox had to stop (time, memory, a signal) is also logged at warn level with the sample
// index; `log_failures: all` logs every failing sample (at info).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/rewards/reward.h"
#include "grpo/rewards/sandbox.h"

namespace grpo::rewards {

struct CodeRewardConfig {
  SandboxConfig sandbox;                 // limits for every test run
  std::string tests_field = "tests";     // the record column holding the tests
  int64_t max_tests = 0;                 // run at most this many tests per sample; 0 = all
  bool stop_at_first_failure = false;    // stop a sample's tests at its first failure (the rest count as failed)
  std::string log_failures = "stopped";  // log failing samples' reasons: stopped (warn, runs the sandbox
                                         // had to stop) | all (also every other failure, at info) | none

  template <class V>
  void visit(V& v) {
    v("sandbox", sandbox, "limits of each sandboxed test run");
    v("tests_field", tests_field, "record column holding the tests (JSON list of statements, or {inputs, outputs})",
      config::Check().nonempty());
    v("max_tests", max_tests, "run at most this many tests per sample; 0 = all", config::Check().ge(0));
    v("stop_at_first_failure", stop_at_first_failure,
      "stop a sample's tests at its first failure; the remaining ones count as failed");
    v("log_failures", log_failures,
      "log failing samples: stopped (runs the sandbox stopped, at warn) | all (every failure) | none",
      config::Check().one_of({"stopped", "all", "none"}));
  }
};

// The tests of one record, parsed from its column.
struct CodeTests {
  std::vector<std::string> statements;                  // assert-style tests, or
  std::vector<std::pair<std::string, std::string>> io;  // (stdin, expected stdout) pairs
  size_t size() const { return statements.size() + io.size(); }
};

// Parses a tests column. Throws std::invalid_argument saying what was expected and found.
CodeTests parse_code_tests(const std::string& column);

// Scores one completion: the share of `tests` passed, and the reason ("2/3 tests passed; test 3:
// exit 1: AssertionError", "no code block"). `stopped`, when given, is set when the sandbox had to
// stop a run (time, memory, signal).
double score_code(const CodeRewardConfig& cfg, const std::string& completion, const CodeTests& tests,
                  std::string* reason = nullptr, bool* stopped = nullptr);

// The reward function registered as "code_execution".
std::unique_ptr<RewardFunction> make_code_reward(const CodeRewardConfig& cfg);

}  // namespace grpo::rewards
