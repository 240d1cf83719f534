// The code execution sandbox (see the header for the layers). Between the clone and the exec the
// child only makes system calls on data prepared before the clone: the trainer is multithreaded,
// and nothing else is safe there.
#include "grpo/rewards/sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace grpo::rewards {
namespace {

namespace fs = std::filesystem;

constexpr uid_t kSandboxUid = 65534;  // nobody
constexpr gid_t kSandboxGid = 65534;  // nogroup

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("sandbox: " + what + ": " + std::strerror(errno));
}

// True when `dir_path` and every directory above it can be entered by others.
bool searchable_by_others(const fs::path& dir_path) {
  struct stat st;
  for (fs::path dir = dir_path; !dir.empty(); dir = dir.parent_path()) {
    if (::stat(dir.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0) return false;
    if (dir == dir.root_path()) break;
  }
  return true;
}

// True when the file can be read and run by others, and every directory above it entered: what
// the sandbox uid needs to exec it.
bool usable_by_others(const fs::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  if ((st.st_mode & (S_IXOTH | S_IROTH)) != (S_IXOTH | S_IROTH)) return false;
  return searchable_by_others(path.parent_path());
}

// The interpreter as an absolute, symlink-free path. A bare name is searched in PATH; when the
// program will run as another uid, entries it could not exec (pyenv shims under /root) are skipped.
std::string resolve_interpreter(const std::string& name, bool other_uid) {
  auto fits = [&](const fs::path& p) {
    std::error_code ec;
    fs::path real = fs::canonical(p, ec);
    if (ec || ::access(real.c_str(), X_OK) != 0) return std::string();
    if (other_uid && !usable_by_others(real)) return std::string();
    return real.string();
  };
  if (name.find('/') != std::string::npos) {
    if (auto r = fits(name); !r.empty()) return r;
    errno = ENOENT;
    fail("interpreter '" + name + "' is not an executable file" + (other_uid ? " that uid 65534 can run" : ""));
  }
  const char* path_env = std::getenv("PATH");
  std::string path = path_env ? path_env : "";
  path += ":/usr/local/bin:/usr/bin:/bin";
  std::stringstream ss(path);
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (dir.empty()) continue;
    if (auto r = fits(fs::path(dir) / name); !r.empty()) return r;
  }
  errno = ENOENT;
  fail("interpreter '" + name + "' not found in PATH" + (other_uid ? " (runnable by uid 65534)" : ""));
}

std::string unique_suffix() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  return std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + std::to_string(rd());
}

// A pids cgroup for one run, when the cgroup filesystem is writable (root, v1 `pids` or v2).
struct Cgroup {
  std::string dir;  // empty when none

  void create(int64_t max_pids) {
    for (const char* base : {"/sys/fs/cgroup/pids", "/sys/fs/cgroup"}) {
      std::string d = std::string(base) + "/grpo_sandbox_" + unique_suffix();
      if (::mkdir(d.c_str(), 0700) != 0) continue;
      std::ofstream f(d + "/pids.max");
      f << max_pids;
      f.flush();
      if (f) {
        dir = d;
        return;
      }
      ::rmdir(d.c_str());
    }
  }
  std::vector<pid_t> members() const {
    std::vector<pid_t> pids;
    std::ifstream f(dir + "/cgroup.procs");
    for (pid_t p; f >> p;) pids.push_back(p);
    return pids;
  }
  // Kills every member until the cgroup is empty, then removes it.
  void destroy() {
    if (dir.empty()) return;
    for (int i = 0; i < 500; ++i) {
      auto pids = members();
      if (pids.empty() && ::rmdir(dir.c_str()) == 0) break;
      for (pid_t p : pids) ::kill(p, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    dir.clear();
  }
};

// Removes the run's directory, including what a program left unreadable (chmod 000 folders).
void remove_tree(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!ec && !fs::exists(dir, ec)) return;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  }
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(dir, ec);
}

