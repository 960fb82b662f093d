"""Submit: render slurm/train.sbatch from a cluster profile and a recipe, check everything, sbatch it.

    python -m workshop_lib submit --profile lumi --recipe recipes/poro34b_zero3.yaml --nodes 3
    python -m workshop_lib submit --profile local --sweep sweeps/lr.yaml --dry-run
    python -m workshop_lib submit ... -- --time=04:00:00 --qos=high     (extra sbatch options win)

Everything is validated before anything is queued: the profile exists, the recipe and every
override load (unknown keys, wrong types), the run folder is not an existing run (unless --resume).
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .model import REPO_ROOT
from .recipe import RecipeError, load_recipe

PROFILES_DIR = REPO_ROOT / "slurm" / "profiles"
TEMPLATE = REPO_ROOT / "slurm" / "train.sbatch"


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


def parse_value(text: str) -> Any:
    """A -p value as papermill reads it: numbers, true/false/none, else the string."""
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


def sweep_tasks(sweep: dict, source: str) -> list[dict]:
    """The cartesian product of the grid's lists, each merged over the fixed overrides."""
    grid = sweep.get("grid")
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise SubmitError(
            f"{source}: grid: expected a mapping of recipe keys to non-empty lists, e.g. "
            "grid: {learning_rate: [1.0e-4, 3.0e-4]}"
        )
    keys = list(grid)
    fixed = sweep.get("fixed") or {}
    return [{**fixed, **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*grid.values())]


def _setup_lines(profile: dict) -> str:
    lines = [f"module load {m}" for m in profile.get("modules") or []]
    for k, v in (profile.get("env") or {}).items():
        lines.append(f"export {k}={shlex.quote(str(v))}")
    return "\n".join(lines) or "true"


def _python(profile: dict) -> str:
    venv = Path(profile.get("venv") or ".venv")
    python = str(venv if venv.is_absolute() else REPO_ROOT / venv) + "/bin/python"
    if profile.get("container"):
        python = f"singularity exec --bind {REPO_ROOT} {profile['container']} {python}"
    return python


def render(
    profile: dict,
    recipe_path: str,
    nodes: int,
    run_name: str,
    params_file: str,
    sweep_dir: str = "",
    output_root: str = "runs",
    n_tasks: int = 0,
) -> str:
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
        "JOB_NAME": run_name,
        "NODES": str(nodes),
        "LOG_DIR": str(Path(output_root) / "logs"),
        "SIGNAL_S": str(profile.get("signal_before_end_s", 300)),
        "SBATCH_LINES": "\n".join(sbatch),
        "REPO": str(REPO_ROOT),
        "SETUP": _setup_lines(profile),
        "PYTHON": _python(profile),
        "RECIPE": recipe_path,
        "OUTPUT_ROOT": output_root,
        "RUN_NAME": run_name,
        "PARAMS_FILE": params_file,
        "SWEEP_DIR": sweep_dir,
    }
    text = TEMPLATE.read_text()
    for k, v in fields.items():
        text = text.replace(f"@@{k}@@", v)
    left = re.findall(r"@@[A-Z_]+@@", text)
    assert not left, f"unfilled template fields {left}"
    return text


