"""The Slurm job's side of the rules: what slurm/train.sbatch asks Python, so that each rule has one home.

    eval "$(python -m workshop_lib job-env RUN_DIR)"     # MASTER_ADDR/PORT, control files, try, failure folder
    python -m workshop_lib try-end RUN_DIR --ended hang   # a try that ended without training recording it

job-env runs in the batch script, on the job's first node, which is the master (rank 0's host): the port is
chosen free there (ports.choose_master_port) and exported to every node through srun's environment.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

from . import failures, launch, ports, runfolder
from .control import PREEMPTED_FILE, STOP_FILE, TRY_ENV


def job_env(run_dir: str | os.PathLike) -> dict[str, str]:
    """Rank 0's host and a free rendezvous port on it, the control files, this try's number (counting across
    jobs of the same run) and its failure-record folder."""
    run_dir = Path(run_dir).resolve()
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    nnodes = int(os.environ.get("SLURM_NNODES", 1))
    master = (launch.slurm_first_host() if nnodes > 1 else None) or "127.0.0.1"
    here = master in ("127.0.0.1", "localhost") or master == socket.gethostname().split(".")[0]
    if here:
        port = ports.choose_master_port(job_id)
    else:  # not on the master node (an unusual batch host): the derived port, as every node derives it
        print(
            f"job-env: this is {socket.gethostname()}, not the master {master}: port not checked",
            file=sys.stderr,
        )
        port = ports.master_port_for_job(job_id)
    try_ = runfolder.next_try(run_dir)
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
        "STOP_FILE": str(run_dir / STOP_FILE),
        "PREEMPTED_FILE": str(run_dir / PREEMPTED_FILE),
        failures.FAILURE_DIR_ENV: str(failures.record_dir(run_dir, job_id, try_)),
        "TRY": str(try_),
        TRY_ENV: str(try_),
    }


def _job_env_command(args) -> int:
    for key, value in job_env(args.run_dir).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _try_end_command(args) -> int:
    """Record the try (quietly: the job log's last line stays the ROOT CAUSE). With --requeue-hangs N:
    exit 0 when this job may requeue after its hang (at most N hung tries per job), else 1."""
    run_dir = Path(args.run_dir)
    runfolder.record_ended_try(run_dir, args.ended)
    if args.requeue_hangs is None:
        return 0
    job = os.environ.get("SLURM_JOB_ID")
    hangs = sum(1 for t in runfolder.tries(run_dir) if t.get("ended") == "hang" and t.get("job_id") == job)
    if hangs > args.requeue_hangs:
        print(f"job {job}: {hangs} tries hung; not requeued again (hang_requeues: {args.requeue_hangs})")
        return 1
    print(
        f"hang {hangs} in job {job} (hang_requeues: {args.requeue_hangs}): requeueing it to resume from the last checkpoint"
    )
    return 0


def register(subparsers) -> None:
    """`job-env RUN_DIR`: shell exports for slurm/train.sbatch (it evals them). `try-end`: record a try that
    training could not record (hang, failure, an early cancel)."""
    p = subparsers.add_parser("job-env", help="environment for the Slurm job script (it evals the output)")
    p.add_argument("run_dir", help="the run folder of this job (or array task)")
    p.set_defaults(func=_job_env_command)
    p = subparsers.add_parser("try-end", help="(job script) record how a try ended when training could not")
    p.add_argument("run_dir", help="the run folder")
    p.add_argument("--ended", required=True, choices=["hang", "failed", "cancelled"])
    p.add_argument(
        "--requeue-hangs", type=int, help="exit 0 if this job may requeue after a hang (max per job)"
    )
    p.set_defaults(func=_try_end_command)
