"""Model cards of real runs of the tiny model (full and LoRA), and `push` where it cannot upload (offline)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from workshop_lib import modelcard, train
from workshop_lib import recipe as R
from workshop_lib.paths import REPO_ROOT

FAST = dict(
    max_steps=8,
    logging_steps=2,
    save_steps=8,
    eval_strategy="steps",
    eval_steps=4,
    n_generate=0,
    warmup_steps=0,
    nproc_per_node=1,
)
TRAIN, EVAL = REPO_ROOT / "data/synthetic/train.jsonl", REPO_ROOT / "data/synthetic/eval.jsonl"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full run trained and scored with train.run (record, then record_scores), and a LoRA run on a
    two-source mixture with no eval file, trained with train.fit."""
    root = tmp_path_factory.mktemp("runs")
    extra = root / "extra.jsonl"
    extra.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:40]))
    full = R.load_recipe(
        REPO_ROOT / "recipes/tiny_cpu.yaml",
        overrides={**FAST, "run_name": "full", "output_root": str(root), "n_generate": 4},
    )
    train.run(full)
    lora = R.load_recipe(
        REPO_ROOT / "recipes/tiny_cpu.yaml",
        overrides={
            **FAST,
            "eval_strategy": "no",
            "method": "lora",
            "r": 4,
            "run_name": "lora",
            "output_root": str(root),
            "train_file": [{"path": str(TRAIN), "max_rows": 200}, {"path": str(extra), "weight": 2}],
            "eval_file": None,
        },
    )
    train.fit(lora)
    return root


def card_of(run_dir):
    """The card as the hub reads it (metadata parsed by huggingface_hub) and its Markdown table rows."""
    card = ModelCard.load(run_dir / "final" / "README.md")
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in card.text.splitlines()
        if line.startswith("|")
    ]
    return card, rows


def expected_data_row(role, path):
    data = path.read_bytes()
    rows = sum(1 for line in data.splitlines() if line.strip())
    return [role, f"`{path}`", str(rows), hashlib.sha256(data).hexdigest()]


def check_metrics(run_dir, rows):
    result = json.loads((run_dir / "result.json").read_text())
    shown = {r[0]: r[1] for r in rows if len(r) == 2}
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers and set(numbers) <= set(shown)
    for key, value in numbers.items():
        assert float(shown[key]) == pytest.approx(value, rel=1e-5, abs=1e-12), key
    return result


def test_full_run_card_has_hub_metadata_metrics_data_recipe_and_plot(runs):
    run_dir = runs / "full"
    card, rows = card_of(run_dir)
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["license"] == "unknown"
    assert {"trl", "sft"} <= set(meta["tags"]) and "lora" not in meta["tags"]
    assert "base_model" not in meta  # 'tiny' is a local model: the hub would reject a path as base_model
    result = check_metrics(run_dir, rows)
    assert {"exact_match_before", "exact_match_after", "train_loss", "eval_loss"} <= set(
        result
    )  # scores made it
    assert expected_data_row("train", TRAIN) in rows and expected_data_row("eval", EVAL) in rows
    assert ["method", "full fine-tuning"] in rows and ["trainer", "sft (TRL `SFTTrainer`)"] in rows
    assert ["kit", f"workshop-lib {modelcard.kit_version()}"] in rows and modelcard.kit_version()[0].isdigit()
    recipe_block = card.text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe_block) == yaml.safe_load((run_dir / "recipe.yaml").read_text())
    png = run_dir / "final" / "loss_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![loss curves](loss_curves.png)" in card.text


def test_lora_card_names_peft_and_the_mixture_sources(runs):
    run_dir = runs / "lora"
    assert (run_dir / "final" / "adapter_config.json").exists()
    card, rows = card_of(run_dir)
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and {"trl", "sft", "lora"} <= set(meta["tags"])
    check_metrics(run_dir, rows)
    assert (
        expected_data_row("train", TRAIN) in rows and expected_data_row("train", runs / "extra.jsonl") in rows
    )
    assert not any(r[0] == "eval" for r in rows)
    assert "max_rows=200" in card.text and "weight=2" in card.text
    assert "AutoPeftModelForCausalLM" in card.text and (run_dir / "final" / "loss_curves.png").exists()


