#!/usr/bin/env bash
# bf16 on the CPU (docs/training.md#bf16-on-the-cpu, grpo.bf16_cpu): the sampler/trainer mismatch
# and the GRPO step time in float32 and in bf16, with and without consistent mode, and with each
# sampler correction, one run after the other, for two models:
#   - main: the main job's model (the dist test fixture: a tiny DeepSeek-V3 after SFT, MoE and MLA;
#     ctest dist_teacher_fixture makes it);
#   - qwen2_40m: a random-weight Qwen2 of real shape at about 40M parameters (vocabulary 32768,
#     hidden 512, 8 layers, 8 heads / 2 KV heads, MLP 1536, tied embeddings); its vocabulary is
#     the byte tokenizer padded with named tokens so that every sampled id decodes.
# Each run: STEPS steps; times are medians after the first step, mismatch figures the worst step.
# Prints the CPU's bf16 flags first (oneDNN runs bf16 GEMMs fast only with AVX-512 BF16 or AMX).
#   bench/bench_bf16_cpu.sh [BUILD_DIR]        (MODELS="main qwen2_40m", STEPS=3)
set -euo pipefail
build=${1:-build}
steps=${STEPS:-3}
models=${MODELS:-"main qwen2_40m"}
root=$(cd "$(dirname "$0")/.." && pwd)
fixture="$build/tests/dist_fixture/model"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); bf16 flags:" \
  "$(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | xargs || true); threads: $(nproc)"

# The Qwen2 run's config: configs/train/grpo.yaml with a new model and the padded tokenizer.
python3 - "$root/configs/train/grpo.yaml" "$out/qwen2_40m.yaml" <<'EOF'
import sys
src, dst = sys.argv[1], sys.argv[2]
lines = open(src).read().split("\n")
keep, skip = [], False
for line in lines:
    if line.startswith(("model:", "tokenizer:")):
        skip = True
        continue
    if skip and (line.startswith(" ") or not line.strip()):
        continue
    skip = False
    keep.append(line)
base = ["<|endoftext|>", "<think>", "</think>", "<answer>", "</answer>"]
pad = ["<|pad%d|>" % i for i in range(32768 - 256 - len(base))]
keep += ["model:", "  init: \"\"",
         "  config: {arch: qwen2, vocab_size: 32768, hidden_size: 512, intermediate_size: 1536,",
         "           num_hidden_layers: 8, num_attention_heads: 8, num_key_value_heads: 2, qkv_bias: true,",
         "           tie_word_embeddings: true, max_position_embeddings: 512, initializer_range: 0.02,",
         "           eos_token_ids: [256]}",
         "tokenizer:", "  path: \"\"", "  special_tokens: [" + ", ".join('"%s"' % t for t in base + pad) + "]"]
open(dst, "w").write("\n".join(keep) + "\n")
EOF

summary() { python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
later = rows[1:] or rows
med = lambda k: statistics.median(r[k] for r in later)
worst = lambda k: max(r[k] for r in rows)
w = [r for r in rows if 'sampler_weight_mean' in r]
weights = ('%.3f %.3f %.3f' % (statistics.mean(r['sampler_weight_mean'] for r in w), min(r['sampler_weight_min'] for r in w),
                               max(r['sampler_weight_max'] for r in w))) if w else '- - -'
print('%.3g %.3g %.4f %.4f %.3f %s %.3f %.3f %.3f' % (worst('logprob_diff_max'), worst('logprob_diff_mean'),
      worst('logprob_diff_over_1e-1'), worst('seq_ratio_max'), statistics.mean(r['seq_ratio_mean'] for r in rows),
      weights, med('gen_seconds'), med('train_seconds'), med('step_seconds')))" "$1"; }

run() {  # run MODEL MODE
  local model=$1 mode=$2 dir="$out/$1_$2"
  local args=(--set "run.output_dir=$dir" --set "grpo.steps=$steps" --set grpo.eval_every=0
              --set eval_data.generator.count=2 --set eval.max_new_tokens=2 --set grpo.generation.max_new_tokens=48
              --set grpo.prompts_per_step=4 --set grpo.generation.num_generations=4 --set grpo.micro_batch_size=16
              --set grpo.schedule.warmup_steps=1 --set grpo.checkpoint.every_steps=0)
  if [[ $model == main ]]; then
    args=(--config "$root/configs/train/grpo.yaml" --set "model.init=$fixture" "${args[@]}")
  else
    args=(--config "$out/qwen2_40m.yaml" "${args[@]}")
  fi
  case $mode in
    fp32) ;;
    fp32_consistent) args+=(--set grpo.consistent_logprobs=true) ;;
    bf16) args+=(--set grpo.bf16_cpu=true) ;;
    bf16_consistent) args+=(--set grpo.bf16_cpu=true --set grpo.consistent_logprobs=true) ;;
    bf16_*) args+=(--set grpo.bf16_cpu=true --set "grpo.loss.sampler_correction=${mode#bf16_}") ;;
  esac
  "$build/examples/train_grpo" "${args[@]}" > "$dir.log" 2>&1 || { tail -5 "$dir.log" >&2; exit 1; }
  echo "| $model | $mode | $(summary "$dir/metrics.jsonl" | sed 's/ / | /g') |"
}

echo "| model | mode | logprob_diff_max | logprob_diff_mean | tokens > 0.1 | seq_ratio_max | seq_ratio_mean" \
     "| weight mean | weight min | weight max | gen s | train s | step s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for model in $models; do
  if [[ $model == main && ! -f "$fixture/config.json" ]]; then
    echo "no $fixture: run ctest -R dist_teacher_fixture first" >&2; exit 1
  fi
  for mode in fp32 fp32_consistent bf16 bf16_consistent bf16_token_truncate bf16_token_mask bf16_sequence_truncate \
              bf16_sequence_mask; do
    run "$model" "$mode"
  done
done
