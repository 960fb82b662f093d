"""Chat module: templates, checks and fixes on real template shapes, labels identical to training's."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from workshop_lib import chat

REAL = Path(__file__).parent / "templates"
EXTRA_SPECIALS = [
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
]
NO_SYSTEM = chat.SAMPLE[1:]  # Gemma and Mistral templates refuse a system turn


@pytest.fixture
def tok(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.add_special_tokens({"additional_special_tokens": EXTRA_SPECIALS}, replace_extra_special_tokens=False)
    return t


def _sample_for(name):
    return NO_SYSTEM if name.startswith(("gemma", "mistral")) else chat.SAMPLE


@pytest.mark.parametrize("name", list(chat.TEMPLATE_TOKENS))
def test_bundled_templates_pass_every_check(tiny_model_dir, name):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    notes = chat.apply_template(t, name)
    assert any("end-of-turn" in n for n in notes)
    report = chat.check_template(t)
    assert report.ok and not [c for c in report.checks if c.status == "warn"], str(report)
    if chat.TEMPLATE_TOKENS[name]["specials"] and name != "chatml":
        assert any("resize_token_embeddings" in n for n in notes)


def test_end_of_turn_outside_the_mask_is_caught_and_fixed(tok):
    tok.chat_template = (REAL / "chatml_eot_outside.jinja").read_text()
    report = chat.check_template(tok)
    assert report.failed() == ["end of turn trained"]
    assert "never learns to stop" in str(report)
    chat.fix_template(tok)
    assert chat.check_template(tok).ok


def test_not_prefix_stable_template_is_refused(tok):
    tok.chat_template = (REAL / "not_prefix_stable.jinja").read_text()
    report = chat.check_template(tok)
    assert "prefix-stable rendering" in report.failed()
    with pytest.raises(chat.TemplateError, match="no safe automatic fix.*position"):
        chat.fix_template(tok)


def test_generation_prompt_mismatch_is_caught(tok):
    tok.chat_template = chat.load_template("chatml").replace(
        "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n\\n'"
    )
    report = chat.check_template(tok)
    assert "generation prompt" in report.failed()


def test_doubled_bos_and_pad_equal_eos(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.bos_token = "<|im_start|>"
    t.chat_template = "{{ bos_token }}{{ bos_token }}" + chat.load_template("chatml")
    assert "single BOS" in chat.check_template(t).failed()
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.pad_token = t.eos_token
    report = chat.check_template(t)
    assert report.ok and any(c.name == "pad token" and c.status == "warn" for c in report.checks)
    chat.fix_template(t)
    assert t.pad_token == "<|pad|>" and t.pad_token_id != t.eos_token_id  # the unused reserved pad token


def test_bad_inputs_give_clear_errors(tok, tiny_model_dir):
    with pytest.raises(chat.TemplateError, match="unknown chat template 'chatmll'"):
        chat.load_template("chatmll")
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.chat_template = None
    with pytest.raises(chat.TemplateError, match="has no chat template.*apply_template"):
        chat.encode([chat.SAMPLE], t)
    assert chat.check_template(t).failed() == ["has a chat template"]
    # a conversation the template rejects: named, with the template's own reason
    tok.chat_template = (REAL / "gemma.jinja").read_text()
    chat.fix_template(tok, sample=NO_SYSTEM)
    with pytest.raises(chat.TemplateError, match=r"rejected conversation 1 .*System role not supported"):
        chat.encode([NO_SYSTEM, chat.SAMPLE], tok)
    # a template that raises on everything
    tok.chat_template = "{{ raise_exception('broken template') }}"
    with pytest.raises(chat.TemplateError, match="broken template"):
        chat.render(chat.SAMPLE, tok)
    report = chat.check_template(tok)
    assert "renders a sample" in report.failed()
    # a template without markers cannot be used for training
    tok.chat_template = (REAL / "qwen2_5.jinja").read_text()
    with pytest.raises(chat.TemplateError, match="no \\{% generation %\\} markers"):
        chat.encode([chat.SAMPLE], tok)
    # an unknown template shape has no automatic fix, and says what to do
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(chat.TemplateError, match="by hand"):
        chat.fix_template(tok)


def test_token_view_labels_are_the_labels_training_uses(tiny_model_dir, tmp_path):
    """The view's labels equal those SFTTrainer computes itself (assistant_only_loss) and collates."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    convs = [
        chat.SAMPLE,
        chat.SAMPLE[1:3],
        [{"role": "user", "content": "Mikä päivä?"}, {"role": "assistant", "content": "Maanantai."}],
    ]
    args = SFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        assistant_only_loss=True,
        padding_free=True,
        max_length=None,
        report_to=[],
        per_device_train_batch_size=3,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=Dataset.from_dict({"messages": convs}),
        processing_class=tok,
    )
    trl_rows = list(trainer.train_dataset)
    for conv, row in zip(convs, trl_rows, strict=True):
        view = chat.token_view(conv, tok)
        assert view.ids == row["input_ids"]
        trl_batch = trainer.data_collator([row])
        assert view.trained == [x != -100 for x in trl_batch["labels"][0].tolist()]
    # and the kit's batched encode gives TRL's per-row labels exactly
    enc = chat.encode(convs, tok)
    assert enc["labels"] == [r["labels"] for r in trl_rows]
    text = chat.token_view(chat.SAMPLE, tok).text()
    assert "⟦<|im_end|>⟧" in text and "trained" in text
    assert "trained" in chat.token_view(chat.SAMPLE, tok).html()


