"""The kit's own template rewriting: wrap each answer and its end-of-turn token in {% generation %}.

Used for families TRL's training templates do not cover. The rewrite changes only where the mask is,
never the rendered text; `fix.py` verifies that on a set of conversations before keeping it.
"""

from __future__ import annotations

import re

_EXPR_RE = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
# `message.content`, `message['content']` or a bare `content` variable, with filters (`| trim`) or string
# methods (`.lstrip("\n")`) after it: the rewrite labels what the template writes, transformed or not
_CONTENT_RE = re.compile(
    r"^\s*(?:(\w+)(?:\[\s*['\"]content['\"]\s*\]|\.content)|content)"
    r"(?:\s*\|\s*\w+(?:\(\))?|\.\w+\((?:'[^']*'|\"[^\"]*\")?\))*\s*$"
)


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


def add_generation_markers(
    text: str, specials: list[str], assistant_only: bool = False, lead: str = ""
) -> str | None:
    """Wrap the assistant content of `{{ prefix + message.content + end_of_turn + rest }}` expressions.

    Each such expression becomes: if the message is the assistant's, the same output with the content
    and its end-of-turn token inside {% generation %}; otherwise the original expression. The
    rendering is unchanged for every role; only the mask is added. `assistant_only`: the text is a part
    of the template that only assistant turns reach (the inside of a generation block), so no role test.
    `lead`: text the model writes itself after the inference prompt, before its answer (gpt-oss's
    `<|channel|>final<|message|>`): where a literal before the content ends with it, it goes inside the
    markers too, so it is trained.
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
        if var is None and not assistant_only:
            return m.group(0)  # a bare `content` variable: which message it is cannot be told here
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
        front = list(terms[:at])
        if lead and front and (lit := front[-1].strip())[:1] in "'\"" and lit[1:-1].endswith(lead):
            q = lit[0]
            front[-1] = f"{q}{lit[1 : -1 - len(lead)]}{q}"
            inside = f"{q}{lead}{q}+{inside}"
        before = "+".join(front)
        wrapped = f"{{% generation %}}{{{{{left}{inside}{right}}}}}{{% endgeneration %}}"
        if assistant_only:
            out = f"{{{{{left}{before}{right}}}}}" if before.strip() else ""
            out += wrapped + (f"{{{{{left}{after}{right}}}}}" if after.strip() else "")
            changed = True
            return out
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
_BLOCK_RE = re.compile(r"\{%(-?)\s*generation\s*(-?)%\}(.*?)\{%(-?)\s*endgeneration\s*(-?)%\}", re.S)


def narrow_generation_markers(text: str, specials: list[str], lead: str = "") -> str | None:
    """A template's own {% generation %} blocks narrowed to the answer and its end-of-turn token.

    Some published templates (SmolLM3) wrap the whole assistant turn, role header included, so the
    header, which the inference prompt already holds, would be trained. Inside each block, every
    `{{ header + content + end_of_turn + rest }}` gets its own markers around `content + end_of_turn`;
    the block's tags become `{% if true %}`/`{% endif %}` with the same whitespace control, so the
    rendering is unchanged. None if some block has no such expression.
    """

    def narrow(m: re.Match) -> str:
        l1, r1, body, l2, r2 = m.groups()
        inner = add_generation_markers(body, specials, assistant_only=True, lead=lead)
        if inner is None:
            raise ValueError
        return f"{{%{l1} if true {r1}%}}{inner}{{%{l2} endif {r2}%}}"

    try:
        return _BLOCK_RE.sub(narrow, text) if _BLOCK_RE.search(text) else None
    except ValueError:
        return None


def strip_generation_markers(text: str) -> str:
    """The template without its {% generation %} tags (to add them again in the right place)."""
    return _MARKER_TAGS_RE.sub("", text)


_ROLE_TEST_RE = re.compile(r"\{%-?\s*(?:el)?if\b[^%]*role")
_ASSISTANT_RE = re.compile(r"""==\s*['"](?:assistant|chatbot|model)['"]""")


def answer_lines(text: str) -> list[str]:
    """The template lines that output a message's content: where a hand-made fix would go. Lines under a
    role test for the assistant come first (a template writes user and system content with the same words)."""
    mine, other, assistant = [], [], False
    for n, line in enumerate(text.splitlines(), 1):
        if _ROLE_TEST_RE.search(line):
            assistant = bool(_ASSISTANT_RE.search(line))
        if "{{" in line and "content" in line:
            (mine if assistant else other).append(f"line {n}: {line.strip()[:120]}")
    return (mine + other)[:6]


def position_dependent_lines(text: str) -> list[str]:
    """Template lines whose output depends on a message's position (why earlier turns render differently)."""
    keys = ("loop.last", "last_query_index", "loop.index0 >", "messages[-1]")
    return [
        f"line {n}: {ln.strip()[:120]}"
        for n, ln in enumerate(text.splitlines(), 1)
        if any(k in ln for k in keys)
    ][:6]
