"""Trainer callbacks: the live metrics file, stopping on request, progress for the hang watchdog, and exact
resume under DDP.

They plug into TRL's trainer like any transformers `TrainerCallback` (notebook 03 passes them to
`SFTTrainer(callbacks=...)`), and they are what makes a requeued Slurm job continue where it stopped.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from . import watchdog
from .control import CANCEL

# USR1: what the job asks Slurm for before the time limit; TERM: scancel or preemption. Both mean "checkpoint
# and stop"; whether the job then requeues is the job script's decision (only after USR1).
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class ReportProgress(TrainerCallback):
    """Tells the hang watchdog (watchdog.py, in this node's launcher) that training moves: each optimizer
    step, each evaluation batch and each save. A no-op outside a watched launch."""

    def on_train_begin(self, args, state, control, **kw):
        watchdog.report(state.global_step, "train")

    def on_step_end(self, args, state, control, **kw):
        watchdog.report(state.global_step, "step")

    def on_prediction_step(self, args, state, control, **kw):
        watchdog.report(state.global_step, "eval")

    def on_save(self, args, state, control, **kw):
        watchdog.report(state.global_step, "save")


class MetricsJSONL(TrainerCallback):
    """One JSON line per log step on rank 0: loss, eval loss, lr, grad norm, tokens, tokens/s, memory.

    Tokens count across tries: `num_tokens` is the trainer's own count (`include_num_input_tokens_seen`),
    which is saved in each checkpoint, where TRL's counter would restart at 0 on resume. The first loss
    logged after a resume may average fewer steps than logging_steps (the steps before the checkpoint were
    logged by the try that stopped): such lines carry `loss_window` = the number of steps they average.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.t0 = self.tokens0 = None
        self.window_start = 0  # the step after which the next logged loss starts averaging

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.tokens0 = time.time(), None
        self.window_start = state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "max_steps": state.max_steps}
        rec["time"] = now
        rec.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        if "loss" in logs:
            steps = state.global_step - self.window_start
            if 0 < steps < args.logging_steps and self.window_start > 0:
                rec["loss_window"] = steps  # a resumed try's first average covers only these steps
            self.window_start = state.global_step
        if "loss" in logs and state.num_input_tokens_seen:
            tokens = rec["num_tokens"] = int(state.num_input_tokens_seen)  # all ranks, all tries
            if self.tokens0 is not None and now > self.t0:
                rec["tokens_per_s"] = (tokens - self.tokens0) / (now - self.t0)
            self.t0, self.tokens0 = now, tokens
        if torch.cuda.is_available():
            rec["memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            import resource

            rec["memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


class StopOnRequest(TrainerCallback):
    """Checkpoint at the next step and stop when asked: by SIGUSR1 to this process, or by a STOP file in the
    run folder (the Slurm job's trap writes it: the signal reaches the batch shell, not the kernel's workers).
    The file is removed only once training has acted on it, so a request is never lost between tries.
    `reason` says why: "cancel" (SIGTERM, or STOP saying cancel: the try is recorded as cancelled and not
    requeued) or "time-limit" (SIGUSR1 or a plain STOP: the job requeues and resumes)."""

    def __init__(self, stop_file: Path):
        self.stop_file = Path(stop_file)
        self.flag = threading.Event()
        self.cancelled = threading.Event()
        self.seen = self.preempted = False
        self.reason: str | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, lambda *_: self.flag.set())
            signal.signal(signal.SIGTERM, lambda *_: (self.cancelled.set(), self.flag.set()))

    def _asked(self) -> int:
        """0: go on; 1: stop for a time limit (requeue); 2: stop for a cancel."""
        if self.cancelled.is_set():
            return 2
        try:
            text = self.stop_file.read_text()
        except OSError:
            return 1 if self.flag.is_set() else 0
        return 2 if text.strip() == CANCEL else 1

    def on_step_end(self, args, state, control, **kw):
        asked = self._asked()
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([float(asked)], device="cuda" if torch.cuda.is_available() else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # all ranks stop at the same step, for the same reason
            asked = int(t.item())
        if asked:
            self.seen = True
            self.reason = CANCEL if asked == 2 else "time-limit"
            if state.global_step < state.max_steps:  # at the last step the run simply finishes
                control.should_save = True
                control.should_training_stop = True
                self.preempted = True
        return control

    def on_train_end(self, args, state, control, **kw):
        if self.seen and state.is_world_process_zero:
            self.stop_file.unlink(missing_ok=True)  # seen and acted on


class RebuildBucketsOnResume(TrainerCallback):
    """Exact resume under DDP with any number of ranks.

    DDP reduces a model's first backward with one initial bucket layout and rebuilds its buckets after it;
    with 3 or more ranks the two layouts sum gradient elements in another order. An uninterrupted run uses
    the rebuilt layout from step 2 on, but a resumed run would use the initial one for its first step, so its
    parameters drift in the last bits. One throw-away forward/backward (gradients zeroed, no optimizer step,
    dropout off) on resume makes DDP rebuild its buckets as the uninterrupted run did."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, model=None, **kw):
        wrapped = self.trainer.model_wrapped
        if state.global_step == 0 or not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            return
        was_training = wrapped.training
        wrapped.eval()  # no dropout: the random state must stay as the checkpoint left it
        out = wrapped(input_ids=torch.ones(1, 8, dtype=torch.long, device=args.device))
        out.logits.float().sum().mul(0.0).backward()
        wrapped.module.zero_grad(set_to_none=True)
        wrapped.train(was_training)
