"""`python -m workshop_lib validate FILE... [--drop]`: check data before queueing a job.

Exit status: 0 every input valid, 1 problems found (each printed with its file, line and field), 2 an input
could not be read (missing, not UTF-8, not JSON at all, an unknown hub id) or --drop could not write.
--drop writes the valid conversations of each input with problems to a new file beside it
(`<name>.valid.jsonl`; for a hub id, in the current folder); an existing file is never replaced.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .load import load_conversations
from .ops import write_jsonl
from .read import split_spec
from .trees import PATHS

FORMAT_CHOICES = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "qa", "oasst")


def register(subparsers) -> None:
    """Add the `validate` command to a CLI's subparsers."""
    p = subparsers.add_parser(
        "validate",
        help="check data files (or hub datasets) before training; exit 1 on problems",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="file, dataset folder, or hub id[:split]")
    p.add_argument(
        "--drop", action="store_true", help="write the valid rows of each input to <name>.valid.jsonl"
    )
    p.add_argument(
        "--format", default="auto", choices=FORMAT_CHOICES, help="row format (default: detect per row)"
    )
    p.add_argument(
        "--columns", default=None, help="map roles to columns of a table: user=question,assistant=answer"
    )
    p.add_argument(
        "--paths", default="all", choices=PATHS, help="message trees: every path, or the best-ranked"
    )
    p.add_argument("--pairs", action="store_true", help="preference pairs for DPO (prompt, chosen, rejected)")
    p.add_argument("--max-problems", type=int, default=20, help="problems listed per input (default 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate each input; print located problems and a summary; return the exit status."""
    try:
        columns = _columns(args.columns)
    except ValueError as e:
        print(f"validate: {e}", file=sys.stderr)
        return 2
    status = 0
    for spec in args.inputs:
        status = max(status, _one(spec, args, columns))
    return status


def _one(spec: str, args: argparse.Namespace, columns: dict[str, str] | None) -> int:
    source, split = split_spec(spec)
    try:
        if getattr(args, "pairs", False):
            from .pairs import load_preferences

            rows, report = load_preferences(source, split=split, on_error="drop")
        else:
            rows, report = load_conversations(
                source, fmt=args.format, columns=columns, on_error="drop", paths=args.paths, split=split
            )
    except (OSError, ValueError) as e:  # unreadable: DataError is raised only with on_error="raise"
        print(f"{spec}: cannot read: {e}")
        return 2
    for p in report.problems[: args.max_problems]:
        print(p)
    if len(report.problems) > args.max_problems:
        print(
            f"... and {len(report.problems) - args.max_problems} more problems (--max-problems N lists more)"
        )
    print(report.summary())
    for note in report.notes:
        print(f"  note: {note}")
    if any(p.field == "(file)" and p.kind == "invalid JSON" for p in report.problems):
        return 2  # the file as a whole is not JSON: nothing in it could be checked
    if not report.problems:
        return 0
    if args.drop:
        out = _valid_path(source, split)
        if not rows:
            print(f"  --drop: no valid conversations in {spec}; nothing written")
            return 1
        try:
            existed = out.exists()
            write_jsonl(rows, out)
        except FileExistsError:
            print(f"  --drop: {out} exists with other rows; it was kept. Remove or rename it, then rerun.")
            return 2
        print(f"  --drop: {len(rows)} valid conversations {'already in' if existed else 'written to'} {out}")
    return 1


def _valid_path(source: str, split: str | None) -> Path:
    """Where --drop writes: beside a file or folder; for a hub id, in the current folder."""
    path = Path(source).expanduser()
    tag = f".{re.sub(r'[^A-Za-z0-9_-]+', '_', split)}" if split else ""
    if path.exists():
        stem = path.name
        for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow"):
            stem = stem.removesuffix(suffix)
        return path.parent / f"{stem}{tag}.valid.jsonl"
    return Path.cwd() / f"{source.replace('/', '__')}{tag}.valid.jsonl"


def _columns(text: str | None) -> dict[str, str] | None:
    """'user=q,assistant=a' -> {'user': 'q', 'assistant': 'a'}."""
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ValueError(f"--columns {text!r}: write role=column pairs, e.g. user=question,assistant=answer")
    return {role.strip(): col.strip() for role, col in pairs}


def main(argv: list[str] | None = None) -> int:
    """Run `validate` on its own (python -m workshop_lib.data.command FILE...)."""
    parser = argparse.ArgumentParser(prog="workshop_lib")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["validate", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
