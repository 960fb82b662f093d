"""Row formats -> chat turns as transformers and TRL define them.

    {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": ...}, ...], "tools": [...]}

Content is a string, or a list of parts [{"type": "text", "text": ...}] (joined into one string by default,
as templates that accept parts render them). Assistant turns may carry `tool_calls`
([{"type": "function", "function": {"name": ..., "arguments": {...}}}]) and a `reasoning_content` or
`thinking` field; tool turns may carry `name` and `tool_call_id`. Each conversion also records which field
of the row each converted field came from, so that problems are reported against the row as the file has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .problems import json_error

ROLES = ("system", "user", "assistant", "tool")
# Names seen in public datasets for the roles (ShareGPT, OpenAssistant, Gemma, Dolly, LLaMA-Factory, Llama 3.1 ...).
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
    "tool": "tool",
    "function": "tool",
    "observation": "tool",  # LLaMA-Factory's ShareGPT tool results
    "ipython": "tool",  # Llama 3.1's name for tool results; its template maps "tool" back to it
}
# ShareGPT turns whose value is a tool call written as JSON: {"name": ..., "arguments": {...}} or a list of them
CALL_ROLES = ("function_call", "tool_call", "tool_calls")
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "qa", "oasst")
# column names recognised for question/answer tables, in order of preference
QA_COLUMNS = [("question", "answer"), ("query", "response"), ("instruction", "response"), ("input", "output")]
# what a turn keeps besides role and content: what chat templates read
TURN_KEYS = ("tool_calls", "tool_call_id", "name", "reasoning_content", "thinking")
_MISSING = object()


@dataclass
class Converted:
    """One row as turns (+ tools), the row's own name of each converted field, and conversion problems."""

    messages: Any
    tools: Any = None
    template_kwargs: dict | None = None  # the row's chat_template_kwargs (TRL's column)
    fields: dict[str, str] = field(default_factory=dict)  # "messages[1].content" -> "conversations[1].value"
    # (index, the turn's field, its role key, its content key, a call written as text): expanded into
    # `fields` only when a problem needs naming, so valid rows pay nothing for it
    turns: list[tuple[int, str, str, str, bool]] = field(default_factory=list)
    names: list[str] = field(
        default_factory=list
    )  # one field per turn (Alpaca, Q/A): the turn and its content
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # (field, message, hint, kind)

    def origin(self, converted_field: str) -> str:
        """The row's name for a converted field: the longest known prefix replaced, the rest kept."""
        for i, where, role_key, content_key, call in self.turns:
            self.fields[f"messages[{i}]"] = where
            self.fields[f"messages[{i}].role"] = f"{where}.{role_key}"
            self.fields[f"messages[{i}].content"] = f"{where}.{content_key}"
            if call:
                self.fields[f"messages[{i}].tool_calls"] = f"{where}.{content_key}"
        for i, n in enumerate(self.names):
            self.fields[f"messages[{i}]"] = self.fields[f"messages[{i}].content"] = n
        self.turns, self.names = [], []
        f = converted_field
        while True:
            if f in self.fields:
                return self.fields[f] + converted_field[len(f) :]
            cut = max(f.rfind("."), f.rfind("["))
            if cut <= 0:
                return converted_field
            f = f[:cut]


def is_tree_record(record: Any) -> bool:
    """An OpenAssistant message (flat: message_id/parent_id/role/text) or a nested tree (prompt with replies)."""
    if not isinstance(record, dict):
        return False
    if {"message_id", "parent_id", "role", "text"} <= set(record):
        return True
    prompt = record.get("prompt")
    return isinstance(prompt, dict) and "message_id" in prompt and "text" in prompt


def detect_format(record: Any) -> str | None:
    """Name the format of one record by its keys, or None when it is not one we know.

    A record with a format's leading field but not the rest (instruction without output) is still named
    that format, so the missing field is reported by name.
    """
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys or "conversation" in keys:
        return "sharegpt"
    if is_tree_record(record):
        return "oasst"
    if "instruction" in keys:
        return "alpaca"  # Alpaca (instruction/input/output) and Dolly (instruction/context/response)
    if "prompt" in keys:
        return "prompt_completion"
    if any(q in keys and a in keys for q, a in QA_COLUMNS) or keys & {"question", "query"}:
        return "qa"
    return None


_NEED = {
    "alpaca": (
        ("output", "response"),
        "an Alpaca row has instruction, optional input, and output (Dolly: response)",
    ),
    "prompt_completion": (("completion", "response", "chosen"), "a prompt row needs its completion"),
}


