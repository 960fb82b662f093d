"""TensorBoard: every kit run writes event files; plots read a plain TRL run's events, and notebook 04 and the
`plot` command overlay it with a kit run."""

import json

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from workshop_lib import plots, train
from workshop_lib import recipe as R
from workshop_lib import runs as run_folders
from workshop_lib.cli import main as cli
from workshop_lib.demo import run_notebook
from workshop_lib.paths import REPO_ROOT

STEPS = 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/kit: the kit's train.fit; runs/plain-trl: TRL's SFTTrainer as a plain script would use it."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from workshop_lib.model import build_tiny_model

    root = tmp_path_factory.mktemp("runs")
    recipe = R.load_recipe(
        REPO_ROOT / "recipes/tiny_cpu.yaml",
        overrides={
            # a few hundred rows: each run tokenizes its data, and evaluates the held-out rows
            "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 300}],
            "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
            "max_steps": STEPS,
            "logging_steps": 2,
            "save_steps": STEPS,
            "eval_strategy": "steps",
            "eval_steps": 4,
            "n_generate": 0,
            "warmup_steps": 0,
            "nproc_per_node": 1,
            "run_name": "kit",
            "output_root": str(root),
        },
    )
    train.fit(recipe)

    tiny = build_tiny_model()
    data = load_dataset("json", data_files={"train": str(REPO_ROOT / "data/synthetic/train.jsonl")})["train"]
    config = SFTConfig(
        output_dir=str(root / "plain-trl"),
        max_steps=STEPS,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        report_to="tensorboard",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny),
        args=config,
        train_dataset=data.select(range(128)),
        eval_dataset=data.select(range(128, 160)),
        processing_class=AutoTokenizer.from_pretrained(tiny),
    )
    trainer.train()
    return root


def scalars(folder, tag):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_finished_kit_run_writes_tensorboard_events_tensorboard_reads(runs):
    run_dir = runs / "kit"
    folders = {f.parent for f in run_dir.rglob("events.out.tfevents.*")}
    assert len(folders) == 1 and next(iter(folders)).parent == run_dir / "runs"  # <run>/runs/<date>_<host>/
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    jsonl = [(r["step"], r["loss"]) for r in records if "loss" in r]
    events = scalars(next(iter(folders)), "train/loss")
    assert [s for s, _ in events] == [s for s, _ in jsonl] == [2, 4, 6, 8]
    assert [v for _, v in events] == pytest.approx([v for _, v in jsonl], rel=1e-6)
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    assert scalars(next(iter(folders)), "eval/loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in evals]


def test_a_plain_trl_run_reads_as_the_kit_names_its_metrics(runs):
    plain = runs / "plain-trl"
    assert not (plain / "metrics.jsonl").exists() and run_folders.is_run_folder(plain)
    run = run_folders.load_run(plain)
    assert run.source == "tensorboard" and run.finished and not run.params and not run.problems
    (events,) = {f.parent for f in plain.rglob("events.out.tfevents.*")}
    for metric, tag in (
        ("loss", "train/loss"),
        ("eval_loss", "eval/loss"),
        ("learning_rate", "train/learning_rate"),
    ):
        xs, ys = run.series(metric)
        assert list(zip(xs, ys, strict=True)) == scalars(events, tag) and xs, metric
    assert (
        run.series("loss", "epoch")[0] and run.series("loss", "tokens")[0] and run.series("tokens_per_s")[0]
    )
    assert (
        run_folders.tag_to_metric("train/grad_norm") == "grad_norm"
        and run_folders.tag_to_metric("eval/runtime") == "eval_runtime"
    )


def test_notebook_04_and_plot_overlay_a_kit_run_and_a_plain_trl_run(runs, tmp_path):
    out = run_notebook(
        "04_loss_curves",
        tmp_path,
        {"runs": [str(runs / "kit"), str(runs / "plain-trl")], "out_dir": str(tmp_path / "nb")},
    )
    import nbformat

    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert (
        "2 run(s): kit (sft), plain-trl (sft)" in text
        and "plain-trl: read from tensorboard" in text
        and "note:" not in text
    )
    assert any("image/png" in o.get("data", {}) for o in outputs)
    for folder in (tmp_path / "nb", tmp_path / "cli"):
        if folder.name == "cli":
            assert cli(["plot", str(runs / "*"), "--out", str(folder)]) == 0  # a glob finds both kinds
        table = pd.read_csv(folder / "summary.csv").set_index("run")
        assert list(table.index) == ["kit", "plain-trl"] and table["finished"].all()
        for name in ("kit", "plain-trl"):
            _, loss = run_folders.load_run(runs / name).series("loss")
            assert (
                table.loc[name, "final loss"] == pytest.approx(loss[-1]) and table.loc[name, "steps"] == STEPS
            )
        assert (folder / "loss_curves.png").exists()
    fig = plots.plot_runs([run_folders.load_run(runs / "kit"), run_folders.load_run(runs / "plain-trl")])
    loss = next(ax for ax in fig.axes if ax.get_title() == "train loss")
    # 4 loss lines per run: too few to smooth, each point marked, one line per run
    assert len(loss.lines) == 2 and all(line.get_marker() == "o" for line in loss.lines)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["kit", "plain-trl"]
