"""Plan before you queue: what a recipe will do (steps, tokens, batch), whether it fits, how long it takes.

`training_plan` counts from the tokenized data; `plan_recipe` estimates memory per GPU and the smallest
node count from the model's config.json alone (no weights, no GPU needed: planning is for the job's GPUs,
not this machine's). One unit throughout: GiB; a GPU's memory is given as vendors quote it (GB) and
converted once. The formulas are in memory.py; benchmarks/planner_check.py measures them.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .memory import (
    GB,
    PEAK_TFLOPS,
    GiB,
    activation_bytes,
    estimate_memory,
    flops_per_token,
    gb_to_gib,
    plan_nodes,
    supports_sdpa,
    time_per_epoch,
)
from .size import (
    KIT_QLORA,
    PlanError,
    Quantization,
    count_parameters,
    lora_parameters,
    quantization,
    read_config,
    stored_weight_bytes,
)

__all__ = [
    "GB",
    "KIT_QLORA",
    "PEAK_TFLOPS",
    "GiB",
    "PlanError",
    "Quantization",
    "activation_bytes",
    "count_parameters",
    "estimate_memory",
    "flops_per_token",
    "format_plan",
    "gb_to_gib",
    "lora_parameters",
    "plan_nodes",
    "plan_recipe",
    "quantization",
    "read_config",
    "register",
    "stored_weight_bytes",
    "supports_sdpa",
    "time_per_epoch",
    "training_plan",
]

DEFAULT_GPU_GB = 64.0  # LUMI's MI250X GCD, the workshop's cluster, when neither profile nor size is given


def _kit(recipe: Any, key: str) -> Any:
    # attribute access (the typed recipe); .kit[...] until every caller has it
    return getattr(recipe, key) if hasattr(recipe, key) else recipe.kit[key]


def training_plan(recipe: Any, n_conversations: int, n_tokens: int, n_trained_tokens: int) -> dict[str, Any]:
    """World size, effective batch, optimizer steps and tokens for a recipe and a tokenized dataset."""
    sft = recipe.trl
    world = recipe.world_size
    micro = int(sft.get("per_device_train_batch_size", 8))
    accum = int(sft.get("gradient_accumulation_steps", 1))
    epochs = float(sft.get("num_train_epochs", 1))
    effective = micro * accum * world
    steps_per_epoch = math.ceil(n_conversations / effective)
    max_steps = int(sft.get("max_steps", -1) or -1)
    steps = max_steps if max_steps > 0 else math.ceil(steps_per_epoch * epochs)
    return {
        "world_size": world,
        "nodes": _kit(recipe, "nnodes"),
        "processes_per_node": _kit(recipe, "nproc_per_node"),
        "micro_batch": micro,
        "gradient_accumulation": accum,
        "effective_batch": effective,
        "conversations": n_conversations,
        "steps_per_epoch": steps_per_epoch,
        "optimizer_steps": steps,
        "tokens_per_epoch": n_tokens,
        "trained_tokens_per_epoch": n_trained_tokens,
        "tokens_total": int(n_tokens * epochs),
        "warnings": _warnings(sft, steps),
    }


def _warnings(trl: Any, steps: int) -> list[str]:
    """Settings that make no sense for this many steps, each with what to type instead."""
    out = []
    warmup = trl.get("warmup_steps") or 0
    warm = math.ceil(warmup * steps) if isinstance(warmup, float) and warmup < 1 else int(warmup)
    if steps and warm >= steps:
        out.append(
            f"warm-up covers the whole run ({warm} warm-up steps, {steps} steps): the learning rate never reaches "
            f"learning_rate. Lower it, e.g. warmup_steps = {steps // 10} (or 0.1: a tenth of the steps)."
        )
    logging = trl.get("logging_steps") or 0
    if steps and isinstance(logging, int) and logging > steps:
        out.append(
            f"logging_steps {logging} > {steps} steps: the loss is logged once at most. "
            f"Try logging_steps = {max(1, steps // 10)}."
        )
    return out


def format_plan(plan: dict[str, Any]) -> str:
    """One aligned line per entry; integers with thousands separators."""
    rows = {k: v for k, v in plan.items() if k != "warnings"}
    width = max(map(len, rows))
    lines = [
        f"{k:<{width}}  {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:<{width}}  {v}"
        for k, v in rows.items()
    ]
    return "\n".join(lines + [f"WARNING: {w}" for w in plan.get("warnings", [])])


def recipe_settings(recipe: Any) -> dict[str, Any]:
    """The estimate_memory keywords a recipe implies, with the kit's defaults for a GPU job."""
    sft = recipe.trl
    ckpt = sft.get("activation_checkpointing", sft.get("gradient_checkpointing"))
    ds = sft.get("deepspeed") if isinstance(sft.get("deepspeed"), dict) else {}
    bucket = (ds.get("zero_optimization") or {}).get("reduce_bucket_size")
    return {
        **dict(
            method=_kit(recipe, "method"),
            # the kit trains in bf16 on GPUs unless the recipe says bf16: false (then fp32)
            precision="fp32" if sft.get("bf16") is False and not sft.get("fp16") else "bf16",
            optimizer=str(sft.get("optim") or "adamw"),
            strategy=_kit(recipe, "distributed"),
            seq_len=int(sft.get("max_length") or 2048),
            micro_batch=int(sft.get("per_device_train_batch_size") or 1),
            activation_checkpointing=True if ckpt is None else bool(ckpt),  # the kit's GPU default
            lora_r=int(recipe.lora.get("r", 16)),
            **({"reduce_bucket_size": int(bucket)} if isinstance(bucket, (int, float)) else {}),
        ),
        **_preference_and_rl(recipe),  # GRPO's seq_len replaces max_length
    }


