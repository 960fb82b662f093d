"""OpenAssistant-style message trees -> conversations.

Two public shapes (oasst1, oasst2): flat messages, one per row, linked by `message_id`/`parent_id`
(the Hugging Face parquet files, `*.messages.jsonl`), and nested trees, one per row, `{"message_tree_id",
"prompt": {..., "replies": [...]}}` (`*.trees.jsonl`). Roles are "prompter" and "assistant"; siblings may
carry a `rank` (0 = preferred). A conversation is a path from the initial prompt down the tree:
every root-to-leaf path (`paths="all"`), or the best-ranked one per tree (`paths="best"`); a trailing
prompter turn is cut, so each ends with an assistant answer. Fields every message on the path shares (the
language, the tree id and state, ...) are kept as the row's `metadata`, with the path's message ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .formats import ROLE_ALIASES
from .read import Row

PATHS = ("all", "best")
# per-message fields that differ along a path by nature: not metadata
_OWN = {
    "text",
    "role",
    "message_id",
    "parent_id",
    "user_id",
    "created_date",
    "rank",
    "review_count",
    "replies",
}


@dataclass
class Node:
    id: str
    parent: str | None
    role: Any
    text: Any
    rank: Any
    line: int
    where: str  # "line" or "record"
    prefix: str  # the message's field path inside its row: "" (flat) or "prompt.replies[0]." (nested)
    fields: dict[str, Any]
    children: list[Node] = field(default_factory=list)


@dataclass
class Path:
    """One conversation cut from a tree: its turns, metadata, and each turn's node (for locating problems)."""

    messages: list[dict]
    metadata: dict[str, Any]
    nodes: list[Node]


def conversations(
    rows: list[Row], paths: str = "all"
) -> tuple[list[Path], list[tuple[Row, str, str, str, str]], list[str]]:
    """All conversations of the trees in `rows`; also (row, field, message, hint, kind) problems and notes."""
    if paths not in PATHS:
        raise ValueError(f"paths must be one of {', '.join(PATHS)}, not {paths!r}")
    problems: list[tuple[Row, str, str, str, str]] = []
    roots: list[Node] = []
    nested = [r for r in rows if isinstance(r.data, dict) and isinstance(r.data.get("prompt"), dict)]
    if nested:
        for row in nested:
            tree = {k: v for k, v in row.data.items() if k != "prompt" and _scalar(v)}
            roots.append(_nested(row.data["prompt"], None, row, "prompt.", tree))
    else:
        by_id: dict[str, Node] = {}
        for row in rows:
            r = row.data
            by_id[r["message_id"]] = Node(
                r["message_id"],
                r.get("parent_id"),
                r.get("role"),
                r.get("text"),
                r.get("rank"),
                row.line,
                row.where,
                "",
                r,
            )
        for node in by_id.values():
            if node.parent is None:
                roots.append(node)
            elif node.parent in by_id:
                by_id[node.parent].children.append(node)
            else:
                problems.append(
                    (
                        Row(node.line, node.fields, node.where),
                        "parent_id",
                        f"the parent message {node.parent!r} is not in the file",
                        "keep whole trees together (every message of a message_tree_id); a filtered or split file "
                        "cut this one off",
                        "orphan message",
                    )
                )
    deleted = sum(r.fields.get("deleted") is True for r in roots)
    roots = [r for r in roots if r.fields.get("deleted") is not True]
    deleted += sum(_prune_deleted(r) for r in roots)
    out: list[Path] = []
    no_answer = 0
    for root in roots:
        found = [_best(root)] if paths == "best" else _leaves(root)
        made = [p for p in (_cut(chain) for chain in found) if p]
        seen: set[str] = set()
        for chain in made:
            if chain[-1].id not in seen:  # two leaves under one answer give the same cut path
                seen.add(chain[-1].id)
                out.append(_path(chain))
        no_answer += not made
    notes = []
    if deleted:
        notes.append(f"{deleted} deleted message(s) and their replies left out")
    if no_answer:
        notes.append(f"{no_answer} tree(s) without an assistant reply give no conversation")
    return out, problems, notes


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def _nested(msg: dict, parent: str | None, row: Row, prefix: str, tree: dict) -> Node:
    fields = {**tree, **{k: v for k, v in msg.items() if k != "replies"}}
    node = Node(
        msg.get("message_id"),
        parent,
        msg.get("role"),
        msg.get("text"),
        msg.get("rank"),
        row.line,
        row.where,
        prefix,
        fields,
    )
    for i, reply in enumerate(msg.get("replies") or []):
        if isinstance(reply, dict):
            node.children.append(_nested(reply, node.id, row, f"{prefix}replies[{i}].", tree))
    return node


def _prune_deleted(node: Node) -> int:
    """Drop deleted replies (nested trees keep them inline); return how many were dropped."""
    kept = [c for c in node.children if c.fields.get("deleted") is not True]
    n = len(node.children) - len(kept)
    node.children = kept
    return n + sum(_prune_deleted(c) for c in kept)


def _leaves(root: Node) -> list[list[Node]]:
    chains, stack = [], [[root]]
    while stack:
        chain = stack.pop()
        if chain[-1].children:
            stack.extend(chain + [c] for c in reversed(chain[-1].children))
        else:
            chains.append(chain)
    return chains


def _best(root: Node) -> list[Node]:
    """Follow the best-ranked reply at each step (rank 0 first; unranked after ranked; ties in file order)."""
    chain = [root]
    while chain[-1].children:
        kids = chain[-1].children
        chain.append(
            min(
                kids,
                key=lambda c: (
                    not isinstance(c.rank, (int, float)),
                    c.rank if isinstance(c.rank, (int, float)) else 0,
                    kids.index(c),
                ),
            )
        )
    return chain


def _cut(chain: list[Node]) -> list[Node]:
    """The chain up to its last assistant message (a trailing prompt has no answer to learn)."""
    while chain and ROLE_ALIASES.get(str(chain[-1].role).lower()) != "assistant":
        chain = chain[:-1]
    return chain


def _path(chain: list[Node]) -> Path:
    messages = [
        {
            "role": ROLE_ALIASES.get(n.role.lower(), n.role) if isinstance(n.role, str) else n.role,
            "content": n.text,
        }
        for n in chain
    ]
    shared = {k: v for k, v in chain[0].fields.items() if k not in _OWN and _scalar(v)}
    for n in chain[1:]:
        shared = {k: v for k, v in shared.items() if n.fields.get(k) == v}
    metadata = {**shared, "message_ids": [n.id for n in chain]}
    return Path(messages, metadata, list(chain))
