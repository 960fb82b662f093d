"""Scoring: held-out answers before and after training, the step notebooks 03, 05, 06 and `train` share.

Two measures: exact match of generated answers (SFT and DPO), and, for preference pairs (DPO), how often
the model gives the chosen answer a higher log-probability than the rejected one, and DPO's implicit reward
margin against the reference model.

Training only trains and evaluates the loss. Exact match needs generation, which a sharded model cannot do
on one rank, so it runs here, on node 0, with whole models: the one in memory (one process) or the base
and final models loaded from the run folder after a multi-process run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .recipe import Recipe


def exact_match(model, tokenizer, rows: list[dict], recipe: Recipe) -> dict[str, Any]:
    """{"exact_match", "n", "examples"} for the first recipe.n_generate held-out conversations."""
    from . import generate

    return generate.exact_match(
        model, tokenizer, rows, n=recipe.n_generate, max_new_tokens=recipe.max_new_tokens
    )


def answer_logps(model, tokenizer, pairs: list[dict], batch_size: int = 16) -> list[tuple[float, float]]:
    """(log p(chosen | prompt), log p(rejected | prompt)) for each pair: summed over the answer's tokens,
    tokenized with the chat template the way DPOTrainer does (the prompt with a generation prompt, then the
    prompt and answer together; the answer starts where the two token lists diverge)."""
    import torch

    def ids(messages: list[dict], gen: bool) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    seqs = []  # (token ids, where the answer starts)
    for p in pairs:
        prompt = ids(p["prompt"], True)
        for side in ("chosen", "rejected"):
            full = ids(p["prompt"] + p[side], False)
            start = next(
                (i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), len(prompt)
            )
            seqs.append((full, start))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i : i + batch_size]
            width = max(len(t) for t, _ in batch)
            input_ids = torch.tensor([t + [pad] * (width - len(t)) for t, _ in batch], device=device)
            mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t, _ in batch], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            token_logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None])[..., 0]
            for row, (t, start) in enumerate(batch):  # token k is predicted at position k - 1
                out.append(token_logps[row, max(start, 1) - 1 : len(t) - 1].sum().item())
    model.train(was_training)
    return list(zip(out[0::2], out[1::2], strict=True))


def preferences(
    model, tokenizer, pairs: list[dict], recipe: Recipe, reference: dict | None = None
) -> dict[str, Any]:
    """Held-out preference scores of the first recipe.n_generate pairs.

    accuracy: the share of pairs where the model gives the chosen answer the higher log-probability;
    logp_margin: the mean of log p(chosen) - log p(rejected). Given the reference model's scores (the model
    before DPO), also DPO's implicit rewards, beta x (log p - log p_ref): reward_accuracy (chosen rewarded
    above rejected) and reward_margin (their mean difference), which DPOTrainer logs as rewards/accuracies
    and rewards/margins. Before training the model is its own reference: both are 0.
    """
    pairs = pairs[: recipe.n_generate]
    logps = answer_logps(model, tokenizer, pairs)
    diffs = [c - r for c, r in logps]
    out: dict[str, Any] = {
        "n": len(pairs),
        "accuracy": sum(d > 0 for d in diffs) / max(len(diffs), 1),
        "logp_margin": sum(diffs) / max(len(diffs), 1),
        "logps": logps,
    }
    beta = float(recipe.trl.get("beta", 0.1))
    ref = reference["logps"] if reference else logps
    rewards = [beta * ((c - rc) - (r - rr)) for (c, r), (rc, rr) in zip(logps, ref, strict=True)]
    out["reward_accuracy"] = sum(x > 0 for x in rewards) / max(len(rewards), 1)
    out["reward_margin"] = sum(rewards) / max(len(rewards), 1)
    return out


def preference_summary(before: dict | None, after: dict | None) -> dict[str, Any]:
    """The preference fields result.json keeps, before and after."""
    out: dict[str, Any] = {}
    for when, s in (("before", before), ("after", after)):
        if s:
            for key in ("accuracy", "logp_margin", "reward_accuracy", "reward_margin"):
                out[f"preference_{key}_{when}"] = s[key]
            out["preference_n"] = s["n"]
    return out


def pairs_as_conversations(pairs: list[dict]) -> list[dict]:
    """Preference pairs as conversations whose reference answer is the chosen one (for exact match)."""
    return [{"messages": p["prompt"] + p["chosen"]} for p in pairs]


def from_run_folder(recipe: Recipe, rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Score the base model and the run's final model, loaded one after the other (after a multi-process
    run, in the notebook's process: the workers are gone, so the GPU may be used here now).

    rows: held-out conversations, or for DPO held-out pairs: then exact match is scored on their prompts
    with the chosen answers as references, and the preference scores are added (preference_before/after).
    """
    import torch

    from . import export

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dpo = recipe.trainer == "dpo"
    conversations = pairs_as_conversations(rows) if dpo else rows
    scores: dict[str, dict[str, Any]] = {}
    for when, load in (("before", export.load_base), ("after", export.load_finetuned)):
        model, tokenizer = load(Path(recipe.run_dir))
        model = model.to(device)
        score = rewards if recipe.trainer == "grpo" else exact_match  # GRPO: its reward functions too
        scores[when] = score(model, tokenizer, conversations, recipe)
        if dpo:
            ref = scores.get("preference_before")
            scores[f"preference_{when}"] = preferences(model, tokenizer, rows, recipe, reference=ref)
        del model
    return scores


