"""Make a model's own template training-ready, safely, or refuse and say why.

Order matters: the pad token is set first (the checks of each candidate depend on it); then the
candidates are tried: TRL's training template for the family (trl.chat_template_utils), else the kit's
rewrite. A candidate is kept only if it renders every test conversation the original accepts exactly
as the original does, rejects what the original rejects, and passes every check (one exception: TRL's
template where it only adds the stop token after the last answer, GLM). The model's template is never
replaced by the kit's own. Where the inference prompt opens the reasoning, answers carry theirs.
"""

from __future__ import annotations

import re

from . import samples
from .checks import check_template
from .encode import system_prompt_lost
from .probe import TOOL_CALL, CheckReport, conversation_set, probe, written_before_answer
from .rewrite import (
    add_generation_markers,
    answer_lines,
    narrow_generation_markers,
    position_dependent_lines,
    strip_generation_markers,
)
from .templates import (
    GENERATION_RE,
    PER_ANSWER,
    REASONING,
    SAMPLE,
    TemplateError,
    apply_template,
    needs_reasoning,
    per_answer,
    template_of,
    try_render,
)
from .trl_templates import appended_end, trl_candidate, trl_file, use_trl_template

# Checks a marker fix cannot repair: the template itself must change (by hand), or the data.
BLOCKING = (
    "has a chat template",
    "renders a sample",
    "content kept",
    "prefix-stable rendering",
    "generation prompt",
)
MARKER_CHECKS = ("generation markers", "assistant mask", "end of turn trained")
# End-of-turn literals seen in published templates (the rewrite also uses the tokenizer's own specials).
EOT_LITERALS = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>", "<|eom_id|>"]
_RESERVED_RE = re.compile(r"^<\|?(reserved_special_token_\d+|reserved_\d+|dummy_\d+|placeholder\d+)\|?>$")


