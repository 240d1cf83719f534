// `grpo launch`: a torchrun-style launcher (launch.h). One thread: the ranks' stdout and stderr pipes and a
// self-pipe written by the signal handlers (SIGINT, SIGTERM, SIGHUP to forward; SIGCHLD to reap) are all
// waited on with one poll().
//
// Each rank runs in its own process group, so a terminal's Ctrl-C reaches the launcher only and is
// forwarded once, and stopping a rank (kill(-pgid, ...)) also stops what it started (`sh -c` children).
// On Linux each rank also gets SIGTERM if the launcher dies without stopping it (PR_SET_PDEATHSIG).
#include "launch.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace grpo::tools {
namespace {

using Clock = std::chrono::steady_clock;

const char* kLaunchUsage =
    "usage: grpo launch --nproc-per-node N [--nnodes M] [--node-rank R] [--master-addr A] [--master-port P]\n"
    "                   [--prefix | --no-prefix] [--] PROGRAM [ARGS...]\n"
    "\n"
    "Runs PROGRAM ARGS on N processes of this node, as torchrun does (flags go before PROGRAM).\n"
    "  --nproc-per-node N  processes on this node, 1..1024 (required)\n"
    "  --nnodes M          nodes of the job (default 1)\n"
    "  --node-rank R       this node's index, 0 <= R < M (default 0)\n"
    "  --master-addr A     host of rank 0, MASTER_ADDR of every rank (default 127.0.0.1)\n"
    "  --master-port P     MASTER_PORT of every rank (default 29500; 0: a free port of this machine, --nnodes 1 only)\n"
    "  --prefix            put \"[rank K] \" before every line the ranks print (the default)\n"
    "  --no-prefix         pass the ranks' output through unchanged\n"
    "Flags also take the form --flag=VALUE, and torchrun's spellings (--nproc_per_node, ...).\n"
    "\n"
    "Each process gets RANK = R*N + its local rank, WORLD_SIZE = M*N, LOCAL_RANK, LOCAL_WORLD_SIZE = N,\n"
    "GROUP_RANK = NODE_RANK = R, MASTER_ADDR, MASTER_PORT and, unless it is set, OMP_NUM_THREADS = max(1, CPUs / N);\n"
    "its stdin is /dev/null, its stdout and stderr go to the launcher's, line by line. When a rank fails the\n"
    "others get SIGTERM, and SIGKILL 30 s later (GRPO_LAUNCH_KILL_AFTER_S=SECONDS changes the wait); SIGINT,\n"
    "SIGTERM and SIGHUP sent to the launcher are sent on to every rank.\n"
    "Exit status: 0 when every rank exits 0, 1 when one fails, 2 for a bad command line, 128 + signal number\n"
    "when the launcher was stopped by a signal.\n";

constexpr long kMaxProcsPerNode = 1024;
constexpr long kMaxNodes = 1L << 20;
constexpr size_t kMaxLine = 1 << 16;  // a longer line without '\n' is printed in pieces, each prefixed

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct LaunchOptions {
  long nproc = 0;
  long nnodes = 1;
  long node_rank = 0;
  std::string master_addr = "127.0.0.1";
  long master_port = 29500;
  bool prefix = true;
  bool help = false;
  std::vector<std::string> command;
};

std::optional<long> parse_long(const std::string& s) {
  size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  if (i == s.size() || s.size() - i > 17) return std::nullopt;
  long v = 0;
  for (size_t k = i; k < s.size(); ++k) {
    if (s[k] < '0' || s[k] > '9') return std::nullopt;
    v = v * 10 + (s[k] - '0');
  }
  return s[0] == '-' ? -v : v;
}

LaunchOptions parse_launch_args(const std::vector<std::string>& args) {
  LaunchOptions o;
  bool have_nproc = false;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "-h" || arg == "--help") {
      o.help = true;
      return o;
    }
    if (arg.size() < 2 || arg[0] != '-') break;  // PROGRAM
    const size_t eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);  // as typed, for messages
    const bool inline_value = eq != std::string::npos;
    std::string name = flag;  // torchrun's --nproc_per_node is --nproc-per-node
    if (name.rfind("--", 0) == 0) std::replace(name.begin() + 2, name.end(), '_', '-');
    auto value = [&]() -> std::string {
      if (inline_value) return arg.substr(eq + 1);
      if (i + 1 >= args.size()) throw UsageError(flag + ": missing value");
      return args[++i];
    };
    auto integer = [&](long lo, long hi, const std::string& what) {
      const std::string v = value();
      const auto n = parse_long(v);
      if (!n || *n < lo || *n > hi) throw UsageError(flag + ": must be " + what + ", found '" + v + "'");
      return *n;
    };
    if (name == "--nproc-per-node") {
      o.nproc = integer(1, kMaxProcsPerNode, "an integer in 1.." + std::to_string(kMaxProcsPerNode));
      have_nproc = true;
    } else if (name == "--nnodes") {
      o.nnodes = integer(1, kMaxNodes, "an integer >= 1");
    } else if (name == "--node-rank") {
      o.node_rank = integer(0, kMaxNodes - 1, "an integer >= 0");
    } else if (name == "--master-addr") {
      o.master_addr = value();
      if (o.master_addr.empty()) throw UsageError(flag + ": must be a host name or address, found ''");
    } else if (name == "--master-port") {
      o.master_port = integer(0, 65535, "a port number in 0..65535 (0: a free port)");
    } else if (name == "--prefix" || name == "--no-prefix") {
      if (inline_value) throw UsageError(flag + ": takes no value, found '" + arg.substr(eq + 1) + "'");
      o.prefix = name == "--prefix";
    } else {
      throw UsageError("unknown flag '" + flag + "' (flags go before PROGRAM; see grpo launch --help)");
    }
  }
  o.command.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
  if (!have_nproc) throw UsageError("missing --nproc-per-node N (the number of processes to start on this node)");
  if (o.node_rank >= o.nnodes) {
    throw UsageError("--node-rank: must be in [0, " + std::to_string(o.nnodes) + ") with --nnodes " +
                     std::to_string(o.nnodes) + ", found " + std::to_string(o.node_rank));
  }
  if (o.nproc * o.nnodes > INT_MAX) {
    throw UsageError("--nnodes: WORLD_SIZE " + std::to_string(o.nproc) + " x " + std::to_string(o.nnodes) +
                     " is too large");
  }
  if (o.master_port == 0 && o.nnodes > 1) {
    throw UsageError("--master-port 0 (a free port of this machine) needs --nnodes 1, found --nnodes " +
                     std::to_string(o.nnodes));
  }
  if (o.command.empty())
    throw UsageError("missing PROGRAM (grpo launch --nproc-per-node N [options] [--] PROGRAM ARGS)");
  return o;
}

