#!/usr/bin/env python3
"""TRL's GRPOTrainer as the oracle of the C++ GRPO loss (tests/train/test_trl_parity.cpp).

Command
  generate OUTDIR [--only NAME ...]
      Save a tiny random Qwen2 (HF format, float32) and a fixed batch, then for every
      configuration of the grid build a real trl.GRPOTrainer on that model and run its
      training step(s), saving what TRL computed: advantages, old/ref log-probs, the loss
      and the gradient of every parameter.

How TRL is driven.  Everything is TRL's own code except the sampling: the trainer's
`_generate_single_turn` (the narrowest step: it turns tokenized prompts into completion
ids) is replaced by a function returning our fixed completions.  Prompt tokenization,
padding, masks, the reward functions (two lookup functions, weighted 1.0 and 0.5 through
GRPOConfig.reward_weights), advantages, old and reference log-probs (TRL's reference model,
loaded by TRL from the same folder), the fused log-prob head, the loss and backward are
TRL's.  We call `trainer.training_step` as the Trainer loop does (gradient accumulation 1;
the loop's `current_gradient_accumulation_steps = 1` is set by hand).  num_iterations = 2:
step 0 generates (TRL then computes old log-probs, as GA 1 is not a multiple of 2),
backward, one optimizer step (TRL's own AdamW from create_optimizer), then step 1 reuses the
buffered batch: that second evaluation's loss and gradients are saved, with the weights it
ran on.

OUTDIR layout
  model/                      the initial policy = TRL's reference (config.json, model.safetensors)
  batch.safetensors           prompt_ids [N,P] (left padded), prompt_mask, completion_ids [N,L]
                              (right padded), completion_mask, rewards_per_func [N,2],
                              reward_weights [2], group_size []
  configs.json                [{name, loss_type, scale_rewards, importance_sampling_level, beta,
                              num_iterations, epsilon, epsilon_high, delta, temperature,
                              use_bias_correction_kl, max_completion_length[, sampler_correction,
                              sampler_clip_min, sampler_clip_max]}]
  <name>/trl.safetensors      advantages [N] (group order), old_logps / ref_logps [N,L] when TRL
                              made them, sampler_logps [N,L] and sampler_weight ([N,L] or [N,1],
                              TRL's importance_sampling_ratio) with the sampler correction, logps [N,L] (current policy, TRL's fused head), loss [],
                              num_items_in_batch [], grad.<hf name> for every parameter
  <name>/policy/              the weights the loss ran on, when they differ from model/
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_USE_CPU", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import trl  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")
for _name in ("trl", "accelerate", "datasets"):
    logging.getLogger(_name).setLevel(logging.ERROR)

VOCAB = 64
PAD, EOS = 0, 1
G = 4
# Prompts as words w2..w63 (one token each); lengths differ so that TRL left-pads.
PROMPTS = ["w5 w9 w3", "w7 w2 w11 w4 w6", "w20 w21"]
# Completions, group-contiguous (G per prompt); different lengths, some end in EOS (1).
COMPLETIONS = [
    [12, 13, 14, 15, 16, 17],
    [18, 19, EOS],
    [22, 23, 24, 25, 26],
    [27, EOS],
    [30, 31, 32, EOS],
    [33, 34, 35, 36, 37, 38],
    [EOS],
    [40, 41, 42],
    [43, 44, 45, 46, EOS],
    [47, 48],
    [49, 50, 51, 52, 53, 54],
    [55, EOS],
]
# Two reward functions (weights 1.0 and 0.5). Group 3's weighted sums are all equal (zero std).
REWARD_A = [1.0, 0.0, 0.5, 1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
REWARD_B = [0.0, 1.0, 0.2, -1.0, 1.0, 0.0, 0.5, 3.0, 0.5, 0.5, 0.5, 0.5]
REWARD_WEIGHTS = [1.0, 0.5]
MAX_COMPLETION_LENGTH = 8  # dr_grpo's normaliser (longer than any completion)

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
SCALES = ["group", "batch", "none"]
LEVELS = ["token", "sequence"]
BETAS = [0.0, 0.04]
ITERATIONS = [1, 2]


def grid():
    """loss_type x importance_sampling_level x beta x num_iterations in full (32); scale_rewards
    cycles through its 3 values over them (each value 10-11 times, each with every loss type);
    half of the num_iterations=2 configurations (alternating with beta and loss type) use clip-higher
    (epsilon_high 0.28) and delta 1.5; bnpo and dr_grpo with token level and beta > 0 turn
    use_bias_correction_kl off (TRL's default is on); a third of the configurations use temperature 0.7."""
    out = []
    i = 0
    for loss_type in LOSS_TYPES:
        for level in LEVELS:
            for beta in BETAS:
                for iters in ITERATIONS:
                    scale = SCALES[i % 3]
                    extra = iters == 2 and ((i // 2) + (i // 8)) % 2 == 1
                    bias_kl = not (beta > 0 and loss_type in ("bnpo", "dr_grpo") and level == "token")
                    temperature = 0.7 if i % 3 == 1 else 1.0
                    name = (f"{loss_type}_{scale}_{level}_b{beta:g}_it{iters}" + ("_clip" if extra else "")
                            + ("" if bias_kl else "_nobiaskl"))
                    out.append(dict(name=name, loss_type=loss_type, scale_rewards=scale,
                                    importance_sampling_level=level, beta=beta, num_iterations=iters,
                                    epsilon=0.2, epsilon_high=0.28 if extra else None,
                                    delta=1.5 if extra else None, temperature=temperature,
                                    use_bias_correction_kl=bias_kl,
                                    max_completion_length=MAX_COMPLETION_LENGTH))
                    i += 1
    return out


# The sampler correction (TRL's vllm_importance_sampling_correction): TRL applies it only with vLLM,
# so those configurations set trainer.use_vllm after construction (everything vLLM-specific sits in
# the constructor and in _generate_single_turn, which is replaced) and the replaced sampling returns
# per-token sampling log-probs: the initial policy's, moved by a fixed pattern of up to +-0.6, so
# that token weights spread over about [0.55, 1.8] and sequence weights beyond the clip bounds.
SAMPLER_MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def sampler_grid():
    out = []
    for k, mode in enumerate(SAMPLER_MODES):
        for j, (loss_type, level, beta, iters) in enumerate(
                [("grpo", "token", 0.04, 1), ("dapo", "sequence", 0.0, 2), ("bnpo", "token", 0.0, 2)]):
            clip_min = 0.8 if (k + j) % 2 == 0 else None
            clip_max = 2.0 if j == 1 else 3.0
            name = f"is_{mode}_{loss_type}_{level}_b{beta:g}_it{iters}" + ("_min" if clip_min else "")
            out.append(dict(name=name, loss_type=loss_type, scale_rewards="group", importance_sampling_level=level,
                            beta=beta, num_iterations=iters, epsilon=0.2, epsilon_high=None, delta=None,
                            temperature=1.0 if j != 2 else 0.7, use_bias_correction_kl=True,
                            max_completion_length=MAX_COMPLETION_LENGTH, sampler_correction=mode,
                            sampler_clip_min=clip_min, sampler_clip_max=clip_max))
    return out


def sampling_logps(model, prompt_ids, prompt_mask, completion_ids, temperature):
    """The model's per-token log-probs of the completions, moved by the fixed pattern (lists, unpadded)."""
    with torch.no_grad():
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, (completion_ids != PAD).long()], 1)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt_ids.size(1) - 1:-1] / temperature
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    out = []
    for i, c in enumerate(COMPLETIONS):
        out.append([float(logps[i, t]) + 0.6 * math.sin(1.7 * i + 2.3 * t) for t in range(len(c))])
    return out


