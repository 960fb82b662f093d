"""Benchmark: tokenize + label conversations, the kit's batched path against a naive per-row loop.

Both produce the same input_ids and labels (checked); the ratio is measured in this one run, so
machine noise cancels. Goal: at least 5x.

    python benchmarks/tokenize_throughput.py [--n 20000] [--model tiny]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault(
    "TOKENIZERS_PARALLELISM", "true"
)  # the fast tokenizer's own threads are part of the speed-up

from datasets import Dataset, disable_progress_bars  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from workshop_lib import chat  # noqa: E402
from workshop_lib.model import REPO_ROOT, resolve_model  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "data"))
from make_synthetic import generate  # noqa: E402


def naive(convs, tok):
    out = []
    for c in convs:
        enc = tok.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        out.append([t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True)])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args()
    disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
    train, _ = generate(args.n, 0, seed=1)
    convs = [r["messages"] for r in train]
    ds = Dataset.from_dict({"messages": convs})

    t = time.perf_counter()
    ref = naive(convs, tok)
    t_naive = time.perf_counter() - t

    t = time.perf_counter()
    fast = chat.tokenize_dataset(ds, tok)
    t_fast = time.perf_counter() - t
    assert fast["labels"] == ref, "batched labels differ from the per-row loop"

    print(f"{args.n} conversations, {os.cpu_count()} cores")
    print(f"naive per-row apply_chat_template: {args.n / t_naive:10.0f} conversations/s ({t_naive:.1f} s)")
    print(f"kit (batched map, num_proc auto):  {args.n / t_fast:10.0f} conversations/s ({t_fast:.1f} s)")
    print(f"ratio: {t_naive / t_fast:.2f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
