"""Problems, reports and the error that lists them: every message names file, line, field, what and how to fix."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Problem:
    """One thing wrong with one row: where it is, what is wrong, how to fix it."""

    file: str
    line: int | None  # 1-based line of a JSONL/CSV file, or record number in a JSON array / table
    field: str  # the field as the file names it ("conversations[1].value", "output"), not as converted
    message: str
    hint: str
    kind: str = "invalid"
    where: str = "line"

    def __str__(self) -> str:
        loc = f"{self.file}:{self.where} {self.line}" if self.line is not None else self.file
        return f"{loc}: {self.field}: {self.message}. Fix: {self.hint}"


@dataclass
class Report:
    """What a load did: records read, conversations kept and dropped, every problem found, and notes."""

    file: str
    rows: int = 0  # records read (messages, for a file of message trees)
    kept: int = 0  # valid conversations returned
    format: str = ""
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out on purpose, and why
    dropped: int = 0  # records (or tree paths) that failed and were not returned

    def summary(self) -> str:
        kinds = Counter(p.kind for p in self.problems)
        text = f"{self.file}: {self.rows} rows ({self.format or 'unknown format'}), {self.kept} valid"
        if self.problems:
            text += f", {len({p.line for p in self.problems})} with problems: " + ", ".join(
                f"{n} {k}" for k, n in kinds.most_common()
            )
        return text

    def __str__(self) -> str:
        return "\n".join(
            [self.summary(), *(f"  note: {n}" for n in self.notes), *(f"  {p}" for p in self.problems)]
        )


class DataError(ValueError):
    """Raised with every problem of a file listed, plus a summary count and the way out."""

    def __init__(self, report: Report, max_listed: int = 20):
        self.report = report
        lines = [str(p) for p in report.problems[:max_listed]]
        if len(report.problems) > max_listed:
            lines.append(f"... and {len(report.problems) - max_listed} more problems")
        lines.append(report.summary())
        lines.append("Fix the rows above, or pass on_error='drop' to drop them with a report.")
        super().__init__("\n".join(lines))


def json_error(e: json.JSONDecodeError) -> str:
    """'invalid JSON: ...' with the column, phrased so that messages ending in 'at' read right."""
    msg = e.msg  # e.g. "Expecting ',' delimiter" or "Unterminated string starting at"
    return (
        f"invalid JSON: {msg} column {e.colno}"
        if msg.endswith(" at")
        else f"invalid JSON: {msg} at column {e.colno}"
    )
