"""Command line: `python -m workshop_lib <command>` (or `workshop <command>` once installed).

demo [--name N]             notebooks 01 -> 05 headless on the tiny model, into runs/<N>/
plot RUN [RUN ...]          loss curves + summary of run folders (globs welcome), into each run / --out
plan RECIPE [-p key value]  memory and time estimate before you queue
doctor [--model M]          check the environment: versions, GPUs, Slurm, folders, caches
submit --profile P ...      render and sbatch the training job (see `submit --help`)
failure-report RUN          the last error of each rank of a run (printed by the batch job)
build-tiny-model            build (or find) the offline tiny chat model and print its folder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from .model import REPO_ROOT

DEMO_NOTEBOOKS = [
    "01_data_formatting",
    "02_chat_templates",
    "03_train",
    "04_loss_curves",
    "05_chat_and_export",
]


def run_notebook(name: str, out_dir: Path, parameters: dict, log_output: bool = False) -> Path:
    """Execute notebooks/<name>.ipynb with papermill into out_dir/<name>.ipynb (cwd: the repository)."""
    import papermill as pm

    out = out_dir / f"{name}.ipynb"
    pm.execute_notebook(
        str(REPO_ROOT / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(REPO_ROOT),
        kernel_name="python3",
        progress_bar=False,
        log_output=log_output,
    )
    return out


def demo(name: str | None, recipe_file: str = "recipes/tiny_cpu.yaml") -> int:
    """The main job: the whole pipeline on the tiny model, one run folder, a summary at the end."""
    from .model import build_tiny_model

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = name or datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    run_dir = REPO_ROOT / "runs" / name
    if (run_dir / "recipe.yaml").exists():
        print(f"demo: {run_dir} exists already; choose another --name (nothing was changed)", file=sys.stderr)
        return 2
    nb_dir = run_dir / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"demo: tiny model at {build_tiny_model()} ({time.time() - t0:.1f} s)")
    params = {
        "01_data_formatting": {"output_dir": str(run_dir / "data")},
        "02_chat_templates": {"dataset": str(run_dir / "data" / "train.jsonl")},
        "03_train": {
            "recipe_file": recipe_file,
            "run_name": name,
            "output_root": str(REPO_ROOT / "runs"),
            "train_file": str(run_dir / "data" / "train.jsonl"),
            "eval_file": str(run_dir / "data" / "eval.jsonl"),
        },
        "04_loss_curves": {"runs": str(run_dir)},
        "05_chat_and_export": {"run": str(run_dir)},
    }
    for nb in DEMO_NOTEBOOKS:
        if not (REPO_ROOT / "notebooks" / f"{nb}.ipynb").exists():
            continue
        t = time.time()
        print(f"demo: running {nb} ...", flush=True)
        run_notebook(nb, nb_dir, params[nb], log_output=(nb == "03_train"))
        print(f"demo: {nb} done in {time.time() - t:.0f} s -> {nb_dir / (nb + '.ipynb')}", flush=True)
    print_summary(run_dir, time.time() - t0)
    return 0


def print_summary(run_dir: Path, seconds: float) -> None:
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    from .plots import load_run

    run = load_run(run_dir)
    _, loss = run.series("loss")
    em_b, em_a = result.get("exact_match_before"), result.get("exact_match_after")
    lines = [
        "",
        f"demo finished in {seconds:.0f} s: {run_dir}",
        f"  final train loss   {loss[-1]:.4f}" if loss else "  final train loss   -",
        f"  final eval loss    {result['eval_loss']:.4f}"
        if "eval_loss" in result
        else "  final eval loss    -",
        f"  held-out exact match: before {em_b:.1%} -> after {em_a:.1%} (n={result.get('exact_match_n')})"
        if em_a is not None and em_b is not None
        else "  held-out exact match: -",
        f"  executed notebooks {run_dir / 'notebooks'}",
        f"  model              {run_dir / 'final'}",
    ]
    for extra in ("loss_curves.png", "merged"):
        if (run_dir / extra).exists():
            lines.append(f"  {extra:<18} {run_dir / extra}")
    print("\n".join(lines))


def plot(paths: list[str], out: str | None, x: str, smoothing: float) -> int:
    """Write loss_curves.png/.svg and summary.csv/.md: into the run folder (one run) or --out (several)."""
    from .plots import load_runs, write_report

    runs, problems = [], []
    for p in paths:
        found, probs = load_runs(p)
        runs += found
        problems += probs
    for p in problems:
        print(f"plot: {p}", file=sys.stderr)
    if not runs:
        print(
            "plot: no run to plot (see above). Give run folders written by notebook 03, e.g. runs/demo-*.",
            file=sys.stderr,
        )
        return 2
    report = write_report(runs, out, x=x, smoothing=smoothing)
    print(report["table"].to_string(index=False))
    print("wrote", *report["written"], sep="\n  ")
    return 0


SECONDARY = (
    "Connection reset by peer",
    "Connection closed by peer",
    "timed out",
    "Timeout",
    "recvBytes",
    "remote worker",
    "NCCL communicator was aborted",
    "ProcessGroupGloo",
)


def failure_report(run_dir: str) -> int:
    """Print the last error of each rank and node of a run; the likely root cause is printed last.

    A rank that died by a signal, or raised an error of its own, is the cause; ranks whose collectives
    then broke ("connection reset by peer", timeouts) are consequences and are printed first.
    """
    import nbformat

    run = Path(run_dir)
    found: list[tuple[bool, str, str]] = []  # (is root cause, where, text)
    for log in sorted((run / "logs").glob("rank*.log")):
        text = log.read_text(errors="replace")
        at = text.rfind("Traceback (most recent call last)")
        if at >= 0:
            tb = text[at:].strip()
            last = tb.splitlines()[-1]
            found.append((not any(s in last for s in SECONDARY), str(log), tb[-3000:]))
    latest: dict[str, Path] = {}
    for nb_path in sorted((run / "notebooks").glob("03_train.node*.ipynb"), key=lambda p: p.stat().st_mtime):
        latest[nb_path.name.split(".")[1]] = nb_path  # node0, node1, ...: the newest try of each node
    for nb_path in latest.values():
        try:
            nb = nbformat.read(nb_path, as_version=4)
        except Exception:
            continue
        for cell in nb.cells:
            for o in cell.get("outputs", []):
                if o.get("output_type") == "error":
                    value = str(o.get("evalue", ""))
                    cause = "signal" in value or not any(x in value for x in SECONDARY)
                    found.append((cause, str(nb_path), f"{o.get('ename')}: {value}"[-3000:]))
    if not found:
        print(f"no traceback found in {run}/logs or its notebooks: see the job log above (a kill or a crash)")
        return 0
    for cause, where, text in sorted(found, key=lambda x: x[0]):
        print(f"===== {'ROOT CAUSE: ' if cause else ''}{where} =====\n{text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["submit"]:
        from . import submit

        return submit.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m workshop_lib",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the demo pipeline on the tiny model")
    d.add_argument("--name", help="run folder name under runs/ (default: demo-<date>-<time>)")
    d.add_argument("--recipe", default="recipes/tiny_cpu.yaml")
    p = sub.add_parser("plot", help="loss curves and summary of run folders")
    p.add_argument("runs", nargs="+", help="run folders or globs (quote them: 'runs/sweep-*')")
    p.add_argument(
        "--out", help="folder for the plot and summary (default: the run folder, or runs/comparison)"
    )
    p.add_argument("--x", default="step", choices=["step", "epoch", "tokens"])
    p.add_argument("--smoothing", type=float, default=0.6)
    sub.add_parser("build-tiny-model", help="build the offline tiny chat model and print its folder")
    pl = sub.add_parser("plan", help="memory and time estimate for a recipe")
    pl.add_argument("recipe")
    pl.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    pl.add_argument("--gpu-memory-gb", type=float, default=None)
    fr = sub.add_parser("failure-report", help="the last error of each rank of a run")
    fr.add_argument("run")
    sub.add_parser("submit", help="render and sbatch the training job (submit --help)")
    doc = sub.add_parser("doctor", help="check the environment")
    doc.add_argument("--model", default=None, help="also check that this model's config and tokenizer load")
    args = parser.parse_args(argv)

    if args.command == "demo":
        return demo(args.name, args.recipe)
    if args.command == "plot":
        return plot(args.runs, args.out, args.x, args.smoothing)
    if args.command == "build-tiny-model":
        from .model import build_tiny_model

        print(build_tiny_model())
        return 0
    if args.command == "plan":
        from . import plan

        return plan.main(args.recipe, dict(args.p), args.gpu_memory_gb)
    if args.command == "failure-report":
        return failure_report(args.run)
    if args.command == "doctor":
        from . import doctor

        return doctor.main(args.model)
    return 1
