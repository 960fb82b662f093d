"""Validation of one conversation (and its tools) as chat templates and TRL need it.

Each problem is (field, message, hint, kind), the field named in converted terms ("messages[1].content");
the loader translates it back to the row's own field.
"""

from __future__ import annotations

from typing import Any

from .formats import ROLES

Found = list[tuple[str, str, str, str]]


def validate(messages: Any, tools: Any = None) -> Found:
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
    found: Found = []
    names = _check_tools(tools, found) if tools is not None else None
    roles: list[Any] = []
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
        roles.append(role)
        if role is None:
            found.append(
                (f"{f}.role", "missing role", f"add a role: one of {', '.join(ROLES)}", "missing role")
            )
        elif role not in ROLES:
            hint = f"use one of {', '.join(ROLES)} (aliases such as human/gpt/bot/observation are mapped on conversion)"
            found.append((f"{f}.role", f"unknown role {role!r}", hint, "unknown role"))
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                found.append(
                    (
                        f"{f}.tool_calls",
                        f"tool calls on a {role!r} turn",
                        "only assistant turns call tools",
                        "misplaced tool calls",
                    )
                )
            _check_calls(calls, f"{f}.tool_calls", names, found)
        # an assistant turn that calls tools may have no text; every other turn needs some
        _check_content(m, f, optional=calls is not None, empty_ok=role == "tool", found=found)
        for key in ("reasoning_content", "thinking"):
            if key in m and m[key] is not None:
                if not isinstance(m[key], str):
                    found.append(
                        (
                            f"{f}.{key}",
                            f"{key} must be a string, found {type(m[key]).__name__}",
                            "write the reasoning as text",
                            "non-string reasoning",
                        )
                    )
                elif role != "assistant":
                    found.append(
                        (
                            f"{f}.{key}",
                            f"{key} on a {role!r} turn",
                            "only assistant turns reason; move it or drop it",
                            "misplaced reasoning",
                        )
                    )
    _check_order(messages, roles, found)
    return found


def _check_content(m: dict, f: str, optional: bool, empty_ok: bool, found: Found) -> None:
    if "content" not in m or m["content"] is None:
        if not optional:
            what = "missing content" if "content" not in m else "content is null"
            found.append(
                (
                    f"{f}.content",
                    what,
                    "fill in the turn's text, or drop the turn (or the row)",
                    "missing content",
                )
            )
        return
    content = m["content"]
    if isinstance(content, list):
        if not content and not optional:
            found.append((f"{f}.content", "empty list of parts", "give the turn its text", "empty content"))
        if not all(isinstance(p, dict) for p in content):
            kinds = ", ".join(sorted({type(p).__name__ for p in content}))
            found.append(
                (
                    f"{f}.content",
                    f"content must be a string or a list of text parts, found a list of {kinds}",
                    'join the items into one string, or write parts as {"type": "text", "text": ...}',
                    "non-string content",
                )
            )
            return
        for j, part in enumerate(content):
            p = f"{f}.content[{j}]"
            if "type" not in part:
                found.append(
                    (
                        p,
                        "a content part must be an object with a type",
                        'write parts as {"type": "text", "text": ...}',
                        "malformed part",
                    )
                )
            elif part["type"] != "text":
                found.append(
                    (
                        p,
                        f"a {part['type']!r} part: this kit trains text-only models",
                        "drop non-text parts, or describe them in text",
                        "non-text part",
                    )
                )
            elif not isinstance(part.get("text"), str) or not part["text"].strip():
                found.append(
                    (
                        f"{p}.text",
                        "a text part without text",
                        "fill in the text or drop the part",
                        "empty content",
                    )
                )
        return
    if not isinstance(content, str):
        found.append(
            (
                f"{f}.content",
                f"content must be a string, found {type(content).__name__}",
                'quote the value (e.g. "42"), or write a list of parts as [{"type": "text", "text": ...}]',
                "non-string content",
            )
        )
    elif not content.strip() and not (optional or empty_ok):
        found.append(
            (
                f"{f}.content",
                "empty content",
                "fill in the text or drop the turn (an empty answer teaches the model to say nothing)",
                "empty content",
            )
        )


