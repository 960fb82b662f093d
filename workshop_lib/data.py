"""Data: raw files -> validated chat conversations ("messages") -> JSONL for training.

What participants have rarely looks like what TRL and chat templates expect:

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}

This module loads the usual shapes (JSONL, JSON, CSV, Parquet, a `datasets` folder), detects
their format (messages, ShareGPT, Alpaca, prompt/completion, question/answer columns), converts
them, validates every conversation and writes JSONL atomically. Every problem names the file,
the line (or record), the field, what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
# Names seen in public datasets for the three roles (ShareGPT, OpenAssistant, Gemma, Dolly ...).
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "question": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "ai": "assistant",
    "bing": "assistant",
    "answer": "assistant",
}
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "qa")
# column names recognised for question/answer tables, in order of preference
QA_COLUMNS = [("question", "answer"), ("query", "response"), ("instruction", "response"), ("input", "output")]


# ----------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """One thing wrong with one row: where it is, what is wrong, how to fix it."""

    file: str
    line: int | None  # 1-based line of a JSONL/CSV file, or record number in a JSON array / table
    field: str
    message: str
    hint: str
    kind: str = "invalid"
    where: str = "line"

    def __str__(self) -> str:
        loc = f"{self.file}:{self.where} {self.line}" if self.line is not None else self.file
        return f"{loc}: {self.field}: {self.message}. Fix: {self.hint}"


@dataclass
class Report:
    """What a load did: rows read, kept, dropped, and every problem found."""

    file: str
    rows: int = 0
    kept: int = 0
    format: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.rows - self.kept

    def summary(self) -> str:
        kinds = Counter(p.kind for p in self.problems)
        text = f"{self.file}: {self.rows} rows ({self.format or 'unknown format'}), {self.kept} valid"
        if self.problems:
            text += f", {len({p.line for p in self.problems})} with problems: " + ", ".join(
                f"{n} {k}" for k, n in kinds.most_common()
            )
        return text

    def __str__(self) -> str:
        return "\n".join([self.summary(), *(f"  {p}" for p in self.problems)])


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


# ----------------------------------------------------------------------------- loading
@dataclass
class Row:
    """A raw record and where it came from."""

    line: int
    data: Any
    where: str = "line"


def read_rows(path: str | Path, report: Report | None = None) -> list[Row]:
    """Read raw records from .jsonl, .json, .csv/.tsv, .parquet or a `datasets` save_to_disk folder.

    Undecodable JSONL lines become problems (with their line number) instead of stopping the
    read, so one run reports them all. A UTF-8 BOM and CRLF line ends are accepted.
    """
    path = Path(path)
    report = report if report is not None else Report(str(path))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder. Check the path (relative paths start at {Path.cwd()})."
        )
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise ValueError(
                f"{path}: a folder, but not one written by datasets' save_to_disk. Pass a file instead."
            )
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: take the train split, or the only one
            splits = list(ds.keys())
            ds = ds["train"] if "train" in splits else ds[splits[0]]
        return [Row(i + 1, r, "record") for i, r in enumerate(ds)]

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [Row(i + 1, r, "record") for i, r in enumerate(pq.read_table(path).to_pylist())]

    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a BOM is dropped, not parsed
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}). Re-save the file as UTF-8.") from None

    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        # reader.line_num is the physical line where the row ended; good enough to find it
        return [Row(reader.line_num, dict(r)) for r in reader]

    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            report.problems.append(
                Problem(
                    str(path),
                    e.lineno,
                    "(file)",
                    f"invalid JSON: {e.msg} at column {e.colno}",
                    "repair the JSON (a JSON file holds one array of records; use .jsonl for one record per line)",
                    kind="invalid JSON",
                )
            )
            return []
        if isinstance(data, dict):  # {"data": [...]} and similar wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of records, found {type(data).__name__}.")
        return [Row(i + 1, r, "record") for i, r in enumerate(data)]

    # JSONL (and anything else: read as JSON lines)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):  # splitlines: \n, \r\n, \r
        if not line.strip():
            continue
        try:
            rows.append(Row(number, json.loads(line)))
        except json.JSONDecodeError as e:
            report.rows += 1
            report.problems.append(
                Problem(
                    str(path),
                    number,
                    "(line)",
                    f"invalid JSON: {e.msg} at column {e.colno}",
                    "repair the line: each line of a .jsonl file is one complete JSON object",
                    kind="invalid JSON",
                )
            )
    return rows


# ----------------------------------------------------------------------------- formats
def detect_format(record: Any) -> str | None:
    """Name the format of one record by its keys, or None when it is not one we know."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys or "conversation" in keys:
        return "sharegpt"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"  # Alpaca (instruction/input/output) and Dolly (instruction/context/response)
    if "prompt" in keys and ("completion" in keys or "response" in keys or "chosen" in keys):
        return "prompt_completion"
    if any(q in keys and a in keys for q, a in QA_COLUMNS):
        return "qa"
    return None