def missing_fields(record: dict, fmt: str) -> list[tuple[str, str, str, str]]:
    """The fields a record of `fmt` needs but lacks, each as one problem naming the field."""
    if fmt == "qa":
        for q, a in QA_COLUMNS:
            if q in record and a not in record:
                return [
                    (
                        a,
                        f"missing field {a!r}: a {q}/{a} row needs both",
                        f"add the {a} column",
                        "missing field",
                    )
                ]
        return []
    if fmt in _NEED and not any(k in record for k in _NEED[fmt][0]):
        name = _NEED[fmt][0][0]
        return [
            (name, f"missing field {name!r}: {_NEED[fmt][1]}", f"add the answer as {name!r}", "missing field")
        ]
    return []


def to_messages(record: dict, fmt: str, columns: dict[str, str] | None = None, parts: str = "join") -> Any:
    """Convert one record of a known format to a list of turns (see `convert` for the full result)."""
    return convert(record, fmt, columns, parts).messages


def convert(record: dict, fmt: str, columns: dict[str, str] | None = None, parts: str = "join") -> Converted:
    """Convert one record to turns and tools, remembering where each converted field came from.

    `columns` maps roles to column names for any table: {"user": "kysymys", "assistant": "vastaus",
    "system": "ohje"}; it overrides format detection. `parts="join"` turns text-part lists into strings.
    """
    out = Converted(None)
    if columns:
        out.messages = []
        for role in ("system", "user", "assistant"):
            if role in columns:
                value = record.get(columns[role])
                if role == "system" and (value is None or value == ""):
                    continue
                i = len(out.messages)
                out.messages.append({"role": role, "content": value})
                out.fields[f"messages[{i}]"] = columns[role]
                out.fields[f"messages[{i}].content"] = columns[role]
        return out
    if fmt in ("messages", "sharegpt"):
        key = (
            "messages"
            if fmt == "messages"
            else ("conversations" if "conversations" in record else "conversation")
        )
        turns = record[key]
        start = 0
        if fmt == "sharegpt" and isinstance(record.get("system"), str) and record["system"].strip():
            out.fields.update({"messages[0]": "system", "messages[0].content": "system"})
            start = 1
        if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
            # LIMA style: a list of strings, alternating user and assistant
            msgs = [
                {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
            ]
            out.fields.update({f"messages[{i + start}]": f"{key}[{i}]" for i in range(len(turns))})
        elif isinstance(turns, list):
            first = next((t for t in turns if isinstance(t, dict)), {})
            shape = ("from", "value") if "from" in first else ("role", "content")
            msgs = [_turn(t, *shape, f"{key}[{i}]", parts, out, i + start) for i, t in enumerate(turns)]
        else:
            out.messages = turns  # validate() reports it
            out.fields["messages"] = key
            return out
        if start:
            msgs = [{"role": "system", "content": record["system"]}, *msgs]
        out.messages = msgs
        out.tools = _tools(record, out)
        out.template_kwargs = record.get("chat_template_kwargs") or None
        return out
    if fmt == "alpaca":
        prompt = record.get("instruction")
        extra_key = "input" if "input" in record else "context"
        extra = record.get(extra_key)
        if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        answer_key = "output" if "output" in record else "response"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record.get(answer_key)}]
        names = ["instruction", answer_key]
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.insert(0, {"role": "system", "content": record["system"]})
            names.insert(0, "system")
        out.messages, out.names = msgs, names
        return out
    if fmt == "prompt_completion":
        ckey = next((k for k in ("completion", "response", "chosen") if k in record), "completion")
        msgs = []
        for key, role in (("prompt", "user"), (ckey, "assistant")):
            value = record.get(key)
            if isinstance(value, list):  # TRL's conversational prompt-completion: both sides lists of turns
                for j, t in enumerate(value):
                    msgs.append(_turn(t, "role", "content", f"{key}[{j}]", parts, out, len(msgs)))
            else:
                out.fields.update({f"messages[{len(msgs)}]": key, f"messages[{len(msgs)}].content": key})
                msgs.append({"role": role, "content": value})
        out.messages = msgs
        out.tools = _tools(record, out)
        return out
    if fmt == "qa":
        for q, a in QA_COLUMNS:
            if q in record and a in record:
                names = [q, a]
                msgs = [{"role": "user", "content": record[q]}, {"role": "assistant", "content": record[a]}]
                if isinstance(record.get("system"), str) and record["system"].strip():
                    msgs.insert(0, {"role": "system", "content": record["system"]})
                    names.insert(0, "system")
                out.messages, out.names = msgs, names
                return out
    raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _turn(t: Any, role_key: str, content_key: str, where: str, parts: str, out: Converted, index: int) -> Any:
    """One turn normalised: role aliases mapped, parts joined, tool calls in transformers' shape."""
    if not isinstance(t, dict):
        out.fields[f"messages[{index}]"] = where
        return t
    m: dict[str, Any] = {}
    role = t.get(role_key, _MISSING)
    content = t.get(content_key, _MISSING)
    call = isinstance(role, str) and role.strip().lower() in CALL_ROLES
    out.turns.append((index, where, role_key, content_key, call))
    if call:
        m["role"], m["content"] = "assistant", ""
        m["tool_calls"] = _calls_from_text(content, f"{where}.{content_key}", out)
        return m
    if role is not _MISSING:
        m["role"] = ROLE_ALIASES.get(role.strip().lower(), role) if isinstance(role, str) else role
    if content is not _MISSING:
        m["content"] = _join_parts(content) if parts == "join" else content
    extra = len(t) > (role is not _MISSING) + (
        content is not _MISSING
    )  # most turns hold only role and content
    for k in TURN_KEYS if extra else ():
        if k in t and t[k] is not None:
            m[k] = _normalise_calls(t[k]) if k == "tool_calls" else t[k]
    if m.get("tool_calls") and m.get("content") is None:
        m["content"] = ""  # OpenAI writes null; some templates would render None|trim as "None"
    return m


