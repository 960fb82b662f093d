"""Figures: dataset statistics, token lengths, loss curves. Matplotlib only, returning Figures.

Every function returns the Figure, so notebooks display it and tests inspect its axes and data.
"""

from __future__ import annotations

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
    ax1.set(xlabel="turns per conversation", ylabel="conversations", title=f"{title}: {stats['conversations']} conversations")
    for role, colour in [("system", "#8a94a6"), ("user", "#3b82f6"), ("assistant", "#22a347")]:
        if stats["chars"].get(role):
            ax2.hist(stats["chars"][role], bins=30, alpha=0.6, label=f"{role} ({len(stats['chars'][role])})", color=colour)
    ax2.set(xlabel="characters per turn", ylabel="turns", title="turn length by role")
    ax2.legend()
    fig.tight_layout()
    return fig
