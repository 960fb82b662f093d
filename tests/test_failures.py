"""Root-cause selection from real failures: ranks of a real gloo group, one killed or raising."""

import os
import signal

import pytest

from workshop_lib import failures, launch, ports

pytestmark = pytest.mark.slow  # several processes per test: make test and CI run it


def _kill_rank_one_mid_collective():
    """Rank 1 dies by SIGKILL; rank 0, waiting in an all-reduce with it, loses its peer."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))
    return "finished"


def _raise_on_rank_one():
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == 1:
        raise ValueError("rank 1's own mistake: a signal-free message")
    dist.all_reduce(torch.ones(1))
    return "finished"


@pytest.mark.parametrize(
    "fn, expect",
    [
        (_kill_rank_one_mid_collective, "killed by signal SIGKILL"),
        (_raise_on_rank_one, "ValueError: rank 1's own"),
    ],
)
def test_the_failed_rank_is_the_one_root_cause(tmp_path, fn, expect):
    with pytest.raises(launch.LaunchError):
        launch.run(fn, nproc_per_node=2, master_port=ports.free_port(), failure_dir=tmp_path)
    records = failures.load(tmp_path)
    cause = failures.root_cause(records)
    assert cause["rank"] == 1 and expect in cause["error"], records
    text = failures.report(tmp_path)
    assert text.count("ROOT CAUSE") == 1
    last = text.splitlines()[-1]
    assert last.startswith("===== ROOT CAUSE: rank 1") and expect.split(":")[0] in last, text
    # rank 0, if it recorded anything, is marked as a consequence (its collective lost the peer)
    for r in records:
        if r["rank"] == 0:
            assert failures.is_consequence(r, records), r


def _record(kind, node, t, error, **more):
    return {"kind": kind, "node": node, "time": t, "error": error, **more}


def test_selection_rules():
    reset = _record("exception", 0, 10.0, "RuntimeError: [gloo] Connection closed by peer", rank=0)
    killed = _record("signal", 1, 11.0, "killed by signal SIGKILL", rank=1, signal="SIGKILL")
    relay = _record("node", 0, 12.0, "LaunchError: rank 0 failed", ename="LaunchError")
    # the earliest record is a consequence: the later primary one wins
    assert failures.root_cause([reset, killed, relay]) is killed
    # a node's dead kernel, when its ranks left no record, is primary
    dead = _record("node", 1, 12.5, "the notebook kernel died", ename="DeadKernelError")
    assert failures.root_cause([reset, relay, dead]) is dead
    # a traceback may quote anything; only the message decides
    quoted = _record(
        "exception", 0, 9.0, "RuntimeError: boom", rank=0, traceback="# on a signal, stop\nTimeout"
    )
    assert failures.root_cause([quoted, reset]) is quoted
    # only consequences: the node that left nothing is named
    silent = failures.root_cause([reset, relay], nnodes=2)
    assert silent["kind"] == "silent" and silent["node"] == 1
    # two independent primaries: the earlier
    early = _record("node", 1, 5.0, "DataError: bad.jsonl:line 1: no assistant turn", ename="DataError")
    late = _record("node", 0, 5.2, "DataError: bad.jsonl:line 1: no assistant turn", ename="DataError")
    assert failures.root_cause([late, early]) is early
    # a node that reported an exception (a taken port) beats a node that ended without a word, even though
    # the exception's type (DistNetworkError) usually only relays a lost peer
    taken = _record(
        "node",
        0,
        3.0,
        "DistNetworkError: failed to bind to [::]:20001 (errno: 98 - Address already in use)",
        ename="DistNetworkError",
    )
    assert failures.root_cause([taken], nnodes=2) is taken


def _rank_one_stalls(how):
    """Three steps in step, then rank 1 stops making progress (asleep outside any collective, or stopped by
    SIGSTOP) while rank 0 waits for it in an all-reduce."""
    import time

    import torch
    import torch.distributed as dist

    from workshop_lib import watchdog

    dist.init_process_group("gloo")
    for step in range(1, 4):
        dist.all_reduce(torch.ones(1))
        watchdog.report(step)
    if dist.get_rank() == 1:
        if how == "sleep":
            time.sleep(600)
        else:
            os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(torch.ones(1))
    return "finished"


@pytest.mark.parametrize(
    "how, expect", [("sleep", "stopped progressing at"), ("stop", "is stopped (SIGSTOP")]
)
def test_a_hang_ends_with_every_ranks_stacks_and_the_stalled_rank_as_root_cause(tmp_path, how, expect):
    import time

    t0 = time.time()
    with pytest.raises(launch.LaunchError, match="training hung on node 0"):
        launch.run(
            _rank_one_stalls,
            how,
            nproc_per_node=2,
            master_port=ports.free_port(),
            failure_dir=tmp_path,
            hang_timeout_s=4,
        )
    took = time.time() - t0
    assert took < 4 + 30, took  # the limit, the stack dump and the kill, not a collective timeout (30 min)
    records = failures.load(tmp_path)
    cause = failures.root_cause(records)
    assert cause["kind"] == "hang" and cause["rank"] == 1 and expect in cause["error"], records
    waiting = next(r for r in records if r["rank"] == 0)
    assert waiting["waiting"] and failures.is_consequence(waiting, records), waiting
    assert "all_reduce" in (tmp_path / "stacks" / "rank0.txt").read_text()
    if how == "sleep":  # a running rank answers SIGUSR2 with its stacks: the line where it stalled
        assert "_rank_one_stalls" in (tmp_path / "stacks" / "rank1.txt").read_text()
    last = failures.report(tmp_path).splitlines()[-1]
    assert last.startswith("===== ROOT CAUSE: rank 1") and "the others wait: rank 0" in last, last
    print(f"\n{how}: the launch ended {took:.1f} s after it began (hang_timeout_s 4); {last}")


def _collective_with_a_silent_peer(recipe):
    """The kit's process group (worker._one_process_group); rank 1 goes silent (asleep, its sockets open, as
    a stopped peer's stay), rank 0 waits for it in an all-reduce."""
    import time

    import torch
    import torch.distributed as dist

    from workshop_lib import worker

    worker._one_process_group(recipe)
    dist.all_reduce(torch.ones(1))
    if dist.get_rank() == 1:
        time.sleep(120)
    dist.all_reduce(torch.ones(1))
    return "finished"


def test_collective_timeout_s_ends_a_gloo_collective_that_waits_for_a_silent_peer(tmp_path):
    """accelerate gives CPU groups no timeout (gloo's default: 30 minutes); the kit's group has
    collective_timeout_s."""
    import time

    from workshop_lib.recipe import load_recipe

    recipe = load_recipe("recipes/tiny_cpu.yaml", overrides={"collective_timeout_s": 3, "nproc_per_node": 2})
    t0 = time.time()
    with pytest.raises(launch.LaunchError):
        launch.run(
            _collective_with_a_silent_peer,
            recipe,
            nproc_per_node=2,
            master_port=ports.free_port(),
            failure_dir=tmp_path,
            hang_timeout_s=600,
        )
    took = time.time() - t0
    rank0 = next(r for r in failures.load(tmp_path) if r.get("rank") == 0)
    assert "Timed out" in rank0["error"] and took < 60, (took, rank0)