def _normalise_turns(turns: Any, role_key: str, content_key: str) -> Any:
    if not isinstance(turns, list):
        return turns  # validate() reports it
    out = []
    for t in turns:
        if not isinstance(t, dict):
            out.append(t)
            continue
        m = dict(t)
        if role_key in m:
            role = m.pop(role_key)
            m["role"] = ROLE_ALIASES.get(role.strip().lower(), role) if isinstance(role, str) else role
        if content_key in m:
            m["content"] = m.pop(content_key)
        out.append({k: m[k] for k in ("role", "content") if k in m})
    return out


def to_messages(record: dict, fmt: str, columns: dict[str, str] | None = None) -> Any:
    """Convert one record of a known format to a list of {"role", "content"} turns.

    `columns` maps roles to column names for any table: {"user": "kysymys", "assistant": "vastaus",
    "system": "ohje"}; it overrides format detection.
    """
    if columns:
        msgs = []
        for role in ROLES:
            if role in columns:
                value = record.get(columns[role])
                if role == "system" and (value is None or value == ""):
                    continue
                msgs.append({"role": role, "content": value})
        return msgs
    if fmt == "messages":
        return _normalise_turns(record["messages"], "role", "content")
    if fmt == "sharegpt":
        turns = record.get("conversations", record.get("conversation"))
        if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
            # LIMA style: a list of strings, alternating user and assistant
            turns = [{"from": "user" if i % 2 == 0 else "assistant", "value": t} for i, t in enumerate(turns)]
        if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "from" in turns[0]:
            msgs = _normalise_turns(turns, "from", "value")
        else:
            msgs = _normalise_turns(turns, "role", "content")
        system = record.get("system")
        if isinstance(msgs, list) and isinstance(system, str) and system.strip():
            msgs = [{"role": "system", "content": system}, *msgs]
        return msgs
    if fmt == "alpaca":
        prompt = record.get("instruction")
        extra = record.get("input", record.get("context"))
        if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        answer = record.get("output", record.get("response"))
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.insert(0, {"role": "system", "content": record["system"]})
        return msgs
    if fmt == "prompt_completion":
        prompt = record["prompt"]
        completion = record.get("completion", record.get("response", record.get("chosen")))
        # TRL's conversational prompt-completion: both sides already lists of turns
        p = (
            _normalise_turns(prompt, "role", "content")
            if isinstance(prompt, list)
            else [{"role": "user", "content": prompt}]
        )
        c = (
            _normalise_turns(completion, "role", "content")
            if isinstance(completion, list)
            else [{"role": "assistant", "content": completion}]
        )
        return [*p, *c] if isinstance(p, list) and isinstance(c, list) else p
    if fmt == "qa":
        for q, a in QA_COLUMNS:
            if q in record and a in record:
                msgs = [{"role": "user", "content": record[q]}, {"role": "assistant", "content": record[a]}]
                if isinstance(record.get("system"), str) and record["system"].strip():
                    msgs.insert(0, {"role": "system", "content": record["system"]})
                return msgs
    raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- validation
def validate(messages: Any) -> list[tuple[str, str, str, str]]:
    """Check one conversation; return (field, message, hint, kind) for each problem found."""
    if not isinstance(messages, list) or not messages:
        return [
            (
                "messages",
                f"expected a non-empty list of turns, found {type(messages).__name__}"
                if not isinstance(messages, list)
                else "no turns",
                'give each row a list of {"role": ..., "content": ...} turns',
                "no turns",
            )
        ]
    found = []
    roles = []
    for i, m in enumerate(messages):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            found.append(
                (
                    f,
                    f"a turn must be an object, found {type(m).__name__}",
                    'write each turn as {"role": ..., "content": ...}',
                    "malformed turn",
                )
            )
            roles.append(None)
            continue
        role = m.get("role")
        if role is None:
            found.append(
                (f"{f}.role", "missing role", f"add a role: one of {', '.join(ROLES)}", "missing role")
            )
        elif role not in ROLES:
            known = ", ".join(ROLES)
            found.append(
                (
                    f"{f}.role",
                    f"unknown role {role!r}",
                    f"use one of {known} (aliases such as human/gpt/bot are mapped on conversion)",
                    "unknown role",
                )
            )
        content = m.get("content")
        if "content" not in m:
            found.append(
                (f"{f}.content", "missing content", 'add the turn\'s text as "content"', "missing content")
            )
        elif not isinstance(content, str):
            found.append(
                (
                    f"{f}.content",
                    f"content must be a string, found {type(content).__name__}",
                    'quote the value (e.g. "42") or join a list of parts into one string',
                    "non-string content",
                )
            )
        elif not content.strip():
            found.append(
                (
                    f"{f}.content",
                    "empty content",
                    "fill in the text or drop the turn (an empty answer teaches the model to say nothing)",
                    "empty content",
                )
            )
        roles.append(role)

    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            found.append(
                (
                    f"messages[{i}].role",
                    "a system message that is not first",
                    "move the system message to the start of the conversation",
                    "system not first",
                )
            )
        if i > 0 and role in ("user", "assistant") and role == roles[i - 1]:
            found.append(
                (
                    f"messages[{i}].role",
                    f"two {role} turns in a row",
                    "merge the consecutive turns into one, or insert the missing reply",
                    "consecutive roles",
                )
            )
    if any(r not in ROLES for r in roles):
        return found  # a missing or unknown role was reported; the checks below would only echo it
    if "assistant" not in roles:
        found.append(
            ("messages", "no assistant turn", "add the answer the model should learn", "no assistant turn")
        )
    elif roles[-1] != "assistant":
        found.append(
            (
                f"messages[{len(roles) - 1}].role",
                f"the conversation ends with {roles[-1]!r}, not the assistant",
                "end with the assistant's answer, or drop the trailing turn",
                "not ending with assistant",
            )
        )
    return found


