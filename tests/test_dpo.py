"""DPO (`trainer: dpo`): preference pairs as published, DPOTrainer through the kit's paths, notebook 06.

The 2-node DPO job with a preemption is in test_slurm.py, beside the SFT jobs it shares the cluster with.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workshop_lib import data, train
from workshop_lib.data import DataError
from workshop_lib.paths import REPO_ROOT
from workshop_lib.recipe import RecipeError, load_recipe

Q = [{"role": "user", "content": "What is 2+2?"}]
A4 = {"role": "assistant", "content": "4"}
A5 = {"role": "assistant", "content": "5"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": Q, "chosen": [A4], "rejected": [A5]},  # TRL's explicit conversational form
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},  # TRL's standard (text) form
        {"chosen": Q + [A4], "rejected": Q + [A5]},  # implicit prompt: the shared start
        {"prompt": "What is 2+2?", "chosen": Q + [A4], "rejected": Q + [A5]},  # UltraFeedback-binarized
        {
            "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5",
        },
        {"prompt": Q, "chosen": Q + [A4], "rejected": Q + [A5]},  # the prompt repeated in each answer
    ],
    ids=["explicit", "text", "implicit", "ultrafeedback", "hh-rlhf", "repeated-prompt"],
)
def test_published_pair_shapes_become_one_explicit_form(row):
    pair, problems = data.to_pair(row)
    assert problems == []
    assert pair == {"prompt": Q, "chosen": [A4], "rejected": [A5]}


def test_bad_pairs_are_named_by_file_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "What is 2+2?", "chosen": "4"},
            {"chosen": Q + [A4], "rejected": [{"role": "user", "content": "What is 3+3?"}, A5]},
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "4"},
            {"prompt": Q + [A4], "chosen": "4", "rejected": "5"},
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        ],
    )
    with pytest.raises(DataError) as e:
        data.load_preferences(path)
    text = str(e.value)
    assert f"{path}:line 1: rejected: missing 'rejected'" in text
    assert f"{path}:line 2: rejected[0]: chosen and rejected answer different prompts" in text
    assert f"{path}:line 3: rejected: chosen and rejected are the same answer" in text
    assert f"{path}:line 4: prompt[1].role: the prompt ends with a 'assistant' turn" in text
    assert "line 5" not in text and "Fix:" in text
    rows, report = data.load_preferences(path, on_error="drop")
    assert len(rows) == 1 and report.dropped == 4 and report.kept == 1
    cli = [sys.executable, "-m", "workshop_lib", "validate", "--pairs", str(path)]
    out = subprocess.run(cli, capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 1 and f"{path}:line 3: rejected: chosen and rejected are the same" in out.stdout
    assert "5 rows (preference pairs), 1 valid" in out.stdout


def test_the_bundled_pairs_are_valid_and_held_out():
    train_pairs, _ = data.load_preferences(REPO_ROOT / "data/synthetic/pairs_train.jsonl")
    held_out, _ = data.load_preferences(REPO_ROOT / "data/synthetic/pairs_eval.jsonl")
    assert len(train_pairs) == 1000 and len(held_out) == 200
    first_user = [next(m["content"] for m in p["prompt"] if m["role"] == "user") for p in train_pairs]
    assert not {next(m["content"] for m in p["prompt"] if m["role"] == "user") for p in held_out} & set(
        first_user
    )
    # regenerating gives the same files (the script is deterministic)
    sys.path.insert(0, str(REPO_ROOT / "data"))
    import make_synthetic

    regenerated = make_synthetic.generate_pairs(4000, 200, 1000)
    assert regenerated[1] == [json.loads(x) for x in (REPO_ROOT / "data/synthetic/pairs_eval.jsonl").open()]


def test_a_recipe_says_which_config_its_keys_belong_to():
    assert load_recipe({"trainer": "dpo", "beta": 0.3}).trl["beta"] == 0.3
    with pytest.raises(RecipeError, match="'beta' is a DPOConfig key, but this recipe has trainer: sft"):
        load_recipe({"beta": 0.3})
    with pytest.raises(RecipeError, match="'packing' is a SFTConfig key"):
        load_recipe({"trainer": "dpo", "packing": True})
    with pytest.raises(RecipeError, match="did you mean 'dpo'"):
        load_recipe({"trainer": "dop"})


@pytest.fixture(scope="module")
def sft_model(brief_sft_run):
    """A briefly SFT-trained tiny model: what DPO starts from (half its held-out answers right)."""
    return brief_sft_run / "final"


def dpo_recipe(tmp_path, sft_model, **overrides):
    return load_recipe(
        "recipes/tiny_dpo.yaml",
        overrides={"model": str(sft_model), "output_root": str(tmp_path), "run_name": "dpo", **overrides},
    )


@pytest.mark.slow
def test_dpo_prefers_the_chosen_answers_and_keeps_exact_match(tmp_path, sft_model):
    recipe = dpo_recipe(tmp_path, sft_model, n_generate=200)
    result = train.run(recipe)
    assert not result.preempted and result.wrapped_as == "LlamaForCausalLM"
    r = json.loads((recipe.run_dir / "result.json").read_text())
    print(
        f"\nheld-out pairs (n={r['preference_n']}): preference accuracy {r['preference_accuracy_before']:.3f} -> "
        f"{r['preference_accuracy_after']:.3f}; reward accuracy {r['preference_reward_accuracy_after']:.3f}, "
        f"reward margin {r['preference_reward_margin_after']:.3f}; exact match {r['exact_match_before']:.3f} -> "
        f"{r['exact_match_after']:.3f}; DPOTrainer eval: {r['eval_metrics']}"
    )
    assert r["preference_reward_margin_before"] == 0 and r["preference_reward_accuracy_before"] == 0
    assert r["preference_reward_margin_after"] > 0.1 and r["preference_reward_accuracy_after"] > 0.6
    assert r["preference_accuracy_after"] > r["preference_accuracy_before"]
    assert r["preference_logp_margin_after"] > r["preference_logp_margin_before"]
    assert r["exact_match_after"] >= r["exact_match_before"]
    # TRL's own numbers agree in sign: its implicit rewards prefer the chosen answers after training
    assert (
        r["eval_metrics"]["eval_rewards/margins"] > 0 and r["eval_metrics"]["eval_rewards/accuracies"] > 0.6
    )
    logged = [json.loads(x) for x in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in x for x in logged)  # metrics.jsonl keeps DPO's own metrics


@pytest.mark.slow
def test_dpo_with_lora_on_two_processes(tmp_path, sft_model):
    recipe = dpo_recipe(tmp_path, sft_model, method="lora", nproc_per_node=2, max_steps=6, n_generate=0)
    result = train.fit(recipe)
    assert result.group_size == 2 and result.wrapped_as == "DistributedDataParallel"
    assert len({r.param_digest for r in result.ranks.values()}) == 1  # both ranks hold the same weights
    assert (recipe.run_dir / "final" / "adapter_config.json").exists()
    assert "eval_rewards/accuracies" in result.eval_metrics
