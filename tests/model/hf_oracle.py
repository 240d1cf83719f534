#!/usr/bin/env python3
"""HF transformers reference ("oracle") for the grpo model parity tests.

Independent reference: tiny randomly-initialised DeepSeek-V3 / Qwen2 / Llama
models built from configs with HF transformers (float32, CPU, eager attention).
No hub downloads.

Commands
  generate OUTDIR [--only NAME ...]
      Write one fixture folder per tiny config (see README.md for the layout).
  check DIR [--rtol 1e-5]
      Load DIR (written by the C++ side) with HF, run DIR/inputs.safetensors
      through it and compare with DIR/ours.safetensors["logits"] at valid
      positions.  Exit 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import zlib

import torch

# Keep HF quiet and offline; set before importing transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

transformers.logging.set_verbosity_error()
try:  # progress bars of save_pretrained ("Writing model shards")
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

B, T = 3, 11
PADS = (0, 3, 5)  # left padding per row
W_STD = 0.1  # linear / embedding weights and biases
NORM_STD = 0.1  # RMSNorm weights = 1 + normal(0, NORM_STD)
BIAS_STD = 0.05  # e_score_correction_bias

# --------------------------------------------------------------------------- #
# Configs
# --------------------------------------------------------------------------- #

DSV3_BASE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_attention_heads=4,
    # DeepseekV3Config defaults num_key_value_heads to 128 (not to
    # num_attention_heads!); MLA eager attention uses
    # num_attention_heads // num_key_value_heads as repeat factor, so it must
    # equal num_attention_heads.  Real DeepSeek-V3 config.json has 128 == 128.
    num_key_value_heads=4,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    n_routed_experts=8,
    num_experts_per_tok=2,
    tie_word_embeddings=False,
    num_hidden_layers=3,
    num_nextn_predict_layers=0,
)

YARN_NOQ = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 32,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
}


def _dsv3(**over):
    d = dict(DSV3_BASE)
    d.update(over)
    return ("deepseek_v3", d)


def _dsv3_default_mtp(**over):
    """Like _dsv3, but num_nextn_predict_layers is left to DeepseekV3Config's default (1)."""
    kind, d = _dsv3(**over)
    del d["num_nextn_predict_layers"]
    return (kind, d)


