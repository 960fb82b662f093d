"""Headless kernels on Unix sockets (workshop_lib/kernel_sockets.py): no TCP port that a neighbour's kernel,
started at the same moment, could be given too."""

import asyncio
import os
import tempfile

from papermill.engines import papermill_engines

from workshop_lib import kernel_sockets
from workshop_lib.kernel_sockets import KernelManager


async def _run(km: KernelManager, code: str) -> str:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        out = []
        reply = await kc.execute_interactive(
            code, timeout=30, output_hook=lambda m: out.append(m["content"].get("text", ""))
        )
        assert reply["content"]["status"] == "ok"
        return "".join(out)
    finally:
        kc.stop_channels()


def test_two_kernels_started_at_once_each_get_their_own_sockets_and_leave_none():
    async def main():
        kms = [KernelManager(kernel_name="python3") for _ in range(2)]
        await asyncio.gather(*(km.start_kernel() for km in kms))
        try:
            folders = [os.path.dirname(km.ip) for km in kms]
            assert [km.transport for km in kms] == ["ipc", "ipc"]
            assert folders[0] != folders[1]  # jupyter_client alone would put both in ./kernel-ipc-1...5
            outs = await asyncio.gather(*(_run(km, f"print({i} * 7)") for i, km in enumerate(kms)))
            assert outs == ["0\n", "7\n"]  # each client reached its own kernel
            assert all(len(os.listdir(f)) == 5 for f in folders)  # shell, iopub, stdin, control, heartbeat
            await kms[0].restart_kernel()  # Kernel > Restart: the same sockets, bound again
            assert await _run(kms[0], "print('again')") == "again\n"
        finally:
            await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms))
        assert not any(os.path.exists(f) for f in folders)

    asyncio.run(main())


def test_a_temporary_folder_too_long_for_a_socket_name_falls_back_to_tcp(tmp_path, monkeypatch):
    long = tmp_path / ("x" * 100)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    km = KernelManager(kernel_name="python3")
    assert km.transport == "tcp" and km.ip in ("127.0.0.1", "localhost")


def test_papermill_knows_the_engine_by_name():
    """`papermill --engine workshop` (the job script): the entry point in pyproject.toml is installed."""
    assert papermill_engines.get_engine("workshop") is kernel_sockets.Engine


def test_a_reply_whose_wake_up_was_consumed_elsewhere_still_arrives():
    """The client waits; the reply arrives, but its wake-up is consumed elsewhere (here: a check of the socket's
    events from outside asyncio, while the loop is busy). A plain wait then misses the reply for good; the kit's
    channel sees it at its next slice."""
    import time

    import zmq
    from jupyter_client.channels import AsyncZMQSocketChannel

    async def reply_while_waiting(kc, wait) -> tuple[asyncio.Future, float]:
        waiting = asyncio.ensure_future(wait)
        await asyncio.sleep(0.1)  # the wait has registered its wake-up
        kc.kernel_info()
        outside = zmq.Socket.shadow(kc.shell_channel.socket.underlying)
        deadline = time.monotonic() + 30
        while not outside.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # blocks the loop; consumes the wake-up
            assert time.monotonic() < deadline, "no reply in 30 s"
            time.sleep(0.01)
        return waiting, time.monotonic()

    async def main():
        km = KernelManager(kernel_name="python3")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            for _ in range(5):  # on a loaded machine the reply can come in by another path: try again
                plain, _ = await reply_while_waiting(kc, AsyncZMQSocketChannel.get_msg(kc.shell_channel))
                done, _ = await asyncio.wait([plain], timeout=3)
                if not done:
                    break
            else:
                raise AssertionError(
                    "5 times the plain wait saw the reply: no wake-up was lost, nothing tested"
                )
            plain.cancel()
            assert (await kc.shell_channel.get_msg(timeout=1))["msg_type"] == "kernel_info_reply"  # drained
            ours, arrived = await reply_while_waiting(kc, kc.shell_channel.get_msg())
            reply = await asyncio.wait_for(ours, 5)
            assert reply["msg_type"] == "kernel_info_reply" and time.monotonic() - arrived < 2
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    asyncio.run(main())
