"""Reading run folders after (or during) training: records, parameters, results; which run to continue from.

A run folder (runfolder.py writes it) is read from its live metrics.jsonl, else a plain TRL script's
TensorBoard event files, else trainer_state.json, with recipe.yaml's parameters and result.json. Notebooks
04 (loss curves), 05 (chat) and 06 (DPO), the model card, the demo's summary and the `plot` command read
runs here; plots.py draws what this module reads.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .control import PREEMPTED_FILE
from .paths import REPO_ROOT
from .trainers import KINDS

RUN_MARKERS = ("recipe.yaml", "metrics.jsonl", "trainer_state.json")
IGNORED_PARAMS = {"run_name", "output_root", "resume", "node_rank", "master_addr", "master_port"}


class RunError(ValueError):
    """A folder that cannot be read as a run, or no run that fits: says which and why, and what to do."""

    def _render_traceback_(self) -> list[str]:  # IPython shows the message alone, not a 30-line traceback
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


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

    @property
    def trainer(self) -> str:
        """sft or dpo: as the recipe says; a plain TRL run is DPO when it logged DPO's rewards."""
        if self.params.get("trainer"):
            return str(self.params["trainer"])
        return "dpo" if any("rewards/margins" in r for r in self.records) else "sft"

    def series(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(xs, ys) of one metric, in logged order; x is step, epoch or tokens."""

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


def read_result(path: str | Path) -> dict:
    """A run's result.json ({} while it has none: still training, stopped or killed)."""
    file = Path(path) / "result.json"
    try:
        return json.loads(file.read_text()) if file.exists() else {}
    except json.JSONDecodeError:  # written atomically by the kit: only a hand-edited file gets here
        return {}


def read_params(path: str | Path) -> dict:
    """A run's recipe.yaml as written at its start ({} for a plain TRL run)."""
    file = Path(path) / "recipe.yaml"
    return (yaml.safe_load(file.read_text()) or {}) if file.exists() else {}


def load_run(path: str | Path) -> Run:
    """Read a run folder, finished, still running or killed. Corrupt metric lines are skipped and reported."""
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
    result = read_result(path)
    if not result and source == "tensorboard":
        result = _events_result(records)
    if not records:
        problems.append(f"{path}: no metrics yet (the run has not logged a step)")
    return Run(path, records, read_params(path), result, problems, source)


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


# ----------------------------------------------------------------------------- many runs
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
    """Each run's `key=value` for the recipe keys whose values differ between the runs (a sweep's grid)."""
    keyed = [r for r in runs if r.params]  # a plain TRL run has no recipe: nothing to compare it by
    keys = sorted({k for r in keyed for k in r.params} - IGNORED_PARAMS)
    differ = [k for k in keys if len({json.dumps(r.params.get(k), default=str) for r in keyed}) > 1]
    return {r.name: [f"{k}={r.params.get(k)}" for k in differ] if r.params else [] for r in runs}


def params_table(runs: Sequence[Run]):
    """The recipe keys that differ between runs, one row per run."""
    import pandas as pd

    differ = differing_params(runs)
    return pd.DataFrame([{"run": r.name, **dict(s.split("=", 1) for s in differ[r.name])} for r in runs])


def throughput(run: Run) -> tuple[float | None, str]:
    """Tokens per second of a run and where the number comes from (or why there is none)."""
    _, tps = run.series("tokens_per_s")
    if tps:
        return sum(tps) / len(tps), "mean of the logged lines"
    tokens = run.result.get("total_tokens") or run.result.get("tokens")
    runtime = run.result.get("total_runtime_s") or run.result.get("runtime_s")
    if tokens and runtime:
        return tokens / runtime, "result.json: tokens / runtime (fewer than two logged loss lines)"
    if not run.records:
        return None, "nothing logged yet"
    if not any("num_tokens" in r for r in run.records):
        return None, f"the {run.trainer.upper()} trainer logged no token count"
    return (
        None,
        "fewer than two logged loss lines (logging_steps at least the run's length) and no result yet",
    )


def summary_table(runs: Sequence[Run]):
    """Final and best losses, exact match, runtime, tokens/s, GPU-hours per run, as a DataFrame; `note`
    says why a number is missing. What differs between the runs' recipes is `params_table`'s."""
    import pandas as pd

    rows = []
    for run in runs:
        _, loss = run.series("loss")
        _, ev = run.series("eval_loss")
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
        tps, why = throughput(run)
        average = run.result.get("train_loss")
        notes = [] if loss or average is None else ["loss: the run's average (no loss line was logged)"]
        if tps is None or why.startswith("result"):
            notes.append(f"tokens/s: {why}")
        rows.append(
            {
                "run": run.name,
                "trainer": run.trainer,
                "steps": max((r["step"] for r in run.records), default=0),
                "final loss": loss[-1] if loss else average,
                "best loss": min(loss) if loss else average,
                "final eval loss": ev[-1] if ev else None,
                "best eval loss": min(ev) if ev else None,
                "exact match": run.result.get("exact_match_after"),
                "runtime (s)": round(runtime, 1) if runtime else None,
                "tokens/s": round(tps) if tps is not None else "-",
                "GPU-hours": round(runtime * world / 3600, 3) if runtime and gpu else None,
                "finished": run.finished,
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- which run to continue from
def shown(path: Path) -> str:
    """A path as a participant would type it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def why_not(path: Path, trainer: str | None = None) -> str | None:
    """Why a run folder cannot be continued from as a finished run (of `trainer`, when given); None: it can."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    if not (path / "recipe.yaml").exists():
        return "no recipe.yaml: not a run of this kit"
    kind = read_params(path).get("trainer", "sft")
    if (path / PREEMPTED_FILE).exists():
        return f"{kind} run stopped with a checkpoint (preempted): resume it to finish it"
    if not (path / "final").is_dir():
        return f"{kind} run without a final/ model yet: still training, stopped or killed"
    result = read_result(path)
    if not result or result.get("preempted"):
        return f"{kind} run without result.json: still writing it, or killed before the end"
    if trainer is not None and kind != trainer:
        return f"finished {kind} run, not {trainer}"
    return None


def finished_run(path: str | Path) -> Path:
    """A run folder named by hand, checked: finished (final/ model, result.json), else RunError saying why."""
    why = why_not(Path(path))
    if why:
        raise RunError(f"{shown(Path(path))}: {why}. Name a finished run folder (runs/<name>).")
    return Path(path)


def pick_run(output_root: str | Path, trainer: str = "sft") -> tuple[Path, str]:
    """The newest finished run of a trainer under output_root (final/ model, result.json, not preempted;
    newest = latest result.json) and one line saying which and why. Raises RunError listing every
    candidate and why it does not fit when none does."""
    root = Path(output_root)
    folders = sorted(p for p in root.iterdir() if is_run_folder(p)) if root.is_dir() else []
    fits = [p for p in folders if why_not(p, trainer) is None]
    if fits:
        newest = max(fits, key=lambda p: ((p / "result.json").stat().st_mtime, p.name))
        n, others = len(fits), len(folders) - len(fits)
        of = f"the newest of {n} finished {trainer} runs" if n > 1 else f"the only finished {trainer} run"
        rest = f"; {others} other run folder(s) there do not fit" if others else ""
        return newest, f"starting from {shown(newest)} ({of} in {shown(root)}{rest})"
    listed = "\n".join(f"  {shown(p)}: {why_not(p, trainer)}" for p in folders)
    notebook = KINDS[trainer].notebook if trainer in KINDS else "notebook 03"
    raise RunError(
        f"no finished {trainer} run in {shown(root)} to start from"
        + (" (the folder does not exist yet)" if not root.is_dir() else "")
        + f". Train one first ({notebook}, or `make demo`), or name a run folder in the parameters cell."
        + (f"\nThe run folders there, and why each does not fit:\n{listed}" if folders else "")
    )
