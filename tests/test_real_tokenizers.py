"""Real tokenizers: Mistral's own files (SentencePiece v1/v3/v7, Tekken) from the mistral-common package.

They are converted offline with transformers' own converters (SentencePiece: `SpmConverter`'s builder from
the model proto; Tekken: `convert_tekken_tokenizer`), paired with the family's published template, and the
kit's labels are compared with an independent reference: prompt-prefix tokenization (for each answer, the
tokens of the rendering that follow the tokens of the inference prompt). A tiny random-weight model with
such a real vocabulary trains a few steps on the bundled data, system prompts kept or merged as reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import mistral_common
import pytest

from workshop_lib import chat

DATA = Path(mistral_common.__file__).parent / "data"
TEMPLATES = Path(__file__).parent / "templates"
BUNDLED = Path(__file__).parent.parent / "data" / "synthetic" / "train.jsonl"


@dataclass(frozen=True)
class Real:
    name: str
    file: str  # in mistral_common/data
    template: str  # in tests/templates
    system: str  # what system_prompt: auto does with it: keep | merge
    per_answer: bool  # one sample per answer (the template is not prefix-stable)


REALS = [
    Real("sentencepiece_v1", "tokenizer.model.v1", "mistral_v0_1.jinja", "merge", False),  # rejects system
    Real(
        "sentencepiece_v3", "mistral_instruct_tokenizer_240323.model.v3", "mistral_v0_3.jinja", "merge", False
    ),
    Real(
        "sentencepiece_v7",
        "mistral_instruct_tokenizer_241114.model.v7",
        "mistral_small_3_1.jinja",
        "keep",
        False,
    ),
    # Mistral Nemo writes the system prompt before the user message only when that message is the last one:
    # every rendering that ends with an answer (what training sees) drops it, so auto merges it
    Real("tekken", "tekken_240718.json", "mistral_nemo.jinja", "merge", False),
]


@cache
def _converted(file: str):
    """The tokenizer converted from Mistral's file (cached: Tekken's 131k vocabulary takes ~3 s)."""
    if file.endswith(".json"):
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

        return convert_tekken_tokenizer(str(DATA / file))
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString((DATA / file).read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # v1 has no control tokens for [INST]: the Llama-style (legacy) dummy prefix on every chunk, as HF's copy
    legacy = file.endswith(".v1")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=legacy)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    controls = [p.piece for p in proto.pieces if p.type == 3 and p.piece not in ("<s>", "</s>", "<unk>")]
    tok.add_special_tokens({"additional_special_tokens": controls}, replace_extra_special_tokens=False)
    return tok


def real_tokenizer(real: Real):
    """A fresh copy of the converted tokenizer with the family's published template."""
    import copy

    tok = copy.deepcopy(_converted(real.file))
    tok.chat_template = (TEMPLATES / real.template).read_text()
    return tok


def save_tiny_model(real: Real, folder: Path) -> Path:
    """A random-weight tiny Llama with the real vocabulary and the family's published template, saved as a
    model folder (what a participant's own model looks like to the kit)."""
    tok = real_tokenizer(real)
    tiny_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_llama(tok):
    """A random-weight Llama of a few thousand parameters per layer around the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def conversations() -> list[list[dict]]:
    rows = [json.loads(line)["messages"] for line in BUNDLED.read_text().splitlines()[:24]]
    multi = [chat.SAMPLE, chat.SAMPLE[1:], [chat.SAMPLE[0], *chat.NON_ASCII], chat.NON_ASCII]
    return rows + multi


def reference_answers(tok, text: str, conv: list[dict]) -> list[list[int]]:
    """Each answer's tokens by prompt-prefix tokenization, computed without the kit: tokenize the inference
    prompt (add_generation_prompt=True) and the conversation ending with that answer; the answer is what
    follows the prompt's tokens (trailing whitespace-only tokens excluded: nothing is generated after the
    end-of-turn token)."""
    out = []
    for k, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(
            conv[:k], chat_template=text, tokenize=False, add_generation_prompt=True
        )
        full = tok.apply_chat_template(conv[: k + 1], chat_template=text, tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        f = tok(full, add_special_tokens=False)["input_ids"]
        assert f[: len(p)] == p, "the prompt's tokens are not a prefix of the conversation's"
        answer = f[len(p) :]
        while answer and not tok.decode(answer[-1:]).strip():
            answer.pop()
        out.append(answer)
    return out


@pytest.mark.parametrize("real", REALS, ids=lambda r: r.name)
def test_labels_match_prompt_prefix_reference(real):
    tok = real_tokenizer(real)
    original = tok.chat_template
    report = chat.prepare_tokenizer(tok)
    assert report.ok, str(report)
    assert chat.per_answer(tok.chat_template) == real.per_answer, str(report)
    assert chat.resolve_system_prompt(tok) == real.system
    said = [n for n in report.notes if n.startswith("system prompts (system_prompt: auto)")]
    assert len(said) == 1 and ("merged" if real.system == "merge" else "kept") in said[0]
    assert report.end_of_turn == "</s>", str(report)
    checked = 0
    for conv in conversations():
        conv = chat.merge_system_prompt(conv) if real.system == "merge" else conv
        enc = chat.encode([conv], tok)
        kit = [[t for t in y if t != chat.IGNORE] for y in enc["labels"]]
        reference = reference_answers(tok, original, conv)
        if real.per_answer:  # one sample per answer: each sample trains exactly its answer
            assert kit == reference, (tok.decode(sum(kit, [])), tok.decode(sum(reference, [])))
        else:  # one sample: the trained tokens are the answers, in order
            assert kit == [sum(reference, [])], (tok.decode(kit[0]), tok.decode(sum(reference, [])))
        assert all(a[-1] == tok.eos_token_id for a in reference)
        checked += len(reference)
    assert checked >= 30


def test_tekken_conversion_tokenizes_as_mistral_common():
    """The converted Tekken tokenizer gives the ids of mistral-common's own Tekkenizer (tiktoken-based)."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tok = _converted("tekken_240718.json")
    own = Tekkenizer.from_file(str(DATA / "tekken_240718.json"))
    texts = [m["content"] for conv in conversations() for m in conv]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == own.encode(text, bos=False, eos=False), (
            text
        )


