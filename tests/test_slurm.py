"""The training notebook as SLURM batch jobs, on a real 2-node Slurm cluster started on localhost."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import LocalSlurm, unavailable
from test_notebooks import outputs

from workshop_lib.model import REPO_ROOT

FAST = {
    "max_steps": 10,
    "logging_steps": 2,
    "save_steps": 100,
    "eval_strategy": "no",
    "n_generate": 0,
    "nproc_per_node": 1,
    "warmup_steps": 0,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(f"no local Slurm cluster: {why}")
    c = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=2)
    seconds = c.start()
    print(f"\nlocal Slurm cluster up in {seconds:.2f} s")
    yield c
    c.stop()


def submit(cluster, out_root, *args, params=FAST, check=True):
    cmd = [
        sys.executable,
        "-m",
        "workshop_lib",
        "submit",
        "--profile",
        "local",
        "--output-root",
        str(out_root),
        *args,
    ]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, cwd=REPO_ROOT, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
        return re.search(r"submitted job (\d+)", out.stdout).group(1), out
    return None, out


def log_of(out_root, name, job_id):
    return (Path(out_root) / "logs" / f"{name}-{job_id}.out").read_text(errors="replace")


def test_two_node_training_job(cluster, tmp_path):
    t0 = time.time()
    job, out = submit(cluster, tmp_path, "--recipe", "recipes/tiny_cpu.yaml", "--nodes", "2", "--name", "two")
    assert f"{tmp_path}/logs/two-{job}.out" in out.stdout
    info = cluster.wait(job, timeout=600)
    wall = time.time() - t0
    log = log_of(tmp_path, "two", job)
    assert info["JobState"] == "COMPLETED", log[-3000:]
    print(f"\n2-node training job wall time: {wall:.1f} s")
    run = tmp_path / "two"
    texts = [outputs(run / "notebooks" / f"03_train.node{r}.try0.ipynb")[0] for r in (0, 1)]
    digests = [re.search(r'"param_digest": "(\w+)"', t).group(1) for t in texts]
    assert digests[0] == digests[1]  # both nodes ended with the same parameters
    assert all('"group_size": 2' in t and '"world_size": 2' in t for t in texts)
    assert (run / "loss_curves.png").exists() and (run / "result.json").exists()
    assert "step    10/10" in log  # papermill --log-output: the training progress is in the job log


def test_sweep_runs_as_a_job_array(cluster, tmp_path):
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "recipe": "recipes/tiny_cpu.yaml",
                "name": "lr",
                "grid": {"learning_rate": [1.0e-3, 3.0e-3]},
                "fixed": FAST,
            }
        )
    )
    job, out = submit(cluster, tmp_path, "--sweep", str(sweep), params={})
    deadline = time.time() + 600
    while time.time() < deadline:
        states = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.split()
        if not states:
            break
        time.sleep(1)
    for i, lr in enumerate([1.0e-3, 3.0e-3]):
        run = tmp_path / f"lr-{i}"
        assert (run / "result.json").exists(), (tmp_path / "logs").iterdir()
        assert yaml.safe_load((run / "recipe.yaml").read_text())["learning_rate"] == lr
        assert (run / "notebooks" / "03_train.node0.try0.ipynb").exists()


def test_preemption_requeues_and_resumes_to_the_same_parameters(cluster, tmp_path):
    params = {**FAST, "max_steps": 60, "logging_steps": 5}
    job, _ = submit(cluster, tmp_path, "--recipe", "recipes/tiny_cpu.yaml", "--name", "pre", params=params)
    metrics = tmp_path / "pre" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    assert metrics.exists(), log_of(tmp_path, "pre", job)
    cluster.run(
        "scancel", "--signal=USR1", "--batch", job
    )  # what --signal=B:USR1@N sends before the time limit
    deadline = time.time() + 600
    while time.time() < deadline and not (tmp_path / "pre" / "result.json").exists():
        time.sleep(1)
    info = cluster.wait(job, timeout=120)
    log = log_of(tmp_path, "pre", job)
    assert info["JobState"] == "COMPLETED" and int(info.get("Restarts", 0)) >= 1, log[-3000:]
    assert "requeueing job" in log and "try 1" in log
    result = json.loads((tmp_path / "pre" / "result.json").read_text())
    assert result["resumed_from"] and result["global_step"] == 60
    steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    assert steps == list(range(5, 61, 5)), steps  # no step duplicated or missing
    # the same recipe uninterrupted, here in-process: the same final parameters
    from workshop_lib import recipe as R
    from workshop_lib import train

    straight = train.fit(
        train.resolve_paths(
            R.load_recipe(
                REPO_ROOT / "recipes" / "tiny_cpu.yaml",
                overrides={**params, "run_name": "straight", "output_root": str(tmp_path)},
            )
        ),
        interactive=False,
    )
    assert straight["param_digest"] == result["param_digest"]


def _workers_on_node(job_id: str, node: str) -> list[int]:
    """Training workers of one node: processes of the job on that node whose parent is the notebook kernel.
    (Forked workers set RANK after the fork, so /proc/<pid>/environ, the exec-time environment, lacks it.)"""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(x.split(b"=", 1) for x in (proc / "environ").read_bytes().split(b"\0") if b"=" in x)
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if (
            env.get(b"SLURM_JOB_ID") == job_id.encode()
            and env.get(b"SLURM_NODEID") == node.encode()
            and b"ipykernel" in parent
        ):
            pids.append(int(proc.name))
    return pids


def test_a_killed_rank_ends_the_job_fast_with_its_error(cluster, tmp_path):
    params = {**FAST, "max_steps": 2000, "logging_steps": 5, "collective_timeout_s": 1800}
    job, _ = submit(
        cluster,
        tmp_path,
        "--recipe",
        "recipes/tiny_cpu.yaml",
        "--nodes",
        "2",
        "--name",
        "crash",
        params=params,
    )
    metrics = tmp_path / "crash" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.5)
    pids = _workers_on_node(job, "1")
    assert pids, "the worker of node 1 (rank 1) was not found"
    t_kill = time.time()
    for pid in pids:
        os.kill(pid, 9)
    info = cluster.wait(job, timeout=150)
    took = time.time() - t_kill
    log = log_of(tmp_path, "crash", job)
    assert info["JobState"] in ("FAILED", "CANCELLED"), info
    assert took < 120, f"the job took {took:.0f} s to end after the kill (collective timeout 1800 s)"
    assert "training failed" in log
    tail = log[-400:]  # the root cause is the last thing in the job log
    assert "ROOT CAUSE" in tail and "rank 1" in tail and "SIGKILL" in tail, tail
    print(f"\nkilled rank 1: job ended {took:.1f} s later")


def test_an_exception_in_training_ends_the_job_with_the_traceback_last(cluster, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    job, _ = submit(
        cluster,
        tmp_path,
        "--recipe",
        "recipes/tiny_cpu.yaml",
        "--nodes",
        "2",
        "--name",
        "exc",
        params={**FAST, "train_file": str(bad)},
    )
    info = cluster.wait(job, timeout=300)
    log = log_of(tmp_path, "exc", job)
    assert info["JobState"] == "FAILED"
    tail = log[-1500:]
    assert "ROOT CAUSE" in tail and "no assistant turn" in tail and "bad.jsonl:line 1" in tail, tail


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "recipes/nope.yaml"], "no such recipe file"),
        (["--recipe", "recipes/tiny_cpu.yaml", "--profile", "lumii"], "unknown profile 'lumii'"),
        (["--recipe", "recipes/tiny_cpu.yaml", "-p", "learning_rat", "0.1"], "did you mean 'learning_rate'"),
        (
            ["--recipe", "recipes/tiny_cpu.yaml", "-p", "num_train_epochs", "many"],
            "num_train_epochs: expected",
        ),
    ],
)
def test_bad_submit_input_queues_nothing(cluster, tmp_path, args, message):
    before = cluster.run("squeue", "-h", "-o", "%i").stdout
    cmd = [sys.executable, "-m", "workshop_lib", "submit", "--output-root", str(tmp_path)]
    if "--profile" not in args:
        cmd += ["--profile", "local"]
    out = subprocess.run(
        cmd + args, capture_output=True, text=True, env=cluster.env, cwd=REPO_ROOT, timeout=120
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert cluster.run("squeue", "-h", "-o", "%i").stdout == before