double kill_after_seconds() {
  const char* env = std::getenv("GRPO_LAUNCH_KILL_AFTER_S");
  if (env == nullptr || *env == '\0') return 30.0;
  char* end = nullptr;
  const double s = std::strtod(env, &end);
  if (end == env || *end != '\0' || !std::isfinite(s) || s < 0 || s > 1e7) {
    throw UsageError(std::string("GRPO_LAUNCH_KILL_AFTER_S: must be a number of seconds >= 0, found '") + env + "'");
  }
  return s;
}

// A TCP port no one listens on now: bind port 0 on 127.0.0.1 and read the one the kernel picked.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("--master-port 0: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int e = errno;
    close(fd);
    throw std::runtime_error(std::string("--master-port 0: cannot find a free port: ") + std::strerror(e));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

unsigned cpu_count() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

std::string signal_name(int sig) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},   {SIGTRAP, "SIGTRAP"},
      {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"},
      {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"}, {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
      {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
  };
  for (const auto& [n, name] : kNames) {
    if (n == sig) return name;
  }
  const char* s = strsignal(sig);
  return s != nullptr ? std::string(s) : "signal";
}

// "exited with status 3", "was killed by signal SIGKILL (9)".
std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "was killed by signal " + signal_name(sig) + " (" + std::to_string(sig) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// ---- signals ----

int g_wake_fd = -1;  // write end of the self-pipe; each byte is a signal number

extern "C" void launch_on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  if (g_wake_fd >= 0) (void)!write(g_wake_fd, &b, 1);
  errno = saved;
}

constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP};

// Installs the launcher's handlers; restores the previous dispositions when it goes. A forwarded signal
// that was ignored on entry (nohup's SIGHUP, SIGINT of a background job) stays ignored, and the ranks
// inherit that.
class SignalSetup {
 public:
  static constexpr int kHandled[] = {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE};

  SignalSetup() {
    for (size_t k = 0; k < std::size(kHandled); ++k) {
      const int sig = kHandled[k];
      sigaction(sig, nullptr, &old_[k]);
      struct sigaction sa {};
      sigemptyset(&sa.sa_mask);
      if (sig == SIGPIPE) {
        sa.sa_handler = SIG_IGN;  // a closed stdout must not kill the launcher while ranks run
      } else if (sig != SIGCHLD && old_[k].sa_handler == SIG_IGN) {
        continue;
      } else {
        sa.sa_handler = launch_on_signal;
        sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
      }
      sigaction(sig, &sa, nullptr);
    }
  }
  ~SignalSetup() { restore(); }
  SignalSetup(const SignalSetup&) = delete;
  SignalSetup& operator=(const SignalSetup&) = delete;

  // In a forked child before exec: the dispositions the launcher found.
  void restore() const {
    for (size_t k = 0; k < std::size(kHandled); ++k) sigaction(kHandled[k], &old_[k], nullptr);
  }

 private:
  struct sigaction old_[std::size(kHandled)]{};
};

// ---- output ----

// One of the launcher's own outputs (stdout or stderr). A write that fails (EPIPE: the reader went away)
// makes it drop everything after, so the ranks still get drained and never block on a full pipe.
struct Sink {
  int fd;
  bool broken = false;

  void write_all(const char* p, size_t n) {
    while (n > 0 && !broken) {
      const ssize_t w = ::write(fd, p, n);
      if (w > 0) {
        p += w;
        n -= static_cast<size_t>(w);
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd pfd{fd, POLLOUT, 0};
        poll(&pfd, 1, 1000);
      } else {
        broken = true;
      }
    }
  }
  void write_all(const std::string& s) { write_all(s.data(), s.size()); }
};

struct Stream {
  int fd = -1;
  Sink* sink = nullptr;
  std::string pending;  // the last, unfinished line
};

struct Child {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  std::string prefix;  // "[rank K] " or ""
  Stream out, err;
};

void emit(Stream& s, const std::string& prefix, const char* data, size_t n, bool eof) {
  if (prefix.empty()) {
    s.sink->write_all(data, n);
    return;
  }
  s.pending.append(data, n);
  std::string text;
  size_t start = 0;
  for (size_t nl; (nl = s.pending.find('\n', start)) != std::string::npos; start = nl + 1) {
    text += prefix;
    text.append(s.pending, start, nl + 1 - start);
  }
  s.pending.erase(0, start);
  if (s.pending.size() >= kMaxLine || (eof && !s.pending.empty())) {
    text += prefix;
    text += s.pending;
    text += '\n';
    s.pending.clear();
  }
  if (!text.empty()) s.sink->write_all(text);
}

// Reads what `s` holds: one read (so a chatty rank cannot starve the others), or with `drain` until the pipe
// is empty (at most 64 reads). At end of file the unfinished line is printed and the pipe closed.
void pump(Stream& s, const std::string& prefix, bool drain) {
  char buf[1 << 16];
  for (int reads = 0; s.fd >= 0 && reads < (drain ? 64 : 1);) {
    const ssize_t n = read(s.fd, buf, sizeof buf);
    if (n > 0) {
      emit(s, prefix, buf, static_cast<size_t>(n), false);
      ++reads;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      emit(s, prefix, nullptr, 0, true);
      close(s.fd);
      s.fd = -1;
    }
  }
}

// ---- the launcher ----

