"""Plan before you queue: what a recipe will do (steps, tokens, batch) and whether it fits.

`training_plan` counts from the tokenized data; `estimate_memory` (below) works from a model's
config.json alone, without weights.
"""

from __future__ import annotations

import math
from typing import Any


def training_plan(recipe, n_conversations: int, n_tokens: int, n_trained_tokens: int) -> dict[str, Any]:
    """World size, effective batch, optimizer steps and tokens for a recipe and a tokenized dataset."""
    sft = recipe.sft
    world = recipe.world_size
    micro = int(sft.get("per_device_train_batch_size", 8))
    accum = int(sft.get("gradient_accumulation_steps", 1))
    epochs = float(sft.get("num_train_epochs", 1))
    effective = micro * accum * world
    steps_per_epoch = math.ceil(n_conversations / effective)
    steps = int(sft["max_steps"]) if sft.get("max_steps", -1) > 0 else math.ceil(steps_per_epoch * epochs)
    return {
        "world_size": world,
        "nodes": recipe.kit["nnodes"],
        "processes_per_node": recipe.kit["nproc_per_node"],
        "micro_batch": micro,
        "gradient_accumulation": accum,
        "effective_batch": effective,
        "conversations": n_conversations,
        "steps_per_epoch": steps_per_epoch,
        "optimizer_steps": steps,
        "tokens_per_epoch": n_tokens,
        "trained_tokens_per_epoch": n_trained_tokens,
        "tokens_total": int(n_tokens * epochs),
    }


def format_plan(plan: dict[str, Any]) -> str:
    width = max(map(len, plan))
    return "\n".join(
        f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}" for k, v in plan.items()
    )


# ----------------------------------------------------------------------------- memory and time
# Formulas (per GPU, bytes). N = parameters, T = trainable parameters, W = world size (GPUs).
#   weights     N * b_w                      b_w: 2 (bf16/fp16), 4 (fp32), ~0.55 (QLoRA nf4 + scales)
#   gradients   T * b_g                      b_g = 2 in bf16 mixed precision (4 in fp32)
#   optimizer   T * b_o                      AdamW mixed precision: fp32 master copy 4 + m 4 + v 4 = 12,
#                                            + 4 for DeepSpeed's fp32 gradient accumulation buffer (bf16)
#                                            (pure fp32: m + v = 8; 8-bit AdamW: 2)
#   sharding    ZeRO-1 divides optimizer by W, ZeRO-2 also gradients, ZeRO-3 / FSDP full_shard also weights
#               (ZeRO-3 then gathers a few layers at a time: + 2 layers of 16-bit weights)
#   activations tokens = micro_batch * seq_len per GPU; per layer and token about 34*h bytes in 16 bits
#               (Korthikanti et al. 2022, flash/sdpa attention: no s^2 term). With activation checkpointing
#               only each layer's input is kept (2*h bytes per layer and token) plus one layer recomputed.
#   logits      tokens * vocab * 6 bytes (16-bit logits + their fp32 copy in the loss)
#   overhead    2 GiB per GPU: CUDA/ROCm context, NCCL/RCCL buffers, allocator fragmentation
# Time: FLOPs per token = 6 N for full fine-tuning (2 N forward + 4 N backward), 4 N for LoRA (no weight
# gradients for the frozen base), + 2 N with activation checkpointing (the forward is recomputed).
# Seconds = FLOPs / (GPUs * peak FLOP/s * MFU).

GiB = 2**30
PEAK_TFLOPS = {"mi250x-gcd": 191.5, "mi300x": 1307.0, "h100": 989.0, "a100": 312.0, "cpu": 0.5}
GATED_MLP = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "cohere",
    "internlm2",
    "deepseek_v2",
    "starcoder2_gated",
    "yi",
}


class PlanError(ValueError):
    """The planner cannot read what it needs: names the file and the missing fields."""


