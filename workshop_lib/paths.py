"""Paths: the repository root and the one rule for resolving a path a user typed.

Notebooks run with the repository as working directory under papermill, but JupyterLab starts them in
notebooks/, and batch jobs run wherever Slurm puts them: so every relative path in a recipe, a notebook
parameter or a command line means "relative to the repository", resolved here, once.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt")


def resolve(path: str | Path) -> Path:
    """An absolute path: absolute paths and ~ as given, relative ones relative to the repository."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def resolve_source(name: str) -> str:
    """A model or dataset source: a local path (resolved as above) when one exists or the name looks like a
    file; otherwise a hub id ("org/name", "org/name:split"), returned unchanged."""
    p = resolve(name)
    if p.exists() or Path(name).suffix in DATA_SUFFIXES or name.startswith((".", "/", "~")):
        return str(p)
    return name


def default_output_root() -> str:
    """Where run folders go when nothing names the place: $WORKSHOP_OUTPUT_ROOT (a `lab` job sets it from the
    profile's output_root, e.g. /scratch/<project>/$USER/runs, so participants sharing one installation never
    meet), else runs/ in the repository."""
    return os.environ.get("WORKSHOP_OUTPUT_ROOT") or "runs"