FIXTURES = {
    "dsv3_qlora_groups": _dsv3(
        q_lora_rank=12,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        n_shared_experts=1,
        rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "dsv3_noq_yarn": _dsv3(
        q_lora_rank=None,
        rope_parameters=dict(YARN_NOQ),
        n_group=1,
        topk_group=1,
        first_k_dense_replace=0,
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        n_shared_experts=1,
        rope_interleave=False,
    ),
    "dsv3_dense2_yarn_interleave": _dsv3(
        q_lora_rank=12,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 50000.0,
            "factor": 2.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        n_group=2,
        topk_group=1,
        first_k_dense_replace=2,
        num_hidden_layers=4,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        n_shared_experts=2,
        rope_interleave=True,
    ),
    "dsv3_grad": _dsv3(
        q_lora_rank=12,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        n_shared_experts=1,
        rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        num_hidden_layers=2,
    ),
    "dsv3_legacy_rope_keys": _dsv3(
        q_lora_rank=None,
        rope_parameters=dict(YARN_NOQ),
        n_group=1,
        topk_group=1,
        first_k_dense_replace=0,
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        n_shared_experts=1,
        rope_interleave=False,
    ),
    # A wider rope (16) so that the YaRN ramp blends frequencies, and mscale != mscale_all_dim so
    # that cos/sin carry an attention factor other than 1.
    "dsv3_yarn_wide_rope": _dsv3(
        q_lora_rank=12,
        qk_rope_head_dim=16,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 8,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 0.8,
        },
        n_group=2,
        topk_group=2,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        routed_scaling_factor=1.5,
        n_shared_experts=1,
        rope_interleave=True,
    ),
    # What transformers writes for every DeepSeek-V3 model it saves: config.json keeps the class
    # default num_nextn_predict_layers 1, but DeepseekV3ForCausalLM has no MTP module, so
    # model.safetensors holds no model.layers.{num_hidden_layers}.* tensor (generate asserts both).
    # The C++ side loads it without MTP by default (LoadOptions::missing_mtp).
    "dsv3_hf_default_mtp": _dsv3_default_mtp(
        q_lora_rank=12,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        n_shared_experts=1,
        rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "qwen2_gqa_bias": (
        "qwen2",
        dict(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
            max_position_embeddings=128,
        ),
    ),
    "llama_tied": (
        "llama",
        dict(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            tie_word_embeddings=True,
            max_position_embeddings=128,
        ),
    ),
}

LEGACY = {"dsv3_legacy_rope_keys"}
GRAD = {"dsv3_grad"}
DEFAULT_MTP = {"dsv3_hf_default_mtp"}  # num_nextn_predict_layers left at DeepseekV3Config's default

MOE_KINDS = {"deepseek_v3"}

_CLASSES = {
    "deepseek_v3": (DeepseekV3Config, DeepseekV3ForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


def build_model(name):
    kind, kw = FIXTURES[name]
    cfg_cls, model_cls = _CLASSES[kind]
    extra = {"experts_implementation": "eager"} if kind in MOE_KINDS else {}
    cfg = cfg_cls(**copy.deepcopy(kw), attn_implementation="eager", **extra)
    model = model_cls(cfg).to(torch.float32).eval()
    return model


def hf_load(d):
    """from_pretrained in float32 with eager attention and (for MoE models) the plain per-expert loop.

    transformers 5.x defaults MoE experts to `grouped_mm` (torch._grouped_mm); we ask for the "eager"
    loop, the most literal reference.  Non-MoE models refuse that argument, so retry without it.
    """
    kw = dict(dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(d, experts_implementation="eager", **kw)
    except ValueError as exc:
        if "experts implementation" not in str(exc):
            raise
        model, info = AutoModelForCausalLM.from_pretrained(d, **kw)
    return model.eval(), info


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def seed_for(name):
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@torch.no_grad()
def randomize(model, gen):
    """Fill every parameter (and e_score_correction_bias buffers) with random values."""
    norm_weights = set()
    for mname, mod in model.named_modules():
        if type(mod).__name__.endswith("RMSNorm"):
            norm_weights.add(f"{mname}.weight" if mname else "weight")
    # named_parameters() de-duplicates tied parameters (llama_tied: lm_head == embed).
    for pname, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if pname in norm_weights:
            p.copy_(1.0 + NORM_STD * noise)
        else:
            p.copy_(W_STD * noise)
    n_bias = 0
    for bname, b in model.named_buffers():
        if bname.endswith("e_score_correction_bias"):
            b.copy_(BIAS_STD * torch.randn(b.shape, generator=gen, dtype=torch.float32))
            n_bias += 1
    return n_bias


def make_inputs(vocab, gen):
    ids = torch.randint(1, vocab, (B, T), generator=gen, dtype=torch.int64)
    mask = torch.ones(B, T, dtype=torch.int64)
    for r, p in enumerate(PADS):
        mask[r, :p] = 0
    ids = ids * mask  # pad positions get id 0
    pos = (torch.cumsum(mask, dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos.to(torch.int64)}


def forward_logits(model, inputs):
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"],
        use_cache=False,
    )
    return out.logits.float()


def st_listing(path):
    res = []
    with safe_open(path, "pt") as f:
        for k in sorted(f.keys()):
            sl = f.get_slice(k)
            res.append({"name": k, "shape": list(sl.get_shape()), "dtype": sl.get_dtype()})
    return res


def rope_form(cfg_json):
    has_new = "rope_parameters" in cfg_json
    has_old = "rope_scaling" in cfg_json or "rope_theta" in cfg_json
    if has_new and not has_old:
        return "rope_parameters"
    if has_old and not has_new:
        return "legacy(rope_theta+rope_scaling)"
    return "mixed" if (has_new and has_old) else "none"


@torch.no_grad()
def routing_bias_effect(model, inputs):
    """Fraction of (layer, token) expert sets that change when the e_score_correction_bias is zeroed."""
    routers = [m for m in model.modules() if type(m).__name__ == "DeepseekV3TopkRouter"]
    if not routers:
        return None
    captured = []

    def hook(_m, _inp, out):
        captured.append(out[2].sort(dim=-1).values.clone())

    router_inputs = []
    hs = [r.register_forward_hook(hook) for r in routers]
    hs += [r.register_forward_pre_hook(lambda _m, a: router_inputs.append(a[0].detach().clone())) for r in routers]
    forward_logits(model, inputs)
    for h in hs[len(routers):]:
        h.remove()
    hs = hs[: len(routers)]
    with_bias = captured[:]
    captured.clear()
    saved = [r.e_score_correction_bias.clone() for r in routers]
    for r in routers:
        r.e_score_correction_bias.zero_()
    forward_logits(model, inputs)
    without_bias = captured[:]
    for r, s in zip(routers, saved):
        r.e_score_correction_bias.copy_(s)
    for h in hs:
        h.remove()
    valid = inputs["attention_mask"].reshape(-1).bool()
    changed = total = 0
    for a, b in zip(with_bias, without_bias):
        diff = (a != b).any(dim=-1)[valid]
        changed += int(diff.sum())
        total += int(valid.sum())
    # Decision margins (valid tokens only): how far each routing decision is from a tie.  A C++
    # implementation can only be expected to reproduce HF's expert choice where this is >> float eps.
    min_expert_gap = min_group_gap = float("inf")
    for r, x in zip(routers, router_inputs):
        x = x.reshape(-1, x.shape[-1])[valid].float()
        scores = torch.sigmoid(x @ r.weight.float().t())
        sfc = scores + r.e_score_correction_bias
        E, G, TG, K = r.num_experts, r.num_group, r.topk_group, r.top_k
        gs = sfc.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
        if TG < G:
            srt = gs.sort(dim=-1, descending=True).values
            min_group_gap = min(min_group_gap, float((srt[:, TG - 1] - srt[:, TG]).min()))
        gidx = gs.topk(TG, dim=-1)[1]
        gmask = torch.zeros_like(gs).scatter_(1, gidx, 1.0).bool()
        emask = gmask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        srt = sfc.masked_fill(~emask, float("-inf")).sort(dim=-1, descending=True).values
        min_expert_gap = min(min_expert_gap, float((srt[:, K - 1] - srt[:, K]).min()))
    return {
        "changed": changed,
        "total": total,
        "min_expert_choice_gap": min_expert_gap,
        "min_group_choice_gap": None if min_group_gap == float("inf") else min_group_gap,
    }


def check_hf_drops_mtp(name, cfg, d, saved_names):
    """The fixture must be what HF writes for DeepSeek-V3: MTP asked for in config.json, none saved.

    MTP depth k would be stored as model.layers.{num_hidden_layers + k - 1}.*; HF's model has only the
    num_hidden_layers decoder layers, so save_pretrained writes none of them.
    """
    L = cfg.num_hidden_layers
    depth = cfg.num_nextn_predict_layers
    if depth != 1:
        raise RuntimeError(f"{name}: DeepseekV3Config's default num_nextn_predict_layers is {depth}, expected 1")
    cfg_json = json.load(open(os.path.join(d, "config.json")))
    if cfg_json.get("num_nextn_predict_layers") != 1:
        raise RuntimeError(f"{name}: config.json has num_nextn_predict_layers={cfg_json.get('num_nextn_predict_layers')!r}")
    mtp_prefixes = tuple(f"model.layers.{L + k}." for k in range(depth))
    mtp_saved = sorted(n for n in saved_names if n.startswith(mtp_prefixes))
    if mtp_saved:
        raise RuntimeError(f"{name}: save_pretrained wrote MTP tensors {mtp_saved[:5]}")
    layer_ids = sorted({int(n.split(".")[2]) for n in saved_names if n.startswith("model.layers.")})
    if layer_ids != list(range(L)):
        raise RuntimeError(f"{name}: saved decoder layers {layer_ids}, expected 0..{L - 1}")
    return {
        "config_json_num_nextn_predict_layers": cfg_json["num_nextn_predict_layers"],
        "mtp_prefixes": list(mtp_prefixes),
        "mtp_tensors_saved": mtp_saved,
        "saved_layer_indices": layer_ids,
        "keys_to_ignore_on_load_unexpected": sorted(
            str(k) for k in (getattr(DeepseekV3ForCausalLM, "_keys_to_ignore_on_load_unexpected", None) or [])
        ),
    }


def fused_to_saved_grads(model, grads):
    """Convert in-memory parameter grads to the names/shapes save_pretrained writes.

    Authoritative path: put the grads into a copy of the model and let HF's own
    save_pretrained apply its (reverse) weight conversions.  Buffers are dropped.
    A hand-written conversion is computed too and must agree exactly.
    """
    gm = copy.deepcopy(model)
    with torch.no_grad():
        for pname, p in gm.named_parameters():
            p.copy_(grads[pname])
    buffer_names = {n for n, _ in gm.named_buffers()}
    with tempfile.TemporaryDirectory() as td:
        gm.save_pretrained(td, safe_serialization=True)
        saved = load_file(os.path.join(td, "model.safetensors"))
    saved = {k: v.contiguous() for k, v in saved.items() if k not in buffer_names}

    # Independent hand conversion: gate_up_proj [E, 2F, D] -> gate = [:, :F], up = [:, F:];
    # down_proj [E, D, F] -> per-expert down_proj.weight.
    manual = {}
    for pname, g in grads.items():
        if pname.endswith("mlp.experts.gate_up_proj"):
            pre = pname[: -len("gate_up_proj")]
            F = g.shape[1] // 2
            for e in range(g.shape[0]):
                manual[f"{pre}{e}.gate_proj.weight"] = g[e, :F]
                manual[f"{pre}{e}.up_proj.weight"] = g[e, F:]
        elif pname.endswith("mlp.experts.down_proj"):
            pre = pname[: -len("down_proj")]
            for e in range(g.shape[0]):
                manual[f"{pre}{e}.down_proj.weight"] = g[e]
        else:
            manual[pname] = g
    assert set(manual) == set(saved), (sorted(set(manual) ^ set(saved)))[:10]
    for k in saved:
        assert torch.equal(manual[k], saved[k]), k
    return saved


# --------------------------------------------------------------------------- #
# generate
# --------------------------------------------------------------------------- #


def generate_one(name, outdir):
    t0 = time.time()
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):  # fresh folder
        p = os.path.join(d, f)
        if os.path.isfile(p):
            os.remove(p)

    torch.manual_seed(seed_for(name))
    gen = torch.Generator().manual_seed(seed_for(name))
    model = build_model(name)
    n_bias = randomize(model, gen)
    cfg = model.config
    inputs = make_inputs(cfg.vocab_size, gen)

    model.save_pretrained(d, safe_serialization=True)
    listing = st_listing(os.path.join(d, "model.safetensors"))
    saved_names = {e["name"] for e in listing}
    bias_saved = sorted(n for n in saved_names if n.endswith("e_score_correction_bias"))
    if n_bias and len(bias_saved) != n_bias:
        raise RuntimeError(f"{name}: {n_bias} e_score_correction_bias buffers but {len(bias_saved)} saved")

    mtp_check = check_hf_drops_mtp(name, cfg, d, saved_names) if name in DEFAULT_MTP else None

    if name in LEGACY:
        cfg_path = os.path.join(d, "config.json")
        cj = json.load(open(cfg_path))
        rp = cj.pop("rope_parameters")
        cj["rope_theta"] = rp.pop("rope_theta")
        rp.pop("rope_type")
        cj["rope_scaling"] = {"type": "yarn", **rp}
        with open(cfg_path, "w") as fh:
            json.dump(cj, fh, indent=2, sort_keys=True)

    tensors = dict(inputs)
    weights = None
    if name in GRAD:
        weights = torch.randn(B, T, cfg.vocab_size, generator=gen, dtype=torch.float32)
        weights = weights * inputs["attention_mask"].to(torch.float32)[..., None]
        tensors["loss_weights"] = weights
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "inputs.safetensors"))

    # Reference logits from the in-memory model (with grads if needed).
    if name in GRAD:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = forward_logits(model, inputs)
            (logits * weights).sum().backward()
        grads = {}
        for pname, p in model.named_parameters():
            grads[pname] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        logits = logits.detach()
        saved_grads = fused_to_saved_grads(model, grads)
        missing = sorted(n for n in saved_names if n not in saved_grads and not n.endswith("e_score_correction_bias"))
        if missing:
            raise RuntimeError(f"{name}: no grad for saved tensors {missing[:5]}")
        save_file(saved_grads, os.path.join(d, "grads.safetensors"))
        zero_grad_names = sorted(k for k, v in saved_grads.items() if not bool(v.abs().max() > 0))
    else:
        with torch.no_grad():
            logits = forward_logits(model, inputs)
        zero_grad_names = None

    bias_effect = routing_bias_effect(model, inputs) if n_bias else None

    # Round trip: HF must reload the folder (incl. a rewritten config.json) and reproduce the logits.
    re_model, info = hf_load(d)
    bad = {k: sorted(map(str, v)) for k, v in info.items() if v}
    if bad:
        raise RuntimeError(f"{name}: reload reported {bad}")
    with torch.no_grad():
        re_logits = forward_logits(re_model, inputs)
    rt_diff = float((re_logits - logits).abs().max())
    if rt_diff != 0.0:
        # Bitwise equality is expected (same code, same weights); flag anything else.
        raise RuntimeError(f"{name}: reloaded model differs from in-memory model by {rt_diff}")

    valid = inputs["attention_mask"].to(torch.uint8)
    save_file({"logits": logits.contiguous(), "valid": valid}, os.path.join(d, "expected.safetensors"))

    vmask = valid.bool()
    cfg_json = json.load(open(os.path.join(d, "config.json")))
    lv = logits[vmask]
    summary = {
        "name": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "experts_implementation": getattr(model.config, "_experts_implementation", None) if n_bias else None,
        "config": cfg_json,
        "config_rope_form": rope_form(cfg_json),
        "hf_loaded_rope_parameters": re_model.config.rope_parameters,
        "saved_tensors": listing,
        "max_abs_logits": float(logits.abs().max()),
        "max_abs_logits_valid": float(lv.abs().max()),
        "std_logits_valid": float(lv.std()),
        "max_softmax_prob_valid": float(lv.softmax(-1).max()),
        "reload_max_abs_diff": rt_diff,
        "seed": seed_for(name),
        "init": {"weights_std": W_STD, "rmsnorm": f"1 + N(0,{NORM_STD})", "e_score_correction_bias_std": BIAS_STD},
        "pads_per_row": list(PADS),
    }
    if bias_effect is not None:
        summary["routing_changed_by_bias"] = bias_effect
        summary["e_score_correction_bias_saved"] = bias_saved
    if mtp_check is not None:
        summary["hf_default_mtp"] = mtp_check
    if name in GRAD:
        summary["grads_tensors"] = sorted(saved_grads)
        summary["grads_all_zero"] = zero_grad_names
        summary["grads_excluded_buffers"] = bias_saved
    with open(os.path.join(d, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)

    msg = f"[generate] {name}: max|logits|={summary['max_abs_logits_valid']:.3f} std={summary['std_logits_valid']:.3f}"
    if bias_effect is not None:
        msg += (
            f" routing changed by bias {bias_effect['changed']}/{bias_effect['total']}"
            f" min gap expert={bias_effect['min_expert_choice_gap']:.1e}"
            f" group={bias_effect['min_group_choice_gap'] if bias_effect['min_group_choice_gap'] is None else format(bias_effect['min_group_choice_gap'], '.1e')}"
        )
    if mtp_check is not None:
        msg += (
            f" config.json num_nextn_predict_layers={mtp_check['config_json_num_nextn_predict_layers']}"
            f" MTP tensors saved={len(mtp_check['mtp_tensors_saved'])}"
        )
    msg += f" rope_form={summary['config_rope_form']} ({time.time() - t0:.2f}s)"
    print(msg, flush=True)


def cmd_generate(args):
    t0 = time.time()
    names = args.only or list(FIXTURES)
    for n in names:
        if n not in FIXTURES:
            sys.exit(f"unknown fixture {n}; known: {', '.join(FIXTURES)}")
    os.makedirs(args.outdir, exist_ok=True)
    for n in names:
        generate_one(n, args.outdir)
    print(f"[generate] {len(names)} fixtures in {time.time() - t0:.1f}s -> {args.outdir}")
    return 0


# --------------------------------------------------------------------------- #
# check
# --------------------------------------------------------------------------- #


def cmd_check(args):
    rc = 0
    for d in args.dirs:
        rc = max(rc, check_one(d, args.rtol))
    return rc


def check_one(d, rtol):
    d = d.rstrip("/")
    name = os.path.basename(d)
    inputs_all = load_file(os.path.join(d, "inputs.safetensors"))
    inputs = {k: inputs_all[k].to(torch.int64) for k in ("input_ids", "attention_mask", "position_ids")}
    ours = load_file(os.path.join(d, "ours.safetensors"))["logits"].to(torch.float32)

    try:
        model, info = hf_load(d)
    except Exception as exc:  # e.g. an incomplete set of per-expert tensors makes HF's converter raise
        msg = " ".join(str(exc).split())[:300]
        print(f"[check] {name}: FAIL load raised {type(exc).__name__}: {msg}")
        return 1
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(map(str, info.get("mismatched_keys") or []))
    errors = list(info.get("error_msgs") or [])
    print(
        f"[check] {name}: load {type(model).__name__} "
        f"(experts_impl={getattr(model.config, '_experts_implementation', None)}): missing={len(missing)} unexpected={len(unexpected)} "
        f"mismatched={len(mismatched)} errors={len(errors)}"
        + (f" (unexpected e.g. {unexpected[:3]})" if unexpected else "")
    )
    if missing or mismatched or errors:
        print(f"[check] {name}: FAIL load: missing={missing[:10]} mismatched={mismatched[:10]} errors={errors[:3]}")
        return 1

    with torch.no_grad():
        hf = forward_logits(model, inputs)
    if tuple(ours.shape) != tuple(hf.shape):
        print(f"[check] {name}: FAIL shape ours={tuple(ours.shape)} hf={tuple(hf.shape)}")
        return 1
    valid = inputs["attention_mask"].bool()
    o, h = ours[valid], hf[valid]
    if not torch.isfinite(o).all():
        print(f"[check] {name}: FAIL non-finite values in ours at valid positions")
        return 1
    max_abs = float((o - h).abs().max())
    scale = float(h.abs().max())
    rel = max_abs / scale if scale > 0 else float("inf")
    ok = rel <= rtol
    print(
        f"[check] {name}: {'PASS' if ok else 'FAIL'} max_abs_diff={max_abs:.3e} scale={scale:.4f} "
        f"rel_err={rel:.3e} rtol={rtol:.1e} valid={int(valid.sum())}"
    )
    return 0 if ok else 1


def cmd_cli_check(args):
    """Compares `grpo logits` output (no mask, default positions) with HF on the same checkpoint."""
    with open(args.ids) as f:
        ids = torch.tensor(json.load(f)["input_ids"], dtype=torch.int64)
    ours = load_file(args.ours)["logits"].to(torch.float32)
    model, _ = hf_load(args.dir)
    with torch.no_grad():
        hf = model(input_ids=ids).logits.to(torch.float32)
    if tuple(ours.shape) != tuple(hf.shape):
        print(f"[cli-check] FAIL shape ours={tuple(ours.shape)} hf={tuple(hf.shape)}")
        return 1
    rel = float((ours - hf).abs().max()) / float(hf.abs().max())
    ok = rel <= args.rtol
    cls = type(model).__name__
    if args.expect_class and cls != args.expect_class:
        print(f"[cli-check] FAIL transformers loaded {cls}, expected {args.expect_class}")
        return 1
    print(f"[cli-check] {os.path.basename(args.dir.rstrip('/'))} as {cls}: {'PASS' if ok else 'FAIL'} rel_err={rel:.3e}")
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write HF reference fixtures")
    g.add_argument("outdir")
    g.add_argument("--only", nargs="*", help="subset of fixture names")
    c = sub.add_parser("check", help="compare C++ logits (DIR/ours.safetensors) with HF on DIR's checkpoint")
    c.add_argument("dirs", nargs="+")
    c.add_argument("--rtol", type=float, default=1e-5)
    k = sub.add_parser("cli-check", help="compare `grpo logits` output with HF")
    k.add_argument("dir")
    k.add_argument("ids")
    k.add_argument("ours")
    k.add_argument("--rtol", type=float, default=1e-5)
    k.add_argument("--expect-class", default="", help="fail unless transformers loads this class")
    args = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and contention on a busy box)
    if args.cmd == "generate":
        return cmd_generate(args)
    if args.cmd == "cli-check":
        return cmd_cli_check(args)
    return cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
