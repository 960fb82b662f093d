"""The planner against real tensors (CPU) and the known 34B case; the doctor's checks; bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from workshop_lib import plan
from workshop_lib.model import REPO_ROOT

# Poro-34B's published config (a BLOOM architecture), as test data: no download needed
PORO_34B = {"model_type": "bloom", "hidden_size": 7168, "n_layer": 54, "n_head": 56, "vocab_size": 128000}
LLAMA_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


def measured_bytes(model, optimizer):
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    states = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return weights, grads, states


def one_step(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("which", ["tiny", "random-150M"])
def test_estimate_matches_tensor_bytes_after_an_optimizer_step(which, tiny_model_dir):
    if which == "tiny":
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = plan.read_config(tiny_model_dir)
    else:
        cfg = dict(
            model_type="llama",
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            intermediate_size=2048,
            vocab_size=32000,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    w, g, s = measured_bytes(model, one_step(model))
    est = plan.estimate_memory(cfg, method="full", precision="fp32", strategy="ddp")
    gib = plan.GiB
    for name, real, guess in [
        ("weights", w, est["weights"]),
        ("gradients", g, est["gradients"]),
        ("optimizer", s, est["optimizer"]),
    ]:
        err = abs(guess * gib - real) / real
        print(
            f"{which} {name}: estimate {guess * gib / 1e6:.2f} MB, measured {real / 1e6:.2f} MB, error {err:.2%}"
        )
        assert err < 0.01, (name, guess * gib, real)


def test_parameter_counts_of_known_models():
    assert abs(plan.count_parameters(PORO_34B)["total"] / 34.2e9 - 1) < 0.01
    assert abs(plan.count_parameters(LLAMA_8B)["total"] / 8.03e9 - 1) < 0.01


def test_34b_full_zero3_on_64gb_needs_two_nodes_three_in_practice():
    kw = dict(
        method="full",
        precision="bf16",
        strategy="zero3",
        seq_len=2048,
        micro_batch=1,
        activation_checkpointing=True,
    )
    one = plan.estimate_memory(PORO_34B, world_size=8, **kw)
    assert one["total"] > 64  # one node of 8 x 64 GB cannot hold it
    nodes = plan.plan_nodes(PORO_34B, 64, gpus_per_node=8, **kw)
    assert nodes["min_nodes"] == 2 and nodes["comfortable_nodes"] == 3, nodes


def test_lora_8b_fits_one_gpu_and_full_ddp_does_not():
    lora = plan.estimate_memory(LLAMA_8B, method="lora", strategy="ddp", seq_len=4096, micro_batch=1)
    full = plan.estimate_memory(LLAMA_8B, method="full", strategy="ddp", seq_len=4096, micro_batch=1)
    assert lora["total"] < 40 < 64 < full["total"]
    assert plan.plan_nodes(LLAMA_8B, 64, method="full", strategy="ddp")["min_nodes"] is None


def test_time_estimate_uses_6n_per_token():
    s = plan.time_per_epoch(1e9, 1e9, gpus=1, peak_tflops=100, mfu=0.5, activation_checkpointing=False)
    assert s == pytest.approx(6e18 / 50e12)


def test_bad_configs_name_what_is_missing(tmp_path):
    with pytest.raises(plan.PlanError, match="no config.json"):
        plan.read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery", "vocab_size": 10}))
    with pytest.raises(plan.PlanError, match=r"config.json: none of the fields hidden_size, n_embd, d_model"):
        plan.count_parameters(plan.read_config(tmp_path))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(plan.PlanError, match="invalid JSON at line 1"):
        plan.read_config(tmp_path)


def test_plan_command_on_the_bundled_recipes(capsys):
    from workshop_lib.cli import main

    assert (
        main(["plan", str(REPO_ROOT / "recipes" / "poro34b_zero3.yaml"), "-p", "model", str(_poro(capsys))])
        == 0
    )


def _poro(_):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "config.json").write_text(json.dumps(PORO_34B))
    return d


def test_doctor_reports_and_exits_by_status(tiny_model_dir, capsys):
    from workshop_lib import doctor

    lines = doctor.run("tiny")
    names = {x.what for x in lines}
    assert {
        "torch",
        "transformers",
        "trl",
        "GPUs",
        "Slurm",
        "run folder",
        "HF cache",
        "model config",
        "tokenizer",
    } <= names
    assert all(x.status in ("PASS", "WARN", "FAIL") for x in lines)
    assert next(x for x in lines if x.what == "tokenizer").status == "PASS"
    assert doctor.main("tiny") == 0
    assert "checks:" in capsys.readouterr().out
    bad = doctor.check_model("/nonexistent/model-folder")
    assert bad[0].status == "FAIL" and "nonexistent" in bad[0].detail


def test_notebook_00_setup_check(tmp_path):
    from test_notebooks import outputs

    from workshop_lib.cli import run_notebook

    poro = _poro(None)
    out = run_notebook("00_setup_check", tmp_path, {"plan_model": str(poro)})
    text, _ = outputs(out)
    assert "[PASS] torch" in text and '"min_nodes": 2' in text and '"comfortable_nodes": 3' in text


def test_other_public_architectures():
    # published configs (trimmed), as test data: Mixtral-8x7B (MoE), Falcon-7B (multi-query), Gemma-7B (head_dim)
    mixtral = {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "num_local_experts": 8,
        "tie_word_embeddings": False,
    }
    falcon = {
        "model_type": "falcon",
        "hidden_size": 4544,
        "num_hidden_layers": 32,
        "num_attention_heads": 71,
        "multi_query": True,
        "vocab_size": 65024,
        "tie_word_embeddings": True,
    }
    gemma = {
        "model_type": "gemma",
        "hidden_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "intermediate_size": 24576,
        "vocab_size": 256000,
        "tie_word_embeddings": True,
    }
    for cfg, billions in ((mixtral, 46.7), (falcon, 6.9), (gemma, 8.5)):
        n = plan.count_parameters(cfg)["total"] / 1e9
        assert abs(n / billions - 1) < 0.03, (cfg["model_type"], n)
