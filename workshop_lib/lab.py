"""JupyterLab on a GPU node for the interactive workshop: a Slurm job, its URL and the SSH tunnel to it.

On a cluster, the machine where the kit is installed is a login node without GPUs. `lab` submits a job that
runs JupyterLab with the kit's environment from a profile (modules, container, venv, HF cache: the job
script's own environment section), waits until it answers, and prints the job id, the URL with its token,
the SSH tunnel command and how to stop it. The port is chosen free on the node when the job starts, the token
is random and always required; it is written to a file only you can read, never to the job script or `ps`.

    python -m workshop_lib lab --profile lumi --gpus 1 --time 02:00:00 --reservation my_course
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .jobscript import (  # the job script's own environment
    SubmitError,
    load_profile,
    output_root,
    python_command,
    setup_lines,
)
from .paths import REPO_ROOT, resolve

TEMPLATE = REPO_ROOT / "slurm" / "lab.sbatch"


def render(
    profile: dict,
    folder: Path,
    root: Path,
    time_limit: str | None,
    gpus: int | None,
    partition: str | None,
    reservation: str | None,
    runs: Path | None = None,
) -> str:
    """The job script for a profile and the options of the command line. runs: where the notebooks it
    serves write their run folders (WORKSHOP_OUTPUT_ROOT)."""
    from .kernel_sockets import LAB_OPTION  # it imports jupyter_client: only when a script is rendered

    gpus = profile.get("gpus_per_node") if gpus is None else gpus
    options = {
        "--account": profile.get("account"),
        "--partition": partition or profile.get("lab_partition") or profile.get("partition"),
        "--time": time_limit or "02:00:00",
        "--reservation": reservation,
        "--cpus-per-task": _share(profile.get("cpus_per_task"), gpus, profile.get("gpus_per_node")),
        "--gpus-per-node": gpus or None,
    }
    lines = [f"#SBATCH {k}={v}" for k, v in options.items() if v not in (None, "")]
    fields = {
        "JOB_NAME": f"lab-{getpass.getuser()}",
        "LOG_FILE": str(folder / "lab-%j.out"),
        "SBATCH_LINES": "\n".join(lines),
        "REPO": str(REPO_ROOT),
        "ROOT": str(root),
        "SETUP": setup_lines(profile),
        "PYTHON": python_command(profile),
        "TOKEN_FILE": str(folder / "token"),
        "CONNECTION": str(folder / "connection.json"),
        "RUNS": str(runs or folder.parent.parent),
        "KERNELS": LAB_OPTION,
    }
    text = TEMPLATE.read_text()
    for k, v in fields.items():
        text = text.replace(f"@@{k}@@", v)
    return text


def _share(cpus, gpus: int | None, per_node: int | None):
    """The cores that come with `gpus` of a node's `per_node` GPUs (all of them without GPUs)."""
    if not cpus or not gpus or not per_node:
        return cpus
    return max(1, int(cpus) * int(gpus) // int(per_node))


def _reachable_name(info: dict) -> str:
    """The node's name if this machine resolves it (a login node does), else the address the node gave."""
    try:
        socket.gethostbyname(info["host"])
        return info["host"]
    except OSError:
        return info.get("addr") or info["host"]


def _squeue_state(job: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() or None


def wait_until_up(job: str, folder: Path, token: str, timeout_s: float) -> dict:
    """Poll until JupyterLab answers with the token; stop at once if the job has ended."""
    connection = folder / "connection.json"
    end = time.time() + timeout_s
    while time.time() < end:
        state = _squeue_state(job)
        if state is None or state in ("FAILED", "CANCELLED", "TIMEOUT", "COMPLETED"):
            log = next(folder.glob(f"lab-{job}.out"), None)
            tail = log.read_text()[-2000:] if log else "(no log)"
            raise SubmitError(
                f"job {job} ended before JupyterLab answered ({state or 'gone'}). Its log:\n{tail}"
            )
        if connection.exists():
            info = json.loads(connection.read_text())
            info["reach"] = _reachable_name(info)
            try:
                url = f"http://{info['reach']}:{info['port']}/api/status?token={token}"
                with urllib.request.urlopen(url, timeout=3):
                    return info
            except OSError:
                pass
        time.sleep(1)
    raise SubmitError(
        f"job {job} did not answer within {timeout_s:.0f} s (queued or starting: `squeue -j {job}`); "
        f"it keeps running: `scancel {job}` to stop it"
    )


def lab(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # the profile's output_root, as submit uses it; the notebooks in the job write their runs there too
    # (WORKSHOP_OUTPUT_ROOT), never into a shared installation
    runs = resolve(output_root(profile, args.output_root))
    folder = runs / "lab" / f"{getpass.getuser()}-{stamp}"
    root = Path(args.root).resolve() if args.root else REPO_ROOT
    script = render(profile, folder, root, args.time, args.gpus, args.partition, args.reservation, runs)
    if args.dry_run:
        print(script)
        return 0
    folder.mkdir(parents=True, mode=0o700)
    token = secrets.token_hex(24)
    token_file = folder / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    (folder / "lab.sbatch").write_text(script)
    extra = [a for a in args.sbatch if a != "--"]
    out = subprocess.run(
        ["sbatch", "--parsable", *extra, str(folder / "lab.sbatch")], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SubmitError(f"sbatch refused the job: {out.stderr.strip()}")
    job = out.stdout.strip().split(";")[0]
    print(f"job {job} submitted; waiting for JupyterLab (Ctrl-C stops waiting, not the job) ...", flush=True)
    info = wait_until_up(job, folder, token, args.wait_s)
    host, port = info["reach"], info["port"]
    login = socket.getfqdn()
    print(
        "\n".join(
            [
                f"JupyterLab is up in job {job} on {host}, port {port}.",
                f"  on the cluster's network:  http://{host}:{port}/lab?token={token}",
                "  from your laptop, open a tunnel, then the local URL:",
                f"    ssh -N -L {port}:{host}:{port} {getpass.getuser()}@{login}",
                f"    http://localhost:{port}/lab?token={token}",
                f"  stop it (and everything it runs): scancel {job}   (it also ends at its time limit)",
                f"  log: {folder / f'lab-{job}.out'}",
            ]
        )
    )
    return 0


def _command(args) -> int:
    try:
        return lab(args)
    except SubmitError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 2


def register(sub) -> None:
    p = sub.add_parser("lab", help="JupyterLab on a compute node with the kit's environment (a Slurm job)")
    p.add_argument("--profile", default="local", help="cluster profile: account, partition, environment")
    p.add_argument("--time", help="time limit (default 02:00:00)")
    p.add_argument("--gpus", type=int, help="GPUs (default: the profile's gpus_per_node)")
    p.add_argument("--partition", help="default: the profile's lab_partition, else its partition")
    p.add_argument("--reservation", help="a course reservation")
    p.add_argument("--root", help="the folder JupyterLab opens (default: the repository)")
    p.add_argument("--output-root", help="where lab folders go (default runs/): runs/lab/<you>-<time>/")
    p.add_argument("--wait-s", type=float, default=600, help="how long to wait for JupyterLab to answer")
    p.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    p.add_argument("sbatch", nargs=argparse.REMAINDER, help="after --: options for sbatch")
    p.set_defaults(func=_command)
