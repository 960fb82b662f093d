"""One source read with its report: the opening both readers share (conversations in load, pairs in pairs).

It lives below both so that neither imports the other to borrow it (load reads pairs for DPO mixtures).
"""

from __future__ import annotations

from pathlib import Path

from .problems import Problem, Report
from .read import Row, read_source, split_spec


def read_reported(path: str | Path, name: str | None, split: str | None) -> tuple[list[Row], Report]:
    """A source's raw records, and a report that names an empty file as a problem already."""
    file = source = str(path)
    if split is None:
        source, split = split_spec(file)  # "org/name:test"; an existing path keeps any colon it has
    report = Report(file)
    rows = read_source(source, name=name, split=split, report=report)
    if not rows and not report.problems:
        report.problems.append(
            Problem(
                file,
                None,
                "(file)",
                "no rows: the file is empty",
                "check you gave the right file",
                kind="empty file",
            )
        )
    return rows, report
