"""The token view: each token of a conversation and whether it counts in the loss, as training sees it."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .encode import collate, encode
from .templates import IGNORE


@dataclass
class TokenView:
    """Each token of a conversation, its id and whether it counts in the loss (as training sees it)."""

    tokens: list[str]
    ids: list[int]
    trained: list[bool]
    starts: list[int] = field(
        default_factory=lambda: [0]
    )  # where each training sample begins (one per answer
    # for templates that are not prefix-stable; one for the whole conversation otherwise)

    def text(self, width: int = 100) -> str:
        """Terminal/log view: trained tokens inside ⟦ ⟧, plus counts."""
        out, line = [], ""
        for i, (tok, on) in enumerate(zip(self.tokens, self.trained, strict=True)):
            if len(self.starts) > 1 and i in self.starts:
                out += [line] if line else []
                out.append(
                    f"── sample {self.starts.index(i) + 1} of {len(self.starts)} (answer {self.starts.index(i) + 1}) ──"
                )
                line = ""
            piece = tok.replace("\n", "\\n")
            piece = f"⟦{piece}⟧" if on else piece
            if len(line) + len(piece) > width:
                out.append(line)
                line = ""
            line += piece + "│"
        out.append(line)
        n = sum(self.trained)
        out.append(f"{len(self.ids)} tokens, {n} trained (⟦ ⟧), {len(self.ids) - n} context only")
        return "\n".join(out)

    def table(self) -> str:
        """One line per token: position, id, token, trained."""
        rows = [f"{'pos':>4} {'id':>7}  {'loss':4}  token"]
        for i, (tok, tid, on) in enumerate(zip(self.tokens, self.ids, self.trained, strict=True)):
            rows.append(f"{i:>4} {tid:>7}  {'yes' if on else '-':4}  {tok!r}")
        return "\n".join(rows)

    def html(self) -> str:
        """Coloured chips: green = trained (in the loss), grey = context; hover shows the id."""
        chips = []
        for i, (tok, tid, on) in enumerate(zip(self.tokens, self.ids, self.trained, strict=True)):
            if len(self.starts) > 1 and i in self.starts:
                n = self.starts.index(i) + 1
                chips.append(
                    f"<div style='font-family:sans-serif;font-size:12px;margin-top:6px;border-top:1px solid #999'>"
                    f"sample {n} of {len(self.starts)}: the conversation up to answer {n}, as inference renders it</div>"
                )
            bg, fg = ("#c8f0d0", "#0b5d1e") if on else ("#eceff3", "#444")
            label = html.escape(tok).replace("\n", "↵").replace(" ", "·") or "∅"
            chips.append(
                f"<span title='id {tid}{' (trained)' if on else ''}' style='background:{bg};color:{fg};"
                f"border-radius:3px;padding:1px 3px;margin:1px;display:inline-block;font-family:monospace;"
                f"font-size:12px'>{label}</span>"
            )
            if tok.endswith("\n"):
                chips.append("<br>")
        n = sum(self.trained)
        legend = (
            f"<div style='font-family:sans-serif;font-size:12px;margin-top:4px'>{len(self.ids)} tokens: "
            f"<span style='background:#c8f0d0;padding:1px 4px'>{n} trained</span> "
            f"<span style='background:#eceff3;padding:1px 4px'>{len(self.ids) - n} context</span></div>"
        )
        return "<div style='line-height:1.9;max-width:900px'>" + "".join(chips) + legend + "</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def __str__(self) -> str:
        return self.text()


def token_view(
    messages: list[dict], tokenizer, template: str | None = None, padding_free: bool = True
) -> TokenView:
    """Encode one conversation and pass it through the training collator; show what the loss sees.

    Labels in a causal LM are shifted inside the model: the label at position i is the token the
    model must predict there. A token "counts" when its label is not IGNORE after collation. A template
    trained one sample per answer shows each sample in turn.
    """
    enc = encode([messages], tokenizer, template)
    ids, labels, starts = [], [], []
    for x, y in zip(enc["input_ids"], enc["labels"], strict=True):  # several samples: one per answer
        batch = collate([{"input_ids": x, "labels": y}], tokenizer, padding_free)
        starts.append(len(ids))
        ids += batch["input_ids"][0].tolist()
        labels += batch["labels"][0].tolist()
    tokens = [tokenizer.decode([i]) for i in ids]
    return TokenView(tokens, ids, [lab != IGNORE for lab in labels], starts)
