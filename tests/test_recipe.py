"""Recipes: bundled ones load; each kind of mistake gives one clear error before any heavy work."""

import pytest

from workshop_lib import recipe as R
from workshop_lib.model import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bundled_recipes_load_and_round_trip(path, tmp_path):
    r = R.load_recipe(path)
    assert r.kit["method"] in R.METHODS and r.kit["distributed"] in R.DISTRIBUTED
    again = R.load_recipe(r.save(tmp_path / "resolved.yaml"))
    assert again.flat() == r.flat()


def test_kit_defaults_are_correct_and_fast():
    r = R.load_recipe({})
    assert r.sft["assistant_only_loss"] is True and r.sft["padding_free"] is True
    assert r.kit["model"] == "tiny" and r.world_size == 1


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, match",
    [
        ("learning_rat: 0.001\n", r"unknown key 'learning_rat': did you mean 'learning_rate'\?"),
        ("lora_alfa: 16\nmethod: lora\n", r"did you mean 'lora_alpha'\?"),
        ("num_train_epochs: three\n", r"num_train_epochs: expected float or int, got 'three'"),
        ("per_device_train_batch_size: 8.5\n", r"per_device_train_batch_size: expected int"),
        ("distributed: zero-3\n", r"distributed: 'zero-3' is not one of .* \(did you mean 'zero3'\?\)"),
        ("method: qlora\n", r"qlora .* needs a CUDA GPU"),
        ("method: full\nr: 8\n", r"LoRA keys \['r'\] are set but method is full"),
        ("nproc_per_node: 0\n", r"nproc_per_node: expected a positive integer"),
        ("run_name: a/b\n", r"run_name: 'a/b' must be a plain folder name"),
        ("model: [unclosed\n", r"r.yaml: line 1?: invalid YAML|r.yaml: line 2: invalid YAML"),
        ("- a\n- b\n", r"a recipe is a mapping"),
    ],
)
def test_bad_recipes_give_one_clear_error(tmp_path, text, match):
    with pytest.raises(R.RecipeError, match=match) as err:
        R.load_recipe(write(tmp_path, text))
    assert str(tmp_path / "r.yaml") in str(err.value)


def test_overrides_win_and_are_validated(tmp_path):
    p = write(tmp_path, "learning_rate: 1.0e-3\nrun_name: a\n")
    r = R.load_recipe(p, overrides={"learning_rate": 5e-4, "run_name": "b"})
    assert r.sft["learning_rate"] == 5e-4 and r.run_dir.name == "b"
    with pytest.raises(R.RecipeError, match="did you mean 'num_train_epochs'"):
        R.load_recipe(p, overrides={"num_train_epoch": 2})


def test_missing_recipe_file(tmp_path):
    with pytest.raises(R.RecipeError, match="no such recipe file"):
        R.load_recipe(tmp_path / "nope.yaml")