// Processes and threads whose real uid is `uid` (what RLIMIT_NPROC counts), from /proc.
rlim_t count_tasks_of_uid(uid_t uid) {
  rlim_t tasks = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "status");
    bool mine = false;
    for (std::string line; std::getline(f, line);) {
      if (line.rfind("Uid:", 0) == 0) mine = std::stoul(line.substr(4)) == uid;
      if (line.rfind("Threads:", 0) == 0 && mine) tasks += std::stoul(line.substr(8));
    }
  }
  return tasks;
}

constexpr unsigned long kNamespaceFlags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;

// The uid and gid maps of a new user namespace: our own ids mapped to themselves, so the program
// runs with our uid inside (and loses the namespace's capabilities at exec).
struct UserNamespaceMaps {
  char uid_map[64], gid_map[64];
  static UserNamespaceMaps current() {
    UserNamespaceMaps m;
    std::snprintf(m.uid_map, sizeof m.uid_map, "%u %u 1\n", ::getuid(), ::getuid());
    std::snprintf(m.gid_map, sizeof m.gid_map, "%u %u 1\n", ::getgid(), ::getgid());
    return m;
  }
  // In the child: only open/write/close.
  bool write() const {
    auto put = [](const char* path, const char* text) {
      int fd = ::open(path, O_WRONLY | O_CLOEXEC);
      if (fd < 0) return false;
      bool ok = ::write(fd, text, std::strlen(text)) == static_cast<ssize_t>(std::strlen(text));
      ::close(fd);
      return ok;
    };
    return put("/proc/self/setgroups", "deny") && put("/proc/self/uid_map", uid_map) &&
           put("/proc/self/gid_map", gid_map);
  }
};

// Everything the child needs, prepared before the clone.
struct ChildPlan {
  const char* workdir;
  char* workdir_scratch;  // a copy of workdir the child may modify
  std::vector<char*> argv, envp;
  int stdin_fd, stdout_fd, stderr_fd, error_fd;
  const char* cgroup_procs;  // nullptr: no cgroup
  bool namespaces;
  const UserNamespaceMaps* user_namespace;  // nullptr: no user namespace (root)
  bool drop_to_nobody;
  rlim_t cpu, memory, fsize, nproc;
};

// Reports errno and the failed step to the parent through the CLOEXEC error pipe, then exits.
[[noreturn]] void child_fail(int fd, const char* step) {
  int err = errno;
  char buf[128];
  const char* text = ::strerrordesc_np(err);  // unlike strerror, no locale: safe after the clone
  size_t n = 0;
  for (const char* part : {step, ": ", text ? text : "unknown error"})
    for (; *part && n < sizeof buf; ++part) buf[n++] = *part;
  (void)!::write(fd, buf, n);
  ::_exit(127);
}

