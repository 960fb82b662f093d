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
    return "\n".join(f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}" for k, v in plan.items())
