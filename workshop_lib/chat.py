"""Chat templates made visible: render, tokenize + label, show, check and fix, measure lengths.

The labels this module computes are the labels training uses: `encode()` is the function the train
module maps over the dataset, and `token_view()` runs its output through TRL's own collator, so
what a participant sees in notebook 02 is exactly what the loss is computed on.

Templates that mark the assistant's text with {% generation %} ... {% endgeneration %} let
`apply_chat_template(..., return_assistant_tokens_mask=True)` say which tokens are the answer:
only those are trained (assistant-only loss). The end-of-turn token must be inside the markers,
or the model never learns to stop.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
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
# a special token found in a template -> the bundled template of that family (used by fix_template)
FAMILY_MARKERS = {
    "<|im_start|>": "chatml",
    "<|start_header_id|>": "llama3",
    "[INST]": "mistral",
    "<start_of_turn>": "gemma",
    "<|assistant|>": "zephyr",
}
GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Which word is the animal: peach, otter, island"},
    {"role": "assistant", "content": "The animal is otter."},
    {"role": "user", "content": "And the fruit?"},
    {"role": "assistant", "content": "The fruit is peach."},
]


class TemplateError(ValueError):
    """A chat template is missing, raises, or cannot be used for training; the message says how to fix it."""


# ----------------------------------------------------------------------------- templates
def load_template(name_or_path: str | Path) -> str:
    """A bundled template by name (chatml, llama3, mistral, gemma, zephyr), a .jinja file, or template text."""
    s = str(name_or_path)
    if s in TEMPLATE_TOKENS:
        return (TEMPLATES_DIR / f"{s}.jinja").read_text()
    if "{%" in s or "{{" in s:
        return s
    path = Path(s)
    if path.exists():
        return path.read_text()
    raise TemplateError(
        f"unknown chat template {s!r}: use one of {', '.join(TEMPLATE_TOKENS)}, a path to a .jinja file, or the template text"
    )


def apply_template(tokenizer, name_or_path: str | Path) -> list[str]:
    """Give `tokenizer` a training-ready template, adding the special tokens it needs.

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


def end_of_turn_token(tokenizer, template: str | None = None) -> str | None:
    """The token that closes an assistant turn: the last token of the masked answer in a sample."""
    enc = encode([SAMPLE[1:3]], tokenizer, template)
    labels = [t for t in enc["labels"][0] if t != IGNORE]
    return tokenizer.convert_ids_to_tokens(labels[-1]) if labels else None


# ----------------------------------------------------------------------------- encode
def _template_of(tokenizer, template: str | None) -> str:
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
    text = _template_of(tokenizer, template)
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=text, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja raises TemplateError, exceptions from raise_exception, TypeError...
        raise TemplateError(_render_failure(e, messages)) from e


def _render_failure(e: Exception, messages: Any, index: int | None = None) -> str:
    roles = [m.get("role") for m in messages] if isinstance(messages, list) else messages
    where = f"conversation {index}" if index is not None else "the conversation"
    return (
        f"the chat template rejected {where} (roles {roles}): {type(e).__name__}: {e}. "
        "Fix the conversation (notebook 01 validates roles and order) or use a template that accepts it "
        "(e.g. some templates refuse system messages or require strictly alternating user/assistant turns)."
    )


