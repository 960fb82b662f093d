"""Check a tokenizer + template for training: the mistakes that fail silently, one small function each.

Every check runs on a sample the template accepts (found by `probe`), and the report lists the
constraints found on the way (no system role, strict alternation, a dropped system prompt, a default
system turn), the end-of-turn token and whether it is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import samples
from .probe import Check, CheckReport, conversation_set, dropped, probe, strip_trailing_specials
from .templates import (
    GENERATION_RE,
    SAMPLE,
    TemplateError,
    check_sample,
    per_answer,
    render_failure,
    template_of,
    try_render,
)


@dataclass
class _Ctx:
    tokenizer: object
    text: str
    sample: list[dict]
    full: str
    markers: bool
    ids: list[int]
    mask: list[int] | None


def check_markers(c: _Ctx) -> Check:
    if c.markers:
        return Check("generation markers", "pass", "{% generation %} marks the answer")
    return Check(
        "generation markers",
        "fail",
        "no {% generation %} ... {% endgeneration %} around the assistant content: the answer tokens cannot be "
        "found, so assistant-only loss is impossible. prepare_tokenizer()/fix_template() add them where safe.",
    )


def check_content_kept(c: _Ctx) -> Check:
    """Every message's content must appear in the rendering (a template can drop text without an error)."""
    for conv, gen in conversation_set():
        out = try_render(c.tokenizer, c.text, conv, gen)
        if isinstance(out, Exception):
            continue
        lost = [i for i in dropped(conv, out) if conv[i]["role"] != "system"]
        if lost:
            m = conv[lost[0]]
            return Check(
                "content kept",
                "fail",
                f"the template renders without error but leaves out message {lost[0]} ({m['role']}: "
                f"{m['content'][:40]!r}) of a conversation with roles {[x['role'] for x in conv]}",
            )
    return Check("content kept", "pass", "every message's text appears in the rendering")


def check_prefix_stable(c: _Ctx) -> Check:
    """Each prefix ending with an answer renders as a prefix of the whole (multi-turn masking and
    generation at inference both rely on it)."""
    for k in range(1, len(c.sample)):
        if c.sample[k - 1]["role"] != "assistant":
            continue
        part = c.tokenizer.apply_chat_template(c.sample[:k], chat_template=c.text, tokenize=False)
        if not c.full.startswith(part):
            at = next((i for i, (a, b) in enumerate(zip(part, c.full, strict=False)) if a != b), len(part))
            if c.full.startswith(strip_trailing_specials(c.tokenizer, part)):
                continue  # a token written only at the very end (Phi-3 closes the conversation with eos)
            return Check(
                "prefix-stable rendering",
                "fail",
                f"the first {k} turns render differently alone than inside the whole conversation (from char "
                f"{at}: {part[at : at + 40]!r} vs {c.full[at : at + 40]!r}): earlier answers are rendered "
                "differently in training than at inference (e.g. a template that strips reasoning from past turns).",
            )
    return Check(
        "prefix-stable rendering", "pass", "every conversation prefix renders as a prefix of the whole"
    )