def ensure_pad_token(tokenizer, template: str | None = None) -> str:
    """Give the tokenizer a pad token distinct from eos and say which one, and why it is safe.

    Safe means: not eos/bos, not written by the chat template, not the end-of-turn token. Padding only
    fills positions that the attention mask and the labels ignore, so any such token works; an unused
    token already in the vocabulary needs no new embedding row. Preference: a token named pad, a
    reserved/unused token, unk; else a new <|pad|> (the model's embeddings must then be resized).
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return f"pad token {tokenizer.pad_token!r}: the model's own, distinct from eos {eos!r}"
    was = "none" if tokenizer.pad_token is None else f"{tokenizer.pad_token!r} (= eos)"
    used = {eos, tokenizer.bos_token}
    try:
        text = template_of(tokenizer, template)
        for conv in (SAMPLE, SAMPLE[1:]):
            out = try_render(tokenizer, text, conv, True)
            if isinstance(out, str):
                ids = tokenizer(out, add_special_tokens=False)["input_ids"]
                used |= set(tokenizer.convert_ids_to_tokens(ids))
    except TemplateError:
        pass
    vocab = tokenizer.get_vocab()
    free = [t for t in vocab if t not in used]
    named = sorted((t for t in free if "pad" in t.lower() and t[:1] in "<["), key=lambda t: (len(t), t))
    reserved = sorted((t for t in free if _RESERVED_RE.match(t)), key=lambda t: (len(t), t))
    unk = [tokenizer.unk_token] if tokenizer.unk_token in free else []
    for pool, why in (
        (named, "an unused pad token of the vocabulary"),
        (reserved, "a reserved, unused token of the vocabulary"),
        (unk, "the unknown token, which byte-level tokenizers never produce from text"),
    ):
        if pool:
            tokenizer.pad_token = pool[0]
            return (
                f"pad token was {was}: set to {pool[0]!r}, {why}; it is not eos, not written by the template and "
                "only fills positions the attention mask and labels ignore (no new embedding needed)"
            )
    new = next(n for n in ("<|pad|>", *(f"<|pad_{i}|>" for i in range(100))) if n not in vocab)
    tokenizer.add_special_tokens({"pad_token": new})
    return (
        f"pad token was {was}: added a new {new!r} (the vocabulary has no unused token): resize the model's "
        f"embeddings (model.resize_token_embeddings({len(tokenizer)}))"
    )


def same_rendering(tokenizer, original: str, candidate: str) -> str | None:
    """None if `candidate` renders every test conversation the original accepts identically and rejects
    what the original rejects; else where it differs."""
    for conv, gen in [
        *conversation_set(),
        (TOOL_CALL, False),
    ]:  # tool calls too, for templates that take them
        a = try_render(tokenizer, original, conv, gen)
        b = try_render(tokenizer, candidate, conv, gen)
        roles = [m["role"] for m in conv]
        if isinstance(a, Exception):
            if not isinstance(b, Exception):
                return f"it accepts roles {roles}, which the original rejects ({a})"
            continue
        if isinstance(b, Exception):
            return f"it rejects roles {roles}, which the original accepts ({b})"
        if a != b:
            at = next((i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), min(len(a), len(b)))
            return f"roles {roles}, char {at}: {a[at : at + 40]!r} vs {b[at : at + 40]!r}"
    return None


def _refusal(text: str, report: CheckReport, why: str, todo: str = "") -> TemplateError:
    failed = set(report.failed())
    if todo:
        part = ""
    elif "prefix-stable rendering" in failed:
        where = position_dependent_lines(text)
        part = "the parts that depend on a message's position:\n    " + "\n    ".join(where) if where else ""
        todo = (
            "train on single-exchange conversations, or give a template that renders earlier turns as at "
            "inference (template: <path.jinja> in the recipe)"
        )
    elif failed & set(BLOCKING):
        part, todo = "", "fix the template (or the data) as the failed checks say"
    else:
        lines = answer_lines(text)
        part = "the assistant answer is written by:\n    " + "\n    ".join(lines) if lines else ""
        todo = (
            "add {% generation %} ... {% endgeneration %} around the assistant content and its end-of-turn "
            "token by hand and pass it as template: <path.jinja>"
        )
    return TemplateError(
        f"no safe automatic fix for this chat template: {why}. {part}\nWhat to do: {todo}.\n{report}"
    )


def fix_template(
    tokenizer, template: str | None = None, sample: list[dict] | None = None
) -> tuple[str, list[str]]:
    """Make the template training-ready where that is safe; apply it to the tokenizer and return (text, notes).

    Raises TemplateError naming the part of the template that blocks a fix, and what to do.
    """
    text = template_of(tokenizer, template)
    notes = [ensure_pad_token(tokenizer, text)]
    report = check_template(tokenizer, text, sample)
    blocking = [n for n in report.failed() if n in BLOCKING]
    if "generation prompt" in blocking and not needs_reasoning(text):
        # the inference prompt opens a block the model writes first (reasoning: '<think>\n'): trainable if the
        # template writes an answer's reasoning there, and every answer in the data then carries one
        reasoned = REASONING + text
        if "generation prompt" not in check_template(tokenizer, reasoned, sample).failed():
            out, more = fix_template(tokenizer, reasoned, sample)
            said = (
                "the inference prompt opens the answer's reasoning, and the template writes an answer's reasoning "
                "(reasoning_content) right there: every answer in the data must carry its reasoning (a conversation "
                "with an answer without one is refused when tokenized)"
            )
            return out, [*notes, said, *more[1:]]
    if blocking == ["prefix-stable rendering"] and not per_answer(text):
        return _per_answer(tokenizer, text, report, sample, notes)
    if blocking:
        why, todo = "it fails " + ", ".join(blocking), ""
        if "generation prompt" in blocking and not needs_reasoning(text):
            why += (
                ". Its inference prompt opens a block the model writes first (reasoning), and it renders no answer "
                "that starts there, not even one that carries its reasoning (reasoning_content): no training data "
                "can show the model what it writes after its prompt"
            )
        if blocking == ["generation prompt"] and not needs_reasoning(text):
            todo = (
                "give a template that writes the last answer's reasoning where its inference prompt opens it "
                "(template: <path.jinja> in the recipe), or train a model whose prompt opens no such block"
            )
        trl = trl_candidate(tokenizer, text)
        path = trl_file(trl) if trl and check_template(tokenizer, trl, sample).ok else None
        if path:
            why += (
                f". TRL has a training template for this family ({path}), but it renders conversations "
                "differently from the model's own (so the kit does not pick it silently): to train with it, set "
                "template: trl"
            )
        raise _refusal(text, report, why, todo)
    if set(report.failed()) & set(MARKER_CHECKS):
        candidates = []
        trl = trl_candidate(tokenizer, text)
        if trl is not None:
            candidates.append(
                (trl, "replaced by TRL's training template for this family (identical text, answers marked)")
            )
        specials = [
            t for t in tokenizer.all_special_tokens if t not in (tokenizer.pad_token, tokenizer.bos_token)
        ]
        specials += [t for t in tokenizer.get_added_vocab() if t not in specials and t != tokenizer.pad_token]
        lead = written_before_answer(tokenizer, text, report.sample) if report.sample else ""
        eots = specials + EOT_LITERALS
        if GENERATION_RE.search(text) and (narrowed := narrow_generation_markers(text, eots, lead)):
            candidates.append(
                (
                    narrowed,
                    "narrowed the template's own {% generation %} markers to each answer and its end-of-turn token",
                )
            )
        base = strip_generation_markers(text) if GENERATION_RE.search(text) else text
        kit = add_generation_markers(base, eots, lead=lead) or add_generation_markers(base, eots)
        if kit is not None:
            candidates.append(
                (kit, "wrapped each assistant answer and its end-of-turn token in {% generation %} markers")
            )
        tried = []
        for candidate, how in candidates:
            differs = same_rendering(tokenizer, text, candidate)
            after = None if differs else check_template(tokenizer, candidate, sample)
            if differs or not after.ok:
                tried.append(
                    f"{how.split(' (')[0]}: " + (differs or "still fails " + ", ".join(after.failed()))
                )
                continue
            text = candidate
            notes.append(
                f"{how}; every test conversation renders exactly as before and what it rejected is still rejected"
            )
            break
        else:
            why = (
                "; ".join(tried)
                if tried
                else "the answer is not written as `prefix + message content + end_of_turn`"
            )
            # no markers can be placed safely: the labels can still come from the inference prompts
            try:
                return _per_answer(tokenizer, text, report, sample, notes, f"no marker fix ({why[:160]})")
            except TemplateError as e:
                why += f"; one sample per answer does not work either: {e.args[1]}"
                trl_ok = trl is not None and check_template(tokenizer, trl, sample).ok
                if trl_ok and (end := appended_end(tokenizer, text, trl)):
                    tokenizer.chat_template = trl
                    notes.append(
                        f"the model's own template ends an answer with no token of its own (generation stops on the "
                        f"next turn's {end.strip()!r}): replaced by TRL's training template for this family "
                        f"({trl_file(trl)}), which renders every test conversation as the model's own and writes "
                        f"{end!r} after the last answer too, so each answer is trained to end on it"
                    )
                    return trl, notes
                if trl_ok:
                    why += (
                        f". TRL's training template for this family ({trl_file(trl)}) passes every check but renders "
                        "conversations differently from the model's own: to train with it, set template: trl"
                    )
                raise _refusal(text, report, why) from None
    tokenizer.chat_template = text
    after = check_template(tokenizer, text, sample)
    if not after.ok:
        raise _refusal(text, after, "the fixed template still fails " + ", ".join(after.failed()))
    return text, notes


def _per_answer(
    tokenizer, text: str, report: CheckReport, sample, notes: list[str], why: str = ""
) -> tuple[str, list[str]]:
    """Train each answer in its own sample (samples.py), if every check passes that way; else refuse.

    For templates that are not prefix-stable, and for those where no marker can be placed safely: the
    labels come from the inference prompt, so no markers are needed."""
    candidate = PER_ANSWER + text
    after = check_template(tokenizer, candidate, sample)
    if not after.ok:
        failed = "; ".join(c.detail for c in after.checks if c.status == "fail")[:400]
        error = _refusal(
            text, after, (why or "it is not prefix-stable") + f"; one sample per answer fails too: {failed}"
        )
        error.args = (*error.args, failed)
        raise error
    n, tokens, whole = samples.cost([report.sample], tokenizer, candidate)
    where = position_dependent_lines(text)
    trl = trl_file(trl_candidate(tokenizer, text))
    if not why:
        why = "not prefix-stable (earlier turns render differently" + (f": {where[0]}" if where else "") + ")"
    notes.append(
        why
        + ": each answer is trained in its own sample, rendered exactly as inference renders that turn (the "
        "conversation up to that answer; labels on the answer and its end-of-turn token; earlier answers are "
        f"context only). Token cost on the checked conversation: {n} samples, {tokens} tokens instead of {whole} "
        f"({tokens / max(whole, 1):.2f}x)"
        + (
            f". For one sample per conversation with TRL's training template ({trl}) instead: template: trl"
            if trl
            else ""
        )
    )
    tokenizer.chat_template = candidate
    return candidate, notes


def prepare_tokenizer(tokenizer, template: str | None = None, system_prompt: str = "auto") -> CheckReport:
    """Get a tokenizer ready for training; return the report of what was found and done (system_prompt: the
    recipe's mode, which the report's system-prompt line states).

    `template` (a bundled name, a .jinja path or template text) replaces the model's template when given;
    "trl" takes TRL's training template for the model's family; otherwise the model's own is used. Sets a distinct pad token, checks the template, and makes it
    training-ready where safe (see fix_template). Raises TemplateError when it cannot.
    """
    if template == "trl":
        notes = use_trl_template(tokenizer)
    else:
        notes = apply_template(tokenizer, template) if template is not None else []
    text = template_of(tokenizer)
    before = check_template(tokenizer, text)
    if before.failed():
        notes.append("the template as given failed: " + ", ".join(before.failed()))
    if before.end_of_turn:
        trained = "yes" if before.ok else "no" if "end of turn trained" in before.failed() else "yes"
        notes.append(f"end-of-turn token {before.end_of_turn!r}, trained before any fix: {trained}")
    _, done = fix_template(tokenizer, text)
    report = check_template(tokenizer)
    done.append(_system_prompt_note(system_prompt, system_prompt_lost(tokenizer, tokenizer.chat_template)))
    report.notes = notes + done
    if not report.constraints:
        _, report.constraints = probe(tokenizer, tokenizer.chat_template)
    return report


def _system_prompt_note(mode: str, lost: str | None) -> str:
    """What training does with system prompts: auto's choice and why, or what the recipe asked for."""
    if mode == "auto":
        if lost:
            return f"system prompts (system_prompt: auto): merged into the first user turn, because the template {lost} them"
        return "system prompts (system_prompt: auto): kept, the template renders them"
    said = f"system prompts (system_prompt: {mode}, from the recipe): "
    said += "merged into the first user turn" if mode == "merge" else "kept"
    if mode == "keep" and lost:
        said += f", but the template {lost} them: conversations with one are refused (auto or merge fixes it)"
    return said
