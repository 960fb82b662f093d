"""Doctor: is this environment ready to train? Clear PASS / WARN / FAIL lines and an exit status.

python -m workshop_lib doctor [--model PATH_OR_ID] [--profile P [--recipe R]]
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .prefetch import hub_status, offline_cache

STACK = [
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "datasets",
    "peft",
    "deepspeed",
    "papermill",
    "jupyterlab",
    "ipywidgets",
    "matplotlib",
]
REQUIRED = {"torch", "transformers", "trl", "accelerate", "datasets", "peft", "papermill"}


@dataclass
class Line:
    status: str  # PASS, WARN, FAIL
    what: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.status}] {self.what}: {self.detail}"


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        try:
            return getattr(importlib.import_module(name), "__version__", "?")
        except Exception:
            return None


def check_stack() -> list[Line]:
    out = []
    for name in STACK:
        v = _version(name)
        if v:
            out.append(Line("PASS", name, v))
        else:
            out.append(
                Line(
                    "FAIL" if name in REQUIRED else "WARN",
                    name,
                    "not installed: run `make setup` (or pip install -e '.[dev]')",
                )
            )
    return out


def check_gpus() -> list[Line]:
    """GPUs and torch's backend, counted without initialising a GPU runtime in this process (a notebook
    launches workers later): NVIDIA through NVML (see __init__), AMD through amd-smi / rocm-smi."""
    try:
        import torch
    except ImportError:
        return [Line("FAIL", "GPUs", "torch is not installed")]
    hip = getattr(torch.version, "hip", None)
    if hip or (not torch.version.cuda and (shutil.which("amd-smi") or shutil.which("rocm-smi"))):
        return check_amd_gpus(hip)
    backend = "CUDA " + torch.version.cuda if torch.version.cuda else "CPU-only build"
    n = torch.cuda.device_count()  # NVML answers (PYTORCH_NVML_BASED_CUDA_CHECK): CUDA stays uninitialised
    if n == 0:
        return [
            Line(
                "WARN", "GPUs", f"none visible ({backend}): training runs on the CPU (fine for the tiny demo)"
            )
        ]
    lines = [Line("PASS", "GPUs", f"{n} visible, {backend}")]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        for i, row in enumerate(out.stdout.strip().splitlines()):
            lines.append(Line("PASS", f"GPU {i}", row.strip()))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return lines


# ----------------------------------------------------------------------------- AMD GPUs (LUMI)
@dataclass
class Gpu:
    name: str
    memory_gib: float | None  # None: the tool did not say


_BYTES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}  # amd-smi's MB are MiB (MI250X GCD: 65520 MB)


def parse_rocm_smi(text: str) -> list[Gpu]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {"Card Series": ..., "VRAM Total
    Memory (B)": "68702699520", ...}, ...}. ROCm 5 writes "Card series", ROCm 6 "Card Series"; other top-level
    keys ("system") are not GPUs."""
    data = json.loads(text)
    cards = sorted((k for k in data if k.startswith("card") and k[4:].isdigit()), key=lambda k: int(k[4:]))
    gpus = []
    for card in cards:
        fields = {k.lower(): v for k, v in data[card].items()}
        name = fields.get("card series") or fields.get("card model") or "AMD GPU"
        size = str(fields.get("vram total memory (b)", ""))
        gpus.append(Gpu(str(name), int(size) / 2**30 if size.isdigit() else None))
    return gpus


def _amd_smi_bytes(size) -> int | None:
    """vram size as amd-smi writes it: {"value": 65520, "unit": "MB"} (newer) or "65520 MB" (older)."""
    if isinstance(size, dict):
        value, unit = size.get("value"), size.get("unit", "B")
    elif isinstance(size, str) and len(size.split()) == 2:
        value, unit = size.split()
    else:
        return None
    try:
        return int(float(value) * _BYTES[str(unit).upper()])
    except (KeyError, TypeError, ValueError):
        return None  # "N/A"


