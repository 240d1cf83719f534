#!/usr/bin/env bash
# Training step time per rank count: train_sft on configs/train/sft.yaml (global batch 16) for
# STEPS steps on 1, 2, ... ranks (sharding none, optimizer = ZeRO-1, full = FSDP), the median step_seconds of rank 0's metrics
# after 5 warm-up steps. One run at a time (ranks share the machine's cores: each gets cores / N).
#   bench/bench_dp_steps.sh [BUILD_DIR] [RANKS...]      e.g. bench/bench_dp_steps.sh build 1 2
set -euo pipefail
build=${1:-build}
shift || true
ranks=("${@:-1 2}")
[[ $# -eq 0 ]] && ranks=(1 2)
steps=${STEPS:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
median() { python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][5:]
print('%.4f' % statistics.median(r['step_seconds'] for r in rows))" "$1"; }
echo "ranks sharding step_seconds(median)"
for n in "${ranks[@]}"; do
  for z in none optimizer full; do
    [[ $n -eq 1 && $z != none ]] && continue
    dir="$out/r${n}_$z"
    args=(--config "$root/configs/train/sft.yaml" --set "run.output_dir=$dir" --set "sft.steps=$steps"
          --set sft.eval_every=0 --set sft.checkpoint.every_steps=0 --set eval_data.generator.count=2
          --set eval.max_new_tokens=2 --set "run.dist.sharding=$z" --set sft.schedule.warmup_steps=1)
    if [[ $n -eq 1 ]]; then
      OMP_NUM_THREADS=$(nproc) "$build/examples/train_sft" "${args[@]}" > "$dir.log" 2>&1
    else
      "$build/grpo" launch --nproc-per-node "$n" --master-port 0 -- "$build/examples/train_sft" "${args[@]}" > "$dir.log" 2>&1
    fi
    echo "$n $z $(median "$dir/metrics.jsonl")"
  done
done
