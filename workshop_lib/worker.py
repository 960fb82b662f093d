"""The training worker: what every process runs, in-process or forked, on one node or many.

It is notebook 03's (or, for `trainer: dpo`, notebook 06's) cells in one function: build the tokenizer, data,
model, LoraConfig and TRL config, make TRL's SFTTrainer (or DPOTrainer), train (resuming the run folder's last checkpoint when asked), then save. It only
trains and evaluates the loss; scoring generated answers is a separate step (workshop_lib.scoring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import build, chat
from .control import CANCEL
from .launch import free_port
from .recipe import Recipe
from .runfolder import PREEMPTED_FILE, last_checkpoint


@dataclasses.dataclass
class TrainResult:
    """What one process reports after training (or after stopping with a checkpoint)."""

    rank: int
    world_size: int  # processes the launcher started (nodes x processes per node)
    group_size: int  # processes in the torch.distributed group training actually used
    global_step: int
    max_steps: int
    start_step: int  # 0, or the checkpoint step this try resumed from
    train_loss: float
    eval_loss: float | None
    runtime_s: float  # this try
    tokens: int  # tokens trained on, all tries and ranks together
    start_tokens: int  # of those, the ones trained before this try (the checkpoint's count)
    resumed_from: str | None
    preempted: bool  # stopped with a checkpoint before the end (time limit or cancel)
    stop_reason: str | None  # why: "time-limit" (the job requeues) or "cancel" (it does not)
    param_digest: str
    device: str  # "cuda" (ROCm too) or "cpu"
    wrapped_as: str  # what wrapped the model: DistributedDataParallel, DeepSpeedEngine(zero_stage=3), ...
    local_param_numel: int = 0  # trainable parameter elements this rank holds (ZeRO-3 holds a shard)
    local_optimizer_numel: int = 0  # optimizer-state elements this rank holds (ZeRO-1/2/3 hold a shard)
    eval_metrics: dict = dataclasses.field(default_factory=dict)  # the last evaluation's (DPO: rewards too)
    # what training did with system prompts: keep or merge (system_prompt: auto resolved)
    system_prompt: str = ""
    ranks: dict = dataclasses.field(default_factory=dict)  # {rank: TrainResult} of this node's workers

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ranks"}


def param_digest(model) -> str:
    """A hash of all parameters (full tensors, gathered when sharded): equal across ranks after DDP/ZeRO."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        t = p.detach()
        if hasattr(p, "ds_tensor"):  # ZeRO-3 shard: gather the full parameter
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                t = p.detach().clone()
        h.update(name.encode())
        h.update(t.to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _wrapped_as(trainer) -> str:
    wrapped = trainer.model_wrapped
    name = type(wrapped).__name__
    if hasattr(wrapped, "zero_optimization_stage"):
        return f"{name}(zero_stage={wrapped.zero_optimization_stage()})"
    return name


def _local_numels(trainer) -> tuple[int, int]:
    """Elements of trainable parameters and optimizer states held by this rank (shards when sharded)."""
    import torch

    params = sum(
        (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel())
        for p in trainer.model.parameters()
        if p.requires_grad
    )
    opt = getattr(trainer.model_wrapped, "optimizer", None) or trainer.optimizer
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer  # accelerate and DeepSpeed wrap the torch optimizer
    states = getattr(opt, "state", {}) or {}
    numel = sum(
        t.numel() for st in states.values() for t in st.values() if torch.is_tensor(t) and t.dim() > 0
    )
    return params, numel


_TOKENS_AT: dict[str, int] = {}  # checkpoint -> its token count, read before training may rotate it away


def resume_checkpoint(recipe: Recipe) -> Path | None:
    """The checkpoint a resumed run continues from (None for a fresh start)."""
    ckpt = last_checkpoint(recipe.run_dir) if recipe.resume else None
    if ckpt:
        _TOKENS_AT[str(ckpt)] = _tokens_at(ckpt)
    return ckpt


def finish(trainer, recipe: Recipe, output, ckpt: Path | None) -> TrainResult:
    """After trainer.train(): evaluate, save final/ and the trainer state, or mark the run PREEMPTED."""
    import torch.distributed as dist

    from .callbacks import StopOnRequest  # torch and transformers: loaded when training, not by the CLI

    state = trainer.state
    stopper = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnRequest))
    result = TrainResult(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        group_size=dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
        global_step=state.global_step,
        max_steps=state.max_steps,
        start_step=int(ckpt.name.split("-")[1]) if ckpt else 0,
        train_loss=output.training_loss,
        eval_loss=None,
        runtime_s=output.metrics.get("train_runtime", 0.0),
        tokens=int(state.num_input_tokens_seen),
        start_tokens=_tokens_at(ckpt),
        resumed_from=ckpt.name if ckpt else None,
        preempted=stopper.preempted,
        stop_reason=stopper.reason if stopper.preempted else None,
        param_digest="",
        device=build.device_kind(),
        wrapped_as=_wrapped_as(trainer),
    )
    result.local_param_numel, result.local_optimizer_numel = _local_numels(trainer)
    result.system_prompt = chat.resolve_system_prompt(trainer.processing_class, recipe.system_prompt)
    run_dir = Path(recipe.run_dir)
    if not result.preempted and trainer.eval_dataset is not None:
        evals = [h for h in state.log_history if "eval_loss" in h]
        if evals and evals[-1].get("step") == state.global_step:
            metrics = evals[-1]  # evaluated at this step already
        else:
            metrics = trainer.evaluate()
        result.eval_loss = metrics["eval_loss"]
        result.eval_metrics = {
            k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, int | float)
        }
    result.param_digest = param_digest(trainer.model)
    if result.preempted:
        if trainer.is_world_process_zero() and result.stop_reason != CANCEL:  # a cancel is not requeued
            (run_dir / PREEMPTED_FILE).write_text(f"{state.global_step}\n")
        return result
    trainer.save_model(str(run_dir / "final"))  # the model, or the LoRA adapter
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(run_dir / "final")
        trainer.save_state()  # trainer_state.json with the whole log history
    return result