PROMPT_TOKENS = 512  # GRPO prompts have no length limit in TRL: a planning guess, said in the plan's notes


def _preference_and_rl(recipe: Any) -> dict[str, Any]:
    """DPO and GRPO: the reference model (DPO always, GRPO when beta > 0) and GRPO's generation: TRL samples
    per_device_train_batch_size x steps_per_generation (default: gradient_accumulation_steps) sequences at
    once on each GPU, each a prompt plus max_completion_length tokens. With vLLM colocated, plan_recipe adds
    vLLM's share instead."""
    trl, trainer = recipe.trl, getattr(recipe, "trainer", "sft")
    out: dict[str, Any] = {}
    if trainer == "dpo" or (trainer == "grpo" and float(trl.get("beta") or 0.0) > 0):
        out["reference"] = True
    if trainer == "grpo" and not trl.get("use_vllm"):
        steps = int(trl.get("steps_per_generation") or trl.get("gradient_accumulation_steps") or 1)
        sequences = int(trl.get("per_device_train_batch_size") or 8) * steps
        out["generation"] = (sequences, PROMPT_TOKENS + int(trl.get("max_completion_length") or 512))
        out["seq_len"] = out["generation"][1]  # training sees prompt + completion
    return out


def plan_recipe(
    recipe: Any,
    gpu_memory_gb: float | None = None,
    gpus_per_node: int | None = None,
    peak_tflops: float | None = None,
    mfu: float = 0.35,
    tokens: int | None = None,
) -> dict[str, Any]:
    """Memory per GPU (GiB) and time for a recipe, from its model's config.json only.

    gpu_memory_gb: one GPU's memory as the vendor quotes it (GB); with it, whether the recipe fits and the
    smallest node count that does.
    """
    cfg = read_config(_kit(recipe, "model"))
    gpus = gpus_per_node or _kit(recipe, "nproc_per_node")
    world = gpus * _kit(recipe, "nnodes")
    kw = recipe_settings(recipe)
    if gpu_memory_gb and getattr(recipe, "trainer", "sft") == "grpo" and recipe.trl.get("use_vllm"):
        # vLLM colocated reserves its share of each GPU for weights and KV cache
        share = float(recipe.trl.get("vllm_gpu_memory_utilization") or 0.3)
        kw["reserved_gib"] = share * gb_to_gib(gpu_memory_gb)
    mem = estimate_memory(cfg, world_size=world, **kw)
    out: dict[str, Any] = {
        "model": _kit(recipe, "model"),
        "quantization": mem["quantization"],
        "parameters": mem["parameters"],
        "trainable": mem["trainable"],
        "world_size": world,
        "memory_gib": {
            k: round(v, 2) for k, v in mem.items() if k not in ("parameters", "trainable", "quantization")
        },
    }
    if gpu_memory_gb:
        capacity = gb_to_gib(gpu_memory_gb)
        out["gpu_memory_gb"] = gpu_memory_gb
        out["gpu_memory_gib"] = round(capacity, 2)
        out["fits"] = mem["total"] <= 0.9 * capacity
        nodes = plan_nodes(cfg, gpu_memory_gb, gpus, **kw)
        out["min_nodes"], out["comfortable_nodes"] = nodes["min_nodes"], nodes["comfortable_nodes"]
    if peak_tflops and tokens:
        seconds = time_per_epoch(
            mem["parameters"], tokens, world, peak_tflops, mfu, kw["method"], kw["activation_checkpointing"]
        )
        out["hours_per_epoch"] = round(seconds / 3600, 2)
    return out


