"""Loss curves from real run folders (finished and killed mid-run), checked through the matplotlib objects."""

import json
import shutil

import pytest

from workshop_lib import plots, train
from workshop_lib import recipe as R
from workshop_lib import runs as run_folders
from workshop_lib.cli import main as cli
from workshop_lib.model import REPO_ROOT


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("lr-a", 1e-3), ("lr-b", 3e-3)):
        recipe = R.load_recipe(
            REPO_ROOT / "recipes" / "tiny_cpu.yaml",
            overrides={
                # a few hundred rows: each run tokenizes its data, and evaluates the held-out rows
                "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 300}],
                "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
                "max_steps": 12,
                "logging_steps": 2,
                "save_steps": 6,
                "eval_strategy": "steps",
                "eval_steps": 6,
                "n_generate": 0,
                "nproc_per_node": 1,
                "warmup_steps": 0,
                "learning_rate": lr,
                "run_name": name,
                "output_root": str(root),
            },
        )
        train.fit(recipe)
    # a run killed mid-training: no result, no trainer_state.json, metrics cut mid-line
    killed = root / "killed"
    shutil.copytree(root / "lr-a", killed)
    for f in ("result.json", "trainer_state.json"):
        (killed / f).unlink()
    shutil.rmtree(killed / "final")
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    return root


def test_one_run_has_data_and_labelled_axes(runs):
    fig = plots.plot_run(runs / "lr-a")
    titles = {ax.get_title(): ax for ax in fig.axes}
    assert {"train loss", "eval loss", "learning rate", "gradient norm"} <= set(titles)
    for title, ax in titles.items():
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel(), title
        assert ax.lines and all(len(line.get_xdata()) > 0 for line in ax.lines), title
    loss = titles["train loss"]
    assert len(loss.lines) == 2  # raw (faint) and smoothed
    assert list(loss.lines[0].get_xdata()) == [2, 4, 6, 8, 10, 12]
    ev = titles["eval loss"]
    assert list(ev.lines[0].get_xdata()) == [6, 12]


def test_sweep_overlay_is_labelled_by_name_and_what_differs_is_a_table(runs):
    found, problems = run_folders.load_runs(str(runs / "lr-*"))
    assert [r.name for r in found] == ["lr-a", "lr-b"] and not problems
    fig = plots.plot_runs(found, x="epoch")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["lr-a (learning_rate=0.001)", "lr-b (learning_rate=0.003)"]  # name + what differs
    assert fig.axes[0].get_xlabel() == "epoch"
    params = run_folders.params_table(found)
    assert list(params.columns) == ["run", "learning_rate"] and list(params["learning_rate"]) == [
        "0.001",
        "0.003",
    ]
    table = run_folders.summary_table(found)
    assert "learning_rate" not in table and table["final loss"].notna().all() and table["finished"].all()


def test_figure_size_is_fixed_and_empty_panels_say_why(runs):
    run = run_folders.load_run(runs / "lr-a")
    one = plots.plot_runs([run], metrics=["loss"])
    five = plots.plot_runs([run, run_folders.load_run(runs / "lr-b")])
    assert tuple(one.get_size_inches()) == tuple(five.get_size_inches()) == plots.FIGSIZE
    # eval records carry no token count: their x comes from the train record of the same step
    by_tokens = {
        ax.get_title(): ax for ax in plots.plot_runs([run], metrics=["loss", "eval_loss"], x="tokens").axes
    }
    xs = list(by_tokens["eval loss"].lines[0].get_xdata())
    assert len(xs) == 2 and xs == sorted(xs) and xs[0] > 0
    # a metric the run never logged keeps its panel, which says so
    run.records = [{k: v for k, v in r.items() if k != "grad_norm"} for r in run.records]
    empty = {ax.get_title(): ax for ax in plots.plot_runs([run], metrics=["loss", "grad_norm"]).axes}[
        "gradient norm"
    ]
    assert not empty.lines and "no gradient norm against optimizer step" in empty.texts[0].get_text()


def test_a_glob_lists_only_run_folders(runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(runs / "lr-a", root / "lr-a")
    for kit_folder in ("logs", "comparison", "interactive/data", ".jobs"):  # the kit's own folders in runs/
        (root / kit_folder).mkdir(parents=True)
    (root / "demo.ipynb").write_text("{}")
    found, problems = run_folders.load_runs(str(root / "*"))
    assert [r.name for r in found] == ["lr-a"] and problems == []
    assert run_folders.load_runs(str(root / "l*s"))[1] == [
        f"{root / 'l*s'}: matches no run folder (a folder with recipe.yaml or metrics.jsonl)"
    ]


def test_killed_run_still_plots_and_the_corrupt_line_is_reported(runs):
    run = run_folders.load_run(runs / "killed")
    assert not run.finished and len(run.series("loss")[0]) >= 2
    assert any("line 5" in p and "corrupt" in p for p in run.problems)
    fig = plots.plot_runs([run])
    assert "[unfinished]" in fig.legends[0].get_texts()[0].get_text()


def test_bad_folders_give_clear_messages_and_good_runs_still_plot(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(run_folders.RunError, match="not a run folder"):
        run_folders.load_run(empty)
    found, problems = run_folders.load_runs([runs / "lr-a", empty, tmp_path / "missing"])
    assert [r.name for r in found] == ["lr-a"]
    assert any("not a run folder" in p for p in problems) and any("not a folder" in p for p in problems)
    out = tmp_path / "cmp"
    assert cli(["plot", str(runs / "lr-a"), str(empty), "--out", str(out)]) == 0
    assert (
        (out / "loss_curves.png").exists()
        and (out / "loss_curves.svg").exists()
        and (out / "summary.csv").exists()
    )
    assert "not a run folder" in capsys.readouterr().err
    assert cli(["plot", str(empty)]) == 2


def test_plot_command_writes_into_the_run_folder(runs):
    assert cli(["plot", str(runs / "lr-b")]) == 0
    assert (runs / "lr-b" / "loss_curves.png").exists()
    summary = (runs / "lr-b" / "summary.csv").read_text()
    assert (
        "final loss" in summary
        and json.loads((runs / "lr-b" / "result.json").read_text())["global_step"] == 12
    )


def test_summary_counts_gpu_hours_only_for_gpu_runs(runs):
    run = run_folders.load_run(runs / "lr-a")
    assert run.result["device"] == "cpu"
    assert run_folders.summary_table([run])["GPU-hours"].isna().all()
    run.result["device"] = "cuda"
    hours = run_folders.summary_table([run])["GPU-hours"].iloc[0]
    assert hours == pytest.approx(round(run.result["total_runtime_s"] * run.result["world_size"] / 3600, 3))
