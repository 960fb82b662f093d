"""Token lengths of a dataset under a template, and what a max length would cut."""

from __future__ import annotations

from dataclasses import dataclass

from .encode import encode, tokenize_dataset
from .templates import IGNORE


@dataclass
class LengthReport:
    """Token lengths of a dataset under a template, and what a max length would cut."""

    lengths: list[int]  # one per training sample
    answer_positions: list[list[int]]  # positions of trained tokens per sample
    conversations: int | None = None  # how many conversations gave the samples (None: not known)

    def __str__(self) -> str:
        n, tokens = len(self.lengths), sum(self.lengths)
        if self.conversations is None or self.conversations == n:
            return f"{n} samples (one per conversation), {tokens} tokens"
        return (
            f"{n} samples from {self.conversations} conversations (one per answer: the template renders earlier "
            f"turns differently, so each answer is trained as inference renders it), {tokens} tokens"
        )

    def at(self, max_length: int) -> dict[str, float]:
        n_trained = sum(len(p) for p in self.answer_positions)
        lost = sum(sum(1 for i in p if i >= max_length) for p in self.answer_positions)
        truncated = sum(n > max_length for n in self.lengths)
        return {
            "max_length": max_length,
            "truncated_conversations": truncated / max(len(self.lengths), 1),
            "answer_tokens_lost": lost / max(n_trained, 1),
            "no_answer_left": sum(bool(p) and min(p) >= max_length for p in self.answer_positions)
            / max(len(self.lengths), 1),
        }

    def recommend(self, keep: float = 0.99, multiple: int = 64, limit: int | None = None) -> int:
        """Smallest multiple of `multiple` keeping `keep` of the conversations whole (capped at `limit`)."""
        ordered = sorted(self.lengths)
        need = ordered[min(int(keep * len(ordered)), len(ordered) - 1)] if ordered else multiple
        value = -(-need // multiple) * multiple
        return min(value, limit) if limit else value


def length_report(dataset_or_rows, tokenizer, template: str | None = None) -> LengthReport:
    """Lengths from the same encode() training uses, on a Dataset (messages column) or a list of rows. With a
    template trained one sample per answer, each sample is one length (str() says how many per conversation)."""
    rows, conversations = dataset_or_rows, None
    if hasattr(rows, "column_names") and "input_ids" not in rows.column_names:
        conversations = len(rows)
        rows = tokenize_dataset(rows, tokenizer, template)
        ids, labels = rows["input_ids"], rows["labels"]
    elif hasattr(rows, "column_names"):
        ids, labels = rows["input_ids"], rows["labels"]
    else:
        conversations = len(rows)
        enc = encode([r["messages"] for r in rows], tokenizer, template)
        ids, labels = enc["input_ids"], enc["labels"]
    return LengthReport(
        [len(x) for x in ids],
        [[i for i, t in enumerate(lab) if t != IGNORE] for lab in labels],
        conversations,
    )
