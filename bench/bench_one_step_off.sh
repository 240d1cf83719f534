#!/usr/bin/env bash
# One-step-off rollouts against synchronous GRPO (docs/training.md#one-step-off-rollouts):
# train_grpo on the dist test fixture (a tiny DeepSeek-V3 after SFT; ctest dist_teacher_fixture
# makes it) in one process, one run after the other.
#   1. Wall time: STEPS steps each way with generation and training of similar cost; the median
#      step_seconds after the first step, and the ratio.
#   2. Accuracy: ACC_STEPS steps each way for each of SEEDS seeds, then the final evaluation's
#      accuracy (EVAL problems, greedy). With ACC_MODEL=DIR (the main job's SFT model:
#      r1_pipeline --set 'stages=[sft]' --set run.output_dir=OUT gives OUT/sft/model), the runs are
#      the main job's GRPO stage (configs/r1_pipeline.yaml's grpo section: 16 prompts x 8, lr 1e-4,
#      ACC_STEPS default 200, EVAL 200) from that model; else short runs from the fixture.
#   bench/bench_one_step_off.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build}
steps=${STEPS:-10}
acc_steps=${ACC_STEPS:-30}
seeds=${SEEDS:-"1 2 3"}
eval_count=${EVAL:-100}
timing=${TIMING:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
model="$build/tests/dist_fixture/model"
[[ -f "$model/config.json" ]] || { echo "no $model: run ctest -R dist_teacher_fixture first" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {  # run DIR MODE STEPS SEED EVAL_COUNT
  "$build/examples/train_grpo" \
    --config "$root/configs/train/grpo.yaml" --set "run.output_dir=$1" --set "model.init=$model" \
    --set "grpo.async.mode=$2" --set "grpo.steps=$3" --set "run.seed=$4" --set grpo.eval_every=0 \
    --set "eval_data.generator.count=$5" --set grpo.generation.max_new_tokens=48 --set grpo.prompts_per_step=4 \
    --set grpo.generation.num_generations=4 --set grpo.micro_batch_size=16 --set grpo.schedule.warmup_steps=1 \
    --set grpo.checkpoint.every_steps=0 > "$1.log" 2>&1 || { cat "$1.log" >&2; exit 1; }
}
field() { python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
key = sys.argv[2]
if key == 'accuracy':  # the last evaluation
    print('%.3f' % [r for r in rows if 'eval_accuracy' in r][-1]['eval_accuracy'])
else:
    print('%.3f' % statistics.median(r[key] for r in rows[1:]))" "$1" "$2"; }
if [[ $timing == 1 ]]; then
  echo "== wall time, $steps steps"
  echo "mode step_seconds(median) gen_seconds(median) train_seconds(median)"
  for mode in off one_step_off; do
    run "$out/time_$mode" "$mode" "$steps" 1 2
    m="$out/time_$mode/metrics.jsonl"
    echo "$mode $(field "$m" step_seconds) $(field "$m" gen_seconds) $(field "$m" train_seconds)"
    eval "t_$mode=$(field "$m" step_seconds)"
  done
  python3 -c "print('ratio synchronous / one_step_off: %.2f' % ($t_off / $t_one_step_off))"
fi
main_stage() {  # main_stage DIR MODE STEPS SEED EVAL_COUNT: the main job's GRPO stage
  "$build/examples/train_grpo" \
    --config "$root/configs/train/grpo.yaml" --set "run.output_dir=$1" --set "model.init=$ACC_MODEL" \
    --set "grpo.async.mode=$2" --set "grpo.steps=$3" --set "run.seed=$4" --set "eval_data.generator.count=$5" \
    --set grpo.prompts_per_step=16 --set grpo.eval_every=50 --set grpo.router_bias_gamma=0 \
    --set grpo.optim.lr=1e-4 --set grpo.checkpoint.every_steps=0 > "$1.log" 2>&1 || { cat "$1.log" >&2; exit 1; }
}
if [[ -n ${ACC_MODEL:-} ]]; then
  acc_steps=${ACC_STEPS:-200}
  eval_count=${EVAL:-200}
fi
echo "== accuracy after $acc_steps steps ($eval_count eval problems, greedy)${ACC_MODEL:+, the GRPO stage of the main job}"
echo "seed off one_step_off step_seconds(off) step_seconds(one_step_off)"
for seed in $seeds; do
  line="$seed"
  times=""
  for mode in off one_step_off; do
    if [[ -n ${ACC_MODEL:-} ]]; then
      main_stage "$out/acc_${mode}_$seed" "$mode" "$acc_steps" "$seed" "$eval_count"
    else
      run "$out/acc_${mode}_$seed" "$mode" "$acc_steps" "$seed" "$eval_count"
    fi
    line="$line $(field "$out/acc_${mode}_$seed/metrics.jsonl" accuracy)"
    times="$times $(field "$out/acc_${mode}_$seed/metrics.jsonl" step_seconds)"
  done
  echo "$line$times"
done
