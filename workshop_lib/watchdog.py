"""The hang watchdog: a job whose training stops moving ends by itself, with every rank's stacks and a cause.

With gloo, a peer that is frozen (SIGSTOP, a deadlock, a stuck GPU kernel) keeps its sockets open, so the
other ranks wait in their collective and no timeout fires: the job would burn its whole allocation. So each
worker reports progress (an optimizer step, an evaluation batch, a save; callbacks.ReportProgress) into a
node-local folder, and a thread in each node's launcher watches its workers. When no progress comes for
the hang timeout, it collects every local rank's Python stacks (faulthandler on SIGUSR2; py-spy too when it
is installed, which also reads a stopped process), writes one record per rank (failures.py: a rank that is
stopped or stuck outside a collective is primary, a rank waiting in a collective is a consequence), and
kills the workers: the launcher, the node and the job then fail as for any crash, and the job's
failure-report names the rank and node that stopped and where the others wait.

The limit: `hang_timeout_s` from the recipe, else automatic: 30 minutes until the first step (loading,
compiling, the first step's warm-up), then ten times the slowest step seen, at least 10 minutes (room for
an evaluation or a checkpoint save of a large model between two steps).
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from . import failures

STACK_SIGNAL = signal.SIGUSR2  # USR1 and TERM mean "checkpoint and stop" (callbacks.StopOnRequest)
AUTO_FIRST_S = 1800  # automatic limit until the first optimizer step
AUTO_FLOOR_S = 600  # automatic limit after it: at least this ...
AUTO_STEPS = 10  # ... or this many times the slowest step seen
FROZEN_AFTER_S = 10  # a worker whose liveness thread is this late does not run Python at all
GATHER_S = 30  # on a hang, wait this long at most for the other nodes' watchdogs to record their ranks
# frames of a rank that waits for its peers: a collective, or backward (DDP all-reduces gradients inside it)
COLLECTIVE = ("torch/distributed/", "all_reduce", "barrier", "broadcast", "all_gather", "torch/autograd/")

_me: dict = {}  # this worker's folder and rank, once start_worker ran


# ----------------------------------------------------------------------------- the worker's side
def start_worker(folder: str | os.PathLike, rank: int) -> None:
    """In each worker: say which pid is which rank, dump all threads' stacks on SIGUSR2, keep a liveness
    file fresh (a stopped or frozen process stops touching it), and arm report()."""
    folder = Path(folder)
    for sub in ("pids", "progress", "alive", "stacks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "pids" / f"rank{rank}").write_text(str(os.getpid()))
    stacks = open(folder / "stacks" / f"rank{rank}.txt", "w")  # noqa: SIM115 (the worker's lifetime)
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)
    _me.update(folder=folder, rank=rank, stacks=stacks)
    alive = folder / "alive" / f"rank{rank}"
    alive.touch()

    def beat() -> None:
        while True:
            time.sleep(1)
            os.utime(alive)

    threading.Thread(target=beat, daemon=True, name="watchdog-alive").start()


def report(step: int, phase: str = "step") -> None:
    """Training moved (phase: train, step, eval, save). Cheap: one small local file, replaced."""
    if not _me:
        return
    path = _me["folder"] / "progress" / f"rank{_me['rank']}"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"step": step, "phase": phase, "time": time.time()}))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the launcher's side
class Watchdog(threading.Thread):
    """Watches this node's workers (in their launcher). On a hang: stacks, records, kill; `.hang` then holds
    the one-line summary for the launcher's error."""

    def __init__(
        self,
        folder: str | os.PathLike,
        failure_dir: str | None,
        node: int,
        timeout_s: float | None,
        world_size: int = 1,
    ):
        super().__init__(daemon=True, name="watchdog")
        self.folder, self.failure_dir, self.node = Path(folder), failure_dir, node
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.started = time.time()
        self.slowest_step_s = 0.0
        self.hang: str | None = None
        self.done = threading.Event()
        self._last: tuple[int, float] | None = None  # (step, time) of the newest step seen

    def limit(self, phase: str | None) -> float:
        """Seconds without progress that make a hang, in this phase (None: training has not begun)."""
        if self.timeout_s:
            return self.timeout_s if phase else max(self.timeout_s, 900)  # loading a model takes its time
        if self.slowest_step_s == 0:
            return AUTO_FIRST_S
        return max(AUTO_FLOOR_S, AUTO_STEPS * self.slowest_step_s)

    def progress(self) -> dict[int, dict]:
        found = {}
        for path in (self.folder / "progress").glob("rank*"):
            if path.name[4:].isdigit():
                try:
                    found[int(path.name[4:])] = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # being replaced right now
        return found

    def run(self) -> None:
        while not self.done.wait(1.0):
            ranks = self.progress()
            newest = max(ranks.values(), key=lambda p: p["time"], default=None)
            steps = [p for p in ranks.values() if p["phase"] == "step"]
            if steps:
                step = max(p["step"] for p in steps)
                t = max(p["time"] for p in steps if p["step"] == step)
                if self._last and step > self._last[0]:
                    per_step = (t - self._last[1]) / (step - self._last[0])
                    self.slowest_step_s = max(self.slowest_step_s, per_step)
                if not self._last or step > self._last[0]:
                    self._last = (step, t)
            since = newest["time"] if newest else self.started
            phase = newest["phase"] if newest else None
            if time.time() - since > self.limit(phase):
                self.on_hang(ranks, time.time() - since, self.limit(phase))
                return

    def on_hang(self, ranks: dict[int, dict], quiet_s: float, limit: float) -> None:
        pids = self.pids()
        states = {rank: _state(pid) for rank, pid in pids.items()}
        for rank, pid in pids.items():
            if states[rank] not in ("T", "t", "Z"):
                try:
                    os.kill(pid, STACK_SIGNAL)
                except OSError:
                    pass
        time.sleep(3)  # faulthandler writes from a signal handler: give every rank a moment
        stacks = {rank: self.stacks(rank, pid) for rank, pid in pids.items()}
        now = time.time()
        summary = []
        for rank, pid in sorted(pids.items()):
            alive = self.folder / "alive" / f"rank{rank}"
            late = now - alive.stat().st_mtime if alive.exists() else None
            where, waiting = _where_it_waits(stacks[rank])
            if states[rank] in ("T", "t"):
                how, waiting = "its process is stopped (SIGSTOP or a debugger)", False
            elif late is not None and late > FROZEN_AFTER_S:
                how, waiting = f"its process runs no Python (frozen for {late:.0f} s)", False
            elif waiting:
                how = f"waits in {where}"
            else:
                how = f"stopped progressing at {where}"
            last = ranks.get(rank, {})
            error = (
                f"hang: no training progress on node {self.node} for {quiet_s:.0f} s (hang_timeout_s "
                f"{limit:.0f}); rank {rank} (last step {last.get('step', 'none')}, {last.get('phase', 'loading')})"
                f" {how}"
            )
            summary.append(f"rank {rank} {how}")
            if self.failure_dir:
                failures.record_hang(self.failure_dir, rank, self.node, pid, error, waiting, stacks[rank])
        self.hang = "; ".join(summary)
        self.gather()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def gather(self) -> None:
        """Before killing: wait (GATHER_S at most) until every rank of the job has a record. Each node's
        watchdog fires on its own clock, seconds apart on a busy machine; the first kill ends the others'
        launchers (srun, torch elastic) before they can say where their ranks wait, and the root cause
        would lack them."""
        if not self.failure_dir or self.world_size <= 1:
            return
        deadline = time.time() + GATHER_S
        while time.time() < deadline:
            have = {p.stem for p in Path(self.failure_dir).glob("rank*.json")}
            if all(f"rank{r}" in have for r in range(self.world_size)):
                return
            time.sleep(0.5)

    def pids(self) -> dict[int, int]:
        found = {}
        for path in (self.folder / "pids").glob("rank*"):
            try:
                found[int(path.name[4:])] = int(path.read_text())
            except (OSError, ValueError):
                continue
        return found

    def stacks(self, rank: int, pid: int) -> str:
        text = ""
        path = self.folder / "stacks" / f"rank{rank}.txt"
        if path.exists():
            text = path.read_text(errors="replace").strip()
        if shutil.which("py-spy"):  # reads a stopped or frozen process too
            try:
                out = subprocess.run(
                    ["py-spy", "dump", "--nonblocking", "--pid", str(pid)],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                text += "\n--- py-spy dump:\n" + (out.stdout or out.stderr)
            except (OSError, subprocess.TimeoutExpired):
                pass
        return text or "(no stack: the process did not answer SIGUSR2; stopped or frozen)"

    def stop(self) -> None:
        self.done.set()


def _state(pid: int) -> str:
    """A process's state letter (R running, S sleeping, D disk, T stopped, Z zombie), '?' if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _where_it_waits(stack: str) -> tuple[str, bool]:
    """(innermost frame of the main thread, whether the thread waits in a collective) from faulthandler's
    dump ('Current thread ...' or 'Thread 0x...' blocks, innermost frame first)."""
    blocks = [b for b in stack.split("\n\n") if "File " in b]
    # the main thread: the block that was not started by threading (those end in threading.py's _bootstrap)
    main = next((b for b in blocks if "threading.py" not in b), blocks[0] if blocks else "")
    frames = [ln.strip() for ln in main.splitlines() if ln.strip().startswith("File ")]
    if not frames:
        return "an unknown place (no stack)", False
    inner = next((f for f in frames if "site-packages" not in f), frames[0])  # the innermost frame of ours
    library = frames[: frames.index(inner)]  # the library frames it called into: do they wait for peers?
    waiting = any(c in f for f in library for c in COLLECTIVE)
    where = inner.replace("File ", "", 1)
    if waiting:  # name the collective it waits in, and our frame that led there
        coll = next(f for f in library if any(c in f for c in COLLECTIVE))
        where = f"{coll.rsplit(' in ', 1)[-1]} ({coll.split('/')[-1].split(chr(34))[0]}), from {where}"
    return where, waiting


def auto_limit_text(timeout_s: float | None) -> str:
    """What the launcher prints once: the limit in force."""
    if timeout_s:
        return f"hang watchdog: a job with no training progress for {timeout_s:.0f} s ends (hang_timeout_s)"
    return (
        f"hang watchdog: automatic limit ({AUTO_FIRST_S} s to the first step, then {AUTO_STEPS} x the slowest "
        f"step, at least {AUTO_FLOOR_S} s); set hang_timeout_s to choose"
    )
