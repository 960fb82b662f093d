"""Every notebook executed headless with papermill, as the demo and the batch jobs run them."""

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from workshop_lib import ports, train
from workshop_lib import recipe as R
from workshop_lib.demo import run_notebook
from workshop_lib.model import REPO_ROOT

PAPERMILL = [sys.executable, "-m", "papermill", "--engine", "workshop", "--cwd", str(REPO_ROOT)]
FAST = {
    # a few hundred rows: every run tokenizes its data (the whole file is 4000 conversations)
    "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 400}],
    "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
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


def shown_text(nb_path) -> str:
    """Streams and the text/plain of displayed objects (tables), as a reader sees them."""
    nb = nbformat.read(nb_path, as_version=4)
    return "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        for o in c.get("outputs", [])
    )


@pytest.mark.slow
def test_00_setup_check_plans_a_local_model_as_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = shown_text(run_notebook("00_setup_check", tmp_path, {}))
    assert "[PASS] model config: tiny" in text and "[PASS] hub: HF_HUB_OFFLINE=1" in text
    assert "memory per GPU: total (GiB)" in text and "cannot plan" not in text and "memory_gib" not in text


@pytest.mark.slow
def test_00_setup_check_offline_hub_says_so_at_once(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE and no network: one probe, one line, no minute of hub retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{ports.free_port()}")  # nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = run_notebook("00_setup_check", tmp_path, {"plan_model": "LumiOpen/Poro-34B"})
    text = shown_text(out)
    assert "[WARN] hub: 127.0.0.1 cannot be reached" in text
    assert "cannot plan: LumiOpen/Poro-34B is not a local folder nor in the Hugging Face cache" in text
    assert "hf download LumiOpen/Poro-34B" in text


@pytest.mark.slow
def test_01_data_formatting(tmp_path):
    out = run_notebook("01_data_formatting", tmp_path, {"output_dir": str(tmp_path / "data")})
    text, kinds = outputs(out)
    assert f"train_file = '{tmp_path / 'data' / 'train.jsonl'}'" in text  # says how 03 trains on it
    assert "image/png" in kinds and "text/html" in kinds  # the stats plot and the conversation view
    assert "unknown role 'assistent'" in text and "kept 2 of 11 rows" in text
    assert len((tmp_path / "data" / "train.jsonl").read_text().splitlines()) == 4000
    assert sorted(p.name for p in (tmp_path / "data" / "converted").iterdir()) == [
        "alpaca_fi.jsonl",
        "prompt_completion.jsonl",
        "qa.jsonl",
        "sharegpt_fi.jsonl",
    ]


@pytest.mark.slow
def test_02_chat_templates(tmp_path):
    out = run_notebook("02_chat_templates", tmp_path, {"max_length": 32})
    text, kinds = outputs(out)
    assert (
        "⟦<|im_end|>⟧" in text
        and "[FAIL] generation markers" in text
        and "wrapped each assistant answer" in text
    )
    assert "never learns to stop" in text and "recommended max_length" in text and "image/png" in kinds


def papermill_03(out, **params):
    """papermill on notebook 03 with declared parameters (-p) and other recipe keys in overrides (-y)."""
    fast = {k: v for k, v in FAST.items() if k != "nproc_per_node"}
    cmd = [
        *PAPERMILL,
        str(REPO_ROOT / "notebooks" / "03_train.ipynb"),
        str(out),
        "-y",
        json.dumps({"overrides": fast}),
    ]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    return cmd


@pytest.mark.slow
def test_03_train_lora_shows_the_lora_config(tmp_path):
    out = tmp_path / "03.ipynb"
    cmd = papermill_03(out, output_root=tmp_path, run_name="lora03", method="lora", max_steps=4)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs(out)  # no error output
    text = shown_text(out)  # the LoraConfig keywords are a table (with the kit's reasons)
    assert "LoraConfig keyword" in text and "'all-linear'" in text and "rank of the low-rank update" in text
    assert (tmp_path / "lora03" / "final" / "adapter_config.json").exists()


@pytest.mark.slow
def test_03_train_a_name_that_is_no_recipe_key_is_refused_before_anything_is_written(tmp_path):
    cmd = papermill_03(tmp_path / "03.ipynb", output_root=tmp_path, learnig_rate=5)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert (
        proc.returncode != 0
        and "'learnig_rate' is not a recipe key (did you mean 'learning_rate'" in proc.stderr
    )
    assert not any(p.is_dir() and p.name.startswith("demo-") for p in tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_03_train_two_processes_ddp_and_the_same_name_again(tmp_path):
    """Notebook 03 under papermill, full weights on two processes (the in-process path runs in the notebook-loop
    and browser tests); then the same run name again: one short message, nothing overwritten."""
    out = tmp_path / "03.ipynb"
    proc = subprocess.run(
        papermill_03(out, output_root=tmp_path, nproc_per_node=2, max_steps=10),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Passed unknown parameter" not in proc.stderr  # every parameter papermill sets is declared
    text, kinds = outputs(out)
    assert "recipe file" in text or "text/html" in kinds  # the recipe table: where each value comes from
    for shown in ("step    10/10", "def train("):  # the workers' own function, shown
        assert shown in text, shown
    assert "held-out exact match: before 0.0% -> after" in text and "Setting accelerator" not in text
    assert "application/vnd.jupyter.widget-view+json" not in kinds  # no progress-bar widgets left in the file
    assert "attempted to send message from fork" not in proc.stderr + text
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("demo-")]  # a fresh run name
    result = json.loads((run / "result.json").read_text())
    assert result["world_size"] == 2 and result["group_size"] == 2 and result["global_step"] == 10
    assert result["exact_match_n"] == 8 and result["tries"] == 1
    # run again with the same name: one short message that says what exists and what to do, no traceback
    again = subprocess.run(
        papermill_03(tmp_path / "again.ipynb", output_root=tmp_path, run_name=run.name, max_steps=10),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode != 0 and "resume = True" in again.stderr and "run_name = None" in again.stderr
    assert json.loads((run / "result.json").read_text()) == result  # nothing overwritten


@pytest.mark.slow
def test_03_train_as_two_nodes(tmp_path):
    """Two papermill runs (as two SLURM nodes would) join one process group of world size 2."""
    port = ports.free_port()
    procs = []
    for rank in (0, 1):
        cmd = papermill_03(
            tmp_path / f"03.node{rank}.ipynb",
            output_root=tmp_path,
            run_name="two-nodes",
            nnodes=2,
            node_rank=rank,
            master_addr="127.0.0.1",
            master_port=port,
            max_steps=10,
        )
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        )
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    digests = []
    for rank in (0, 1):
        outputs(tmp_path / f"03.node{rank}.ipynb")  # no error output
        text = shown_text(tmp_path / f"03.node{rank}.ipynb")  # the result is a table
        assert re.search(r"processes\s+2 ", text), text[-2000:]
        digests.append(re.search(r"parameter digest\s+(\w+)", text).group(1))
    assert digests[0] == digests[1]
    result = json.loads((tmp_path / "two-nodes" / "result.json").read_text())
    assert result["world_size"] == 2


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    recipe = R.load_recipe(
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
    train.fit(recipe)
    return recipe.run_dir


@pytest.mark.slow
def test_04_loss_curves(tmp_path, lora_run):
    out = run_notebook("04_loss_curves", tmp_path, {"runs": str(lora_run)})
    text, kinds = outputs(out)
    assert "note:" not in text and "1 run(s): lora" in text
    assert (
        "image/png" in kinds
        and (lora_run / "loss_curves.png").exists()
        and (lora_run / "loss_curves.svg").exists()
    )
    assert (lora_run / "summary.csv").exists()


@pytest.mark.slow
def test_05_chat_and_export_merges_lora(tmp_path, lora_run):
    out = run_notebook("05_chat_and_export", tmp_path, {"run": str(lora_run), "n_eval": 8})
    text, kinds = outputs(out)
    assert "max |logit difference|" in text and (lora_run / "merged" / "model.safetensors").exists()
    assert "exact match on 8 held-out conversations" in text
    shown = shown_text(out)
    assert "stops on" in shown and '"stops on"' not in shown  # a table, not a JSON dump
    nb = nbformat.read(out, as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert (
        "user: " in html and "<th style='text-align:left'>prompt</th>" in html
    )  # whole prompts in the table
