"""The kit's own template rewriting: wrap each answer and its end-of-turn token in {% generation %}.

Used for families TRL's training templates do not cover. The rewrite changes only where the mask is,
never the rendered text; `fix.py` verifies that on a set of conversations before keeping it.
"""

from __future__ import annotations

import re

_EXPR_RE = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_CONTENT_RE = re.compile(r"^\s*(\w+)(?:\[\s*['\"]content['\"]\s*\]|\.content)(\s*\|\s*\w+(?:\(\))?)*\s*$")


def _split_plus(expr: str) -> list[str]:
    """Split a Jinja expression on top-level '+' (not inside quotes or brackets)."""
    terms, depth, quote, cur = [], 0, None, ""
    for ch in expr:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote, cur = ch, cur + ch
        elif ch in "([{":
            depth, cur = depth + 1, cur + ch
        elif ch in ")]}":
            depth, cur = depth - 1, cur + ch
        elif ch == "+" and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [*terms, cur]


def _closes_turn(term: str, specials: list[str]) -> int | None:
    """If a term writes an end-of-turn token, the index in the term right after it (to split a literal)."""
    t = term.strip()
    if t in ("eos_token", "eos_token | trim"):
        return len(term)
    if t[:1] in "'\"" and t[-1:] == t[:1]:
        for tok in sorted(specials, key=len, reverse=True):
            at = term.find(tok)
            if at >= 0:
                return at + len(tok)
    return None


def add_generation_markers(text: str, specials: list[str]) -> str | None:
    """Wrap the assistant content of `{{ prefix + message.content + end_of_turn + rest }}` expressions.

    Each such expression becomes: if the message is the assistant's, the same output with the content
    and its end-of-turn token inside {% generation %}; otherwise the original expression. The
    rendering is unchanged for every role; only the mask is added.
    """
    changed = False

    def rewrite(m: re.Match) -> str:
        nonlocal changed
        left, body, right = m.groups()
        terms = _split_plus(body)
        at = next((i for i, t in enumerate(terms) if _CONTENT_RE.match(t)), None)
        if at is None:
            return m.group(0)
        var = _CONTENT_RE.match(terms[at]).group(1)
        close = next(
            ((i, cut) for i, t in enumerate(terms[at + 1 :], at + 1) if (cut := _closes_turn(t, specials))),
            None,
        )
        if close is None:
            return m.group(0)
        i, cut = close
        term = terms[i]
        head, tail = term[:cut], term[cut:]
        quote = term.strip()[:1]
        # a literal like '<end_of_turn>\n' (escaped or with a real newline): split right after the token, so
        # the whitespace after it stays outside the mask (strip() would eat a real newline and keep it inside)
        rest = tail.rstrip()
        if rest.endswith(quote) and rest[:-1]:
            head, tail = head + quote, quote + tail
        else:
            head, tail = term, ""
        inside = "+".join([*terms[at:i], head])
        after = "+".join(x for x in [tail, *terms[i + 1 :]] if x.strip())
        before = "+".join(terms[:at])
        # keep the original's whitespace control: '-' strips around it, '+' keeps what trim/lstrip_blocks would eat
        out = f"{{%{left or '+'} if {var}['role'] == 'assistant' %}}"
        if before.strip():
            out += f"{{{{{left}{before}{right}}}}}"
        out += f"{{% generation %}}{{{{{left}{inside}{right}}}}}{{% endgeneration %}}"
        if after.strip():
            out += f"{{{{{left}{after}{right}}}}}"
        out += f"{{% else %}}{m.group(0)}{{% endif {right or '+'}%}}"
        changed = True
        return out

    new = _EXPR_RE.sub(rewrite, _join_content_and_end(text, specials))
    return new if changed else None


_ADJACENT_RE = re.compile(r"\{\{(-?)((?:(?!\}\}).)*?)(-?)\}\}(\s*)\{\{(-?)((?:(?!\}\}).)*?)(-?)\}\}", re.S)


def _join_content_and_end(text: str, specials: list[str]) -> str:
    """`{{ x + message.content }}{{ '<|im_end|>' }}` -> `{{ x + message.content + '<|im_end|>' }}`.

    Only where nothing is output between the two (no whitespace, or whitespace the '-' strips), so the
    rendering is unchanged; the rewrite then sees the content and its end-of-turn token in one expression.
    """

    def join(m: re.Match) -> str:
        l1, a, r1, ws, l2, b, r2 = m.groups()
        ends_with_content = bool(_CONTENT_RE.match(_split_plus(a)[-1]))
        if (
            not ends_with_content
            or (ws and not (r1 or l2))
            or _closes_turn(_split_plus(b)[0], specials) is None
        ):
            return m.group(0)
        return f"{{{{{l1}{a} + {b}{r2}}}}}"

    return _ADJACENT_RE.sub(join, text)


_MARKER_TAGS_RE = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def strip_generation_markers(text: str) -> str:
    """The template without its {% generation %} tags (to add them again in the right place)."""
    return _MARKER_TAGS_RE.sub("", text)


def answer_lines(text: str) -> list[str]:
    """The template lines that output a message's content: where a hand-made fix would go."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if "{{" in line and "content" in line:
            out.append(f"line {n}: {line.strip()[:120]}")
    return out[:6]


def position_dependent_lines(text: str) -> list[str]:
    """Template lines whose output depends on a message's position (why earlier turns render differently)."""
    keys = ("loop.last", "last_query_index", "loop.index0 >", "messages[-1]")
    return [
        f"line {n}: {ln.strip()[:120]}"
        for n, ln in enumerate(text.splitlines(), 1)
        if any(k in ln for k in keys)
    ][:6]
