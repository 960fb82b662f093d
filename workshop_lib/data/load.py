"""The pipeline: a source (file, folder, hub id) -> validated conversations + a report; mixtures of sources."""

from __future__ import annotations

import difflib
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import trees
from .checks import validate
from .formats import FORMATS, convert, detect_format, missing_fields, near_format
from .pairs import load_preferences
from .problems import DataError, Problem, Report
from .read import Row, split_spec
from .source import read_reported

PARTS = ("join", "keep")
MIXTURE_KEYS = ("path", "name", "split", "weight", "max_rows", "format", "columns", "paths")


def load_conversations(
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "raise",
    paths: str = "all",
    parts: str = "join",
    name: str | None = None,
    split: str | None = None,
) -> tuple[list[dict], Report]:
    """Load a file, folder or hub dataset in any supported format as validated {"messages": [...]} rows.

    Rows keep "tools" when they declare tools, "chat_template_kwargs" when they have them, and "metadata"
    for conversations cut from message trees
    (`paths`: "all" root-to-leaf paths, or the "best"-ranked one per tree). `parts="keep"` keeps
    list-of-parts content as lists instead of joining the text. on_error="raise" raises DataError listing
    every problem; "drop" keeps the valid rows and returns the problems in the report (nothing is dropped
    silently: print the report).
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {', '.join(FORMATS)}, not {fmt!r}")
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {', '.join(PARTS)}, not {parts!r}")
    if paths not in trees.PATHS:
        raise ValueError(f"paths must be one of {', '.join(trees.PATHS)}, not {paths!r}")
    _check_columns(columns)
    file = str(path)
    rows, report = read_reported(path, name, split)
    out: list[dict] = []
    formats: Counter = Counter()
    tree_rows: list[Row] = []
    for row in rows:
        record = row.data
        row_fmt = "columns" if columns else (fmt if fmt != "auto" else detect_format(record))
        if row_fmt == "oasst":
            tree_rows.append(row)
            continue
        report.rows += 1
        where = dict(file=file, line=row.line, where=row.where)
        if row_fmt is None or not isinstance(record, dict):
            report.problems.append(Problem(field="(row)", **where, **_unknown(record)))
            report.dropped += 1
            continue
        formats[row_fmt] += 1
        found = missing_fields(record, row_fmt) if row_fmt != "columns" else []
        if found:
            report.problems.extend(
                Problem(field=f, message=m, hint=h, kind=k, **where) for f, m, h, k in found
            )
            report.dropped += 1
            continue
        try:
            conv = convert(record, row_fmt, columns, parts)
        except (KeyError, TypeError, AttributeError) as e:
            hint = f"check the row has the fields of the {row_fmt} format"
            report.problems.append(
                Problem(
                    field="(row)",
                    message=f"cannot read as {row_fmt}: {e!r}",
                    hint=hint,
                    kind="malformed row",
                    **where,
                )
            )
            report.dropped += 1
            continue
        found = conv.problems + [
            (conv.origin(f), m, h, k) for f, m, h, k in validate(conv.messages, conv.tools)
        ]
        report.problems.extend(Problem(field=f, message=m, hint=h, kind=k, **where) for f, m, h, k in found)
        if found:
            report.dropped += 1
        else:
            row = {"messages": conv.messages, **({"tools": conv.tools} if conv.tools else {})}
            if isinstance(conv.template_kwargs, dict):  # e.g. Llama 3.1's builtin_tools
                row["chat_template_kwargs"] = conv.template_kwargs
            out.append(row)
    if tree_rows:
        formats["oasst"] += len(tree_rows)
        out += _from_trees(tree_rows, file, paths, report)
    _check_echo(out, columns, report)
    report.kept = len(out)
    report.problems.sort(key=lambda p: p.line or 0)
    report.format = ", ".join(f for f, _ in formats.most_common())
    if report.problems and on_error == "raise":
        raise DataError(report)
    return out, report


def _from_trees(rows: list[Row], file: str, paths: str, report: Report) -> list[dict]:
    """Message-tree rows -> one conversation per path, each validated; problems at the message's own line."""
    report.rows += len(rows)
    found_paths, problems, notes = trees.conversations(rows, paths)
    for row, f, m, h, k in problems:
        report.problems.append(Problem(file, row.line, f, m, h, k, row.where))
    seen: set[tuple] = set()
    out = []
    for p in found_paths:
        found = validate(p.messages)
        for f, m, h, k in found:
            node = p.nodes[_index(f)] if _index(f) is not None else p.nodes[-1]
            fld = node.prefix + {"content": "text", "role": "role"}.get(f.rsplit(".", 1)[-1], "(path)")
            key = (node.line, fld, m)
            if key not in seen:  # a message shared by several paths is reported once
                seen.add(key)
                report.problems.append(Problem(file, node.line, fld, m, h, k, node.where))
        if found:
            report.dropped += 1
        else:
            out.append({"messages": p.messages, "metadata": p.metadata})
    n_paths = "every root-to-leaf path" if paths == "all" else "the best-ranked path of each tree"
    report.notes.append(
        f"{len(rows)} tree rows -> {len(found_paths)} conversations ({n_paths}; paths='all'|'best')"
    )
    report.notes.extend(notes)
    return out


