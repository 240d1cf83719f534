#!/usr/bin/env python3
"""Greedy generation speed and peak memory: HF transformers vs grpo's rollout engine, side by side, on CPU.

Runs, one after the other, each in its own process with the same thread count (torch threads and
OMP_NUM_THREADS):
  hf:   tests/rollout/generate_oracle.py bench MODEL --batch B --prompt-len P --new-tokens N --repeats R --threads K
  grpo: BUILD/bench/grpo_bench_generate --model MODEL --batch B --prompt-len P --max-new-tokens N
                                       --repeats R --threads K
Each prints one JSON line ({"impl", "tokens_per_s", "peak_rss_mb", "seconds", ...}); both use the
prompt ids ids[i][j] = (i*7 + j*13) % (vocab - 10) + 5, no padding, exactly N new tokens per row.
Prints a table and a final JSON line with the ratios ours/hf.  Exit 1 if either side fails.

  ~/.cache/grpo/torch-2.11.0/bin/python bench/generate_vs_hf.py [--build build] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLE = os.path.join(ROOT, "tests", "rollout", "generate_oracle.py")


def run(label, cmd, env):
    print(f"[{label}] {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{label}] FAILED with exit code {proc.returncode}", file=sys.stderr)
        print(f"[{label}] stdout:\n{proc.stdout[-4000:]}", file=sys.stderr)
        print(f"[{label}] stderr:\n{proc.stderr[-4000:]}", file=sys.stderr)
        return None
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    print(f"[{label}] no JSON line on stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}", file=sys.stderr)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="build folder holding bench/grpo_bench_generate")
    ap.add_argument("--model-dir", default=None, help="HF checkpoint (default: BUILD/rollout_oracle/dsv3, generated if missing)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable, help="interpreter with torch + transformers for the HF side")
    args = ap.parse_args()

    model_dir = args.model_dir
    if model_dir is None:
        oracle_out = os.path.join(args.build, "rollout_oracle")
        model_dir = os.path.join(oracle_out, "dsv3")
        if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
            print(f"[setup] {model_dir} missing: generating it", flush=True)
            rc = subprocess.run([args.python, ORACLE, "generate", oracle_out, "--only", "dsv3"]).returncode
            if rc != 0:
                sys.exit(f"[setup] generate_oracle.py generate failed (exit {rc})")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        sys.exit(f"[setup] no config.json in {model_dir}")
    binary = os.path.join(args.build, "bench", "grpo_bench_generate")
    if not os.access(binary, os.X_OK):
        sys.exit(f"[setup] no executable {binary}; build it first (cmake --build {args.build} --target grpo_bench_generate)")

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    shape = ["--threads", str(args.threads)]

    hf = run("hf", [args.python, ORACLE, "bench", model_dir, "--batch", str(args.batch), "--prompt-len",
                    str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
             + shape, env)
    if hf is None:
        return 1
    ours = run("grpo", [binary, "--model", model_dir, "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
                        "--max-new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)] + shape, env)
    if ours is None:
        return 1
    for key in ("tokens_per_s", "peak_rss_mb"):
        if key not in ours:
            print(f"[grpo] JSON line lacks '{key}': {ours}", file=sys.stderr)
            return 1

    rows = [("hf", hf), ("grpo", ours)]
    print(f"\nmodel={os.path.basename(model_dir.rstrip('/'))} batch={args.batch} prompt_len={args.prompt_len} "
          f"new_tokens={args.new_tokens} repeats={args.repeats} threads={args.threads} "
          f"(hf attn={hf.get('attn')} experts={hf.get('experts')})")
    print(f"{'impl':<6} {'tokens/s':>10} {'seconds':>9} {'peak RSS MB':>12} {'RSS after load MB':>18} {'ratio ours/hf':>14}")
    for name, r in rows:
        ratio = r["tokens_per_s"] / hf["tokens_per_s"]
        before = r.get("rss_before_mb")
        print(f"{name:<6} {r['tokens_per_s']:>10.1f} {r.get('seconds', float('nan')):>9.4f} {r['peak_rss_mb']:>12.1f} "
              f"{before if before is not None else float('nan'):>18.1f} {ratio:>14.2f}")
    summary = {
        "bench": "generate_vs_hf",
        "model": os.path.basename(model_dir.rstrip("/")),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "hf_tokens_per_s": hf["tokens_per_s"],
        "grpo_tokens_per_s": ours["tokens_per_s"],
        "speed_ratio_ours_over_hf": ours["tokens_per_s"] / hf["tokens_per_s"],
        "hf_peak_rss_mb": hf["peak_rss_mb"],
        "grpo_peak_rss_mb": ours["peak_rss_mb"],
        "rss_ratio_ours_over_hf": ours["peak_rss_mb"] / hf["peak_rss_mb"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