def parse_amd_smi(text: str) -> list[Gpu]:
    """`amd-smi static --asic --vram --json` or `amd-smi list --json`: a list with one object per GPU (ROCm 6.0
    to 6.3), or {"gpu_data": [...]} (newer amd-smi). The name is asic.market_name (list gives only the bus)."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    gpus = []
    for item in data:
        name = (item.get("asic") or {}).get("market_name")
        if not name:
            name = f"AMD GPU at {item['bdf']}" if item.get("bdf") else "AMD GPU"
        size = _amd_smi_bytes((item.get("vram") or {}).get("size"))
        gpus.append(Gpu(str(name), size / 2**30 if size else None))
    return gpus


AMD_TOOLS = (
    (["amd-smi", "static", "--asic", "--vram", "--json"], parse_amd_smi),
    (["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"], parse_rocm_smi),
)


def amd_gpus() -> tuple[list[Gpu], str]:
    """This node's AMD GPUs from the first tool that answers (amd-smi, then the older rocm-smi), run as a
    subprocess so that HIP is never initialised here; ([], why) when none answers."""
    tried = []
    for cmd, parse in AMD_TOOLS:
        if not shutil.which(cmd[0]):
            tried.append(f"{cmd[0]} not found")
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            gpus = parse(out.stdout) if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError, KeyError):
            gpus = None
        if gpus:
            return gpus, " ".join(cmd[:2])
        tried.append(f"{cmd[0]} found no GPU" if gpus == [] else f"{cmd[0]} failed")
    return [], "; ".join(tried)


def check_amd_gpus(hip: str | None) -> list[Line]:
    """AMD GPUs for a ROCm build of torch (or a CPU build on a node that has them: the wrong torch)."""
    gpus, source = amd_gpus()
    if not hip:
        return [
            Line(
                "FAIL",
                "GPUs",
                f"{len(gpus)} AMD GPU(s) here ({source}) but torch is a CPU-only build: training would run on the "
                "CPU. Use LUMI's PyTorch container with a venv on top (slurm/setup_env.sh lumi)",
            )
        ]
    if not gpus:
        return [
            Line(
                "WARN",
                "GPUs",
                f"none found (ROCm {hip}; {source}): expected on a login node; in a job ask for GPUs "
                "(--gpus-per-node, as the lumi profile does)",
            )
        ]
    visible = os.environ.get("ROCR_VISIBLE_DEVICES") or os.environ.get("HIP_VISIBLE_DEVICES")
    seen = f"; this job sees {visible}" if visible else ""
    lines = [Line("PASS", "GPUs", f"{len(gpus)} AMD GPU(s) on this node ({source}), ROCm {hip}{seen}")]
    for i, gpu in enumerate(gpus):
        memory = f", {gpu.memory_gib:.0f} GiB" if gpu.memory_gib else ""
        lines.append(Line("PASS", f"GPU {i}", f"{gpu.name}{memory}"))
    return lines


def check_slurm() -> list[Line]:
    if not shutil.which("sbatch"):
        return [
            Line(
                "WARN",
                "Slurm",
                "sbatch not found: batch jobs need a cluster login node (interactive use is fine)",
            )
        ]
    job = os.environ.get("SLURM_JOB_ID")
    from .model import REPO_ROOT

    profiles = sorted(p.stem for p in (REPO_ROOT / "slurm" / "profiles").glob("*.yaml"))
    lines = [
        Line(
            "PASS",
            "Slurm",
            f"sbatch found{f', inside job {job}' if job else ''}; profiles: {', '.join(profiles)}",
        )
    ]
    cluster = os.environ.get("SLURM_CLUSTER_NAME") or ""
    if "lumi" in cluster.lower() or Path("/appl/lumi").exists():
        lines.append(Line("PASS", "profile", "LUMI detected: use --profile lumi"))
    return lines


def check_folder(name: str, path: Path) -> Line:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        return Line("FAIL", name, f"{path} is not writable ({e.strerror}): set it to a writable folder")
    free = shutil.disk_usage(path).free / 2**30
    status = "PASS" if free > 20 else "WARN"
    hint = "" if free > 20 else " (checkpoints of real models need tens of GB: use scratch)"
    return Line(status, name, f"{path} writable, {free:.0f} GiB free{hint}")


def check_folders() -> list[Line]:
    from .model import cache_dir
    from .paths import default_output_root, resolve

    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    lines = [
        check_folder("run folder", resolve(default_output_root())),
        check_folder("kit cache", cache_dir()),
        check_folder("HF cache", hf_home),
    ]
    online, why = hub_status()
    if not online and "HF_HUB_OFFLINE" in why:
        lines.append(
            Line("PASS", "hub", "HF_HUB_OFFLINE=1: models load from local folders and the cache only")
        )
    elif not online:
        lines.append(
            Line("WARN", "hub", f"{why}: set HF_HUB_OFFLINE=1 so that loading never waits on retries")
        )
    else:
        lines.append(
            Line(
                "PASS",
                "hub",
                f"{why}; on compute nodes without internet set HF_HUB_OFFLINE=1 "
                "(and download models on the login node first)",
            )
        )
    return lines


def model_source(model: str) -> tuple[str | None, str]:
    """Where a model's files can be read from without waiting on the hub: (folder or id, where).

    A local folder or the kit's tiny model; a hub id already in the Hugging Face cache (its snapshot folder,
    read offline); the hub id itself when the hub answers; else None and a sentence saying what to do.
    """
    from huggingface_hub import try_to_load_from_cache

    from .model import TINY, resolve_model

    if str(model) == TINY:
        return resolve_model(model), "the kit's tiny model (built locally)"
    path = Path(str(model)).expanduser()
    if path.exists():
        return str(path), "a local folder"
    try:
        cached = try_to_load_from_cache(str(model), "config.json")
    except Exception:  # not a valid hub id either: let the loader say what is wrong with it
        return str(model), "neither a local folder nor a valid hub id"
    if isinstance(cached, str):
        return str(Path(cached).parent), "the Hugging Face cache"
    online, why = hub_status()
    if online:
        return str(model), "the hub"
    return None, (
        f"{model} is not a local folder nor in the Hugging Face cache, and {why}. Download it where there "
        f"is internet (`hf download {model}`; config.json alone is enough to plan) or use a local model folder"
    )


def check_model(model: str) -> list[Line]:
    from transformers import AutoConfig, AutoTokenizer

    path, where = model_source(model)
    if path is None:
        return [Line("FAIL", "model", where)]
    try:
        cfg = AutoConfig.from_pretrained(path)
        lines = [Line("PASS", "model config", f"{model}: {cfg.model_type}, from {where}")]
    except Exception as e:
        return [Line("FAIL", "model config", f"{model}: {type(e).__name__}: {str(e)[:300]}")]
    try:
        tok = AutoTokenizer.from_pretrained(path)
        has = bool(tok.chat_template)
        lines.append(
            Line(
                "PASS" if has else "WARN",
                "tokenizer",
                f"{type(tok).__name__}, chat template {'present' if has else 'missing: set template: in the recipe'}",
            )
        )
    except Exception as e:
        lines.append(Line("FAIL", "tokenizer", f"{model}: {type(e).__name__}: {str(e)[:300]}"))
    return lines


def run(model: str | None = None, profile: str | None = None, recipe: str | None = None) -> list[Line]:
    lines = check_stack() + check_gpus() + check_slurm() + check_folders()
    if model:
        lines += check_model(model)
    if profile:  # what the profile's jobs read offline, in the cache they read (prefetch fills it)
        names = [x for x in (model, recipe) if x]
        lines += [
            Line("PASS" if ok else "FAIL", "offline cache", said)
            for ok, said in offline_cache(profile, names)
        ]
    return lines


def main(model: str | None = None, profile: str | None = None, recipe: str | None = None) -> int:
    lines = run(model, profile, recipe)
    for line in lines:
        print(line)
    fails = sum(x.status == "FAIL" for x in lines)
    warns = sum(x.status == "WARN" for x in lines)
    print(f"\n{len(lines)} checks: {fails} failed, {warns} warnings")
    return 1 if fails else 0