# ----------------------------------------------------------------------------- pipeline
def load_conversations(
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "raise",
) -> tuple[list[dict], Report]:
    """Load a file in any supported format as validated {"messages": [...]} rows.

    on_error="raise" raises DataError listing every problem; "drop" keeps the valid rows and
    returns the problems in the report (print it: nothing is dropped silently).
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {', '.join(FORMATS)}, not {fmt!r}")
    report = Report(str(path))
    rows = read_rows(path, report)
    out: list[dict] = []
    formats: Counter = Counter()
    for row in rows:
        report.rows += 1
        where = dict(file=str(path), line=row.line, where=row.where)
        record = row.data
        row_fmt = "columns" if columns else (fmt if fmt != "auto" else detect_format(record))
        if row_fmt is None:
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            report.problems.append(
                Problem(
                    field="(row)",
                    message=f"unrecognised format (fields: {keys})",
                    hint="use messages, conversations (ShareGPT), instruction/output (Alpaca), prompt/completion "
                    "or question/answer fields, or pass columns={'user': ..., 'assistant': ...}",
                    kind="unknown format",
                    **where,
                )
            )
            continue
        formats[row_fmt] += 1
        try:
            messages = to_messages(record, row_fmt, columns)
        except (KeyError, TypeError, AttributeError) as e:
            report.problems.append(
                Problem(
                    field="(row)",
                    message=f"cannot read as {row_fmt}: {e!r}",
                    hint=f"check the row has the fields of the {row_fmt} format",
                    kind="malformed row",
                    **where,
                )
            )
            continue
        problems = validate(messages)
        for fld, msg, hint, kind in problems:
            report.problems.append(Problem(field=fld, message=msg, hint=hint, kind=kind, **where))
        if not problems:
            out.append({"messages": messages})
    report.kept = len(out)
    report.problems.sort(key=lambda p: p.line or 0)
    report.format = ", ".join(f for f, _ in formats.most_common())
    if report.problems and on_error == "raise":
        raise DataError(report)
    return out, report


def _key(row: dict) -> str:
    """A conversation's identity: its turns, text and order (used by deduplicate and overlap)."""
    return json.dumps(row["messages"], sort_keys=True, ensure_ascii=False)


def deduplicate(rows: list[dict]) -> tuple[list[dict], int]:
    """Drop exact duplicate conversations (same turns, same text), keeping the first; return the count dropped."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = _key(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out, len(rows) - len(out)


def split(rows: list[dict], eval_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle with a fixed seed and cut into (train, eval): the same inputs give the same split."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), not {eval_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(rows) * eval_fraction)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def overlap(train: list[dict], held_out: list[dict]) -> int:
    """How many held-out conversations also appear in train (a leak that inflates eval scores)."""
    keys = {_key(r) for r in train}
    return sum(_key(r) in keys for r in held_out)


def stats(rows: list[dict]) -> dict[str, Any]:
    """Turns, characters per role and role counts: what a participant checks before training."""
    turns = [len(r["messages"]) for r in rows]
    chars = {role: [] for role in ROLES}
    roles: Counter = Counter()
    for r in rows:
        for m in r["messages"]:
            roles[m["role"]] += 1
            chars[m["role"]].append(len(m["content"]))
    with_system = sum(r["messages"][0]["role"] == "system" for r in rows)
    multi_turn = sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)
    return {
        "conversations": len(rows),
        "turns": turns,
        "chars": chars,
        "roles": dict(roles),
        "with_system": with_system,
        "multi_turn": multi_turn,
        "mean_turns": sum(turns) / len(turns) if turns else 0.0,
    }


def write_jsonl(rows: Iterable[dict], path: str | Path, overwrite: bool = False) -> Path:
    """Write rows as UTF-8 JSONL through a temporary file and a rename: never half-written.

    An existing file with different content is kept unless overwrite=True (data is never
    silently replaced); writing the same rows again is a no-op, so notebook cells can be rerun.
    """
    path = Path(path)
    rows = list(rows) if path.exists() and not overwrite else rows
    if path.exists() and not overwrite:
        same = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if path.read_text(encoding="utf-8") == same:
            return path  # rerunning a notebook cell rewrites nothing and loses nothing
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it, or choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a messages JSONL file written by this module, validating it (raises DataError)."""
    rows, _ = load_conversations(path, fmt="messages")
    return rows
