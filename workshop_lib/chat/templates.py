"""The kit's bundled templates, loading a template by name/path/text, and rendering a conversation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
IGNORE = -100  # label of a token that does not count in the loss (PyTorch's cross-entropy default)

# What each bundled template needs from the tokenizer. end_of_turn None means the tokenizer's eos.
TEMPLATE_TOKENS: dict[str, dict[str, Any]] = {
    "chatml": {"specials": ["<|im_start|>", "<|im_end|>"], "end_of_turn": "<|im_end|>"},
    "llama3": {
        "specials": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "end_of_turn": "<|eot_id|>",
    },
    "mistral": {"specials": ["[INST]", "[/INST]"], "end_of_turn": None},
    "gemma": {"specials": ["<start_of_turn>", "<end_of_turn>"], "end_of_turn": "<end_of_turn>"},
    "zephyr": {"specials": [], "end_of_turn": None},
}
GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Which word is the animal: peach, otter, island"},
    {"role": "assistant", "content": "The animal is otter."},
    {"role": "user", "content": "And the fruit?"},
    {"role": "assistant", "content": "The fruit is peach."},
]


# Written by fix_template in front of a template that is not prefix-stable: encode() then trains each answer
# in its own sample, rendered as inference renders that turn. A Jinja comment: the rendering is unchanged.
PER_ANSWER = "{# workshop_lib: one training sample per answer (earlier turns render differently) #}"


def per_answer(text: str) -> bool:
    """True if the template is trained one sample per answer (see PER_ANSWER)."""
    return isinstance(text, str) and text.startswith(PER_ANSWER)


# Message fields holding an answer's reasoning; templates render them (or not) as they do at inference.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
# Written by fix_template in front of a template whose inference prompt opens the answer's reasoning (Nemotron's
# '<think>\n') and which writes that reasoning for an answer that has it: every answer must then carry its own.
REASONING = "{# workshop_lib: every answer carries its reasoning (the inference prompt opens it) #}"
# the reasoning the checks give the test conversations' answers for such a template
CHECK_REASONING = "The question names three words; one of them fits."


def needs_reasoning(text: str) -> bool:
    """True if every answer must carry its reasoning to be trained (see REASONING)."""
    return isinstance(text, str) and REASONING in text[: len(PER_ANSWER) + len(REASONING)]


def check_sample(text: str, sample: list[dict] | None) -> list[dict] | None:
    """The conversation the checks use for this template: with a reasoning on each answer where it needs one."""
    return with_reasoning(sample) if sample is not None and needs_reasoning(text) else sample


def with_reasoning(conv: list[dict]) -> list[dict]:
    """The conversation with a reasoning (reasoning_content) on each answer that has none."""
    return [
        {**m, "reasoning_content": CHECK_REASONING}
        if m.get("role") == "assistant" and not any(m.get(k) for k in REASONING_KEYS)
        else m
        for m in conv
    ]


class TemplateError(ValueError):
    """A chat template is missing, raises, or cannot be used for training; the message says how to fix it."""


def load_template(name_or_path: str | Path) -> str:
    """A bundled template by name (chatml, llama3, mistral, gemma, zephyr), a .jinja file, or template text."""
    s = str(name_or_path)
    if s in TEMPLATE_TOKENS:
        return (TEMPLATES_DIR / f"{s}.jinja").read_text()
    if "{%" in s or "{{" in s:
        return s
    path = Path(s).expanduser()
    if path.exists():
        return path.read_text()
    raise TemplateError(
        f"unknown chat template {s!r}: use one of {', '.join(TEMPLATE_TOKENS)}, a path to a .jinja file, "
        "or the template text"
    )


def apply_template(tokenizer, name_or_path: str | Path) -> list[str]:
    """Give `tokenizer` a template (bundled name, .jinja path or text), adding the special tokens it needs.

    Returns notes for the user. Added tokens grow the vocabulary: the model's embeddings must be
    resized (model.resize_token_embeddings(len(tokenizer))) and the new rows start untrained, so
    with LoRA the embedding and output layers must be trained too (modules_to_save).
    """
    text = load_template(name_or_path)
    notes = []
    name = str(name_or_path)
    spec = TEMPLATE_TOKENS.get(name, {"specials": [], "end_of_turn": None})
    missing = [t for t in spec["specials"] if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
        notes.append(
            f"added special tokens {missing}: call model.resize_token_embeddings(len(tokenizer)) "
            f"(now {len(tokenizer)}); their embeddings start untrained, so train embed_tokens and lm_head "
            "too (LoRA: modules_to_save=['embed_tokens', 'lm_head'])"
        )
    if "eos_token" in text and tokenizer.eos_token is None:
        raise TemplateError(
            f"template {name} closes turns with eos_token, but the tokenizer has none: set one first"
        )
    if "{{- bos_token" in text and tokenizer.bos_token is None:
        notes.append("the tokenizer has no BOS token: the template starts without one")
    tokenizer.chat_template = text
    eot = spec["end_of_turn"] or tokenizer.eos_token
    notes.append(f"end-of-turn token: {eot!r} (generation must stop on it: generation_config.eos_token_id)")
    return notes


def template_of(tokenizer, template: str | None = None) -> str:
    """The template text to use: `template` (name, path or text) if given, else the tokenizer's own."""
    text = load_template(template) if template is not None else tokenizer.chat_template
    if isinstance(text, dict):  # some tokenizers keep several named templates
        text = text.get("default") or next(iter(text.values()))
    if not text:
        raise TemplateError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template. Give it one: "
            "chat.apply_template(tokenizer, 'chatml') (or llama3, mistral, gemma, zephyr), or pass template=..."
        )
    return text


def render(
    messages: list[dict], tokenizer, template: str | None = None, add_generation_prompt: bool = False
) -> str:
    """The text the model sees for one conversation."""
    text = template_of(tokenizer, template)
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=text, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja raises TemplateError, exceptions from raise_exception, TypeError...
        raise TemplateError(render_failure(e, messages)) from e


def try_render(tokenizer, text: str, messages: list[dict], add_generation_prompt: bool = False, **kw):
    """The rendering, or the exception the template raised (for probing what a template accepts). kw: what
    else the template is given (a row's tools, its chat_template_kwargs)."""
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=text, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
        )
    except Exception as e:
        return e


def render_failure(e: Exception, messages: Any, index: int | None = None) -> str:
    roles = [m.get("role") for m in messages] if isinstance(messages, list) else messages
    where = f"conversation {index}" if index is not None else "the conversation"
    return (
        f"the chat template rejected {where} (roles {roles}): {type(e).__name__}: {e}. "
        "Fix the conversation (notebook 01 validates roles and order) or use a template that accepts it "
        "(some templates refuse system messages, e.g. Gemma and Mistral: system_prompt='auto' (the default) or 'merge' merges them; some "
        "require strictly alternating user/assistant turns)."
    )
