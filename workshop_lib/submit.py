"""Submit: render slurm/train.sbatch from a cluster profile and a recipe, check everything, sbatch it.

    python -m workshop_lib submit --profile lumi --recipe recipes/poro34b_zero3.yaml --nodes 3
    python -m workshop_lib submit --profile local --sweep sweeps/lr.yaml --dry-run
    python -m workshop_lib submit ... -- --time=04:00:00 --qos=high     (extra sbatch options win)

Everything is validated before anything is queued: the profile exists, the recipe and every override
load (unknown keys, wrong types), the run folder is not an existing run (unless --resume), the values
after -p come in pairs, the partition exists, has GPUs if the profile asks for them, and enough nodes, and
an offline profile's cache holds the recipe's hub model.
Each job (or array task) gets one recipe file in its job folder: the recipe merged with the overrides
and its sweep values. --dry-run shows the job script and the sbatch command, and writes nothing.

The job runs the notebook of the recipe's trainer (sft: 03, dpo: 06). A profile's `torch` key picks how
the job finds torch: pip (a plain venv), module, or container (python runs in a Singularity image); with
`routes:` each choice brings its own modules and image (slurm/profiles/lumi.yaml). GPU-to-CPU binding
(cpu_bind_masks) and a per-job MIOpen cache (miopen_cache) are profile keys too.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import jobscript
from .jobscript import LAUNCHERS, SubmitError, job_notebook, load_profile, render, route
from .paths import resolve
from .prefetch import missing_offline
from .recipe import RecipeError, load_recipe, parse_value, read_yaml
from .runfolder import resized_accumulation

__all__ = ["SubmitError", "load_profile", "parse_value", "prepare", "submit"]


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


# ----------------------------------------------------------------------------- what the partition offers
def _sbatch_option(sbatch_args: list[str], *names: str) -> str | None:
    """The value of an sbatch option given after -- (--partition=x, --partition x, -p x)."""
    for i, arg in enumerate(sbatch_args):
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(sbatch_args):
                return sbatch_args[i + 1]
    return None


def partition_info(partition: str | None) -> dict | None:
    """{name, nodes, gres} of a partition (the default one for None) from sinfo, or None without Slurm."""
    cmd = ["sinfo", "-h", "-o", "%P|%D|%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2]
    if not partition:
        rows = [r for r in rows if r[0].endswith("*")]
    if not rows:
        return {"name": partition, "nodes": 0, "gres": []}
    gres = sorted({g for r in rows for g in r[2].split(",") if g and g != "(null)"})
    return {"name": rows[0][0].rstrip("*"), "nodes": sum(int(r[1]) for r in rows), "gres": gres}


def check_partition(profile: dict, nodes: int, sbatch_args: list[str]) -> list[str]:
    """Errors (SubmitError) for a partition that does not exist or has no GPUs for a GPU profile; warnings
    (returned) when it has fewer nodes than asked for (the job would pend forever)."""
    partition = _sbatch_option(sbatch_args, "--partition", "-p") or profile.get("partition")
    info = partition_info(partition)
    if info is None:
        return []  # no sinfo here (a dry run on a laptop): sbatch will check
    if info["nodes"] == 0:
        raise SubmitError(
            f"partition {partition!r} does not exist on this cluster (sinfo lists none): set partition: in "
            f"the profile ({profile['_path']}) or pass -- --partition=<name>; `sinfo -s` lists them."
        )
    gpus = int(profile.get("gpus_per_node") or 0)
    asks_gpus = gpus or _sbatch_option(sbatch_args, "--gpus-per-node", "--gres", "--gpus", "-G")
    if asks_gpus and not any(g.startswith("gpu") for g in info["gres"]):
        raise SubmitError(
            f"profile {Path(profile['_path']).stem} asks for GPUs (gpus_per_node: {gpus}) but partition "
            f"{info['name']!r} has none (sinfo shows no gpu gres): choose a GPU partition (partition: in the "
            "profile or -- --partition=<name>), or use a CPU profile such as local (gpus_per_node: 0)."
        )
    if nodes > info["nodes"]:
        return [
            f"warning: partition {info['name']!r} has {info['nodes']} node(s) and the job asks for {nodes}: it "
            "would pend until the partition grows. Ask for fewer nodes (--nodes) or another partition."
        ]
    return []


@dataclass
class Job:
    """A validated job, not yet written: the script, one recipe per task, where everything goes."""

    script: str
    recipes: dict[str, dict]  # file name in the job folder -> merged recipe
    job_dir: Path
    run_name: str
    names: list[str]  # run folder names (one per array task)
    out_root: Path
    log_dir: Path
    sweep: bool
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # a real submit stops on these; a dry run shows them

    def sbatch_command(self, sbatch_args: list[str] | None = None) -> list[str]:
        return ["sbatch", "--parsable", *(sbatch_args or []), str(self.job_dir / "job.sbatch")]

    def log_paths(self, job_id: str) -> list[Path]:
        if self.sweep:
            return [self.log_dir / f"{self.run_name}-{job_id}_{i}.out" for i in range(len(self.names))]
        return [self.log_dir / f"{self.run_name}-{job_id}.out"]

    def write(self) -> None:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, recipe in self.recipes.items():
            (self.job_dir / name).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
        (self.job_dir / "job.sbatch").write_text(self.script)


def prepare(
    profile_name: str,
    recipe_path: str | None,
    nodes: int,
    run_name: str | None,
    overrides: dict,
    sweep_path: str | None = None,
    resume: bool = False,
    output_root: str | None = None,
    launcher: str | None = None,
    sbatch_args: list[str] | None = None,
) -> Job:
    """Validate everything and build the job; writes nothing, queues nothing."""
    profile = load_profile(profile_name)
    output_root = jobscript.output_root(profile, output_root)
    sweep: dict = {}
    if sweep_path:
        sp = resolve(sweep_path)
        if not sp.exists():
            raise SubmitError(f"{sp}: no such sweep file")
        sweep = yaml.safe_load(sp.read_text()) or {}
        recipe_path = recipe_path or sweep.get("recipe")
        run_name = run_name or sweep.get("name") or sp.stem
    if not recipe_path and not (resume and run_name):
        raise SubmitError("no recipe: pass --recipe recipes/<name>.yaml (or give recipe: in the sweep file)")
    if nodes < 1:
        raise SubmitError(f"--nodes must be at least 1, not {nodes}")
    launcher = launcher or profile.get("launcher") or "papermill"
    if launcher not in LAUNCHERS:
        raise SubmitError(
            f"launcher {launcher!r}: use one of {', '.join(LAUNCHERS)} (--launcher or the profile)"
        )
    base = read_yaml(recipe_path) if recipe_path else {}  # names the file if it is missing or broken
    job = {**overrides, "nnodes": nodes}
    gpus = int(profile.get("gpus_per_node") or 0)
    if gpus and "nproc_per_node" not in overrides:
        job["nproc_per_node"] = gpus  # one process per GPU
    tasks = sweep_tasks(sweep, str(sweep_path)) if sweep else [{}]
    run_name = run_name or load_recipe({**base, **job}, name=str(recipe_path)).run_name
    out_root = resolve(output_root)
    names = [f"{run_name}-{i}" for i in range(len(tasks))] if sweep else [run_name]
    recipes, trainers, notes, refusals = {}, set(), [], []
    for i, task in enumerate(tasks):
        recorded = out_root / names[i] / "recipe.yaml"
        merged = {**base, **job, **task}
        label = f"{recipe_path} + overrides" + (f" + sweep task {i} {task}" if sweep else "")
        if resume:  # the run's own recipe, with what this command changes on top
            merged, label, note = _resumed(recorded, recipe_path, job)
            notes.append(note)
        try:  # unknown keys, types, combinations, a resize the run cannot take: before anything is queued
            loaded = load_recipe(merged, name=label)
            if resume:
                notes += _resize_note(yaml.safe_load(recorded.read_text()) or {}, loaded)
            trainers.add(loaded.trainer)
        except RecipeError as e:
            raise SubmitError(str(e)) from None
        missing = missing_offline(profile, profile_name, str(loaded.model))
        if missing and missing not in refusals:
            refusals.append(missing)
        if recorded.exists() and not resume:
            raise SubmitError(
                f"run folder {out_root / names[i]} exists: pass --resume to continue it, or choose "
                "another --name (a run is never overwritten)."
            )
        recipes[f"task-{i}.yaml" if sweep else "recipe.yaml"] = merged
    notebook = job_notebook(trainers, launcher, str(sweep_path or recipe_path))
    warnings = (
        notes
        + check_partition(profile, nodes, sbatch_args or [])
        + _image_warnings(profile, sbatch_args or [])
    )
    job_dir = out_root / ".jobs" / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir = out_root / "logs"
    log_file = log_dir / ("%x-%A_%a.out" if sweep else "%x-%j.out")
    fields = {
        "JOB_NAME": run_name,
        "NODES": str(nodes),
        "LOG_FILE": str(log_file),
        "LOG_DIR": str(log_dir),
        "LAUNCHER": launcher,
        "NOTEBOOK": notebook,
        "JOB_DIR": str(job_dir),
        "OUTPUT_ROOT": str(out_root),
        "RUN_NAME": run_name,
    }
    script = render(profile, fields, len(tasks) if sweep else 0)
    return Job(script, recipes, job_dir, run_name, names, out_root, log_dir, bool(sweep), warnings, refusals)


def _resumed(recorded: Path, recipe_path: str | None, job: dict) -> tuple[dict, str, str]:
    """A resume continues the run's own recipe.yaml (not --recipe): (the recipe, its label, what it says)."""
    if not recorded.exists():
        raise SubmitError(
            f"nothing to resume: {recorded.parent} has no recipe.yaml (the run never started); drop --resume"
        )
    own = yaml.safe_load(recorded.read_text()) or {}
    changed = [f"{k} {own.get(k)!r} -> {v!r}" for k, v in job.items() if own.get(k) != v]
    ignored = f" (--recipe {recipe_path} is not used)" if recipe_path else ""
    note = f"resume: the run's own {recorded}{ignored}; " + (
        f"changed: {', '.join(changed)}" if changed else "no override changes it"
    )
    return {**own, **job}, f"{recorded} + overrides", note


