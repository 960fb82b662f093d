"""Recipes: one vocabulary for a training run, resolved and validated once, then passed around whole.

A recipe is a YAML file. Its keys are the fields of TRL's config for the recipe's trainer (`SFTConfig` for
`trainer: sft`, `DPOConfig` for `trainer: dpo`: learning_rate, num_train_epochs, beta, ...), PEFT `LoraConfig`
fields (r, lora_alpha, ...) and the kit's own keys, the fields of `Recipe` below. The same
keys appear as plain variables in a notebook's parameters cell (workshop_lib.params), in `-p key value` on
the command line, in sweep grids and in the resolved recipe.yaml of a run folder. `load_recipe` turns a file plus overrides into a frozen `Recipe`:
paths resolved, defaults filled, every key checked, so that what the workers and the run folder see is
exactly what was validated.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .paths import default_output_root, resolve, resolve_source
from .rewards import REWARDS
from .trainers import KINDS, TRAINERS, trl_fields

METHODS = ("full", "lora", "qlora")
DISTRIBUTED = ("ddp", "fsdp", "zero2", "zero3")
SYSTEM_PROMPT = ("auto", "keep", "merge")


class RecipeError(ValueError):
    """A recipe that cannot run: names the key, what is wrong and how to fix it."""

    def _render_traceback_(self) -> list[str]:  # IPython shows the message alone, not a 30-line traceback
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A resolved, validated recipe. Kit settings are attributes; `trl` and `lora` are the keyword
    arguments for TRL's config (SFTConfig or DPOConfig, by `trainer`) and PEFT's LoraConfig as the recipe
    gave them (kit defaults included)."""

    # --- what to train
    model: str = "tiny"  # 'tiny' (the kit's offline model), a local model folder or a hub id
    train_file: str | list = (
        "data/synthetic/train.jsonl"  # messages JSONL, any format data reads, a hub id, or a mixture list
    )
    eval_file: str | list | None = "data/synthetic/eval.jsonl"  # held-out conversations; None for none
    template: str | None = None  # a bundled template name or .jinja path; None: the model's own template
    system_prompt: str = "auto"  # auto (keep where the template renders it, else merge) | keep | merge
    # --- how
    trainer: str = (
        "sft"  # sft (SFTTrainer: learn the answers) | dpo (DPOTrainer: prefer chosen over rejected)
    )
    method: str = "full"  # full | lora | qlora
    distributed: str = "ddp"  # ddp | fsdp | zero2 | zero3: how several processes share the work
    nproc_per_node: int = 1  # processes on this node (GPUs per node; on CPU, processes)
    nnodes: int = 1  # nodes in the job
    node_rank: int | None = None  # this node's rank (default: $SLURM_NODEID, else 0)
    master_addr: str | None = None  # rank 0's host (default: first host of the Slurm job, else 127.0.0.1)
    master_port: int | None = None  # rendezvous port (default: derived from the Slurm job id, else free)
    collective_timeout_s: int = 300  # a stuck collective fails the job after this many seconds
    hang_timeout_s: int | None = None  # no optimizer step this long: stacks, root cause, end (None: auto)
    # --- where
    run_name: str = "demo"  # the run folder is <output_root>/<run_name>
    output_root: str = "runs"  # where run folders live ($WORKSHOP_OUTPUT_ROOT when set: a lab job sets it)
    resume: bool = False  # continue the run folder's last checkpoint (a run is never overwritten)
    # --- scoring (notebooks 03 and 05)
    n_generate: int = 200  # held-out conversations answered for exact match before/after (0: skip)
    max_new_tokens: int = 32  # generation length for those answers
    # --- GRPO (trainer: grpo)
    rewards: list | None = None  # reward functions by name (workshop_lib.rewards); None: correct, well_formed
    # --- TRL and PEFT keyword arguments, and where each key came from
    trl_items: tuple = ()
    lora_items: tuple = ()
    origin_items: tuple = ()  # (key, "recipe file" | "override" | "kit default")
    source: str = "recipe"

    @property
    def trl(self) -> Mapping[str, Any]:
        """Keyword arguments for TRL's SFTConfig or DPOConfig (by `trainer`)."""
        return types.MappingProxyType(dict(self.trl_items))

    @property
    def lora(self) -> Mapping[str, Any]:
        return types.MappingProxyType(dict(self.lora_items))

    @property
    def origin(self) -> Mapping[str, str]:
        return types.MappingProxyType(dict(self.origin_items))

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.run_name

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def replace(self, **changes: Any) -> Recipe:
        """A copy with kit fields or TRL config keys changed (re-validated; origins kept, changes marked)."""
        new = load_recipe({**self.to_dict(), **changes}, name=self.source)
        origin = {**self.origin, **{k: "override" for k in changes}}
        return dataclasses.replace(new, origin_items=tuple(origin.items()))

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as one flat dict: what a run folder records, and a valid recipe itself."""
        kit = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in KIT_FIELDS}
        return {**kit, **self.trl, **self.lora}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        os.replace(tmp, path)
        return path


KIT_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Recipe)
    if f.name not in ("trl_items", "lora_items", "origin_items", "source")
)


def _field_docs() -> dict[str, str]:
    """The comment after each kit field above: the grouped docstring of the recipe vocabulary."""
    import inspect

    docs = {}
    for line in inspect.getsource(Recipe).splitlines():
        name, _, rest = line.strip().partition(":")
        if name in KIT_FIELDS and "#" in rest:
            docs[name] = rest.split("#", 1)[1].strip()
    return docs


def trl_config_class(trainer: str = "sft") -> type:
    """TRL's config class for a trainer: SFTConfig or DPOConfig."""
    return KINDS[trainer].config_class()