def _index(converted_field: str) -> int | None:
    if converted_field.startswith("messages["):
        return int(converted_field[len("messages[") : converted_field.index("]")])
    return None


def _unknown(record: Any) -> dict[str, str]:
    """The problem for a row of no known format: what it is, and the nearest way out."""
    if isinstance(record, list):
        turns = record and all(isinstance(t, dict) and ({"role", "from"} & set(t)) for t in record)
        hint = (
            'this looks like a list of turns: wrap it as {"messages": [...]}'
            if turns
            else "write each row as a JSON object with named fields"
        )
        return dict(message="the row is a JSON array, not an object", hint=hint, kind="not an object")
    if not isinstance(record, dict):
        return dict(
            message=f"the row is a {type(record).__name__}, not an object",
            hint="write each row as a JSON object with named fields",
            kind="not an object",
        )
    keys = ", ".join(sorted(map(str, record)))
    near = near_format(record)
    if near:
        hint = (
            f"the fields look like the {near} format except for upper-case letters: rename them in lower case"
        )
    else:
        hint = (
            "use messages, conversations (ShareGPT), instruction/output (Alpaca), prompt/completion, question/answer "
            "fields or message trees (message_id/parent_id/role/text), or name the columns of two different "
            "fields: columns={'user': ..., 'assistant': ...}"
        )
    return dict(message=f"unrecognised format (fields: {keys})", hint=hint, kind="unknown format")


def _check_columns(columns: dict[str, str] | None) -> None:
    if not columns:
        return
    unknown = set(columns) - {"system", "user", "assistant"}
    if unknown:
        raise ValueError(
            f"columns: unknown role(s) {', '.join(sorted(unknown))}; map system, user and assistant"
        )
    if "user" not in columns or "assistant" not in columns:
        raise ValueError(
            "columns: name both the user's and the assistant's column, e.g. {'user': 'q', 'assistant': 'a'}"
        )
    by_column: dict[str, list[str]] = {}
    for role, col in columns.items():
        by_column.setdefault(col, []).append(role)
    for col, roles in by_column.items():
        if len(roles) > 1:
            raise ValueError(
                f"columns: {' and '.join(roles)} both read the column {col!r}, so each answer would repeat its prompt. "
                "Name a different column for each role (for message trees, drop columns: they convert by themselves)."
            )


def _check_echo(rows: list[dict], columns: dict[str, str] | None, report: Report) -> None:
    """Most answers repeating their prompt word for word means the conversion is wrong, not the data."""
    echo = 0
    for r in rows:  # the last exchange is enough: a wrong mapping repeats in every one
        msgs = r["messages"]
        if len(msgs) > 1 and msgs[-2].get("role") == "user" and isinstance(msgs[-1].get("content"), str):
            echo += msgs[-1]["content"].strip() == str(msgs[-2].get("content", "")).strip()
    if echo >= 3 and echo * 2 > len(rows):  # a few echo tasks are fine; most rows echoing is not
        hint = (
            "the columns given hold the same text; name the column of the answers for 'assistant'"
            if columns
            else "check the conversion: each answer should be the reply, not the prompt"
        )
        msg = (
            f"in {echo} of {len(rows)} conversations the assistant's answer is the user's text word for word"
        )
        report.problems.append(Problem(report.file, None, "(file)", msg, hint, kind="answer repeats prompt"))


