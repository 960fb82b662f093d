"""The run folder: one per run, never overwritten, the record a job, a notebook and a plot share.

runs/<name>/ holds recipe.yaml (resolved), metrics.jsonl (live, one line per log step), checkpoint-N/,
final/ (model or adapter + tokenizer), trainer_state.json, tries.jsonl (one line per try of a requeued
job), result.json, logs/rank<R>.log and the executed notebook(s). The control files STOP and PREEMPTED
are how a Slurm job and training talk: the job script gets their names from here (`job-env`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from .control import PREEMPTED_FILE, STOP_FILE, TRY_ENV, this_node_rank, this_try
from .recipe import Recipe, RecipeError

__all__ = ["PREEMPTED_FILE", "STOP_FILE"]  # the control files' names, as callers import them from here


class RunExists(RecipeError):
    """The run folder exists and resume was not asked for: nothing was changed."""


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-N folder (one with trainer_state.json), or None."""
    done = [
        p
        for p in Path(run_dir).glob("checkpoint-*")
        if (p / "trainer_state.json").exists() and p.name[11:].isdigit()
    ]
    return max(done, key=checkpoint_step) if done else None


def checkpoint_step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def is_node_zero(recipe: Recipe) -> bool:
    return this_node_rank(recipe.nnodes, recipe.node_rank) == 0


def prepare(recipe: Recipe) -> Recipe:
    """Create the run folder, or check that it may be resumed; returns the recipe to train with.

    A new run writes recipe.yaml. An existing one needs resume=True: its metrics after the last checkpoint
    (logged by a try that was then killed) are dropped so that no step appears twice. Resuming with another
    world size keeps the global batch by changing gradient accumulation, and says so (or refuses).
    Node 0 writes; other nodes only read (the folder is on a shared file system).
    """
    run_dir = recipe.run_dir
    recorded = run_dir / "recipe.yaml"
    if not is_node_zero(recipe):  # node 0 decides; the others only follow a resume's batch settings
        if recipe.resume and recorded.exists():
            recipe = _same_global_batch(recipe, yaml.safe_load(recorded.read_text()) or {})
        return recipe
    if not recorded.exists():
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        recipe.save(recorded)
        return recipe
    if not recipe.resume:
        raise RunExists(_exists_message(run_dir))
    resized = _same_global_batch(recipe, yaml.safe_load(recorded.read_text()) or {})
    if resized is not recipe:  # what the run trains with from now on (tries.jsonl keeps each try's)
        resized.save(recorded)
        print(
            f"{recorded}: now says {resized.world_size} process(es), gradient_accumulation_steps "
            f"{resized.trl['gradient_accumulation_steps']} (each try's are in tries.jsonl)"
        )
    recipe = resized
    ckpt = last_checkpoint(run_dir)
    _trim_metrics(run_dir / "metrics.jsonl", checkpoint_step(ckpt) if ckpt else 0)
    # STOP stays: a stop request that arrived before this try read it must still be seen by training
    (run_dir / PREEMPTED_FILE).unlink(missing_ok=True)
    return recipe


def _exists_message(run_dir: Path) -> str:
    ckpt = last_checkpoint(run_dir)
    if (run_dir / "result.json").exists():
        state = "it finished"
    else:
        state = f"its last checkpoint is {ckpt.name}" if ckpt else "it has no checkpoint yet"
    return (
        f"run folder {run_dir} exists ({state}). Nothing was changed. To continue it: resume = True (papermill: "
        "-p resume True). To start another run: run_name = None (a fresh name) or a new name."
    )


def _same_global_batch(recipe: Recipe, recorded: dict[str, Any]) -> Recipe:
    """A resume on another number of processes: keep the global batch via gradient accumulation, or refuse."""
    old_world = int(recorded.get("nproc_per_node", 1)) * int(recorded.get("nnodes", 1))
    if old_world == recipe.world_size:
        return recipe
    accum, message = resized_accumulation(recorded, recipe)
    print(message)
    return recipe.replace(gradient_accumulation_steps=accum)


def resized_accumulation(recorded: dict[str, Any], recipe: Recipe) -> tuple[int, str]:
    """(gradient accumulation, what changed) that keeps the recorded run's global batch on this recipe's
    world size; RecipeError when it cannot (sharded checkpoints, or a batch that does not divide).
    submit --resume asks it before queueing, training again when it resumes."""
    old_world = int(recorded.get("nproc_per_node", 1)) * int(recorded.get("nnodes", 1))
    sft = recipe.trl
    per_device = int(sft["per_device_train_batch_size"])
    old_accum = int(recorded.get("gradient_accumulation_steps", sft["gradient_accumulation_steps"]))
    global_batch = per_device * old_accum * old_world
    where = f"{recipe.run_dir} was trained on {old_world} process(es), this try has {recipe.world_size}"
    if recipe.distributed in ("zero2", "zero3", "fsdp"):
        raise RecipeError(
            f"{where}: {recipe.distributed} checkpoints are sharded per rank and cannot be resumed on another "
            f"number of ranks. Resume with {old_world} process(es) in all (nodes x processes per node)."
        )
    if global_batch % (per_device * recipe.world_size):
        raise RecipeError(
            f"{where}: the global batch of {global_batch} conversations cannot be split evenly into "
            f"{recipe.world_size} x {per_device} per step. Resume on {old_world} process(es), or change "
            "per_device_train_batch_size so that it divides."
        )
    accum = global_batch // (per_device * recipe.world_size)
    message = (
        f"{where}: gradient_accumulation_steps {old_accum} -> {accum}, so the global batch stays {global_batch} "
        "(the order in which conversations are seen differs from an uninterrupted run)."
    )
    return accum, message


