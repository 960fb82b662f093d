"""A real Slurm cluster on localhost for the tests: munged, slurmctld and N slurmd ("nodes" n1..nN).

One cluster serves the whole test session (`shared()`, the `cluster` fixture): 3 nodes, so that 3-rank
runs can be tested, each advertising 4 CPUs so that several 1-CPU jobs run side by side.

Each slurmd runs in its own mount and UTS namespace: its hostname is its node name, and a private
copy of /etc/hosts makes n1..nN resolve to 127.0.0.1 inside jobs (MASTER_ADDR is a node name), without
touching the machine's real /etc/hosts. Config, state and logs live in a temporary folder. The cluster
has its own munged (its own socket, AuthInfo=socket=...) and free ports, so that it runs beside another
local cluster with its own jobs. Needs root and Debian's slurmctld, slurmd, slurm-client and munge
(scripts/install_slurm.sh).

`wait` and `wait_for` stop as soon as a job has ended, and a failed job shows its log's ROOT CAUSE.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

NEEDED = ["slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "munged", "unshare"]


def unavailable() -> str | None:
    """Why a local cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd, munged and mount namespaces)"
    missing = [b for b in NEEDED if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/install_slurm.sh as root"
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class LocalSlurm:
    def __init__(self, root: Path, nodes: int = 2, cpus: int = 2):
        self.root, self.nodes, self.cpus = Path(root), [f"n{i}" for i in range(1, nodes + 1)], cpus
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.procs: list[subprocess.Popen] = []
        self.munge = Path(tempfile.mkdtemp(prefix="workshop-munge-"))  # munged must reach it: not under root
        self.munge_socket = self.munge / "munge.socket"

    def write_config(self) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        for d in ("state", "log", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            (self.root / "spool" / n).mkdir(exist_ok=True)
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost " + " ".join(self.nodes) + "\n::1 localhost\n")
        lines = [
            "ClusterName=workshop-test",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={self.root}/state",
            f"SlurmctldPidFile={self.root}/slurmctld.pid",
            f"SlurmctldLogFile={self.root}/log/slurmctld.log",
            f"SlurmdSpoolDir={self.root}/spool/%n",
            f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmdLogFile={self.root}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.root}/log/jobcomp.txt",
            "MpiDefault=none",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "MinJobAge=3600",  # a record outlives the whole test session (a purged job is "Invalid job id")
            "KillWait=5",
            "SlurmdParameters=config_overrides",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
        ]
        for n, port in zip(self.nodes, node_ports, strict=True):
            lines.append(
                f"NodeName={n} NodeHostname={n} NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus} "
                f"RealMemory=4000 State=UNKNOWN"
            )
        lines.append(
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP"
        )
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30) -> float:
        t0 = time.time()
        self.write_config()
        shutil.chown(self.munge, "munge", "munge")
        self.munge.chmod(0o755)
        m = self.munge
        subprocess.run(
            ["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={self.munge_socket}"]
            + [f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
            check=True,
        )
        self.procs.append(
            subprocess.Popen(
                ["/usr/sbin/slurmctld", "-D", "-c", "-i", "-f", str(self.conf)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )
        for n in self.nodes:
            script = (
                f"mount --bind {self.root}/hosts /etc/hosts && hostname {n} && "
                f"exec /usr/sbin/slurmd -D -N {n} -f {self.conf}"
            )
            self.procs.append(
                subprocess.Popen(
                    ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
        while time.time() - t0 < timeout:
            out = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.split()[:2] == ["idle", str(len(self.nodes))]:
                return time.time() - t0
            time.sleep(0.1)
        raise RuntimeError(
            f"local Slurm did not come up in {timeout} s: {out.stdout} {out.stderr}\n" + self.logs()
        )

    def logs(self) -> str:
        text = []
        for f in sorted((self.root / "log").glob("*.log")):
            text.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(text)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr}")
        return out

    def job(self, job_id: str) -> dict:
        """scontrol show job as a dict (kept MinJobAge seconds after the end)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        info = {}
        for field in out.split():
            if "=" in field:
                k, v = field.split("=", 1)
                info.setdefault(k, v)
        return info

    ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")

    def ended(self, job_id: str) -> dict | None:
        """The job's record once it has ended for good (a requeued job has not), else None."""
        info = self.job(job_id)
        return info if info.get("JobState") in self.ENDED else None

    def wait(self, job_id: str, timeout: float = 600) -> dict:
        """Until the job has ended; its scontrol record."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            info = self.ended(job_id)
            if info is not None:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not finished after {timeout} s: {self.job(job_id)}")

    def wait_for(self, job_id: str, predicate, timeout: float, what: str, log=None) -> None:
        """Until predicate() holds; fails at once, with the job's end and its root cause, if the job ends
        first (log: a callable returning the job log's text)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            info = self.ended(job_id)
            if info is not None and not predicate():
                text = log() if log else ""
                cause = [x for x in text.splitlines() if "ROOT CAUSE" in x]
                raise AssertionError(
                    f"job {job_id} ended ({info.get('JobState')}, exit {info.get('ExitCode')}) before {what}: "
                    + (cause[-1] if cause else "no ROOT CAUSE in its log")
                    + "\n"
                    + text[-3000:]
                )
            time.sleep(0.2)
        raise TimeoutError(
            f"waited {timeout} s for {what} (job {job_id}: {self.job(job_id).get('JobState')})"
        )

    def stop(self) -> None:
        self.run("scancel", "--user", "root", check=False)
        time.sleep(0.5)
        self.run("scontrol", "shutdown", check=False)
        deadline = time.time() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        # without cgroups, job processes can outlive slurmd: kill every process of this cluster (they carry
        # our SLURM_CONF in their environment), never this test process
        mark = f"SLURM_CONF={self.conf}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), 9)
            except (OSError, PermissionError):
                pass
        pid = self.munge / "munged.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text()), 15)
            except (OSError, ValueError):
                pass


_SHARED: LocalSlurm | None = None


def shared(nodes: int = 3, cpus: int = 4) -> LocalSlurm:
    """The session's cluster: started on first use, stopped when the test process exits."""
    global _SHARED
    if _SHARED is None:
        root = Path(tempfile.mkdtemp(prefix="workshop-slurm-"))
        cluster = LocalSlurm(root, nodes=nodes, cpus=cpus)
        seconds = cluster.start()
        print(f"\nlocal Slurm cluster ({nodes} nodes) up in {seconds:.2f} s")

        def stop() -> None:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(cluster.munge, ignore_errors=True)

        atexit.register(stop)
        _SHARED = cluster
    return _SHARED


def for_tests() -> LocalSlurm:
    """The shared cluster for a test module's `cluster` fixture; skips where it cannot run (a failure in CI)."""
    why = unavailable()
    if why:
        pytest.skip(f"no local Slurm cluster: {why}")
    return shared()