def encode(
    batch: list[list[dict]], tokenizer, template: str | None = None, assistant_only: bool = True
) -> dict[str, list[list[int]]]:
    """Tokenize a batch of conversations and label them: the answer tokens keep their id, the rest IGNORE.

    The whole batch is rendered and tokenized in bulk (`_encode_with_masks`, equal to transformers'
    apply_chat_template). This is the function training maps over the dataset and the token view shows. assistant_only=False trains
    on every token (labels = input_ids), like TRL with assistant_only_loss=False.
    """
    text = _template_of(tokenizer, template)
    if not assistant_only:
        try:
            ids = tokenizer.apply_chat_template(batch, chat_template=text, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        except Exception as e:
            raise TemplateError(_render_failure(e, batch)) from e
        return {"input_ids": ids, "labels": [list(x) for x in ids]}
    if not GENERATION_RE.search(text):
        raise TemplateError(
            "the chat template has no {% generation %} markers, so the answer tokens cannot be told from the "
            "prompt (training would learn the prompt too, or TRL refuses assistant_only_loss). "
            "Run chat.check_template(tokenizer) and chat.fix_template(tokenizer), or chat.apply_template(tokenizer, 'chatml')."
        )
    try:
        ids, masks = _encode_with_masks(batch, tokenizer, text)
    except Exception as e:
        # find the offending conversation to name it
        for i, conv in enumerate(batch):
            try:
                tokenizer.apply_chat_template(conv, chat_template=text, tokenize=False)
            except Exception as e_one:
                raise TemplateError(_render_failure(e_one, conv, i)) from e_one
        raise TemplateError(_render_failure(e, batch)) from e
    labels = [
        [t if m else IGNORE for t, m in zip(x, k, strict=True)] for x, k in zip(ids, masks, strict=True)
    ]
    for i, lab in enumerate(labels):
        if all(t == IGNORE for t in lab):
            raise TemplateError(
                f"conversation {i} has no answer tokens after applying the template: it has no assistant turn, "
                "or the template's {% generation %} block is empty. Check it with chat.check_template(tokenizer)."
            )
    return {"input_ids": ids, "labels": labels}


def _encode_with_masks(
    batch: list[list[dict]], tokenizer, text: str
) -> tuple[list[list[int]], list[list[int]]]:
    """apply_chat_template(..., return_assistant_tokens_mask=True) for a batch, done in bulk.

    The same steps as transformers' own: render with the same function and template variables, tokenize
    without adding special tokens, mark every token that overlaps a {% generation %} span. What is faster:
    one call of the Rust tokenizer for the whole batch (its threads, no per-row Python objects) and the
    overlap test done with numpy. Tokenizers without a Rust backend take transformers' own path.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        out = tokenizer.apply_chat_template(
            batch, chat_template=text, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return out["input_ids"], out["assistant_masks"]
    import numpy as np
    from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

    convs = [_normalize_chat_messages(c) for c in batch]
    rendered, spans = render_jinja_template(
        conversations=convs,
        chat_template=text,
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    encodings = backend.encode_batch(rendered, add_special_tokens=False)
    ids, masks = [], []
    for enc, sp in zip(encodings, spans, strict=True):
        ids.append(enc.ids)
        if not sp:
            masks.append([0] * len(enc.ids))
            continue
        off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        s = np.asarray(sp, dtype=np.int64).reshape(-1, 2)
        # a token counts if it overlaps a span: token_end > span_start and token_start < span_end
        hit = (off[:, 1:2] > s[None, :, 0]) & (off[:, 0:1] < s[None, :, 1])
        masks.append(hit.any(axis=1).astype(np.int8).tolist())
    return ids, masks


def tokenize_dataset(
    dataset,
    tokenizer,
    template: str | None = None,
    num_proc: int | None = None,
    batch_size: int = 512,
    assistant_only: bool = True,
):
    """Map encode() over a datasets.Dataset with a "messages" column: batched, in parallel when it helps.

    The result has input_ids and labels, which SFTTrainer uses as they are (it skips its own tokenization).
    """
    text = _template_of(tokenizer, template)
    if num_proc is None:
        import os

        num_proc = min(os.cpu_count() or 1, 8) if len(dataset) >= 20_000 else None
    return dataset.map(
        lambda b: encode(b["messages"], tokenizer, text, assistant_only),
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc="Tokenizing and labelling",
    )


def collate(features: list[dict], tokenizer, padding_free: bool = True) -> dict:
    """Batch encoded examples exactly as SFTTrainer does (TRL's own collator)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=padding_free)
    return collator([dict(f) for f in features])


# ----------------------------------------------------------------------------- token view
@dataclass
class TokenView:
    """Each token of a conversation, its id and whether it counts in the loss (as training sees it)."""

    tokens: list[str]
    ids: list[int]
    trained: list[bool]

    def text(self, width: int = 100) -> str:
        """Terminal/log view: trained tokens inside ⟦ ⟧, plus counts."""
        out, line = [], ""
        for tok, on in zip(self.tokens, self.trained, strict=True):
            piece = tok.replace("\n", "\\n")
            piece = f"⟦{piece}⟧" if on else piece
            if len(line) + len(piece) > width:
                out.append(line)
                line = ""
            line += piece + "│"
        out.append(line)
        n = sum(self.trained)
        out.append(f"{len(self.ids)} tokens, {n} trained (⟦ ⟧), {len(self.ids) - n} context only")
        return "\n".join(out)

    def table(self) -> str:
        """One line per token: position, id, token, trained."""
        rows = [f"{'pos':>4} {'id':>7}  {'loss':4}  token"]
        for i, (tok, tid, on) in enumerate(zip(self.tokens, self.ids, self.trained, strict=True)):
            rows.append(f"{i:>4} {tid:>7}  {'yes' if on else '-':4}  {tok!r}")
        return "\n".join(rows)

    def html(self) -> str:
        """Coloured chips: green = trained (in the loss), grey = context; hover shows the id."""
        chips = []
        for tok, tid, on in zip(self.tokens, self.ids, self.trained, strict=True):
            bg, fg = ("#c8f0d0", "#0b5d1e") if on else ("#eceff3", "#444")
            label = html.escape(tok).replace("\n", "↵").replace(" ", "·") or "∅"
            chips.append(
                f"<span title='id {tid}{' (trained)' if on else ''}' style='background:{bg};color:{fg};"
                f"border-radius:3px;padding:1px 3px;margin:1px;display:inline-block;font-family:monospace;"
                f"font-size:12px'>{label}</span>"
            )
            if tok.endswith("\n"):
                chips.append("<br>")
        n = sum(self.trained)
        legend = (
            f"<div style='font-family:sans-serif;font-size:12px;margin-top:4px'>{len(self.ids)} tokens: "
            f"<span style='background:#c8f0d0;padding:1px 4px'>{n} trained</span> "
            f"<span style='background:#eceff3;padding:1px 4px'>{len(self.ids) - n} context</span></div>"
        )
        return "<div style='line-height:1.9;max-width:900px'>" + "".join(chips) + legend + "</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def __str__(self) -> str:
        return self.text()


def token_view(
    messages: list[dict], tokenizer, template: str | None = None, padding_free: bool = True
) -> TokenView:
    """Encode one conversation and pass it through the training collator; show what the loss sees.

    Labels in a causal LM are shifted inside the model: the label at position i is the token the
    model must predict there. A token "counts" when its label is not IGNORE after collation.
    """
    enc = encode([messages], tokenizer, template)
    batch = collate([{"input_ids": enc["input_ids"][0], "labels": enc["labels"][0]}], tokenizer, padding_free)
    ids = batch["input_ids"][0].tolist()
    labels = batch["labels"][0].tolist()
    tokens = [tokenizer.decode([i]) for i in ids]
    return TokenView(tokens, ids, [lab != IGNORE for lab in labels])


# ----------------------------------------------------------------------------- checks
@dataclass
class Check:
    name: str
    status: str  # "pass", "warn", "fail"
    detail: str


@dataclass
class CheckReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "fail"]

    def __str__(self) -> str:
        mark = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
        return "\n".join(f"[{mark[c.status]}] {c.name}: {c.detail}" for c in self.checks)

    def _repr_html_(self) -> str:
        colour = {"pass": "#22a347", "warn": "#d97706", "fail": "#dc2626"}
        rows = "".join(
            f"<tr><td style='color:{colour[c.status]};font-weight:700'>{c.status.upper()}</td>"
            f"<td>{html.escape(c.name)}</td><td style='text-align:left'>{html.escape(c.detail)}</td></tr>"
            for c in self.checks
        )
        return f"<table>{rows}</table>"


def _added_tokens(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})


