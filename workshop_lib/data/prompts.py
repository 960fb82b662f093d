"""Prompts with a reference answer, for GRPO: what the model is asked, and what a reward function checks.

From conversations (the bundled task, any SFT data): every assistant turn gives one row, the conversation
before it as the prompt and the turn's text as the answer, so follow-up questions ("And the fruit?") keep the
turns they refer to. TRL's prompt-only form is {"prompt": [...turns]} plus any other column, which TRL hands
to the reward functions by name.
"""

from __future__ import annotations


def to_prompts(conversations: list[dict]) -> list[dict]:
    """{"prompt": turns before an assistant turn, "answer": that turn's text} for every assistant turn."""
    rows = []
    for conv in conversations:
        turns = conv["messages"]
        for i, turn in enumerate(turns):
            if turn["role"] == "assistant" and isinstance(turn.get("content"), str) and i > 0:
                rows.append({"prompt": turns[:i], "answer": turn["content"]})
    return rows
