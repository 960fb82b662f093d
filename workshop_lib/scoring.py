"""Scoring: held-out answers before and after training, the step notebooks 03 and 05 and `train` share.

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


def from_run_folder(recipe: Recipe, rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Score the base model and the run's final model, loaded one after the other (after a multi-process
    run, in the notebook's process: the workers are gone, so the GPU may be used here now)."""
    import torch

    from . import export

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = {}
    for when, load in (("before", export.load_base), ("after", export.load_finetuned)):
        model, tokenizer = load(Path(recipe.run_dir))
        scores[when] = exact_match(model.to(device), tokenizer, rows, recipe)
        del model
    return scores


def summary(before: dict | None, after: dict | None) -> dict[str, Any]:
    """The fields result.json keeps: exact match before/after, their n, and 20 examples of each."""
    out: dict[str, Any] = {}
    for when, s in (("before", before), ("after", after)):
        if s:
            out[f"exact_match_{when}"] = s["exact_match"]
            out[f"examples_{when}"] = s["examples"][:20]
            out["exact_match_n"] = s["n"]
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
