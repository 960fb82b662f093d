"""Operations on validated conversations: deduplicate, split, overlap, statistics, writing, Datasets."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .formats import ROLES


def _key(row: dict) -> str:
    """A conversation's identity: its turns (text, tool calls, order) and tools (used by deduplicate and overlap)."""
    return json.dumps([row["messages"], row.get("tools")], sort_keys=True, ensure_ascii=False)


def text_of(content: Any) -> str:
    """A turn's text: the string, or its text parts joined; "" for none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


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
    chars: dict[str, list[int]] = {role: [] for role in ROLES}
    roles: Counter = Counter()
    for r in rows:
        for m in r["messages"]:
            roles[m["role"]] += 1
            chars.setdefault(m["role"], []).append(len(text_of(m.get("content"))))
    with_system = sum(r["messages"][0]["role"] == "system" for r in rows)
    multi_turn = sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)
    return {
        "conversations": len(rows),
        "turns": turns,
        "chars": chars,
        "roles": dict(roles),
        "with_system": with_system,
        "multi_turn": multi_turn,
        "with_tool_calls": sum(any(m.get("tool_calls") for m in r["messages"]) for r in rows),
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


def to_dataset(rows: list[dict]):
    """A `datasets.Dataset` that gives back each row exactly as it went in.

    Dataset.from_list infers one Arrow struct for all turns, so the keys of one row's tool arguments (or
    metadata) appear as nulls in every other row, and templates would render them. Turns, tools and
    metadata are stored as JSON objects instead (datasets' Json feature), which round-trip unchanged.
    """
    from datasets import Dataset, Features, Json, List

    columns = {k for r in rows for k in r}
    features = {k: List(Json()) if k in ("messages", "tools") else Json() for k in columns}
    return Dataset.from_list([{k: r.get(k) for k in columns} for r in rows], features=Features(features))
