# Shared by scripts/*.sh: set-up of a machine for building grpo, idempotent.
#
#   GRPO_CACHE      cache folder outside the clone (default ~/.cache/grpo): the torch venv, ccache
#   GRPO_PYTHON     a python whose `import torch` gives torch 2.11 (skips the venv when set)
#   GRPO_BUILD_DIR  build folder (default <repo>/build)
#   GRPO_WITH_CUDA  AUTO | ON | OFF (default AUTO)

GRPO_TORCH_VERSION=2.11.0
GRPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GRPO_CACHE=${GRPO_CACHE:-$HOME/.cache/grpo}
GRPO_BUILD_DIR=${GRPO_BUILD_DIR:-$GRPO_ROOT/build}
GRPO_DEBIAN_PACKAGES="cmake g++ ninja-build ccache python3-venv libgloo-dev libyaml-cpp-dev nlohmann-json3-dev
  libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev libicu-dev"

grpo_now() { date +%s.%N; }
grpo_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
grpo_say() { printf '[grpo] %s\n' "$*"; }

grpo_has_torch() {  # $1: python; true when it imports torch 2.11.x
  "$1" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$GRPO_TORCH_VERSION') else 1)" \
    >/dev/null 2>&1
}

# Only the test command needs these: the format check's clang-format.
GRPO_DEBIAN_TEST_PACKAGES="clang-format-14"

grpo_setup_debian() {  # [extra packages...]
  local missing=() p
  for p in $GRPO_DEBIAN_PACKAGES "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    grpo_say "Debian packages: all present"
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    grpo_say "missing packages ${missing[*]} and no apt-get: install them by hand"; return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  local t0; t0=$(grpo_now)
  grpo_say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { grpo_say "apt-get install failed"; return 1; }
  grpo_say "Debian packages installed in $(grpo_elapsed "$t0" "$(grpo_now)")s"
}

grpo_setup_torch() {
  if [ -n "${GRPO_PYTHON:-}" ]; then
    grpo_has_torch "$GRPO_PYTHON" || { grpo_say "GRPO_PYTHON=$GRPO_PYTHON has no torch $GRPO_TORCH_VERSION"; return 1; }
    grpo_say "torch: using GRPO_PYTHON=$GRPO_PYTHON"
    return 0
  fi
  local venv="$GRPO_CACHE/torch-$GRPO_TORCH_VERSION"
  if grpo_has_torch "$venv/bin/python"; then
    GRPO_PYTHON="$venv/bin/python"
  elif command -v python3 >/dev/null && grpo_has_torch python3; then
    GRPO_PYTHON=$(command -v python3)  # a host with PyTorch preinstalled (the GPU machines)
  else
    local t0; t0=$(grpo_now)
    grpo_say "installing torch==$GRPO_TORCH_VERSION into $venv (once per machine; several GB)"
    rm -rf "$venv"
    mkdir -p "$GRPO_CACHE"
    python3 -m venv "$venv" || { grpo_say "python3 -m venv failed"; return 1; }
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$GRPO_ROOT/scripts/requirements.txt" ||
      { grpo_say "pip install failed"; return 1; }
    GRPO_PYTHON="$venv/bin/python"
    grpo_say "torch installed in $(grpo_elapsed "$t0" "$(grpo_now)")s"
  fi
  grpo_say "torch: $("$GRPO_PYTHON" -c 'import torch; print(torch.__version__)') from $GRPO_PYTHON"
  export GRPO_PYTHON
}

# The test oracles (scripts/requirements-test.txt) in the torch venv, kept in step with the file;
# only the test command needs them. A python that is not our venv (GRPO_PYTHON, a GPU host) is
# left as it is: the oracle tests then report what they miss.
grpo_setup_test_oracles() {
  local venv="$GRPO_CACHE/torch-$GRPO_TORCH_VERSION" stamp
  stamp="$venv/.requirements-test"
  [ "$GRPO_PYTHON" = "$venv/bin/python" ] || return 0
  cmp -s "$GRPO_ROOT/scripts/requirements-test.txt" "$stamp" && return 0
  local t0; t0=$(grpo_now)
  grpo_say "installing the test oracles (scripts/requirements-test.txt) into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$GRPO_ROOT/scripts/requirements-test.txt" ||
    { grpo_say "pip install of the test oracles failed"; return 1; }
  cp "$GRPO_ROOT/scripts/requirements-test.txt" "$stamp"
  grpo_say "test oracles installed in $(grpo_elapsed "$t0" "$(grpo_now)")s"
}

grpo_setup_ccache() {
  export CCACHE_DIR=${CCACHE_DIR:-$GRPO_CACHE/ccache}
  export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
  # Paths under the clone are hashed relative to it, so another clone (CI) hits the same entries.
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$GRPO_ROOT}
  export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
  # Needed for ccache to cache compilations that use precompiled headers.
  export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
}

grpo_setup() {
  grpo_setup_debian && grpo_setup_torch && grpo_setup_ccache
}

grpo_setup_for_tests() {
  grpo_setup_debian $GRPO_DEBIAN_TEST_PACKAGES && grpo_setup_torch && grpo_setup_ccache && grpo_setup_test_oracles
}

grpo_configure() {
  mkdir -p "$GRPO_BUILD_DIR"
  local log="$GRPO_BUILD_DIR/configure.log"
  cmake -S "$GRPO_ROOT" -B "$GRPO_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGRPO_PYTHON="$GRPO_PYTHON" -DGRPO_WITH_CUDA="${GRPO_WITH_CUDA:-AUTO}" "$@" >"$log" 2>&1 ||
    { cat "$log"; grpo_say "configure failed"; return 1; }
  grep -E "^-- grpo:" "$log" | sed 's/^-- /[grpo] /'
}

grpo_build() {  # [targets...]
  local jobs; jobs=$(nproc 2>/dev/null || echo 2)
  if [ $# -gt 0 ]; then
    cmake --build "$GRPO_BUILD_DIR" -j "$jobs" --target "$@"
  else
    cmake --build "$GRPO_BUILD_DIR" -j "$jobs"
  fi
}
