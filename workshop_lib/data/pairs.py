"""Preference pairs: rows as people bring them -> validated {"prompt", "chosen", "rejected"} conversations.

DPO learns from two answers to the same prompt, one preferred. Published dumps write pairs in a few shapes;
all become TRL's explicit conversational form, which DPOTrainer tokenizes itself:

    {"prompt":   [{"role": "user", "content": "Which word is the fruit: wolf, plum"}],
     "chosen":   [{"role": "assistant", "content": "The fruit is plum."}],
     "rejected": [{"role": "assistant", "content": "The fruit is wolf."}]}

Shapes read (by their fields):
  explicit   prompt (turns or text) + chosen/rejected (turns, one turn, or text)           TRL's own format
  implicit   chosen/rejected whole conversations, no prompt: the prompt is their shared start
  prompt text + chosen/rejected whole conversations (UltraFeedback-binarized): the text must be the last user turn
  hh         chosen/rejected strings "\\n\\nHuman: ...\\n\\nAssistant: ..." (Anthropic hh-rlhf)

Every problem names the file, the line and the field, as the data module does for conversations: a missing
chosen or rejected, a prompt that differs between the two, an identical pair, a prompt that does not end on a
user turn, or turns that fail the conversation checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .checks import validate
from .problems import DataError, Problem, Report
from .source import read_reported

Found = list[tuple[str, str, str, str]]  # (field, message, hint, kind), as checks.validate returns
HINT_FIELDS = 'give each row "chosen" and "rejected" (answers or whole conversations), and a "prompt" unless both conversations start with it'
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def to_pair(record: Any) -> tuple[dict | None, Found]:
    """One raw record -> ({"prompt", "chosen", "rejected"} turns, problems). The pair is None if any."""
    if not isinstance(record, dict):
        return None, [
            ("(row)", f"expected an object, found {type(record).__name__}", HINT_FIELDS, "malformed row")
        ]
    missing = [k for k in ("chosen", "rejected") if record.get(k) in (None, "", [])]
    if missing:
        return None, [(k, f"missing {k!r}", HINT_FIELDS, f"missing {k}") for k in missing]
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str) and prompt is None:
        chosen, rejected = _hh(chosen), _hh(rejected)
        if chosen is None or rejected is None:
            hint = "add a prompt field, or write the conversations as lists of turns"
            return None, [
                (
                    "chosen",
                    "text answers without a prompt (and not hh-rlhf's Human:/Assistant: text)",
                    hint,
                    "no prompt",
                )
            ]
    if prompt is None or (isinstance(prompt, str) and isinstance(chosen, list) and _starts_with_user(chosen)):
        pair, found = _split_shared_start(chosen, rejected, prompt)
    else:
        prompt = _turns(prompt, "user")
        pair = {
            "prompt": prompt,
            **{
                k: _after(_turns(v, "assistant"), prompt)
                for k, v in (("chosen", chosen), ("rejected", rejected))
            },
        }
        found = []
    if found:
        return None, found
    return pair, check_pair(pair)


def check_pair(pair: dict) -> Found:
    """Problems of a pair in explicit form: the conversation checks for prompt + each answer, and the pair's own."""
    found: Found = []
    prompt = pair["prompt"]
    if not isinstance(prompt, list) or not prompt:
        return [
            (
                "prompt",
                "empty prompt",
                "give the prompt as text or as a list of turns ending with the user's",
                "no prompt",
            )
        ]
    if isinstance(prompt[-1], dict) and prompt[-1].get("role") not in ("user", "tool"):
        found.append(
            (
                f"prompt[{len(prompt) - 1}].role",
                f"the prompt ends with a {prompt[-1].get('role')!r} turn",
                "end the prompt with the user's turn; the answers (chosen, rejected) follow it",
                "prompt end",
            )
        )
    for side in ("chosen", "rejected"):
        answer = pair[side]
        if (
            not isinstance(answer, list)
            or not answer
            or not all(isinstance(m, dict) and m.get("role") == "assistant" for m in answer)
        ):
            found.append(
                (
                    side,
                    f"{side} must be the assistant's answer (assistant turns only)",
                    'give the answer text, or [{"role": "assistant", "content": ...}]',
                    "answer role",
                )
            )
            continue
        for f, m, h, k in validate(prompt + answer):
            i = _index(f)
            if i is not None and i >= len(prompt):
                f = f.replace(f"messages[{i}]", f"{side}[{i - len(prompt)}]", 1)
            elif i is not None:
                f = f.replace("messages", "prompt", 1)
            found.append((f, m, h, k))
    if not found and pair["chosen"] == pair["rejected"]:
        found.append(
            (
                "rejected",
                "chosen and rejected are the same answer: the pair teaches nothing",
                "drop the row, or give a worse answer as rejected",
                "identical pair",
            )
        )
    return _unique(found)


