"""Launch: run a function in-process, as P processes on this node, or as one of N nodes.

One path from a laptop to many nodes: torch's elastic launcher starts `nproc_per_node` workers on
each of `nnodes` nodes, and all of them join one torch.distributed group. In a SLURM job each
node runs the same notebook (one papermill per node); node rank, master address and port come
from the SLURM environment. (accelerate's notebook_launcher runs nothing distributed with one
process per node, so the kit uses torch's launcher directly.)

Workers are forked where that is safe (they inherit the notebook's prepared data for free) and spawned
where it is not (ROCm builds of torch, a GPU runtime already initialised here): `start_method()` decides
and says why; WORKSHOP_START_METHOD=fork|spawn overrides it. On a cluster node each worker can bind
itself to the CPU cores closest to its GPU (WORKSHOP_CPU_BIND, from the profile's cpu_bind_masks).
While workers run, the hang watchdog (watchdog.py) and the exit watcher (failures.py) watch them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from . import failures, watchdog
from .control import this_node_rank
from .ports import free_port, master_port_for_job

START_METHOD_ENV = "WORKSHOP_START_METHOD"  # fork | spawn: overrides the kit's choice
CPU_BIND_ENV = "WORKSHOP_CPU_BIND"  # hex core masks, one per local rank in GPU order (the job script sets it)


class LaunchError(RuntimeError):
    """A worker failed: the message carries its rank and its own traceback."""


@dataclass
class Topology:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def slurm_first_host() -> str | None:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=20
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    # no scontrol: expand the simple forms n[1-3] / n1,n2 ourselves
    first = nodelist.split(",")[0]
    m = re.match(r"^([^\[]+)\[(\d+)", first)
    return m.group(1) + m.group(2) if m else first


def topology(
    nnodes: int = 1,
    nproc_per_node: int = 1,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> Topology:
    """Fill in what was not given from SLURM (SLURM_NODEID, the node list, the job id) or local defaults."""
    node_rank = this_node_rank(nnodes, node_rank)
    if master_addr is None:
        master_addr = (
            os.environ.get("MASTER_ADDR") or (slurm_first_host() if nnodes > 1 else None) or "127.0.0.1"
        )
    if master_port is None:
        if os.environ.get("MASTER_PORT"):
            master_port = int(os.environ["MASTER_PORT"])
        elif nnodes == 1:
            master_port = free_port()  # one node: any free port (a fixed one collides with a leftover run)
        elif os.environ.get("SLURM_JOB_ID"):  # a job that did not go through job-env: each node derives it
            master_port = master_port_for_job(os.environ["SLURM_JOB_ID"])
        else:
            master_port = 29500
    if not 0 <= node_rank < nnodes:
        raise LaunchError(f"node_rank {node_rank} is outside 0..{nnodes - 1} (nnodes={nnodes})")
    return Topology(nnodes, nproc_per_node, node_rank, master_addr, int(master_port))


def assert_cuda_untouched() -> None:
    """Forked workers cannot use CUDA if the parent initialised it: fail now, clearly, not in a worker."""
    import torch

    if torch.cuda.is_initialized():
        raise LaunchError(
            f"CUDA was initialised in this process (the notebook kernel) before launching workers, and "
            f"{START_METHOD_ENV}=fork asks to fork them: forked workers cannot use it. Unset {START_METHOD_ENV} "
            "(the kit then spawns the workers), or restart the kernel and launch before anything touches the GPU."
        )


class StartMethod(NamedTuple):
    """How the workers start (fork or spawn) and the reason, printed once per launch."""

    name: str
    reason: str


def start_method() -> StartMethod:
    """fork where it is safe, spawn where it is not; WORKSHOP_START_METHOD=fork|spawn decides instead.

    fork is cheap (no imports repeated) and the workers inherit the notebook's prepared data. It is unsafe
    once a GPU runtime lives in this process: CUDA refuses forked children, and on ROCm builds HIP may be
    initialised without torch knowing (torch.cuda.device_count() falls back to hipGetDeviceCount when the
    amdsmi package is missing), so ROCm builds always spawn."""
    import torch

    forced = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if forced:
        if forced not in ("fork", "spawn"):
            raise LaunchError(
                f"{START_METHOD_ENV}={forced!r}: use fork or spawn, or unset it to let the kit choose"
            )
        return StartMethod(forced, f"{START_METHOD_ENV}={forced} is set")
    if getattr(torch.version, "hip", None):
        return StartMethod(
            "spawn",
            f"torch is a ROCm build (HIP {torch.version.hip}): a forked worker may inherit an initialised HIP runtime",
        )
    if torch.cuda.is_initialized():
        return StartMethod("spawn", "CUDA is initialised in this process: forked workers could not use it")
    return StartMethod("fork", "no GPU runtime initialised here: forked workers inherit the prepared data")


def parse_cpu_masks(text: str) -> list[set[int]]:
    """'0xfe,fe00' -> [{1..7}, {9..15}]: one set of cores per local rank (hex masks as srun's mask_cpu)."""
    masks = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        try:
            bits = int(part, 16)
        except ValueError:
            raise LaunchError(
                f"{CPU_BIND_ENV}: mask {i} {part!r} is not hexadecimal: give one mask per local rank, e.g. "
                "0xfe,0xfe00 (the profile's cpu_bind_masks)"
            ) from None
        masks.append({c for c in range(bits.bit_length()) if bits >> c & 1})
    return masks


def cpu_binding(nproc: int) -> list[set[int]] | None:
    """The cores each local rank binds to, from WORKSHOP_CPU_BIND (None: no binding). Cores this process
    may not use (outside the job's allocation) are dropped; a rank left with none is an error."""
    text = os.environ.get(CPU_BIND_ENV, "").strip()
    if not text:
        return None
    masks = parse_cpu_masks(text)
    if len(masks) < nproc:
        raise LaunchError(
            f"{CPU_BIND_ENV} has {len(masks)} mask(s) for {nproc} local workers: give one per GPU (the profile's "
            "cpu_bind_masks) or unset it"
        )
    allowed = os.sched_getaffinity(0)
    binding = [m & allowed for m in masks[:nproc]]
    for rank, cores in enumerate(binding):
        if not cores:
            raise LaunchError(
                f"{CPU_BIND_ENV}: local rank {rank}'s mask {sorted(masks[rank])} has no core this job may use "
                f"(allowed: {_ranges(allowed)}): ask for the whole node (--exclusive) or fix cpu_bind_masks"
            )
    return binding


def _ranges(cores: set[int]) -> str:
    """{1, 2, 3, 9} -> '1-3,9'."""
    out, run = [], []
    for c in sorted(cores):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _threads_per_worker(nproc: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def _die_with_parent() -> None:
    """Forked workers must not outlive the launcher (a killed kernel or job step): SIGKILL them with it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the launcher's own teardown still stops them


def _worker(
    fn: Callable,
    args: tuple,
    threads: int,
    quiet: bool,
    binding: list | None = None,
    state: str | None = None,
) -> Any:
    _die_with_parent()
    if state:  # pid, stacks on demand, liveness and progress for this node's watchdog
        watchdog.start_worker(state, int(os.environ.get("RANK", 0)))
        # NCCL/RCCL: a collective that outlives collective_timeout_s (the process group's timeout) aborts
        # its communicator and raises in every rank, and the flight recorder dumps what each rank was doing
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
        os.environ.setdefault("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", f"{state}/nccl_trace_rank_")
    if binding:  # the cores closest to this rank's GPU (LUMI-G: 7 per GCD); its threads stay on them
        cores = binding[int(os.environ.get("LOCAL_RANK", 0))]
        os.sched_setaffinity(0, cores)
        threads = len(cores)
    # pin threads: P workers x all cores each would oversubscribe the CPU (measured 13x slower)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)
    if quiet and int(os.environ.get("RANK", 0)) != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (one stream for the worker's lifetime)
    return fn(*args)


def _recorded(fn_and_args: tuple, failure_dir: str | None) -> Any:
    """The worker under torch elastic's error recording; an exception is also written, with its exact time,
    to the run's failure records (failures.py picks the root cause across ranks and nodes from them)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        return record(_worker)(*fn_and_args)
    except Exception as e:
        if failure_dir:
            failures.record_exception(failure_dir, int(os.environ.get("RANK", 0)), e)
        raise


def run(
    fn: Callable,
    *args: Any,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    quiet_ranks: bool = True,
    rdzv_timeout_s: int = 300,
    failure_dir: str | os.PathLike | None = None,
    start: StartMethod | None = None,
    hang_timeout_s: float | None = None,
) -> dict[int, Any]:
    """Run fn(*args) on every worker and return {global rank: result} for this node's workers.

    nproc_per_node=1 and nnodes=1: fn runs here, in-process (no process group), returns {0: result}.
    Otherwise torch's elastic launcher starts the workers (start: fork or spawn, default start_method();
    spawned workers need fn and args picklable, fn importable); they find each other through a static
    rendezvous at master_addr:master_port. A failing worker raises LaunchError with its traceback.
    failure_dir (default: $WORKSHOP_FAILURE_DIR, set by the Slurm job): where each failed rank's record
    goes (time, exception or signal), for `failure-report`. hang_timeout_s: the watchdog's limit (None:
    automatic, see watchdog.py); workers report progress with watchdog.report (callbacks.ReportProgress).
    """
    top = topology(nnodes, nproc_per_node, node_rank, master_addr, master_port)
    if top.world_size == 1:
        return {0: fn(*args)}
    start = start or start_method()
    if start.name == "fork":
        assert_cuda_untouched()
    binding = cpu_binding(top.nproc_per_node)
    print(f"launch: {top.nproc_per_node} worker(s) on this node start with {start.name}: {start.reason}")
    if binding:
        cores = ", ".join(f"{r}: {_ranges(c)}" for r, c in enumerate(binding))
        print(f"launch: CPU binding ({CPU_BIND_ENV}), local rank: cores -> {cores}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=top.nnodes,
        max_nodes=top.nnodes,
        nproc_per_node=top.nproc_per_node,
        run_id=os.environ.get("SLURM_JOB_ID", "workshop"),
        rdzv_backend="static",
        rdzv_endpoint=f"{top.master_addr}:{top.master_port}",
        rdzv_configs={"rank": top.node_rank, "timeout": rdzv_timeout_s},
        max_restarts=0,
        monitor_interval=0.5,
        start_method=start.name,
    )
    threads = _threads_per_worker(top.nproc_per_node)
    failure_dir = str(failure_dir or os.environ.get(failures.FAILURE_DIR_ENV) or "") or None
    state = tempfile.mkdtemp(prefix="workshop-workers-")  # this node's: pids, progress, stacks
    print(f"launch: {watchdog.auto_limit_text(hang_timeout_s)}")
    # torch elastic reports only the first failed worker it polls: a watcher records every worker's death
    watcher = failures.ExitWatcher(failure_dir, Path(state) / "pids", top.node_rank) if failure_dir else None
    dog = watchdog.Watchdog(state, failure_dir, top.node_rank, hang_timeout_s, top.world_size)
    dog.start()
    try:
        worker_args = (fn, args, threads, quiet_ranks, binding, state)
        results = elastic_launch(config, _recorded)(worker_args, failure_dir)
    except ChildFailedError as e:
        dog.stop()
        if failure_dir:  # at once: the job may kill this node soon after another node fails
            for rank, f in e.failures.items():
                failures.record_exit(failure_dir, rank, f.exitcode, f.pid, float(f.timestamp), top.node_rank)
            for trace in Path(state).glob("nccl_trace_rank_*"):  # NCCL's flight recorder, on a timeout
                shutil.copy(trace, Path(failure_dir) / trace.name)
        if dog.hang:
            raise LaunchError(
                f"training hung on node {top.node_rank} (no progress for the hang timeout): {dog.hang}. "
                "Every rank's stacks and the root cause: failure-report <run folder>"
            ) from None
        raise LaunchError(_failure_text(e)) from None
    finally:
        dog.stop()
        if watcher:
            watcher.stop()
        shutil.rmtree(state, ignore_errors=True)
    return dict(results)


def _failure_text(e: Any) -> str:
    lines = []
    for rank, failure in sorted(e.failures.items()):
        msg = failure.message
        if isinstance(
            msg, dict
        ):  # the error file's content: {"message": ..., "extraInfo": {"py_callstack": ...}}
            info = msg.get("extraInfo", {})
            msg = info.get("py_callstack") or msg.get("message") or str(msg)
        if not msg or msg == "<N/A>" or "To enable traceback" in str(msg):
            code = failure.exitcode
            if code is not None and code < 0:
                msg = f"killed by signal {signal.Signals(-code).name} (no Python traceback: killed, out of memory or crashed)"
            else:
                msg = f"exit code {code} (crash without a Python traceback)"
        lines.append(f"rank {rank} (pid {failure.pid}) failed:\n{msg}")
    return "\n".join(lines) or str(e)
