"""Timing helpers shared by the benchmarks: interleaved repetitions, per-repetition ratios, median and spread.

On a shared machine the load changes while a benchmark runs. Running side A once and then side B once puts
any change of load on one side only. Here every repetition runs each side once, in a rotated order
(A B C, B C A, C A B, ...), and a ratio is taken inside each repetition; the median of those ratios and
their range (min-max) are what a benchmark reports.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def interleave(
    sides: dict[str, Callable[[int], dict[str, Any]]],
    reps: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, dict[str, Any]]]:
    """Run every side once per repetition, rotating the order; returns one {side: result} per repetition.

    A side is called with the repetition number and returns a dict of measurements; `wall_s` (the call's
    wall time) and `load` (the 1-minute load average before it) are added.
    """
    names = list(sides)
    out = []
    for r in range(reps):
        k = r % len(names)
        order = names[k:] + names[:k]
        row = {}
        for name in order:
            load = os.getloadavg()[0]
            t = time.perf_counter()
            res = dict(sides[name](r))
            res.setdefault("wall_s", time.perf_counter() - t)
            res["load"] = load
            row[name] = res
            log(f"  rep {r + 1}/{reps} {name:<14} " + _short(res))
        out.append(row)
    return out


def _short(res: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )


def column(reps: list[dict[str, dict[str, Any]]], side: str, key: str) -> list[float]:
    """One measurement of one side, across repetitions."""
    return [row[side][key] for row in reps if row[side].get(key) is not None]


def ratios(reps: list[dict[str, dict[str, Any]]], num: str, den: str, key: str) -> list[float]:
    """num/den of one measurement, taken inside each repetition (so a change of load cancels)."""
    return [
        row[num][key] / row[den][key]
        for row in reps
        if row[num].get(key) is not None and row[den].get(key) not in (None, 0)
    ]


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and n of a list of measurements."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_ratio(values: list[float]) -> str:
    """'1.23x (1.10-1.31, n=3)'."""
    s = spread(values)
    if not s["n"]:
        return "n/a"
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}, n={s['n']})"


def fmt_value(values: list[float], fmt: str = ",.0f", unit: str = "") -> str:
    """'9,120 tokens/s (8,800-9,400)'."""
    s = spread(values)
    if not s["n"]:
        return "n/a"
    return f"{s['median']:{fmt}}{unit} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def machine() -> str:
    """One line naming the machine and its load, for the head of a report."""
    import platform

    load = os.getloadavg()
    return f"{os.cpu_count()} cores, {platform.machine()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
