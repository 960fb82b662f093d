"""One training sample per answer, for templates that render earlier turns differently from the last.

Qwen3 and gpt-oss drop the reasoning of past turns, Gemma 4 and DeepSeek-R1 change the prompt around the
last answer, Mistral's Tekken templates put the system prompt before the last user message: no single
rendering of a conversation is the one inference sees for every answer. Here each answer is trained in a
sample rendered exactly as inference renders that turn; `cost` says what it costs in tokens.
"""

from __future__ import annotations

from .templates import IGNORE, REASONING_KEYS, TemplateError, needs_reasoning, render_failure, try_render


def has_reasoning(conv: list[dict]) -> bool:
    """True if an assistant turn carries reasoning or tool calls: encode trains such conversations one sample
    per answer, so that what the template writes for them (often only for the last turn, or outside any
    marker: a tool call and its end token, Llama 3.1's <|eom_id|>) is trained as inference renders it."""
    return any(
        m.get("role") == "assistant" and (m.get("tool_calls") or any(m.get(k) for k in REASONING_KEYS))
        for m in conv
    )


def encode_per_answer(
    batch: list[list[dict]], tokenizer, text: str, kw: dict | None = None
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """One sample per answer, each rendered exactly as inference renders that turn: (ids, labels, conversation).

    For templates that render earlier turns differently from the last (Qwen3 and gpt-oss drop past
    reasoning, Mistral Tekken puts the system prompt before the last user message): sample k is the
    conversation up to answer k. Labels cover what the model writes after the inference prompt
    (add_generation_prompt=True): the answer as the template writes it and its end-of-turn token, trailing
    whitespace excluded; earlier answers are context. `conversation` says which conversation each came from.
    """
    fulls, starts, ends, where = [], [], [], []
    for i, conv in enumerate(batch):
        for k, m in enumerate(conv):
            if m.get("role") != "assistant":
                continue
            prompt = try_render(tokenizer, text, conv[:k], True, **(kw or {}))
            full = try_render(tokenizer, text, conv[: k + 1], **(kw or {}))
            for out in (prompt, full):
                if isinstance(out, Exception):
                    raise TemplateError(render_failure(out, conv[: k + 1], i)) from out
            if not full.startswith(prompt):
                if needs_reasoning(text):
                    refuse_missing_reasoning([conv[: k + 1]], i)
                at = next(
                    (j for j, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), len(full)
                )
                raise TemplateError(
                    f"conversation {i}, message {k}: the template writes this answer after a different text than the "
                    f"inference prompt ({prompt[at : at + 40]!r} vs {full[at : at + 40]!r}): it cannot be trained as "
                    "inference renders it"
                )
            refuse_dropped_content([conv[: k + 1]], [full], i)
            fulls.append(full)
            starts.append(len(prompt))
            ends.append(_answer_end(tokenizer, full, prompt))
            where.append(i)
    if len(set(where)) < len(batch):
        missing = next(i for i in range(len(batch)) if i not in where)
        raise TemplateError(f"conversation {missing} has no assistant turn: nothing to train")
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        encs = [(e.ids, e.offsets) for e in backend.encode_batch(fulls, add_special_tokens=False)]
    else:
        encs = []
        for f in fulls:
            e = tokenizer(f, add_special_tokens=False, return_offsets_mapping=True)
            encs.append((e["input_ids"], e["offset_mapping"]))
    ids, labels = [], []
    for start, end, (x, offsets) in zip(starts, ends, encs, strict=True):
        ids.append(list(x))
        labels.append([t if b > start and a < end else IGNORE for t, (a, b) in zip(x, offsets, strict=True)])
    return ids, labels, where


def _answer_end(tokenizer, full: str, prompt: str) -> int:
    """Where the answer's labels end: the end of the rendering, without trailing whitespace and without what
    every rendering ends with (Command R7B's tool-use template always appends the next turn's header)."""
    n = 0
    while n < min(len(full), len(prompt)) and full[-1 - n] == prompt[-1 - n]:
        n += 1
    tail = full[len(full) - n :].lstrip()
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    first = max((t for t in specials if t and tail.startswith(t)), key=len, default=None)
    if n and first:  # the shared ending starts with the answer's own end token: keep that one
        full = full[: len(full) - len(tail) + len(first)]
    return len(full.rstrip())


def refuse_missing_reasoning(batch: list[list[dict]], first: int = 0) -> None:
    """Refuse an answer without reasoning where the template needs one (templates.REASONING)."""
    for i, conv in enumerate(batch, first):
        for k, m in enumerate(conv):
            if m.get("role") == "assistant" and not any(m.get(key) for key in REASONING_KEYS):
                raise TemplateError(
                    f"conversation {i}, message {k}: the answer has no reasoning, but this model's inference prompt "
                    "opens one (it writes its reasoning first, then the answer): give each answer its reasoning "
                    f"({' or '.join(REASONING_KEYS)}); or, where the template has a switch that closes the block "
                    "(enable_thinking), set it off in the row's chat_template_kwargs"
                )


def refuse_dropped_content(batch: list[list[dict]], rendered: list[str], first: int = 0) -> None:
    """Refuse a conversation whose text the template leaves out (the model would train on something else)."""
    for i, (conv, out) in enumerate(zip(batch, rendered, strict=True), first):
        for j, m in enumerate(conv):
            content = m.get("content")
            if isinstance(content, str) and content.strip() and content.strip() not in out:
                hint = (
                    "this template drops system prompts here: tokenize with system_prompt='merge' or 'auto' (the recipe "
                    "default: merges where the template drops them) to merge them into the first user turn"
                    if m.get("role") == "system"
                    else "the template does not render this message: remove it or use a template that does"
                )
                raise TemplateError(
                    f"conversation {i}: the chat template leaves out the content of message {j} "
                    f"(role {m.get('role')!r}, {content[:40]!r}): {hint}"
                )


def cost(batch: list[list[dict]], tokenizer, text: str) -> tuple[int, int, int]:
    """(samples, tokens in the per-answer samples, tokens of one rendering per conversation)."""
    ids, _, _ = encode_per_answer(batch, tokenizer, text)
    whole = 0
    for conv in batch:
        out = try_render(tokenizer, text, conv)
        whole += len(tokenizer(out, add_special_tokens=False)["input_ids"]) if isinstance(out, str) else 0
    return len(ids), sum(len(x) for x in ids), whole


def verify(tokenizer, text: str, sample: list[dict]) -> tuple[list[str], list[str], str]:
    """Check the per-answer samples of one conversation: (problems, end tokens, summary).

    Each sample must train its answer (as the template writes it) and nothing of the prompt, and end
    with a special token (the end of turn, trained).
    """
    try:
        ids, labels, _ = encode_per_answer([sample], tokenizer, text)
    except TemplateError as e:
        return [str(e)], [], ""
    specials = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    answers = [m for m in sample if m["role"] == "assistant"]
    prompts = [m["content"].strip() for m in sample if m["role"] != "assistant" and m.get("content")]
    problems, ends = [], []
    for n, (y, m) in enumerate(zip(labels, answers, strict=True), 1):
        trained = [t for t in y if t != IGNORE]
        said = tokenizer.decode(trained)
        if (m.get("content") or "").strip() not in said:
            problems.append(
                f"sample {n}: the answer {m['content'][:40]!r} is not in its labels ({said[:60]!r})"
            )
        if leaked := [p for p in prompts if p in said]:
            problems.append(f"sample {n}: prompt text is trained: {leaked[0][:40]!r}")
        if not trained or trained[-1] not in specials:
            problems.append(
                f"sample {n}: its labels end without a special end-of-turn token ({said[-30:]!r})"
            )
        else:
            ends.append(tokenizer.convert_ids_to_tokens(trained[-1]))
    trained_n = sum(t != IGNORE for y in labels for t in y)
    summary = f"{len(ids)} samples, {sum(map(len, ids))} tokens, {trained_n} trained"
    return problems, list(dict.fromkeys(ends)), summary
