// The code execution sandbox against misbehaving programs: each test runs a real program and checks
// what it could (not) do, that the calling process is unharmed, and that nothing is left behind.
#include "grpo/rewards/sandbox.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using grpo::rewards::extract_code;
using grpo::rewards::run_sandboxed;
using grpo::rewards::run_tests;
using grpo::rewards::SandboxConfig;
using grpo::rewards::SandboxResult;
using grpo::rewards::TestCaseResult;

std::string random_name(const std::string& prefix) {
  std::random_device rd;
  return prefix + std::to_string(rd()) + "_" + std::to_string(rd());
}

// Processes whose working directory lies under `dir_name` (the sandbox's cwd is its work dir, which
// lies in the test's private TMPDIR; the link still names it after the dir is removed).
int processes_under(const std::string& dir_name) {
  int count = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cwd = fs::read_symlink(e.path() / "cwd", ec).string();
    if (!ec && cwd.find(dir_name) != std::string::npos) ++count;
  }
  return count;
}

// Small limits so the whole suite stays fast.
SandboxConfig small_config() {
  SandboxConfig cfg;
  cfg.cpu_seconds = 2;
  cfg.wall_seconds = 4;
  cfg.memory_mb = 256;
  cfg.max_processes = 16;
  cfg.max_output_bytes = 4096;
  return cfg;
}

// Each test gets its own TMPDIR (ctest runs tests in parallel), so that what a run leaves behind,
// temp dirs or processes, is found without confusing it with another test's runs.
class Sandbox : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* old_tmpdir = std::getenv("TMPDIR");
    had_tmpdir_ = old_tmpdir != nullptr;
    if (had_tmpdir_) old_tmpdir_ = old_tmpdir;
    tmp_name_ = random_name("grpo_sandbox_tests_");
    tmp_ = fs::path("/tmp") / tmp_name_;
    fs::create_directories(tmp_);
    fs::permissions(tmp_, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    setenv("TMPDIR", tmp_.c_str(), 1);
    try {
      run_sandboxed(small_config(), "pass\n");
    } catch (const std::runtime_error& e) {
      if (std::string(e.what()).find("not found in PATH") != std::string::npos) GTEST_SKIP() << e.what();
      throw;
    }
  }
  // Every run removes its temp dir, and no sandboxed process outlives its run.
  void TearDown() override {
    if (had_tmpdir_) setenv("TMPDIR", old_tmpdir_.c_str(), 1);
    else unsetenv("TMPDIR");
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(tmp_, ec)) ADD_FAILURE() << "left behind: " << e.path();
    EXPECT_EQ(processes_under(tmp_name_), 0) << "sandboxed processes outlived their run";
    fs::remove_all(tmp_, ec);
  }
  // A misbehaving program scores 0 with a reason, and the caller carries on.
  static void expect_scores_zero(const SandboxConfig& cfg, const std::string& code) {
    std::vector<TestCaseResult> details;
    EXPECT_EQ(run_tests(cfg, code, {"assert True"}, &details), 0.0);
    ASSERT_EQ(details.size(), 1u);
    EXPECT_FALSE(details[0].passed);
    EXPECT_NE(details[0].reason, "ok");
    EXPECT_FALSE(details[0].reason.empty());
  }
  bool had_tmpdir_ = false;
  std::string old_tmpdir_, tmp_name_;
  fs::path tmp_;
};

TEST_F(Sandbox, RunsAProgramAndReportsItsOutput) {
  SandboxResult r = run_sandboxed(small_config(), "import sys\nprint(sys.stdin.read().upper())\n", "hello");
  EXPECT_TRUE(r.ok()) << r.reason << "\n" << r.stderr_text;
  EXPECT_EQ(r.stdout_text, "HELLO\n");
  EXPECT_EQ(r.reason, "ok");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_FALSE(r.isolation.empty());
  std::cout << "isolation in effect: " << r.isolation << "\n";
}

