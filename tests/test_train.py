"""Training on the tiny model for real: run folders, resume, DDP/FSDP/DeepSpeed process groups, launcher errors."""

import json
import os

import pytest
import torch

from workshop_lib import launch, train
from workshop_lib import recipe as R
from workshop_lib.model import REPO_ROOT

FAST = dict(
    max_steps=12,
    logging_steps=2,
    save_steps=6,
    eval_strategy="no",
    n_generate=0,
    warmup_steps=0,
    nproc_per_node=1,
)


def make(tmp_path, name, **overrides):
    params = {**FAST, "run_name": name, "output_root": str(tmp_path), **overrides}
    return train.resolve_paths(R.load_recipe(REPO_ROOT / "recipes" / "tiny_cpu.yaml", overrides=params))


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [r["loss"] for r in metrics(run_dir) if "loss" in r]


def test_in_process_run_folder_is_complete_and_never_overwritten(tmp_path):
    r = make(tmp_path, "one", eval_strategy="steps", eval_steps=6, n_generate=8)
    res = train.fit(r, interactive=False)
    run = r.run_dir
    for name in (
        "recipe.yaml",
        "metrics.jsonl",
        "trainer_state.json",
        "result.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "checkpoint-6",
        "checkpoint-12",
    ):
        assert (run / name).exists(), name
    assert res["global_step"] == 12 and res["world_size"] == 1
    assert 0 <= res["exact_match_before"] <= 1 and "examples_after" in res
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert any("eval_loss" in m for m in metrics(run))
    first = metrics(run)[0]
    assert {"learning_rate", "grad_norm", "memory_gb", "epoch"} <= set(first)
    assert any("tokens_per_s" in m for m in metrics(run))
    assert losses(run)[-1] < losses(run)[0]  # it learns
    # the same name again: refused, nothing touched
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(R.RecipeError, match="exists .*resume=True"):
        train.fit(make(tmp_path, "one"), interactive=False)
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_continues_from_last_checkpoint_without_duplicate_steps(tmp_path):
    r = make(tmp_path, "resumed", max_steps=12)
    train.fit(r, interactive=False)
    # pretend the run was killed after step 8: metrics past the last checkpoint, which resume must drop
    import shutil

    shutil.rmtree(r.run_dir / "checkpoint-12")
    (r.run_dir / "result.json").unlink()
    res = train.fit(make(tmp_path, "resumed", max_steps=18, resume=True), interactive=False)
    assert res["resumed_from"] == "checkpoint-6" and res["global_step"] == 18
    steps = [m["step"] for m in metrics(r.run_dir) if "loss" in m]
    assert steps == list(range(2, 19, 2)), steps


def test_ddp_two_processes_form_one_group_and_match_single_process(tmp_path):
    single = train.fit(
        make(
            tmp_path,
            "single",
            per_device_train_batch_size=8,
            max_steps=6,
            logging_steps=1,
            learning_rate=1e-3,
        ),
        interactive=False,
    )
    ddp = train.fit(
        make(
            tmp_path,
            "ddp",
            per_device_train_batch_size=4,
            nproc_per_node=2,
            max_steps=6,
            logging_steps=1,
            learning_rate=1e-3,
        ),
        interactive=False,
    )
    assert set(ddp["ranks"]) == {0, 1} and ddp["wrapped_as"] == "DistributedDataParallel"
    assert all(x["group_size"] == 2 and x["world_size"] == 2 for x in ddp["ranks"].values())
    assert ddp["ranks"][0]["param_digest"] == ddp["ranks"][1]["param_digest"]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(a) == len(b) == 6
    # same global batch of 8 conversations per step: the same losses, up to how the mean over tokens is split
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) / x < 0.03, (a, b)
    assert single["param_digest"] != ddp["param_digest"] or abs(a[-1] - b[-1]) < 1e-6


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_sharded_strategies_train_with_two_processes(tmp_path, strategy):
    res = train.fit(
        make(
            tmp_path,
            strategy,
            distributed=strategy,
            nproc_per_node=2,
            per_device_train_batch_size=4,
            max_steps=4,
            logging_steps=1,
            save_steps=4,
        ),
        interactive=False,
    )
    ranks = res["ranks"]
    assert all(x["group_size"] == 2 for x in ranks.values())
    assert ranks[0]["wrapped_as"] == "DeepSpeedEngine", ranks[0]["wrapped_as"]
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
    assert len(losses(tmp_path / strategy)) == 4
    assert (tmp_path / strategy / "final").exists()


def test_fsdp_on_cpu_is_refused_instead_of_silently_running_ddp(tmp_path):
    # accelerate applies FSDP only to GPU-like devices: with processes on a CPU it would quietly run DDP
    if torch.cuda.is_available():
        res = train.fit(
            make(tmp_path, "fsdp", distributed="fsdp", nproc_per_node=2, max_steps=4), interactive=False
        )
        assert res["ranks"][0]["wrapped_as"] == "FullyShardedDataParallel"
        return
    with pytest.raises(R.RecipeError, match="fsdp needs GPUs"):
        make(tmp_path, "fsdp", distributed="fsdp", nproc_per_node=2)


def _fails_on_rank_one():
    if os.environ["RANK"] == "1":
        raise ValueError("boom on purpose in rank 1")
    import torch.distributed as dist

    return os.environ["RANK"] if not dist.is_initialized() else "ok"


def test_a_failing_worker_fails_with_its_traceback():
    with pytest.raises(launch.LaunchError) as err:
        launch.run(_fails_on_rank_one, nproc_per_node=2, master_port=launch.free_port())
    text = str(err.value)
    assert "rank 1" in text and "boom on purpose in rank 1" in text and "_fails_on_rank_one" in text


def test_cuda_in_the_parent_is_refused_before_forking(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(launch.LaunchError, match="CUDA was initialised"):
        launch.run(_fails_on_rank_one, nproc_per_node=2)


def test_topology_from_slurm_environment(monkeypatch):
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "nid[001002-001003]")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the kit expands the node list itself
    top = launch.topology(nnodes=2, nproc_per_node=8)
    assert (top.node_rank, top.master_addr, top.master_port, top.world_size) == (1, "nid001002", 32345, 16)
    with pytest.raises(launch.LaunchError, match="outside"):
        launch.topology(nnodes=2, node_rank=2)
