"""After training: which run a notebook continues from (runs.pick_run), loss curves of short runs and of SFT
beside DPO, and notebooks 04 and 05 run twice in one kernel as a participant runs them (fast tier: the runs
are a few steps, trained once per module; the pick_run folders are built by hand)."""

import json
import os
import shutil
import time

import pandas as pd
import pytest
import yaml
from kernel_loop import Kernel

from workshop_lib import plots, train
from workshop_lib import recipe as R
from workshop_lib import runs as run_folders
from workshop_lib.control import PREEMPTED_FILE
from workshop_lib.paths import REPO_ROOT

QUICK = dict(save_steps=100, n_generate=0, warmup_steps=0, eval_strategy="no", nproc_per_node=1)


def run_folder(root, name, trainer="sft", final=True, result=True, preempted=False, age_s=0.0):
    """A run folder as training leaves it, written by hand: recipe.yaml, metrics, and (finished) final/ and
    result.json; age_s back-dates it (the newest run is the one with the latest result.json)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump({"trainer": trainer, "model": "tiny", "run_name": name}))
    (path / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 1.0, "time": 1.0}) + "\n")
    if final:
        (path / "final").mkdir()
        (path / "final" / "config.json").write_text("{}")
    if result:
        (path / "result.json").write_text(json.dumps({"train_loss": 1.0, "preempted": False}))
        stamp = time.time() - age_s
        os.utime(path / "result.json", (stamp, stamp))
    if preempted:
        (path / PREEMPTED_FILE).write_text("2\n")
    return path


# ----------------------------------------------------------------------------- pick_run
def test_pick_run_takes_the_newest_finished_run_of_the_trainer_and_says_why(tmp_path):
    old = run_folder(tmp_path, "sft-old", age_s=300)
    new = run_folder(tmp_path, "sft-new", age_s=200)
    run_folder(tmp_path, "dpo-newest", trainer="dpo", age_s=0)  # newer, but another trainer
    run_folder(tmp_path, "still-training", final=False, result=False)
    run_folder(tmp_path, "preempted", result=False, preempted=True)
    (tmp_path / "logs").mkdir()  # the kit's own folders are no candidates
    picked, why = run_folders.pick_run(tmp_path)
    assert picked == new and old.exists()
    assert why == (
        f"starting from {tmp_path / 'sft-new'} (the newest of 2 finished sft runs in {tmp_path}; "
        "3 other run folder(s) there do not fit)"
    )
    assert run_folders.pick_run(tmp_path, "dpo")[0] == tmp_path / "dpo-newest"
    assert "the only finished dpo run" in run_folders.pick_run(tmp_path, "dpo")[1]


def test_pick_run_refuses_with_every_candidate_and_why(tmp_path):
    run_folder(tmp_path, "dpo-run", trainer="dpo")
    run_folder(tmp_path, "still-training", final=False, result=False)
    run_folder(tmp_path, "preempted", preempted=True)  # even with final/ and result.json of an earlier try
    run_folder(tmp_path, "killed-while-saving", result=False)
    with pytest.raises(run_folders.RunError) as err:
        run_folders.pick_run(tmp_path, "sft")
    text = str(err.value)
    assert text.startswith(f"no finished sft run in {tmp_path} to start from. Train one first")
    assert f"{tmp_path / 'dpo-run'}: finished dpo run, not sft" in text
    assert f"{tmp_path / 'still-training'}: sft run without a final/ model yet" in text
    assert f"{tmp_path / 'preempted'}: sft run stopped with a checkpoint (preempted): resume it" in text
    assert f"{tmp_path / 'killed-while-saving'}: sft run without result.json" in text
    assert err.value._render_traceback_() == [f"\x1b[31mRunError\x1b[0m: {text}"]  # IPython: no traceback
    with pytest.raises(run_folders.RunError, match="does not exist yet"):
        run_folders.pick_run(tmp_path / "nothing-here")
    with pytest.raises(run_folders.RunError, match="still-training: sft run without a final/ model"):
        run_folders.finished_run(tmp_path / "still-training")


def test_pick_run_shows_paths_inside_the_repository_as_typed(tmp_path):
    inside = REPO_ROOT / "runs" / f".test-pick-{os.getpid()}"
    try:
        run_folder(inside, "demo-20261205-140312")
        _, why = run_folders.pick_run(inside)
        assert why.startswith(
            f"starting from runs/{inside.name}/demo-20261205-140312 (the only finished sft run"
        )
    finally:
        shutil.rmtree(inside, ignore_errors=True)


# ----------------------------------------------------------------------------- short runs, SFT beside DPO
@pytest.fixture(scope="module")
def trained(tmp_path_factory, short_sft_run):
    """Real runs of a few steps: SFT whose logging_steps (25) is longer than the run (4 steps), and DPO from the
    shared short SFT run, logging every step. About 5 s on 2 cores after the shared SFT run."""
    root = tmp_path_factory.mktemp("after")
    short = R.load_recipe(
        REPO_ROOT / "recipes" / "tiny_cpu.yaml",
        overrides={
            **QUICK,
            # a few hundred rows: each run tokenizes its data, and evaluates the held-out rows
            "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 300}],
            "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
            "max_steps": 4,
            "logging_steps": 25,
            "run_name": "sft-4steps",
            "output_root": str(root),
        },
    )
    train.fit(short)
    dpo = R.load_recipe(
        REPO_ROOT / "recipes" / "tiny_dpo.yaml",
        overrides={
            **QUICK,
            "model": str(short_sft_run / "final"),
            "max_steps": 2,
            "logging_steps": 1,
            "run_name": "dpo-2steps",
            "output_root": str(root),
            "train_file": [{"path": "data/synthetic/pairs_train.jsonl", "max_rows": 16}],
            "eval_file": [{"path": "data/synthetic/pairs_eval.jsonl", "max_rows": 4}],
        },
    )
    train.fit(dpo)
    return root


def test_a_run_shorter_than_logging_steps_shows_its_points_with_values(trained):
    run = run_folders.load_run(trained / "sft-4steps")
    assert not run.series("loss")[0]  # logging_steps 25 > 4 steps: no loss line was logged
    panels = {ax.get_title(): ax for ax in plots.plot_runs([run]).axes}
    assert list(panels) == ["train loss", "eval loss"]  # what was logged; nothing else pretends to be
    loss = panels["train loss"]
    (line,) = loss.lines
    assert list(line.get_xdata()) == [4] and line.get_marker() == "D"  # the run's average, at its end
    assert [t.get_text() for t in loss.texts] == [f"{run.result['train_loss']:.3g} (average over the run)"]
    assert loss.get_xlim()[0] == 0 and loss.get_xlim()[1] >= 4  # the point sits at step 4 of 4
    ev = panels["eval loss"]
    assert ev.lines[0].get_marker() == "o" and ev.texts  # the final evaluation, labelled
    # a metric the run could not log says why
    empty = {ax.get_title(): ax for ax in plots.plot_runs([run], metrics=["loss", "grad_norm"]).axes}
    assert "logging_steps 25 is more\nthan the run's 4 steps" in empty["gradient norm"].texts[0].get_text()
    table = run_folders.summary_table([run]).iloc[0]
    tokens, runtime = run.result["total_tokens"], run.result["total_runtime_s"]
    assert table["tokens/s"] == round(tokens / runtime) and "tokens/s: result.json" in table["note"]
    assert table["final loss"] == pytest.approx(run.result["train_loss"]) and "average" in table["note"]
    # still running (no result.json yet): no number, and the note says why instead of NaN
    run.result = {}
    table = run_folders.summary_table([run]).iloc[0]
    assert table["tokens/s"] == "-" and "fewer than two logged loss lines" in table["note"]


def test_sft_and_dpo_runs_are_drawn_on_separate_panels(trained, short_sft_run):
    found = [run_folders.load_run(p) for p in (short_sft_run, trained / "sft-4steps", trained / "dpo-2steps")]
    assert [r.trainer for r in found] == ["sft", "sft", "dpo"]
    fig = plots.plot_runs(found)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert {"train loss (SFT)", "train loss (DPO)", "preference accuracy (train) (DPO)"} <= set(panels)
    names = {t: {line.get_label().split(" ")[0] for line in ax.lines} for t, ax in panels.items()}
    assert names["train loss (SFT)"] == {"sft-4steps", short_sft_run.name}
    assert names["train loss (DPO)"] == {"dpo-2steps"}  # DPO's loss never on SFT's axes
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    # runs of one trainer are told apart by what differs between them, not by timestamps
    assert labels[0].startswith(f"{short_sft_run.name} (") and "logging_steps=2, max_steps=6" in labels[0]
    assert "dpo-2steps" in labels
    assert fig.get_size_inches()[1] > plots.FIGSIZE[1]  # a second trainer's rows add height, never squeeze


# ----------------------------------------------------------------------------- notebooks in one kernel
def test_04_run_all_twice_in_one_kernel(trained, short_sft_run, tmp_path):
    root = tmp_path / "runs"
    for run in (short_sft_run, trained / "sft-4steps", trained / "dpo-2steps"):
        shutil.copytree(run, root / run.name)
    with Kernel("04_loss_curves.ipynb") as k:
        k.set(runs=str(root / "*"), out_dir=str(tmp_path / "report"))
        k.run_all()
        first = k.text()
        k.run_all()
        assert not k.error_outputs()
        text = k.text()
    assert "3 run(s): dpo-2steps (dpo), sft-4steps (sft), sft-short (sft)" in first and "3 run(s)" in text
    assert "note:" not in text
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert set(table["trainer"]) == {"sft", "dpo"} and table["tokens/s"].notna().all()
    assert (tmp_path / "report" / "loss_curves.png").exists()


def demo_like(root, short_sft_run, trained):
    """runs/ as `make demo` leaves it: the SFT run (with its data/ and notebooks/), then the newer -dpo run."""
    sft = root / "demo-20261205-140312"
    shutil.copytree(short_sft_run, sft)
    (sft / "data").mkdir()
    (sft / "notebooks").mkdir()
    dpo = shutil.copytree(trained / "dpo-2steps", root / "demo-20261205-140312-dpo")
    os.utime(dpo / "result.json")  # finished after the SFT run
    return sft


def test_05_defaults_after_the_demo_run_all_twice_and_a_clear_refusal_first(trained, short_sft_run, tmp_path):
    empty = tmp_path / "nothing-finished"
    run_folder(empty, "still-training", final=False, result=False)
    sft = demo_like(tmp_path / "runs", short_sft_run, trained)
    with Kernel("05_chat_and_export.ipynb", env={"OMP_NUM_THREADS": "1"}) as k:
        k.set(output_root=str(empty), n_eval=4)
        error = k.run()
        assert error is not None and "no finished sft run" in str(error)
        (out,) = [o for c in k.nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert (
            len(out.traceback) == 1 and "still-training: sft run without a final/ model" in out.traceback[0]
        )
        k.clear()
        k.set(output_root=str(tmp_path / "runs"))  # what the message says: train one (here: the demo did)
        k.run_all()
        k.run_all()
        assert not k.error_outputs()
        text = k.text()
        assert f"starting from {sft} (the only finished sft run in {tmp_path / 'runs'}" in text
        bars = [
            o
            for c in k.nb.cells
            for o in c.get("outputs", [])
            if o.output_type == "stream" and o.name == "stderr"
        ]
        bar_text = "".join(o.text for o in bars)
        assert "Loading weights" not in bar_text  # one progress display, not one bar per model
        # one bar for both models: it starts once and ends at 8/8 (tqdm may draw its final state twice: on the
        # last update and again on close, depending on timing, so the end is not counted)
        assert (
            bar_text.count("answering (base, then fine-tuned):   0%") == 1
            and "100%" in bar_text
            and "8/8" in bar_text
        )
        assert "exact match on 4 held-out conversations" in text