class Launcher {
 public:
  Launcher(const LaunchOptions& o, double grace_s)
      : o_(o),
        grace_s_(grace_s),
        grace_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s))) {}

  int run() {
    ensure_standard_fds();
    int wake[2];
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    }
    wake_r_ = wake[0];
    g_wake_fd = wake[1];
    int rc;
    {
      SignalSetup signals;
      signals_ = &signals;
      start_all();
      loop();
      rc = finish();
      signals_ = nullptr;
    }
    g_wake_fd = -1;
    close(wake[0]);
    close(wake[1]);
    if (saved_stderr_ >= 0) close(saved_stderr_);
    if (devnull_ >= 0) close(devnull_);
    return rc;
  }

 private:
  // With fd 0, 1 or 2 closed, a pipe could land on one of them and dup2 in the child would misplace it.
  static void ensure_standard_fds() {
    for (int fd = 0; fd <= 2; ++fd) {
      if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) (void)!open("/dev/null", O_RDWR);
    }
  }

  void say(const std::string& line) { err_sink_.write_all("grpo launch: " + line + "\n"); }

  size_t count_running() const {
    return static_cast<size_t>(
        std::count_if(children_.begin(), children_.end(), [](const Child& c) { return c.running; }));
  }

  std::vector<std::string> base_environment(int port) const {
    const char* keys[] = {"RANK",       "WORLD_SIZE", "LOCAL_RANK",  "LOCAL_WORLD_SIZE",
                          "GROUP_RANK", "NODE_RANK",  "MASTER_ADDR", "MASTER_PORT"};
    std::vector<std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      const std::string kv = *e;
      const std::string key = kv.substr(0, kv.find('='));
      if (std::find(std::begin(keys), std::end(keys), key) == std::end(keys)) env.push_back(kv);
    }
    const long n = o_.nproc;
    env.push_back("WORLD_SIZE=" + std::to_string(n * o_.nnodes));
    env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(n));
    env.push_back("GROUP_RANK=" + std::to_string(o_.node_rank));
    env.push_back("NODE_RANK=" + std::to_string(o_.node_rank));
    env.push_back("MASTER_ADDR=" + o_.master_addr);
    env.push_back("MASTER_PORT=" + std::to_string(port));
    const char* omp = std::getenv("OMP_NUM_THREADS");
    if (omp == nullptr || *omp == '\0') {
      env.push_back("OMP_NUM_THREADS=" + std::to_string(std::max<long>(1, static_cast<long>(cpu_count()) / n)));
    }
    return env;
  }

  void start_all() {
    const int port = o_.master_port == 0 ? free_port() : static_cast<int>(o_.master_port);
    const std::vector<std::string> base = base_environment(port);
    saved_stderr_ = fcntl(2, F_DUPFD_CLOEXEC, 3);
    devnull_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    std::vector<char*> argv;
    for (const auto& a : o_.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    children_.resize(static_cast<size_t>(o_.nproc));
    for (long local = 0; local < o_.nproc; ++local) {
      Child& c = children_[static_cast<size_t>(local)];
      c.rank = static_cast<int>(o_.node_rank * o_.nproc + local);
      c.prefix = o_.prefix ? "[rank " + std::to_string(c.rank) + "] " : "";
      c.out.sink = &out_sink_;
      c.err.sink = &err_sink_;
      std::vector<std::string> env = base;
      env.push_back("RANK=" + std::to_string(c.rank));
      env.push_back("LOCAL_RANK=" + std::to_string(local));
      std::vector<char*> envp;
      for (auto& kv : env) envp.push_back(kv.data());
      envp.push_back(nullptr);
      const std::string error = spawn(c, argv.data(), envp.data());
      if (!error.empty()) {
        say("cannot start rank " + std::to_string(c.rank) + ": " + error);
        fail(c, "could not be started (" + error + ")");
        break;
      }
    }
  }

  // Forks and execs one rank; returns "" or what went wrong.
  std::string spawn(Child& c, char** argv, char** envp) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0) return std::string("pipe: ") + std::strerror(errno);
    if (pipe2(err, O_CLOEXEC) != 0) {
      const int e = errno;
      close(out[0]);
      close(out[1]);
      return std::string("pipe: ") + std::strerror(e);
    }
    const std::string exec_error = "grpo launch: rank " + std::to_string(c.rank) + ": cannot run '" + argv[0] + "': ";
    const pid_t parent = getpid();
    // Signals stay blocked from fork until the child has the old dispositions back, so the launcher's
    // handlers never run in a child.
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    const pid_t pid = fork();
    if (pid == 0) {
      setpgid(0, 0);
      signals_->restore();
      sigprocmask(SIG_SETMASK, &old, nullptr);
#ifdef __linux__
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
#endif
      if (devnull_ >= 0) dup2(devnull_, 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
      environ = envp;
      execvp(argv[0], argv);
      const std::string msg = exec_error + std::strerror(errno) + "\n";
      (void)!write(saved_stderr_ >= 0 ? saved_stderr_ : 2, msg.data(), msg.size());
      _exit(127);
    }
    const int fork_errno = errno;
    sigprocmask(SIG_SETMASK, &old, nullptr);
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
      close(out[0]);
      close(err[0]);
      return std::string("fork: ") + std::strerror(fork_errno);
    }
    setpgid(pid, pid);  // also here, so the group exists before any kill(-pid); EACCES once it has exec'd
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    c.pid = pid;
    c.running = true;
    c.out.fd = out[0];
    c.err.fd = err[0];
    return "";
  }

  // Sends `sig` to rank c's process group (the rank and whatever it started).
  static void signal_group(const Child& c, int sig) {
    if (kill(-c.pid, sig) != 0 && errno == ESRCH) kill(c.pid, sig);
  }

  void begin_stop() {
    if (stop_at_) return;
    stop_at_ = Clock::now();
  }

  // The first rank that failed (not counting ranks stopped by a signal the launcher forwarded).
  void fail(const Child& c, const std::string& how) {
    if (first_failed_ >= 0 || got_signal_ != 0) return;
    first_failed_ = c.rank;
    first_failure_ = how;
    const size_t others = count_running();
    if (c.pid > 0) {
      say("rank " + std::to_string(c.rank) + " (pid " + std::to_string(c.pid) + ") " + how +
          (others > 0 ? "; stopping the other ranks" : ""));
    }
    for (const Child& o : children_) {
      if (o.running) signal_group(o, SIGTERM);
    }
    if (others > 0) begin_stop();
  }

  void on_signal(int sig) {
    const size_t running = count_running();
    if (got_signal_ == 0) {
      got_signal_ = sig;
      say("got " + signal_name(sig) + "; sending it to the " + std::to_string(running) + " running rank" +
          (running == 1 ? "" : "s"));
    }
    for (const Child& c : children_) {
      if (c.running) signal_group(c, sig);
    }
    begin_stop();
  }

  void reap() {
    for (Child& c : children_) {
      if (!c.running) continue;
      int status = 0;
      const pid_t r = waitpid(c.pid, &status, WNOHANG);
      if (r != c.pid) continue;
      c.running = false;
      c.status = status;
      // What it printed before it ended comes before the launcher's line about it.
      pump(c.out, c.prefix, true);
      pump(c.err, c.prefix, true);
      if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) fail(c, describe_status(status));
    }
    if (count_running() == 0 && !all_exited_at_) all_exited_at_ = Clock::now();
  }

  // SIGKILL to the groups still there `grace_` after the stop began: running ranks, and the groups of ended
  // ranks whose pipes something still holds open.
  void kill_stragglers() {
    killed_ = true;
    for (Child& c : children_) {
      if (c.running) {
        say("rank " + std::to_string(c.rank) + " (pid " + std::to_string(c.pid) + ") still running " +
            format_seconds(grace_s_) + " s after it was told to stop; sending SIGKILL");
        signal_group(c, SIGKILL);
      } else if (c.pid > 0 && (c.out.fd >= 0 || c.err.fd >= 0)) {
        kill(-c.pid, SIGKILL);
      }
    }
  }

  void loop() {
    // After the last rank has ended, its pipes get this long to reach end of file (something it started
    // in the background may hold them open).
    const auto linger = std::chrono::milliseconds(2000);
    std::vector<pollfd> fds;
    std::vector<Stream*> streams;
    std::vector<const Child*> owners;
    for (;;) {
      reap();
      const auto now = Clock::now();
      if (stop_at_ && !killed_ && now >= *stop_at_ + grace_) {
        kill_stragglers();
        continue;
      }
      fds.assign(1, pollfd{wake_r_, POLLIN, 0});
      streams.clear();
      owners.clear();
      for (Child& c : children_) {
        for (Stream* s : {&c.out, &c.err}) {
          if (s->fd < 0) continue;
          fds.push_back(pollfd{s->fd, POLLIN, 0});
          streams.push_back(s);
          owners.push_back(&c);
        }
      }
      if (count_running() == 0) {
        if (streams.empty()) return;
        if (now >= *all_exited_at_ + linger) {
          if (stop_at_ && !killed_) kill_stragglers();
          for (size_t k = 0; k < streams.size(); ++k) pump(*streams[k], owners[k]->prefix, true);
          close_all(streams, owners);
          return;
        }
      }
      std::optional<Clock::time_point> deadline;
      if (stop_at_ && !killed_) deadline = *stop_at_ + grace_;
      if (count_running() == 0) {
        const auto end = *all_exited_at_ + linger;
        deadline = deadline ? std::min(*deadline, end) : end;
      }
      int timeout = -1;
      if (deadline) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - now).count() + 1;
        timeout = static_cast<int>(std::clamp<long long>(ms, 0, INT_MAX));
      }
      const int ready = poll(fds.data(), fds.size(), timeout);
      if (ready < 0) {
        if (errno == EINTR) continue;
        throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
      }
      if (fds[0].revents != 0) {
        unsigned char sigs[64];
        for (ssize_t n; (n = read(wake_r_, sigs, sizeof sigs)) > 0;) {
          for (ssize_t k = 0; k < n; ++k) {
            if (std::find(std::begin(kForwarded), std::end(kForwarded), sigs[k]) != std::end(kForwarded)) {
              on_signal(sigs[k]);
            }
          }
        }
      }
      for (size_t k = 1; k < fds.size(); ++k) {
        if (fds[k].revents != 0) pump(*streams[k - 1], owners[k - 1]->prefix, false);
      }
    }
  }

  // Pipes still open after the linger: print what each holds of an unfinished line and close them.
  static void close_all(const std::vector<Stream*>& streams, const std::vector<const Child*>& owners) {
    for (size_t k = 0; k < streams.size(); ++k) {
      Stream& s = *streams[k];
      if (s.fd < 0) continue;
      emit(s, owners[k]->prefix, nullptr, 0, true);
      close(s.fd);
      s.fd = -1;
    }
  }

  int finish() {
    if (first_failed_ >= 0) say("failed: rank " + std::to_string(first_failed_) + " " + first_failure_);
    if (got_signal_ != 0) return 128 + got_signal_;
    return first_failed_ >= 0 ? 1 : 0;
  }

  const LaunchOptions& o_;
  const double grace_s_;
  const Clock::duration grace_;
  std::vector<Child> children_;
  Sink out_sink_{1};
  Sink err_sink_{2};
  SignalSetup* signals_ = nullptr;
  int wake_r_ = -1;
  int saved_stderr_ = -1;
  int devnull_ = -1;
  int got_signal_ = 0;
  int first_failed_ = -1;
  std::string first_failure_;
  std::optional<Clock::time_point> stop_at_;
  std::optional<Clock::time_point> all_exited_at_;
  bool killed_ = false;
};

}  // namespace

int launch_main(const std::vector<std::string>& args) {
  try {
    const LaunchOptions o = parse_launch_args(args);
    if (o.help) {
      std::cout << kLaunchUsage;
      return 0;
    }
    const double grace = kill_after_seconds();
    std::cout.flush();
    std::cerr.flush();
    return Launcher(o, grace).run();
  } catch (const UsageError& e) {
    std::cerr << "grpo launch: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "grpo launch: error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace grpo::tools