def _field(cfg: dict, names: tuple[str, ...], source: str, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    if default is not None:
        return default
    raise PlanError(
        f"{source}: none of the fields {', '.join(names)} is set: the planner cannot tell the model's "
        f"size. Add it to the config, or plan with a config of the same architecture."
    )


def read_config(model_or_path) -> dict:
    """config.json of a local model folder (or a path to the file, or a dict); no weights needed."""
    import json
    from pathlib import Path

    if isinstance(model_or_path, dict):
        return dict(model_or_path, _source="config")
    from .model import resolve_model

    p = Path(model_or_path)
    if not p.exists() and str(model_or_path) == "tiny":
        p = Path(resolve_model("tiny"))
    path = p / "config.json" if p.is_dir() else p
    if not path.exists():
        try:  # a hub id: only its config is fetched (works offline when cached)
            from transformers import AutoConfig

            return dict(AutoConfig.from_pretrained(str(model_or_path)).to_dict(), _source=str(model_or_path))
        except Exception as e:
            raise PlanError(
                f"{path}: no config.json (and {model_or_path!r} could not be loaded as a hub id: "
                f"{type(e).__name__}). Give a model folder or its config.json."
            ) from None
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return dict(cfg.get("text_config", cfg), _source=str(path))


def count_parameters(cfg: dict) -> dict[str, int]:
    """Parameter counts from the config alone: embeddings, per layer (attention, MLP), total."""
    src = cfg.get("_source", "config")
    h = int(_field(cfg, ("hidden_size", "n_embd", "d_model"), src))
    layers = int(_field(cfg, ("num_hidden_layers", "n_layer", "num_layers"), src))
    heads = int(_field(cfg, ("num_attention_heads", "n_head", "num_heads"), src))
    vocab = int(_field(cfg, ("vocab_size",), src))
    kv = int(
        cfg.get("num_key_value_heads")
        or cfg.get("num_kv_heads")
        or cfg.get("multi_query_group_num")
        or (1 if cfg.get("multi_query") else heads)
    )
    head_dim = int(cfg.get("head_dim") or h // heads)
    inter = int(_field(cfg, ("intermediate_size", "n_inner", "ffn_hidden_size"), src, default=4 * h))
    model_type = str(cfg.get("model_type", ""))
    gated = (
        model_type in GATED_MLP
        or cfg.get("hidden_act") in ("silu", "swiglu", "gelu_pytorch_tanh")
        and model_type != "bloom"
    )
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = (3 if gated else 2) * h * inter * experts
    per_layer = attn + mlp + 2 * h
    embed = vocab * h
    tied = cfg.get("tie_word_embeddings", model_type in ("bloom", "gpt2"))
    total = embed + (0 if tied else vocab * h) + layers * per_layer + h
    return {
        "total": total,
        "embedding": embed,
        "per_layer": per_layer,
        "attention": attn,
        "mlp": mlp,
        "layers": layers,
        "hidden": h,
        "vocab": vocab,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
        "intermediate": inter,
        "gated": gated,
    }


def lora_parameters(counts: dict, r: int = 16) -> int:
    """LoRA on all linear layers: r * (in + out) per matrix."""
    h, kvd, inter = counts["hidden"], counts["kv_heads"] * counts["head_dim"], counts["intermediate"]
    qd = counts["heads"] * counts["head_dim"]
    attn = r * ((h + qd) + 2 * (h + kvd) + (qd + h))
    mlp = r * (h + inter) * (3 if counts["gated"] else 2)
    return counts["layers"] * (attn + mlp)


def estimate_memory(
    cfg: dict,
    method: str = "full",
    precision: str = "bf16",
    optimizer: str = "adamw",
    strategy: str = "ddp",
    seq_len: int = 2048,
    micro_batch: int = 1,
    activation_checkpointing: bool = True,
    world_size: int = 1,
    lora_r: int = 16,
    deepspeed: bool | None = None,
) -> dict[str, float]:
    """Per-GPU memory in GiB split into weights, gradients, optimizer states, activations, overhead."""
    c = count_parameters(cfg)
    n = c["total"]
    trainable = n if method == "full" else lora_parameters(c, lora_r)
    b_w = {"bf16": 2, "fp16": 2, "fp32": 4}[precision]
    if method == "qlora":
        b_w = 0.55
    b_g = 4 if precision == "fp32" else 2
    if optimizer == "adamw_8bit":
        b_o = 2
    elif precision == "fp32":
        b_o = 8
    else:
        ds = strategy in ("zero2", "zero3") if deepspeed is None else deepspeed
        b_o = 12 + (4 if ds else 0)
    if method != "full":
        b_g, b_o = 4, 8  # the adapter trains in fp32 with fp32 Adam states
    weights, grads, opt = n * b_w, trainable * b_g, trainable * b_o
    w = max(world_size, 1)
    if strategy in ("zero1", "zero2", "zero3", "fsdp"):
        opt /= w
    if strategy in ("zero2", "zero3", "fsdp"):
        grads /= w
    if strategy in ("zero3", "fsdp") and method == "full":
        weights = weights / w + 2 * c["per_layer"] * 2  # two layers gathered at a time
    tokens = seq_len * micro_batch
    h = c["hidden"]
    if activation_checkpointing:
        act = c["layers"] * tokens * 2 * h + tokens * 34 * h
    else:
        act = c["layers"] * tokens * 34 * h
    act += tokens * c["vocab"] * 6
    out = {"weights": weights, "gradients": grads, "optimizer": opt, "activations": act, "overhead": 2 * GiB}
    out = {k: v / GiB for k, v in out.items()}
    out["total"] = sum(out.values())
    out["parameters"] = n
    out["trainable"] = trainable
    return out


def flops_per_token(n_params: int, method: str = "full", activation_checkpointing: bool = True) -> float:
    return (6 if method == "full" else 4) * n_params + (2 * n_params if activation_checkpointing else 0)


def plan_nodes(
    cfg: dict,
    gpu_memory_gb: float,
    gpus_per_node: int = 8,
    max_nodes: int = 64,
    headroom: float = 0.9,
    comfortable: float = 0.7,
    **kw,
) -> dict:
    """Smallest node count whose per-GPU estimate fits (<= 90% of memory), and the smallest with room to spare
    (<= 70%: allocator fragmentation, collective buffers, a longer batch than planned)."""
    fits = comfy = None
    rows = []
    for nodes in range(1, max_nodes + 1):
        est = estimate_memory(cfg, world_size=nodes * gpus_per_node, **kw)
        rows.append((nodes, est["total"]))
        if fits is None and est["total"] <= headroom * gpu_memory_gb:
            fits = nodes
        if comfy is None and est["total"] <= comfortable * gpu_memory_gb:
            comfy = nodes
            break
        if kw.get("strategy", "ddp") in ("ddp",) and nodes == 1:
            break  # DDP replicates everything: more nodes never fit more
    return {"min_nodes": fits, "comfortable_nodes": comfy, "per_node_count": rows}


def time_per_epoch(
    n_params: int,
    tokens: int,
    gpus: int,
    peak_tflops: float,
    mfu: float = 0.35,
    method: str = "full",
    activation_checkpointing: bool = True,
) -> float:
    """Seconds for one epoch of `tokens` tokens."""
    return (
        flops_per_token(n_params, method, activation_checkpointing)
        * tokens
        / (gpus * peak_tflops * 1e12 * mfu)
    )


def plan_recipe(
    recipe,
    gpu_memory_gb: float | None = None,
    gpus_per_node: int | None = None,
    peak_tflops: float | None = None,
    mfu: float = 0.35,
    tokens: int | None = None,
) -> dict:
    """Memory and time for a recipe: from its model's config.json only."""
    cfg = read_config(recipe.kit["model"])
    gpus = gpus_per_node or recipe.kit["nproc_per_node"]
    world = gpus * recipe.kit["nnodes"]
    strategy = recipe.kit["distributed"]
    precision = "fp32" if recipe.sft.get("bf16") is False else "bf16"
    kw = dict(
        method=recipe.kit["method"],
        precision=precision,
        strategy=strategy,
        seq_len=int(recipe.sft.get("max_length") or 2048),
        micro_batch=int(recipe.sft.get("per_device_train_batch_size", 1)),
        activation_checkpointing=bool(
            recipe.sft.get("activation_checkpointing", recipe.sft.get("gradient_checkpointing", True))
        ),
        lora_r=int(recipe.lora.get("r", 16)),
    )
    mem = estimate_memory(cfg, world_size=world, **kw)
    out: dict[str, Any] = {
        "model": recipe.kit["model"],
        "parameters": mem["parameters"],
        "trainable": mem["trainable"],
        "world_size": world,
        "memory_gib": {k: round(v, 2) for k, v in mem.items() if k not in ("parameters", "trainable")},
    }
    if gpu_memory_gb:
        out["gpu_memory_gb"] = gpu_memory_gb
        out["fits"] = mem["total"] <= 0.9 * gpu_memory_gb
        nodes = plan_nodes(cfg, gpu_memory_gb, gpus, **kw)
        out["min_nodes"], out["comfortable_nodes"] = nodes["min_nodes"], nodes["comfortable_nodes"]
    if peak_tflops and tokens:
        out["hours_per_epoch"] = round(
            time_per_epoch(
                mem["parameters"],
                tokens,
                world,
                peak_tflops,
                mfu,
                kw["method"],
                kw["activation_checkpointing"],
            )
            / 3600,
            2,
        )
    return out


def main(recipe_path: str, overrides: dict, gpu_memory_gb: float | None) -> int:
    """`python -m workshop_lib plan RECIPE`: print the estimate (exit 1 if it does not fit)."""
    import json

    from .recipe import RecipeError, load_recipe
    from .submit import parse_value

    try:
        recipe = load_recipe(recipe_path, overrides={k: parse_value(v) for k, v in overrides.items()})
        result = plan_recipe(recipe, gpu_memory_gb=gpu_memory_gb or 64.0)
    except (RecipeError, PlanError) as e:
        print(f"plan: {e}")
        return 2
    print(json.dumps(result, indent=1, default=str))
    return 0 if result.get("fits", True) else 1
