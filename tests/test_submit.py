"""submit's checks against a real Slurm (the shared local cluster: partition debug, 3 nodes, no GPUs).
Nothing here queues a job."""

import subprocess
from pathlib import Path

import pytest
import yaml

from workshop_lib import submit as submit_command
from workshop_lib.paths import REPO_ROOT


def submit(cluster, out_root, *args):
    """The submit command in this process (the CLI path itself runs in test_slurm.py)."""
    import contextlib
    import io
    import os

    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]  # sinfo asks this cluster
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = submit_command.main(["--output-root", str(out_root), *args])
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = old
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def queue(cluster):
    return cluster.run("squeue", "-h", "-o", "%i").stdout


def test_dry_run_shows_everything_and_writes_nothing(cluster, tmp_path):
    out = submit(
        cluster,
        tmp_path,
        "--profile",
        "local",
        "--recipe",
        "recipes/tiny_cpu.yaml",
        "--nodes",
        "3",
        "-p",
        "max_steps",
        "40",
        "--dry-run",
        "--",
        "--time=00:05:00",
        "--qos",
        "high",
    )
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --nodes=3" in out.stdout and "max_steps: 40" in out.stdout
    command = out.stdout.strip().splitlines()[-1]
    assert command.startswith("sbatch --parsable --time=00:05:00 --qos high ") and command.endswith(
        "job.sbatch"
    )
    assert list(tmp_path.iterdir()) == []  # no job folder, no logs folder