def _check_tools(tools: Any, found: Found) -> set[str]:
    """The row's tool schemas; returns the declared function names."""
    names: set[str] = set()
    if not isinstance(tools, list):
        found.append(
            (
                "tools",
                f"tools must be a list of function schemas, found {type(tools).__name__}",
                'write [{"type": "function", "function": {"name": ..., "parameters": {...}}}]',
                "invalid tools",
            )
        )
        return names
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            found.append(
                (
                    f"tools[{i}]",
                    "a tool schema without a function name",
                    'write {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}',
                    "invalid tools",
                )
            )
            continue
        names.add(fn["name"])
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            found.append(
                (
                    f"tools[{i}].function.parameters",
                    "parameters must be a JSON schema object",
                    'write {"type": "object", "properties": {...}}',
                    "invalid tools",
                )
            )
    return names


def _check_calls(calls: Any, f: str, names: set[str] | None, found: Found) -> None:
    if not isinstance(calls, list) or not calls:
        found.append(
            (
                f,
                "tool_calls must be a non-empty list",
                'write [{"type": "function", "function": {"name": ..., "arguments": {...}}}]',
                "invalid tool call",
            )
        )
        return
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            found.append(
                (
                    f"{f}[{j}]",
                    "a tool call without a function name",
                    'write {"type": "function", "function": {"name": ..., "arguments": {...}}}',
                    "invalid tool call",
                )
            )
            continue
        if not isinstance(fn.get("arguments"), dict):
            got = (
                "missing"
                if "arguments" not in fn
                else f"a {type(fn['arguments']).__name__}, not a JSON object"
            )
            found.append(
                (
                    f"{f}[{j}].function.arguments",
                    f"arguments {got}",
                    'give the arguments as an object, e.g. {"city": "Turku"} ({} for none)',
                    "invalid tool call",
                )
            )
        if names is not None and fn["name"] not in names:
            found.append(
                (
                    f"{f}[{j}].function.name",
                    f"calls {fn['name']!r}, which the row's tools do not declare ({', '.join(sorted(names)) or 'none'})",
                    "add its schema to tools, or fix the name",
                    "undeclared tool",
                )
            )


def _check_order(messages: list, roles: list, found: Found) -> None:
    """System first, no two user or assistant turns in a row, tool results after calls, the assistant last."""
    pending = None  # (index of the calling turn, number of calls, their ids, results seen)
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
        if role == "tool":
            if pending is None:
                found.append(
                    (
                        f"messages[{i}].role",
                        "a tool result with no tool call before it",
                        "put the assistant turn that calls the tool (tool_calls) before it",
                        "orphan tool result",
                    )
                )
                continue
            pending[3] += 1
            call_id = messages[i].get("tool_call_id")
            if call_id is not None and pending[2] and call_id not in pending[2]:
                found.append(
                    (
                        f"messages[{i}].tool_call_id",
                        f"{call_id!r} is not the id of a call before it ({', '.join(map(str, pending[2]))})",
                        "use the id of the call this result answers",
                        "unknown tool_call_id",
                    )
                )
            continue
        if pending is not None:
            _close(pending, found)
            pending = None
        m = messages[i] if isinstance(messages[i], dict) else {}
        if role == "assistant" and isinstance(m.get("tool_calls"), list) and m["tool_calls"]:
            ids = [c.get("id") for c in m["tool_calls"] if isinstance(c, dict) and c.get("id") is not None]
            pending = [i, len(m["tool_calls"]), ids, 0]
    if pending is not None and pending[0] != len(roles) - 1:
        _close(pending, found)
    if any(r not in ROLES for r in roles):
        return  # a missing or unknown role was reported; the checks below would only echo it
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


def _close(pending: list, found: Found) -> None:
    i, n_calls, _, n_results = pending
    if n_results != n_calls:
        found.append(
            (
                f"messages[{i}].tool_calls",
                f"{n_calls} tool call(s) but {n_results} tool result(s) after them",
                "give each call its result (a tool turn), in order",
                "tool results mismatch",
            )
        )
