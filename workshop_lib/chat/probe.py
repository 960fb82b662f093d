"""What a template accepts: the sample conversations, probing them, and the report types of the checks.

`probe` finds a sample the template renders without losing text and the constraints met on the way (no
system role, strict alternation, a dropped system prompt, a default system turn); `checks` runs the checks
on it and fills a `CheckReport`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .encode import merge_system_prompt
from .templates import SAMPLE, try_render

# Non-ASCII text (Finnish, Cyrillic, an emoji) for the renderings a fix must keep identical.
NON_ASCII = [
    {"role": "user", "content": "Mikä sana on eläin: persikka, saukko, saari? Ответь коротко 🙂"},
    {"role": "assistant", "content": "Eläin on saukko — «saukko»."},
]


# A tool-calling exchange as transformers/TRL define it (OpenAI shape; Mistral wants 9-character ids).
TOOL_CALL = [
    {"role": "user", "content": "What is the weather in Oulu?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call00001",
                "type": "function",
                "function": {"name": "weather", "arguments": {"city": "Oulu"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call00001", "name": "weather", "content": "-12 C, snow"},
    {"role": "assistant", "content": "It is -12 C and snowing in Oulu."},
]


def conversation_set() -> list[tuple[list[dict], bool]]:
    """(conversation, add_generation_prompt) pairs a replacement template must render identically."""
    s = SAMPLE
    convs = [s, s[1:], s[1:3], s[:3], [s[0], *NON_ASCII], NON_ASCII, [*NON_ASCII, *s[1:3]]]
    return [(c, False) for c in convs] + [(c[:-1], True) for c in convs]


@dataclass
class Check:
    name: str
    status: str  # "pass", "warn", "fail"
    detail: str


@dataclass
class CheckReport:
    checks: list[Check] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)  # what the template accepts, found by probing
    end_of_turn: str | None = None  # the token that closes an answer (the first answer's)
    end_tokens: list[str] = field(default_factory=list)  # every end token seen (gpt-oss: <|end|>, <|return|>)
    sample: list[dict] | None = None  # the conversation the checks ran on
    notes: list[str] = field(default_factory=list)  # what prepare_tokenizer/fix_template did

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "fail"]

    def __str__(self) -> str:
        mark = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
        lines = [f"[{mark[c.status]}] {c.name}: {c.detail}" for c in self.checks]
        lines += [f"  constraint: {c}" for c in self.constraints]
        lines += [f"  done: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = {"pass": "#22a347", "warn": "#d97706", "fail": "#dc2626"}
        rows = "".join(
            f"<tr><td style='color:{colour[c.status]};font-weight:700'>{c.status.upper()}</td>"
            f"<td>{html.escape(c.name)}</td><td style='text-align:left'>{html.escape(c.detail)}</td></tr>"
            for c in self.checks
        )
        extra = "".join(
            f"<tr><td>{kind}</td><td colspan=2 style='text-align:left'>{html.escape(t)}</td></tr>"
            for kind, items in (("constraint", self.constraints), ("done", self.notes))
            for t in items
        )
        return f"<table>{rows}{extra}</table>"


# ----------------------------------------------------------------------------- probing
def probe(tokenizer, text: str) -> tuple[list[dict] | None, list[str]]:
    """A sample the template accepts without losing content, and the constraints found on the way."""
    s, constraints = SAMPLE, []
    sys_text = s[0]["content"]
    with_sys = try_render(tokenizer, text, s[:3])
    if isinstance(with_sys, Exception):
        constraints.append(f"rejects a system turn ({type(with_sys).__name__}: {with_sys})")
    elif sys_text not in with_sys:
        ends_user = try_render(tokenizer, text, s[:2])
        when = (
            " unless the conversation ends with a user turn"
            if isinstance(ends_user, str) and sys_text in ends_user
            else ""
        )
        constraints.append(f"silently drops the system prompt{when}")
    else:
        no_sys = try_render(tokenizer, text, s[1:3])
        head = with_sys[: with_sys.find(sys_text)]
        bos = tokenizer.bos_token or ""
        if isinstance(no_sys, str) and head.removeprefix(bos).strip() and no_sys.startswith(head):
            after = no_sys[len(head) :]
            if after.lstrip().startswith(s[1]["content"]):
                constraints.append(
                    "has no system turn of its own: puts the system prompt inside the first user turn"
                )
            else:
                constraints.append(
                    f"writes a system turn even when there is none ({no_sys[: len(head) + 30][-110:]!r})"
                )
    if constraints and constraints[0].startswith(("rejects", "silently drops")):
        constraints.append(
            "for data with system prompts: system_prompt: auto (the recipe default) or merge puts the system text "
            "into the first user turn (chat.merge_system_prompt)"
        )
    two_users = [s[1], {"role": "user", "content": s[3]["content"]}, s[2]]
    if isinstance(err := try_render(tokenizer, text, two_users), Exception):
        constraints.append(f"requires strictly alternating user/assistant turns ({err})")
    tools = try_render(tokenizer, text, TOOL_CALL)
    if isinstance(tools, Exception):
        constraints.append(f"rejects tool-calling turns ({type(tools).__name__}: {str(tools)[:80]})")
    elif dropped(TOOL_CALL, tools):
        constraints.append("renders tool-calling conversations but leaves the tool results out")
    for sample in (s, s[1:], merge_system_prompt(s)):
        out = try_render(tokenizer, text, sample)
        # a dropped system prompt is a constraint (merge it); other dropped text fails "content kept"
        if isinstance(out, str) and not [i for i in dropped(sample, out) if sample[i]["role"] == "system"]:
            return sample, constraints
    return None, constraints


def dropped(messages: list[dict], rendered: str) -> list[int]:
    """Indices of messages whose (stripped) text content does not appear in the rendering."""
    return [
        i
        for i, m in enumerate(messages)
        if isinstance(m.get("content"), str) and m["content"].strip() and m["content"].strip() not in rendered
    ]


def written_before_answer(tokenizer, text: str, sample: list[dict]) -> str:
    """What the model itself writes after the inference prompt and before its answer ('' if nothing):
    gpt-oss's `<|channel|>final<|message|>`. The fix puts it inside the markers so that it is trained."""
    prompt = try_render(tokenizer, text, sample[:-1], True)
    full = try_render(tokenizer, text, sample)
    if not (isinstance(prompt, str) and isinstance(full, str) and full.startswith(prompt)):
        return ""
    rest, answer = full[len(prompt) :], sample[-1]["content"].strip()
    return rest[: rest.find(answer)].rstrip() if answer and answer in rest else ""


def strip_trailing_specials(tokenizer, text: str) -> str:
    """`text` without the special/added tokens and whitespace at its end."""
    names = sorted(
        set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True
    )
    while True:
        stripped = text.rstrip()
        for name in names:
            if name and stripped.endswith(name):
                stripped = stripped[: -len(name)]
                break
        if stripped == text:
            return text
        text = stripped
