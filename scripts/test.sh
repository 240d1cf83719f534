#!/usr/bin/env bash
# The test command: set-up (idempotent), configure, build, every test with ctest, then the format
# check (scripts/format_check.sh).
# Prints a timing summary last. Extra arguments go to ctest (e.g. -R Config).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$(grpo_now)
grpo_setup_for_tests || exit 1
t1=$(grpo_now)
grpo_configure || exit 1
t2=$(grpo_now)
grpo_build || { grpo_say "build failed"; exit 1; }
t3=$(grpo_now)
(cd "$GRPO_BUILD_DIR" && ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)" "$@")
status=$?
t4=$(grpo_now)
# The sources against .clang-format (scripts/format_check.sh --fix formats them).
bash "$GRPO_ROOT/scripts/format_check.sh" || { grpo_say "format check failed"; status=1; }

echo
echo "timing: set-up $(grpo_elapsed "$t0" "$t1")s | configure $(grpo_elapsed "$t1" "$t2")s |" \
     "build $(grpo_elapsed "$t2" "$t3")s | tests $(grpo_elapsed "$t3" "$t4")s |" \
     "total $(grpo_elapsed "$t0" "$t4")s"
command -v ccache >/dev/null && ccache --print-stats 2>/dev/null |
  awk -F'\t' '/^direct_cache_hit|^preprocessed_cache_hit|^cache_miss/ {s[$1]=$2} END {
    printf "ccache: %d hits, %d misses (this cache, all time)\n", s["direct_cache_hit"]+s["preprocessed_cache_hit"], s["cache_miss"] }'
exit $status
