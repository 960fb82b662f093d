"""Every notebook executed headless with papermill, as the demo and the batch jobs run them.

The papermill runs are processes of their own, so they run in conftest's background lane while the rest of the
suite runs: each test names its scenario (`lane` marker), a function below that runs the notebooks and returns
what they left, and this module, collected after the Slurm module, checks it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kernel_loop import ENV  # os.environ as collected: what the lane's processes get

from workshop_lib import ports
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


def run(cmd: list, env: dict = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT)


def run_notebook(name: str, out_dir: Path, parameters: dict, env: dict = ENV) -> Path:
    """demo.run_notebook (what make demo runs) in a process of its own; the notebook it wrote."""
    code = "import json, sys; from workshop_lib.demo import run_notebook as r; r(*sys.argv[1:3], json.loads(sys.argv[3]))"
    proc = run([sys.executable, "-c", code, name, str(out_dir), json.dumps(parameters)], env=env)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return Path(out_dir) / f"{name}.ipynb"


def setup_check_local(tmp_path_factory):
    return run_notebook(
        "00_setup_check", tmp_path_factory.mktemp("00"), {}, env={**ENV, "HF_HUB_OFFLINE": "1"}
    )


@pytest.mark.slow
@pytest.mark.lane("setup_check_local")
def test_00_setup_check_plans_a_local_model_as_a_table(lane):
    text = shown_text(lane.result("setup_check_local"))
    assert "[PASS] model config: tiny" in text and "[PASS] hub: HF_HUB_OFFLINE=1" in text
    assert "memory per GPU: total (GiB)" in text and "cannot plan" not in text and "memory_gib" not in text


def setup_check_offline(tmp_path_factory):
    """No HF_HUB_OFFLINE and no network (nothing listens at the hub's address), an empty hub cache."""
    tmp = tmp_path_factory.mktemp("00-offline")
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{ports.free_port()}", "HF_HUB_CACHE": str(tmp / "empty-cache")}
    return run_notebook("00_setup_check", tmp, {"plan_model": "LumiOpen/Poro-34B"}, env=env)


@pytest.mark.slow
@pytest.mark.lane("setup_check_offline")
def test_00_setup_check_offline_hub_says_so_at_once(lane):
    """No HF_HUB_OFFLINE and no network: one probe, one line, no minute of hub retries."""
    text = shown_text(lane.result("setup_check_offline"))
    assert "[WARN] hub: 127.0.0.1 cannot be reached" in text
    assert "cannot plan: LumiOpen/Poro-34B is not a local folder nor in the Hugging Face cache" in text
    assert "hf download LumiOpen/Poro-34B" in text


def data_formatting(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("01")
    return run_notebook("01_data_formatting", tmp, {"output_dir": str(tmp / "data")}), tmp / "data"


@pytest.mark.slow
@pytest.mark.lane("data_formatting")
def test_01_data_formatting(lane):
    out, data = lane.result("data_formatting")
    text, kinds = outputs(out)
    assert f"train_file = '{data / 'train.jsonl'}'" in text  # says how 03 trains on it
    assert "image/png" in kinds and "text/html" in kinds  # the stats plot and the conversation view
    assert "unknown role 'assistent'" in text and "kept 2 of 11 rows" in text
    assert len((data / "train.jsonl").read_text().splitlines()) == 4000
    assert sorted(p.name for p in (data / "converted").iterdir()) == [
        "alpaca_fi.jsonl",
        "prompt_completion.jsonl",
        "qa.jsonl",
        "sharegpt_fi.jsonl",
    ]


def chat_templates(tmp_path_factory):
    return run_notebook("02_chat_templates", tmp_path_factory.mktemp("02"), {"max_length": 32})


@pytest.mark.slow
@pytest.mark.lane("chat_templates")
def test_02_chat_templates(lane):
    text, kinds = outputs(lane.result("chat_templates"))
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


def lora_notebooks(tmp_path_factory):
    """Notebook 03 trains a LoRA adapter; 04 plots its loss curves and 05 chats with it and merges it."""
    tmp = tmp_path_factory.mktemp("lora")
    out = tmp / "03.ipynb"
    proc = run(papermill_03(out, output_root=tmp, run_name="lora", method="lora", max_steps=4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lora = tmp / "lora"
    curves = run_notebook("04_loss_curves", tmp, {"runs": str(lora)})
    chat = run_notebook("05_chat_and_export", tmp, {"run": str(lora), "n_eval": 8})
    return {"03": out, "04": curves, "05": chat, "run": lora}


@pytest.mark.slow
@pytest.mark.lane("lora_notebooks")
def test_03_train_lora_shows_the_lora_config(lane):
    nbs = lane.result("lora_notebooks")
    outputs(nbs["03"])  # no error output
    text = shown_text(nbs["03"])  # the LoraConfig keywords are a table (with the kit's reasons)
    assert "LoraConfig keyword" in text and "'all-linear'" in text and "rank of the low-rank update" in text
    assert (nbs["run"] / "final" / "adapter_config.json").exists()


def refused_name(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refused")
    return run(papermill_03(tmp / "03.ipynb", output_root=tmp, learnig_rate=5)), tmp


@pytest.mark.slow
@pytest.mark.lane("refused_name")
def test_03_train_a_name_that_is_no_recipe_key_is_refused_before_anything_is_written(lane):
    proc, tmp = lane.result("refused_name")
    assert (
        proc.returncode != 0
        and "'learnig_rate' is not a recipe key (did you mean 'learning_rate'" in proc.stderr
    )
    assert not any(p.is_dir() and p.name.startswith("demo-") for p in tmp.iterdir())  # nothing written


def ddp_then_the_same_name(tmp_path_factory):
    """Two processes, full weights; then the same run name again."""
    tmp = tmp_path_factory.mktemp("ddp")
    proc = run(papermill_03(tmp / "03.ipynb", output_root=tmp, nproc_per_node=2, max_steps=10))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p for p in tmp.iterdir() if p.is_dir() and p.name.startswith("demo-")]  # a fresh run name
    result = json.loads((run_dir / "result.json").read_text())
    again = run(papermill_03(tmp / "again.ipynb", output_root=tmp, run_name=run_dir.name, max_steps=10))
    return proc, tmp / "03.ipynb", run_dir, result, again


@pytest.mark.slow
@pytest.mark.lane("ddp_then_the_same_name")
def test_03_train_two_processes_ddp_and_the_same_name_again(lane):
    """Notebook 03 under papermill, full weights on two processes (the in-process path runs in the notebook-loop
    and browser tests); then the same run name again: one short message, nothing overwritten."""
    proc, out, run_dir, result, again = lane.result("ddp_then_the_same_name")
    assert "Passed unknown parameter" not in proc.stderr  # every parameter papermill sets is declared
    text, kinds = outputs(out)
    assert "recipe file" in text or "text/html" in kinds  # the recipe table: where each value comes from
    for shown in ("step    10/10", "def train("):  # the workers' own function, shown
        assert shown in text, shown
    assert "held-out exact match: before 0.0% -> after" in text and "Setting accelerator" not in text
    assert "application/vnd.jupyter.widget-view+json" not in kinds  # no progress-bar widgets left in the file
    assert "attempted to send message from fork" not in proc.stderr + text
    assert result["world_size"] == 2 and result["group_size"] == 2 and result["global_step"] == 10
    assert result["exact_match_n"] == 8 and result["tries"] == 1
    # the same name again: one short message that says what exists and what to do, no traceback
    assert again.returncode != 0 and "resume = True" in again.stderr and "run_name = None" in again.stderr
    assert json.loads((run_dir / "result.json").read_text()) == result  # nothing overwritten


def two_nodes(tmp_path_factory):
    """Two papermill runs (as two SLURM nodes would) of one run, each with its node_rank."""
    tmp = tmp_path_factory.mktemp("two-nodes")
    port = ports.free_port()
    procs = []
    for rank in (0, 1):
        cmd = papermill_03(
            tmp / f"03.node{rank}.ipynb",
            output_root=tmp,
            run_name="two-nodes",
            nnodes=2,
            node_rank=rank,
            master_addr="127.0.0.1",
            master_port=port,
            max_steps=10,
        )
        env = {**ENV, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
            )
        )
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    return tmp


@pytest.mark.slow
@pytest.mark.lane("two_nodes")
def test_03_train_as_two_nodes(lane):
    """Two papermill runs (as two SLURM nodes would) join one process group of world size 2."""
    tmp = lane.result("two_nodes")
    digests = []
    for rank in (0, 1):
        outputs(tmp / f"03.node{rank}.ipynb")  # no error output
        text = shown_text(tmp / f"03.node{rank}.ipynb")  # the result is a table
        assert re.search(r"processes\s+2 ", text), text[-2000:]
        digests.append(re.search(r"parameter digest\s+(\w+)", text).group(1))
    assert digests[0] == digests[1]
    result = json.loads((tmp / "two-nodes" / "result.json").read_text())
    assert result["world_size"] == 2


@pytest.mark.slow
@pytest.mark.lane("lora_notebooks")
def test_04_loss_curves(lane):
    nbs = lane.result("lora_notebooks")
    text, kinds = outputs(nbs["04"])
    run_dir = nbs["run"]
    assert "note:" not in text and "1 run(s): lora" in text
    assert (
        "image/png" in kinds
        and (run_dir / "loss_curves.png").exists()
        and (run_dir / "loss_curves.svg").exists()
    )
    assert (run_dir / "summary.csv").exists()


@pytest.mark.slow
@pytest.mark.lane("lora_notebooks")
def test_05_chat_and_export_merges_lora(lane):
    nbs = lane.result("lora_notebooks")
    text, kinds = outputs(nbs["05"])
    assert "max |logit difference|" in text and (nbs["run"] / "merged" / "model.safetensors").exists()
    assert "exact match on 8 held-out conversations" in text
    shown = shown_text(nbs["05"])
    assert "stops on" in shown and '"stops on"' not in shown  # a table, not a JSON dump
    nb = nbformat.read(nbs["05"], as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert (
        "user: " in html and "<th style='text-align:left'>prompt</th>" in html
    )  # whole prompts in the table
