"""After training: load a run's fine-tuned model (full weights or LoRA adapter), merge an adapter.

A merged model is a standalone Hugging Face model directory: it loads without peft and gives the
same logits as base + adapter (checked by `max_logit_difference`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .runs import RunError, read_params


def run_recipe(run_dir: str | Path) -> dict:
    """A run's recipe.yaml as written at its start; RunError (one line in a notebook) when it has none."""
    if not (Path(run_dir) / "recipe.yaml").exists():
        raise RunError(
            f"{run_dir}: not a run folder (no recipe.yaml). Give runs/<name>, written by notebook 03."
        )
    return read_params(run_dir)


def is_adapter(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").exists()


def load_finetuned(run_dir: str | Path):
    """(model, tokenizer) of a finished run: final/ holds full weights or a LoRA adapter on the base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = Path(run_dir) / "final"
    if not final.exists():
        raise RunError(
            f"{final}: the run has no final model yet (still training, or stopped early); "
            f"its checkpoints are in {Path(run_dir)}/checkpoint-*"
        )
    tokenizer = AutoTokenizer.from_pretrained(final)
    if is_adapter(final):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(final)
    else:
        model = AutoModelForCausalLM.from_pretrained(final)
    return model.eval(), tokenizer


def load_base(run_dir: str | Path):
    """The run's base model (before fine-tuning), with the fine-tuned tokenizer (same template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(run_recipe(run_dir)["model"]))
    tokenizer = AutoTokenizer.from_pretrained(Path(run_dir) / "final")
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    return base.eval(), tokenizer


def merge_lora(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Merge the run's LoRA adapter into its base and save a standalone model (atomically, never over one)."""
    model, tokenizer = load_finetuned(run_dir)
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"{run_dir}/final holds full weights, not a LoRA adapter: it is standalone already.")
    out = Path(out_dir) if out_dir else Path(run_dir) / "merged"
    if out.exists():
        raise FileExistsError(
            f"{out} exists: remove it or choose another folder (a model is never overwritten)."
        )
    merged = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def max_logit_difference(model_a, model_b, tokenizer, conversations: list[list[dict]]) -> float:
    """Largest absolute difference of the two models' logits on the rendered conversations."""
    import torch

    diff = 0.0
    for conv in conversations:
        ids = tokenizer.apply_chat_template(conv, tokenize=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            a = model_a(**ids).logits.float()
            b = model_b(**ids).logits.float()
        diff = max(diff, (a - b).abs().max().item())
    return diff


def generation_notes(model, tokenizer):
    """What generation will do (where it stops, how long it may run, greedy or sampled), as a small table."""
    import pandas as pd

    from . import generate

    cfg = model.generation_config
    stops = generate.end_of_turn_ids(tokenizer, model)
    rows = {
        "stops on": ", ".join(tokenizer.convert_ids_to_tokens(i) for i in stops),
        "pad token": tokenizer.pad_token,
        "max_new_tokens (model default)": cfg.max_new_tokens,
        "sampling": "yes" if cfg.do_sample else "no (greedy)",
    }
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))