[[noreturn]] void child_main(const ChildPlan& p) {
  ::setsid();
  if (::dup2(p.stdin_fd, 0) < 0 || ::dup2(p.stdout_fd, 1) < 0 || ::dup2(p.stderr_fd, 2) < 0)
    child_fail(p.error_fd, "dup2");
  // Close every fd but 0-2 and the error pipe (CLOEXEC, closed by the exec).
  int lo = 3, hi = p.error_fd;
  if (::syscall(SYS_close_range, lo, hi - 1, 0) != 0 || ::syscall(SYS_close_range, hi + 1, ~0U, 0) != 0) {
    for (int fd = 3; fd < 65536; ++fd)
      if (fd != p.error_fd) ::close(fd);
  }
  if (p.user_namespace && !p.user_namespace->write()) child_fail(p.error_fd, "write the user namespace maps");
  if (p.cgroup_procs) {
    int fd = ::open(p.cgroup_procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ::write(fd, "0", 1) != 1) child_fail(p.error_fd, "join cgroup");
    ::close(fd);
  }
  if (p.namespaces) {
    // Private mounts: empty tmpfs over /tmp, /var/tmp and /dev/shm, the work dir bind-mounted back
    // at its own path (Python resolves the script through the cwd's path), and a /proc showing only
    // this PID namespace.
    int work_fd = ::open(p.workdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (work_fd < 0) child_fail(p.error_fd, "open the work dir");
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) child_fail(p.error_fd, "make / private");
    for (const char* dir : {"/tmp", "/var/tmp", "/dev/shm"}) {
      struct stat st;
      if (::stat(dir, &st) == 0 && S_ISDIR(st.st_mode) &&
          ::mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=16m") != 0)
        child_fail(p.error_fd, "mount a private tmpfs");
    }
    struct stat st;
    if (::stat(p.workdir, &st) != 0) {  // hidden by a tmpfs: mount it back at the same path
      // mkdir -p on a scratch copy of the path: each '/' in turn ends the string.
      for (char* c = p.workdir_scratch + 1;; ++c) {
        if (*c != '/' && *c != '\0') continue;
        const char saved = *c;
        *c = '\0';
        if (::mkdir(p.workdir_scratch, 0755) != 0 && errno != EEXIST)
          child_fail(p.error_fd, "mkdir the work dir mount point");
        *c = saved;
        if (saved == '\0') break;
      }
      char fd_path[32] = "/proc/self/fd/";
      char digits[12];
      int n = 0;
      for (int v = work_fd; n == 0 || v > 0; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
      size_t len = std::strlen(fd_path);
      while (n > 0) fd_path[len++] = digits[--n];
      fd_path[len] = '\0';
      if (::mount(fd_path, p.workdir, nullptr, MS_BIND, nullptr) != 0)
        child_fail(p.error_fd, "bind-mount the work dir");
    }
    ::close(work_fd);
    ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);  // best effort
  }
  if (::chdir(p.workdir) != 0) child_fail(p.error_fd, "chdir to the work dir");
  auto limit = [&](int resource, rlim_t soft, rlim_t hard, const char* step) {
    const rlimit rl = {soft, hard};
    if (::setrlimit(resource, &rl) != 0) child_fail(p.error_fd, step);
  };
  // soft = hard: SIGKILL at the limit. (SIGXCPU would be ignored by PID 1 of a namespace.)
  limit(RLIMIT_CPU, p.cpu, p.cpu, "RLIMIT_CPU");
  limit(RLIMIT_AS, p.memory, p.memory, "RLIMIT_AS");
  limit(RLIMIT_FSIZE, p.fsize, p.fsize, "RLIMIT_FSIZE");
  limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");
  limit(RLIMIT_NOFILE, 256, 256, "RLIMIT_NOFILE");
  if (!p.drop_to_nobody) {
    limit(RLIMIT_NPROC, p.nproc, p.nproc, "RLIMIT_NPROC");
  } else {
    // RLIMIT_NPROC counts every process and thread of uid 65534 on the machine, so it is only the
    // fallback when no pids cgroup limits this run alone. (It does not limit root at all.)
    if (!p.cgroup_procs) limit(RLIMIT_NPROC, p.nproc, p.nproc, "RLIMIT_NPROC");
    // Raw system calls: glibc's setuid/setgid/setgroups signal every thread of the process and
    // wait for them, and the threads of the trainer do not exist in this child (a deadlock).
    if (::syscall(SYS_setgroups, 0, nullptr) != 0) child_fail(p.error_fd, "setgroups");
    if (::syscall(SYS_setresgid, kSandboxGid, kSandboxGid, kSandboxGid) != 0) child_fail(p.error_fd, "setgid 65534");
    if (::syscall(SYS_setresuid, kSandboxUid, kSandboxUid, kSandboxUid) != 0) child_fail(p.error_fd, "setuid 65534");
    if (::syscall(SYS_setresuid, 0, 0, 0) == 0) {
      errno = EPERM;
      child_fail(p.error_fd, "privileges still held after setuid");
    }
  }
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);  // after setuid, which clears it
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(p.argv[0], p.argv.data(), p.envp.data());
  child_fail(p.error_fd, "exec the interpreter");
}

// fork(), with new namespaces when `flags` is not 0 (the raw syscall: glibc's clone wrapper needs
// a separate stack). Returns -1 with errno set on failure.
pid_t clone_process(unsigned long flags) {
  return static_cast<pid_t>(::syscall(SYS_clone, flags | SIGCHLD, nullptr, nullptr, nullptr, nullptr));
}