def check_template(tokenizer, template: str | None = None, sample: list[dict] | None = None) -> CheckReport:
    """Check a tokenizer + template for training: the mistakes that fail silently, each explained.

    Works with the kit's templates and with real models' templates.
    """
    report = CheckReport()
    add = report.checks.append
    sample = sample or SAMPLE
    try:
        text = _template_of(tokenizer, template)
    except TemplateError as e:
        add(Check("has a chat template", "fail", str(e)))
        return report
    has_markers = bool(GENERATION_RE.search(text))
    add(
        Check(
            "generation markers",
            "pass" if has_markers else "fail",
            "{% generation %} marks the answer"
            if has_markers
            else "no {% generation %} ... {% endgeneration %} around the assistant content: the answer tokens cannot be "
            "found, so assistant-only loss is impossible. fix_template() can add them for common template shapes.",
        )
    )
    try:
        full = tokenizer.apply_chat_template(sample, chat_template=text, tokenize=False)
    except Exception as e:
        add(Check("renders a sample", "fail", _render_failure(e, sample)))
        return report

    # prefix property: each prefix of the conversation renders as a prefix of the whole. Multi-turn masking
    # and generation at inference both rely on it.
    bad_prefix = None
    for k in range(1, len(sample)):
        if sample[k - 1]["role"] != "assistant":
            continue
        part = tokenizer.apply_chat_template(sample[:k], chat_template=text, tokenize=False)
        if not full.startswith(part):
            bad_prefix = (k, part)
            break
    if bad_prefix:
        k, part = bad_prefix
        at = next((i for i, (a, b) in enumerate(zip(part, full, strict=False)) if a != b), len(part))
        add(
            Check(
                "prefix-stable rendering",
                "fail",
                f"the first {k} turns render differently alone than inside the whole conversation (from char {at}: "
                f"{part[at : at + 40]!r} vs {full[at : at + 40]!r}): earlier answers are rendered differently in "
                "training than at inference (e.g. a template that strips reasoning from past turns).",
            )
        )
    else:
        add(
            Check(
                "prefix-stable rendering",
                "pass",
                "every conversation prefix renders as a prefix of the whole",
            )
        )

    # generation prompt: what inference appends must be exactly where the training answer starts
    prompt = tokenizer.apply_chat_template(
        sample[:-1], chat_template=text, tokenize=False, add_generation_prompt=True
    )
    answer = sample[-1]["content"]
    if full.startswith(prompt) and full[len(prompt) :].lstrip().startswith(answer.strip()):
        add(
            Check(
                "generation prompt",
                "pass",
                f"inference prompt ends with {prompt[-25:]!r}, where training answers start",
            )
        )
    else:
        add(
            Check(
                "generation prompt",
                "fail",
                f"the prompt with add_generation_prompt=True ({prompt[-30:]!r}) is not where the training answer starts "
                f"({full[len(prompt) - 30 : len(prompt) + 10]!r}): the model is trained on a different context than it gets "
                "at inference. Fix the template's add_generation_prompt branch.",
            )
        )

    # one tokenization of the sample for the checks below (with the answer mask when there are markers)
    enc = tokenizer.apply_chat_template(
        sample, chat_template=text, tokenize=True, return_dict=True, return_assistant_tokens_mask=has_markers
    )
    ids = enc["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        add(
            Check(
                "single BOS",
                "fail",
                "the rendered text starts with BOS twice: the template writes bos_token and "
                "tokenization adds another. Tokenize rendered chats with add_special_tokens=False.",
            )
        )
    else:
        again = tokenizer(full, add_special_tokens=True)["input_ids"]
        doubled = bos is not None and len(again) > 1 and again[0] == again[1] == bos
        add(
            Check(
                "single BOS",
                "warn" if doubled else "pass",
                "apply_chat_template gives one BOS, but tokenizer(rendered_text) would add a second: always "
                "tokenize rendered chats with add_special_tokens=False"
                if doubled
                else "no doubled BOS"
                if bos is not None and bos in ids
                else "no BOS token in this template",
            )
        )

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None:
        add(
            Check(
                "pad token",
                "fail",
                "no pad token: batching needs one. fix_template() sets a distinct one "
                "(an unused reserved token if the vocabulary has one, else a new <|pad|>).",
            )
        )
    elif pad == eos:
        add(
            Check(
                "pad token",
                "warn",
                f"pad == eos ({tokenizer.eos_token!r}). This kit's labels come from the assistant mask, so eos is still "
                "trained here; but any collator that masks pad tokens would never train the end of turn and the model "
                "would not stop. fix_template() sets a distinct pad token.",
            )
        )
    else:
        add(
            Check(
                "pad token",
                "pass",
                f"pad {tokenizer.pad_token!r} is distinct from eos {tokenizer.eos_token!r}",
            )
        )

    if not has_markers:
        return report
    mask = enc["assistant_masks"]
    if not any(mask):
        add(
            Check(
                "assistant mask",
                "fail",
                "the generation block renders nothing for the sample: check that it wraps "
                "message['content'] of assistant turns",
            )
        )
        return report
    trained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    answers = [m["content"] for m in sample if m["role"] == "assistant"]
    missing = [a for a in answers if a.strip() not in trained]
    add(
        Check(
            "assistant mask",
            "fail" if missing else "pass",
            f"answers not inside the mask: {missing}"
            if missing
            else f"{sum(mask)} of {len(mask)} tokens trained, covering every answer",
        )
    )
    # each answer span must end with a special end-of-turn token; one right after the span is left untrained
    specials = _added_tokens(tokenizer)
    spans_end = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
    unclosed = [i for i in spans_end if ids[i] not in specials]
    outside = [ids[i + 1] for i in unclosed if i + 1 < len(ids) and ids[i + 1] in specials]
    if not unclosed:
        add(
            Check(
                "end of turn trained",
                "pass",
                f"each answer ends with {tokenizer.convert_ids_to_tokens(ids[spans_end[0]])!r}, inside the mask",
            )
        )
    elif outside:
        tok = tokenizer.convert_ids_to_tokens(outside[0])
        add(
            Check(
                "end of turn trained",
                "fail",
                f"{tok!r} follows each answer outside the generation block: it is never trained, so the model never "
                "learns to stop. Move {% endgeneration %} after it (fix_template() does).",
            )
        )
    else:
        add(
            Check(
                "end of turn trained",
                "warn",
                "no special end-of-turn token closes the answers: generation can only stop at max_new_tokens or "
                "on a stop string",
            )
        )
    return report


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


