"""Failure records written in the order a multi-node hang writes them (fast: files only, no processes)."""

from workshop_lib import failures


def test_an_exception_after_the_watchdogs_verdict_keeps_the_hang_record(tmp_path):
    """Node 0's watchdog records rank 0 waiting in a collective; node 1's watchdog then ends its stopped rank,
    and rank 0's collective fails ('Connection closed by peer'). The root cause still names the stopped rank
    and where the other waits (before, the exception replaced rank 0's record and 'the others wait' was lost)."""
    failures.record_hang(
        tmp_path, 0, 0, 100, "hang: rank 0 waits in all_gather", True, "Thread 0x1 (most recent call first)"
    )
    failures.record_hang(
        tmp_path, 1, 1, 101, "hang: rank 1 its process is stopped (SIGSTOP", False, "(no stack)"
    )
    try:
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:10151")
    except RuntimeError as e:
        failures.record_exception(tmp_path, 0, e)
    kinds = {r["rank"]: r["kind"] for r in failures.load(tmp_path)}
    assert kinds == {0: "hang", 1: "hang"}
    line = failures.report(tmp_path, nnodes=2).strip().splitlines()[-1]
    assert "rank 1 (node 1" in line and "the others wait: rank 0" in line, line
    # without a hang record first, the worker's own exception is written as before
    other = tmp_path / "other"
    try:
        raise ValueError("rank 2's own mistake")
    except ValueError as e:
        failures.record_exception(other, 2, e)
    assert failures.load(other)[0]["kind"] == "exception"