def check_generation_prompt(c: _Ctx) -> Check:
    """What inference appends (add_generation_prompt=True) must be exactly where the training answer starts."""
    prompt = c.tokenizer.apply_chat_template(
        c.sample[:-1], chat_template=c.text, tokenize=False, add_generation_prompt=True
    )
    answer = c.sample[-1]["content"].strip()
    rest = c.full[len(prompt) :] if c.full.startswith(prompt) else None
    if rest is not None and rest.lstrip().startswith(answer):
        return Check(
            "generation prompt", "pass", f"inference prompt ends with {prompt[-25:]!r}, where answers start"
        )
    if rest is not None and answer in rest:
        extra = rest[: rest.find(answer)]
        if c.mask is not None and _trained_chars(c, len(prompt), len(prompt) + len(extra.rstrip())):
            return Check(
                "generation prompt",
                "pass",
                f"after the inference prompt the model writes {extra!r} itself, and it is trained to (inside the mask)",
            )
        return Check(
            "generation prompt",
            "warn",
            f"at inference the model itself must write {extra!r} before its answer: it learns to only if that text "
            "is inside the generation block",
        )
    at = next((i for i, (a, b) in enumerate(zip(prompt, c.full, strict=False)) if a != b), len(prompt))
    if (
        not prompt[at:].lstrip().startswith(("<", "["))
        and (tag := prompt.rfind("<", max(0, at - 20), at)) >= 0
    ):
        at = tag  # from the tag the prompt opens ('<think>' then '\n' where the answer has '<think></think>')
    opened = prompt[at:]
    if opened.strip() and len(opened) < 40:
        return Check(
            "generation prompt",
            "fail",
            f"the inference prompt ends with {opened!r}, which the template does not write before a rendered answer "
            f"({c.full[at : at + 30]!r}): inference prompts open a block (e.g. reasoning) that training renderings "
            "lack, so no rendering shows the model what to write after the prompt. Use data whose rendered answers "
            "start with it, or a template whose answers start where its inference prompt ends.",
        )
    return Check(
        "generation prompt",
        "fail",
        f"the prompt with add_generation_prompt=True ({prompt[-30:]!r}) is not where the training answer starts "
        f"({c.full[len(prompt) - 30 : len(prompt) + 10]!r}): the model is trained on a different context than it "
        "gets at inference. Fix the template's add_generation_prompt branch.",
    )


def _trained_chars(c: _Ctx, start: int, end: int) -> bool:
    """True if every token overlapping full[start:end] is inside the assistant mask."""
    enc = c.tokenizer(c.full, add_special_tokens=False, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end]
    return bool(hits) and enc["input_ids"] == c.ids and all(c.mask[i] for i in hits)


def check_single_bos(c: _Ctx) -> Check:
    tok, bos = c.tokenizer, c.tokenizer.bos_token_id
    if bos is not None and len(c.ids) > 1 and c.ids[0] == bos and c.ids[1] == bos:
        return Check(
            "single BOS",
            "fail",
            "the rendered text starts with BOS twice: the template writes bos_token and tokenization adds another. "
            "Tokenize rendered chats with add_special_tokens=False.",
        )
    again = tok(c.full, add_special_tokens=True)["input_ids"]
    if bos is not None and len(again) > 1 and again[0] == again[1] == bos:
        return Check(
            "single BOS",
            "warn",
            "apply_chat_template gives one BOS, but tokenizer(rendered_text) would add a second: always tokenize "
            "rendered chats with add_special_tokens=False",
        )
    return Check("single BOS", "pass", "no doubled BOS" if bos in c.ids else "no BOS token in this template")


def check_pad(c: _Ctx) -> Check:
    tok = c.tokenizer
    if tok.pad_token_id is None:
        return Check(
            "pad token",
            "fail",
            "no pad token: batching needs one. chat.ensure_pad_token() sets a distinct, unused one.",
        )
    if tok.pad_token_id == tok.eos_token_id:
        return Check(
            "pad token",
            "warn",
            f"pad == eos ({tok.eos_token!r}). This kit's labels come from the assistant mask, so eos is still trained "
            "here; but a collator that masks pad tokens would never train the end of turn and the model would not "
            "stop. chat.ensure_pad_token() sets a distinct one.",
        )
    return Check("pad token", "pass", f"pad {tok.pad_token!r} is distinct from eos {tok.eos_token!r}")


