"""Progress in the notebook: follow the run's live metrics.jsonl and print a line per log step (or redraw
the live plot), then show the result as a table. The same display whether training runs in this process or
in forked workers."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def quiet_libraries() -> None:
    """One progress display: the kit's. Turns off the progress bars of datasets, huggingface_hub and
    transformers (in a notebook they are widgets, which a saved notebook cannot show again), and tells
    DeepSpeed there is no GPU when there is none, instead of letting it warn about it. Also drops one
    FutureWarning DPOTrainer triggers inside transformers on every run (nothing a user can change)."""
    import warnings

    from datasets import disable_progress_bars
    from huggingface_hub.utils import disable_progress_bars as hub_quiet
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hub_quiet()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass


def is_interactive() -> bool:
    """True in JupyterLab/Notebook (the server names the session), False under papermill or a script."""
    return bool(os.environ.get("JPY_SESSION_NAME")) and "PAPERMILL_OUTPUT_PATH" not in os.environ


class Progress(threading.Thread):
    """Follows metrics.jsonl from its current end; prints one line per logged step, or calls plot(records)
    (a plot callable also takes final=True: plots.live_plot)."""

    def __init__(self, path: Path, every: float = 2.0, plot: Callable | None = None):
        super().__init__(daemon=True)
        self.path, self.every, self.plot = Path(path), every, plot
        self.done = threading.Event()
        self.offset = self.path.stat().st_size if self.path.exists() else 0  # earlier tries: not shown again
        self.records: list[dict] = []

    def _read(self) -> list[dict]:
        """Complete new lines since the last read (a line being written is read next time)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by an earlier kill
                records.append(json.loads(line))
        return records

    def poll(self) -> None:
        new = self._read()
        self.records += new
        if self.plot is not None:
            if new:
                self.plot(self.records)
            return
        for r in new:
            if "loss" in r or "eval_loss" in r:
                print(format_log_line(r), flush=True)

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.poll()
        self.poll()


@contextlib.contextmanager
def follow(run_dir: str | Path, plot: Callable | None = None) -> Iterator[Progress]:
    """Show training progress while the block runs; the last state is drawn when it ends."""
    progress = Progress(Path(run_dir) / "metrics.jsonl", plot=plot)
    progress.start()
    try:
        yield progress
    finally:
        progress.done.set()
        progress.join()
        if plot is not None and progress.records:
            plot(progress.records, final=True)  # the last state, drawn whatever the redraw interval


def format_log_line(r: dict) -> str:
    parts = [f"step {r['step']:>5}/{r.get('max_steps', '?')}", f"epoch {r.get('epoch', 0):5.2f}"]
    if "loss" in r:
        parts.append(
            f"loss {r['loss']:.4f}" + (f" (avg of {r['loss_window']} steps)" if "loss_window" in r else "")
        )
    if "eval_loss" in r:
        parts.append(f"eval_loss {r['eval_loss']:.4f}")
    if "learning_rate" in r:
        parts.append(f"lr {r['learning_rate']:.2e}")
    if "grad_norm" in r:
        parts.append(f"grad_norm {r['grad_norm']:.3f}")
    if "tokens_per_s" in r:
        parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
    return " | ".join(parts)


def result_table(result: Any, run_dir: str | Path):
    """What matters after train(): losses, steps, tokens, time, processes and where the model is, as a
    two-column table (a pandas DataFrame) instead of the TrainResult's internals."""
    import pandas as pd

    r = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    steps = f"{r['global_step']} of {r['max_steps']}"
    if r.get("start_step"):
        steps += f" (resumed at step {r['start_step']})"
    rows = [
        ("optimizer steps", steps),
        ("train loss (mean over the run)", f"{r['train_loss']:.4f}"),
        ("eval loss", "not evaluated" if r.get("eval_loss") is None else f"{r['eval_loss']:.4f}"),
        ("tokens trained", f"{r['tokens']:,}"),
        ("time (this try)", f"{r['runtime_s']:.1f} s"),
        (
            "tokens/s",
            f"{r['tokens'] / r['runtime_s']:,.0f}" if r["runtime_s"] and not r.get("start_step") else "-",
        ),
        ("processes", f"{r['group_size']} ({r['wrapped_as']}, {r['device']})"),
        ("parameter digest", f"{r['param_digest']} (the same on every process: they trained one model)"),
    ]
    final = Path(run_dir) / "final"
    if r.get("preempted"):
        rows.append(
            ("model", f"not final: stopped with a checkpoint at step {r['global_step']} (resume to finish)")
        )
    else:
        rows.append(("model", str(final)))
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")
