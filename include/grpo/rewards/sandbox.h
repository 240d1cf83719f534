// The code execution sandbox: runs untrusted program text (a completion's code) in a child process
// that cannot harm the trainer or the machine, and reports what happened in one line.
//
//   grpo::rewards::SandboxConfig cfg;          // python3, 5 s cpu, 10 s wall, 512 MB, no network
//   auto r = grpo::rewards::run_sandboxed(cfg, "print(1 + 1)\n");
//   // r.exit_code == 0, r.stdout_text == "2\n", r.reason == "ok"
//
//   double share = grpo::rewards::run_tests(cfg, code, {"assert f(2) == 4", "assert f(3) == 9"});
//
// Isolation layers (each applied where the kernel and privileges allow it; see docs/rewards.md,
// "Code execution sandbox", and SandboxResult::isolation for which were in effect in a run):
//   - a fresh private working directory (mkdtemp, 0700), removed after the run;
//   - new PID, network, mount, IPC and UTS namespaces (clone flags; needs CAP_SYS_ADMIN): the
//     program is PID 1 of its namespace, so killing it kills everything it started; the network
//     namespace has only a down loopback; /tmp, /var/tmp and /dev/shm are private tmpfs mounts;
//   - a pids cgroup capping the process count (cgroup v1 `pids` or v2, when writable);
//   - rlimits: CPU, address space, file size, process count (counted for the sandbox uid), no
//     core files;
//   - as root: the program runs as uid/gid 65534 (nobody), so it cannot read 0600/0700 files;
//   - a new session (setsid), an empty environment (PATH, HOME, LANG only), fds 0-2 only,
//     no_new_privs, and SIGKILL when the trainer thread that started it dies.
// Without namespaces the network falls back to a Python prelude that disables `socket` (weak:
// native code can still connect), and a timeout kills the process group and the cgroup.
//
// Linux only. No torch.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "grpo/config/config.h"

namespace grpo::rewards {

struct SandboxConfig {
  std::string interpreter = "python3";  // program run on the text; a name searched in PATH or a path
  double cpu_seconds = 5;               // CPU time limit (RLIMIT_CPU, rounded up to whole seconds)
  double wall_seconds = 10;             // wall-clock limit; the whole sandbox is killed past it
  int64_t memory_mb = 512;              // address-space limit (RLIMIT_AS), MB
  int64_t max_processes = 16;           // processes and threads at once (pids cgroup / RLIMIT_NPROC)
  int64_t max_output_bytes = 65536;     // stdout and stderr are each cut at this many bytes
  bool network = false;                 // false: no network (namespace, or the socket prelude)
  int64_t file_size_mb = 16;            // largest file the program may write (RLIMIT_FSIZE), MB

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("interpreter", interpreter, "interpreter run on the program, e.g. python3", Check().nonempty());
    v("cpu_seconds", cpu_seconds, "CPU time limit in seconds, e.g. 5", Check().gt(0).le(3600));
    v("wall_seconds", wall_seconds, "wall-clock limit in seconds, e.g. 10", Check().gt(0).le(3600));
    v("memory_mb", memory_mb, "address-space limit in MB, e.g. 512", Check().ge(16).le(1 << 20));
    v("max_processes", max_processes, "processes and threads the program may run at once, e.g. 16",
      Check().ge(1).le(4096));
    v("max_output_bytes", max_output_bytes, "stdout and stderr are each cut at this many bytes",
      Check().ge(0).le(1 << 30));
    v("network", network, "allow network access (false: a private network namespace)");
    v("file_size_mb", file_size_mb, "largest file the program may write, MB", Check().ge(0).le(1 << 20));
  }
};

struct SandboxResult {
  int exit_code = -1;              // the program's exit status; -1 when killed by a signal
  int signal = 0;                  // the signal that ended it, 0 when it exited
  bool timed_out = false;          // stopped at the wall-clock limit
  bool killed_for_memory = false;  // hit the memory limit (MemoryError, or killed allocating)
  bool output_truncated = false;   // stdout or stderr was cut at max_output_bytes
  std::string stdout_text, stderr_text;
  double wall_seconds = 0;  // from start to the last process reaped
  std::string reason;       // one line: "ok", "timed out after 10 s (wall)", "exit 1: AssertionError"
  std::string isolation;    // the layers in effect, e.g. "pidns netns mntns cgroup uid65534 rlimits"

  bool ok() const { return exit_code == 0 && signal == 0 && !timed_out; }
};

// Runs `program_text` with the interpreter in a fresh sandbox, feeding `stdin_text` on stdin.
// Never throws for what the program does; throws std::runtime_error naming the step and the errno
// text when the sandbox itself cannot be set up (no temp dir, fork failed, interpreter not found).
SandboxResult run_sandboxed(const SandboxConfig& cfg, const std::string& program_text,
                            const std::string& stdin_text = "");

struct TestCaseResult {
  std::string test;  // the test's text, e.g. "assert f(2) == 4"
  bool passed = false;
  std::string reason;    // "ok" or the run's reason ("exit 1: AssertionError", "timed out ...")
  bool stopped = false;  // the sandbox stopped the run: wall-clock limit, memory limit or a signal
};

// Runs `code` followed by each test (Python statements, e.g. asserts), each test in its own
// sandbox run, and returns the share that passed (0 when `tests` is empty). A test passes when the
// run exits 0 after printing a random marker appended after the test, so code that exits early
// with status 0 does not pass. `details`, when given, receives one entry per test.
double run_tests(const SandboxConfig& cfg, const std::string& code, const std::vector<std::string>& tests,
                 std::vector<TestCaseResult>* details = nullptr);

// The code of the last fenced block in a completion: ```python ... ``` (also ```py, ```python3)
// or a plain ``` ... ``` block. nullopt when there is no closed block.
std::optional<std::string> extract_code(std::string_view completion);

}  // namespace grpo::rewards
