"""Command line: `python -m workshop_lib COMMAND --help` (or `workshop COMMAND` once installed).

Every command goes through this one parser; each lives in the module that does its job and adds its own
sub-command there (`register`).
"""

from __future__ import annotations

import argparse
import sys


def _plot(args) -> int:
    """Loss curves and summary of run folders: into the run folder (one run) or --out (several)."""
    from .plots import load_runs, write_report

    runs, problems = [], []
    for p in args.runs:
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
    report = write_report(runs, args.out, x=args.x, smoothing=args.smoothing)
    print(report["table"].to_string(index=False))
    print("wrote", *report["written"], sep="\n  ")
    return 0


def _build_tiny_model(args) -> int:
    from .model import build_tiny_model

    print(build_tiny_model())
    return 0


def _doctor(args) -> int:
    from . import doctor

    return doctor.main(args.model)


def _plan(args) -> int:
    from . import plan

    return plan.main(args.recipe, dict(args.p), args.gpu_memory_gb)


def _submit(args) -> int:
    from . import submit

    return submit.main(args.argv)


def _failure_report(args) -> int:
    from . import failures

    return failures.report(args.run)


def _job_env(args) -> int:
    from .launch import master_port
    from .runfolder import PREEMPTED_FILE, STOP_FILE

    print(f"export MASTER_PORT={master_port()} STOP_FILE={STOP_FILE} PREEMPTED_FILE={PREEMPTED_FILE}")
    return 0


def parser() -> argparse.ArgumentParser:
    from . import demo, train
    from .data import command as data_command

    ap = argparse.ArgumentParser(prog="python -m workshop_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    train.register(sub)
    data_command.register(sub)
    p = sub.add_parser("plot", help="loss curves and summary of run folders")
    p.add_argument("runs", nargs="+", help="run folders or globs (quote them: 'runs/sweep-*')")
    p.add_argument(
        "--out", help="folder for the plot and summary (default: the run folder, or runs/comparison)"
    )
    p.add_argument("--x", default="step", choices=["step", "epoch", "tokens"])
    p.add_argument("--smoothing", type=float, default=0.6)
    p.set_defaults(func=_plot)
    p = sub.add_parser("plan", help="memory and time estimate for a recipe, before you queue")
    p.add_argument("recipe")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    p.add_argument("--gpu-memory-gb", type=float, default=None)
    p.set_defaults(func=_plan)
    p = sub.add_parser("doctor", help="check the environment: versions, GPUs, Slurm, folders, caches")
    p.add_argument("--model", default=None, help="also check that this model's config and tokenizer load")
    p.set_defaults(func=_doctor)
    p = sub.add_parser("submit", help="render and sbatch the training job", add_help=False)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=_submit)
    p = sub.add_parser("failure-report", help="the root cause of a failed run, from its ranks' logs")
    p.add_argument("run")
    p.set_defaults(func=_failure_report)
    p = sub.add_parser(
        "job-env", help="shell exports the Slurm job script takes from Python (port, file names)"
    )
    p.set_defaults(func=_job_env)
    p = sub.add_parser(
        "build-tiny-model", help="build (or find) the offline tiny chat model, print its folder"
    )
    p.set_defaults(func=_build_tiny_model)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
