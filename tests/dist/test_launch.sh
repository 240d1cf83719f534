#!/usr/bin/env bash
# Tests of `grpo launch` (tools/launch.cpp) with plain shell programs as the ranks, no torch.
#   bash tests/dist/test_launch.sh PATH/TO/grpo
# Any binary whose `launch` subcommand is grpo's works as $1. Runs in a few seconds.
set -euo pipefail

GRPO=${1:?usage: test_launch.sh PATH/TO/grpo}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/grpo_launch_test.XXXXXX")
cleanup() {
  # Nothing a test started may outlive it.
  for f in "$TMP"/*.pid; do
    [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
ok() { echo "ok: $*"; }

# launch ARGS...: runs grpo launch, stdout to $TMP/out, stderr to $TMP/err, exit status in $rc.
launch() {
  rc=0
  "$GRPO" launch "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
}
expect_rc() {  # expect_rc WANT WHAT
  if [ "$rc" != "$1" ]; then
    fail "$2: exit status $rc, expected $1"
    sed 's/^/    stderr: /' "$TMP/err" >&2
    return 1
  fi
}
expect_line() {  # expect_line FILE LINE WHAT: FILE holds LINE exactly
  if ! grep -qxF -- "$2" "$1"; then
    fail "$3: no line '$2' in $(basename "$1")"
    sed 's/^/    /' "$1" >&2
    return 1
  fi
}
unset OMP_NUM_THREADS || true

# (1) The environment of each rank, and the "[rank K] " prefix.
launch --nproc-per-node 3 -- sh -c \
  'echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $NODE_RANK $MASTER_ADDR $MASTER_PORT $OMP_NUM_THREADS"'
if expect_rc 0 "env"; then
  omp=$(($(nproc) / 3))
  [ "$omp" -ge 1 ] || omp=1
  good=1
  for r in 0 1 2; do
    expect_line "$TMP/out" "[rank $r] $r 3 $r 3 0 0 127.0.0.1 29500 $omp" "env of rank $r" || good=0
  done
  [ "$(wc -l <"$TMP/out")" = 3 ] || { fail "env: expected 3 lines"; good=0; }
  [ "$good" = 1 ] && ok "RANK, WORLD_SIZE, LOCAL_RANK, ... of 3 ranks, prefixed"
fi

launch --nproc-per-node 3 --nnodes 2 --node-rank 1 --master-addr node0.example --master-port 1234 \
  sh -c 'echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $NODE_RANK $MASTER_ADDR $MASTER_PORT"'
if expect_rc 0 "node rank 1"; then
  good=1
  for l in 0 1 2; do
    r=$((3 + l))
    expect_line "$TMP/out" "[rank $r] $r 6 $l 3 1 1 node0.example 1234" "env of rank $r on node 1" || good=0
  done
  [ "$good" = 1 ] && ok "--nnodes 2 --node-rank 1: ranks 3, 4, 5 of WORLD_SIZE 6"
fi

# OMP_NUM_THREADS already set is left alone; --flag=VALUE and torchrun's spelling work.
OMP_NUM_THREADS=7 launch --nproc_per_node=2 sh -c 'echo "omp $OMP_NUM_THREADS"'
expect_rc 0 "OMP_NUM_THREADS kept" && expect_line "$TMP/out" "[rank 1] omp 7" "OMP_NUM_THREADS kept" &&
  ok "OMP_NUM_THREADS set by the caller is kept"

# --master-port 0: one free port, the same for every rank.
launch --nproc-per-node 2 --master-port 0 sh -c 'echo "port $MASTER_PORT"'
if expect_rc 0 "--master-port 0"; then
  ports=$(sed -n 's/^\[rank [01]\] port \([0-9]*\)$/\1/p' "$TMP/out" | sort -u)
  if [ "$(echo "$ports" | wc -w)" = 1 ] && [ "$ports" -gt 0 ] && [ "$ports" -lt 65536 ]; then
    ok "--master-port 0 picks port $ports for both ranks"
  else
    fail "--master-port 0: ports '$ports'"
  fi
fi

# (2) A rank exiting with status 3 stops the others (here one sleeping for a minute), fast.
start=$SECONDS
launch --nproc-per-node 2 sh -c '
  if [ "$RANK" = 1 ]; then
    while [ ! -s "'"$TMP"'/sleeper.pid" ]; do sleep 0.05; done
    echo "rank 1 gives up" >&2
    exit 3
  fi
  echo $$ > "'"$TMP"'/sleeper.pid"
  exec sleep 60'
took=$((SECONDS - start))
if expect_rc 1 "failing rank"; then
  good=1
  grep -q "^grpo launch: rank 1 (pid [0-9]*) exited with status 3; stopping the other ranks$" "$TMP/err" ||
    { fail "failing rank: no 'rank 1 ... exited with status 3; stopping' line"; good=0; }
  [ "$(tail -n 1 "$TMP/err")" = "grpo launch: failed: rank 1 exited with status 3" ] ||
    { fail "failing rank: last line '$(tail -n 1 "$TMP/err")'"; good=0; }
  # The rank's own last words come before the launcher's line about it.
  [ "$(head -n 1 "$TMP/err")" = "[rank 1] rank 1 gives up" ] || { fail "failing rank: first line"; good=0; }
  [ "$took" -le 5 ] || { fail "failing rank: took $took s"; good=0; }
  if kill -0 "$(cat "$TMP/sleeper.pid")" 2>/dev/null; then
    fail "failing rank: the sleeping rank 0 still runs"
    good=0
  fi
  [ "$good" = 1 ] && ok "rank 1 exiting with 3 stops rank 0 (in ${took} s) and is named"
fi

# (3) A rank killed by a signal.
launch --nproc-per-node 2 sh -c 'if [ "$RANK" = 1 ]; then kill -9 $$; fi; exec sleep 60'
expect_rc 1 "SIGKILL" &&
  expect_line "$TMP/err" "grpo launch: failed: rank 1 was killed by signal SIGKILL (9)" "SIGKILL" &&
  grep -q "^grpo launch: rank 1 (pid [0-9]*) was killed by signal SIGKILL (9); stopping the other ranks$" \
    "$TMP/err" && ok "a rank killed by SIGKILL is reported as such"

# A rank that ignores SIGTERM gets SIGKILL after GRPO_LAUNCH_KILL_AFTER_S.
start=$SECONDS
GRPO_LAUNCH_KILL_AFTER_S=1 launch --nproc-per-node 2 sh -c '
  if [ "$RANK" = 1 ]; then
    while [ ! -s "'"$TMP"'/stubborn.pid" ]; do sleep 0.05; done
    exit 1
  fi
  trap "" TERM
  echo $$ > "'"$TMP"'/stubborn.pid"
  sleep 60; echo "not killed"'
took=$((SECONDS - start))
if expect_rc 1 "SIGKILL after the grace period"; then
  if grep -q "^grpo launch: rank 0 (pid [0-9]*) still running 1 s after it was told to stop; sending SIGKILL$" \
    "$TMP/err" && [ "$took" -le 5 ] && ! grep -q "not killed" "$TMP/out" &&
    ! kill -0 "$(cat "$TMP/stubborn.pid")" 2>/dev/null; then
    ok "a rank ignoring SIGTERM is killed after GRPO_LAUNCH_KILL_AFTER_S (${took} s)"
  else
    fail "SIGKILL after the grace period (took $took s)"
    sed 's/^/    /' "$TMP/err" >&2
  fi
fi

# A program that cannot run.
launch --nproc-per-node 2 "$TMP/no-such-program"
expect_rc 1 "missing program" &&
  grep -q "^grpo launch: rank [01]: cannot run '$TMP/no-such-program': No such file or directory$" "$TMP/err" &&
  grep -q "^grpo launch: failed: rank [01] exited with status 127$" "$TMP/err" &&
  ok "a program that cannot run: exit status 127 of the rank, named"

# (4) SIGTERM sent to the launcher reaches every rank; the launcher exits 143.
rc=0
"$GRPO" launch --nproc-per-node 2 sh -c '
  trap "echo got > \"'"$TMP"'/term.\$RANK\"; exit 0" TERM
  echo ready > "'"$TMP"'/ready.$RANK"
  while :; do sleep 0.1; done' >"$TMP/out" 2>"$TMP/err" &
launcher=$!
echo "$launcher" >"$TMP/launcher.pid"
for _ in $(seq 100); do
  [ -e "$TMP/ready.0" ] && [ -e "$TMP/ready.1" ] && break
  sleep 0.05
done
kill -TERM "$launcher"
wait "$launcher" || rc=$?
rm -f "$TMP/launcher.pid"
if expect_rc 143 "SIGTERM"; then
  if [ -e "$TMP/term.0" ] && [ -e "$TMP/term.1" ] &&
    grep -qxF "grpo launch: got SIGTERM; sending it to the 2 running ranks" "$TMP/err"; then
    ok "SIGTERM reaches both ranks, launcher exits 143"
  else
    fail "SIGTERM: the ranks did not see it"
    sed 's/^/    /' "$TMP/err" >&2
  fi
fi

# (5) Bad command lines: exit 2, one line naming the flag and the value.
bad() {  # bad PATTERN ARGS...
  local pattern=$1
  shift
  launch "$@"
  if [ "$rc" = 2 ] && [ "$(wc -l <"$TMP/err")" = 1 ] && grep -q -- "$pattern" "$TMP/err" && [ ! -s "$TMP/out" ]; then
    ok "bad: $* -> $(cat "$TMP/err")"
  else
    fail "bad: $*: exit status $rc, stderr: $(cat "$TMP/err")"
  fi
}
bad "^grpo launch: --nproc-per-node: must be an integer in 1..1024, found '0'$" --nproc-per-node 0 true
bad "^grpo launch: --nproc-per-node: must be an integer in 1..1024, found 'x'$" --nproc-per-node x true
bad "^grpo launch: --nproc-per-node: missing value$" --nproc-per-node
bad "^grpo launch: missing PROGRAM" --nproc-per-node 2
bad "^grpo launch: missing PROGRAM" --nproc-per-node 2 --
bad "^grpo launch: missing --nproc-per-node N" true
bad "^grpo launch: unknown flag '--bogus'" --nproc-per-node 2 --bogus 1 true
bad "^grpo launch: --node-rank: must be in \[0, 2) with --nnodes 2, found 2$" --nproc-per-node 1 --nnodes 2 \
  --node-rank 2 true
bad "^grpo launch: --nnodes: must be an integer >= 1, found '0'$" --nproc-per-node 1 --nnodes 0 true
bad "^grpo launch: --master-port: must be a port number in 0..65535 (0: a free port), found '70000'$" \
  --nproc-per-node 1 --master-port 70000 true
bad "^grpo launch: --master-port 0 (a free port of this machine) needs --nnodes 1, found --nnodes 2$" \
  --nproc-per-node 1 --nnodes 2 --master-port 0 true
GRPO_LAUNCH_KILL_AFTER_S=soon bad "^grpo launch: GRPO_LAUNCH_KILL_AFTER_S: must be a number of seconds >= 0, found 'soon'$" \
  --nproc-per-node 1 true
launch --help
expect_rc 0 "--help" && grep -q "^usage: grpo launch --nproc-per-node N" "$TMP/out" && ok "--help"

# (6) A last line without a newline is printed, prefixed; (7) stderr goes to stderr, prefixed.
launch --nproc-per-node 2 sh -c 'echo "out $RANK"; echo "err $RANK" >&2; printf "partial $RANK"'
if expect_rc 0 "streams"; then
  good=1
  for r in 0 1; do
    expect_line "$TMP/out" "[rank $r] out $r" "stdout of rank $r" || good=0
    expect_line "$TMP/out" "[rank $r] partial $r" "partial line of rank $r" || good=0
    expect_line "$TMP/err" "[rank $r] err $r" "stderr of rank $r" || good=0
  done
  grep -q err "$TMP/out" && { fail "stderr lines on stdout"; good=0; }
  grep -q out "$TMP/err" && { fail "stdout lines on stderr"; good=0; }
  [ "$good" = 1 ] && ok "stdout and stderr kept apart, prefixed, partial last line printed"
fi

# --no-prefix passes the bytes through unchanged.
launch --nproc-per-node 1 --no-prefix sh -c 'printf "a\nb"; printf "e\n" >&2'
if expect_rc 0 "--no-prefix" && [ "$(cat "$TMP/out")" = "$(printf 'a\nb')" ] && [ "$(cat "$TMP/err")" = "e" ]; then
  ok "--no-prefix"
else
  fail "--no-prefix: out '$(cat "$TMP/out")' err '$(cat "$TMP/err")'"
fi

# The exit status of a rank's last command is not confused with a failure.
launch --nproc-per-node 2 -- sh -c 'true'
expect_rc 0 "all ranks exit 0" && [ ! -s "$TMP/err" ] && ok "all ranks exit 0: status 0, nothing on stderr"

if [ "$failures" != 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all launch checks passed"