def _tokens_at(ckpt: Path | None) -> int:
    """The token count a checkpoint saved (0 for a fresh start); save_total_limit may have removed the
    checkpoint by the end of the try, so resume_checkpoint noted it at the start."""
    if not ckpt:
        return 0
    if str(ckpt) in _TOKENS_AT:
        return _TOKENS_AT[str(ckpt)]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    return int(state.get("num_input_tokens_seen") or 0)


def train(recipe: Recipe, prepared: tuple | None = None) -> TrainResult:
    """Train one process's share. prepared: (tokenizer, train_ds, eval_ds) built by the notebook already;
    forked workers inherit them instead of tokenizing the data again."""
    from transformers.trainer_callback import PrinterCallback

    from .callbacks import RebuildBucketsOnResume, ReportProgress  # heavy: not at the CLI's start

    _one_process_group(recipe)
    if prepared is None:
        tokenizer, _ = build.tokenizer(recipe)
        train_ds, eval_ds, _ = build.datasets(recipe, tokenizer)
    else:
        tokenizer, train_ds, eval_ds = prepared
    model = build.model(recipe, tokenizer)
    trainer = build.trainer_class(recipe)(  # SFTTrainer, DPOTrainer or GRPOTrainer (trainers.KINDS)
        model=model,
        args=build.trl_config(recipe),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=build.lora_config(recipe, model),
        callbacks=build.callbacks(recipe),
        **build.trainer_kwargs(recipe),  # GRPO: its reward functions
    )
    trainer.remove_callback(PrinterCallback)  # the kit prints its own lines from metrics.jsonl
    trainer.add_callback(RebuildBucketsOnResume(trainer))
    trainer.add_callback(ReportProgress())  # for the hang watchdog of a multi-process launch
    ckpt = resume_checkpoint(recipe)
    output = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    return finish(trainer, recipe, output, ckpt)


def _one_process_group(recipe: Recipe) -> None:
    """The process group, where the kit must make it itself. DeepSpeed and FSDP want one even for one process
    (DeepSpeed otherwise looks for MPI), and ZeRO-3 on CPU must join it (over gloo) before the model is
    loaded, so that the weights are partitioned on load. On CPU, several processes join a gloo group here
    with collective_timeout_s as its timeout: accelerate passes the TrainingArguments' timeout only to GPU
    groups, so a collective that waits for a stopped peer would otherwise wait gloo's default 30 minutes."""
    import datetime

    timeout = datetime.timedelta(seconds=recipe.collective_timeout_s)
    if recipe.distributed != "ddp" and "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    if build.device_kind() != "cpu":
        return  # accelerate makes the NCCL/RCCL group with the timeout (ddp_timeout)
    if recipe.distributed.startswith("zero"):
        import deepspeed.ops

        # DeepSpeed's CPU backend compiles a shared-memory all-reduce with g++ when its communication starts
        # (30 s and 60 CPU-s on 2 cores, again for every new machine or environment). Only its inference
        # all-reduce uses it; ZeRO's collectives go through torch.distributed's gloo group either way.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if recipe.distributed == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", timeout=timeout)
    elif int(os.environ.get("WORLD_SIZE", 1)) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # accelerate then uses this group
            dist.init_process_group("gloo", timeout=timeout)


def logged_train(recipe: Recipe, log_dir: str, prepared: tuple | None = None) -> TrainResult:
    """Entry point of a forked worker: its output goes to logs/rank<R>.log, not to the notebook's kernel
    (a forked process writing there would log 'attempted to send message from fork'), and no progress bars
    (in a notebook they would be widgets of the parent's kernel)."""
    from .progress import quiet_libraries

    quiet_libraries()
    rank = int(os.environ.get("RANK", 0))
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log = open(Path(log_dir) / f"rank{rank}.log", "a", buffering=1)  # noqa: SIM115 (the worker's lifetime)
    sys.stdout = sys.stderr = log
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    return train(recipe, prepared)