def lora_fields() -> dict[str, dataclasses.Field]:
    from peft import LoraConfig

    skip = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping"}
    return {f.name: f for f in dataclasses.fields(LoraConfig) if f.init and f.name not in skip}


def _allowed(annotation: Any) -> tuple[type, ...] | None:
    """Python types a value of this annotation may have (None: can't tell, accept)."""
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


def _check_type(key: str, value: Any, annotation: Any, source: str) -> Any:
    """The value, if it fits the annotation ('true'/'false' strings become bools); else a RecipeError."""
    allowed = _allowed(annotation)
    if allowed is None or (
        isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    ):
        return value
    if bool in allowed and str(value) in ("true", "false", "True", "False"):
        return str(value).lower() == "true"
    names = " or ".join(sorted({t.__name__ for t in allowed} - {"NoneType"}) or ["None"])
    raise RecipeError(
        f"{source}: {key}: expected {names}, got {value!r} ({type(value).__name__}). "
        f"Fix: set {key} to a {names} (in YAML, quote strings; numbers like 2e-5 need a dot: 2.0e-5)."
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a dict, with errors that name the file and line."""
    path = resolve(path)
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
    return params


def _resolve_data(spec: Any, key: str, label: str) -> Any:
    """Data sources: a path (resolved), a hub id (kept), or a mixture list of {path, ...} mappings."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, (str, Path)):
        return resolve_source(str(spec))
    if isinstance(spec, list) and all(isinstance(x, dict) and "path" in x for x in spec):
        return [{**x, "path": resolve_source(str(x["path"]))} for x in spec]
    raise RecipeError(
        f"{label}: {key}: expected a file, folder or hub id, or a list of {{path, split, weight, max_rows}} "
        f"mappings; got {spec!r}."
    )


def parse_value(text: str) -> Any:
    """A -p value as papermill reads it: numbers, true/false/none, else the string ("no" stays "no");
    and a YAML list or mapping written inline (`-p train_file "[{path: a.jsonl, max_rows: 200}]"`)."""
    if text[:1] in ("[", "{"):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None  # e.g. a Jinja template "{% ... %}": kept as the string
        if isinstance(value, (list, dict)):
            return value
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_recipe(
    source: str | Path | dict | None = None, overrides: dict | None = None, name: str | None = None
) -> Recipe:
    """Read a recipe (YAML path or dict) plus overrides; fill defaults, resolve paths, validate.

    Errors name the file and key, say what is wrong and how to fix it ("did you mean ...?").
    """
    if source is None or isinstance(source, dict):
        params, label = dict(source or {}), name or "recipe"
    else:
        params, label = read_yaml(source), name or str(source)
    origin = {k: "recipe file" for k in params}
    for k, v in (overrides or {}).items():
        params[k] = v
        origin[k] = "override"

    trainer = params.get("trainer", Recipe.trainer)
    _one_of("trainer", trainer, TRAINERS, label)  # first: it decides which TRL config the keys belong to
    defaults = KINDS[trainer].defaults
    trl_keys, lora_keys = trl_fields(trainer), lora_fields()
    hints = typing.get_type_hints(Recipe)
    kit: dict[str, Any] = {}
    trl = {k: v for k, (v, _) in defaults.items()}
    lora: dict[str, Any] = {}
    for key, value in params.items():
        if key in KIT_FIELDS:
            kit[key] = (
                value if key in ("train_file", "eval_file") else _check_type(key, value, hints[key], label)
            )
        elif key in trl_keys:
            trl[key] = _check_type(key, value, trl_keys[key].type, label)
        elif key in lora_keys:
            lora[key] = _check_type(key, value, lora_keys[key].type, label)
        else:
            config = KINDS[trainer].config
            other = [t for t in TRAINERS if t != trainer and key in trl_fields(t)]
            if other:
                raise RecipeError(
                    f"{label}: {key!r} is a {KINDS[other[0]].config} key, but this recipe has trainer: "
                    f"{trainer} ({config}). Remove it, or set trainer: {other[0]}."
                )
            close = difflib.get_close_matches(key, [*KIT_FIELDS, *trl_keys, *lora_keys], n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"keys are the kit's (Recipe), {config}'s or LoraConfig's"
            )
            raise RecipeError(f"{label}: unknown key {key!r}: {hint}")
    for k in defaults:
        origin.setdefault(k, "kit default")

    # kit keys: allowed values
    for key in ("nproc_per_node", "nnodes", "collective_timeout_s", "max_new_tokens", "n_generate"):
        value = kit.get(key, getattr(Recipe, key))
        if value < (0 if key == "n_generate" else 1):
            raise RecipeError(f"{label}: {key}: expected a positive integer, got {value!r}.")
    for key, allowed in (("method", METHODS), ("distributed", DISTRIBUTED), ("system_prompt", SYSTEM_PROMPT)):
        _one_of(key, kit.get(key, getattr(Recipe, key)), allowed, label)
    for name in kit.get("rewards") or []:
        _one_of("rewards", name, tuple(REWARDS), label)
    run_name = kit.get("run_name", Recipe.run_name)
    if not run_name or "/" in run_name:
        raise RecipeError(f"{label}: run_name: {run_name!r} must be a plain folder name (no '/').")

    # paths: resolved once, here, so every worker and node agrees
    for key in ("train_file", "eval_file"):
        if key in kit:
            kit[key] = _resolve_data(kit[key], key, label)
    kit.setdefault("train_file", _resolve_data(Recipe.train_file, "train_file", label))
    kit.setdefault("eval_file", _resolve_data(Recipe.eval_file, "eval_file", label))
    kit["output_root"] = str(resolve(kit.get("output_root") or default_output_root()))
    if kit.get("model", "tiny") != "tiny":
        kit["model"] = resolve_source(kit["model"])

    recipe = Recipe(
        **kit,
        trl_items=tuple(trl.items()),
        lora_items=tuple(lora.items()),
        origin_items=tuple(origin.items()),
        source=label,
    )
    _check_combinations(recipe, label)
    return recipe


def _one_of(key: str, value: Any, allowed: tuple[str, ...], label: str) -> None:
    """A RecipeError (with a "did you mean") unless value is one of the allowed names."""
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        raise RecipeError(
            f"{label}: {key}: {value!r} is not one of {', '.join(allowed)}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + "."
        )


def _check_combinations(r: Recipe, label: str) -> None:
    """Impossible combinations, caught before any model is loaded."""
    if r.method == "qlora" and r.distributed in ("fsdp", "zero3"):
        raise RecipeError(
            f"{label}: method qlora with distributed {r.distributed} is not supported by the kit: "
            "use ddp (the quantized base fits each GPU)."
        )
    if r.distributed == "fsdp" and r.world_size > 1 and not _has_gpu():
        raise RecipeError(
            f"{label}: distributed: fsdp needs GPUs: accelerate applies FSDP only on GPU-like devices, so on CPU "
            "the processes would silently run plain DDP. Use ddp, zero2 or zero3 on CPU (fsdp on the GPU nodes)."
        )
    if r.rewards and r.trainer != "grpo":
        raise RecipeError(
            f"{label}: rewards are GRPO's reward functions, but trainer is {r.trainer}: remove them."
        )
    if r.lora and r.method == "full":
        raise RecipeError(
            f"{label}: LoRA keys {sorted(r.lora)} are set but method is full: set method: lora, or remove them."
        )
    sft = r.trl
    if sft.get("packing") and sft.get("padding_free") and sft.get("packing_strategy", "bfd") == "wrapped":
        raise RecipeError(
            f"{label}: packing_strategy wrapped cannot be padding_free (it mixes conversations): use bfd."
        )


def _has_gpu() -> bool:
    """A GPU visible to this process, asked without initialising CUDA (forked workers need it untouched)."""
    import torch

    return torch.cuda.is_available()


def explain(recipe: Recipe) -> list[tuple[str, Any, str, str]]:
    """Rows (key, value, from, why) for every key of the recipe: what notebook 03 shows first."""
    docs = _field_docs()
    reasons = {k: why for k, (_, why) in KINDS[recipe.trainer].defaults.items()}
    rows = []
    for key, value in recipe.to_dict().items():
        source = recipe.origin.get(key, "kit default")
        why = reasons.get(key, "") if source == "kit default" else ""
        rows.append((key, value, source, why or docs.get(key, "")))
    return rows


def describe() -> str:
    """The kit keys with their defaults and meaning."""
    docs = _field_docs()
    return "\n".join(f"{k:22} {getattr(Recipe, k)!r:32} {docs.get(k, '')}" for k in KIT_FIELDS)
