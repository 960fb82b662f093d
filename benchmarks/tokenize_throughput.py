"""Tokenize + label conversations: the kit's batched path against three references.

  naive  a per-row loop of apply_chat_template(..., return_assistant_tokens_mask=True)
  trl    TRL's own dataset preparation with assistant_only_loss=True (SFTTrainer._prepare_dataset, with
         TRL's default dataset_num_proc): what a user gets without the kit
  kit    chat.tokenize_dataset (batched render + one Rust tokenizer call per batch + numpy masks)
  floor  rendering every conversation plus one batched tokenizer call, no masks: no labelling can be
         cheaper than this

All four must give the same input_ids, and naive, trl and kit the same labels (checked). Every repetition
runs each side once, in rotated order; ratios are taken inside a repetition, reported as median (min-max).

    python benchmarks/tokenize_throughput.py [--n 20000] [--reps 3] [--model tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# the fast tokenizer's own threads are part of every batched side
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import _bench as B  # noqa: E402
from datasets import Dataset, disable_progress_bars  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from workshop_lib import chat  # noqa: E402
from workshop_lib.model import REPO_ROOT, resolve_model  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "data"))
from make_synthetic import generate  # noqa: E402


def naive(convs, tok) -> tuple[list, list]:
    ids, labels = [], []
    for c in convs:
        enc = tok.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids.append(enc["input_ids"])
        labels.append(
            [t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True)]
        )
    return ids, labels


def floor(convs, tok) -> tuple[list, None]:
    texts = tok.apply_chat_template(convs, tokenize=False)
    return tok(texts, add_special_tokens=False)["input_ids"], None


def kit(convs, tok) -> tuple[list, list]:
    ds = chat.tokenize_dataset(Dataset.from_dict({"messages": convs}), tok)
    return ds["input_ids"], ds["labels"]


def trl_preparer(tok, model_dir: str):
    """TRL's preparation as SFTTrainer runs it in its constructor (a trainer built once on two rows)."""
    import tempfile

    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, assistant_only_loss=True, report_to="none", bf16=False
    )
    sample = Dataset.from_dict(
        {"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]] * 2}
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=sample,
        processing_class=tok,
    )

    def prepare(convs, tok) -> tuple[list, list]:
        ds = trainer._prepare_dataset(Dataset.from_dict({"messages": convs}), tok, args, False, None, "train")
        return ds["input_ids"], ds["labels"]

    return prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="synthetic conversations")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args()
    disable_progress_bars()
    model_dir = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train, _ = generate(args.n, 0, seed=1)
    convs = [r["messages"] for r in train]
    fns = {"naive": naive, "trl": trl_preparer(tok, model_dir), "kit": kit, "floor": floor}
    outputs: dict[str, tuple] = {}

    def side(name):
        def run(rep: int) -> dict:
            t = time.perf_counter()
            ids, labels = fns[name](convs, tok)
            s = time.perf_counter() - t
            if rep == 0:
                outputs[name] = (ids, labels)
            return {"s": s, "conv_per_s": len(convs) / s}

        return run

    reps = B.interleave({name: side(name) for name in fns}, args.reps)
    ref_ids, ref_labels = outputs["naive"]
    for name, (ids, labels) in outputs.items():
        assert list(ids) == ref_ids, f"{name}: input_ids differ from the per-row apply_chat_template"
        assert labels is None or list(labels) == ref_labels, f"{name}: labels differ from the per-row loop"
    n_tokens = sum(map(len, ref_ids))
    print(f"\n{B.machine()}")
    print(
        f"{args.n} conversations, {n_tokens:,} tokens; same input_ids on all sides, same labels (floor has none)"
    )
    for name in fns:
        print(f"  {name:<6} {B.fmt_value(B.column(reps, name, 'conv_per_s'), unit=' conversations/s')}")
    print(f"  kit vs naive per-row loop    {B.fmt_ratio(B.ratios(reps, 'naive', 'kit', 's'))} faster")
    print(f"  kit vs TRL's own preparation {B.fmt_ratio(B.ratios(reps, 'trl', 'kit', 's'))} faster")
    print(
        f"  kit time / floor time        {B.fmt_ratio(B.ratios(reps, 'kit', 'floor', 's'))} (1.00x = the floor)"
    )


if __name__ == "__main__":
    main()
