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


@pytest.mark.parametrize("name", ["qwen2_5", "llama3_1", "mistral_instruct", "gemma", "zephyr"])
def test_real_templates_without_markers_are_caught_and_fixed(tok, name):
    tok.chat_template = (REAL / f"{name}.jinja").read_text()
    sample = _sample_for(name)
    before = chat.check_template(tok, sample=sample)
    assert "generation markers" in before.failed()
    rendered = [chat.render(sample, tok), chat.render(sample[:2], tok, add_generation_prompt=False)]
    text, done = chat.fix_template(tok, sample=sample)
    assert done and tok.chat_template == text
    assert chat.check_template(tok, sample=sample).ok
    # the fix changes the mask, never the text the model sees
    assert [chat.render(sample, tok), chat.render(sample[:2], tok)] == rendered
    # and the answers plus their end-of-turn token are what gets trained
    view = chat.token_view(sample, tok)
    trained = tok.decode([i for i, on in zip(view.ids, view.trained, strict=True) if on])
    for m in sample:
        if m["role"] == "assistant":
            assert m["content"] in trained
    assert view.tokens[[i for i, on in enumerate(view.trained) if on][-1]] in (
        "<|im_end|>",
        "<|eot_id|>",
        "<end_of_turn>",
    )


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
    with pytest.raises(chat.TemplateError, match="no automatic fix"):
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


@pytest.mark.parametrize("name", [None, "qwen2_5", "llama3_1", "mistral_instruct", "gemma", "zephyr"])
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
    ids, masks = chat._encode_with_masks(convs, tok, tok.chat_template)
    assert ids == ref["input_ids"] and masks == [list(m) for m in ref["assistant_masks"]]