def _add_generation_markers(text: str, specials: list[str]) -> str | None:
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
        if tail.strip() and tail.strip() != quote:  # a literal like '<end_of_turn>\n': split after the token
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

    new = _EXPR_RE.sub(rewrite, text)
    return new if changed else None


def _same_rendering(tokenizer, a: str, b: str, sample: list[dict]) -> str | None:
    """None if both templates render the sample (with and without its system message, and its first
    exchange alone) identically, else where they differ. Variants the original refuses are skipped."""
    body = sample[1:] if sample[0]["role"] == "system" else sample
    first = next((i for i, m in enumerate(body) if m["role"] == "assistant"), len(body) - 1)
    for conv in (sample, body, body[: first + 1]):
        try:
            x = tokenizer.apply_chat_template(conv, chat_template=a, tokenize=False)
        except Exception:
            continue
        y = tokenizer.apply_chat_template(conv, chat_template=b, tokenize=False)
        if x != y:
            at = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
            return f"char {at}: {x[at : at + 40]!r} vs {y[at : at + 40]!r}"
    return None


def fix_template(
    tokenizer, template: str | None = None, sample: list[dict] | None = None
) -> tuple[str, list[str]]:
    """Propose a fix for a template that fails check_template, apply it to the tokenizer and re-check.

    Fixes, each kept only if the template still renders the sample exactly as before (the model
    keeps the format it was pre-trained with): (1) wrap the assistant content and its end-of-turn
    token in {% generation %} markers, for the common shape `{{ prefix + message['content'] +
    end_of_turn }}`; (2) else use the kit's template of the same family (ChatML, Llama-3, Mistral,
    Gemma, Zephyr); (3) give a missing pad token, or one equal to eos, a distinct pad token.
    Returns the new template and what was done; raises TemplateError when no safe fix exists.
    """
    sample = sample or SAMPLE
    text = _template_of(tokenizer, template)
    done: list[str] = []
    report = check_template(tokenizer, text, sample)
    if {"has a chat template", "renders a sample", "prefix-stable rendering"} & set(report.failed()):
        raise TemplateError("no automatic fix for this template:\n" + str(report))
    if {"generation markers", "assistant mask", "end of turn trained"} & set(report.failed()):
        original = text
        if GENERATION_RE.search(text):  # markers in the wrong place: drop them and add them again
            text = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", text)
        eot = [t for t in tokenizer.all_special_tokens if t not in (tokenizer.pad_token, tokenizer.bos_token)]
        eot += [t for t in FAMILY_MARKERS if t in text]
        eot += ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>"]
        candidate = _add_generation_markers(text, eot)
        how = "wrapped each assistant answer and its end-of-turn token in {% generation %} markers"
        if (
            candidate is None
            or _same_rendering(tokenizer, original, candidate, sample)
            or not check_template(tokenizer, candidate, sample).ok
        ):
            family = next((fam for marker, fam in FAMILY_MARKERS.items() if marker in original), None)
            if family is None:
                raise TemplateError(
                    "no automatic fix: the assistant content is not written as `prefix + message['content'] + "
                    "end_of_turn`, and the template is not of a family the kit knows (ChatML, Llama-3, Mistral, Gemma, "
                    "Zephyr). Add {% generation %} ... {% endgeneration %} around the assistant content and its "
                    "end-of-turn token by hand, or use chat.apply_template(tokenizer, 'chatml')."
                )
            candidate = load_template(family)
            differs = _same_rendering(tokenizer, original, candidate, sample)
            if differs:
                raise TemplateError(
                    f"no safe automatic fix: the kit's {family} template renders differently from this one at {differs}, "
                    "so the model would be trained on another format. Add {% generation %} markers to the model's own "
                    "template by hand."
                )
            how = f"replaced the template by the kit's {family} template (it renders the sample identically)"
        text = candidate
        done.append(how + "; the rendering of the sample is unchanged")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        reserved = [
            t
            for t in tokenizer.get_vocab()
            if "pad" in t.lower() and t.startswith("<") and t != tokenizer.eos_token
        ]
        if reserved:
            tokenizer.pad_token = sorted(reserved)[0]
            done.append(f"pad token set to the unused {tokenizer.pad_token!r} (no new embedding needed)")
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            done.append(
                "added a new pad token <|pad|>: resize the model's embeddings (model.resize_token_embeddings)"
            )
    tokenizer.chat_template = text
    after = check_template(tokenizer, text, sample)
    if not after.ok:
        raise TemplateError(
            "the fixed template still fails: " + ", ".join(after.failed()) + "\n" + str(after)
        )
    return text, done


