"""Generate the bundled synthetic chat task (deterministic; rerun to reproduce data/synthetic/).

The task is small enough for the tiny model to learn on a 2-core CPU in a couple of minutes,
yet it is not memorisation: the held-out split has lists never seen in training, so exact
match on it measures whether the model learned the operations.

Questions about a list of 3-5 words: its first, second or last item, how many items it has,
which word follows a given one. Answers are one word, so exact match is a clear score. A third
of the conversations have a follow-up question about the same list ("And the last one?": the
model must look back two turns) and a third start with a system prompt.

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

# instruction phrasings per question; the answer depends only on the question and the list
ASK = {
    "first": ["What is the first item of the list: {}", "Which word comes first in: {}"],
    "second": ["What is the second item of the list: {}", "Which word is second in: {}"],
    "last": ["What is the last item of the list: {}", "Which word comes last in: {}"],
    "count": ["How many items are in the list: {}", "Count the words in: {}"],
    "after": ["Which word comes right after {x} in: {}", "In the list {}, what follows {x}?"],
}
# follow-up questions about the same list, asked in a second turn: the model must look back
FOLLOW_UP = {"first": "And the first one?", "second": "And the second one?", "last": "And the last one?",
             "count": "And how many are there?"}


def answer(op: str, items: list[str], x: str | None = None) -> str:
    if op == "first":
        return items[0]
    if op == "second":
        return items[1]
    if op == "last":
        return items[-1]
    if op == "after":
        return items[items.index(x) + 1]
    return str(len(items))


def ask(rng: random.Random, op: str, items: list[str]) -> tuple[str, str]:
    x = rng.choice(items[:-1]) if op == "after" else None
    return rng.choice(ASK[op]).format(", ".join(items), x=x), answer(op, items, x)


def conversation(rng: random.Random, items: list[str]) -> dict:
    messages = []
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    op = rng.choice(list(ASK))
    question, reply = ask(rng, op, items)
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    if rng.random() < 1 / 3:  # two turns: the follow-up refers to the list of the first question
        follow = rng.choice([k for k in FOLLOW_UP if k != op])
        messages += [{"role": "user", "content": FOLLOW_UP[follow]},
                     {"role": "assistant", "content": answer(follow, items)}]
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
