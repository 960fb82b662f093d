"""The participant's loop, in one kernel as in JupyterLab: Run All, Run All again, edit a value and Run All,
make a mistake and follow the message to success, restart the kernel half-way. Every run must end without an
error output and train a fresh run with the values the parameters cell shows (fast tier: short runs).

The kernels are processes of their own, so the dialogs run in conftest's background lane beside the rest of the
suite: each test names its scenario (`lane` marker), and the scenario's assertions fail in the test."""

import json

import pytest
import yaml
from kernel_loop import Kernel

# A short run: what the parameters cell of a participant in a hurry would say.
SHORT = dict(max_steps=6, num_train_epochs=None)
SHORT_OVERRIDES = {
    # a few hundred rows: each run tokenizes its data, and the module trains seven runs
    "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 300}],
    "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
    "logging_steps": 2,
    "save_steps": 6,
    "eval_strategy": "no",
    "n_generate": 4,
    "warmup_steps": 0,
}


def runs_in(root):
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "recipe.yaml").exists())


def recipe_of(run):
    return yaml.safe_load((run / "recipe.yaml").read_text())


def participant_03(tmp_path_factory):
    """Notebook 03's four dialogs below, in order, in one kernel (one participant's session, the next model
    included): what each raised, or None."""
    raised = {}
    with Kernel("03_train.ipynb", env={"OMP_NUM_THREADS": "1"}) as k:
        for dialog in (run_all_twice_then_edit, a_mistake_then_the_fix, restart_half_way, your_own_model):
            try:
                dialog(k, tmp_path_factory.mktemp(dialog.__name__))
                raised[dialog.__name__] = None
            except Exception as e:  # an assertion: failed in its test
                raised[dialog.__name__] = e
    return raised


def in_the_session(lane, dialog) -> None:
    error = lane.result("participant_03")[dialog.__name__]
    if error is not None:
        raise error


@pytest.mark.lane("participant_03")
def test_03_run_all_twice_then_edit_then_run_all(lane):
    in_the_session(lane, run_all_twice_then_edit)


@pytest.mark.lane("participant_03")
def test_03_a_mistake_stops_at_its_cell_with_one_line_and_the_fix_works(lane):
    in_the_session(lane, a_mistake_then_the_fix)


@pytest.mark.lane("participant_03")
def test_03_restart_half_way_then_the_recipe_cell_then_run_all(lane):
    in_the_session(lane, restart_half_way)


@pytest.mark.lane("participant_03")
def test_03_your_own_model_whose_template_drops_system_prompts(lane):
    in_the_session(lane, your_own_model)


def run_all_twice_then_edit(k: Kernel, tmp_path):
    k.set(output_root=str(tmp_path), overrides=SHORT_OVERRIDES, **SHORT)
    k.run_all()
    k.run_all()  # the notebook's own `trainer`, `model`, `recipe` exist now: nothing may take them for parameters
    first, second = runs_in(tmp_path)
    assert all((r / "final").is_dir() and (r / "result.json").exists() for r in (first, second))
    assert "held-out exact match: before" in k.text() and not k.error_outputs()

    # edit a declared value and add a recipe key the cell does not list, as plain lines; Run All
    k.set(learning_rate=0.01, lr_scheduler_type="constant")
    k.run_all()
    (third,) = set(runs_in(tmp_path)) - {first, second}
    rec = recipe_of(third)
    assert rec["learning_rate"] == 0.01 and rec["lr_scheduler_type"] == "constant" and rec["max_steps"] == 6
    assert recipe_of(first)["learning_rate"] == 2e-3  # the earlier runs are untouched
    assert "parameters cell" in k.text()  # the recipe table says where the edited values came from


def a_mistake_then_the_fix(k: Kernel, tmp_path):
    k.set(output_root=str(tmp_path), overrides=SHORT_OVERRIDES, **SHORT)
    k.set(learnig_rate=0.01)  # a typo, as participants make them
    k.clear()
    error = k.run()
    assert error is not None and "did you mean 'learning_rate'" in str(error)
    recipe_cell = k.index_of("params.parameters_cell()")
    assert k.error_outputs() == [k.error_outputs()[0]] and "RecipeError" in k.error_outputs()[0]
    assert not k.nb.cells[recipe_cell + 2].get(
        "outputs"
    )  # Run All stopped there: nothing ran on stale objects
    assert not runs_in(tmp_path)  # and nothing was written
    # the advice: rename it
    cell = k.nb.cells[k.parameters_index]
    cell.source = cell.source.replace("learnig_rate = 0.01", "learning_rate = 0.01")
    k.run_all()
    (run,) = runs_in(tmp_path)
    assert recipe_of(run)["learning_rate"] == 0.01 and not k.error_outputs()


def restart_half_way(k: Kernel, tmp_path):
    # a restart gives the session's kernel a fresh process, as in JupyterLab
    k.set(output_root=str(tmp_path), overrides=SHORT_OVERRIDES, **SHORT)
    train_cell = k.index_of("trainer.train(")
    assert k.run(stop=train_cell) is None  # up to the training cell: a run folder exists, nothing trained
    k.restart()
    recipe_cell = k.index_of("params.parameters_cell()")
    error = k.run(start=0, stop=2) or k.run(
        start=recipe_cell, stop=recipe_cell + 1
    )  # imports, then the recipe
    assert error is not None and "no parameters cell has run in this kernel" in str(error)
    assert "Run All" in str(error)  # what to do, in the notebook's terms
    k.run_all()
    half, done = runs_in(tmp_path)
    assert not (half / "final").exists() and (done / "final").is_dir() and not k.error_outputs()


