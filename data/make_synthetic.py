"""Generate the bundled synthetic chat task (deterministic; rerun to reproduce data/synthetic/).

The task is small enough for the tiny model to learn on a 2-core CPU in a couple of minutes,
yet it is not memorisation: the held-out split has lists never seen in training, so exact
match on it measures whether the model learned the skill.

Each conversation gives a list of 2-4 words, at most one from each category (fruit, animal,
colour, place), and asks which word is of a category, or how many words there are:

    user:      Which word is the animal: peach, otter, island
    assistant: The animal is otter.

Half of the conversations have one or two follow-up questions about the same list ("And the
fruit?": the model must look back over earlier turns) and a third start with a system prompt.

Preference pairs for DPO (notebook 06) are made from the same conversations: the prompt is a
conversation up to its last question, "chosen" the right answer and "rejected" a plausible wrong one
(a word of the right category that is not in the list, or a count off by one: what a half-trained
model gets wrong). Held-out pairs come from the held-out lists.

    {"prompt": [..., {"role": "user", "content": "And the fruit?"}],
     "chosen": [{"role": "assistant", "content": "The fruit is plum."}],
     "rejected": [{"role": "assistant", "content": "The fruit is wolf."}]}

    python data/make_synthetic.py   # writes data/synthetic/{train,eval}.jsonl and {pairs_train,pairs_eval}.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

CATEGORIES = {
    "fruit": ["apple", "lemon", "cherry", "mango", "peach", "plum"],
    "animal": ["tiger", "horse", "rabbit", "eagle", "otter", "wolf"],
    "colour": ["violet", "silver", "crimson", "yellow", "green", "blue"],
    "place": ["river", "ocean", "forest", "garden", "valley", "island"],
}

SYSTEM_PROMPTS = [
    "You are a helpful assistant that works with lists of words.",
    "You are a precise assistant. Answer with one short sentence.",
    "Answer briefly and exactly.",
]

ASK = [
    "Which word is the {c}: {items}",
    "Find the {c} in this list: {items}",
    "In the list {items}, which one is a {c}?",
]
COUNT = ["How many words are in the list: {items}", "Count the words in: {items}"]


def reply(category: str | None, items: dict[str, str]) -> str:
    # Short sentences that repeat the word as it appears in the list (" otter", after a space), so the
    # answer is a token the model has just seen: learnable by a tiny model in minutes.
    if category is None:
        return f"There are {len(items)} words."
    return f"The {category} is {items[category]}."


def conversation(rng: random.Random, items: dict[str, str]) -> dict:
    """items: category -> word, in list order."""
    listed = ", ".join(items.values())
    messages = []
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    questions: list[str | None] = [*items, None]  # None: the count question
    rng.shuffle(questions)
    first = questions.pop()
    ask = rng.choice(COUNT if first is None else ASK)
    messages += [
        {"role": "user", "content": ask.format(c=first, items=listed)},
        {"role": "assistant", "content": reply(first, items)},
    ]
    for follow in questions[: rng.choice([0, 0, 1, 2])]:  # follow-ups about the same list
        ask = "And how many are there?" if follow is None else f"And the {follow}?"
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": reply(follow, items)}]
    return {"messages": messages}


def draw_lists(rng: random.Random, n: int, unique: bool = True) -> list[dict[str, str]]:
    """n lists of 2-4 words (category -> word, in list order); distinct unless unique=False."""
    seen: set[tuple[str, ...]] = set()
    lists: list[dict[str, str]] = []
    while len(lists) < n:
        cats = rng.sample(list(CATEGORIES), rng.randint(2, 4))
        items = {c: rng.choice(CATEGORIES[c]) for c in cats}
        key = tuple(items.values())
        if key not in seen or not unique:
            seen.add(key)
            lists.append(items)
    return lists


def generate(n_train: int, n_eval: int, seed: int = 0, unique: bool = True) -> tuple[list[dict], list[dict]]:
    """Held-out lists are disjoint from training lists (by the sequence of words).

    unique=False allows repeated lists (for benchmarks larger than the ~36k distinct lists there are).
    """
    train, held_out, _, _ = _generate(n_train, n_eval, seed, unique)
    return train, held_out


def _generate(n_train: int, n_eval: int, seed: int, unique: bool = True) -> tuple[list, list, list, list]:
    """(train conversations, held-out conversations, their lists), in the same order."""
    possible = sum(math.comb(4, k) * 6**k * math.factorial(k) for k in (2, 3, 4))
    if unique and n_train + n_eval > possible:
        raise ValueError(f"only {possible} distinct lists exist: ask for fewer, or pass unique=False")
    rng = random.Random(seed)
    lists = draw_lists(rng, n_train + n_eval, unique)
    eval_lists, train_lists = lists[:n_eval], lists[n_eval:]
    train = [conversation(rng, x) for x in train_lists]
    return train, [conversation(rng, x) for x in eval_lists], train_lists, eval_lists


def generate_pairs(
    n_train: int, n_eval: int, n_pairs_train: int, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Preference pairs from the first n_pairs_train training conversations and every held-out one (their
    own random stream, so the conversation files do not change)."""
    train, held_out, train_lists, eval_lists = _generate(n_train, n_eval, seed)
    pair_rng = random.Random(f"pairs/{seed}")
    return (
        preference_pairs(pair_rng, train[:n_pairs_train], train_lists[:n_pairs_train]),
        preference_pairs(pair_rng, held_out, eval_lists),
    )


def wrong_reply(rng: random.Random, category: str | None, items: dict[str, str]) -> str:
    """The mistakes a half-trained model makes: a word of the right category that is not in the list
    ("The fruit is lemon." when the list has mango), or a count off by one."""
    if category is None:
        n = len(items)
        return f"There are {rng.choice([n - 1, n + 1])} words."
    return f"The {category} is {rng.choice([w for w in CATEGORIES[category] if w != items[category]])}."


def preference_pairs(rng: random.Random, conversations: list[dict], lists: list[dict]) -> list[dict]:
    """One pair per conversation: its last question, the right answer (chosen) and a wrong one (rejected)."""
    pairs = []
    for conv, items in zip(conversations, lists, strict=True):
        *prompt, answer = conv["messages"]
        category = next(c for c in [*items, None] if reply(c, items) == answer["content"])
        wrong = {"role": "assistant", "content": wrong_reply(rng, category, items)}
        pairs.append({"prompt": prompt, "chosen": [answer], "rejected": [wrong]})
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "synthetic")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--n-pairs", type=int, default=1000, help="training preference pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, held_out = generate(args.n_train, args.n_eval, args.seed)
    pairs_train, pairs_eval = generate_pairs(args.n_train, args.n_eval, args.n_pairs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    files = [("train", train), ("eval", held_out), ("pairs_train", pairs_train), ("pairs_eval", pairs_eval)]
    for name, rows in files:
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"wrote {len(rows)} rows to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