# Tekken's 131k-word output layer makes each CPU step about 3 s: that one runs in the slow tier
@pytest.mark.parametrize(
    "real", [REALS[1], pytest.param(REALS[3], marks=pytest.mark.slow)], ids=lambda r: r.name
)
def test_tiny_model_with_real_vocabulary_trains(real, tmp_path):
    """A random-weight Llama with the real vocabulary trains a few steps on the bundled data, as the kit
    prepares it (system prompts merged into the first user turn: both templates drop them)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = real_tokenizer(real)
    chat.prepare_tokenizer(tok)
    rows = [json.loads(line)["messages"] for line in BUNDLED.read_text().splitlines()[:32]] + [chat.SAMPLE]
    ds = chat.tokenize_dataset(Dataset.from_dict({"messages": rows}), tok)  # system_prompt: auto
    assert len(ds) == len(rows) + (1 if real.per_answer else 0)  # SAMPLE has two answers
    system, user = rows[0][0]["content"], rows[0][1]["content"]
    assert f"[INST]{system}\n\n{user}" in tok.decode(ds[0]["input_ids"]).replace("[INST] ", "[INST]")
    model = tiny_llama(tok)
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=False,
        padding_free=True,
        max_length=None,
        use_cpu=True,
        bf16=False,
        max_steps=3,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert out.global_step == 3 and len(losses) == 3, trainer.state.log_history
    assert losses[-1] < losses[0], losses  # a real vocabulary, random weights: the loss must fall


@pytest.mark.slow
def test_train_command_with_a_real_vocabulary_and_the_bundled_data(tmp_path):
    """The `train` command on a random-weight model with Mistral's real v3 vocabulary and the v0.3 template,
    on the bundled data (a third of it has system prompts, which v0.3 drops): they are merged, as the report
    says once, and the run finishes (before issue 22 it failed after the run folder existed)."""
    real = REALS[1]
    import subprocess
    import sys

    model_dir = save_tiny_model(real, tmp_path / "model")
    cmd = [sys.executable, "-m", "workshop_lib", "train", "recipes/tiny_cpu.yaml", "-p", "run_name", "real"]
    settings = {"model": model_dir, "output_root": tmp_path / "runs", "max_steps": 3, "n_generate": 2}
    settings |= {"per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 3, "eval_strategy": "no"}
    settings |= {"eval_file": None}
    for k, v in settings.items():
        cmd += ["-p", k, str(v)]
    root = Path(__file__).parent.parent
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "finished at step 3/3" in proc.stdout, proc.stdout[-2000:]
    assert "system prompts were merged into the first user turn (system_prompt: auto)" in proc.stdout
    tok = real_tokenizer(real)
    report = chat.prepare_tokenizer(tok)
    said = [n for n in report.notes if "system_prompt: auto" in n]
    assert len(said) == 1 and ("merged" if real.system == "merge" else "kept") in said[0]