def summary(before: dict | None, after: dict | None) -> dict[str, Any]:
    """The fields result.json keeps: exact match before/after, their n, 20 examples of each (GRPO: the mean
    rewards too)."""
    out: dict[str, Any] = {}
    for when, s in (("before", before), ("after", after)):
        if s:
            out[f"exact_match_{when}"] = s["exact_match"]
            out[f"examples_{when}"] = s["examples"][:20]
            out["exact_match_n"] = s["n"]
            if "reward" in s:  # GRPO: the mean of the reward functions' sum, and each one's mean
                out[f"reward_{when}"], out[f"rewards_{when}"] = s["reward"], s["rewards"]
    return out


def table_html(before: dict | None, after: dict, n: int = 8) -> str:
    """A small HTML table: prompt (the whole conversation so far), reference, before, after, hit."""
    import html

    rows = []
    before_answers = [a for _, _, a in before["examples"]] if before else [""] * len(after["examples"])
    for (prompt, ref, a), b in list(zip(after["examples"], before_answers, strict=False))[:n]:
        cells = [prompt, ref, b, a]
        tds = "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in cells)
        rows.append(f"<tr>{tds}<td>{'✅' if a == ref else '❌'}</td></tr>")
    head = "<tr><th>prompt</th><th>reference</th><th>before</th><th>after</th><th></th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def rewards(model, tokenizer, rows: list[dict], recipe: Recipe) -> dict[str, Any]:
    """GRPO's view of held-out conversations: exact match of greedy answers, and the mean of each of the
    recipe's reward functions on them ({"exact_match", "n", "examples", "rewards": {name: mean}, "reward"})."""
    from . import build

    res = exact_match(model, tokenizer, rows, recipe)
    refs = [ref for _, ref, _ in res["examples"]]
    prompts = [r["messages"][:-1] for r in list(rows)[: len(refs)]]  # the conversations exact_match answered
    completions = [[{"role": "assistant", "content": a}] for _, _, a in res["examples"]]
    per = {  # called as TRL calls them: by keyword
        f.__name__: sum(f(prompts=prompts, completions=completions, answer=refs)) / max(len(refs), 1)
        for f in build.reward_funcs(recipe)
    }
    return {**res, "rewards": per, "reward": sum(per.values())}


def sampled(model, tokenizer, rows: list[dict], recipe: Recipe, k: int = 4, n_prompts: int = 3) -> list[dict]:
    """k answers sampled at the recipe's temperature for each of n_prompts held-out conversations, with each
    reward: one GRPO group as the trainer sees it (rows of prompt, answer, reference, reward per function)."""
    from . import build, generate

    temperature = float(recipe.trl.get("temperature") or 1.0)
    chosen = list(rows)[:n_prompts]
    prompts = [r["messages"][:-1] for r in chosen for _ in range(k)]
    refs = [r["messages"][-1]["content"].strip() for r in chosen for _ in range(k)]
    answers = generate.answer(model, tokenizer, prompts, recipe.max_new_tokens, temperature=temperature)
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    scores = {
        f.__name__: f(prompts=prompts, completions=completions, answer=refs)
        for f in build.reward_funcs(recipe)
    }
    return [
        {"prompt": p[-1]["content"], "answer": a, "reference": ref, **{n: s[i] for n, s in scores.items()}}
        for i, (p, a, ref) in enumerate(zip(prompts, answers, refs, strict=True))
    ]
