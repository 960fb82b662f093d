"""Figures: dataset statistics, token lengths, loss curves. Matplotlib only, returning Figures.

Every function returns the Figure, so notebooks display it and tests inspect its axes and data.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() == "agg" or not _in_notebook():
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def plot_data_stats(stats: dict[str, Any], title: str = "dataset"):
    """Turns per conversation and characters per turn by role (from data.stats())."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    turns = stats["turns"]
    ax1.hist(turns, bins=range(1, max(turns, default=1) + 2), align="left", rwidth=0.8, color="#3b82f6")
    ax1.set(
        xlabel="turns per conversation",
        ylabel="conversations",
        title=f"{title}: {stats['conversations']} conversations",
    )
    for role, colour in [("system", "#8a94a6"), ("user", "#3b82f6"), ("assistant", "#22a347")]:
        if stats["chars"].get(role):
            ax2.hist(
                stats["chars"][role],
                bins=30,
                alpha=0.6,
                label=f"{role} ({len(stats['chars'][role])})",
                color=colour,
            )
    ax2.set(xlabel="characters per turn", ylabel="turns", title="turn length by role")
    ax2.legend()
    fig.tight_layout()
    return fig


def plot_lengths(report, max_length: int | None = None, title: str = "token lengths"):
    """Histogram of conversation lengths in tokens (chat.LengthReport), with a max_length cut."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.hist(report.lengths, bins=40, color="#3b82f6", alpha=0.8)
    ax.set(xlabel="tokens per conversation", ylabel="conversations", title=title)
    if max_length:
        cut = report.at(max_length)
        ax.axvline(max_length, color="#dc2626", linestyle="--")
        ax.text(
            max_length,
            ax.get_ylim()[1] * 0.9,
            f" max_length={max_length}\n {cut['truncated_conversations']:.1%} truncated\n "
            f"{cut['answer_tokens_lost']:.1%} answer tokens lost",
            color="#dc2626",
            va="top",
            fontsize=9,
        )
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- runs and loss curves
METRICS = {
    "loss": "train loss",
    "eval_loss": "eval loss",
    "learning_rate": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_s": "tokens / s",
}
X_AXES = {"step": "optimizer step", "epoch": "epoch", "tokens": "tokens seen"}


class RunError(ValueError):
    """A folder that cannot be plotted: says which and why."""


@dataclass
class Run:
    """One run folder's records (from metrics.jsonl, else TensorBoard event files, else trainer_state.json)
    and parameters."""

    path: Path
    records: list[dict]
    params: dict
    result: dict
    problems: list[str] = field(default_factory=list)
    source: str = "metrics.jsonl"  # or "tensorboard" (a plain TRL run), "trainer_state.json"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return bool(self.result)

    def series(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        def x_of(r: dict):
            if x != "tokens":
                return r.get(x)
            # train records count num_tokens; eval records only num_input_tokens_seen (when TRL logs it)
            return r.get("num_tokens", r.get("num_input_tokens_seen"))

        # a record without its own x (an eval record without a token count) takes that of its step
        by_step = {r["step"]: x_of(r) for r in self.records if x_of(r) is not None and "step" in r}
        xs, ys = [], []
        for r in self.records:
            if metric in r and r[metric] is not None:
                xv = x_of(r)
                xv = by_step.get(r.get("step")) if xv is None else xv
                if xv is not None:
                    xs.append(xv)
                    ys.append(r[metric])
        return xs, ys


def load_run(path: str | Path) -> Run:
    """Read a run folder, finished, still running or killed. Corrupt metric lines are skipped and reported."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a folder. Give a run folder (runs/<name>) or a glob (runs/*).")
    metrics, state = path / "metrics.jsonl", path / "trainer_state.json"
    problems: list[str] = []
    records: list[dict] = []
    if metrics.exists():
        for n, line in enumerate(metrics.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "step" not in rec:
                    raise ValueError("not a metrics record (no step)")
                records.append(rec)
            except (json.JSONDecodeError, ValueError) as e:
                problems.append(f"{metrics}:line {n}: skipped a corrupt metrics line ({e})")
    source = "metrics.jsonl"
    events = [] if records else event_files(path)
    if events:  # a run without the kit's metrics.jsonl: a plain TRL script's output_dir
        records, source = read_events(events, problems), "tensorboard"
    if not records and state.exists():
        source = "trainer_state.json"
        try:
            records = [dict(r) for r in json.loads(state.read_text()).get("log_history", []) if "step" in r]
        except json.JSONDecodeError as e:
            problems.append(f"{state}: unreadable ({e})")
    if not records and not events and not (path / "recipe.yaml").exists():
        raise RunError(
            f"{path}: not a run folder (no metrics.jsonl, TensorBoard event files, trainer_state.json or "
            "recipe.yaml). Point at runs/<name>, written by notebook 03, or a TRL output_dir."
        )
    params = {}
    if (path / "recipe.yaml").exists():
        params = yaml.safe_load((path / "recipe.yaml").read_text()) or {}
    result = json.loads((path / "result.json").read_text()) if (path / "result.json").exists() else {}
    if not result and source == "tensorboard":
        result = _events_result(records)
    if not records:
        problems.append(f"{path}: no metrics yet (the run has not logged a step)")
    return Run(path, records, params, result, problems, source)


# ----------------------------------------------------------------------------- TensorBoard event files
def event_files(path: str | Path) -> list[Path]:
    """TensorBoard event files anywhere under a folder (a trainer writes <output_dir>/runs/<date>_<host>/),
    oldest first, leaving out those of other run folders nested inside it."""
    path = Path(path)
    found = []
    for f in path.rglob("events.out.tfevents.*"):
        between = f.relative_to(path).parents  # the folders from f's up to (not including) path
        if not any((path / d / m).exists() for d in list(between)[:-1] for m in RUN_MARKERS):
            found.append(f)
    return sorted(found, key=_event_time)


def _event_time(f: Path) -> tuple[float, str]:
    """The creation time in an event file's name (events.out.tfevents.<unix time>.<host>...)."""
    part = f.name.split(".")[3] if f.name.count(".") >= 3 else ""
    return (float(part) if part.isdigit() else f.stat().st_mtime, str(f))


def tag_to_metric(tag: str) -> str:
    """A TensorBoard tag as the kit's metric name. transformers writes a log key `k` as `train/k` and
    `eval_k` as `eval/k` (integrations.rewrite_logs): train/loss -> loss, eval/loss -> eval_loss."""
    prefix, _, key = tag.partition("/")
    if prefix == "train" and key:
        return key
    if prefix in ("eval", "test") and key:
        return f"{prefix}_{key}"
    return tag


def read_events(files: Sequence[Path], problems: list[str] | None = None) -> list[dict]:
    """The scalars of event files as metrics records, one per step, read with TensorBoard's own reader.

    Files are read oldest first, so a resumed try's value replaces the stopped try's at the same step.
    `time` is when the step's loss was logged; tokens_per_s is computed from num_tokens as the kit does."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    by_step: dict[int, dict] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={SCALARS: 0})  # 0: keep every point, not a sample
        try:
            acc.Reload()
        except Exception as e:  # a file cut by a kill: keep the others
            if problems is not None:
                problems.append(f"{f}: unreadable TensorBoard events ({type(e).__name__}: {e})")
            continue
        for tag in acc.Tags()[SCALARS]:
            for ev in acc.Scalars(tag):
                rec = by_step.setdefault(ev.step, {"step": ev.step, "time": ev.wall_time})
                rec[tag_to_metric(tag)] = ev.value
                if tag == "train/loss":
                    rec["time"] = ev.wall_time
    records = [by_step[s] for s in sorted(by_step)]
    last = None
    for rec in records:
        if "loss" in rec and "num_tokens" in rec:
            if last and rec["time"] > last["time"]:
                rec["tokens_per_s"] = (rec["num_tokens"] - last["num_tokens"]) / (rec["time"] - last["time"])
            last = rec
    return records


def _events_result(records: list[dict]) -> dict:
    """A finished plain TRL run's summary from its events: the trainer logs train_loss once, at the end."""
    end = next((r for r in reversed(records) if "train_loss" in r), None)
    if end is None:
        return {}
    return {
        "train_loss": end["train_loss"],
        "train_runtime_s": end.get("train_runtime"),
        "source": "tensorboard",
    }


RUN_MARKERS = ("recipe.yaml", "metrics.jsonl", "trainer_state.json")


def is_run_folder(path: str | Path) -> bool:
    """A folder written by a training run (not runs/logs, runs/comparison, data or executed notebooks):
    the kit's, or a plain TRL script's output_dir with TensorBoard event files."""
    path = Path(path)
    return path.is_dir() and (any((path / m).exists() for m in RUN_MARKERS) or bool(event_files(path)))


def load_runs(paths: str | Path | Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """Load many runs (a glob, a folder, or a list). Bad folders become problems; good ones still load.

    A glob keeps only run folders, silently: runs/* also holds the kit's own folders (logs, comparison,
    data) and executed notebooks. Folders named one by one are all reported on.
    """
    if isinstance(paths, (str, Path)):
        text = str(paths)
        if any(c in text for c in "*?["):
            found = [p for p in sorted(glob.glob(text)) if is_run_folder(p)]
            if not found:
                return [], [f"{text}: matches no run folder (a folder with recipe.yaml or metrics.jsonl)"]
        else:
            found = [text]
    else:
        found = [str(p) for p in paths]
    runs, problems = [], []
    for p in found:
        try:
            run = load_run(p)
        except RunError as e:
            problems.append(str(e))
            continue
        runs.append(run)
        problems += run.problems
    return runs, problems


def differing_params(runs: Sequence[Run]) -> dict[str, list[str]]:
    """Label each run by the recipe keys whose values differ between the runs (a sweep's grid)."""
    ignore = {"run_name", "output_root", "resume", "node_rank", "master_addr", "master_port"}
    keyed = [r for r in runs if r.params]  # a plain TRL run has no recipe: nothing to compare it by
    keys = sorted({k for r in keyed for k in r.params} - ignore)
    differ = [k for k in keys if len({json.dumps(r.params.get(k), default=str) for r in keyed}) > 1]
    return {r.name: [f"{k}={r.params.get(k)}" for k in differ] if r.params else [] for r in runs}


def params_table(runs: Sequence[Run]):
    """The recipe keys that differ between runs, one row per run (the legend shows run names only)."""
    import pandas as pd

    differ = differing_params(runs)
    return pd.DataFrame([{"run": r.name, **dict(s.split("=", 1) for s in differ[r.name])} for r in runs])


def run_label(run: Run) -> str:
    return run.name + ("" if run.finished else " [unfinished]")


def smooth(ys: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard-style); weight 0 = raw."""
    out, avg = [], 0.0
    for i, y in enumerate(ys, 1):
        avg = weight * avg + (1 - weight) * y
        out.append(avg / (1 - weight**i) if weight > 0 else y)
    return out


FIGSIZE = (13.0, 6.4)  # one size for any number of panels and runs: the notebook's output never jumps


def plot_runs(
    runs: Sequence[Run],
    metrics: Sequence[str] | None = None,
    x: str = "step",
    smoothing: float = 0.6,
    title: str | None = None,
):
    """One panel per metric, one line per run (labelled by its name: `params_table` says what differs).

    metrics=None: every metric the runs logged. A metric without data on the chosen x axis keeps its panel,
    which says so, rather than disappearing.
    """
    plt = _plt()
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if metrics is None:
        metrics = [m for m in METRICS if any(run.series(m, "step")[0] for run in runs)] or ["loss"]
    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        name = METRICS.get(metric, metric)
        ax.set(xlabel=X_AXES.get(x, x), ylabel=name, title=name)
        drawn = False
        for i, run in enumerate(runs):
            xs, ys = run.series(metric, x)
            if not xs:
                continue
            drawn = True
            colour = colours[i % len(colours)]
            if metric == "loss" and smoothing > 0 and len(ys) > 2:
                ax.plot(xs, ys, color=colour, alpha=0.3, linewidth=1)
                ax.plot(xs, smooth(ys, smoothing), color=colour, label=run_label(run), linewidth=1.8)
            else:
                marker = "o" if metric == "eval_loss" or len(xs) < 3 else None
                ax.plot(xs, ys, color=colour, label=run_label(run), marker=marker, markersize=4)
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"no {name} against {X_AXES.get(x, x)}\n(not logged, or not yet)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#6b7280",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 120k, 1.2M: labels that do not overlap
        if metric == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.remove()
    handles, names = {}, []
    for ax in fig.axes:
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in handles:
                handles[n] = h
                names.append(n)
    legend_rows = math.ceil(len(names) / 4) if names else 0
    if names:
        fig.legend(
            [handles[n] for n in names], names, loc="lower center", ncol=min(len(names), 4), fontsize=8
        )
    fig.suptitle(title or (runs[0].name if len(runs) == 1 else f"{len(runs)} runs"))
    fig.tight_layout(rect=(0, min(0.035 * legend_rows + 0.01, 0.4) if names else 0, 1, 1))
    return fig


def plot_run(path: str | Path, **kw):
    """The loss curves of one run folder."""
    return plot_runs([load_run(path)], **kw)


def summary_table(runs: Sequence[Run]):
    """Final and best losses, runtime, tokens/s, GPU-hours (where known) per run, as a DataFrame.

    What differs between the runs' recipes is `params_table`'s (write_report joins both into summary.csv)."""
    import pandas as pd

    rows = []
    for run in runs:
        _, loss = run.series("loss")
        _, ev = run.series("eval_loss")
        _, tps = run.series("tokens_per_s")
        times = [r["time"] for r in run.records if "time" in r]
        # total_runtime_s sums the tries of a preempted and resumed run; older results had train_runtime_s
        recorded = next(
            (run.result[k] for k in ("total_runtime_s", "runtime_s", "train_runtime_s") if run.result.get(k)),
            None,
        )
        runtime = recorded or (times[-1] - times[0] if len(times) > 1 else None)
        world = run.result.get("world_size") or (
            run.params.get("nproc_per_node", 1) * run.params.get("nnodes", 1)
        )
        gpu = run.result.get("device") == "cuda"
        rows.append(
            {
                "run": run.name,
                "steps": max((r["step"] for r in run.records), default=0),
                "final loss": loss[-1] if loss else None,
                "best loss": min(loss) if loss else None,
                "final eval loss": ev[-1] if ev else None,
                "best eval loss": min(ev) if ev else None,
                "exact match": run.result.get("exact_match_after"),
                "runtime (s)": round(runtime, 1) if runtime else None,
                "tokens/s": round(sum(tps) / len(tps)) if tps else None,
                "GPU-hours": round(runtime * world / 3600, 3) if runtime and gpu else None,
                "finished": run.finished,
            }
        )
    return pd.DataFrame(rows)


def save_figure(fig, path_stem: str | Path) -> list[Path]:
    """Write PNG and SVG next to each other (atomically) and return their paths."""
    out = []
    for ext in ("png", "svg"):
        path = Path(f"{path_stem}.{ext}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
        out.append(path)
    return out


def write_report(
    runs: Sequence[Run], out_dir: str | Path | None = None, x: str = "step", smoothing: float = 0.6
) -> dict[str, Any]:
    """Loss curves (PNG + SVG) and summary table (CSV + Markdown) of runs, written into `out_dir`:
    by default the run folder for one run, runs/comparison for several. Used by notebook 04 and `plot`."""
    from .model import REPO_ROOT

    target = (
        Path(out_dir) if out_dir else (runs[0].path if len(runs) == 1 else REPO_ROOT / "runs" / "comparison")
    )
    fig = plot_runs(runs, x=x, smoothing=smoothing)
    written = save_figure(fig, target / "loss_curves")
    table, params = summary_table(runs), params_table(runs)
    both = params.merge(table, on="run")
    both.to_csv(target / "summary.csv", index=False)
    try:
        markdown = both.to_markdown(index=False)
    except ImportError:  # pandas needs tabulate for Markdown
        markdown = both.to_string(index=False)
    (target / "summary.md").write_text(markdown)
    return {
        "target": target,
        "figure": fig,
        "table": table,
        "params": params,
        "written": [*written, target / "summary.csv"],
    }


def live_plot(every_s: float = 2.0):
    """A callable for train.fit(plot=...): redraws the loss curve in one notebook output as metrics arrive."""
    from IPython.display import display

    handle = display(display_id=True)
    last = {"t": 0.0, "n": 0}

    def update(records: list[dict], final: bool = False) -> None:
        """Redraw at most every `every_s` seconds; `final` draws the last state whatever the time."""
        if not final and (len(records) == last["n"] or time.time() - last["t"] < every_s):
            return
        last.update(t=time.time(), n=len(records))
        plt = _plt()
        # a result marks the run as drawn as it is (no "[unfinished]"); the three panels are there from the start
        run = Run(Path("this run"), list(records), {}, {"live": True})
        title = "training (finished)" if final else "training (live)"
        fig = plot_runs([run], metrics=("loss", "eval_loss", "learning_rate"), title=title)
        handle.update(fig)
        plt.close(fig)

    return update
