"""Every notebook executed headless with papermill, as the demo and the batch jobs run them."""

import json
import os
import subprocess
import sys

import nbformat
import pytest

from workshop_lib import launch, train
from workshop_lib import recipe as R
from workshop_lib.cli import run_notebook
from workshop_lib.model import REPO_ROOT

PAPERMILL = [sys.executable, "-m", "papermill", "--cwd", str(REPO_ROOT)]
FAST = {
    "max_steps": 10,
    "logging_steps": 2,
    "save_steps": 10,
    "eval_strategy": "no",
    "n_generate": 8,
    "nproc_per_node": 1,
    "warmup_steps": 0,
}


def outputs(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    text, kinds = [], set()
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            kinds.add(o.output_type)
            if o.output_type == "stream":
                text.append(o.text)
            for mime in o.get("data", {}):
                kinds.add(mime)
            if o.output_type == "error":
                raise AssertionError(f"{nb_path}: {o.ename}: {o.evalue}")
    return "".join(text), kinds


def test_notebooks_are_committed_without_outputs():
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert all(
            not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"
        ), path
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), (
            f"{path}: no parameters cell"
        )


def test_01_data_formatting(tmp_path):
    out = run_notebook("01_data_formatting", tmp_path, {"output_dir": str(tmp_path / "data")})
    text, kinds = outputs(out)
    assert "image/png" in kinds and "text/html" in kinds  # the stats plot and the conversation view
    assert "unknown role 'assistent'" in text and "kept 2 of 11 rows" in text
    assert len((tmp_path / "data" / "train.jsonl").read_text().splitlines()) == 4000
    assert sorted(p.name for p in (tmp_path / "data" / "converted").iterdir()) == [
        "alpaca_fi.jsonl",
        "prompt_completion.jsonl",
        "qa.jsonl",
        "sharegpt_fi.jsonl",
    ]


def test_02_chat_templates(tmp_path):
    out = run_notebook("02_chat_templates", tmp_path, {"max_length": 32})
    text, kinds = outputs(out)
    assert (
        "⟦<|im_end|>⟧" in text
        and "[FAIL] generation markers" in text
        and "wrapped each assistant answer" in text
    )
    assert "never learns to stop" in text and "recommended max_length" in text and "image/png" in kinds


def test_03_train_two_processes_ddp(tmp_path):
    out = tmp_path / "03.ipynb"
    cmd = [
        *PAPERMILL,
        str(REPO_ROOT / "notebooks" / "03_train.ipynb"),
        str(out),
        "-f",
        str(REPO_ROOT / "recipes" / "tiny_cpu.yaml"),
        "-p",
        "output_root",
        str(tmp_path),
        "-p",
        "run_name",
        "nb-ddp",
    ]
    for k, v in {**FAST, "nproc_per_node": 2}.items():
        cmd += ["-p", k, str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text, _ = outputs(out)
    assert "step    10/10" in text and "held-out exact match" in text
    assert "attempted to send message from fork" not in proc.stderr + text
    result = json.loads((tmp_path / "nb-ddp" / "result.json").read_text())
    assert result["world_size"] == 2 and result["group_size"] == 2


def test_03_train_as_two_nodes(tmp_path):
    """Two papermill runs (as two SLURM nodes would) join one process group of world size 2."""
    port = launch.free_port()
    procs = []
    for rank in (0, 1):
        cmd = [
            *PAPERMILL,
            str(REPO_ROOT / "notebooks" / "03_train.ipynb"),
            str(tmp_path / f"03.node{rank}.ipynb"),
            "-f",
            str(REPO_ROOT / "recipes" / "tiny_cpu.yaml"),
            "-p",
            "output_root",
            str(tmp_path),
            "-p",
            "run_name",
            "two-nodes",
            "-p",
            "nnodes",
            "2",
            "-p",
            "node_rank",
            str(rank),
            "-p",
            "master_addr",
            "127.0.0.1",
            "-p",
            "master_port",
            str(port),
        ]
        for k, v in FAST.items():
            cmd += ["-p", k, str(v)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        )
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    for rank in (0, 1):
        text, _ = outputs(tmp_path / f"03.node{rank}.ipynb")
        assert '"group_size": 2' in text
    result = json.loads((tmp_path / "two-nodes" / "result.json").read_text())
    assert result["world_size"] == 2


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    recipe = train.resolve_paths(
        R.load_recipe(
            REPO_ROOT / "recipes" / "tiny_cpu.yaml",
            overrides={
                **FAST,
                "method": "lora",
                "r": 8,
                "lora_alpha": 16,
                "learning_rate": 1e-2,
                "run_name": "lora",
                "output_root": str(root),
            },
        )
    )
    train.fit(recipe, interactive=False)
    return recipe.run_dir


def test_04_loss_curves(tmp_path, lora_run):
    out = run_notebook("04_loss_curves", tmp_path, {"runs": str(lora_run)})
    text, kinds = outputs(out)
    assert (
        "image/png" in kinds
        and (lora_run / "loss_curves.png").exists()
        and (lora_run / "loss_curves.svg").exists()
    )
    assert (lora_run / "summary.csv").exists()


def test_05_chat_and_export_merges_lora(tmp_path, lora_run):
    out = run_notebook("05_chat_and_export", tmp_path, {"run": str(lora_run), "n_eval": 8})
    text, kinds = outputs(out)
    assert "max |logit difference|" in text and (lora_run / "merged" / "model.safetensors").exists()
    assert "exact match on 8 held-out conversations" in text
