"""Generate answers with the chat template and score them: greedy, batched, stopping at end of turn.

Used by the training notebook (exact match before and after training) and by notebook 05 (side by
side answers, the chat box). Generation stops on the template's end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: the model's generation eos plus the template's end-of-turn token."""
    from . import chat

    ids = []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen if isinstance(gen, list) else [gen] if gen is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    try:
        eot = chat.end_of_turn_token(tokenizer)
        if eot is not None:
            ids.append(tokenizer.convert_tokens_to_ids(eot))
    except chat.TemplateError:
        pass
    return sorted(set(ids))


def answer(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: Callable[[int], object] | None = None,
    temperature: float | None = None,
) -> list[str]:
    """Greedy answers to each conversation (its turns so far, ending with a user turn); sampled ones at
    `temperature` when it is given (GRPO's view: several different answers to one prompt).

    progress: called with the number of conversations answered after each batch (a progress bar's update),
    so that one bar can follow several calls."""
    import torch

    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad on the left to generate
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = end_of_turn_ids(tokenizer, model)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(conversations), batch_size):
            prompts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[i : i + batch_size]
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop,
                    pad_token_id=pad,
                    **(
                        {"do_sample": True, "temperature": temperature}
                        if temperature
                        else {"do_sample": False}
                    ),
                )
            for seq in gen[:, enc["input_ids"].shape[1] :]:
                out.append(tokenizer.decode(seq, skip_special_tokens=True).strip())
            if progress is not None:
                progress(len(prompts))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def prompt_text(messages: Sequence[dict]) -> str:
    """The turns before an answer as readable text, one `role: content` line each (for result tables)."""
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages)


def exact_match(
    model,
    tokenizer,
    rows: Sequence[dict],
    n: int | None = None,
    max_new_tokens: int = 64,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Answer the last user turn of each held-out conversation; score exact match with its reference.

    Returns {"exact_match": fraction, "n": count, "examples": [(prompt, reference, answer), ...]}, where the
    prompt is every turn before the answer (`prompt_text`), not only the last question.
    """
    rows = list(rows)[:n] if n else list(rows)
    prompts = [r["messages"][:-1] for r in rows]
    refs = [r["messages"][-1]["content"].strip() for r in rows]
    answers = answer(model, tokenizer, prompts, max_new_tokens, progress=progress)
    hits = [a == ref for a, ref in zip(answers, refs, strict=True)]
    return {
        "exact_match": sum(hits) / max(len(hits), 1),
        "n": len(hits),
        "examples": [(prompt_text(p), ref, a) for p, ref, a in zip(prompts, refs, answers, strict=True)],
    }