def build_tokenizer():
    vocab = {"<pad>": PAD, "<eos>": EOS}
    vocab.update({f"w{i}": i for i in range(2, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def build_model(gen):
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=EOS,
                      pad_token_id=PAD, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.copy_(1.0 + 0.1 * noise if pname.endswith("norm.weight") else 0.3 * noise)
    return model


def reward_lookup(values):
    table = {tuple(c): v for c, v in zip(COMPLETIONS, values, strict=True)}
    assert len(table) == len(COMPLETIONS), "completions must be unique for the reward lookup"

    def reward(prompts, completions, completion_ids, **kwargs):
        return [table[tuple(ids)] for ids in completion_ids]

    return reward


def reward_a(prompts, completions, completion_ids, **kwargs):
    return _A(prompts, completions, completion_ids, **kwargs)


def reward_b(prompts, completions, completion_ids, **kwargs):
    return _B(prompts, completions, completion_ids, **kwargs)


_A = reward_lookup(REWARD_A)
_B = reward_lookup(REWARD_B)


def run_config(cfg, model_dir, tokenizer, work, expected_prompt_ids, sampler_logps=None):
    correction = cfg.get("sampler_correction", "none") != "none"
    is_kwargs = {}
    if correction:
        is_kwargs = dict(vllm_importance_sampling_correction=True,
                         vllm_importance_sampling_mode=cfg["sampler_correction"],
                         vllm_importance_sampling_clip_min=cfg["sampler_clip_min"],
                         vllm_importance_sampling_clip_max=cfg["sampler_clip_max"])
    args = GRPOConfig(
        output_dir=os.path.join(work, cfg["name"]), report_to="none", use_cpu=True, seed=0,
        per_device_train_batch_size=len(COMPLETIONS), num_generations=G, gradient_accumulation_steps=1,
        max_completion_length=cfg["max_completion_length"], temperature=cfg["temperature"],
        loss_type=cfg["loss_type"], scale_rewards=cfg["scale_rewards"],
        importance_sampling_level=cfg["importance_sampling_level"], beta=cfg["beta"],
        num_iterations=cfg["num_iterations"], epsilon=cfg["epsilon"], epsilon_high=cfg["epsilon_high"],
        delta=cfg["delta"], use_bias_correction_kl=cfg["use_bias_correction_kl"], reward_weights=REWARD_WEIGHTS, learning_rate=1e-3, max_steps=cfg["num_iterations"],
        save_strategy="no", logging_steps=1, bf16=False, fp16=False, dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32", "attn_implementation": "eager"}, **is_kwargs)
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = GRPOTrainer(model=model_dir, reward_funcs=[reward_a, reward_b], args=args,
                          train_dataset=dataset, processing_class=tokenizer)

    # The one replaced step: sampling returns our fixed completions, row by row.
    def fixed_generation(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        assert [list(p) for p in prompt_ids] == expected_prompt_ids, prompt_ids
        return [list(c) for c in COMPLETIONS], (sampler_logps[cfg["name"]] if correction else None)

    trainer._generate_single_turn = fixed_generation
    if correction:
        trainer.use_vllm = True  # only the loss's vLLM branches: sampling is replaced above
    scored = {}
    original_score = trainer._generate_and_score_completions

    def keep_scored(inputs):
        out = original_score(inputs)
        scored.update(out)  # group order, before TRL shuffles the rows
        return out

    trainer._generate_and_score_completions = keep_scored
    captured = {}
    original_logps = trainer._get_per_token_logps_and_entropies

    def keep_logps(model, *a, **kw):
        out = original_logps(model, *a, **kw)
        if torch.is_grad_enabled():
            captured["logps"] = out[0].detach().clone()
            captured["completion_ids"] = a[0][:, -a[2]:].clone()  # to undo TRL's row shuffle
        return out

    trainer._get_per_token_logps_and_entropies = keep_logps
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets with GA 1
    model = trainer.model
    # The generation batch as the RepeatSampler yields it: each prompt G times, in order.
    batch = [{"prompt": p} for p in PROMPTS for _ in range(G)]
    if cfg["num_iterations"] == 2:
        trainer.create_optimizer()
        trainer.training_step(model, batch, None)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    loss = trainer.training_step(model, batch, None)

    # Rows of the captured logps in group order (TRL shuffled them; completions are unique).
    order = []
    comp = scored["completion_ids"]
    for row in captured["completion_ids"]:
        order.append(next(i for i in range(comp.size(0)) if torch.equal(comp[i], row)))
    logps = torch.empty_like(captured["logps"])
    logps[torch.tensor(order)] = captured["logps"]

    tensors = {
        "advantages": scored["advantages"].detach().float(),
        "loss": loss.detach().float().reshape(()),
        "num_items_in_batch": scored["num_items_in_batch"].detach().float().reshape(()),
        "logps": logps,
        "prompt_ids": scored["prompt_ids"].long(),
        "completion_ids": scored["completion_ids"].long(),
        "completion_mask": scored["completion_mask"].long(),
    }
    for key, name in [("old_per_token_logps", "old_logps"), ("ref_per_token_logps", "ref_logps"),
                      ("sampling_per_token_logps", "sampler_logps"), ("importance_sampling_ratio", "sampler_weight")]:
        if scored.get(key) is not None:
            tensors[name] = scored[key].detach().float()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        tensors["grad." + pname] = p.grad.detach().float().contiguous()
    outdir = os.path.join(work, cfg["name"])  # GRPOConfig's output_dir: TRL writes nothing there
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(outdir, "trl.safetensors"))
    if cfg["num_iterations"] == 2:
        model.save_pretrained(os.path.join(outdir, "policy"), safe_serialization=True)
    return float(loss)


def generate(outdir, only):
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.makedirs(outdir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    tokenizer = build_tokenizer()
    model_dir = os.path.join(outdir, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    model = build_model(gen)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)

    expected_prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(G)]
    P = max(len(p) for p in expected_prompt_ids)
    L = max(len(c) for c in COMPLETIONS)
    N = len(COMPLETIONS)
    prompt_ids = torch.full((N, P), PAD, dtype=torch.long)
    prompt_mask = torch.zeros((N, P), dtype=torch.long)
    completion_ids = torch.full((N, L), PAD, dtype=torch.long)
    completion_mask = torch.zeros((N, L), dtype=torch.long)
    for i, (p, c) in enumerate(zip(expected_prompt_ids, COMPLETIONS, strict=True)):
        prompt_ids[i, P - len(p):] = torch.tensor(p)
        prompt_mask[i, P - len(p):] = 1
        completion_ids[i, :len(c)] = torch.tensor(c)
        completion_mask[i, :len(c)] = 1
    save_file({"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
               "completion_mask": completion_mask,
               "rewards_per_func": torch.tensor([REWARD_A, REWARD_B], dtype=torch.float32).T.contiguous(),
               "reward_weights": torch.tensor(REWARD_WEIGHTS, dtype=torch.float32),
               "group_size": torch.tensor(G, dtype=torch.long)}, os.path.join(outdir, "batch.safetensors"))

    configs = [c for c in grid() + sampler_grid() if not only or c["name"] in only]
    sampler = {}
    for cfg in configs:
        if cfg.get("sampler_correction", "none") != "none":
            sampler[cfg["name"]] = sampling_logps(model, prompt_ids, prompt_mask, completion_ids, cfg["temperature"])
    with open(os.path.join(outdir, "configs.json"), "w") as f:
        json.dump(configs, f, indent=1)
    t0 = time.time()
    for cfg in configs:
        t = time.time()
        loss = run_config(cfg, model_dir, tokenizer, outdir, expected_prompt_ids, sampler)
        print(f"{cfg['name']:<44} loss {loss:+.6e}  {time.time() - t:.2f}s", flush=True)
    print(f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}: "
          f"{len(configs)} configurations in {time.time() - t0:.1f}s -> {outdir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("outdir")
    g.add_argument("--only", nargs="*", default=[])
    a = ap.parse_args()
    if a.cmd == "generate":
        generate(a.outdir, a.only)


if __name__ == "__main__":
    sys.exit(main())