# ----------------------------------------------------------------------------- lengths
@dataclass
class LengthReport:
    """Token lengths of a dataset under a template, and what a max length would cut."""

    lengths: list[int]
    answer_positions: list[list[int]]  # positions of trained tokens per conversation

    def at(self, max_length: int) -> dict[str, float]:
        n_trained = sum(len(p) for p in self.answer_positions)
        lost = sum(sum(1 for i in p if i >= max_length) for p in self.answer_positions)
        truncated = sum(n > max_length for n in self.lengths)
        return {
            "max_length": max_length,
            "truncated_conversations": truncated / max(len(self.lengths), 1),
            "answer_tokens_lost": lost / max(n_trained, 1),
            "no_answer_left": sum(bool(p) and min(p) >= max_length for p in self.answer_positions)
            / max(len(self.lengths), 1),
        }

    def recommend(self, keep: float = 0.99, multiple: int = 64, limit: int | None = None) -> int:
        """Smallest multiple of `multiple` keeping `keep` of the conversations whole (capped at `limit`)."""
        ordered = sorted(self.lengths)
        need = ordered[min(int(keep * len(ordered)), len(ordered) - 1)] if ordered else multiple
        value = -(-need // multiple) * multiple
        return min(value, limit) if limit else value


def length_report(dataset_or_rows, tokenizer, template: str | None = None) -> LengthReport:
    """Lengths from the same encode() training uses, on a Dataset (messages column) or a list of rows."""
    rows = dataset_or_rows
    if hasattr(rows, "column_names") and "input_ids" not in rows.column_names:
        rows = tokenize_dataset(rows, tokenizer, template)
        ids, labels = rows["input_ids"], rows["labels"]
    elif hasattr(rows, "column_names"):
        ids, labels = rows["input_ids"], rows["labels"]
    else:
        enc = encode([r["messages"] for r in rows], tokenizer, template)
        ids, labels = enc["input_ids"], enc["labels"]
    return LengthReport(
        [len(x) for x in ids], [[i for i, t in enumerate(lab) if t != IGNORE] for lab in labels]
    )
