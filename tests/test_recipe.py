"""Recipes: bundled ones load; each kind of mistake gives one clear error before any heavy work."""

import pytest

from workshop_lib import params
from workshop_lib import recipe as R
from workshop_lib.model import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bundled_recipes_load_and_round_trip(path, tmp_path):
    r = R.load_recipe(path)
    assert r.method in R.METHODS and r.distributed in R.DISTRIBUTED
    again = R.load_recipe(r.save(tmp_path / "resolved.yaml"))
    assert again.to_dict() == r.to_dict()


def test_kit_defaults_are_correct_and_fast():
    r = R.load_recipe({})
    assert r.trl["assistant_only_loss"] is True and r.trl["padding_free"] is True
    assert r.model == "tiny" and r.world_size == 1


def test_a_recipe_is_resolved_once_and_cannot_change(tmp_path):
    import dataclasses
    import pickle

    r = R.load_recipe(REPO_ROOT / "recipes" / "tiny_cpu.yaml", overrides={"output_root": "elsewhere"})
    assert r.train_file == str(REPO_ROOT / "data/synthetic/train.jsonl")  # relative to the repository
    assert r.output_root == str(REPO_ROOT / "elsewhere")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.learning_rate = 1.0
    with pytest.raises(TypeError):
        r.trl["learning_rate"] = 1.0
    assert pickle.loads(pickle.dumps(r)) == r  # it travels to workers whole
    assert r.origin["learning_rate"] == "recipe file" and r.origin["output_root"] == "override"
    assert r.origin["padding_free"] == "kit default"
    rows = {key: (source, why) for key, _, source, why in R.explain(r)}
    assert rows["padding_free"][0] == "kit default" and "faster" in rows["padding_free"][1]
    assert rows["model"][0] == "recipe file" and "tiny" in rows["model"][1]
    changed = r.replace(gradient_accumulation_steps=4)
    assert (
        changed.trl["gradient_accumulation_steps"] == 4
        and changed.origin["gradient_accumulation_steps"] == "override"
    )
    assert changed.origin["learning_rate"] == "recipe file"


def test_notebook_recipe_merges_parameters_onto_the_recipe(tmp_path):
    """The parameters cell's values change the recipe, never replace it; any recipe key may be set there."""
    r = params.notebook_recipe(
        {
            "recipe_file": "recipes/tiny_cpu.yaml",
            "overrides": {"r": 8},
            "run_name": None,
            "max_steps": 7,
            "method": "lora",
            "warmup_steps": 0,
            "beta": None,
        }
    )
    assert r.trl["learning_rate"] == 2e-3 and r.trl["num_train_epochs"] == 2  # still the recipe's
    assert r.trl["max_steps"] == 7 and r.trl["warmup_steps"] == 0 and r.method == "lora" and r.lora["r"] == 8
    assert r.origin["warmup_steps"] == "parameters cell" and r.origin["learning_rate"] == "recipe file"
    assert r.run_name.startswith("demo-") and r.run_name != "demo"  # a fresh folder each time
    base = {"recipe_file": "recipes/tiny_cpu.yaml", "output_root": str(tmp_path)}
    first = params.notebook_recipe(base)
    first.run_dir.mkdir()
    assert params.notebook_recipe(base).run_name == first.run_name + "-2"  # the same second: still fresh
    assert params.notebook_recipe({**base, "run_name": "mine"}).run_name == "mine"
    with pytest.raises(R.RecipeError, match="multi-node run needs run_name"):
        params.notebook_recipe({**base, "nnodes": 2})
    with pytest.raises(
        R.RecipeError, match=r"'learnig_rate' is not a recipe key \(did you mean 'learning_rate'"
    ):
        params.notebook_recipe({**base, "learnig_rate": 1e-3})
    with pytest.raises(R.RecipeError, match=r"'beta' is not a recipe key \(it is a key of DPOConfig"):
        params.notebook_recipe({**base, "beta": 0.5})
    with pytest.raises(R.RecipeError, match="overrides = 3: expected a dict"):
        params.notebook_recipe({**base, "overrides": 3})


