// The code-execution reward through RewardSet, as a trainer runs it: correct, partly correct and
// broken programs score the share of tests passed; programs that attack the machine (an infinite
// loop, a fork bomb, a 10 GB allocation, writing outside the temp dir, reading the trainer's files,
// a network connection) are stopped or denied, score 0 with the reason in the log, and the process
// scoring them carries on.
#include "grpo/rewards/code_reward.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "grpo/core/log.h"
#include "grpo/rewards/reward_set.h"
#include "test_util.h"

namespace grpo::rewards {
namespace {

namespace fs = std::filesystem;

std::string random_name(const std::string& prefix) {
  std::random_device rd;
  return prefix + std::to_string(rd()) + "_" + std::to_string(rd());
}

std::string fenced(const std::string& code) { return "Here it is:\n```python\n" + code + "```\n"; }

Sample code_sample(const std::string& code, const std::string& tests_json) {
  Sample s;
  s.completion = fenced(code);
  s.extra["tests"] = tests_json;
  return s;
}

bool has_python() { return std::system("command -v python3 > /dev/null 2>&1") == 0; }

// Small limits, as the sandbox tests use, so the suite stays fast.
const char* kSection =
    "rewards:\n"
    "  threads: 4\n"
    "  functions:\n"
    "    - name: code_execution\n"
    "      options:\n"
    "        log_failures: all\n"
    "        sandbox: {cpu_seconds: 2, wall_seconds: 4, memory_mb: 256, max_processes: 16}\n";

RewardsConfig section(const std::string& text = kSection) {
  const auto root = config::parse_yaml_string(text, "rewards.yaml");
  RewardsConfig cfg;
  config::read_value(*root.find("rewards"), cfg, "rewards", config::Check{});
  return cfg;
}

TEST(CodeTests, ParsesStatementListsAndStdinStdoutPairs) {
  const auto a = parse_code_tests(R"(["assert f(1) == 1", "assert f(2) == 4"])");
  EXPECT_EQ(a.statements, (std::vector<std::string>{"assert f(1) == 1", "assert f(2) == 4"}));
  const auto b = parse_code_tests(R"({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})");
  ASSERT_EQ(b.io.size(), 2u);
  EXPECT_EQ(b.io[1], (std::pair<std::string, std::string>{"3 4\n", "7\n"}));
  GRPO_EXPECT_THROW_MESSAGE(
      parse_code_tests("assert f(1) == 1"), std::invalid_argument,
      "tests: expected a JSON list of test statements or {\"inputs\": [...], \"outputs\": [...]}, "
      "found text that is not JSON");
  GRPO_EXPECT_THROW_MESSAGE(parse_code_tests("[1]"), std::invalid_argument,
                            "tests[0]: expected a string (a test statement), found number");
  GRPO_EXPECT_THROW_MESSAGE(parse_code_tests(R"({"inputs": ["1"], "outputs": []})"), std::invalid_argument,
                            "tests: 1 inputs but 0 outputs");
}

TEST(CodeExecutionReward, ScoresTheShareOfTestsPassed) {
  if (!has_python()) GTEST_SKIP() << "python3 not installed";
  RewardSet set(section());
  const std::string tests = R"(["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(-1) == 1", "assert sq(0) == 0"])";
  Sample no_tests;
  no_tests.completion = fenced("print(1)\n");
  Sample io = code_sample("a, b = map(int, input().split())\nprint(a + b)\n",
                          R"({"inputs": ["1 2\n", "3 4\n", "10 -3"], "outputs": ["3\n", "7", "8\n"]})");
  Sample prose;
  prose.completion = "def sq(x): return x * x";  // no fenced block
  prose.extra["tests"] = tests;
  const auto r = set.score({code_sample("def sq(x):\n    return x * x\n", tests),
                            code_sample("def sq(x):\n    return x * 2 if x > 0 else x * x\n", tests),
                            code_sample("def sq(x) return x\n", tests), prose, no_tests, io});
  EXPECT_EQ(r.scores[0][0], 1.0);
  EXPECT_EQ(r.scores[0][1], 0.75);  // sq(3) fails
  EXPECT_EQ(r.reasons[0][1], "3/4 tests passed; test 2 (assert sq(3) == 9): exit 1: AssertionError");
  EXPECT_EQ(r.scores[0][2], 0.0);
  EXPECT_NE(r.reasons[0][2].find("SyntaxError"), std::string::npos) << r.reasons[0][2];
  EXPECT_EQ(r.scores[0][3], 0.0);
  EXPECT_EQ(r.reasons[0][3], "no code block");
  EXPECT_FALSE(r.scores[0][4].has_value());  // the record has no tests: does not apply
  EXPECT_DOUBLE_EQ(*r.scores[0][5], 2.0 / 3.0);
  EXPECT_EQ(r.reasons[0][5], "2/3 tests passed; test 3 (stdin '10 -3'): wrong output '7 ', expected '8 '");
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/code_execution/code_block_fraction"), 4.0 / 5.0);
}

TEST(CodeExecutionReward, MalformedTestsColumnIsAnErrorNamingTheSample) {
  RewardSet set(section());
  GRPO_EXPECT_THROW_MESSAGE(set.score({code_sample("x = 1\n", "[\"assert x == 1\"]"), code_sample("x = 1\n", "[2]")}),
                            RewardError,
                            "reward 'code_execution' threw on sample 1: column 'tests': tests[0]: expected a string "
                            "(a test statement), found number; set rewards.on_error: absent to score such samples "
                            "absent instead");
}

// The attacks of the issue, each as the code of a completion whose test passes only if the attack
// worked. All run in one batch, in parallel, in this process.
TEST(CodeExecutionReward, AttacksAreStoppedOrDeniedAndScoreZeroWithTheReasonLogged) {
  if (!has_python()) GTEST_SKIP() << "python3 not installed";
  // A private file of "the trainer" and paths outside the sandbox's temp dir.
  const std::string secret = random_name("secret_");
  const std::string secret_path = (fs::current_path() / random_name("grpo_code_reward_secret_")).string();
  std::ofstream(secret_path) << secret;
  ASSERT_EQ(::chmod(secret_path.c_str(), 0600), 0);
  const std::string escape_tmp = (fs::path("/tmp") / random_name("grpo_code_reward_escape_")).string();
  const std::string escape_cwd = (fs::current_path() / random_name("grpo_code_reward_escape_")).string();
  // A listening socket the program tries to reach.
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string port = std::to_string(ntohs(addr.sin_port));

  const std::string pass = R"(["assert done"])";
  std::vector<Sample> batch = {
      code_sample("while True:\n    pass\ndone = True\n", pass),                  // 0 infinite loop
      code_sample("import os\nwhile True:\n    os.fork()\ndone = True\n", pass),  // 1 fork bomb
      code_sample("x = bytearray(10 * 1024 ** 3)\ndone = len(x) > 0\n", pass),    // 2 10 GB
      code_sample("open('" + escape_tmp + "', 'w').write('x')\nopen('" + escape_cwd +
                      "', 'w').write('x')\ndone = True\n",
                  pass),                                                                     // 3 write outside
      code_sample("done = '" + secret + "' in open('" + secret_path + "').read()\n", pass),  // 4 read trainer file
      code_sample("import socket\nsocket.create_connection(('127.0.0.1', " + port +
                      "), timeout=2).sendall(b'hi')\ndone = True\n",
                  pass),                   // 5 network
      code_sample("done = True\n", pass),  // 6 a fair program
  };
  test::TempDir dir;
  const std::string log_path = dir.path("trainer.log");
  log::add_file(log_path);
  RewardSet set(section());
  const auto r = set.score(batch);
  log::close_files();
  const std::string log_text = test::read_text(log_path);

  for (size_t i = 0; i < 6; ++i) {
    SCOPED_TRACE("sample " + std::to_string(i));
    EXPECT_EQ(r.scores[0][i], 0.0);
    EXPECT_NE(r.reasons[0][i].find("0/1 tests passed; test 1 (assert done): "), std::string::npos) << r.reasons[0][i];
    EXPECT_NE(log_text.find("code_execution: sample " + std::to_string(i) + ": " + r.reasons[0][i]), std::string::npos)
        << "reason not in the log: " << r.reasons[0][i];
    std::cout << "sample " << i << ": " << r.reasons[0][i] << "\n";
  }
  EXPECT_NE(r.reasons[0][0].find("cpu limit"), std::string::npos) << r.reasons[0][0];
  EXPECT_NE(r.reasons[0][2].find("memory limit 256 MB exceeded"), std::string::npos) << r.reasons[0][2];
  EXPECT_TRUE(r.reasons[0][4].find("PermissionError") != std::string::npos ||
              r.reasons[0][4].find("FileNotFoundError") != std::string::npos)
      << r.reasons[0][4];
  EXPECT_FALSE(fs::exists(escape_tmp));
  EXPECT_FALSE(fs::exists(escape_cwd));
  int conn = ::accept(listener, nullptr, nullptr);
  EXPECT_LT(conn, 0) << "a connection arrived from the sandbox";
  if (conn >= 0) ::close(conn);
  ::close(listener);
  fs::remove(secret_path);
  std::error_code ec;
  fs::remove(escape_tmp, ec), fs::remove(escape_cwd, ec);

  // The fair program in the same batch passed, and this process still scores the next batch.
  EXPECT_EQ(r.scores[0][6], 1.0);
  EXPECT_EQ(set.score({code_sample("done = 1 + 1 == 2\n", pass)}).total, std::vector<double>{1.0});
  EXPECT_GT(r.metrics.at("rewards/code_execution/stopped_fraction"), 0.0);
}

}  // namespace
}  // namespace grpo::rewards