def test_card_is_rewritten_from_the_folder_and_hub_sources_become_metadata(runs, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(runs / "full", run_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    first = modelcard.write(run_dir).read_text()
    assert modelcard.write(run_dir).read_text() == first  # same folder, same card
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe.update(
        model="my-org/base-model", train_file="my-org/chats:train", eval_file=str(tmp_path / "gone.jsonl")
    )
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").write_text(json.dumps({**result, "rewards_accuracy": 0.75}))
    assert (run_dir / "final" / "README.md").read_text() == first  # only write() changes the card
    card = ModelCard.load(modelcard.write(run_dir, license="apache-2.0"))
    meta = card.data.to_dict()
    assert meta["base_model"] == "my-org/base-model" and meta["datasets"] == ["my-org/chats"]
    assert meta["license"] == "apache-2.0"
    rows = card_of(run_dir)[1]
    assert ["train", "`my-org/chats:train`", "-", "hub dataset"] in rows
    assert ["eval", f"`{tmp_path / 'gone.jsonl'}`", "-", "not found when the card was written"] in rows
    assert ["rewards_accuracy", "0.75"] in rows


def push_cli(*args, **env):
    """`python -m workshop_lib push ...` with no hub token or offline flag inherited from this machine."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING")) and k != "TRANSFORMERS_OFFLINE"
    }
    return subprocess.run(
        [sys.executable, "-m", "workshop_lib", "push", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**clean, **env},
        timeout=120,
    )


def test_push_says_why_it_cannot_upload_and_what_it_would_upload(runs, tmp_path):
    home = str(tmp_path / "hf-home")  # no stored token
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs / "full" / "recipe.yaml", unfinished)
    cases = [
        (
            push_cli(unfinished, "me/x", HF_HOME=home, HF_TOKEN="hf_x"),
            "no final/ model to push: it has not finished",
        ),
        (
            push_cli(runs / "full", "me/x", HF_HOME=home, HF_HUB_OFFLINE="1", HF_TOKEN="hf_x"),
            "HF_HUB_OFFLINE is set",
        ),
        (
            push_cli(runs / "full", "me/x", HF_HOME=home),
            "no Hugging Face token: log in once with `hf auth login`",
        ),
    ]
    (unfinished / "PREEMPTED").write_text("4\n")
    cases.append((push_cli(unfinished, "me/x", HF_HOME=home), "it stopped with a checkpoint"))
    for proc, reason in cases:
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("push: ") and reason in lines[0], proc.stderr
        assert lines[0].endswith("Nothing was uploaded.")
    # a token but no network (this machine), or a network that refuses a made-up token (CI): nothing uploaded
    proc = push_cli(runs / "full", "me/x", HF_HOME=home, HF_TOKEN="hf_made_up_token")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot reach the hub" in proc.stderr or "the hub refused the token" in proc.stderr
    for run, weights in (("full", "model.safetensors"), ("lora", "adapter_model.safetensors")):
        proc = push_cli(runs / run, "me/x", "--dry-run", HF_HOME=home)
        assert proc.returncode == 0, proc.stderr
        listed = {line.strip() for line in proc.stdout.splitlines()[1:]}
        on_disk = {p.name for p in (runs / run / "final").iterdir()}
        assert listed == on_disk - {"training_args.bin"}
        assert {weights, "README.md", "loss_curves.png", "tokenizer.json", "chat_template.jinja"} <= listed
    assert (
        'from_pretrained("me/x")' in (runs / "lora" / "final" / "README.md").read_text()
    )  # the card names the repo


def test_trainer_classes_come_from_the_trainer_table_and_no_metrics_means_no_plot(tmp_path):
    from workshop_lib.trainers import KINDS

    assert {name: modelcard.trainer_class(name) for name in KINDS} == {n: k.trainer for n, k in KINDS.items()}
    assert modelcard.trainer_class("my-trainer") == "my-trainer"  # one the kit does not know: as named
    run_dir = tmp_path / "started"  # a run folder that has not logged a step (read through runs.load_run)
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("trainer: sft\nmodel: tiny\n")
    assert (
        modelcard.loss_plot(run_dir, tmp_path / "plot.png") is None and not (tmp_path / "plot.png").exists()
    )
