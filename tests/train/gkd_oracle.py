#!/usr/bin/env python3
"""TRL's GKD loss as the oracle of the C++ distillation divergences (src/train/distill_loss.cpp).

Command
  generate OUTDIR
      Make fixed random student / teacher hidden states and output heads (float64, different
      widths), form their logits, and for every (beta, temperature) of a grid call TRL's own
      trl.experimental.gkd.GKDTrainer.generalized_jsd_loss (a staticmethod) on them, saving what
      it computed: the per-token divergence, the loss the trainer optimises and its gradients.
      The gtest GkdOracle (tests/train/test_distill_loss.cpp) must reproduce them with
      token_divergence_reference (from the logits) and token_divergence (chunked, from the
      hidden states and heads).

What is asked of TRL, per configuration:
  per_token  reduction="none" gives TRL's elementwise terms [B, T, V]; their sum over V is the
             divergence of each token.
  loss       labels with -100 at some positions, reduction="batchmean" (GKDTrainer's call):
             the sum over the kept tokens divided by their count.
  gradients  of that loss with respect to the student logits [B, T, V], the student hidden
             states and the student head (autograd through logits = hidden @ head^T).

OUTDIR layout
  inputs.safetensors     student_hidden [N, Ds], student_head [V, Ds], teacher_hidden [N, Dt],
                         teacher_head [V, Dt], student_logits [N, V], teacher_logits [N, V]
                         (N = B * T rows, row-major over (B, T)), labels [N] int64 (-100 = ignored)
  cases.json             [{name, beta, temperature}]
  <name>.safetensors     per_token [N], loss [], grad_logits [N, V], grad_student_hidden [N, Ds],
                         grad_student_head [V, Ds]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import trl  # noqa: E402
from trl.experimental.gkd import GKDTrainer  # noqa: E402

B, T, V = 2, 5, 37
DS, DT = 8, 12
# (beta, temperature): the end points (TRL's plain KLs), interior betas, temperatures != 1.
CASES = [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (0.1, 0.7), (0.9, 2.0), (0.5, 2.0), (0.0, 0.7), (1.0, 2.0),
         (0.3, 1.0)]


def case_name(beta: float, temperature: float) -> str:
    return f"beta{beta:g}_temp{temperature:g}"


def generate(outdir: str) -> None:
    os.makedirs(outdir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    dtype = torch.float64
    student_hidden = torch.randn(B * T, DS, generator=gen, dtype=dtype)
    student_head = torch.randn(V, DS, generator=gen, dtype=dtype) * 0.8
    teacher_hidden = torch.randn(B * T, DT, generator=gen, dtype=dtype)
    teacher_head = torch.randn(V, DT, generator=gen, dtype=dtype) * 0.8
    labels = torch.randint(2, V, (B * T,), generator=gen)
    labels[[0, 3, 7]] = -100  # ignored positions (prompt / padding in GKDTrainer)

    teacher_logits = teacher_hidden @ teacher_head.T  # [N, V]
    save_file({
        "student_hidden": student_hidden.contiguous(),
        "student_head": student_head.contiguous(),
        "teacher_hidden": teacher_hidden.contiguous(),
        "teacher_head": teacher_head.contiguous(),
        "student_logits": (student_hidden @ student_head.T).contiguous(),
        "teacher_logits": teacher_logits.contiguous(),
        "labels": labels.contiguous(),
    }, os.path.join(outdir, "inputs.safetensors"))

    cases = []
    worst_zero = 0.0
    for beta, temperature in CASES:
        name = case_name(beta, temperature)
        hidden = student_hidden.clone().requires_grad_(True)
        head = student_head.clone().requires_grad_(True)
        logits = hidden @ head.T
        logits.retain_grad()
        s3 = logits.view(B, T, V)
        t3 = teacher_logits.view(B, T, V)
        with torch.no_grad():
            per_token = GKDTrainer.generalized_jsd_loss(s3.detach(), t3, beta=beta, temperature=temperature,
                                                        reduction="none").sum(-1).reshape(-1)
            # Sanity: every divergence is 0 between equal distributions.
            same = GKDTrainer.generalized_jsd_loss(t3, t3, beta=beta, temperature=temperature, reduction="none")
            worst_zero = max(worst_zero, same.sum(-1).abs().max().item())
        loss = GKDTrainer.generalized_jsd_loss(s3, t3, labels=labels.view(B, T), beta=beta,
                                               temperature=temperature, reduction="batchmean")
        loss.backward()
        save_file({
            "per_token": per_token.contiguous(),
            "loss": loss.detach().clone(),
            "grad_logits": logits.grad.contiguous(),
            "grad_student_hidden": hidden.grad.contiguous(),
            "grad_student_head": head.grad.contiguous(),
        }, os.path.join(outdir, f"{name}.safetensors"))
        cases.append({"name": name, "beta": beta, "temperature": temperature})
        print(f"{name:22s} loss {loss.item():.12f}  per-token {per_token.min().item():.6f} .. "
              f"{per_token.max().item():.6f}")
    if worst_zero > 1e-12:
        sys.exit(f"TRL's divergence of a distribution with itself is {worst_zero}, expected 0")
    with open(os.path.join(outdir, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(f"trl {trl.__version__}, torch {torch.__version__}: {len(cases)} cases written to {outdir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the oracle files")
    g.add_argument("outdir")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.outdir)


if __name__ == "__main__":
    main()