def test_the_job_recipe_is_one_merged_file(cluster, tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(
        yaml.safe_dump({"recipe": "recipes/tiny_cpu.yaml", "grid": {"learning_rate": [0.1, 0.2]}})
    )
    out = submit(
        cluster,
        tmp_path / "runs",
        "--profile",
        "local",
        "--sweep",
        str(sweep),
        "-p",
        "max_steps",
        "7",
        "--dry-run",
    )
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --array=0-1" in out.stdout and "%x-%A_%a.out" in out.stdout  # a log per array task
    tasks = [
        yaml.safe_load(block.split("\n", 1)[1].split("\n#", 1)[0]) for block in out.stdout.split("#### ")[1:3]
    ]
    assert [t["learning_rate"] for t in tasks] == [0.1, 0.2] and all(t["max_steps"] == 7 for t in tasks)
    assert all(t["run_name"] == "demo" and t["nnodes"] == 1 for t in tasks)  # the recipe's own keys, merged


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "max_steps", "40", "50"], "unexpected '50' after -p max_steps 40"),
        (["--recipe", "recipes/nope.yaml"], "no such recipe file"),
        (["--profile", "lumii"], "unknown profile 'lumii'"),
        (["-p", "learning_rat", "0.1"], "did you mean 'learning_rate'"),
        (["-p", "num_train_epochs", "many"], "num_train_epochs: expected"),
        (["--profile", "nvidia"], "partition 'gpu' does not exist"),
        (["--", "--partition=nope"], "partition 'nope' does not exist"),
        # the local profile runs offline: a hub model must be in the job's cache before the job is queued
        (["-p", "model", "some-org/not-fetched"], "prefetch some-org/not-fetched --profile local"),
    ],
)
def test_bad_input_gets_one_clear_error_and_queues_nothing(cluster, tmp_path, args, message):
    before = queue(cluster)
    base = ["--recipe", "recipes/tiny_cpu.yaml"] if "--recipe" not in args else []
    base += ["--profile", "local"] if "--profile" not in args else []
    out = submit(cluster, tmp_path, *base, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert queue(cluster) == before and list(tmp_path.iterdir()) == []


def test_gpus_on_a_partition_without_gpus_are_refused(cluster, tmp_path):
    profile = yaml.safe_load((REPO_ROOT / "slurm" / "profiles" / "nvidia.yaml").read_text())
    path = Path(tmp_path / "gpu-here.yaml")
    path.write_text(yaml.safe_dump({**profile, "partition": "debug"}))
    out = submit(cluster, tmp_path / "runs", "--profile", str(path), "--recipe", "recipes/tiny_cpu.yaml")
    assert out.returncode == 2 and "asks for GPUs" in out.stderr and "'debug' has none" in out.stderr, (
        out.stderr
    )


def test_more_nodes_than_the_partition_has_warns(cluster, tmp_path):
    out = submit(
        cluster,
        tmp_path,
        "--profile",
        "local",
        "--recipe",
        "recipes/tiny_cpu.yaml",
        "--nodes",
        "4",
        "--dry-run",
    )
    assert out.returncode == 0 and "partition 'debug' has 3 node(s) and the job asks for 4" in out.stderr, (
        out.stderr
    )


def test_resume_continues_the_runs_own_recipe_and_checks_the_node_count_before_queueing(cluster, tmp_path):
    from workshop_lib.recipe import load_recipe

    runs = tmp_path / "runs"
    ran = load_recipe(
        "recipes/tiny_cpu.yaml",
        overrides={
            "run_name": "r",
            "output_root": str(runs),
            "nnodes": 2,
            "max_steps": 30,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
        },
    )
    (runs / "r").mkdir(parents=True)
    ran.save(runs / "r" / "recipe.yaml")
    before = queue(cluster)
    # 3 nodes cannot keep a global batch of 8 (2 x 4): refused now, not 30 s into the job
    out = submit(cluster, runs, "--profile", "local", "--resume", "--name", "r", "--nodes", "3")
    assert out.returncode == 2 and "cannot be split evenly into 3 x 4" in out.stderr, out.stderr
    assert queue(cluster) == before
    # 1 node: the run's own recipe (max_steps 30, not the recipe file's), the changes said, the batch kept
    out = submit(
        cluster,
        runs,
        "--profile",
        "local",
        "--recipe",
        "recipes/tiny_cpu.yaml",
        "--resume",
        "--name",
        "r",
        "--nodes",
        "1",
        "-p",
        "learning_rate",
        "0.001",
        "--dry-run",
    )
    assert out.returncode == 0, out.stderr
    assert "(--recipe recipes/tiny_cpu.yaml is not used)" in out.stderr, out.stderr
    assert "changed: learning_rate" in out.stderr and "nnodes 2 -> 1" in out.stderr, out.stderr
    assert "gradient_accumulation_steps 1 -> 2, so the global batch stays 8" in out.stderr, out.stderr
    assert "max_steps: 30" in out.stdout and "learning_rate: 0.001" in out.stdout
    # nothing to resume
    out = submit(cluster, runs, "--profile", "local", "--resume", "--name", "nope", "--dry-run")
    assert out.returncode == 2 and "nothing to resume" in out.stderr, out.stderr


def test_the_rendezvous_port_is_chosen_free_below_the_ephemeral_range():
    import socket

    from workshop_lib import ports

    job = 54321
    derived = ports.master_port_for_job(job)
    assert ports.PORTS.start <= derived < 32768  # never in Linux's ephemeral range (32768-60999)
    with socket.socket() as holder:  # another program holds the derived port
        holder.bind(("0.0.0.0", derived))
        holder.listen()
        chosen = ports.choose_master_port(job)
    assert chosen != derived and ports.PORTS.start <= chosen < 32768 and ports.port_is_free(chosen)
    assert chosen not in (derived + 1, derived - 1)  # the neighbouring jobs' own ports
    assert ports.choose_master_port(job) == derived  # free again: the derived one


def test_a_requeued_job_gets_its_own_port_again():
    """The last try's store closed with a client connected (its port in TIME_WAIT for a minute): the next try
    still gets the job's derived port, where torch's store binds (SO_REUSEADDR), not the next job's."""
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from workshop_lib import ports

    job = 54400
    port = ports.choose_master_port(job)
    assert port == ports.master_port_for_job(job)
    store = dist.TCPStore("127.0.0.1", port, 2, True, timedelta(seconds=10), wait_for_workers=False)
    client = dist.TCPStore("127.0.0.1", port, 2, False, timedelta(seconds=10))
    client.set("step", "3")
    del store  # the store's side closes first: its connections wait in TIME_WAIT
    time.sleep(0.2)
    del client
    assert ports.choose_master_port(job) == port
    again = dist.TCPStore("127.0.0.1", port, 1, True, timedelta(seconds=10), wait_for_workers=False)
    assert again.port == port
