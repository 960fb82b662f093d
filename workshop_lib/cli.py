"""Command line: `python -m workshop_lib COMMAND --help` (or `workshop COMMAND` once installed).

Every command goes through this one parser; each lives in the module that does its job and adds its
own sub-command there (`register`): demo, train, submit, plan, validate, failure-report, job-env, ...
"""

from __future__ import annotations

import argparse
import sys


def _plot(args) -> int:
    """Loss curves and summary of run folders: into the run folder (one run) or --out (several)."""
    from .plots import write_report
    from .runs import load_runs

    runs, problems = [], []
    for p in args.runs:
        found, probs = load_runs(p)
        runs += found
        problems += probs
    for p in problems:
        print(f"plot: {p}", file=sys.stderr)
    if not runs:
        print(
            "plot: no run to plot (see above). Give run folders (runs/demo-*) or TRL output_dirs with TensorBoard events.",
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

    return doctor.main(args.model, args.profile, args.recipe)


def parser() -> argparse.ArgumentParser:
    from . import demo, failures, jobenv, kernel, lab, modelcard, plan, prefetch, push, submit, train
    from .data import command as data_command

    ap = argparse.ArgumentParser(prog="python -m workshop_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    train.register(sub)
    submit.register(sub)
    plan.register(sub)
    data_command.register(sub)
    failures.register(sub)
    jobenv.register(sub)
    modelcard.register(sub)
    push.register(sub)
    prefetch.register(sub)
    kernel.register(sub)
    lab.register(sub)
    p = sub.add_parser("plot", help="loss curves and summary of run folders")
    p.add_argument("runs", nargs="+", help="run folders or globs (quote them: 'runs/sweep-*')")
    p.add_argument(
        "--out", help="folder for the plot and summary (default: the run folder, or runs/comparison)"
    )
    p.add_argument("--x", default="step", choices=["step", "epoch", "tokens"])
    p.add_argument("--smoothing", type=float, default=0.6)
    p.set_defaults(func=_plot)
    p = sub.add_parser("doctor", help="check the environment: versions, GPUs, Slurm, folders, caches")
    p.add_argument("--model", default=None, help="also check that this model's config and tokenizer load")
    p.add_argument(
        "--profile", help="also check that an offline profile's cache has the model and the recipe's hub data"
    )
    p.add_argument("--recipe", help="with --profile: the recipe whose model and hub datasets jobs will read")
    p.set_defaults(func=_doctor)
    p = sub.add_parser(
        "build-tiny-model", help="build (or find) the offline tiny chat model, print its folder"
    )
    p.set_defaults(func=_build_tiny_model)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