TEST_F(Sandbox, ProgramIgnoringALargeStdinDoesNotHurtTheCaller) {
  // The program exits without reading; writing the rest of stdin gets EPIPE, not a SIGPIPE here.
  SandboxResult r = run_sandboxed(small_config(), "print('bye')\n", std::string(8 << 20, 'a'));
  EXPECT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(r.stdout_text, "bye\n");
}

TEST_F(Sandbox, RunsFromSeveralThreadsAtOnce) {
  std::vector<std::thread> threads;
  std::vector<SandboxResult> results(6);
  for (size_t i = 0; i < results.size(); ++i)
    threads.emplace_back(
        [&, i] { results[i] = run_sandboxed(small_config(), "print(" + std::to_string(i) + " * 7)\n"); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_TRUE(results[i].ok()) << results[i].reason;
    EXPECT_EQ(results[i].stdout_text, std::to_string(i * 7) + "\n");
  }
}

TEST_F(Sandbox, CorrectProgramPassesAndHalfCorrectScoresHalf) {
  const std::vector<std::string> tests = {"assert square(2) == 4", "assert square(3) == 9"};
  std::vector<TestCaseResult> details;
  EXPECT_EQ(run_tests(small_config(), "def square(x):\n    return x * x\n", tests, &details), 1.0);
  ASSERT_EQ(details.size(), 2u);
  EXPECT_TRUE(details[0].passed && details[1].passed);

  EXPECT_EQ(run_tests(small_config(), "def square(x):\n    return x + x\n", tests, &details), 0.5);
  ASSERT_EQ(details.size(), 2u);
  EXPECT_TRUE(details[0].passed);  // 2 + 2 == 4
  EXPECT_FALSE(details[1].passed);
  EXPECT_NE(details[1].reason.find("exit 1: AssertionError"), std::string::npos) << details[1].reason;
}

TEST_F(Sandbox, ExitingEarlyWithStatusZeroDoesNotPass) {
  std::vector<TestCaseResult> details;
  EXPECT_EQ(run_tests(small_config(), "import os\nos._exit(0)\n", {"assert False"}, &details), 0.0);
  EXPECT_EQ(details.at(0).reason, "exited before the test finished");
}

TEST_F(Sandbox, SyntaxErrorScoresZeroWithTheError) {
  std::vector<TestCaseResult> details;
  EXPECT_EQ(run_tests(small_config(), "def f(:\n", {"assert True"}, &details), 0.0);
  EXPECT_NE(details.at(0).reason.find("SyntaxError"), std::string::npos) << details.at(0).reason;
}

TEST_F(Sandbox, InfiniteLoopIsKilledAtTheCpuLimit) {
  SandboxConfig cfg = small_config();
  cfg.cpu_seconds = 1;
  cfg.wall_seconds = 5;
  SandboxResult r = run_sandboxed(cfg, "while True:\n    pass\n");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_EQ(r.reason, "killed by SIGKILL: cpu limit 1 s");
  EXPECT_LT(r.wall_seconds, 4.0);  // the cpu limit stopped it, not the 5 s wall clock
  expect_scores_zero(cfg, "while True:\n    pass\n");
}

TEST_F(Sandbox, SleepingProgramIsKilledAtTheWallLimit) {
  SandboxConfig cfg = small_config();
  cfg.wall_seconds = 1;
  SandboxResult r = run_sandboxed(cfg, "import time\ntime.sleep(60)\n");
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.reason, "timed out after 1 s (wall)");
  EXPECT_GE(r.wall_seconds, 1.0);
  EXPECT_LT(r.wall_seconds, 1 + 1.0);
}

TEST_F(Sandbox, BackgroundChildIsKilledWithItsParent) {
  // The child detaches into its own session and keeps the pipes open; it must not outlive the run.
  SandboxConfig cfg = small_config();
  cfg.wall_seconds = 2;
  auto start = std::chrono::steady_clock::now();
  SandboxResult r = run_sandboxed(cfg,
                                  "import os, time\n"
                                  "if os.fork() == 0:\n"
                                  "    os.setsid()\n"
                                  "    time.sleep(60)\n"
                                  "print('parent done')\n");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 3.0);
  EXPECT_NE(r.stdout_text.find("parent done"), std::string::npos);
}