# ----------------------------------------------------------------------------- the `plan` command
def register(subparsers: Any) -> None:
    """Add `plan RECIPE [-p KEY VALUE] [--profile NAME | --gpu-memory-gb GB] [--gpus-per-node N]`."""
    p = subparsers.add_parser(
        "plan",
        help="memory per GPU and smallest node count for a recipe",
        description="Estimate memory per GPU (GiB) from the model's config.json; exit 1 if it does not fit.",
    )
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/poro34b_zero3.yaml")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="override")
    p.add_argument(
        "--profile", help="cluster profile (slurm/profiles/<name>.yaml): GPU memory, GPUs per node"
    )
    p.add_argument("--gpu-memory-gb", type=float, help=f"one GPU's memory in GB (default {DEFAULT_GPU_GB:g})")
    p.add_argument(
        "--gpus-per-node", type=int, help="GPUs per node (default: the profile's, or the recipe's)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The command: print the plan as JSON; exit 0 fits, 1 does not fit, 2 cannot plan."""
    return main(args.recipe, dict(args.p), args.gpu_memory_gb, args.profile, args.gpus_per_node)


def main(
    recipe_path: str,
    overrides: dict | None = None,
    gpu_memory_gb: float | None = None,
    profile: str | None = None,
    gpus_per_node: int | None = None,
) -> int:
    from ..jobscript import load_profile
    from ..recipe import RecipeError, load_recipe, parse_value

    try:
        source = "--gpu-memory-gb"
        if profile:
            prof = load_profile(profile)
            gpus_per_node = gpus_per_node or prof.get("gpus_per_node") or None
            if gpu_memory_gb is None and prof.get("gpu_memory_gb"):
                gpu_memory_gb, source = float(prof["gpu_memory_gb"]), f"profile {prof['_path']}"
        if gpu_memory_gb is None:
            gpu_memory_gb, source = DEFAULT_GPU_GB, "default (an MI250X GCD)"
        recipe = load_recipe(recipe_path, overrides={k: parse_value(v) for k, v in (overrides or {}).items()})
        result = plan_recipe(recipe, gpu_memory_gb=gpu_memory_gb, gpus_per_node=gpus_per_node)
    except (RecipeError, PlanError, FileNotFoundError) as e:
        print(f"plan: {e}")
        return 2
    result["gpu_memory_from"] = source
    print(json.dumps(result, indent=1, default=str))
    return 0 if result.get("fits", True) else 1