def test_tokenize_dataset_matches_encode(tiny_model_dir):
    from datasets import Dataset

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    convs = [chat.SAMPLE, chat.SAMPLE[1:3]] * 10
    ds = chat.tokenize_dataset(Dataset.from_dict({"messages": convs}), tok, num_proc=2, batch_size=7)
    enc = chat.encode(convs, tok)
    assert ds["input_ids"] == enc["input_ids"] and ds["labels"] == enc["labels"]


def test_length_report(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"messages": chat.SAMPLE}, {"messages": chat.SAMPLE[1:3]}] * 5
    rep = chat.length_report(rows, tok)
    long, short = rep.lengths[0], rep.lengths[1]
    assert long > short
    at = rep.at(long)
    assert at["truncated_conversations"] == 0 and at["answer_tokens_lost"] == 0
    cut = rep.at(short)
    assert cut["truncated_conversations"] == 0.5 and 0 < cut["answer_tokens_lost"] < 1
    assert rep.at(5)["no_answer_left"] == 1.0
    assert rep.recommend(keep=1.0, multiple=16) == -(-long // 16) * 16
    assert rep.recommend(limit=32, multiple=64) == 32


@pytest.mark.parametrize("name", [None, "qwen2_5", "llama3_1", "mistral_v0_3", "gemma", "zephyr"])
def test_bulk_encoding_equals_apply_chat_template(tok, name):
    """The kit's bulk path gives transformers' own ids and assistant masks, on real template shapes."""
    import sys

    sys.path.insert(0, str(REAL.parent.parent / "data"))
    from make_synthetic import generate

    rows, _ = generate(300, 0, seed=5)
    convs = [r["messages"] for r in rows]
    if name:
        tok.chat_template = (REAL / f"{name}.jinja").read_text()
        chat.fix_template(tok, sample=_sample_for(name))
        if name.startswith(("gemma", "mistral")):
            convs = [c[1:] if c[0]["role"] == "system" else c for c in convs]
    ref = tok.apply_chat_template(convs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, masks, _ = chat.encode_with_masks(convs, tok, tok.chat_template)
    assert ids == ref["input_ids"] and masks == [list(m) for m in ref["assistant_masks"]]


def test_system_prompt_merge_for_templates_that_reject_or_drop_it(tok):
    from datasets import Dataset

    merged = chat.merge_system_prompt(chat.SAMPLE)
    assert [m["role"] for m in merged] == ["user", "assistant", "user", "assistant"]
    assert merged[0]["content"] == chat.SAMPLE[0]["content"] + "\n\n" + chat.SAMPLE[1]["content"]
    assert chat.SAMPLE[1]["content"] == "Which word is the animal: peach, otter, island"  # not mutated
    with pytest.raises(chat.TemplateError, match="no user turn"):
        chat.merge_system_prompt([chat.SAMPLE[0], chat.SAMPLE[2]])
    ds = Dataset.from_dict({"messages": [chat.SAMPLE, chat.SAMPLE[1:3]]})
    # Mistral v0.3 renders the system prompt only before the last user turn: with "keep" it would be lost
    tok.chat_template = (REAL / "mistral_v0_3.jinja").read_text()
    report = chat.prepare_tokenizer(tok)
    assert (
        sum("system prompts (system_prompt: auto): merged" in n and "drops" in n for n in report.notes) == 1
    )
    with pytest.raises(
        chat.TemplateError, match="leaves out the content of message 0.*system_prompt='merge'"
    ):
        chat.tokenize_dataset(ds, tok, system_prompt="keep")
    for mode in ("merge", "auto"):  # auto (the default) merges here
        out = chat.tokenize_dataset(ds, tok, system_prompt=mode)
        assert chat.SAMPLE[0]["content"] + "\n\n" + chat.SAMPLE[1]["content"] in tok.decode(
            out[0]["input_ids"]
        )
    assert chat.resolve_system_prompt(tok) == "merge"
    # Gemma rejects it outright
    tok.chat_template = (REAL / "gemma.jinja").read_text()
    report = chat.prepare_tokenizer(tok)
    assert any("merged into the first user turn, because the template rejects" in n for n in report.notes)
    with pytest.raises(chat.TemplateError, match="System role not supported"):
        chat.tokenize_dataset(ds, tok, system_prompt="keep")
    assert len(chat.tokenize_dataset(ds, tok)) == 2
    # a template that renders it: auto keeps it as it is
    tok.chat_template = chat.load_template("chatml")
    report = chat.prepare_tokenizer(tok)
    assert any("system prompts (system_prompt: auto): kept" in n for n in report.notes)
    assert chat.resolve_system_prompt(tok) == "keep"
    assert tok.decode(chat.tokenize_dataset(ds, tok)[0]["input_ids"]).startswith("<|im_start|>system\n")
    with pytest.raises(ValueError, match="system_prompt='drop'"):
        chat.tokenize_dataset(ds, tok, system_prompt="drop")


def test_dropped_content_is_detected(tok):
    # renders without an error, but leaves every assistant answer after the first one out
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.index0 < 3 %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    )
    report = chat.check_template(tok)
    assert "content kept" in report.failed() and "leaves out message 4" in str(report)
    with pytest.raises(chat.TemplateError, match="fails content kept"):
        chat.fix_template(tok)


def test_end_of_turn_literal_with_a_newline_is_split(tok):
    """Gemma's answer ends with '<end_of_turn>' + a real newline in one literal: the newline stays untrained."""
    tok.chat_template = (REAL / "gemma.jinja").read_text() + "{#- a copy: not TRL's exact text -#}"
    report = chat.prepare_tokenizer(tok)
    assert any("wrapped each assistant answer" in n for n in report.notes), str(report)
    enc = chat.encode([chat.SAMPLE[1:3]], tok)
    trained = [t for t, lab in zip(enc["input_ids"][0], enc["labels"][0], strict=True) if lab != chat.IGNORE]
    assert tok.decode(trained) == "The animal is otter.<end_of_turn>"


def test_pad_token_is_set_before_candidates_and_says_why(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.pad_token = None
    note = chat.ensure_pad_token(t)
    assert t.pad_token == "<|pad|>" and "unused pad token" in note and "no new embedding" in note
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "the model's own" in chat.ensure_pad_token(t)
    # nothing unused in the vocabulary: a new token, and the resize it needs is said
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.pad_token = t.eos_token
    t.add_special_tokens({"additional_special_tokens": []})
    vocab_pad = "<|pad|>"
    t.chat_template = chat.load_template("chatml").replace("{%- for", "{{- '" + vocab_pad + "' }}{%- for", 1)
    note = chat.ensure_pad_token(t)
    assert t.pad_token not in (t.eos_token, vocab_pad) and "resize" in note


def test_prepare_tokenizer_refuses_without_replacing_silently(tok):
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(chat.TemplateError, match="the assistant answer is written by:\n    line 1"):
        chat.prepare_tokenizer(tok)
    assert tok.chat_template.startswith("{% for m in messages %}")  # left as it was


def test_not_prefix_stable_trains_one_sample_per_answer(tok):
    """Qwen3 renders earlier answers without the thinking block it writes before the last one: each answer
    is trained in its own sample, rendered as inference renders that turn; the report says so with the cost."""
    from datasets import Dataset

    tok.chat_template = (REAL / "qwen3.jinja").read_text()
    report = chat.prepare_tokenizer(tok)
    assert chat.per_answer(tok.chat_template) and report.ok, str(report)
    cost = next(n for n in report.notes if "each answer is trained in its own sample" in n)
    assert "last_query_index" in cost and "2 samples" in cost and "template: trl" in cost
    enc = chat.encode([chat.SAMPLE], tok)
    assert len(enc["input_ids"]) == 2
    for k, (ids, labels) in enumerate(zip(enc["input_ids"], enc["labels"], strict=True)):
        prompt = chat.render(chat.SAMPLE[: 2 * k + 2], tok, add_generation_prompt=True)  # up to user turn k
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids[: len(p)] == p and all(t == chat.IGNORE for t in labels[: len(p)])
        trained = tok.decode([t for t in labels if t != chat.IGNORE])
        assert trained == "<think>\n\n</think>\n\n" + chat.SAMPLE[2 * k + 2]["content"] + "<|im_end|>"
    view = chat.token_view(chat.SAMPLE, tok)
    assert view.starts == [0, len(enc["input_ids"][0])] and "sample 2 of 2" in view.text()
    assert "sample 2 of 2" in view.html()
    rows = [{"messages": chat.SAMPLE}, {"messages": chat.SAMPLE[:3]}]
    lengths = chat.length_report(rows, tok)
    assert len(lengths.lengths) == 3 and "3 samples from 2 conversations" in str(lengths)
    assert len(chat.tokenize_dataset(Dataset.from_list(rows), tok)) == 3
    # TRL's training template instead: one sample per conversation
    tok.chat_template = (REAL / "qwen3.jinja").read_text()
    report = chat.prepare_tokenizer(tok, template="trl")
    assert not chat.per_answer(tok.chat_template) and any("template: trl" in n for n in report.notes)
    assert len(chat.encode([chat.SAMPLE], tok)["input_ids"]) == 1
    tok.chat_template = chat.load_template("zephyr")
    with pytest.raises(chat.TemplateError, match="TRL has none"):
        chat.prepare_tokenizer(tok, template="trl")


def test_reasoning_is_trained_as_the_template_renders_it(tok):
    """A reasoning field is rendered (or not) as the template does at inference: Qwen3 writes the last answer's
    reasoning_content in its thinking block and drops earlier ones, so answer 1's reasoning is trained in
    its own sample and is not in answer 2's context. A template that ignores the field trains the answers."""
    think = [dict(m) for m in chat.SAMPLE]
    think[2]["reasoning_content"], think[4]["reasoning_content"] = "otter swims.", "peach is sweet."
    tok.chat_template = (REAL / "qwen3.jinja").read_text()
    chat.prepare_tokenizer(tok)
    enc = chat.encode([think], tok)
    trained = [tok.decode([t for t in y if t != chat.IGNORE]) for y in enc["labels"]]
    assert trained == [
        "<think>\notter swims.\n</think>\n\nThe animal is otter.<|im_end|>",
        "<think>\npeach is sweet.\n</think>\n\nThe fruit is peach.<|im_end|>",
    ]
    assert "otter swims." not in tok.decode(enc["input_ids"][1])
    # a prefix-stable template with markers: conversations with reasoning fields go one sample per answer too
    chat.apply_template(tok, "chatml")
    chat.prepare_tokenizer(tok)
    enc = chat.encode([think, chat.SAMPLE], tok)
    assert len(enc["input_ids"]) == 3  # 2 samples for the conversation with reasoning, then 1
    runs = [tok.decode([t for t in y if t != chat.IGNORE]) for y in enc["labels"]]
    assert runs[:2] == ["The animal is otter.<|im_end|>", "The fruit is peach.<|im_end|>"]
    assert enc["input_ids"][2] == chat.encode([chat.SAMPLE], tok)["input_ids"][0]


def test_content_the_template_transforms_is_labelled_as_written(tok):
    """A template that writes `content.strip()` (Command R7B's family, SmolLM3's `lstrip`): the labels are the
    text the template writes, not the message as given."""
    tok.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content.strip() + '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    report = chat.prepare_tokenizer(tok)
    assert any("wrapped each assistant answer" in n for n in report.notes), str(report)
    conv = [
        {"role": "user", "content": "  Which is the animal?\n"},
        {"role": "assistant", "content": "\n The otter.  "},
    ]
    enc = chat.encode([conv], tok)
    assert tok.decode([t for t in enc["labels"][0] if t != chat.IGNORE]) == "The otter.<|im_end|>"