TEST_F(Sandbox, ForkBombIsContained) {
  SandboxConfig cfg = small_config();
  cfg.wall_seconds = 3;
  SandboxResult r = run_sandboxed(cfg, "import os\nwhile True:\n    os.fork()\n");
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.reason.empty());
  EXPECT_LT(r.wall_seconds, 3 + 1.5);
  std::cout << "reason: " << r.reason << "\n";
  EXPECT_EQ(processes_under(tmp_name_), 0) << "processes of the fork bomb remain";
  // This process and the machine still run programs.
  EXPECT_EQ(std::system("true"), 0);
  expect_scores_zero(cfg, "import os\nwhile True:\n    os.fork()\n");
}

TEST_F(Sandbox, HugeAllocationFailsWithTheMemoryReason) {
  SandboxResult r = run_sandboxed(small_config(), "x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n");
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.killed_for_memory) << r.reason << "\n" << r.stderr_text;
  EXPECT_EQ(r.reason, "memory limit 256 MB exceeded");
  EXPECT_EQ(r.stdout_text, "");
  expect_scores_zero(small_config(), "x = bytearray(10 * 1024 ** 3)\n");
}

TEST_F(Sandbox, WritingOutsideTheWorkDirIsDenied) {
  const std::string in_tmp = (fs::path("/tmp") / random_name("grpo_sandbox_escape_")).string();
  const std::string in_cwd = (fs::current_path() / random_name("grpo_sandbox_escape_")).string();
  SandboxResult r = run_sandboxed(small_config(), "for path in ['" + in_tmp + "', '" + in_cwd +
                                                      "']:\n"
                                                      "    try:\n"
                                                      "        open(path, 'w').write('escaped')\n"
                                                      "        print('wrote', path)\n"
                                                      "    except OSError as e:\n"
                                                      "        print('denied', path, e)\n"
                                                      "open('inside.txt', 'w').write('fine')\n"
                                                      "print(open('inside.txt').read())\n");
  EXPECT_TRUE(r.ok()) << r.reason;
  EXPECT_NE(r.stdout_text.find("fine"), std::string::npos) << "the work dir itself is writable";
  EXPECT_FALSE(fs::exists(in_tmp)) << r.stdout_text;
  EXPECT_FALSE(fs::exists(in_cwd)) << r.stdout_text;
  std::error_code ec;
  fs::remove(in_tmp, ec), fs::remove(in_cwd, ec);
}

TEST_F(Sandbox, ReadingAPrivateTrainerFileIsDenied) {
  const std::string secret = random_name("secret_");
  const std::string path = (fs::current_path() / random_name("grpo_sandbox_secret_")).string();
  std::ofstream(path) << secret;
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  const std::string code = "print(open('" + path + "').read())\n";
  SandboxResult r = run_sandboxed(small_config(), code);
  fs::remove(path);
  EXPECT_EQ(r.stdout_text.find(secret), std::string::npos) << "the secret was read";
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.reason.find("PermissionError") != std::string::npos ||
              r.reason.find("FileNotFoundError") != std::string::npos)
      << r.reason;
}