def check_mask(c: _Ctx) -> Check | None:
    if c.mask is None:
        return None
    if not any(c.mask):
        return Check(
            "assistant mask",
            "fail",
            "the generation block renders nothing for the sample: check that it wraps message['content'] of "
            "assistant turns",
        )
    trained = c.tokenizer.decode([t for t, m in zip(c.ids, c.mask, strict=True) if m])
    answers = [m["content"] for m in c.sample if m["role"] == "assistant"]
    prompts = [m["content"] for m in c.sample if m["role"] != "assistant"]
    missing = [a for a in answers if a.strip() not in trained]
    leaked = [p for p in prompts if p.strip() and p.strip() in trained]
    if missing or leaked:
        return Check(
            "assistant mask", "fail", f"answers outside the mask: {missing}; prompt text inside: {leaked}"
        )
    header = trained_header(c)
    if header:
        return Check(
            "assistant mask",
            "fail",
            f"the generation markers cover the turn header {header!r}, which the inference prompt "
            "(add_generation_prompt=True) already holds: the model would be trained on prompt tokens. The markers "
            "must cover the answer and its end-of-turn token only (fix_template() narrows them).",
        )
    return Check(
        "assistant mask", "pass", f"{sum(c.mask)} of {len(c.mask)} tokens trained, covering every answer"
    )


def trained_header(c: _Ctx) -> str | None:
    """Text of a turn header that the mask trains: tokens lying wholly between the end of the conversation
    before an answer and the end of the inference prompt for it (what add_generation_prompt writes)."""
    enc = c.tokenizer(c.full, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != c.ids:
        return None
    for k, m in enumerate(c.sample):
        if m["role"] != "assistant" or k == 0:
            continue
        before = try_render(c.tokenizer, c.text, c.sample[:k])
        prompt = try_render(c.tokenizer, c.text, c.sample[:k], True)
        if not (isinstance(before, str) and isinstance(prompt, str)):
            continue
        if not (prompt.startswith(before) and c.full.startswith(prompt)):
            continue
        lo, hi = len(before), len(prompt)
        hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= lo and b <= hi and b > a]
        if any(c.mask[i] for i in hits):
            return prompt[lo:hi]
    return None


