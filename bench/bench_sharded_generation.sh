#!/usr/bin/env bash
# Rollout time by generation layout (docs/distributed.md, run.dist.generation): train_grpo on the
# dist test fixture (a tiny DeepSeek-V3 with 8 routed experts; ctest dist_teacher_fixture makes it)
# for STEPS steps on 2 ranks, fully sharded and with experts over both ranks, each with
# generation: gathered (a whole copy per rank) and sharded (blocks gathered per forward / tokens
# exchanged per decode step, forwards paired). Prints the median gen_seconds of rank 0's metrics
# after the first step, and the tokens generated per step. One run at a time.
#   bench/bench_sharded_generation.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build}
steps=${STEPS:-6}
root=$(cd "$(dirname "$0")/.." && pwd)
model="$build/tests/dist_fixture/model"
[[ -f "$model/config.json" ]] || { echo "no $model: run ctest -R dist_teacher_fixture first" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
median() { python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
print('%.3f %.0f' % (statistics.median(r['gen_seconds'] for r in rows),
                     statistics.median(r['completion_length'] * r['generated_groups'] * 4 for r in rows)))" "$1"; }
echo "layout generation gen_seconds(median) tokens_per_step"
for layout in "sharding=full" "expert_parallel=2"; do
  for gen in gathered sharded; do
    dir="$out/${layout%%=*}_$gen"
    "$build/grpo" launch --nproc-per-node 2 --master-port 0 -- "$build/examples/train_grpo" \
      --config "$root/configs/train/grpo.yaml" --set "run.output_dir=$dir" --set "model.init=$model" \
      --set "grpo.steps=$steps" --set grpo.eval_every=0 --set eval_data.generator.count=2 --set eval.max_new_tokens=2 \
      --set grpo.generation.max_new_tokens=48 --set grpo.prompts_per_step=4 --set grpo.generation.num_generations=4 \
      --set grpo.schedule.warmup_steps=1 --set grpo.checkpoint.every_steps=0 \
      --set "run.dist.$layout" --set "run.dist.generation=$gen" > "$dir.log" 2>&1
    echo "$layout $gen $(median "$dir/metrics.jsonl")"
  done
done
