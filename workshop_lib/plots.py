"""Figures: dataset statistics, token lengths, loss curves (live, and of finished runs). Matplotlib only.

Every function returns the Figure, so notebooks display it and tests inspect its axes and data. Reading run
folders is runs.py's job; this module draws what it reads and writes the report of notebook 04 and `plot`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .paths import default_output_root, resolve
from .runs import Run, differing_params, load_run, params_table, summary_table


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


# ----------------------------------------------------------------------------- loss curves
METRICS = {
    "loss": "train loss",
    "eval_loss": "eval loss",
    "learning_rate": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_s": "tokens / s",
    "rewards/accuracies": "preference accuracy (train)",  # DPO: chosen scored above rejected
    "rewards/margins": "reward margin (train)",  # DPO: how far above
    "reward": "mean reward (train)",  # GRPO: the sum of the reward functions, over the sampled answers
    "reward_std": "reward spread in a group",  # GRPO: 0 in a group means no advantage, nothing learned
    "frac_reward_zero_std": "groups without signal",  # GRPO: share of prompts whose answers all scored alike
    "completions/mean_length": "answer length (tokens)",  # GRPO: the sampled answers
}
X_AXES = {"step": "optimizer step", "epoch": "epoch", "tokens": "tokens seen"}
FIGSIZE = (13.0, 6.4)  # one size for any number of panels and runs of one trainer: the output never jumps
ROW_HEIGHT = FIGSIZE[1] / 2  # runs of several trainers: one group of rows per trainer
MARKED = 12  # series with at most this many points show each point
LABELLED = 3  # ... and at most this many say their value beside it (a 30-step run logged once)
SMOOTHED = 6  # smoothing a shorter series would only hide its points


def run_label(run: Run, differ: Sequence[str] = ()) -> str:
    """A run's name, the recipe keys that set it apart from the others shown (at most 3), and whether
    it finished."""
    keys = ", ".join(_short(k) for k in differ[:3]) + (
        f", +{len(differ) - 3} more" if len(differ) > 3 else ""
    )
    return run.name + (f" ({keys})" if keys else "") + ("" if run.finished else " [unfinished]")


def _short(key_value: str, n: int = 28) -> str:
    """key=value with a long value (a path) cut to its end."""
    key, _, value = key_value.partition("=")
    return f"{key}={value if len(value) <= n else '...' + value[-(n - 3) :]}"


def smooth(ys: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard-style); weight 0 = raw."""
    out, avg = [], 0.0
    for i, y in enumerate(ys, 1):
        avg = weight * avg + (1 - weight) * y
        out.append(avg / (1 - weight**i) if weight > 0 else y)
    return out


