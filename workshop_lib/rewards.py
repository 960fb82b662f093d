"""Reward functions for GRPO: verifiable checks of a completion, in TRL's reward-function form.

TRL's GRPOTrainer calls each function with the prompts, the sampled completions and every other column of
the dataset row (here `answer`, the reference), and takes one float per completion. Completions of a chat
model arrive as conversations: [{"role": "assistant", "content": "..."}]. Notebook 07 shows these functions
and tries them on sample answers before training; every worker imports them from here.
"""

from __future__ import annotations

import re

ANSWER = re.compile(r"^(The \w+ is \w+|There are \d+ words)\.$")  # the shapes of the bundled task's answers


def _text(completion) -> str:
    """The answer's text, from a conversational completion or a plain string."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")
    return str(completion)


def correct(completions: list, answer: list[str], **_) -> list[float]:
    """1.0 when the answer is exactly the reference (spaces at the ends ignored), else 0.0: the task's truth."""
    return [float(_text(c).strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]


def well_formed(completions: list, **_) -> list[float]:
    """0.2 for an answer in the task's form ("The animal is otter." / "There are 3 words."), right or wrong:
    a small, dense signal that keeps sampled answers in shape while correctness is still rare."""
    return [0.2 * bool(ANSWER.match(_text(c).strip())) for c in completions]


def from_the_list(prompts: list, completions: list, **_) -> list[float]:
    """0.5 for naming a word of the user's list ("The fruit is W." with W in a user turn), right or wrong:
    partial credit. A briefly trained model answers with the category's most frequent word, so every answer of
    a group is wrong alike and the group teaches nothing; picking from the list is the step towards right."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        picked = re.match(r"^The \w+ is (\w+)\.$", _text(completion).strip())
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        asked = " ".join(m.get("content", "") for m in turns if m.get("role") == "user")
        out.append(0.5 * bool(picked and re.search(rf"\b{picked.group(1)}\b", asked)))
    return out


def short(completions: list, max_words: int = 8, **_) -> list[float]:
    """-0.1 per word beyond max_words: a wordy answer is not what the task asks for."""
    return [-0.1 * max(0, len(_text(c).split()) - max_words) for c in completions]


# the names a recipe's `rewards:` key takes
REWARDS = {"correct": correct, "well_formed": well_formed, "from_the_list": from_the_list, "short": short}