def _trim_metrics(path: Path, keep_until: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("step", 0) <= keep_until:
            kept.append(line)
    _write_atomic(path, "".join(x + "\n" for x in kept))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_try(run_dir: Path, result: Any, gradient_accumulation_steps: int | None = None) -> None:
    """Append this try's accounting (steps, this try's tokens, runtime, processes, how it ended) to
    tries.jsonl (node 0 only)."""
    if not result.preempted:
        ended = "finished"
    else:
        ended = "cancelled" if result.stop_reason == "cancel" else "preempted"
    line = {
        "try": _try_number(run_dir),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "time": time.time(),
        "ended": ended,
        "from_step": result.start_step,
        "to_step": result.global_step,
        "tokens": result.tokens - result.start_tokens,  # this try's
        "total_tokens": result.tokens,  # all tries so far
        "runtime_s": result.runtime_s,
        "world_size": result.world_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "device": result.device,
        "preempted": result.preempted and ended != "cancelled",  # the job requeues it
    }
    _append_try(run_dir, line)


def record_ended_try(run_dir: Path, ended: str, job_id: str | None = None, try_: int | None = None) -> bool:
    """A try that ended without training recording it (a hang, a failure, a cancel that came before the
    checkpoint): one tries.jsonl line saying how, so that try numbers and accounting stay complete.
    Returns False (and writes nothing) when that try has its line already."""
    if not (Path(run_dir) / "recipe.yaml").exists():
        return False  # the run never started (its folder was not created): nothing to account for
    try_ = _try_number(run_dir) if try_ is None else try_
    if any(t.get("try") == try_ for t in tries(run_dir)):
        return False
    _append_try(
        run_dir,
        {"try": try_, "job_id": job_id or os.environ.get("SLURM_JOB_ID"), "time": time.time(), "ended": ended}
        | {"tokens": 0, "runtime_s": 0.0, "world_size": 0, "device": None, "preempted": False},
    )
    return True


def _try_number(run_dir: Path) -> int:
    """This try's number: the job's (job-env counts across jobs), else the next one of the run."""
    in_job = TRY_ENV in os.environ or "SLURM_RESTART_COUNT" in os.environ
    return this_try() if in_job else next_try(run_dir)


def _append_try(run_dir: Path, line: dict[str, Any]) -> None:
    """One line per try: a fuller line (training's own) replaces an early one of the same try (the job
    script records a cancel at once, in case the job is killed before training can)."""
    path = Path(run_dir) / "tries.jsonl"
    kept = [t for t in tries(run_dir) if t.get("try") != line["try"]]
    _write_atomic(path, "".join(json.dumps(t) + "\n" for t in [*kept, line]))


def next_try(run_dir: str | Path) -> int:
    """The number of the try about to start: one more than any try the run has recorded (tries.jsonl, failure
    records, executed notebooks), so that numbers continue across jobs (submit --resume) and nothing of an
    earlier try is overwritten."""
    run_dir = Path(run_dir)
    seen = [int(t.get("try", -1)) for t in tries(run_dir)]
    for path in [*run_dir.glob("logs/failures/*-try*"), *run_dir.glob("notebooks/*.try*.ipynb")]:
        digits = path.name.rsplit("-try", 1)[-1].rsplit(".try", 1)[-1].split(".")[0]
        if digits.isdigit():
            seen.append(int(digits))
    return max(seen, default=-1) + 1


def tries(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "tries.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """result.json: the finished run's numbers, with tokens, runtime and GPU-hours summed over all tries."""
    history = tries(run_dir)
    total_runtime = sum(t["runtime_s"] for t in history)
    result = {
        **result,
        "tries": len(history),
        "total_runtime_s": total_runtime,
        "total_tokens": result.get("tokens"),  # the trainer's count, carried across tries in checkpoints
        "gpu_hours": sum(t["runtime_s"] * t["world_size"] for t in history if t["device"] == "cuda") / 3600,
    }
    path = Path(run_dir) / "result.json"
    _write_atomic(path, json.dumps(result, indent=1, default=str))
    return path
