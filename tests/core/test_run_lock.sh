#!/usr/bin/env bash
# One run per folder across processes (grpo/core/run.h): while train_sft trains in a folder, a
# second train_sft on it exits 1 naming the first one's PID and leaves the folder as it was; after
# the first is killed (SIGKILL: no clean-up), the kernel has dropped its lock and a new run starts.
#   bash tests/core/test_run_lock.sh PATH/TO/train_sft SOURCE_DIR
set -uo pipefail
SFT=${1:?usage: test_run_lock.sh PATH/TO/train_sft SOURCE_DIR}
SRC=${2:?usage: test_run_lock.sh PATH/TO/train_sft SOURCE_DIR}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/grpo_run_lock.XXXXXX")
first=""
cleanup() {
  [ -n "$first" ] && kill -9 "$first" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
args=(--config "$SRC/configs/train/sft.yaml" --set "run.output_dir=$TMP/run" --set sft.eval_every=0
      --set sft.schedule.warmup_steps=2 --set data.generator.count=100 --set eval_data.generator.count=8)
OMP_NUM_THREADS=1 "$SFT" "${args[@]}" --set sft.steps=100000 > "$TMP/first.log" 2>&1 &
first=$!
for _ in $(seq 1 600); do  # up to 60 s for the first to take the lock and start
  grep -q "sft 1/" "$TMP/first.log" 2>/dev/null && break
  sleep 0.1
done
[ "$(cat "$TMP/run/.lock" 2>/dev/null)" = "$first" ] || { echo "FAIL: .lock does not hold $first"; cat "$TMP/first.log"; exit 1; }
before=$(cat "$TMP/run/config.yaml")
OMP_NUM_THREADS=1 "$SFT" "${args[@]}" --set sft.steps=3 --set run.seed=9 > "$TMP/second.log" 2>&1
rc=$?
[ $rc -eq 1 ] || { echo "FAIL: the second run exited $rc, expected 1"; cat "$TMP/second.log"; exit 1; }
grep -q "run folder '$TMP/run' is in use by another run (process $first holds $TMP/run/.lock)" "$TMP/second.log" ||
  { echo "FAIL: unexpected message"; cat "$TMP/second.log"; exit 1; }
[ "$(cat "$TMP/run/config.yaml")" = "$before" ] || { echo "FAIL: the refused run changed config.yaml"; exit 1; }
[ ! -e "$TMP/run/config.1.yaml" ] || { echo "FAIL: the refused run kept a config aside"; exit 1; }
kill -9 "$first"; wait "$first" 2>/dev/null; first=""
OMP_NUM_THREADS=1 "$SFT" "${args[@]}" --set sft.steps=3 > "$TMP/third.log" 2>&1 ||
  { echo "FAIL: a run after the holder died was refused"; cat "$TMP/third.log"; exit 1; }
echo "run lock: ok"