def load_preferences(
    path: str | Path, split: str | None = None, name: str | None = None, on_error: str = "raise"
) -> tuple[list[dict], Report]:
    """Load a file, folder or hub dataset of preference pairs as validated explicit pairs, with a report.

    on_error="raise" raises DataError listing every problem; "drop" keeps the valid pairs and lists the rest.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    file = str(path)
    rows, report = read_reported(path, name, split)
    report.format = "preference pairs"
    out = []
    for row in rows:
        report.rows += 1
        pair, found = to_pair(row.data)
        report.problems.extend(
            Problem(file, row.line, f, m, h, kind=k, where=row.where) for f, m, h, k in found
        )
        if found or pair is None:
            report.dropped += 1
        else:
            out.append(pair)
    report.kept = len(out)
    if report.problems and on_error == "raise":
        raise DataError(report)
    return out, report


def _turns(value: Any, role: str) -> Any:
    """Text -> one turn of that role; one turn -> a list of it; turns stay as they are."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return value


def _after(answer: Any, prompt: Any) -> Any:
    """Some dumps repeat the prompt at the start of each answer: cut it off."""
    if (
        isinstance(answer, list)
        and isinstance(prompt, list)
        and len(answer) > len(prompt)
        and answer[: len(prompt)] == prompt
    ):
        return answer[len(prompt) :]
    return answer


def _starts_with_user(conversation: list) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "user" for m in conversation)


def _split_shared_start(chosen: Any, rejected: Any, prompt_text: str | None) -> tuple[dict | None, Found]:
    """Whole conversations -> prompt (everything before the last assistant answer) + the two answers."""
    for side, conv in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(conv, list) or not all(isinstance(m, dict) for m in conv):
            return None, [
                (side, f"expected a list of turns, found {type(conv).__name__}", HINT_FIELDS, "malformed row")
            ]
    cut_c, cut_r = _answer_start(chosen), _answer_start(rejected)
    if cut_c == 0 or cut_r == 0:
        side = "chosen" if cut_c == 0 else "rejected"
        return None, [
            (
                side,
                f"{side} has no prompt before its answer",
                "start both conversations with the user's turn, or add a prompt field",
                "no prompt",
            )
        ]
    if chosen[:cut_c] != rejected[:cut_r]:
        i = next(
            (i for i, (a, b) in enumerate(zip(chosen[:cut_c], rejected[:cut_r], strict=False)) if a != b),
            min(cut_c, cut_r),
        )
        return None, [
            (
                f"rejected[{i}]",
                f"chosen and rejected answer different prompts (they differ at turn {i})",
                "both conversations must share every turn before the answer",
                "prompt mismatch",
            )
        ]
    prompt = chosen[:cut_c]
    if prompt_text is not None:
        last_user = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), None)
        if isinstance(last_user, str) and last_user.strip() != prompt_text.strip():
            return None, [
                (
                    "prompt",
                    f"the prompt text is not the conversations' last user turn ({_short(prompt_text)} vs {_short(last_user)})",
                    "make prompt the user's question that chosen and rejected answer",
                    "prompt mismatch",
                )
            ]
    return {"prompt": prompt, "chosen": chosen[cut_c:], "rejected": rejected[cut_r:]}, []


def _answer_start(conversation: list) -> int:
    """Index where the final run of assistant turns starts (the answer)."""
    i = len(conversation)
    while i > 0 and conversation[i - 1].get("role") == "assistant":
        i -= 1
    return i


def _hh(text: str) -> list[dict] | None:
    """hh-rlhf text ('\\n\\nHuman: ...\\n\\nAssistant: ...') -> turns, or None if it is not that format."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))  # the first turn may come without its blank line
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def _index(field: str) -> int | None:
    m = re.match(r"messages\[(\d+)\]", field)
    return int(m.group(1)) if m else None


def _unique(found: Found) -> Found:
    return list(dict.fromkeys(found))


def _short(text: Any, n: int = 40) -> str:
    s = str(text)
    return repr(s if len(s) <= n else s[: n - 3] + "...")
