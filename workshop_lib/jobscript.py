"""The job script: slurm/train.sbatch rendered from a cluster profile (environment, torch route, sbatch lines).

A profile's `torch` key picks how the job finds torch: pip (a plain venv), module, or container (python runs
in a Singularity image); with `routes:` each choice brings its own modules and image (slurm/profiles/lumi.yaml).
GPU-to-CPU binding (cpu_bind_masks), a per-job MIOpen cache (miopen_cache) and the requeues allowed after a
hang (hang_requeues) are profile keys too. submit.py validates the run and queues what this renders.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import yaml

from .launch import CPU_BIND_ENV
from .paths import REPO_ROOT
from .trainers import KINDS

PROFILES_DIR = REPO_ROOT / "slurm" / "profiles"
TEMPLATE = REPO_ROOT / "slurm" / "train.sbatch"
LAUNCHERS = ("papermill", "python")
HANG_REQUEUES = 2  # default: a hung try is requeued (and resumed) at most this often per job


class SubmitError(ValueError):
    """Bad submit input: says what and how to fix it; nothing was queued."""


def load_profile(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise SubmitError(
            f"unknown profile {name_or_path!r}: use one of {known}, or a path to a profile YAML "
            f"(copy slurm/profiles/nvidia.yaml and edit it)."
        )
    profile = yaml.safe_load(path.read_text()) or {}
    profile["_path"] = str(path)
    return profile


def output_root(profile: dict, given: str | None = None) -> str:
    """Where a job's run folders go: the one given, else the profile's output_root, else runs/; $USER and
    other variables expanded (e.g. /scratch/<project>/$USER/runs keeps participants of one project apart)."""
    return os.path.expandvars(given or str(profile.get("output_root") or "runs"))


def route(profile: dict) -> dict:
    """The profile's way to torch, by its `torch` key: {"torch", "modules", "image"}. A `routes:` entry named
    like the `torch` value adds its modules and image (LUMI: container | module); a plain `container:` path
    is the image of profiles without routes."""
    torch = profile.get("torch") or "pip"
    routes = profile.get("routes") or {}
    if routes and torch not in routes:
        raise SubmitError(
            f"{profile['_path']}: torch: {torch!r} has no entry under routes: (it has {', '.join(routes)}): "
            "set torch: to one of them"
        )
    chosen = routes.get(torch) or {}
    image = chosen.get("image") or (
        profile.get("container") if isinstance(profile.get("container"), str) else None
    )
    return {
        "torch": torch,
        "modules": [*(profile.get("modules") or []), *(chosen.get("modules") or [])],
        "image": image,
    }


def _module_line(entry: str) -> str:
    """'LUMI' -> module load LUMI; 'use /path' and 'purge' are module's own subcommands."""
    word = entry.split()[0]
    return f"module {entry}" if word in ("use", "unuse", "purge") else f"module load {entry}"


def setup_lines(profile: dict) -> str:
    way = route(profile)
    lines = [f"# from {profile['_path']} (its comments say why)"]
    if profile.get("routes"):
        others = ", ".join(r for r in profile["routes"] if r != way["torch"])
        lines.append(f"# route torch: {way['torch']} (the profile's torch key; the other: {others})")
    lines += [_module_line(m) for m in way["modules"]]
    if way["image"] == "$SIF":
        lines.append(': "${SIF:?is not set: the modules above should set it (routes: in the profile)}"')
    elif way["image"]:
        lines.append(
            f"SIF={shlex.quote(way['image'])}  # python runs in this container, the kit's venv on top"
        )
    for k, v in (profile.get("env") or {}).items():
        lines.append(f"export {k}={shlex.quote(str(v))}")
    if profile.get("miopen_cache"):
        base = str(profile["miopen_cache"]).rstrip("/")
        lines += [
            "# MIOpen's kernel database per job in the node's /tmp (each node's task creates it and removes it)",
            f'export MIOPEN_USER_DB_PATH="{base}/db"',
            f'export MIOPEN_CUSTOM_CACHE_DIR="{base}/cache"',
        ]
    if profile.get("cpu_bind_masks"):
        masks = ",".join(str(m) for m in profile["cpu_bind_masks"])
        lines += [
            "# each worker binds to the cores next to its GPU: mask i for local rank i (launch.py)",
            f"export {CPU_BIND_ENV}={masks}",
        ]
    return "\n".join(lines) or "true"


def python_command(profile: dict) -> str:
    venv = Path(profile.get("venv") or ".venv")
    python = str(venv if venv.is_absolute() else REPO_ROOT / venv) + "/bin/python"
    if route(profile)["image"]:
        python = f"singularity exec --bind {REPO_ROOT} $SIF {python}"  # SIF: set in the setup lines
    return python


def notebook_for(trainer: str) -> str:
    """The notebook a job runs for a recipe's trainer (papermill launcher): trainers.KINDS names it."""
    return KINDS[trainer].notebook


def render(profile: dict, fields: dict[str, str], n_tasks: int = 0) -> str:
    sbatch = [f"#SBATCH --array=0-{n_tasks - 1}"] if n_tasks else []
    for key, flag in (
        ("account", "--account"),
        ("partition", "--partition"),
        ("time", "--time"),
        ("cpus_per_task", "--cpus-per-task"),
        ("mem", "--mem"),
    ):
        if profile.get(key) not in (None, ""):
            sbatch.append(f"#SBATCH {flag}={profile[key]}")
    if profile.get("gpus_per_node"):
        sbatch.append(f"#SBATCH --gpus-per-node={profile['gpus_per_node']}")
    sbatch += [f"#SBATCH {x}" for x in profile.get("sbatch_extra") or []]
    fields = {
        **fields,
        "SBATCH_LINES": "\n".join(sbatch),
        "SIGNAL_S": str(profile.get("signal_before_end_s", 300)),
        "HANG_REQUEUES": str(profile.get("hang_requeues", HANG_REQUEUES)),
        "REPO": str(REPO_ROOT),
        "SETUP": setup_lines(profile),
        "PYTHON": python_command(profile),
    }
    fields.setdefault("NOTEBOOK", notebook_for("sft"))
    text = TEMPLATE.read_text()
    for k, v in fields.items():
        text = text.replace(f"@@{k}@@", v)
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise SubmitError(
            f"{TEMPLATE}: template fields {left} have no value (a newer template than submit.py?)"
        )
    return text


def job_notebook(trainers: set[str], launcher: str, source: str) -> str:
    """The one notebook every task of the job runs; refused when it is missing (the job would fail)."""
    if len(trainers) > 1:
        raise SubmitError(
            f"{source}: the sweep's tasks use trainers {sorted(trainers)}: one job runs one notebook, so sweep "
            "over one trainer per job (submit the sft and the dpo sweeps separately)"
        )
    notebook = notebook_for(trainers.pop())
    if launcher == "papermill" and not (REPO_ROOT / notebook).exists():
        raise SubmitError(
            f"{notebook} (the notebook of this recipe's trainer) does not exist in {REPO_ROOT}: update the kit, "
            "or pass --launcher python to train without a notebook"
        )
    return notebook
