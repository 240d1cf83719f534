#!/usr/bin/env bash
# The cost of consistent mode (docs/rollouts.md#consistent-mode, grpo.consistent_logprobs):
# train_grpo on the dist test fixture (a tiny DeepSeek-V3, MoE and MLA; ctest dist_teacher_fixture
# makes it) for STEPS steps in one process, with the batch-invariant ops and without, one run after
# the other. Prints the median gen_seconds and train_seconds after the first step and the largest
# logprob_diff_max over the steps.
#   bench/bench_consistent.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build}
steps=${STEPS:-6}
root=$(cd "$(dirname "$0")/.." && pwd)
model="$build/tests/dist_fixture/model"
[[ -f "$model/config.json" ]] || { echo "no $model: run ctest -R dist_teacher_fixture first" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
summary() { python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
later = rows[1:] or rows
print('%.3f %.3f %.3g' % (statistics.median(r['gen_seconds'] for r in later),
                          statistics.median(r['train_seconds'] for r in later),
                          max(r['logprob_diff_max'] for r in rows)))" "$1"; }
echo "consistent_logprobs gen_seconds(median) train_seconds(median) logprob_diff_max"
for on in false true; do
  dir="$out/consistent_$on"
  "$build/examples/train_grpo" \
    --config "$root/configs/train/grpo.yaml" --set "run.output_dir=$dir" --set "model.init=$model" \
    --set "grpo.steps=$steps" --set grpo.eval_every=0 --set eval_data.generator.count=2 --set eval.max_new_tokens=2 \
    --set grpo.generation.max_new_tokens=48 --set grpo.prompts_per_step=4 --set grpo.generation.num_generations=4 \
    --set grpo.schedule.warmup_steps=1 --set grpo.checkpoint.every_steps=0 \
    --set "grpo.consistent_logprobs=$on" > "$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
  echo "$on $(summary "$dir/metrics.jsonl")"
done
