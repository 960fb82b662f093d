"""Failures of a multi-process job: one record per failed rank or node, and exactly one root cause.

When one rank of a distributed job dies, every other rank fails soon after (its collectives lose a peer),
and each node's launcher and notebook fail in turn. The job log then holds many errors; the one to read
is the first failure that was not caused by another. Each failure is written, as it happens, to a record
in the try's folder (`record_dir`, exported to the job as $WORKSHOP_FAILURE_DIR):

* rank<R>.json  a worker raised (written by the worker itself, exact time and traceback), or died by a
                signal or exit code (written by its node's launcher when it notices, to the second);
* node<N>.json  a node's papermill (or train command) ended badly (written by the job script's wrapper):
                a dead notebook kernel, an error in a notebook cell, a killed launcher;
* rank<R>.json  of kind "hang": the hang watchdog (watchdog.py) found no progress; stacks/rank<R>.txt
                holds that rank's Python stacks.

The root cause is the earliest *primary* failure: one that is not a consequence of another. A
consequence is a rank whose collective broke because a peer went away (connection reset, timeout), or a
launcher or notebook that only relays its workers' failures. If every record is a consequence, the root
cause is the node(s) that left no record at all (killed or lost before they could write one). In a hang,
a rank that is stopped or stuck outside a collective is primary; one that waits in a collective is not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

FAILURE_DIR_ENV = "WORKSHOP_FAILURE_DIR"

# The last line of an error that only says a peer or the group went away: a consequence, not a cause.
CONSEQUENCE = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "Connection refused",
    "DistBackendError",
    "DistNetworkError",
    "NCCL communicator was aborted",
    "timed out",
    "Timeout",
    "recvBytes",
)
# ... unless the message says this node could not do its own part: a taken port is a cause, never a consequence
PRIMARY = ("EADDRINUSE", "address already in use", "Address already in use")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def record_dir(run_dir: str | os.PathLike, job_id: str | int = "local", try_: int = 0) -> Path:
    """The failure records of one try of one job: <run>/logs/failures/<job>-try<K>/."""
    return Path(run_dir) / "logs" / "failures" / f"{job_id}-try{try_}"


def _write(folder: str | os.PathLike, name: str, record: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)  # readers never see half a record
    return path


def _node() -> int:
    return int(os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK", 0)))


def record_exception(folder: str | os.PathLike, rank: int, exc: BaseException) -> Path:
    """A worker's exception, written by the worker itself before it exits (exact time, full traceback).
    A hang record of that rank is kept: the watchdog found the rank waiting, and the exception (a peer closed
    the connection when another node's watchdog ended its workers) is what followed."""
    hung = Path(folder) / f"rank{rank}.json"
    try:
        if json.loads(hung.read_text()).get("kind") == "hang":
            return hung
    except (OSError, ValueError):
        pass
    return _write(
        folder,
        f"rank{rank}",
        {
            "kind": "exception",
            "rank": rank,
            "node": _node(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
            "error": f"{type(exc).__name__}: {exc}".strip()[:3000],
            "traceback": "".join(traceback.format_exception(exc))[-6000:],
        },
    )


def record_exit(
    folder: str | os.PathLike, rank: int, exitcode: int, pid: int, when: float, node: int | None = None
) -> Path | None:
    """A worker that died without raising (a signal, or an exit code), as its launcher saw it. A rank that
    recorded its own exception keeps that record."""
    path = Path(folder) / f"rank{rank}.json"
    if path.exists():
        return None
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        error = f"killed by signal {name} (no Python traceback: killed by hand, out of memory, or crashed)"
    else:
        name, error = None, f"exit code {exitcode} without a Python traceback (a crash in native code?)"
    return _write(
        folder,
        f"rank{rank}",
        {
            "kind": "signal" if name else "exit",
            "rank": rank,
            "node": _node() if node is None else node,
            "host": socket.gethostname(),
            "pid": pid,
            "time": when,
            "signal": name,
            "error": error,
        },
    )


def record_hang(
    folder: str | os.PathLike, rank: int, node: int, pid: int, error: str, waiting: bool, stacks: str
) -> Path:
    """A rank of a hung job, as the watchdog found it: waiting in a collective (a consequence) or not."""
    stack_dir = Path(folder) / "stacks"
    stack_dir.mkdir(parents=True, exist_ok=True)
    (stack_dir / f"rank{rank}.txt").write_text(stacks + "\n")
    record = {"kind": "hang", "rank": rank, "node": node, "host": socket.gethostname(), "pid": pid}
    record |= {
        "time": time.time(),
        "error": error,
        "waiting": waiting,
        "stacks": str(stack_dir / f"rank{rank}.txt"),
    }
    return _write(folder, f"rank{rank}", record)


class ExitWatcher(threading.Thread):
    """Runs in the launcher (the workers' parent): notices each worker's death within 50 ms and records a
    signal or exit code, peeking with waitid(WNOWAIT) so that torch's launcher still reaps the worker.
    (Torch elastic itself reports only the first failed worker it polls, every 0.5 s, to the second.)"""

    def __init__(self, folder: str | os.PathLike, pids: str | os.PathLike, node: int, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.folder, self.pids, self.node, self.every_s = Path(folder), Path(pids), node, every_s
        self.done = threading.Event()
        self.seen: set[int] = set()
        self.start()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        for path in self.pids.glob("rank*"):  # each worker writes its pid (watchdog.start_worker)
            try:
                rank, pid = int(path.name[4:]), int(path.read_text())
                if pid in self.seen:
                    continue
                status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except (ValueError, OSError):  # not our child, or reaped already
                continue
            if status is None:
                continue  # still running
            self.seen.add(pid)
            if status.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                record_exit(self.folder, rank, -status.si_status, pid, time.time(), self.node)
            elif status.si_status != 0:  # a worker that raised has written its own record (kept)
                record_exit(self.folder, rank, status.si_status, pid, time.time(), self.node)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=2)


def _last_error_line(text: str) -> str | None:
    """The last 'SomeError: message' line of a log (a Python traceback's conclusion)."""
    found = None
    for line in ANSI.sub("", text).splitlines():
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b:?", line.strip()):
            found = line.strip()
    return found


def _notebook_error(notebook: Path) -> tuple[str, str] | None:
    """(ename, 'ename: evalue') of the error cell of an executed notebook, if one failed."""
    try:
        import nbformat

        nb = nbformat.read(notebook, as_version=4)
    except Exception:
        return None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                ename = str(out.get("ename", ""))
                return ename, ANSI.sub("", f"{ename}: {out.get('evalue', '')}")[
                    :3000
                ]  # the head: its first line
    return None


def record_node(
    folder: str | os.PathLike, node: int, rc: int, log: str | None = None, notebook: str | None = None
) -> Path:
    """A node's papermill (or train command) ended with rc != 0: what its notebook or log says."""
    log_text = Path(log).read_text(errors="replace")[-20000:] if log and Path(log).exists() else ""
    nb_error = _notebook_error(Path(notebook)) if notebook and Path(notebook).exists() else None
    if "DeadKernelError" in log_text or "Kernel died" in log_text:
        ename, error = (
            "DeadKernelError",
            (
                "the notebook kernel died (killed by a signal or by the out-of-memory killer); its training "
                "workers died with it"
            ),
        )
    elif nb_error:
        ename, error = nb_error
    elif rc > 128:
        ename, error = "Signal", f"killed by signal {signal.Signals(rc - 128).name}"
    else:
        line = _last_error_line(log_text) or f"exit code {rc}"
        ename, error = line.split(":", 1)[0].rsplit(".", 1)[-1], line
    return _write(
        folder,
        f"node{node}",
        {
            "kind": "node",
            "node": node,
            "host": socket.gethostname(),
            "time": time.time(),
            "rc": rc,
            "ename": ename,
            "error": error,
            "log": log,
            "notebook": notebook,
        },
    )


def load(folder: str | os.PathLike) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def is_consequence(record: dict[str, Any], records: list[dict[str, Any]]) -> bool:
    """A failure caused by another: a broken collective, a rank of a hung job waiting for its peers, or a
    launcher/notebook relaying its ranks."""
    if record["kind"] in ("signal", "exit"):
        return False
    if record["kind"] == "hang":
        return bool(record.get("waiting"))
    if any(s in record["error"] for s in PRIMARY):
        return False
    if any(s in record["error"] for s in CONSEQUENCE):  # the message only: a traceback quotes source code
        return True
    if record["kind"] == "node":
        # its launcher raised because its workers failed: those workers' records say why
        relays = record.get("ename") in ("LaunchError", "ChildFailedError", "PapermillExecutionError")
        return relays and any(r["kind"] != "node" and r["node"] == record["node"] for r in records)
    return False


def root_cause(records: list[dict[str, Any]], nnodes: int | None = None) -> dict[str, Any]:
    """Exactly one record (or a synthetic one for nodes that left none): the earliest primary failure."""
    primary = [r for r in records if not is_consequence(r, records)]
    if primary:
        # the earliest; at equal times a rank before its node (the node only reports what its rank did)
        return min(primary, key=lambda r: (r["time"], r["kind"] == "node", r.get("rank", 0)))
    silent = sorted(set(range(nnodes or 0)) - {r["node"] for r in records})
    if silent:
        return {
            "kind": "silent",
            "node": silent[0],
            "time": min((r["time"] for r in records), default=time.time()),
            "error": f"node(s) {', '.join(map(str, silent))} ended without reporting anything (the node, its "
            "papermill or its kernel was killed or lost): the errors above are consequences",
        }
    if records:
        return min(records, key=lambda r: r["time"])
    return {"kind": "none", "node": 0, "time": time.time(), "error": "no failure was recorded"}


def _where(r: dict[str, Any]) -> str:
    host = f", {r['host']}" if r.get("host") else ""
    if "rank" in r:
        return f"rank {r['rank']} (node {r['node']}{host})"
    return f"node {r['node']}{host}"


def report(folder: str | os.PathLike, nnodes: int | None = None) -> str:
    """The failures of one try, consequences first; the last line is the one ROOT CAUSE."""
    records = load(folder)
    if not records:
        return (
            f"ROOT CAUSE unknown: no failure record in {folder}: see the job log above (a kill before anything "
            "could report, or a failure outside training)"
        )
    cause = root_cause(records, nnodes)
    lines = [f"===== {len(records)} failure record(s) in {folder}; the root cause comes last ====="]
    for r in sorted((r for r in records if r is not cause), key=lambda r: r["time"]):
        how = "consequence" if is_consequence(r, records) else "also failed"
        lines.append(f"--- {how}, {r['time'] - cause['time']:+.1f} s: {_where(r)}: {_headline(r)[:300]}")
    detail = cause.get("traceback", "").rstrip() or cause["error"].strip()
    if detail != _headline(cause):
        lines.append(f"--- the root cause in full:\n{detail}")
    for key in ("log", "notebook"):
        if cause.get(key):
            lines.append(f"({key}: {cause[key]})")
    when = time.strftime("%H:%M:%S", time.localtime(cause["time"]))
    waiting = [r for r in records if r["kind"] == "hang" and r.get("waiting") and r is not cause]
    if cause["kind"] == "hang" and cause.get("stacks"):
        lines.append(f"(stacks of every rank: {Path(cause['stacks']).parent})")
    others = "; ".join(
        f"rank {r['rank']} (node {r['node']}) {r['error'].split(' waits ', 1)[-1]}" for r in waiting
    )
    tail = f"; the others wait: {others}" if cause["kind"] == "hang" and others else ""
    lines.append(f"===== ROOT CAUSE: {_where(cause)} at {when}: {_headline(cause)}{tail}")
    return "\n".join(lines)


def _headline(record: dict[str, Any]) -> str:
    """The first line of an error: the exception and its message (later lines are details and fixes)."""
    text = record["error"].strip()
    return text.splitlines()[0] if text else "(no message)"


def wait_for_primary(folder: str | os.PathLike, node: int, grace_s: float) -> float:
    """A node whose failure is only a consequence waits (up to grace_s) until the node that failed first
    has written its record, so that srun's kill-on-bad-exit does not stop that node before it reports.
    Returns the seconds waited."""
    t0 = time.time()
    while time.time() - t0 < grace_s:
        records = load(folder)
        if any(not is_consequence(r, records) for r in records):
            break
        time.sleep(0.2)
    return time.time() - t0


# ----------------------------------------------------------------------------- commands
def _report_command(args) -> int:
    folder = args.dir or os.environ.get(FAILURE_DIR_ENV)
    if not folder:
        tries = sorted((Path(args.run) / "logs" / "failures").glob("*-try*"), key=lambda p: p.stat().st_mtime)
        folder = tries[-1] if tries else Path(args.run) / "logs" / "failures"
    print(report(folder, args.nnodes), flush=True)
    records = load(folder)
    hung = any(r["kind"] == "hang" for r in records)  # the watchdog ended training
    return args.hang_status if hung and args.hang_status else 0


def _node_exit_command(args) -> int:
    folder = args.dir or os.environ.get(FAILURE_DIR_ENV)
    if not folder:
        return 0  # not in a job that records failures
    node = _node() if args.node is None else args.node
    record_node(folder, node, args.rc, args.log, args.notebook)
    wait_for_primary(folder, node, args.grace_s)
    return 0


def register(subparsers) -> None:
    """`failure-report RUN`: the root cause of a failed try, last. `node-exit`: record a node's failure
    (the job script calls it when a node's papermill or train command fails)."""
    p = subparsers.add_parser("failure-report", help="the failures of a run's last try, root cause last")
    p.add_argument("run", help="the run folder")
    p.add_argument(
        "--dir", help=f"a failure-record folder (default: ${FAILURE_DIR_ENV}, else the newest try)"
    )
    p.add_argument("--nnodes", type=int, default=None, help="nodes in the job (to name silent ones)")
    p.add_argument(
        "--hang-status", type=int, default=0, help="exit with this status when the cause is a hang"
    )
    p.set_defaults(func=_report_command)
    n = subparsers.add_parser("node-exit", help="(job script) record that this node's training failed")
    n.add_argument("--rc", type=int, required=True, help="the exit status of papermill / the train command")
    n.add_argument("--node", type=int, default=None, help="node rank (default: $SLURM_NODEID)")
    n.add_argument("--log", help="this node's output")
    n.add_argument("--notebook", help="this node's executed notebook")
    n.add_argument("--dir", help=f"failure-record folder (default: ${FAILURE_DIR_ENV})")
    n.add_argument("--grace-s", type=float, default=10.0, help="wait this long for the root cause's record")
    n.set_defaults(func=_node_exit_command)