// Prepended to the program when no network namespace is available: socket creation raises.
constexpr const char* kNoSocketPrelude =
    "import socket as _grpo_s\n"
    "def _grpo_denied(*a, **k):\n"
    "    raise PermissionError('network disabled by the grpo sandbox')\n"
    "_grpo_s.socket.__init__ = _grpo_denied; _grpo_s.create_connection = _grpo_denied\n"
    "_grpo_s.socketpair = _grpo_denied; del _grpo_s, _grpo_denied\n";

std::string last_line(const std::string& text) {
  size_t end = text.find_last_not_of(" \t\r\n");
  if (end == std::string::npos) return "";
  size_t begin = text.rfind('\n', end);
  begin = begin == std::string::npos ? 0 : begin + 1;
  std::string line = text.substr(begin, end - begin + 1);
  if (line.size() > 200) line = line.substr(0, 200) + "...";
  return line;
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// write(2) to a pipe whose reader may be gone: EPIPE instead of a SIGPIPE that would end the
// trainer. SIGPIPE is blocked in this thread for the call and a pending one is consumed.
ssize_t write_without_sigpipe(int fd, const char* data, size_t size) {
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  ssize_t n = ::write(fd, data, size);
  const int saved_errno = errno;
  if (n < 0 && errno == EPIPE && !was_pending) {
    struct timespec zero {
      0, 0
    };
    while (::sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  errno = saved_errno;
  return n;
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

struct Pipe {
  int fd[2] = {-1, -1};
  void open_cloexec() {
    if (::pipe2(fd, O_CLOEXEC) != 0) fail("pipe2");
  }
  void close_end(int i) {
    if (fd[i] >= 0) ::close(fd[i]);
    fd[i] = -1;
  }
  ~Pipe() { close_end(0), close_end(1); }
};

}  // namespace

SandboxResult run_sandboxed(const SandboxConfig& cfg, const std::string& program_text, const std::string& stdin_text) {
  const auto start = std::chrono::steady_clock::now();
  const bool root = ::geteuid() == 0;
  const std::string interpreter = resolve_interpreter(cfg.interpreter, root);
  const bool is_python = fs::path(interpreter).filename().string().rfind("python", 0) == 0;

  // The private work dir, owned by the sandbox uid.
  std::string tmpl = (fs::temp_directory_path() / "grpo_sandbox_XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) fail("mkdtemp in " + fs::temp_directory_path().string());
  const std::string workdir = tmpl;
  if (root && !searchable_by_others(fs::path(workdir).parent_path())) {
    ::rmdir(workdir.c_str());
    errno = EACCES;
    fail("the temp dir " + fs::path(workdir).parent_path().string() +
         " cannot be reached by uid 65534 (set TMPDIR to a folder every user can enter)");
  }
  struct Cleanup {
    std::string dir;
    Cgroup cgroup;
    ~Cleanup() { cgroup.destroy(), remove_tree(dir); }
  } cleanup{workdir, {}};

  SandboxResult result;
  // Namespaces: as root directly; otherwise inside a new user namespace (unprivileged user
  // namespaces), where the program keeps our uid. Probed once per process with a child that sets
  // up the same mounts; the answer does not change.
  static const UserNamespaceMaps maps = UserNamespaceMaps::current();
  static const bool namespaces_work = [root] {
    const unsigned long flags = kNamespaceFlags | (root ? 0 : CLONE_NEWUSER);
    pid_t pid = clone_process(flags);
    if (pid == 0) {
      if (!root && !maps.write()) ::_exit(1);
      bool ok = ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
                ::mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=1m") == 0;
      ::_exit(ok ? 0 : 1);
    }
    if (pid < 0) return false;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }();
  unsigned long ns_flags = kNamespaceFlags & ~(cfg.network ? CLONE_NEWNET : 0UL);
  if (!root) ns_flags |= CLONE_NEWUSER;
  const bool socket_prelude = !cfg.network && !namespaces_work && is_python;

  const std::string script = "main" + std::string(is_python ? ".py" : "");
  {
    std::ofstream f(workdir + "/" + script, std::ios::binary);
    if (socket_prelude) f << kNoSocketPrelude;
    f << program_text;
    if (!f) fail("write the program into " + workdir);
  }
  if (root) {
    if (::chown(workdir.c_str(), kSandboxUid, kSandboxGid) != 0 ||
        ::chown((workdir + "/" + script).c_str(), kSandboxUid, kSandboxGid) != 0)
      fail("chown the work dir to 65534");
    cleanup.cgroup.create(cfg.max_processes);
  }

  // argv, envp: prepared here, used in the child.
  std::vector<std::string> args = {interpreter};
  if (is_python) args.insert(args.end(), {"-I", "-B", "-u"});  // isolated: no env, no user site
  args.push_back(script);
  std::vector<std::string> env = {"PATH=/usr/local/bin:/usr/bin:/bin",
                                  "HOME=" + (namespaces_work ? std::string("/tmp") : workdir), "LANG=C.UTF-8",
                                  "PYTHONDONTWRITEBYTECODE=1"};
  const std::string cgroup_procs = cleanup.cgroup.dir.empty() ? "" : cleanup.cgroup.dir + "/cgroup.procs";

  Pipe in, out, err, status_pipe;
  in.open_cloexec(), out.open_cloexec(), err.open_cloexec(), status_pipe.open_cloexec();

  ChildPlan plan;
  std::string workdir_scratch = workdir;
  plan.workdir = workdir.c_str();
  plan.workdir_scratch = workdir_scratch.data();
  for (auto& a : args) plan.argv.push_back(a.data());
  plan.argv.push_back(nullptr);
  for (auto& e : env) plan.envp.push_back(e.data());
  plan.envp.push_back(nullptr);
  plan.stdin_fd = in.fd[0], plan.stdout_fd = out.fd[1], plan.stderr_fd = err.fd[1];
  plan.error_fd = status_pipe.fd[1];
  plan.cgroup_procs = cgroup_procs.empty() ? nullptr : cgroup_procs.c_str();
  plan.namespaces = namespaces_work;
  plan.user_namespace = namespaces_work && !root ? &maps : nullptr;
  plan.drop_to_nobody = root;
  plan.cpu = static_cast<rlim_t>(std::ceil(cfg.cpu_seconds));
  plan.memory = static_cast<rlim_t>(cfg.memory_mb) << 20;
  plan.fsize = static_cast<rlim_t>(cfg.file_size_mb) << 20;
  // RLIMIT_NPROC counts all processes and threads of the real uid: as the sandbox uid that is the
  // sandbox alone (when no cgroup counts), as our own uid it also counts ours, so add those.
  plan.nproc = static_cast<rlim_t>(cfg.max_processes) + (root ? 0 : count_tasks_of_uid(::getuid()));

  // The isolation summary.
  {
    std::string iso;
    if (namespaces_work && !root) iso += "userns ";
    if (namespaces_work) iso += cfg.network ? "pidns mntns " : "pidns netns mntns ";
    if (socket_prelude) iso += "socket-prelude ";
    if (!cleanup.cgroup.dir.empty()) iso += "cgroup-pids ";
    iso += root ? (cleanup.cgroup.dir.empty() ? "uid65534 nproc-rlimit " : "uid65534 ") : "same-uid nproc-rlimit ";
    iso += "rlimits";
    result.isolation = iso;
  }

  const pid_t pid = clone_process(namespaces_work ? ns_flags : 0);
  if (pid < 0) fail("clone");
  if (pid == 0) child_main(plan);

  in.close_end(0), out.close_end(1), err.close_end(1), status_pipe.close_end(1);
  set_nonblocking(in.fd[1]), set_nonblocking(out.fd[0]), set_nonblocking(err.fd[0]);
  if (stdin_text.empty()) in.close_end(1);

  // Setup errors arrive before the exec closes the pipe.
  std::string setup_error;
  {
    char buf[256];
    ssize_t n;
    while ((n = ::read(status_pipe.fd[0], buf, sizeof buf)) > 0) setup_error.append(buf, static_cast<size_t>(n));
  }

  const size_t cap = static_cast<size_t>(cfg.max_output_bytes);
  const auto deadline = start + std::chrono::duration<double>(cfg.wall_seconds);
  size_t stdin_written = 0;
  bool exited = false;
  bool escaped = false;  // a process outside our reach kept the output pipes open
  int status = 0;
  struct rusage usage {};
  auto kill_all = [&] {
    if (!exited) ::kill(pid, SIGKILL);  // PID 1 of its namespace: the kernel kills the rest
    ::kill(-pid, SIGKILL);              // its process group (setsid made pid the group id)
    for (pid_t p : cleanup.cgroup.dir.empty() ? std::vector<pid_t>{} : cleanup.cgroup.members()) ::kill(p, SIGKILL);
  };
  auto drain = [&](int fd, std::string& text) {
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        size_t room = text.size() < cap ? cap - text.size() : 0;
        text.append(buf, std::min(room, static_cast<size_t>(n)));
        if (static_cast<size_t>(n) > room) result.output_truncated = true;
        continue;
      }
      if (n == 0) return true;  // EOF
      if (errno == EINTR) continue;
      return false;  // EAGAIN
    }
  };
  std::chrono::steady_clock::time_point exited_at;
  while (out.fd[0] >= 0 || err.fd[0] >= 0 || !exited) {
    auto now = std::chrono::steady_clock::now();
    if (!result.timed_out && now >= deadline) {
      result.timed_out = true;
      kill_all();
    }
    // After the main process is gone, stragglers holding the pipes are killed; without a PID
    // namespace or cgroup, one that left the process group cannot be found: stop waiting for it.
    if (exited && now - exited_at > std::chrono::milliseconds(200)) kill_all();
    if ((exited && now - exited_at > std::chrono::milliseconds(500)) ||
        (result.timed_out && now - deadline > std::chrono::seconds(2))) {
      if (out.fd[0] >= 0 || err.fd[0] >= 0) escaped = true;
      out.close_end(0), err.close_end(0), in.close_end(1);
      if (exited) break;
    }
    if (!exited) {
      pid_t r = ::wait4(pid, &status, WNOHANG, &usage);
      if (r == pid) {
        exited = true;
        exited_at = now;
        ::kill(-pid, SIGKILL);  // whatever is left in its process group
      }
    }
    struct pollfd fds[3];
    int nfds = 0;
    if (out.fd[0] >= 0) fds[nfds++] = {out.fd[0], POLLIN, 0};
    if (err.fd[0] >= 0) fds[nfds++] = {err.fd[0], POLLIN, 0};
    if (in.fd[1] >= 0) fds[nfds++] = {in.fd[1], POLLOUT, 0};
    ::poll(fds, static_cast<nfds_t>(nfds), 10);
    if (out.fd[0] >= 0 && drain(out.fd[0], result.stdout_text)) out.close_end(0);
    if (err.fd[0] >= 0 && drain(err.fd[0], result.stderr_text)) err.close_end(0);
    if (in.fd[1] >= 0) {
      ssize_t n = write_without_sigpipe(in.fd[1], stdin_text.data() + stdin_written, stdin_text.size() - stdin_written);
      if (n > 0) stdin_written += static_cast<size_t>(n);
      if ((n < 0 && errno != EAGAIN && errno != EINTR) || stdin_written == stdin_text.size()) in.close_end(1);
    }
  }
  kill_all();
  cleanup.cgroup.destroy();
  result.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  if (!setup_error.empty()) {
    errno = 0;
    throw std::runtime_error("sandbox: child setup failed: " + setup_error);
  }
  const bool memory_error = result.stderr_text.find("MemoryError") != std::string::npos;
  const double cpu_used = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                          1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  if (result.timed_out) {
    result.reason = "timed out after " + format_seconds(cfg.wall_seconds) + " s (wall)";
  } else if (result.signal == SIGXCPU ||
             (result.signal == SIGKILL && cpu_used >= 0.9 * static_cast<double>(plan.cpu))) {
    result.reason = std::string("killed by ") + (result.signal == SIGXCPU ? "SIGXCPU" : "SIGKILL") + ": cpu limit " +
                    std::to_string(plan.cpu) + " s";
  } else if (result.signal == SIGXFSZ) {
    result.reason = "file size limit " + std::to_string(cfg.file_size_mb) + " MB exceeded";
  } else if (memory_error || ((result.signal == SIGKILL || result.signal == SIGSEGV || result.signal == SIGABRT) &&
                              result.stderr_text.find("alloc") != std::string::npos)) {
    result.killed_for_memory = true;
    result.reason = "memory limit " + std::to_string(cfg.memory_mb) + " MB exceeded";
  } else if (result.signal != 0) {
    result.reason = std::string("killed by signal ") + std::to_string(result.signal) + " (" +
                    ::strsignal(result.signal) + ") after " + format_seconds(cpu_used) + " s cpu";
  } else if (result.exit_code != 0) {
    std::string line = last_line(result.stderr_text);
    result.reason = "exit " + std::to_string(result.exit_code) + (line.empty() ? "" : ": " + line);
  } else {
    result.reason = "ok";
  }
  if (escaped) result.reason += " (a background process escaped the sandbox: no PID namespace)";
  if (result.output_truncated) result.reason += " (output truncated at " + std::to_string(cap) + " bytes)";
  return result;
}

double run_tests(const SandboxConfig& cfg, const std::string& code, const std::vector<std::string>& tests,
                 std::vector<TestCaseResult>* details) {
  if (details) details->clear();
  if (tests.empty()) return 0.0;
  std::random_device rd;
  int passed = 0;
  for (const auto& test : tests) {
    const std::string marker = "grpo-test-passed-" + std::to_string(rd()) + std::to_string(rd());
    // The marker is assembled at run time so it is not a literal in the program's text.
    std::string half = marker.substr(0, marker.size() / 2), rest = marker.substr(marker.size() / 2);
    std::string program = code + "\n\n" + test + "\n\nprint('" + half + "' + '" + rest + "')\n";
    SandboxResult r = run_sandboxed(cfg, program);
    TestCaseResult t;
    t.test = test;
    const std::string tail = r.stdout_text.size() > marker.size() + 2
                                 ? r.stdout_text.substr(r.stdout_text.size() - marker.size() - 2)
                                 : r.stdout_text;
    t.passed = r.ok() && tail.find(marker) != std::string::npos;
    t.reason = t.passed ? "ok" : (r.ok() ? "exited before the test finished" : r.reason);
    t.stopped = r.timed_out || r.killed_for_memory || r.signal != 0;
    passed += t.passed;
    if (details) details->push_back(std::move(t));
  }
  return static_cast<double>(passed) / static_cast<double>(tests.size());
}

std::optional<std::string> extract_code(std::string_view text) {
  std::optional<std::string> last;
  size_t pos = 0;
  for (;;) {
    size_t open = text.find("```", pos);
    if (open == std::string_view::npos) break;
    size_t line_end = text.find('\n', open + 3);
    if (line_end == std::string_view::npos) break;
    std::string_view tag = text.substr(open + 3, line_end - open - 3);
    while (!tag.empty() && (tag.back() == ' ' || tag.back() == '\r' || tag.back() == '\t')) tag.remove_suffix(1);
    while (!tag.empty() && (tag.front() == ' ' || tag.front() == '\t')) tag.remove_prefix(1);
    size_t close = text.find("```", line_end + 1);
    if (close == std::string_view::npos) break;
    // The closing fence must start a line.
    while (close != std::string_view::npos && close > 0 && text[close - 1] != '\n') close = text.find("```", close + 3);
    if (close == std::string_view::npos) break;
    if (tag.empty() || tag == "python" || tag == "py" || tag == "python3" || tag == "Python")
      last = std::string(text.substr(line_end + 1, close - line_end - 1));
    pos = close + 3;
  }
  return last;
}

}  // namespace grpo::rewards
