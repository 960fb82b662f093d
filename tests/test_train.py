"""Training on the tiny model for real: builders, run folders, resume (exact, across tries and world sizes),
DDP and DeepSpeed process groups, launcher errors."""

import json
import logging
import os
import shutil

import pytest
import torch

from workshop_lib import build, chat, launch, ports, runfolder, train
from workshop_lib import recipe as R
from workshop_lib.paths import REPO_ROOT

FAST = dict(
    # a few hundred rows: every run tokenizes its data (the whole file is 4000 conversations)
    train_file=[{"path": "data/synthetic/train.jsonl", "max_rows": 400}],
    eval_file=[{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
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
    return R.load_recipe(REPO_ROOT / "recipes" / "tiny_cpu.yaml", overrides=params)


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [r["loss"] for r in metrics(run_dir) if "loss" in r]


def cut_back_to(run_dir, step):
    """What a run killed after checkpoint-<step> leaves: later checkpoints, final model and result gone."""
    for ckpt in run_dir.glob("checkpoint-*"):
        if runfolder.checkpoint_step(ckpt) > step:
            shutil.rmtree(ckpt)
    for name in ("final",):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("result.json", "trainer_state.json"):
        (run_dir / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- builders, one by one
def test_builders_one_by_one(tmp_path):
    recipe = make(tmp_path, "b", max_length=40, method="lora", r=4)
    tok, report = build.tokenizer(recipe)
    assert report.ok and report.end_of_turn == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id

    train_ds, eval_ds, eval_rows = build.datasets(recipe, tok)
    assert 0 < len(eval_ds) < len(eval_rows)  # rows whose answers all lie past 40 tokens are dropped
    assert max(map(len, train_ds["input_ids"])) <= 40  # cut by the kit (padding-free: TRL does not)
    for ids, labels in zip(train_ds["input_ids"][:50], train_ds["labels"][:50], strict=True):
        trained = [t for t, lab in zip(ids, labels, strict=True) if lab != chat.IGNORE]
        assert trained and all(lab in (chat.IGNORE, t) for t, lab in zip(ids, labels, strict=True))

    model = build.model(recipe, tok)
    assert model.dtype == torch.float32  # CPU: fp32 (bf16 only on request)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids(chat.end_of_turn_token(tok))

    lora = build.lora_config(recipe, model)
    assert lora.r == 4 and lora.lora_alpha == 32 and not lora.modules_to_save  # no new tokens here
    assert build.lora_config(make(tmp_path, "full"), model) is None

    args, why = build.trl_args(recipe)
    assert args["use_cpu"] is True and args["bf16"] is False and args["assistant_only_loss"] is False
    assert args["max_length"] is None and args["output_dir"] == str(recipe.run_dir)
    assert {"use_cpu", "bf16", "assistant_only_loss", "max_length"} <= set(why)
    zero3, why3 = build.trl_args(make(tmp_path, "z", distributed="zero3", nproc_per_node=2))
    assert zero3["deepspeed"]["zero_optimization"]["stage"] == 3 and "deepspeed" in why3
    if not torch.cuda.is_available():  # a QLoRA recipe loads and plans anywhere; training it needs a GPU
        with pytest.raises(R.RecipeError, match="qlora .* needs a CUDA GPU"):
            build.model(make(tmp_path, "q", method="qlora"), tok)
    names = [type(c).__name__ for c in build.callbacks(recipe)]
    assert names == ["MetricsJSONL", "StopOnRequest"]


def test_labels_reaching_the_model_equal_the_token_view(tmp_path, monkeypatch):
    """The labels TRL's loss receives during real training (the batch passed to model(**inputs)) are the
    ones notebook 02 shows for that conversation."""
    from trl import SFTTrainer

    rows = [json.loads(x) for x in (REPO_ROOT / "data/synthetic/eval.jsonl").read_text().splitlines()[:1]]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(rows[0]) + "\n")
    seen = []
    compute_loss = SFTTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append((inputs["input_ids"][0].tolist(), inputs["labels"][0].tolist()))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", spy)
    recipe = make(
        tmp_path, "labels", train_file=str(one), eval_file=None, max_steps=1, per_device_train_batch_size=1
    )
    train.fit(recipe)
    view = chat.token_view(rows[0]["messages"], build.tokenizer(recipe)[0])
    ids, labels = seen[0]
    assert ids == view.ids
    assert [lab != chat.IGNORE for lab in labels] == view.trained
    assert all(lab in (chat.IGNORE, t) for t, lab in zip(ids, labels, strict=True))


# ----------------------------------------------------------------------------- run folders and resume
@pytest.mark.slow
def test_in_process_run_folder_is_complete_and_never_overwritten(tmp_path):
    r = make(tmp_path, "one", eval_strategy="steps", eval_steps=6)
    res = train.fit(r)
    run = r.run_dir
    for name in ("recipe.yaml", "metrics.jsonl", "trainer_state.json", "result.json", "tries.jsonl"):
        assert (run / name).exists(), name
    for name in ("final/model.safetensors", "final/tokenizer.json", "checkpoint-6", "checkpoint-12"):
        assert (run / name).exists(), name
    assert res.global_step == 12 and res.world_size == 1 and res.eval_loss is not None
    assert [m["step"] for m in metrics(run) if "loss" in m] == [2, 4, 6, 8, 10, 12]
    assert any("eval_loss" in m for m in metrics(run))
    assert {"learning_rate", "grad_norm", "memory_gb", "epoch", "num_tokens"} <= set(metrics(run)[0])
    assert losses(run)[-1] < losses(run)[0]  # it learns
    result = json.loads((run / "result.json").read_text())
    assert result["tries"] == 1 and result["total_tokens"] == res.tokens > 0
    # the same name again: refused, nothing touched
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(runfolder.RunExists, match="exists .*resume = True"):
        train.fit(make(tmp_path, "one"))
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_a_stop_request_before_training_is_kept_until_training_acts_on_it(tmp_path):
    """A Slurm signal can arrive while a try is still loading: the STOP file must survive until training
    reads it; then the run checkpoints, stops, and resumes with tokens and runtime summed over tries."""
    straight = train.fit(make(tmp_path, "straight"))
    r = make(tmp_path, "stopped")
    runfolder.prepare(r)
    (r.run_dir / runfolder.STOP_FILE).write_text("")
    first = train.fit(make(tmp_path, "stopped", resume=True))
    assert first.preempted and first.global_step == 1 and (r.run_dir / "checkpoint-1").exists()
    assert (r.run_dir / runfolder.PREEMPTED_FILE).exists() and not (r.run_dir / runfolder.STOP_FILE).exists()
    assert not (r.run_dir / "result.json").exists()
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("transformers.trainer").addHandler(handler)
    try:
        second = train.fit(make(tmp_path, "stopped", resume=True))
    finally:
        logging.getLogger("transformers.trainer").removeHandler(handler)
    assert not [w for w in warnings if "missing keys" in w]  # tied lm_head.weight is not missing: no alarm
    assert second.resumed_from == "checkpoint-1" and second.global_step == 12
    assert second.param_digest == straight.param_digest  # resume is exact
    result = json.loads((r.run_dir / "result.json").read_text())
    assert result["tries"] == 2
    assert result["total_tokens"] == straight.tokens  # not restarted at 0 by the resume
    tries = runfolder.tries(r.run_dir)  # numbered on, each with its own tokens and how it ended
    assert [(t["try"], t["ended"]) for t in tries] == [(0, "preempted"), (1, "finished")], tries
    assert sum(t["tokens"] for t in tries) == tries[-1]["total_tokens"] == straight.tokens
    assert result["total_runtime_s"] == pytest.approx(first.runtime_s + second.runtime_s)
    logged = [m for m in metrics(r.run_dir) if "loss" in m]
    assert [m["step"] for m in logged] == [2, 4, 6, 8, 10, 12]
    assert logged[0]["loss_window"] == 1  # the first average after the resume covers step 2 only: marked
    assert all("loss_window" not in m for m in logged[1:])


@pytest.mark.slow
def test_resume_on_another_world_size_keeps_the_global_batch(tmp_path, capsys):
    params = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=6, save_steps=3)
    r = make(tmp_path, "grow", **params)
    train.fit(r)
    cut_back_to(r.run_dir, 3)
    res = train.fit(make(tmp_path, "grow", resume=True, nproc_per_node=2, **params))
    assert "gradient_accumulation_steps 2 -> 1, so the global batch stays 8" in capsys.readouterr().out
    assert res.global_step == 6 and res.group_size == 2 and res.resumed_from == "checkpoint-3"
    # recipe.yaml (and so the model card) says what the run trains with now; tries.jsonl what each try used
    recorded = R.load_recipe(r.run_dir / "recipe.yaml")
    assert recorded.nproc_per_node == 2 and recorded.trl["gradient_accumulation_steps"] == 1
    used = [(t["world_size"], t["gradient_accumulation_steps"]) for t in runfolder.tries(r.run_dir)]
    assert used == [(1, 2), (2, 1)], used
    with pytest.raises(R.RecipeError, match="zero3 checkpoints are sharded per rank"):
        runfolder.prepare(
            make(tmp_path, "grow", resume=True, nproc_per_node=1, distributed="zero3", **params)
        )


@pytest.mark.slow
def test_train_command_runs_the_same_path_and_scores_before_and_after(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "workshop_lib", "train", "recipes/tiny_cpu.yaml", "-p", "run_name", "cli"]
    for k, v in {**FAST, "output_root": tmp_path, "max_steps": 4, "n_generate": 4}.items():
        cmd += ["-p", k, str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step     4/4" in proc.stdout and "train: finished at step 4/4" in proc.stdout
    result = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert result["exact_match_n"] == 4 and {"exact_match_before", "exact_match_after"} <= set(result)
    bad = subprocess.run([*cmd[:5], "-p", "learning_rat", "1"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and "did you mean 'learning_rate'" in bad.stderr


# ----------------------------------------------------------------------------- several processes
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    shared = dict(
        per_device_train_batch_size=4, max_steps=6, logging_steps=1, learning_rate=1e-3, save_steps=6
    )
    res = train.fit(make(root, "ddp", nproc_per_node=2, **shared))
    return root, shared, res


@pytest.mark.slow
def test_ddp_two_processes_form_one_group_and_match_single_process(tmp_path, ddp_run):
    root, shared, ddp = ddp_run
    train.fit(make(tmp_path, "single", **{**shared, "per_device_train_batch_size": 8}))
    assert set(ddp.ranks) == {0, 1} and ddp.wrapped_as == "DistributedDataParallel"
    assert all(x.group_size == 2 and x.world_size == 2 for x in ddp.ranks.values())
    assert ddp.ranks[0].param_digest == ddp.ranks[1].param_digest
    a, b = losses(tmp_path / "single"), losses(root / "ddp")
    assert len(a) == len(b) == 6
    # the same global batch of 8 conversations per step: the same losses, up to how the token mean is split
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) / x < 0.03, (a, b)


@pytest.mark.parametrize("strategy, stage", [("zero2", 2), ("zero3", 3)])
@pytest.mark.slow
def test_zero_stages_shard_as_named_and_train_like_ddp(tmp_path, ddp_run, strategy, stage):
    root, shared, ddp = ddp_run
    res = train.fit(make(tmp_path, strategy, distributed=strategy, nproc_per_node=2, **shared))
    ranks = res.ranks
    assert all(x.group_size == 2 for x in ranks.values())
    assert ranks[0].wrapped_as == f"DeepSpeedEngine(zero_stage={stage})", ranks[0].wrapped_as
    # what each rank holds: ZeRO-2 halves the optimizer states, ZeRO-3 the parameters too
    n = ddp.ranks[0].local_param_numel
    assert ranks[0].local_optimizer_numel == pytest.approx(ddp.ranks[0].local_optimizer_numel / 2, rel=0.01)
    assert ranks[0].local_param_numel == pytest.approx(n / 2 if stage == 3 else n, rel=0.01)
    # the same global batch as DDP: the same losses, step by step
    for x, y in zip(losses(tmp_path / strategy), losses(root / "ddp"), strict=True):
        assert abs(x - y) < 1e-4, (losses(tmp_path / strategy), losses(root / "ddp"))
    assert (tmp_path / strategy / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_resume_is_exact_with_three_ranks(tmp_path):
    """DDP rebuilds its gradient buckets after the first backward; with 3+ ranks a resumed run must rebuild
    them too, or its parameters drift in the last bits. Resumed at steps that are not multiples of the
    logging or save steps, the final parameters equal the uninterrupted run's."""
    params = dict(
        nproc_per_node=3, per_device_train_batch_size=4, max_steps=8, save_steps=1, save_total_limit=None
    )
    straight = train.fit(make(tmp_path, "straight3", **params))
    assert straight.group_size == 3
    for step in (3, 5):
        name = f"resumed3-{step}"
        shutil.copytree(tmp_path / "straight3", tmp_path / name)
        (tmp_path / name / "tries.jsonl").unlink()
        cut_back_to(tmp_path / name, step)
        res = train.fit(make(tmp_path, name, resume=True, **params))
        assert res.resumed_from == f"checkpoint-{step}" and res.global_step == 8
        assert res.param_digest == straight.param_digest, step


def test_fsdp_on_cpu_is_refused_instead_of_silently_running_ddp(tmp_path):
    # accelerate applies FSDP only to GPU-like devices: with processes on a CPU it would quietly run DDP
    if torch.cuda.is_available():
        res = train.fit(make(tmp_path, "fsdp", distributed="fsdp", nproc_per_node=2, max_steps=4))
        assert res.wrapped_as == "FullyShardedDataParallel"
        return
    with pytest.raises(R.RecipeError, match="fsdp needs GPUs"):
        make(tmp_path, "fsdp", distributed="fsdp", nproc_per_node=2)


# ----------------------------------------------------------------------------- the launcher
def _fails_on_rank_one():
    if os.environ["RANK"] == "1":
        raise ValueError("boom on purpose in rank 1")
    import torch.distributed as dist

    return os.environ["RANK"] if not dist.is_initialized() else "ok"


@pytest.mark.slow
def test_a_failing_worker_fails_with_its_traceback():
    with pytest.raises(launch.LaunchError) as err:
        launch.run(_fails_on_rank_one, nproc_per_node=2, master_port=ports.free_port())
    text = str(err.value)
    assert "rank 1" in text and "boom on purpose in rank 1" in text and "_fails_on_rank_one" in text


def test_cuda_in_the_parent_is_refused_before_forking(monkeypatch):
    # the kit spawns in this case (test_lumi.py); forking is refused only when asked for
    monkeypatch.setenv(launch.START_METHOD_ENV, "fork")
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


# ----------------------------------------------------------------------------- failed starts
@pytest.mark.parametrize(
    "overrides, env, expect",
    [
        (  # system prompts kept on a template that refuses them (system_prompt auto would merge them)
            {"template": str(REPO_ROOT / "tests/templates/gemma.jinja"), "system_prompt": "keep"},
            {},
            "System role not supported",
        ),
        ({"train_file": "BAD"}, {}, "no assistant turn"),
        (
            {"model": "someorg/not-cached"},
            {"HF_HUB_OFFLINE": "1"},
            "not in the local cache and the hub is offline",
        ),
    ],
)
def test_a_failed_start_says_one_thing_and_leaves_no_run_folder(
    tmp_path, capsys, monkeypatch, overrides, env, expect
):
    import huggingface_hub.constants as hub

    from workshop_lib import cli

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", hub.HF_HUB_OFFLINE)  # restored after: preflight may set it
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = ["train", "recipes/tiny_cpu.yaml", "-p", "output_root", str(tmp_path), "-p", "run_name", "bad"]
    args += ["-p", "max_steps", "1", "-p", "n_generate", "0"]  # short, should the check ever let it through
    for k, v in overrides.items():
        if v == "BAD":
            v = tmp_path / "bad.jsonl"
            v.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
        args += ["-p", k, str(v)]
    assert cli.main(args) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if "%|" not in x]  # progress bars aside
    assert len(err) <= 2 and err[0].startswith("train: ") and expect in err[0], err  # what, and the fix
    assert not (tmp_path / "bad").exists()  # nothing to clean up: the same name works once fixed


def test_try_numbers_continue_across_jobs_and_every_try_has_one_line(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "logs" / "failures" / "17-try0").mkdir(parents=True)  # a try that failed before recording
    (run / "recipe.yaml").write_text("run_name: run\n")
    assert runfolder.next_try(run) == 1
    monkeypatch.setenv("WORKSHOP_TRY", "1")
    assert runfolder.record_ended_try(run, "hang") and not runfolder.record_ended_try(run, "failed")
    monkeypatch.setenv("WORKSHOP_TRY", "2")
    assert runfolder.record_ended_try(run, "cancelled")
    assert [(t["try"], t["ended"]) for t in runfolder.tries(run)] == [(1, "hang"), (2, "cancelled")]
    assert runfolder.next_try(run) == 3  # a new job (submit --resume) goes on from here
    assert not runfolder.record_ended_try(tmp_path / "never-started", "failed")  # no folder made
    assert not (tmp_path / "never-started").exists()
