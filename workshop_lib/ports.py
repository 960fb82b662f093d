"""Rendezvous ports: the one a Slurm job's nodes agree on without talking, and how a taken one is passed by.

The port is derived from the job id and checked free on the master node when the job starts (`job-env` runs
`choose_master_port` there and exports the result to every node).
"""

from __future__ import annotations

import errno
import socket

PORTS = range(20000, 32768)  # rendezvous ports: below Linux's ephemeral range (32768-60999), which the
# kernel hands out to outgoing connections at any moment


PORT_STRIDE = 4099  # a prime that does not divide len(PORTS): the walk visits every port once


def master_port_for_job(job_id: int | str) -> int:
    """The port a Slurm job tries first: derived from its id, so that the nodes agree without talking.
    It is not unique (ids agree modulo the range; two clusters hand out the same ids; any program may hold
    it): `choose_master_port` checks it on the master node and moves on when it is taken."""
    return PORTS.start + int(job_id) % len(PORTS)


def port_is_free(port: int) -> bool:
    """Torch's store could listen on this TCP port, on any address (it binds all): nothing listens on it.

    Asked as the store asks, with SO_REUSEADDR: connections of a finished try (TIME_WAIT, a minute) do not
    keep a requeued job from its own port, which would send it to the next one, another job's."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
                # the family is not there (no IPv6 here): it cannot collide
    return True


def choose_master_port(job_id: int | str) -> int:
    """The rendezvous port, chosen on the master node when the job starts (the one home of this rule; the
    job script runs it through `job-env` on its first node, which is the master, and exports it to every
    node): the job's derived port if it is free, else the first free one PORT_STRIDE apart (not the next
    one: that is the next job's derived port)."""
    first = master_port_for_job(job_id)
    for i in range(len(PORTS)):
        port = PORTS.start + (first - PORTS.start + i * PORT_STRIDE) % len(PORTS)
        if port_is_free(port):
            return port
    raise OSError(f"no free TCP port in {PORTS.start}-{PORTS.stop - 1} on {socket.gethostname()}")


def free_port() -> int:
    """A free TCP port on this host (for tests and local multi-process runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
