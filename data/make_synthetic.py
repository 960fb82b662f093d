"""Generate the bundled synthetic chat task (deterministic; rerun to reproduce data/synthetic/).

The task is small enough for the tiny model to learn on a 2-core CPU in a couple of minutes,
yet it is not memorisation: the held-out split has lists never seen in training, so exact
match on it measures whether the model learned the operations.

Operations on a list of 3-5 words: reverse it, sort it, name its first or last item, count
it. A third of the conversations are two-turn ("Now reverse it.": the model must use the
previous answer) and a third start with a system prompt.

    python data/make_synthetic.py            # writes data/synthetic/{train,eval}.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano",
    "lemon", "robot", "candle", "forest", "violet", "rocket", "silver", "garden",
]  # fmt: skip

SYSTEM_PROMPTS = [
    "You are a helpful assistant that works with lists of words.",
    "You are a precise assistant. Answer with the result only.",
    "Answer briefly and exactly.",
]

# instruction phrasings per operation; the answer depends only on the operation
ASK = {
    "reverse": ["Reverse the list: {}", "Please reverse this list: {}", "Write these in reverse order: {}"],
    "sort": ["Sort the list alphabetically: {}", "Put these in alphabetical order: {}"],
    "first": ["What is the first item of the list: {}", "Which word comes first in: {}"],
    "last": ["What is the last item of the list: {}", "Which word comes last in: {}"],
    "count": ["How many items are in the list: {}", "Count the words in: {}"],
}
FOLLOW_UP = {"reverse": "Now reverse it.", "sort": "Now sort it."}


def apply(op: str, items: list[str]) -> str:
    if op == "reverse":
        return ", ".join(reversed(items))
    if op == "sort":
        return ", ".join(sorted(items))
    if op == "first":
        return items[0]
    if op == "last":
        return items[-1]
    return str(len(items))


def conversation(rng: random.Random, items: list[str]) -> dict:
    messages = []
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < 1 / 3:  # two turns: the second works on the first answer
        op = rng.choice(["reverse", "sort"])
        answer = apply(op, items)
        follow = "sort" if op == "reverse" else "reverse"
        messages += [
            {"role": "user", "content": rng.choice(ASK[op]).format(", ".join(items))},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": FOLLOW_UP[follow]},
            {"role": "assistant", "content": apply(follow, answer.split(", "))},
        ]
    else:
        op = rng.choice(list(ASK))
        messages += [
            {"role": "user", "content": rng.choice(ASK[op]).format(", ".join(items))},
            {"role": "assistant", "content": apply(op, items)},
        ]
    return {"messages": messages}


def generate(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Held-out lists are disjoint from training lists (by the tuple of words)."""
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    lists: list[list[str]] = []
    while len(lists) < n_train + n_eval:
        items = rng.sample(WORDS, rng.randint(3, 5))
        if tuple(items) not in seen:
            seen.add(tuple(items))
            lists.append(items)
    eval_lists, train_lists = lists[:n_eval], lists[n_eval:]
    return [conversation(rng, x) for x in train_lists], [conversation(rng, x) for x in eval_lists]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "synthetic")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, held_out = generate(args.n_train, args.n_eval, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in [("train", train), ("eval", held_out)]:
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"wrote {len(rows)} conversations to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
