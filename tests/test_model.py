"""The offline tiny chat model: deterministic, reloads like any HF model, template masks exactly the answers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workshop_lib import model as M

CONV = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which word is the animal: peach, otter, island"},
    {"role": "assistant", "content": "The animal is otter."},
    {"role": "user", "content": "Mikä on järvi?"},
    {"role": "assistant", "content": "Järvi on lake."},
]


def test_tiny_model_reloads_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert tok.pad_token_id != tok.eos_token_id and tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert (tiny_model_dir / "chat_template.jinja").exists()
    ids = tok.apply_chat_template(CONV[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # byte-level BPE round-trips non-ASCII text
    assert tok.decode(tok("Hyvää yötä, järvi ja sisu")["input_ids"]) == "Hyvää yötä, järvi ja sisu"


def test_tiny_model_is_deterministic(tmp_path):
    a = M.build_tiny_model(tmp_path / "a")
    b = M.build_tiny_model(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "tokenizer.json").read_text()) == json.loads((b / "tokenizer.json").read_text())
    # a built model is reused, not rebuilt
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    M.build_tiny_model(tmp_path / "a")
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime


def test_assistant_mask_covers_exactly_answers_and_end_of_turn(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tok.apply_chat_template(CONV, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = [i for i, k in zip(ids, mask, strict=True) if k]
    expected = []
    for m in CONV:
        if m["role"] == "assistant":
            expected += tok(m["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert masked == expected
    # the end-of-turn token closing each answer is trained; no other special token is
    eos_positions = [i for i, t in enumerate(ids) if t == tok.eos_token_id]
    assert [mask[i] for i in eos_positions] == [0, 0, 1, 0, 1]


def test_resolve_model_accepts_tiny_paths_and_hub_ids(tiny_model_dir, tmp_path):
    assert M.resolve_model("tiny") == str(tiny_model_dir)
    assert M.resolve_model(tiny_model_dir) == str(tiny_model_dir)
    assert M.resolve_model("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        M.resolve_model(tmp_path)


def test_model_has_expected_size(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 < n < 3_000_000
    assert torch.isfinite(next(model.parameters())).all()