@pytest.mark.lane("preference_06")
def test_06_without_a_finished_sft_run_says_what_to_do_then_run_all_twice(lane):
    lane.result("preference_06")


def preference_06(short_sft_run, tmp_path_factory):
    """First pointed at a folder with no finished SFT run: one error that says what to do, nothing written.
    Then, in the same kernel, at the folder of a finished run: Run All twice starts from it each time."""
    tmp_path = tmp_path_factory.mktemp("06")
    (tmp_path / "half").mkdir()  # a run folder that never finished
    (tmp_path / "half" / "recipe.yaml").write_text("trainer: sft\n")
    root = short_sft_run.parent
    small = {
        "train_file": [{"path": "data/synthetic/pairs_train.jsonl", "max_rows": 32}],
        "eval_file": [{"path": "data/synthetic/pairs_eval.jsonl", "max_rows": 8}],
        "n_generate": 4,
        "logging_steps": 2,
        "save_steps": 4,
        "eval_strategy": "no",
        "warmup_steps": 0,
    }
    with Kernel("06_preference_tuning.ipynb", env={"OMP_NUM_THREADS": "1"}) as k:
        k.set(output_root=str(tmp_path))
        error = k.run()
        assert error is not None and "RunError" in k.error_outputs()[0]
        shown = k.error_outputs()[0]
        assert "no finished sft run" in shown and "half" in shown and "notebooks/03_train.ipynb" in shown
        assert [p.name for p in tmp_path.iterdir()] == ["half"]  # nothing written

        k.set(output_root=str(root), overrides=small, max_steps=4, num_train_epochs=None)
        k.clear()
        k.run_all()
        k.run_all()
        assert not k.error_outputs()
        dpo = [r for r in runs_in(root) if recipe_of(r)["trainer"] == "dpo"]
        assert len(dpo) == 2 and all((r / "final").is_dir() for r in dpo)
        assert all(recipe_of(r)["model"] == str(short_sft_run / "final") for r in dpo)
        assert str(short_sft_run.name) in k.text()  # it says which run it starts from


@pytest.mark.lane("grpo_07")
def test_07_grpo_run_all_twice_from_the_newest_sft_run(lane):
    lane.result("grpo_07")


def grpo_07(short_sft_run):
    root = short_sft_run.parent
    small = {
        "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 40}],
        "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 8}],
        "n_generate": 8,
        "per_device_train_batch_size": 16,
        "num_generations": 4,
        "logging_steps": 1,
        "save_steps": 3,
    }
    with Kernel("07_grpo.ipynb", env={"OMP_NUM_THREADS": "1"}) as k:
        k.set(output_root=str(root), overrides=small, max_steps=3)
        k.run_all()
        k.run_all()
        assert not k.error_outputs()
        grpo = [r for r in runs_in(root) if recipe_of(r)["trainer"] == "grpo"]
        assert len(grpo) == 2 and all((r / "final").is_dir() for r in grpo)
        assert all(recipe_of(r)["model"] == str(short_sft_run / "final") for r in grpo)
        text = k.text()
        assert (
            "before GRPO: exact match" in text
            and "mean reward: correct" in text
            and "reward_std" in k.nb.cells[k.index_of("history = runs.load_run")].source
        )
        assert "Tried to track the number of tokens" not in text  # transformers' warning, once a step
        metrics = (grpo[0] / "metrics.jsonl").read_text()
        assert '"reward"' in metrics and '"completions/mean_length"' in metrics  # GRPO's own metrics are kept


def your_own_model(k: Kernel, tmp_path):
    """Bring your own model: Mistral's real v3 vocabulary and its published v0.3 template, which drops system
    prompts, with the bundled data (a third has one). Forcing system_prompt keep stops at the data with one
    message that names the fix; following it (auto, the default) merges them, says so, and trains."""
    from test_real_tokenizers import REALS, save_tiny_model

    model = save_tiny_model(REALS[1], tmp_path / "my-model")
    out = tmp_path / "runs"
    # the same kernel as the dialogs above: a participant's next model, in the same session
    # a 32k vocabulary makes each step's logits 1000x the tiny model's: small batches, no generation (a
    # random model writes max_new_tokens of noise per answer)
    small = {**SHORT_OVERRIDES, "n_generate": 0, "per_device_train_batch_size": 2, "save_steps": 3}
    k.set(model=str(model), output_root=str(out), overrides=small, max_steps=3, num_train_epochs=None)
    k.set(system_prompt="keep")  # a participant insists on keeping them
    k.clear()
    error = k.run()
    assert error is not None and len(k.error_outputs()) == 1, k.error_outputs()
    shown = k.error_outputs()[0]
    assert "system_prompt" in shown and "auto" in shown and "Traceback" not in shown, shown
    assert "conversations with one are refused" in k.text()  # the template report said so first
    assert not out.exists() or not runs_in(out)  # nothing written

    k.set(system_prompt="auto")  # the advice
    k.clear()
    k.run_all()
    assert not k.error_outputs(), k.error_outputs()
    (run,) = runs_in(out)
    assert "merged into the first user turn, because the template drops them" in k.text()
    assert (
        json.loads((run / "result.json").read_text())["system_prompt"] == "merge"
    )  # the run records what it did