def load_training_rows(
    spec: Any, seed: int = 0, on_error: str = "raise", kind: str = "messages"
) -> tuple[list[dict], Report]:
    """Training rows from one source or a weighted mixture, the way a recipe names them.

    kind: "messages" (conversations, for SFT) or "preference" (prompt/chosen/rejected pairs, for DPO:
    data.pairs reads them; a mixture entry's format/columns/paths keys apply to conversations only).

    spec: a str or Path (a file, a folder, or a hub id with an optional ":split", e.g. "org/name:train"), or a
    list of mappings {path, name, split, weight, max_rows, format, columns, paths}. Per source, max_rows
    keeps a seeded random sample of that many valid conversations; weight then scales what is kept (0.5: a
    seeded half, 2: every conversation twice). The mixture is shuffled with the seed: the same spec and seed
    give the same rows in the same order.
    """
    if kind not in ("messages", "preference"):
        raise ValueError(f"kind must be 'messages' or 'preference', not {kind!r}")
    if isinstance(spec, (str, Path)):
        source, split = split_spec(str(spec))
        if kind == "preference":
            return load_preferences(source, split=split, on_error=on_error)
        return load_conversations(source, split=split, on_error=on_error)
    if isinstance(spec, Mapping):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"data: expected a path, a hub id or a list of sources, found {spec!r}")
    entries = [_entry(e, i) for i, e in enumerate(spec)]
    total = Report(f"mixture of {len(entries)} source(s)")
    out: list[dict] = []
    formats = []
    for i, e in enumerate(entries):
        source, split = split_spec(e["path"]) if e.get("split") is None else (e["path"], e["split"])
        if kind == "preference":
            rows, rep = load_preferences(source, split=split, name=e.get("name"), on_error="drop")
        else:
            rows, rep = load_conversations(
                source,
                fmt=e.get("format", "auto"),
                columns=e.get("columns"),
                on_error="drop",
                paths=e.get("paths", "all"),
                name=e.get("name"),
                split=split,
            )
        total.rows += rep.rows
        total.dropped += rep.dropped
        total.problems += rep.problems
        total.notes += [f"{source}: {n}" for n in rep.notes]
        formats.append(rep.format)
        rng = random.Random(f"{seed}/{i}")
        valid = len(rows)
        if e.get("max_rows") is not None and len(rows) > e["max_rows"]:
            rows = rng.sample(rows, e["max_rows"])
        weight = e.get("weight", 1.0)
        n = round(len(rows) * weight)
        picked = rows * (n // len(rows)) + rng.sample(rows, n % len(rows)) if rows else []
        total.notes.append(
            f"{source}{':' + split if split else ''}: {valid} valid conversations"
            + (f", max_rows {e['max_rows']} -> {len(rows)}" if e.get("max_rows") is not None else "")
            + f", weight {weight:g} -> {len(picked)} used"
        )
        out += picked
    random.Random(seed).shuffle(out)
    total.kept = len(out)
    total.format = ", ".join(dict.fromkeys(f for f in formats if f))
    if total.problems and on_error == "raise":
        raise DataError(total)
    return out, total


def _entry(e: Any, i: int) -> dict:
    """One mixture entry checked: known keys, a path, a positive weight, a positive max_rows."""
    if isinstance(e, (str, Path)):
        return {"path": str(e)}
    if not isinstance(e, Mapping):
        raise ValueError(
            f"data[{i}]: expected a mapping {{path, split, weight, max_rows}}, found {type(e).__name__}"
        )
    for key in e:
        if key not in MIXTURE_KEYS:
            close = difflib.get_close_matches(str(key), MIXTURE_KEYS, n=1)
            raise ValueError(
                f"data[{i}]: unknown key {key!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; known keys: {', '.join(MIXTURE_KEYS)}"
            )
    if not isinstance(e.get("path"), (str, Path)) or not str(e["path"]):
        raise ValueError(f"data[{i}]: 'path' is required: a file, a folder or a hub id")
    weight = e.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise ValueError(
            f"data[{i}]: weight must be a number > 0 (1 = every row once, 0.5 = half), not {weight!r}"
        )
    max_rows = e.get("max_rows")
    if max_rows is not None and (
        isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows <= 0
    ):
        raise ValueError(f"data[{i}]: max_rows must be a whole number > 0 (or left out), not {max_rows!r}")
    return {**e, "path": str(e["path"])}


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a messages JSONL file written by this module, validating it (raises DataError)."""
    rows, _ = load_conversations(path, fmt="messages")
    return rows