def test_parameters_are_read_from_the_parameters_cells_not_the_namespace():
    """The newest run of the parameters cell (and papermill's injected cell after it), evaluated on its own."""
    ours = '# Parameters: edit\nrecipe_file = "recipes/tiny_cpu.yaml"\nlearning_rate = None\nsteps: int = 2 * 3\n'
    injected = "# Parameters\nlearning_rate = 0.01\nwarmup_steps = 0\n"
    history = ["import x", ours, injected, "trainer = 1", "model = object()"]
    assert params.read_cells(history) == {
        "recipe_file": "recipes/tiny_cpu.yaml",
        "learning_rate": 0.01,
        "steps": 6,
        "warmup_steps": 0,
    }
    edited = ours.replace("learning_rate = None", "learning_rate = 0.5")
    assert params.read_cells([*history, edited, "trainer = 2"])["learning_rate"] == 0.5  # the newest run
    with pytest.raises(R.RecipeError, match="no parameters cell has run in this kernel"):
        params.read_cells(["import x", "trainer = 1"])


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
        ("method: qlora\ndistributed: zero3\n", r"method qlora with distributed zero3 is not supported"),
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
    assert r.trl["learning_rate"] == 5e-4 and r.run_dir.name == "b"
    with pytest.raises(R.RecipeError, match="did you mean 'num_train_epochs'"):
        R.load_recipe(p, overrides={"num_train_epoch": 2})


def test_missing_recipe_file(tmp_path):
    with pytest.raises(R.RecipeError, match="no such recipe file"):
        R.load_recipe(tmp_path / "nope.yaml")


def test_a_p_value_is_read_as_papermill_reads_it_and_inline_yaml_lists():
    from workshop_lib.recipe import parse_value

    assert [parse_value(x) for x in ("3", "0.5", "true", "None", "no", "runs/a")] == [
        3,
        0.5,
        True,
        None,
        "no",
        "runs/a",
    ]
    assert parse_value("[{path: a.jsonl, max_rows: 200}]") == [{"path": "a.jsonl", "max_rows": 200}]
    assert parse_value("{% if x %}y{% endif %}") == "{% if x %}y{% endif %}"  # a template stays a string


def test_a_lab_job_sends_every_notebooks_runs_to_the_profiles_per_user_folder(monkeypatch, capsys):
    """On a workshop day the kit is one shared installation: a lab job's notebooks write run folders under the
    profile's output_root ($USER expanded), through WORKSHOP_OUTPUT_ROOT, which every default honours."""
    import argparse

    from workshop_lib import lab, paths

    monkeypatch.setenv("USER", "participant7")
    args = argparse.Namespace(
        profile="lumi", output_root=None, root=None, time=None, gpus=None, partition=None, reservation=None
    )
    args.dry_run = True
    assert lab.lab(args) == 0
    script = capsys.readouterr().out
    assert 'export WORKSHOP_OUTPUT_ROOT="/scratch/project_462000000/participant7/runs"' in script
    monkeypatch.setenv("WORKSHOP_OUTPUT_ROOT", "/scratch/project_462000000/participant7/runs")
    assert (
        R.load_recipe("recipes/tiny_cpu.yaml").output_root == "/scratch/project_462000000/participant7/runs"
    )
    assert paths.default_output_root() == "/scratch/project_462000000/participant7/runs"
    given = R.load_recipe("recipes/tiny_cpu.yaml", overrides={"output_root": "/tmp/mine"})
    assert given.output_root == "/tmp/mine"  # a value given wins
    monkeypatch.delenv("WORKSHOP_OUTPUT_ROOT")
    assert R.load_recipe("recipes/tiny_cpu.yaml").output_root == str(REPO_ROOT / "runs")
