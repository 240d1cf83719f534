// Peak host memory of token_logprobs, forward + backward: the plain reference (full [N, V]
// float32 logits) against the chunked path at a few chunk sizes, on CPU.
//
// Each measurement runs in a fresh child process (fork before any torch work in the parent):
// the child allocates the inputs (hidden [N, D], weight [V, D] float32, both requiring grad),
// resets its peak-RSS counter (/proc/self/clear_refs), records VmRSS as the baseline, runs one
// forward and backward, and reports VmHWM - baseline and the wall time through a pipe. What is
// counted is everything the call allocates and touches: logits, softmax temporaries, and the
// gradients of hidden and weight (which both paths must produce: grad weight alone is V * D * 4
// bytes).
//
//   grpo_token_logprobs_memory [--rows N] [--width D] [--vocab V] [--chunks 4096,8192]
//                              [--temperature T] [--skip-reference]
// Defaults: N = 4096, D = 1024, V = 128000. Run with OMP_NUM_THREADS=1 on shared machines.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "grpo/kernels/token_logprobs.h"

namespace {

struct Settings {
  int64_t rows = 4096;     // N tokens
  int64_t width = 1024;    // D
  int64_t vocab = 128000;  // V
  std::vector<int64_t> chunks = {4096, 8192};
  double temperature = 1.0;
  bool skip_reference = false;
};

// A "VmRSS:" / "VmHWM:" line of /proc/self/status, in bytes.
int64_t status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      std::istringstream fields(line.substr(key.size()));
      int64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return -1;
}

// Child body: returns "peak_bytes seconds".
std::string measure(const Settings& s, int64_t chunk) {
  torch::manual_seed(0);
  const auto hidden = (torch::randn({s.rows, s.width}) / std::sqrt(static_cast<double>(s.width))).requires_grad_(true);
  const auto weight = torch::randn({s.vocab, s.width}).requires_grad_(true);
  const auto targets = torch::randint(s.vocab, {s.rows}, torch::kLong);
  const auto row_weights = torch::randn({s.rows});
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";  // reset VmHWM to the current RSS
  }
  const int64_t baseline = status_bytes("VmRSS:");
  const auto begin = std::chrono::steady_clock::now();
  grpo::kernels::TokenLogprobsOptions options{.temperature = s.temperature};
  if (chunk > 0) options.chunk_size = chunk;  // 0 selects the reference
  {
    const auto r = chunk == 0 ? grpo::kernels::token_logprobs_reference(hidden, weight, targets, options)
                              : grpo::kernels::token_logprobs(hidden, weight, targets, options);
    (r.logprobs * row_weights).sum().backward();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  const int64_t peak = status_bytes("VmHWM:");
  return std::to_string(peak - baseline) + " " + std::to_string(seconds);
}

// Forks, runs measure() in the child, returns {peak bytes, seconds}; {-1, -1} on failure.
std::pair<int64_t, double> measure_in_child(const Settings& s, int64_t chunk) {
  int fds[2];
  if (pipe(fds) != 0) return {-1, -1.0};
  const pid_t pid = fork();
  if (pid < 0) return {-1, -1.0};
  if (pid == 0) {
    close(fds[0]);
    std::string line;
    try {
      line = measure(s, chunk);
    } catch (const c10::Error& e) {
      std::cerr << "child failed: " << e.what_without_backtrace() << "\n";
      _exit(1);
    } catch (const std::exception& e) {
      std::cerr << "child failed: " << e.what() << "\n";
      _exit(1);
    }
    if (write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(2);
    close(fds[1]);
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buffer[256];
  ssize_t got = 0;
  while ((got = read(fds[0], buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return {-1, -1.0};
  std::istringstream in(text);
  int64_t peak = -1;
  double seconds = -1.0;
  in >> peak >> seconds;
  return {peak, seconds};
}

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> values;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) values.push_back(std::stoll(item));
  return values;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--rows") s.rows = std::stoll(value());
    else if (arg == "--width") s.width = std::stoll(value());
    else if (arg == "--vocab") s.vocab = std::stoll(value());
    else if (arg == "--chunks") s.chunks = parse_list(value());
    else if (arg == "--temperature") s.temperature = std::stod(value());
    else if (arg == "--skip-reference") s.skip_reference = true;
    else {
      std::cerr << "unknown argument " << arg
                << "; usage: grpo_token_logprobs_memory [--rows N] [--width D] [--vocab V] "
                   "[--chunks 4096,8192] [--temperature T] [--skip-reference]\n";
      return 2;
    }
  }
  constexpr double kMiB = 1024.0 * 1024.0;
  const double logits_mib = static_cast<double>(s.rows) * s.vocab * 4 / kMiB;
  const double grad_weight_mib = static_cast<double>(s.vocab) * s.width * 4 / kMiB;
  std::printf("token_logprobs forward + backward, float32, N=%lld D=%lld V=%lld T=%g\n", static_cast<long long>(s.rows),
              static_cast<long long>(s.width), static_cast<long long>(s.vocab), s.temperature);
  std::printf("one [N, V] float32 tensor = %.0f MiB; grad weight [V, D] = %.0f MiB\n", logits_mib, grad_weight_mib);
  std::printf("%-16s %22s %14s %10s\n", "path", "peak - baseline (MiB)", "vs reference", "time (s)");
  std::vector<int64_t> runs;
  if (!s.skip_reference) runs.push_back(0);
  runs.insert(runs.end(), s.chunks.begin(), s.chunks.end());
  double reference_mib = -1.0;
  int failures = 0;
  for (int64_t chunk : runs) {
    const auto [peak, seconds] = measure_in_child(s, chunk);
    const std::string name = chunk == 0 ? "reference" : "chunked " + std::to_string(chunk);
    if (peak < 0) {
      std::printf("%-16s %22s\n", name.c_str(), "failed");
      ++failures;
      continue;
    }
    const double mib = static_cast<double>(peak) / kMiB;
    if (chunk == 0) reference_mib = mib;
    char ratio[32] = "-";
    if (chunk != 0 && reference_mib > 0) std::snprintf(ratio, sizeof ratio, "%.1fx less", reference_mib / mib);
    std::printf("%-16s %22.0f %14s %10.1f\n", name.c_str(), mib, ratio, seconds);
    std::fflush(stdout);
  }
  return failures == 0 ? 0 : 1;
}
