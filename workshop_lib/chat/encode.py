"""Tokenize and label conversations exactly as training does; system-prompt merging; batching.

`encode()` is the function training maps over the dataset and the token view shows, so what a
participant sees in notebook 02 is what the loss is computed on. Templates that mark the answer with
{% generation %} ... {% endgeneration %} say which tokens are trained (assistant-only loss).
"""

from __future__ import annotations

import json

from .samples import encode_per_answer, has_reasoning, refuse_dropped_content, refuse_missing_reasoning
from .templates import (
    GENERATION_RE,
    IGNORE,
    SAMPLE,
    TemplateError,
    needs_reasoning,
    per_answer,
    render_failure,
    template_of,
)

SYSTEM_PROMPT_MODES = ("auto", "keep", "merge")


def resolve_system_prompt(tokenizer, mode: str = "auto", template: str | None = None) -> str:
    """'keep' or 'merge': what `system_prompt` means for this template. auto keeps system prompts where the
    template renders them, and merges them into the first user turn where it drops or rejects them."""
    if mode not in SYSTEM_PROMPT_MODES:
        raise ValueError(f"system_prompt={mode!r}: use one of {', '.join(SYSTEM_PROMPT_MODES)}")
    if mode != "auto":
        return mode
    return "merge" if system_prompt_lost(tokenizer, template_of(tokenizer, template)) else "keep"


def system_prompt_lost(tokenizer, text: str) -> str | None:
    """How the template loses a system prompt ('rejects' or 'drops'), None if it renders it."""
    sample = SAMPLE[:3]
    try:
        out = tokenizer.apply_chat_template(sample, chat_template=text, tokenize=False)
    except Exception:
        return "rejects"
    return None if sample[0]["content"] in out else "drops"


def merge_system_prompt(messages: list[dict]) -> list[dict]:
    """The conversation with a leading system message merged into the first user turn.

    For models whose template rejects (Gemma 1/2, Mistral v0.1) or silently drops (Mistral v0.3 when the
    conversation ends with an answer) a system turn. The system text comes first, then a blank line,
    then the user's text, as Mistral's own templates and mistral-common join them.
    """
    if not messages or messages[0].get("role") != "system":
        return messages
    system, rest = messages[0], list(messages[1:])
    first_user = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
    if first_user is None:
        raise TemplateError(
            "cannot merge the system prompt: the conversation has no user turn to merge it into "
            f"(roles {[m.get('role') for m in messages]})"
        )
    user = dict(rest[first_user])
    user["content"] = f"{system['content']}\n\n{user['content']}"
    rest[first_user] = user
    return rest


def end_of_turn_token(tokenizer, template: str | None = None) -> str | None:
    """The token that closes an assistant turn: the last non-blank token of the masked answer in a sample."""
    for sample in (SAMPLE[1:3], merge_system_prompt(SAMPLE[:3])):
        try:
            enc = encode([sample], tokenizer, template)
        except TemplateError:
            continue
        labels = [t for t in enc["labels"][0] if t != IGNORE]
        while labels and not tokenizer.decode([labels[-1]]).strip():
            labels.pop()  # a newline trained after the end-of-turn token (TRL's Gemma template)
        return tokenizer.convert_ids_to_tokens(labels[-1]) if labels else None
    return None