def _join_parts(content: Any) -> Any:
    """[{"type": "text", "text": "a"}, ...] -> "a..." (concatenated, as templates that take parts render them);
    anything else (a string, or a list holding other parts) unchanged, for validation to judge."""
    if (
        isinstance(content, list)
        and content
        and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        )
    ):
        return "".join(p["text"] for p in content)
    return content


def _normalise_calls(calls: Any) -> Any:
    """Tool calls as transformers templates read them: {"type": "function", "function": {"name", "arguments"}}
    with arguments a dict (OpenAI-style JSON strings are parsed; an unparsable one is left for validation)."""
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except json.JSONDecodeError:
            return calls
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        return calls
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(c, dict) and not isinstance(fn, dict) and "name" in c:
            fn = {
                k: v for k, v in c.items() if k not in ("id", "type")
            }  # the flat {"name", "arguments"} shape
        if not isinstance(fn, dict):
            out.append(c)
            continue
        fn = dict(fn)
        if "arguments" not in fn and "parameters" in fn:
            fn["arguments"] = fn.pop("parameters")
        if isinstance(fn.get("arguments"), str):
            try:
                parsed = json.loads(fn["arguments"])
                fn["arguments"] = parsed if isinstance(parsed, dict) else fn["arguments"]
            except json.JSONDecodeError:
                pass
        call = {"type": c.get("type", "function"), "function": fn}
        if "id" in c:
            call["id"] = c["id"]
        out.append(call)
    return out


def _calls_from_text(value: Any, where: str, out: Converted) -> Any:
    """A ShareGPT function_call turn's value (JSON text) as tool calls; a problem when it is not JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            out.problems.append(
                (
                    where,
                    f"a function_call turn holds a tool call as JSON; {json_error(e)}",
                    'write the value as {"name": "tool_name", "arguments": {...}}',
                    "invalid tool call",
                )
            )
            return []
    return _normalise_calls(value)


def _tools(record: dict, out: Converted) -> Any:
    """The row's tool schemas (a list, or a JSON string of one) in transformers' {"type": "function",
    "function": {...}} shape; None when the row declares none."""
    tools = record.get("tools")
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            hint = "write tools as a JSON list of function schemas"
            out.problems.append(("tools", f"tools: {json_error(e)}", hint, "invalid tools"))
            return None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        return tools
    return [
        {"type": "function", "function": t}
        if isinstance(t, dict) and "function" not in t and "name" in t
        else t
        for t in tools
    ]


def near_format(record: dict) -> str | None:
    """A format the record would have if its field names were lower-case ('Instruction', 'Output')."""
    lowered = {k.lower(): v for k, v in record.items() if isinstance(k, str)}
    fmt = detect_format(lowered) if lowered.keys() != record.keys() else None
    return fmt if fmt and not missing_fields(lowered, fmt) else None
