"""How a Slurm job, its nodes and training talk: the run folder's control files, this node's rank, the try.

The few facts the launcher, the run folder, the failure records and the job script all need live here, below
all of them (the job script gets them through `job-env`), so that none of those modules imports another
only to borrow a name.
"""

from __future__ import annotations

import os

STOP_FILE = "STOP"  # written by the job (or by hand): training checkpoints at the next step and stops.
# Its content says why: "cancel" (scancel: record the try as cancelled, no requeue), else a time limit.
PREEMPTED_FILE = "PREEMPTED"  # written by training when it stopped with a checkpoint: the job requeues
CANCEL = "cancel"  # STOP's content when the job was cancelled
TRY_ENV = "WORKSHOP_TRY"  # this try's number in the run (counts across jobs; the job script exports it)


def this_node_rank(nnodes: int = 1, given: int | None = None) -> int:
    """This node's rank: as given, else $SLURM_NODEID (or $NODE_RANK) when there are several nodes, else 0."""
    if given is not None:
        return int(given)
    return int(os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK", 0))) if nnodes > 1 else 0


def this_try() -> int:
    """The try of the run this process belongs to: $WORKSHOP_TRY (job-env counts tries across jobs), else
    Slurm's restart count of this job, else 0."""
    return int(os.environ.get(TRY_ENV, os.environ.get("SLURM_RESTART_COUNT", 0)))
