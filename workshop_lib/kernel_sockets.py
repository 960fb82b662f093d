"""Headless notebook kernels that cannot collide with their neighbours: Unix sockets, not TCP ports.

jupyter_client picks a kernel's five TCP ports in the client by binding port 0 and closing the sockets; the
kernel binds them a second or so later. A process beside it (another job's papermill on a shared node, a job
array's tasks starting together, a test worker) can be given the same ports in between. Then one kernel dies
at start, or a client talks to the wrong kernel. 1200 tiny notebooks run three at a time on 2 cores: one
kernel died at bind (its papermill waited 60 s), another got a stranger's heartbeat on its control socket;
600 with these sockets: neither (benchmarks/RESULTS.md). On one machine a kernel needs no ports:
`transport="ipc"` uses Unix sockets, here in a private folder per kernel (jupyter_client's own default would be
`kernel-ipc-1...5` in the working directory, shared by every kernel started there).

Its clients also wait for a message in slices of a second (`Channel`): a wait that rests on one wake-up can miss
a reply that has arrived, and papermill has no time limit of its own.

Used by papermill's `--engine workshop` (the job script; `pyproject.toml` registers it), `demo.run_notebook`,
the tests' kernels, and JupyterLab in a lab job (`LAB_OPTION`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from queue import Empty

from jupyter_client import AsyncKernelClient, AsyncKernelManager
from jupyter_client.channels import AsyncZMQSocketChannel
from traitlets import DottedObjectName, Type, default

# a Unix socket's path holds at most 107 bytes; the folder name plus "/k-5" must fit
_MAX_SOCKET_DIR = 96


class UnixSockets:
    """A local kernel on Unix sockets in its own folder under $TMPDIR (removed when the kernel ends).
    Falls back to TCP when that folder's path is too long for a socket name. Mixed into a kernel manager."""

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc" if len(self._socket_dir()) <= _MAX_SOCKET_DIR else "tcp"

    def _socket_dir(self) -> str:
        if not getattr(self, "_sockets", None):
            self._sockets = tempfile.mkdtemp(prefix="kernel-")
        return self._sockets

    def _ip_default(self) -> str:  # jupyter_client's dynamic default for `ip`, which ipc takes as a path
        return os.path.join(self._socket_dir(), "k") if self.transport == "ipc" else super()._ip_default()

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:  # a restarted kernel binds the same sockets again
            shutil.rmtree(self._socket_dir(), ignore_errors=True)


class Channel(AsyncZMQSocketChannel):
    """Waits for a message in slices of a second. An asyncio wait on a zmq socket rests on its file descriptor's
    wake-up, and when that wake-up is consumed elsewhere the wait never sees the message that has arrived: the
    test suite's kernels hung that way (notebook 04's widget cell, its reply in the client's socket, both
    processes idle) until nbclient's 10-minute limit, and papermill has none. Each new poll checks the socket
    first, so a missed wake-up costs at most a second."""

    SLICE = 1.0

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.SLICE if deadline is None else min(self.SLICE, deadline - time.monotonic())
            try:
                return await super().get_msg(timeout=max(left, 0.0))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class KernelClient(AsyncKernelClient):
    """nbclient's and papermill's client of the kernel below: its four message channels are `Channel`s."""

    shell_channel_class = Type(Channel)
    iopub_channel_class = Type(Channel)
    stdin_channel_class = Type(Channel)
    control_channel_class = Type(Channel)


class KernelManager(UnixSockets, AsyncKernelManager):
    """papermill's and nbclient's kernel manager (both take it as `kernel_manager_class`)."""

    client_class = DottedObjectName("workshop_lib.kernel_sockets.KernelClient")
    client_factory = Type(KernelClient)


# JupyterLab's server takes its kernel manager by name (this option); papermill finds its engine by the entry
# point "workshop" (pyproject.toml)
LAB_OPTION = "--AsyncMappingKernelManager.kernel_manager_class=workshop_lib.kernel_sockets.LabKernelManager"


def __getattr__(name: str):
    """Engine and LabKernelManager are made on first use: importing papermill loads every engine's entry point,
    this module's included, so this module must not import papermill (or jupyter_server, for the lab) itself."""
    if name == "Engine":
        from papermill.engines import NBClientEngine

        class Engine(NBClientEngine):
            """papermill's own engine with the kernel above: `papermill --engine workshop in.ipynb out.ipynb`."""

            @classmethod
            def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
                kwargs.setdefault("kernel_manager_class", KernelManager)
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

        made = Engine
    elif name == "LabKernelManager":
        from jupyter_server.services.kernels.kernelmanager import ServerKernelManager

        made = type(name, (UnixSockets, ServerKernelManager), {"__doc__": "JupyterLab's kernel manager."})
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made.__module__ = __name__
    globals()[name] = made
    return made
