"""Recipes: one flat vocabulary for a training run, validated before any heavy work.

A recipe is a YAML file that is also a papermill parameter file. Its keys are TRL `SFTConfig`
fields (learning_rate, num_train_epochs, ...), PEFT `LoraConfig` fields (r, lora_alpha, ...)
and the few kit keys below. The same keys appear in the training notebook's parameters cell,
in `papermill -p key value` overrides, in sweep grids and in the resolved recipe of a run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# Kit keys, grouped. Everything else must be an SFTConfig or LoraConfig field.
KIT_KEYS: dict[str, tuple[Any, str]] = {
    # what to train
    "model": ("tiny", "'tiny' (the kit's offline model), a local model directory or a hub id"),
    "train_file": (
        "data/synthetic/train.jsonl",
        "messages JSONL (or any format data.load_conversations reads)",
    ),
    "eval_file": ("data/synthetic/eval.jsonl", "held-out messages; empty for none"),
    "template": (
        None,
        "a bundled template name (chatml, llama3, ...) or .jinja path; None keeps the tokenizer's",
    ),
    # how
    "method": ("full", "full | lora | qlora"),
    "distributed": ("ddp", "ddp | fsdp | zero2 | zero3: how several processes share the work"),
    "nproc_per_node": (1, "processes on this node (GPUs per node; on CPU, processes)"),
    "nnodes": (1, "nodes in the job; node rank, master address and port come from SLURM or the keys below"),
    "node_rank": (None, "this node's rank (default: $SLURM_NODEID or 0)"),
    "master_addr": (None, "rank 0's host (default: first host of $SLURM_JOB_NODELIST, else 127.0.0.1)"),
    "master_port": (None, "rendezvous port (default: derived from $SLURM_JOB_ID, else 29500)"),
    "collective_timeout_s": (300, "seconds before a stuck collective fails the job with a clear error"),
    # where
    "run_name": ("demo", "the run folder is <output_root>/<run_name>"),
    "output_root": ("runs", "where run folders live"),
    "resume": (
        False,
        "True: continue the run folder's last checkpoint (an existing run is never overwritten)",
    ),
    # after training
    "n_generate": (200, "held-out conversations to answer for exact match before/after training (0: skip)"),
    "max_new_tokens": (32, "generation length for those answers"),
}
METHODS = ("full", "lora", "qlora")
DISTRIBUTED = ("ddp", "fsdp", "zero2", "zero3")

# The kit's defaults for SFTConfig: correct (assistant-only loss, end of turn trained) and fast.
SFT_DEFAULTS: dict[str, Any] = {
    "assistant_only_loss": True,
    "padding_free": True,
    "learning_rate": 2e-5,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "eval_strategy": "epoch",
    "report_to": "none",
    "seed": 42,
    "max_length": 2048,
}


class RecipeError(ValueError):
    """A recipe that cannot run: names the key, what is wrong and how to fix it."""


def _sft_fields() -> dict[str, dataclasses.Field]:
    from trl import SFTConfig

    return {f.name: f for f in dataclasses.fields(SFTConfig) if f.init}


def _lora_fields() -> dict[str, dataclasses.Field]:
    from peft import LoraConfig

    skip = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping"}
    return {f.name: f for f in dataclasses.fields(LoraConfig) if f.init and f.name not in skip}


def _allowed(annotation: Any) -> tuple[type, ...] | None:
    """Python types a value of this dataclass annotation may have (None: can't tell, accept)."""
    hints = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    out: list[type] = []
    for h in hints:
        origin = typing.get_origin(h) or h
        if h is type(None):
            out.append(type(None))
        elif origin in (int, float, str, bool, list, dict):
            out.append(origin)
            if origin is float:
                out.append(int)  # 1 is a fine float
        elif origin is typing.Literal:
            out.extend({type(a) for a in typing.get_args(h)})
        elif isinstance(origin, type) and issubclass(origin, str):  # str enums (schedulers, strategies)
            out.append(str)
        else:
            return None
    return tuple(out) or None


def _check_type(key: str, value: Any, annotation: Any, source: str) -> None:
    allowed = _allowed(annotation)
    if allowed is None or isinstance(value, allowed):
        return
    if bool in allowed and value in ("true", "false", "True", "False"):
        return
    names = " or ".join(sorted({t.__name__ for t in allowed}))
    raise RecipeError(
        f"{source}: {key}: expected {names}, got {value!r} ({type(value).__name__}). "
        f"Fix: set {key} to a {names} (in YAML, quote strings; numbers like 2e-5 need a dot: 2.0e-5)."
    )


@dataclasses.dataclass
class Recipe:
    """A validated recipe: kit keys, SFTConfig keys and LoraConfig keys, kept flat as written."""

    kit: dict[str, Any]
    sft: dict[str, Any]
    lora: dict[str, Any]
    source: str = "recipe"

    def __getattr__(self, name: str) -> Any:
        if name in ("kit", "sft", "lora", "source"):
            raise AttributeError(name)
        if name in self.kit:
            return self.kit[name]
        raise AttributeError(name)

    def flat(self) -> dict[str, Any]:
        """The resolved recipe as one flat dict: what a run folder records, and a valid recipe itself."""
        return {**self.kit, **self.sft, **self.lora}

    @property
    def run_dir(self) -> Path:
        return Path(self.kit["output_root"]) / self.kit["run_name"]

    @property
    def world_size(self) -> int:
        return int(self.kit["nproc_per_node"]) * int(self.kit["nnodes"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.flat(), sort_keys=False, allow_unicode=True))
        os.replace(tmp, path)
        return path


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def load_recipe(
    source: str | Path | dict | None = None, overrides: dict | None = None, name: str | None = None
) -> Recipe:
    """Read a recipe (YAML path or dict) plus overrides, fill defaults, validate, return a Recipe.

    Errors name the file and key, say what is wrong and how to fix it ("did you mean ...?").
    """
    if source is None:
        params, label = {}, name or "recipe"
    elif isinstance(source, dict):
        params, label = dict(source), name or "recipe"
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise RecipeError(
                f"{path}: no such recipe file. Recipes live in recipes/ (e.g. recipes/tiny_cpu.yaml)."
            )
        try:
            params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise RecipeError(
                f"{path}:{line}: invalid YAML: {getattr(e, 'problem', e)}. Fix the syntax (key: value per line)."
            ) from None
        if not isinstance(params, dict):
            raise RecipeError(
                f"{path}: a recipe is a mapping of key: value lines, found {type(params).__name__}."
            )
    params.update(overrides or {})

    sft_fields, lora_fields = _sft_fields(), _lora_fields()
    kit, sft, lora = {k: v for k, (v, _) in KIT_KEYS.items()}, dict(SFT_DEFAULTS), {}
    known = [*KIT_KEYS, *sft_fields, *lora_fields]
    for key, value in params.items():
        if key in KIT_KEYS:
            kit[key] = value
        elif key in sft_fields:
            _check_type(key, value, sft_fields[key].type, label)
            sft[key] = value
        elif key in lora_fields:
            _check_type(key, value, lora_fields[key].type, label)
            lora[key] = value
        else:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "keys are the kit's (see recipe.KIT_KEYS), SFTConfig's or LoraConfig's"
            )
            raise RecipeError(f"{label}: unknown key {key!r}: {hint}")

    # kit keys: types and allowed values
    for key in ("nproc_per_node", "nnodes", "n_generate", "max_new_tokens", "collective_timeout_s"):
        if (
            not isinstance(kit[key], int)
            or isinstance(kit[key], bool)
            or kit[key] < (0 if key == "n_generate" else 1)
        ):
            raise RecipeError(f"{label}: {key}: expected a positive integer, got {kit[key]!r}.")
    if kit["method"] not in METHODS:
        raise RecipeError(f"{label}: method: {kit['method']!r} is not one of {', '.join(METHODS)}.")
    if kit["distributed"] not in DISTRIBUTED:
        close = difflib.get_close_matches(str(kit["distributed"]), DISTRIBUTED, n=1)
        raise RecipeError(
            f"{label}: distributed: {kit['distributed']!r} is not one of {', '.join(DISTRIBUTED)}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + "."
        )
    if not isinstance(kit["run_name"], str) or not kit["run_name"] or "/" in kit["run_name"]:
        raise RecipeError(f"{label}: run_name: {kit['run_name']!r} must be a plain folder name (no '/').")
    for key in ("train_file", "eval_file", "model", "output_root"):
        if kit[key] is not None and not isinstance(kit[key], str):
            kit[key] = str(kit[key])
    if isinstance(kit["resume"], str):
        kit["resume"] = kit["resume"].lower() == "true"

    # impossible combinations, caught before any model is loaded
    if kit["method"] == "qlora":
        if not _has_gpu():
            raise RecipeError(
                f"{label}: method: qlora quantizes the base model to 4 bits with bitsandbytes, which "
                "needs a CUDA GPU; none is visible. Use method: lora on this machine."
            )
        if kit["distributed"] in ("fsdp", "zero3"):
            raise RecipeError(
                f"{label}: method qlora with distributed {kit['distributed']} is not supported by the kit: "
                "use ddp (the quantized base fits each GPU)."
            )
    if (
        kit["distributed"] == "fsdp"
        and int(kit["nproc_per_node"]) * int(kit["nnodes"]) > 1
        and not _has_gpu()
    ):
        raise RecipeError(
            f"{label}: distributed: fsdp needs GPUs: accelerate applies FSDP only on GPU-like devices, so on CPU "
            "the processes would silently run plain DDP. Use ddp, zero2 or zero3 on CPU (fsdp on the GPU nodes)."
        )
    if lora and kit["method"] == "full":
        raise RecipeError(
            f"{label}: LoRA keys {sorted(lora)} are set but method is full: set method: lora, or remove them."
        )
    if sft.get("packing") and sft.get("padding_free") and sft.get("packing_strategy", "bfd") == "wrapped":
        raise RecipeError(
            f"{label}: packing_strategy wrapped cannot be padding_free (it mixes conversations): use bfd."
        )
    return Recipe(kit, sft, lora, label)


def describe() -> str:
    """The kit keys with their defaults and meaning (the grouped docstring of the recipe vocabulary)."""
    return "\n".join(f"{k:22} {v!r:32} {doc}" for k, (v, doc) in KIT_KEYS.items())