def encode(
    batch: list[list[dict]],
    tokenizer,
    template: str | None = None,
    assistant_only: bool = True,
    render: list[dict] | None = None,
    kw: dict | None = None,
) -> dict[str, list[list[int]]]:
    """Tokenize a batch of conversations and label them: the answer tokens keep their id, the rest IGNORE.

    The whole batch is rendered and tokenized in bulk (`encode_with_masks`, equal to transformers'
    apply_chat_template). assistant_only=False trains on every token (labels = input_ids), like TRL
    with assistant_only_loss=False. A conversation whose text the template leaves out (a message's
    content missing from the rendering) is refused: the model would be trained on something else.
    render: per conversation, what else its template is given, as TRL and inference give it: the row's
    `tools` (their schemas in the prompt) and `chat_template_kwargs` (Llama 3.1's builtin_tools, which end a
    built-in tool call with <|eom_id|>). Conversations are rendered in groups of equal arguments (kw).
    """
    text = template_of(tokenizer, template)
    if render is not None and any(render):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(render):
            groups.setdefault(json.dumps(r or {}, sort_keys=True, default=str), []).append(i)
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        for key, idx in groups.items():  # (dataset rows need not keep their order inside a batch)
            part = encode([batch[i] for i in idx], tokenizer, text, assistant_only, kw=json.loads(key))
            out["input_ids"] += part["input_ids"]
            out["labels"] += part["labels"]
        return out
    kw = kw or {}
    if assistant_only and needs_reasoning(text) and not per_answer(text):
        refuse_missing_reasoning(batch)  # (one sample per answer checks each answer's rendering itself)
    if assistant_only and per_answer(text):
        ids, labels, _ = encode_per_answer(batch, tokenizer, text, kw)
        return {"input_ids": ids, "labels": labels}
    split = [i for i, conv in enumerate(batch) if has_reasoning(conv)]
    if assistant_only and split:
        # reasoning is rendered as each template renders it at inference (most keep only the last turn's):
        # those conversations are trained one sample per answer, the others as usual, in their order
        ids, labels, where = encode_per_answer([batch[i] for i in split], tokenizer, text, kw)
        rest = [i for i in range(len(batch)) if i not in split]
        whole = (
            encode([batch[i] for i in rest], tokenizer, text, kw=kw)
            if rest
            else {"input_ids": [], "labels": []}
        )
        rows = [(split[w], x, y) for w, x, y in zip(where, ids, labels, strict=True)]
        rows += [(i, x, y) for i, x, y in zip(rest, whole["input_ids"], whole["labels"], strict=True)]
        rows.sort(key=lambda r: r[0])
        return {"input_ids": [r[1] for r in rows], "labels": [r[2] for r in rows]}
    if not assistant_only:
        try:
            ids = tokenizer.apply_chat_template(
                batch, chat_template=text, tokenize=True, return_dict=True, **kw
            )["input_ids"]
        except Exception as e:
            raise TemplateError(render_failure(e, batch)) from e
        return {"input_ids": ids, "labels": [list(x) for x in ids]}
    if not GENERATION_RE.search(text):
        raise TemplateError(
            "the chat template has no {% generation %} markers, so the answer tokens cannot be told from the "
            "prompt (training would learn the prompt too, or TRL refuses assistant_only_loss). "
            "Run chat.prepare_tokenizer(tokenizer): it checks the template and makes it training-ready."
        )
    try:
        ids, masks, rendered = encode_with_masks(batch, tokenizer, text, kw)
    except Exception as e:
        for i, conv in enumerate(batch):  # find the offending conversation to name it
            try:
                tokenizer.apply_chat_template(conv, chat_template=text, tokenize=False, **kw)
            except Exception as e_one:
                raise TemplateError(render_failure(e_one, conv, i)) from e_one
        raise TemplateError(render_failure(e, batch)) from e
    if rendered is not None:
        refuse_dropped_content(batch, rendered)
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


def encode_with_masks(
    batch: list[list[dict]], tokenizer, text: str, kw: dict | None = None
) -> tuple[list[list[int]], list[list[int]], list[str] | None]:
    """apply_chat_template(..., return_assistant_tokens_mask=True) for a batch, done in bulk.

    The same steps as transformers' own: render with the same function and template variables, tokenize
    without adding special tokens, mark every token that overlaps a {% generation %} span. What is faster:
    one call of the Rust tokenizer for the whole batch and the overlap test done with numpy. Tokenizers
    without a Rust backend take transformers' own path (and return no rendered text).
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        out = tokenizer.apply_chat_template(
            batch,
            chat_template=text,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            **(kw or {}),
        )
        return out["input_ids"], out["assistant_masks"], None
    import numpy as np
    from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

    convs = [_normalize_chat_messages(c) for c in batch]
    rendered, spans = render_jinja_template(
        conversations=convs,
        chat_template=text,
        return_assistant_tokens_mask=True,
        **{**tokenizer.special_tokens_map, **(kw or {})},
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
    return ids, masks, rendered


def tokenize_dataset(
    dataset,
    tokenizer,
    template: str | None = None,
    num_proc: int | None = None,
    batch_size: int = 512,
    assistant_only: bool = True,
    system_prompt: str = "auto",
):
    """Map encode() over a datasets.Dataset with a "messages" column: batched, in parallel when it helps.

    system_prompt="merge" merges each leading system message into the first user turn first (for models
    whose template rejects or drops system turns); "keep" gives the messages to the template as they are;
    "auto" (the default) keeps them where the template renders them and merges them where it does not.
    The result has input_ids and labels, which SFTTrainer uses as they are (it skips its own tokenization).
    """
    text = template_of(tokenizer, template)
    merge = resolve_system_prompt(tokenizer, system_prompt, text) == "merge"
    if num_proc is None:
        import os

        num_proc = min(os.cpu_count() or 1, 8) if len(dataset) >= 20_000 else None

    def fn(b):
        convs = [merge_system_prompt(c) for c in b["messages"]] if merge else b["messages"]
        return encode(convs, tokenizer, text, assistant_only, render_arguments(b))

    return dataset.map(
        fn,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc="Tokenizing and labelling",
    )


def render_arguments(batch: dict) -> list[dict] | None:
    """Per row of a dataset batch, what else the template is given (as TRL's SFTTrainer does): `tools`
    (a list, or JSON text) and `chat_template_kwargs`. None when the rows have neither."""
    if "tools" not in batch and "chat_template_kwargs" not in batch:
        return None
    n = len(batch["messages"])
    out = []
    for tools, extra in zip(
        batch.get("tools", [None] * n), batch.get("chat_template_kwargs", [None] * n), strict=True
    ):
        tools = json.loads(tools) if isinstance(tools, str) else tools
        out.append({**({"tools": tools} if tools else {}), **(extra or {})})
    return out


def collate(features: list[dict], tokenizer, padding_free: bool = True) -> dict:
    """Batch encoded examples exactly as SFTTrainer does (TRL's own collator)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=padding_free)
    return collator([dict(f) for f in features])