def prepare(
    profile_name: str,
    recipe_path: str | None,
    nodes: int,
    run_name: str | None,
    overrides: dict,
    sweep_path: str | None = None,
    resume: bool = False,
    output_root: str = "runs",
) -> dict:
    """Validate everything and write the job folder; returns what submit() needs. Queues nothing."""
    profile = load_profile(profile_name)
    sweep: dict = {}
    if sweep_path:
        sp = Path(sweep_path)
        if not sp.exists():
            raise SubmitError(f"{sp}: no such sweep file")
        sweep = yaml.safe_load(sp.read_text()) or {}
        recipe_path = recipe_path or sweep.get("recipe")
        run_name = run_name or sweep.get("name") or sp.stem
    if not recipe_path:
        raise SubmitError("no recipe: pass --recipe recipes/<name>.yaml (or give recipe: in the sweep file)")
    rp = Path(recipe_path)
    rp = rp if rp.is_absolute() else REPO_ROOT / rp
    if not rp.exists():
        raise SubmitError(
            f"{recipe_path}: no such recipe file. Recipes live in recipes/ (e.g. recipes/tiny_cpu.yaml)."
        )
    if nodes < 1:
        raise SubmitError(f"--nodes must be at least 1, not {nodes}")
    gpus = int(profile.get("gpus_per_node") or 0)
    job = dict(overrides)
    job["nnodes"] = nodes
    if gpus:
        job.setdefault("nproc_per_node", gpus)
    tasks = sweep_tasks(sweep, str(sweep_path)) if sweep else [{}]
    base = load_recipe(rp, overrides=job)  # unknown keys, types, combinations: before anything is queued
    run_name = run_name or base.kit["run_name"]
    out_root = Path(output_root) if Path(output_root).is_absolute() else REPO_ROOT / output_root
    names = [f"{run_name}-{i}" for i in range(len(tasks))] if sweep else [run_name]
    for i, task in enumerate(tasks):
        try:
            load_recipe(rp, overrides={**job, **task})
        except RecipeError as e:
            raise SubmitError(f"sweep task {i} ({task}): {e}") from None
        if (out_root / names[i] / "recipe.yaml").exists() and not resume:
            raise SubmitError(
                f"run folder {out_root / names[i]} exists: pass --resume to continue it, or choose "
                "another --name (a run is never overwritten)."
            )
    job_dir = out_root / ".jobs" / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_dir.mkdir(parents=True, exist_ok=True)
    (out_root / "logs").mkdir(exist_ok=True)
    params_file = job_dir / "params.yaml"
    params_file.write_text(yaml.safe_dump(job, sort_keys=False))
    for i, task in enumerate(tasks if sweep else []):
        (job_dir / f"task-{i}.yaml").write_text(yaml.safe_dump({**job, **task}, sort_keys=False))
    script = render(
        profile,
        str(rp),
        nodes,
        run_name,
        str(params_file),
        str(job_dir) if sweep else "",
        str(out_root),
        len(tasks) if sweep else 0,
    )
    (job_dir / "job.sbatch").write_text(script)
    return {
        "script": script,
        "job_dir": job_dir,
        "tasks": tasks if sweep else [],
        "names": names,
        "out_root": out_root,
        "log_dir": out_root / "logs",
        "run_name": run_name,
    }


def submit(prepared: dict, sbatch_args: list[str] | None = None) -> str:
    """sbatch the rendered script; return the job id."""
    cmd = ["sbatch", "--parsable", *(sbatch_args or []), str(prepared["job_dir"] / "job.sbatch")]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SubmitError(
            "sbatch not found: submit from a cluster login node (or use --dry-run here)"
        ) from None
    if out.returncode != 0:
        raise SubmitError(f"sbatch refused the job: {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m workshop_lib submit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--profile", required=True, help="slurm/profiles/<name>.yaml: lumi, nvidia, local, or a path"
    )
    ap.add_argument("--recipe", help="recipe YAML (or recipe: in the sweep file)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--name", help="run name (default: the recipe's run_name; sweeps: <name>-<task>)")
    ap.add_argument("--sweep", help="a grid file: recipe, name, grid {key: [values]}, fixed {key: value}")
    ap.add_argument("--output-root", default="runs")
    ap.add_argument("--resume", action="store_true", help="continue an existing run folder")
    ap.add_argument("--dry-run", action="store_true", help="show the job script, queue nothing")
    ap.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="recipe override"
    )
    ap.add_argument("sbatch_args", nargs="*", help="after --: options for sbatch, overriding the script's")
    args = ap.parse_args(argv)
    overrides = {k: parse_value(v) for k, v in args.p}
    try:
        prep = prepare(
            args.profile,
            args.recipe,
            args.nodes,
            args.name,
            overrides,
            args.sweep,
            args.resume,
            args.output_root,
        )
    except (SubmitError, RecipeError) as e:
        print(f"submit: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(prep["script"])
        print(f"# dry run: nothing queued. Job files in {prep['job_dir']}", file=sys.stderr)
        return 0
    try:
        job_id = submit(prep, args.sbatch_args)
    except SubmitError as e:
        print(f"submit: {e}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}")
    print(f"  log:  {prep['log_dir']}/{prep['run_name']}-{job_id}.out")
    for name in prep["names"]:
        print(f"  run:  {prep['out_root'] / name}")
    return 0