def end_of_turn_tokens(c: _Ctx) -> list[tuple[int | None, int | None]]:
    """(token index, id) of the special token right after each answer in the rendering ((None, None) where
    none follows). Answers may end with different tokens (gpt-oss: <|end|> mid-conversation, <|return|> last)."""
    enc = c.tokenizer(c.full, add_special_tokens=False, return_offsets_mapping=True)
    specials = set(c.tokenizer.all_special_ids) | set(c.tokenizer.get_added_vocab().values())
    out, cursor = [], 0
    for m in c.sample:
        if m["role"] != "assistant":
            continue
        answer = (m.get("content") or "").strip()
        at = c.full.find(answer, cursor)
        if at < 0:
            out.append((None, None))
            continue
        cursor = end = at + len(answer)
        found = (None, None)
        for i, (tid, (a, b)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            if a >= end and c.full[a:b].strip():
                found = (i, tid) if tid in specials else (None, None)
                break
        out.append(found)
    return out


def check_end_of_turn(c: _Ctx, report: CheckReport) -> Check:
    """Which token closes an answer, and whether it is trained (without it the model never learns to stop)."""
    tok = c.tokenizer
    ends = end_of_turn_tokens(c)
    if not ends or ends[0][1] is None:
        return Check(
            "end of turn trained",
            "warn",
            "no special end-of-turn token closes the answers: generation can only stop at max_new_tokens or on a "
            "stop string",
        )
    names = [tok.convert_ids_to_tokens(tid) if tid is not None else None for _, tid in ends]
    report.end_of_turn = names[0]
    report.end_tokens = list(dict.fromkeys(n for n in names if n))
    which = repr(names[0]) if len(report.end_tokens) == 1 else f"{names[0]!r} (the last answer {names[-1]!r})"
    if c.mask is None:
        return Check(
            "end of turn trained",
            "fail",
            f"{which} closes each answer but is not trained: there are no generation markers",
        )
    # each answer's own end token, on the tokens apply_chat_template gives (the offsets come from one call)
    enc_ids = tok(c.full, add_special_tokens=False)["input_ids"]
    untrained = [
        n or "nothing special"
        for (at, _), n in zip(ends, names, strict=True)
        if at is None or enc_ids != c.ids or not c.mask[at]
    ]
    if not untrained:
        return Check("end of turn trained", "pass", f"each answer ends with {which}, inside the mask")
    return Check(
        "end of turn trained",
        "fail",
        f"{untrained[0]!r} follows an answer outside the generation block (or no end token does): it is never "
        "trained, so the model never learns to stop. Move {% endgeneration %} after it (fix_template() does).",
    )


def check_template(tokenizer, template: str | None = None, sample: list[dict] | None = None) -> CheckReport:
    """Check a tokenizer + template for training; each finding explained. Works on real models' templates."""
    report = CheckReport()
    add = report.checks.append
    try:
        text = template_of(tokenizer, template)
    except TemplateError as e:
        add(Check("has a chat template", "fail", str(e)))
        return report
    found, report.constraints = probe(tokenizer, text)
    sample = check_sample(text, sample or found)
    markers = bool(GENERATION_RE.search(text))
    if sample is None:
        add(check_markers(_Ctx(tokenizer, text, [], "", markers, [], None)))
        err = try_render(tokenizer, text, SAMPLE[1:])
        detail = (
            render_failure(err, SAMPLE[1:])
            if isinstance(err, Exception)
            else "every sample loses some message's text in the rendering"
        )
        add(Check("renders a sample", "fail", detail))
        return report
    report.sample = sample
    try:
        full = tokenizer.apply_chat_template(sample, chat_template=text, tokenize=False)
    except Exception as e:
        add(check_markers(_Ctx(tokenizer, text, sample, "", markers, [], None)))
        add(Check("renders a sample", "fail", render_failure(e, sample)))
        return report
    enc = tokenizer.apply_chat_template(
        sample, chat_template=text, tokenize=True, return_dict=True, return_assistant_tokens_mask=markers
    )
    c = _Ctx(tokenizer, text, sample, full, markers, enc["input_ids"], enc.get("assistant_masks"))
    roles = "/".join(m["role"] for m in sample)
    if per_answer(text):
        return _check_per_answer(c, report, roles)
    for check in (
        check_markers(c),
        Check("renders a sample", "pass", f"checked on a {len(sample)}-message sample ({roles})"),
        check_content_kept(c),
        check_prefix_stable(c),
        check_generation_prompt(c),
        check_single_bos(c),
        check_pad(c),
        check_mask(c),
        check_end_of_turn(c, report),
    ):
        if check is not None:
            add(check)
    return report


def _check_per_answer(c: _Ctx, report: CheckReport, roles: str) -> CheckReport:
    """The checks for a template trained one sample per answer (samples.py): no markers needed; each
    sample trains its answer and end-of-turn token after the inference prompt, and nothing else."""
    problems, ends, summary = samples.verify(c.tokenizer, c.text, c.sample)
    stable = check_prefix_stable(c)
    report.end_tokens = ends
    report.end_of_turn = ends[0] if ends else None
    add = report.checks.append
    add(Check("generation markers", "pass", "not needed: each answer's labels start where its prompt ends"))
    add(Check("renders a sample", "pass", f"checked on a {len(c.sample)}-message sample ({roles})"))
    add(check_content_kept(c))
    if stable.status == "fail":
        stable = Check(
            stable.name,
            "warn",
            stable.detail.split(": earlier answers")[0] + ": so each answer is trained in its own sample, "
            f"rendered as inference renders that turn ({summary} for this conversation)",
        )
    add(stable)
    prompt = check_generation_prompt(c)
    if prompt.status == "warn":  # the labels start where the inference prompt ends: what follows is trained
        prompt = Check(prompt.name, "pass", prompt.detail.split(": it learns")[0] + ", and it is trained to")
    for check in (prompt, check_single_bos(c), check_pad(c)):
        add(check)
    if problems:
        add(Check("assistant mask", "fail", "; ".join(problems)))
    else:
        add(
            Check(
                "assistant mask",
                "pass",
                f"each sample trains its answer and nothing of the prompt ({summary})",
            )
        )
        add(
            Check(
                "end of turn trained",
                "pass",
                f"each sample ends with {' or '.join(map(repr, ends))}, trained",
            )
        )
    return report
