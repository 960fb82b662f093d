"""Generate the bundled synthetic chat task (deterministic; rerun to reproduce data/synthetic/).

The task is small enough for the tiny model to learn on a 2-core CPU in a couple of minutes,
yet it is not memorisation: the held-out split has lists never seen in training, so exact
match on it measures whether the model learned the skill.

Each conversation gives a list of 2-5 words from four categories (fruit, animal, colour,
place) and asks how many words it has, how many of a category, or whether one is there:

    user:      How many animals are in the list: peach, otter, island, wolf
    assistant: There are 2 animals.

The model must learn which word is of which category and count them. Half of the conversations
have one or two follow-up questions about the same list ("And is there a colour?": the model must
look back over earlier turns) and a third start with a system prompt.

    python data/make_synthetic.py            # writes data/synthetic/{train,eval}.jsonl
"""

from __future__ import annotations

import argparse
import json
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
PLURAL = {"fruit": "fruits", "animal": "animals", "colour": "colours", "place": "places"}
ARTICLE = {"fruit": "a", "animal": "an", "colour": "a", "place": "a"}


def category_of(word: str) -> str:
    return next(c for c, words in CATEGORIES.items() if word in words)


def reply(kind: str, category: str | None, words: list[str]) -> str:
    n = len(words) if category is None else sum(category_of(w) == category for w in words)
    if kind == "count_all":
        return f"There are {n} words."
    if kind == "count":
        if n == 0:
            return f"There are no {PLURAL[category]}."
        return f"There is 1 {category}." if n == 1 else f"There are {n} {PLURAL[category]}."
    art = ARTICLE[category]
    return f"Yes, there is {art} {category}." if n else f"No, there is no {category}."


FIRST = {
    "count_all": ["How many words are in the list: {items}", "Count the words in: {items}"],
    "count": ["How many {plural} are in the list: {items}", "Count the {plural} in: {items}"],
    "exists": ["Is there {art} {c} in the list: {items}", "Does this list have {art} {c}: {items}"],
}
FOLLOW = {"count": "And how many {plural}?", "exists": "And is there {art} {c}?"}


def question(rng: random.Random, kinds: dict) -> tuple[str, str | None]:
    kind = rng.choice(list(kinds))
    return kind, (None if kind == "count_all" else rng.choice(list(CATEGORIES)))


def conversation(rng: random.Random, words: list[str]) -> dict:
    listed = ", ".join(words)
    messages = []
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    kind, cat = question(rng, FIRST)
    fill = {"items": listed, "c": cat, "plural": PLURAL.get(cat, ""), "art": ARTICLE.get(cat, "")}
    messages += [{"role": "user", "content": rng.choice(FIRST[kind]).format(**fill)},
                 {"role": "assistant", "content": reply(kind, cat, words)}]
    for _ in range(rng.choice([0, 0, 1, 2])):  # follow-ups about the same list: look back over earlier turns
        kind, cat = question(rng, FOLLOW)
        fill = {"c": cat, "plural": PLURAL[cat], "art": ARTICLE[cat]}
        messages += [{"role": "user", "content": FOLLOW[kind].format(**fill)},
                     {"role": "assistant", "content": reply(kind, cat, words)}]
    return {"messages": messages}


def generate(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Held-out lists are disjoint from training lists (by the sequence of words)."""
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    lists: list[list[str]] = []
    while len(lists) < n_train + n_eval:
        words = rng.sample([w for ws in CATEGORIES.values() for w in ws], rng.randint(2, 5))
        if tuple(words) not in seen:
            seen.add(tuple(words))
            lists.append(words)
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