TEST_F(Sandbox, NetworkConnectionIsDenied) {
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);

  const std::string code = "import socket\nsocket.create_connection(('127.0.0.1', " + std::to_string(port) +
                           "), timeout=2).sendall(b'hi')\nprint('connected')\n";
  SandboxResult r = run_sandboxed(small_config(), code);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.stdout_text.find("connected"), std::string::npos);
  int conn = ::accept(listener, nullptr, nullptr);
  EXPECT_LT(conn, 0) << "a connection arrived from the sandbox";
  if (conn >= 0) ::close(conn);
  ::close(listener);
  std::cout << "reason: " << r.reason << "\n";

  // With network allowed the same program connects (the test above is not vacuous).
  SandboxConfig open_cfg = small_config();
  open_cfg.network = true;
  int listener2 = ::socket(AF_INET, SOCK_STREAM, 0);
  addr.sin_port = 0;
  ASSERT_EQ(::bind(listener2, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener2, 4), 0);
  len = sizeof addr;
  ASSERT_EQ(::getsockname(listener2, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  SandboxResult open_run = run_sandboxed(open_cfg, "import socket\nsocket.create_connection(('127.0.0.1', " +
                                                       std::to_string(ntohs(addr.sin_port)) +
                                                       "), timeout=2)\nprint('connected')\n");
  EXPECT_EQ(open_run.stdout_text, "connected\n") << open_run.reason;
  ::close(listener2);
}

TEST_F(Sandbox, OutputFloodIsTruncated) {
  SandboxConfig cfg = small_config();
  cfg.max_output_bytes = 1000;
  SandboxResult r = run_sandboxed(cfg,
                                  "import sys\n"
                                  "sys.stdout.write('x' * 5_000_000)\n"
                                  "sys.stderr.write('y' * 5_000_000)\n");
  EXPECT_EQ(r.stdout_text, std::string(1000, 'x'));
  EXPECT_EQ(r.stderr_text, std::string(1000, 'y'));
  EXPECT_TRUE(r.output_truncated);
  EXPECT_EQ(r.reason, "ok (output truncated at 1000 bytes)");

  cfg.wall_seconds = 1;  // endless output: stopped by the clock, memory stays bounded
  SandboxResult endless = run_sandboxed(cfg, "while True:\n    print('z' * 1000)\n");
  EXPECT_TRUE(endless.timed_out);
  EXPECT_EQ(endless.stdout_text.size(), 1000u);
}

TEST_F(Sandbox, EnvironmentIsMinimal) {
  setenv("GRPO_SANDBOX_TEST_SECRET", "leak", 1);
  SandboxResult r = run_sandboxed(small_config(), "import os\nprint(sorted(os.environ))\n");
  unsetenv("GRPO_SANDBOX_TEST_SECRET");
  EXPECT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(r.stdout_text.find("GRPO_SANDBOX_TEST_SECRET"), std::string::npos) << r.stdout_text;
}

TEST_F(Sandbox, MissingInterpreterThrows) {
  SandboxConfig cfg = small_config();
  cfg.interpreter = "grpo_no_such_interpreter";
  EXPECT_THROW(run_sandboxed(cfg, "pass\n"), std::runtime_error);
}

TEST_F(Sandbox, TempDirTheSandboxUidCannotEnterIsASetupError) {
  const fs::path private_dir = tmp_ / "private";
  fs::create_directory(private_dir);
  ASSERT_EQ(::chmod(private_dir.c_str(), 0700), 0);
  setenv("TMPDIR", private_dir.c_str(), 1);
  if (::geteuid() == 0) {
    try {
      run_sandboxed(small_config(), "pass\n");
      ADD_FAILURE() << "expected a setup error";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot be reached by uid 65534"), std::string::npos) << e.what();
    }
  } else {  // the program keeps our uid: the folder is fine
    EXPECT_TRUE(run_sandboxed(small_config(), "pass\n").ok());
  }
  setenv("TMPDIR", tmp_.c_str(), 1);
  EXPECT_TRUE(fs::is_empty(private_dir)) << "the failed run left its temp dir";
  fs::remove(private_dir);
}

TEST(ExtractCode, TakesTheLastPythonOrPlainBlock) {
  EXPECT_EQ(extract_code("First:\n```python\nx = 1\n```\nThen:\n```python\nx = 2\n```\n"), "x = 2\n");
  EXPECT_EQ(extract_code("```\nprint(3)\n```"), "print(3)\n");
  EXPECT_EQ(extract_code("```py\na\n```\n```bash\nrm -rf /\n```\n"), "a\n");
  EXPECT_EQ(extract_code("no code here"), std::nullopt);
  EXPECT_EQ(extract_code("```python\nunclosed\n"), std::nullopt);
  EXPECT_EQ(extract_code("```python\ns = '```'\n```\n"), "s = '```'\n");
}

}  // namespace