def _resize_note(recorded: dict, recipe) -> list[str]:
    """On another number of processes: how the global batch is kept, or RecipeError (before queueing)."""
    old_world = int(recorded.get("nproc_per_node", 1)) * int(recorded.get("nnodes", 1))
    if old_world == recipe.world_size:
        return []
    return [f"resume: {resized_accumulation(recorded, recipe)[1]}"]


def _image_warnings(profile: dict, sbatch_args: list[str]) -> list[str]:
    """A container image that is not there, said only on the profile's own cluster (sinfo knows its
    partition): a dry run elsewhere is expected to miss the cluster's paths."""
    image = route(profile)["image"]
    if not image or "$" in image or Path(image).exists():
        return []
    partition = _sbatch_option(sbatch_args, "--partition", "-p") or profile.get("partition")
    if not (partition_info(partition) or {}).get("nodes"):
        return []
    return [
        f"warning: container image {image} does not exist: set routes: {route(profile)['torch']}: image: in "
        f"{profile['_path']} (LUMI: ls /appl/local/laifs/containers/)"
    ]


def submit(job: Job, sbatch_args: list[str] | None = None) -> str:
    """Write the job folder, sbatch the script; return the job id."""
    job.write()
    try:
        out = subprocess.run(job.sbatch_command(sbatch_args), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SubmitError(
            "sbatch not found: submit from a cluster login node (or use --dry-run here)"
        ) from None
    if out.returncode != 0:
        raise SubmitError(f"sbatch refused the job: {out.stderr.strip()} (job files in {job.job_dir})")
    return out.stdout.strip().split(";")[0]


# ----------------------------------------------------------------------------- command
def _sbatch_args(rest: list[str], pairs: list[list[str]]) -> list[str]:
    """What came after `--`; anything else left over is a stray value (most often a second -p value)."""
    if not rest:
        return []
    if rest[0] == "--":
        return rest[1:]
    after = f" after -p {' '.join(pairs[-1])}" if pairs else ""
    raise SubmitError(
        f"unexpected {rest[0]!r}{after}: -p takes one KEY and one VALUE (a list is one value: "
        f"-p key '[1, 2]'; several runs: --sweep). Options for sbatch go after --, e.g. -- --time=04:00:00"
    )


def _command(args: argparse.Namespace) -> int:
    try:
        sbatch_args = _sbatch_args(args.sbatch_args, args.p)
        if not args.profile:
            raise SubmitError("--profile is required: lumi, nvidia, local, or a path to a profile YAML")
        overrides = {k: parse_value(v) for k, v in args.p}
        job = prepare(
            args.profile,
            args.recipe,
            args.nodes,
            args.name,
            overrides,
            args.sweep,
            args.resume,
            args.output_root,
            args.launcher,
            sbatch_args,
        )
    except (SubmitError, RecipeError) as e:
        print(f"submit: {e}", file=sys.stderr)
        return 2
    for w in job.warnings:
        print(f"submit: {w}", file=sys.stderr)
    for r in job.refusals:  # what the job would fail on at its start (a dry run shows the script anyway)
        print(f"submit: {r}" + (" (a real submit stops here)" if args.dry_run else ""), file=sys.stderr)
    if job.refusals and not args.dry_run:
        return 2
    if args.dry_run:
        print(job.script)
        for name, recipe in job.recipes.items():
            print(f"#### {job.job_dir / name}\n" + yaml.safe_dump(recipe, sort_keys=False).rstrip())
        print(
            f"#### the command (dry run: nothing written, nothing queued)\n{shlex.join(job.sbatch_command(sbatch_args))}"
        )
        return 0
    try:
        job_id = submit(job, sbatch_args)
    except SubmitError as e:
        print(f"submit: {e}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}")
    for log, name in zip(job.log_paths(job_id), job.names, strict=True):
        print(f"  log:  {log}")
        print(f"  run:  {job.out_root / name}")
    if job.sweep:
        print(f"  ({len(job.names)} array tasks; nodes other than node 0 log to <log>.node<N>.out)")
    return 0


def register(subparsers) -> None:
    """`submit`: render and sbatch the training job."""
    ap = subparsers.add_parser(
        "submit",
        help="render and sbatch the training job (submit --help)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--profile", help="slurm/profiles/<name>.yaml: lumi, nvidia, local, or a path")
    ap.add_argument("--recipe", help="recipe YAML (or recipe: in the sweep file)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--name", help="run name (default: the recipe's run_name; sweeps: <name>-<task>)")
    ap.add_argument("--sweep", help="a grid file: recipe, name, grid {key: [values]}, fixed {key: value}")
    ap.add_argument(
        "--output-root",
        help="where run folders go: default the profile's output_root ($USER expands: one folder per "
        "participant in a shared project), else runs/",
    )
    ap.add_argument("--resume", action="store_true", help="continue an existing run folder")
    ap.add_argument("--launcher", choices=LAUNCHERS, help="papermill (default, the notebook) or python")
    ap.add_argument("--dry-run", action="store_true", help="show the job script and command; write nothing")
    ap.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="recipe override"
    )
    ap.add_argument("sbatch_args", nargs=argparse.REMAINDER, help="after --: options for sbatch (they win)")
    ap.set_defaults(func=_command)


def main(argv: list[str]) -> int:
    """`submit` on its own (the CLI calls it through register)."""
    parser = argparse.ArgumentParser(prog="python -m workshop_lib")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["submit", *argv])
    return args.func(args)