def by_trainer(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by trainer (sft first): their losses measure different things, so never share axes."""
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.trainer != "sft"):
        groups.setdefault(run.trainer, []).append(run)
    return groups


def _average_loss(run: Run, x: str) -> tuple[list[float], list[float]]:
    """A run without loss lines (logging_steps at least its length): the trainer's average loss over the
    run, logged once at the end, as one point at the last step."""
    xs, ys = run.series("train_loss", x)
    return xs[-1:], ys[-1:]


def _why_empty(runs: Sequence[Run], name: str, x: str) -> str:
    """What an empty panel says: logging_steps longer than the run, or simply not logged (yet)."""
    for run in runs:
        every, steps = run.params.get("logging_steps"), max((r["step"] for r in run.records), default=0)
        if isinstance(every, (int, float)) and every >= 1 and 0 < steps < every:
            return f"no {name}: logging_steps {every:g} is more\nthan the run's {steps} steps"
    return f"no {name} against {X_AXES.get(x, x)}\n(not logged, or not yet)"


def _draw(ax, run: Run, metric: str, x: str, smoothing: float, colour: str, label: str) -> bool:
    """One run's line on one panel; short series marked point by point. False: nothing to draw."""
    xs, ys = run.series(metric, x)
    average = metric == "loss" and not xs
    if average:
        xs, ys = _average_loss(run, x)
    if not xs:
        return False
    if metric == "loss" and smoothing > 0 and len(ys) >= SMOOTHED:
        ax.plot(
            xs,
            ys,
            color=colour,
            alpha=0.3,
            linewidth=1,
            marker="o" if len(xs) <= MARKED else None,
            markersize=3,
        )
        ax.plot(xs, smooth(ys, smoothing), color=colour, label=label, linewidth=1.8)
        return True
    marker = "D" if average else "o" if metric == "eval_loss" or len(xs) <= MARKED else None
    ax.plot(xs, ys, color=colour, label=label, marker=marker, markersize=5 if len(xs) <= LABELLED else 4)
    if len(xs) <= LABELLED:  # a point alone says nothing without its value
        for xv, yv in zip(xs, ys, strict=True):
            text = _value(yv) + (" (average over the run)" if average else "")
            ax.annotate(
                text,
                (xv, yv),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
                color=colour,
            )
    return True


def _value(y: float) -> str:
    """A point's value as a label: 3,875 tokens/s, 0.844 accuracy, 7.3e-05 learning rate."""
    if abs(y) >= 1000:
        return f"{y:,.0f}"
    return f"{y:.2g}" if 0 < abs(y) < 0.01 else f"{y:.3g}"


def _steps(runs: Sequence[Run]) -> int:
    """The longest planned run (max_steps as logged), so that a few points sit where they belong in it."""
    return max((int(r.get("max_steps") or r["step"]) for run in runs for r in run.records), default=0)


def plot_runs(
    runs: Sequence[Run],
    metrics: Sequence[str] | None = None,
    x: str = "step",
    smoothing: float = 0.6,
    title: str | None = None,
):
    """One panel per metric and trainer, one line per run, labelled by its name and the recipe keys that
    differ (runs of different trainers, SFT and DPO, are drawn on separate panels).

    metrics=None: every metric the runs logged. A metric without data on the chosen x axis keeps its panel,
    which says why, rather than disappearing. A short run (few log lines) shows its points and values.
    """
    plt = _plt()
    groups = by_trainer(runs) or {"sft": []}
    chosen = {
        trainer: list(metrics or [m for m in METRICS if m == "loss" or any(r.series(m)[0] for r in group)])
        for trainer, group in groups.items()
    }
    # a second trainer's panels go on rows of their own: four to a row keeps the figure short
    cols = min(max(map(len, chosen.values())), 3 if len(groups) == 1 else 4)
    rows_of = {trainer: math.ceil(len(ms) / cols) for trainer, ms in chosen.items()}
    size = FIGSIZE if len(groups) == 1 else (FIGSIZE[0], ROW_HEIGHT * sum(rows_of.values()))
    fig, axes = plt.subplots(sum(rows_of.values()), cols, figsize=size, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels, colour_of = {}, {}
    for group in groups.values():
        differ = differing_params(group)  # within a trainer: SFT and DPO recipes differ in everything
        for run in group:
            labels[id(run)] = run_label(run, differ[run.name])
            colour_of[id(run)] = colours[len(colour_of) % len(colours)]
    used, first_row = [], 0
    for trainer, group in groups.items():
        for k, metric in enumerate(chosen[trainer]):
            ax = axes[first_row + k // cols][k % cols]
            used.append(ax)
            name = METRICS.get(metric, metric)
            heading = name if len(groups) == 1 else f"{name} ({trainer.upper()})"
            ax.set(xlabel=X_AXES.get(x, x), ylabel=name, title=heading)
            drawn = [_draw(ax, r, metric, x, smoothing, colour_of[id(r)], labels[id(r)]) for r in group]
            _style(ax, metric, x, group, name, any(drawn))
        first_row += rows_of[trainer]
    for ax in axes.flat:
        if ax not in used:
            ax.remove()
    fig.suptitle(title or (runs[0].name if len(runs) == 1 else f"{len(runs)} runs"))
    _legend(fig, size)
    return fig


def _style(ax, metric: str, x: str, runs: Sequence[Run], name: str, drawn: bool) -> None:
    """Axes that read well: ticks, grid, room for a lone point's value; an empty panel says why."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if not drawn:
        why = _why_empty(runs, name, x)
        ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="#6b7280")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=x == "step"))
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 120k, 1.2M: labels that do not overlap
    if metric == "learning_rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.margins(x=0.08, y=0.15)  # room for a lone point's value
    if x == "step" and _steps(runs):  # a point alone at step 6 of 6, not on an axis from 5.7 to 6.3
        ax.set_xlim(left=0, right=_steps(runs) * 1.08)
    ax.grid(alpha=0.3)


def _legend(fig, size: tuple[float, float]) -> None:
    """One legend for the figure, below the panels (a run appears in several panels)."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(n, h)
    names = list(handles)
    if not names:
        fig.tight_layout()
        return
    ncol = min(len(names), 2 if any(len(n) > 40 for n in names) else 4)
    fig.legend([handles[n] for n in names], names, loc="lower center", ncol=ncol, fontsize=8)
    bottom = min(0.035 * math.ceil(len(names) / ncol) * FIGSIZE[1] / size[1] + 0.01, 0.4)
    fig.tight_layout(rect=(0, bottom, 1, 1))


def plot_run(path: str | Path, **kw):
    """The loss curves of one run folder."""
    return plot_runs([load_run(path)], **kw)


def close(fig) -> None:
    """Close a figure drawn only to be saved: in a notebook kernel an open figure is shown under the cell."""
    _plt().close(fig)


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
    target = (
        Path(out_dir)
        if out_dir
        else (runs[0].path if len(runs) == 1 else resolve(default_output_root()) / "comparison")
    )
    fig = plot_runs(runs, x=x, smoothing=smoothing)
    written = save_figure(fig, target / "loss_curves")
    table, params = summary_table(runs), params_table(runs)
    shared = [c for c in params.columns if c != "run" and c in table.columns]  # trainer: the table has it
    both = params.drop(columns=shared).merge(table, on="run")
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
