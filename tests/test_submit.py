"""submit's checks against a real Slurm (the shared local cluster: partition debug, 3 nodes, no GPUs).
Nothing here queues a job."""

import subprocess
from pathlib import Path

import pytest
import yaml
from slurm_cluster import for_tests

from workshop_lib import submit as submit_command
from workshop_lib.paths import REPO_ROOT


@pytest.fixture(scope="session")
def cluster():
    return for_tests()


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
