"""The training job on a real Slurm cluster on localhost (3 nodes, shared by the session).

The jobs run while the rest of the suite does: each test names its scenario (`lane` marker), a function below
that submits jobs, acts on them (a signal, a kill, scancel) and returns what happened; conftest's lane runs the
scenarios in a background thread from the session's first test, and this module, collected last, checks what
they returned. Parity is checked like with like: the uninterrupted reference of each preempted run is a job on
the same cluster with the same profile (environment, threads, launcher), submitted at the same time.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from workshop_lib.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # a real Slurm cluster: make test and CI run it, make check does not

# short jobs read a few hundred conversations, not the whole file, and skip the final eval: every node
# tokenizes its data, and the module starts ~36 node processes
SMALL_TRAIN = [{"path": "data/synthetic/train.jsonl", "max_rows": 200}]
FAST = {
    "train_file": SMALL_TRAIN,
    "eval_file": None,
    "max_steps": 6,
    "logging_steps": 2,
    "save_steps": 1000,
    "eval_strategy": "no",
    "n_generate": 0,
    "nproc_per_node": 1,
    "warmup_steps": 0,
}
# preempted runs: stops land between logging (5), accumulation (2) and save steps (1000: only the stops save)
PARITY = {
    **FAST,
    # long enough for two stops at steps that are not multiples of 5 or 2, with room to spare: the stop lands
    # a second or two after the signal, and a node trains a step in about 0.5 s on an idle machine
    "max_steps": 50,
    "logging_steps": 5,
    "gradient_accumulation_steps": 2,
    "per_device_train_batch_size": 4,
}
# DPO through the same job path (notebook 06 on each node), from the kit's tiny model, one stop mid-way
DPO_PARITY = {**PARITY, "max_steps": 40, "model": "tiny"}  # no final eval: 1 min
DPO_PARITY["train_file"] = [{"path": "data/synthetic/pairs_train.jsonl", "max_rows": 200}]
# GRPO through the same job path (workshop_lib train on each node), from a briefly trained SFT model (answers
# right about half the time: the groups' rewards differ, so every step moves the parameters); one stop mid-way
GRPO_PARITY = {
    **FAST,
    "max_steps": 12,
    "logging_steps": 1,
    "per_device_train_batch_size": 16,
    "num_generations": 4,
    "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 64}],
}
LONG = {**FAST, "max_steps": 3000, "logging_steps": 5, "collective_timeout_s": 1800}


def submit(cluster, out_root, *args, params=FAST, check=True, sbatch=()):
    cmd = [
        sys.executable,
        "-m",
        "workshop_lib",
        "submit",
        "--profile",
        "local",
        "--output-root",
        str(out_root),
    ]
    cmd += list(args)
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    if sbatch:
        cmd += ["--", *sbatch]
    out = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, cwd=REPO_ROOT, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
        return re.search(r"submitted job (\d+)", out.stdout).group(1), out
    return None, out


def log_of(out_root, name, job_id):
    path = Path(out_root) / "logs" / f"{name}-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout} s for {what}")


def logged_steps(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]
    return [r["step"] for r in records if "loss" in r]  # the training-loss lines (eval and summaries aside)


def signal_job(cluster, job):
    """What --signal=B:USR1@N sends before the time limit: USR1 to the batch shell only."""
    cluster.run("scancel", "--signal=USR1", "--batch", job)


def preempt(cluster, out_root, name, job, points):
    """Preempt a running job at each point: an int n means 'once n more steps than the last stop are
    logged'; "start" means 'as soon as the requeued try has started' (before training reads anything)."""
    run_dir = Path(out_root) / name

    def log():
        return log_of(out_root, name, job)

    last = 0
    for k, point in enumerate(points):
        cluster.wait_for(job, lambda k=k: f"try {k}:" in log(), 600, f"try {k} of {name}", log)
        if point != "start":
            target = last + point
            cluster.wait_for(
                job,
                lambda t=target: max(logged_steps(run_dir), default=0) >= t,
                600,
                f"{name} step {target}",
                log,
            )
        signal_job(cluster, job)
        cluster.wait_for(job, lambda k=k: log().count("requeueing job") > k, 600, f"{name} requeue", log)
        last = json.loads((run_dir / "tries.jsonl").read_text().splitlines()[-1])["to_step"]


def shared_jobs(cluster, tmp_path_factory, brief_sft_run):
    """The background lane's first scenario: every job that only needs watching, submitted together so that
    they share the cluster, and each one's end recorded (its scontrol record and log).

    Quick jobs that fail or finish at their start: a taken derived port, a port given by hand and held
    (EADDRINUSE on node 0), an exception in the notebook. Then the long jobs: a 3-node SFT run with the python
    launcher, a 2-node DPO run with the papermill launcher (notebook 06 on each node) and a 2-node GRPO run,
    each with its preempted twin. Every node start costs CPU seconds (torch, the model): these nine jobs start
    about 30 node-processes in all."""
    import socket

    from workshop_lib import ports

    quick_root, root = tmp_path_factory.mktemp("quick"), tmp_path_factory.mktemp("jobs")
    bad = quick_root / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    common = ["--recipe", "recipes/tiny_cpu.yaml", "--nodes", "2"]
    held = []

    def hold(port):
        s = socket.socket()
        s.bind(("0.0.0.0", port))
        s.listen()
        held.append(s)
        return port

    # the job that completes trains a participant's own model: Mistral's real v3 vocabulary and the v0.3
    # template, which drops system prompts (the bundled data has them: system_prompt auto merges them)
    from test_real_tokenizers import REALS, save_tiny_model

    real = save_tiny_model(REALS[1], quick_root / "mistral-v3-tiny")
    quick = {}
    quick["port"], _ = submit(
        cluster,
        quick_root,
        *common,
        "--name",
        "port",
        "--launcher",
        "python",
        params={**FAST, "model": str(real)},
        sbatch=["--hold"],
    )
    derived = hold(ports.master_port_for_job(quick["port"]))
    taken = hold(ports.free_port())
    quick["inuse"], _ = submit(
        cluster,
        quick_root,
        *common,
        "--name",
        "inuse",
        "--launcher",
        "python",
        params={**FAST, "master_port": taken},
    )
    quick["exc"], _ = submit(
        cluster, quick_root, *common, "--name", "exc", params={**FAST, "train_file": str(bad)}
    )
    cluster.run("scontrol", "release", quick["port"])

    submitted, drivers, errors = {}, [], []
    grpo = {**GRPO_PARITY, "model": str(brief_sft_run / "final")}
    # SFT: two stops, one at an arbitrary step, one the moment the requeued try starts (a signal that early
    # must still be seen: training reads STOP at its first step); DPO and GRPO: one stop mid-way
    for name, nodes, launcher, recipe, params, points in (
        ("sft3", 3, "python", "recipes/tiny_cpu.yaml", PARITY, [7, "start"]),
        ("dpo2", 2, "papermill", "recipes/tiny_dpo.yaml", DPO_PARITY, [7]),
        ("grpo2", 2, "python", "recipes/tiny_grpo.yaml", grpo, [3]),
    ):
        for kind in ("", "-pre"):
            job, _ = submit(
                cluster,
                root,
                "--recipe",
                recipe,
                "--nodes",
                str(nodes),
                "--name",
                name + kind,
                "--launcher",
                launcher,
                params=params,
                # no time-limit signal, even on a loaded machine: the reference must run uninterrupted
                sbatch=["--time=02:00:00"],
            )
            submitted[name + kind] = job

        def drive(name=name + "-pre", points=points):
            try:
                preempt(cluster, root, name, submitted[name], points)
            except Exception as e:  # reported by the test that needs it
                errors.append(f"{name}: {e!r}")

        # the preempted twin trains while the next jobs are submitted: its driver starts now
        t = threading.Thread(target=drive, daemon=True)
        t.start()
        drivers.append(t)

    for t in drivers:
        t.join(900)
    ended = {}
    for name, job in quick.items():
        ended[name] = cluster.wait(job, timeout=300), log_of(quick_root, name, job)
    for s in held:
        s.close()
    for name, job in submitted.items():
        ended[name] = cluster.wait(job, timeout=900), log_of(root, name, job)
    return {
        "quick": quick_root,
        "derived": derived,
        "root": root,
        "ids": submitted,
        "ended": ended,
        "errors": errors,
        "brief": brief_sft_run,
    }


def _ended(lane, name):
    jobs = lane.result("shared_jobs")
    return jobs["ended"][name]


@pytest.mark.lane("shared_jobs")
def test_a_taken_rendezvous_port_does_not_fail_the_job(lane):
    """The port a job would derive from its id is held by another program: the job picks another one."""
    jobs = lane.result("shared_jobs")
    (info, log), derived = jobs["ended"]["port"], jobs["derived"]
    assert info["JobState"] == "COMPLETED", log[-3000:]
    port = int(re.search(r"master n1:(\d+)", log).group(1))
    assert port != derived, log[:2000]
    print(f"\nderived port {derived} held by another program: the job chose {port} and completed")
    # ... with a real vocabulary, on 2 nodes, the system prompts merged as the template report says
    result = json.loads((jobs["quick"] / "port" / "result.json").read_text())
    assert result["world_size"] == 2 and result["system_prompt"] == "merge", result
    assert "system prompts were merged into the first user turn (system_prompt: auto)" in log, log[-3000:]


@pytest.mark.lane("shared_jobs")
def test_an_exception_on_node_0_beats_a_node_that_ended_without_reporting(lane):
    """Node 0 cannot bind its rendezvous port (EADDRINUSE: a port given by hand, held); node 1, waiting for
    it, is then killed by srun without a word: the root cause is node 0's error."""
    info, log = _ended(lane, "inuse")
    assert info["JobState"] == "FAILED", log[-3000:]
    last = log.strip().splitlines()[-1]
    assert "ROOT CAUSE" in last and "node 0" in last and "address already in use" in last.lower(), log[-4000:]
    print(f"\n{last}")


@pytest.mark.lane("shared_jobs")
def test_an_exception_in_a_notebook_is_the_root_cause(lane):
    info, log = _ended(lane, "exc")
    assert info["JobState"] == "FAILED"
    assert log.count("ROOT CAUSE") == 1, log[-4000:]
    last = log.strip().splitlines()[-1]
    assert "ROOT CAUSE" in last and "no assistant turn" in last and "bad.jsonl:line 1" in last, log[-3000:]


def finished(lane, name):
    jobs = lane.result("shared_jobs")
    assert not [e for e in jobs["errors"] if e.startswith(f"{name}:")], jobs["errors"]
    info, log = jobs["ended"][name]
    assert info["JobState"] == "COMPLETED", log[-3000:]
    return info, log, jobs["root"] / name


@pytest.mark.lane("shared_jobs")
def test_a_two_node_papermill_job_logs_each_line_once(lane):
    info, log, run = finished(lane, "dpo2")
    jobs = lane.result("shared_jobs")
    job = jobs["ids"]["dpo2"]
    digests = []
    for node in (0, 1):
        nb = nbformat.read(run / "notebooks" / f"06_preference_tuning.node{node}.try0.ipynb", as_version=4)
        text = "".join(
            o.get("text", "") + str(o.get("data", {})) for c in nb.cells for o in c.get("outputs", [])
        )
        digests.append(re.search(r"parameter digest\W+(\w{16})", text).group(1))
        assert re.search(r"processes\W+2", text), text[-2000:]
    assert digests[0] == digests[1]  # both nodes ended with the same parameters
    assert (run / "loss_curves.png").exists() and (run / "result.json").exists()
    # node 0 writes to the job log, node 1 to its own file: each papermill line once
    node1 = (jobs["root"] / "logs" / f"dpo2-{job}.node1.out").read_text()
    assert log.count("Executing Cell 1-") == 1 and node1.count("Executing Cell 1-") == 1, log[-2000:]
    last_step = DPO_PARITY["max_steps"]
    assert re.search(rf"step +\d+/{last_step} ", log), log[
        -2000:
    ]  # papermill --log-output: progress in the log


@pytest.mark.lane("shared_jobs")
def test_a_preempted_three_node_job_ends_with_the_parameters_of_an_uninterrupted_one(lane):
    _, _, ref = finished(lane, "sft3")
    info, log, run = finished(lane, "sft3-pre")
    tries = [json.loads(x) for x in (run / "tries.jsonl").read_text().splitlines()]
    stops = [t["to_step"] for t in tries if t["preempted"]]
    assert len(stops) == 2 and int(info["Restarts"]) == 2, (tries, log[-3000:])
    assert [t["from_step"] for t in tries] == [0, *stops], tries  # each try resumed where the last stopped
    assert len(set(stops)) == 2 and all(0 < s < PARITY["max_steps"] for s in stops), stops
    steps = logged_steps(run)
    assert steps == sorted(set(steps)), steps  # no step logged twice
    result = json.loads((run / "result.json").read_text())
    straight = json.loads((ref / "result.json").read_text())
    print(
        f"\n3 nodes: stopped at steps {stops}; digest preempted {result['param_digest']} "
        f"uninterrupted {straight['param_digest']}"
    )
    assert result["global_step"] == straight["global_step"] == PARITY["max_steps"]
    assert result["world_size"] == straight["world_size"] == 3
    assert result["param_digest"] == straight["param_digest"]
    # accounting across tries: every try's runtime counted, the same tokens as the uninterrupted run
    assert result["tries"] == 3 and straight["tries"] == 1
    assert result["total_runtime_s"] == pytest.approx(sum(t["runtime_s"] for t in tries))
    assert result["total_tokens"] == straight["total_tokens"]


@pytest.mark.lane("shared_jobs")
def test_a_preempted_two_node_dpo_job_ends_with_the_parameters_of_an_uninterrupted_one(lane):
    _, _, ref = finished(lane, "dpo2")
    info, log, run = finished(lane, "dpo2-pre")
    tries = [json.loads(x) for x in (run / "tries.jsonl").read_text().splitlines()]
    assert [t["preempted"] for t in tries] == [True, False] and int(info["Restarts"]) == 1, log[-3000:]
    assert tries[1]["from_step"] == tries[0]["to_step"] > 0
    for node in (0, 1):  # each node ran notebook 06 (the recipe's trainer: dpo), on each try
        for attempt in (0, 1):
            assert (run / "notebooks" / f"06_preference_tuning.node{node}.try{attempt}.ipynb").exists()
    result = json.loads((run / "result.json").read_text())
    straight = json.loads((ref / "result.json").read_text())
    print(
        f"\nDPO, 2 nodes: stopped at step {tries[0]['to_step']}; digests {result['param_digest']} "
        f"{straight['param_digest']}; rewards {straight['eval_metrics'] or 'no eval'}"
    )
    assert result["global_step"] == straight["global_step"] == DPO_PARITY["max_steps"]
    assert result["world_size"] == straight["world_size"] == 2
    assert result["param_digest"] == straight["param_digest"]
    assert result["total_tokens"] == straight["total_tokens"]
    steps = logged_steps(run)
    assert steps == sorted(set(steps)), steps


@pytest.mark.lane("shared_jobs")
def test_a_preempted_two_node_grpo_job_ends_with_the_parameters_of_an_uninterrupted_one(lane):
    """GRPO samples its answers: the requeued try must sample the same ones on every node (each rank's random
    state is in the checkpoint the stop wrote), so it ends with the uninterrupted run's parameters."""
    _, _, ref = finished(lane, "grpo2")
    info, log, run = finished(lane, "grpo2-pre")
    tries = [json.loads(x) for x in (run / "tries.jsonl").read_text().splitlines()]
    assert [t["preempted"] for t in tries] == [True, False] and int(info["Restarts"]) == 1, log[-3000:]
    assert tries[1]["from_step"] == tries[0]["to_step"] > 0
    result = json.loads((run / "result.json").read_text())
    straight = json.loads((ref / "result.json").read_text())
    start = json.loads((lane.result("shared_jobs")["brief"] / "result.json").read_text())
    print(
        f"\nGRPO, 2 nodes: stopped at step {tries[0]['to_step']}; digests {result['param_digest']} "
        f"{straight['param_digest']} (the SFT model it started from: {start['param_digest']})"
    )
    assert yaml.safe_load((run / "recipe.yaml").read_text())["trainer"] == "grpo"
    assert result["world_size"] == straight["world_size"] == 2
    assert result["global_step"] == straight["global_step"] == GRPO_PARITY["max_steps"]
    assert straight["param_digest"] != start["param_digest"]  # GRPO moved the parameters ...
    assert result["param_digest"] == straight["param_digest"]  # ... and the resumed run the same way
    rewards = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in x]
    assert [r["step"] for r in rewards] == list(range(1, GRPO_PARITY["max_steps"] + 1)), rewards


def sweep(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "lr.yaml"
    sweep.write_text(
        yaml.safe_dump({"recipe": "recipes/tiny_cpu.yaml", "name": "lr", "grid": SWEEP, "fixed": FAST})
    )
    job, out = submit(cluster, root, "--sweep", str(sweep), params={})
    wait_until(
        lambda: not cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip(), 600, "the sweep"
    )
    return root, job, out.stdout


SWEEP = {"learning_rate": [1.0e-3, 3.0e-3]}


@pytest.mark.lane("sweep")
def test_sweep_runs_as_a_job_array_with_a_log_per_task(lane):
    root, job, out = lane.result("sweep")
    logs = re.findall(r"log:\s+(\S+)", out)
    assert logs == [f"{root}/logs/lr-{job}_{i}.out" for i in (0, 1)], out
    for i, lr in enumerate(SWEEP["learning_rate"]):
        run = root / f"lr-{i}"
        assert (run / "result.json").exists(), Path(logs[i]).read_text()[-3000:]
        assert yaml.safe_load((run / "recipe.yaml").read_text())["learning_rate"] == lr
        assert f"run {run}" in Path(logs[i]).read_text()  # each task's log is its own


def _processes(job_id, node, pick):
    """Pids of a job's processes on one node (found by their environment) for which pick(cmdline, parent's
    cmdline) is true. (Forked workers set RANK after the fork, so their exec-time environment lacks it.)"""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(x.split(b"=", 1) for x in (proc / "environ").read_bytes().split(b"\0") if b"=" in x)
            cmd = (proc / "cmdline").read_bytes()
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if env.get(b"SLURM_JOB_ID") == job_id.encode() and env.get(b"SLURM_NODEID") == node.encode():
            if pick(cmd, parent):
                pids.append(int(proc.name))
    return pids


def _is_worker(cmd, parent):  # forked by the notebook kernel
    return b"ipykernel" in parent


def _is_kernel(cmd, parent):  # the kernel itself (its forked workers share its command line)
    return b"ipykernel_launcher" in cmd and b"ipykernel" not in parent


def _kill_during_training(cluster, root, name, pick):
    """Kill node 1's processes for which pick(...) once training has started: the job's end and its log."""
    job, _ = submit(
        cluster, root, "--recipe", "recipes/tiny_cpu.yaml", "--nodes", "2", "--name", name, params=LONG
    )
    cluster.wait_for(
        job, lambda: logged_steps(root / name), 300, "training to start", lambda: log_of(root, name, job)
    )
    pids = _processes(job, "1", pick)
    assert pids, f"no process of node 1 for which {pick.__name__}"
    t_kill = time.time()
    for pid in pids:
        os.kill(pid, 9)
    info = cluster.wait(job, timeout=150)
    return info, time.time() - t_kill, log_of(root, name, job)


def killed_rank(cluster, tmp_path_factory):
    return _kill_during_training(cluster, tmp_path_factory.mktemp("crash"), "crash", _is_worker)


def dead_kernel(cluster, tmp_path_factory):
    return _kill_during_training(cluster, tmp_path_factory.mktemp("kernel"), "kernel", _is_kernel)


def _root_cause_of_a_kill(lane, scenario):
    info, took, log = lane.result(scenario)
    assert info["JobState"] in ("FAILED", "CANCELLED"), info
    assert took < 60, f"the job took {took:.0f} s to end after the kill (collective timeout 1800 s)"
    assert log.count("ROOT CAUSE") == 1, log[-4000:]  # exactly one, and it is the last line of the log
    last = log.strip().splitlines()[-1]
    assert "ROOT CAUSE" in last, log[-3000:]
    return last, took


@pytest.mark.lane("killed_rank")
def test_a_killed_rank_is_the_one_root_cause(lane):
    last, took = _root_cause_of_a_kill(lane, "killed_rank")
    assert "rank 1" in last and "SIGKILL" in last, last
    print(f"\nkilled rank 1 (SIGKILL): job ended {took:.1f} s later; {last}")


@pytest.mark.lane("dead_kernel")
def test_a_dead_kernel_is_the_root_cause(lane):
    last, took = _root_cause_of_a_kill(lane, "dead_kernel")
    assert "node 1" in last and "kernel died" in last, last
    print(f"\nkilled node 1's notebook kernel: job ended {took:.1f} s later; {last}")


def cancelled(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("cancel")
    job, _ = submit(
        cluster, root, "--recipe", "recipes/tiny_cpu.yaml", "--nodes", "2", "--name", "cancel", params=LONG
    )
    cluster.wait_for(
        job,
        lambda: logged_steps(root / "cancel"),
        300,
        "training to start",
        lambda: log_of(root, "cancel", job),
    )
    t0 = time.time()
    cluster.run("scancel", job)
    cluster.wait(job, timeout=120)
    took = time.time() - t0
    time.sleep(4)  # a requeue would show now (the script would have asked for it before ending)
    return cluster.job(job), took, log_of(root, "cancel", job), root / "cancel"


@pytest.mark.lane("cancelled")
def test_scancel_ends_a_two_node_job_for_good_and_records_the_try_as_cancelled(lane):
    info, took, log, run = lane.result("cancelled")
    assert info["JobState"] == "CANCELLED" and int(info.get("Restarts", 0)) == 0, (info, log[-3000:])
    assert "try 1" not in log and not (run / "PREEMPTED").exists(), log[-3000:]
    tries = [json.loads(x) for x in (run / "tries.jsonl").read_text().splitlines()]
    assert [(t["try"], t["ended"], t["preempted"]) for t in tries] == [(0, "cancelled", False)], tries
    saved = sorted(p.name for p in run.glob("checkpoint-*"))
    print(
        f"\nscancel (2 nodes) -> job ended in {took:.1f} s, not requeued; try 0 recorded as cancelled "
        f"(to step {tries[0].get('to_step')}); checkpoint written on the way out: {saved or 'none'}"
    )


def _is_train_worker(cmd, parent):  # forked by `workshop_lib train` (the python launcher): same command line
    return cmd == parent and b"workshop_lib" in cmd


FROZEN = {**FAST, "max_steps": 16, "save_steps": 2, "logging_steps": 1, "hang_timeout_s": 15}


def frozen_rank(cluster, tmp_path_factory):
    """Node 1's worker is stopped (SIGSTOP) at step 3; the job's log, how long the try took to end after the
    stop, and the job's end."""
    root = tmp_path_factory.mktemp("frozen")
    job, _ = submit(
        cluster,
        root,
        "--recipe",
        "recipes/tiny_cpu.yaml",
        "--nodes",
        "2",
        "--name",
        "frozen",
        "--launcher",
        "python",
        params=FROZEN,
    )
    run = root / "frozen"

    def log():
        return log_of(root, "frozen", job)

    cluster.wait_for(job, lambda: max(logged_steps(run), default=0) >= 3, 300, "step 3", log)
    pids = _processes(job, "1", _is_train_worker)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGSTOP)
    t_stop = time.time()
    cluster.wait_for(job, lambda: "ROOT CAUSE" in log(), FROZEN["hang_timeout_s"] + 60, "the root cause", log)
    took = time.time() - t_stop
    cause = next(x for x in log().splitlines() if "ROOT CAUSE" in x)
    info = cluster.wait(job, timeout=600)  # the job requeues after the hang; the next try resumes
    return job, run, took, cause, info, log()


@pytest.mark.lane("frozen_rank")
def test_a_frozen_rank_ends_the_job_with_its_root_cause_and_the_job_resumes(lane):
    """Node 1's worker is stopped (SIGSTOP): gloo waits forever, the watchdog does not. The job ends the try
    within hang_timeout_s + 60 s, names rank 1 on node 1, keeps every rank's stacks, requeues and resumes."""
    job, run, took, cause, info, log = lane.result("frozen_rank")
    assert "rank 1 (node 1" in cause and "stopped (SIGSTOP" in cause and "the others wait: rank 0" in cause, (
        cause
    )
    [folder] = (run / "logs" / "failures").glob(f"{job}-try0")
    stacks = (folder / "stacks" / "rank0.txt").read_text()  # rank 0 answered with all its threads' stacks
    waiting = json.loads((folder / "rank0.json").read_text())
    assert waiting["waiting"] and "Thread" in stacks and "workshop_lib" in stacks, (waiting, stacks)
    # the job requeued after the hang and the next try resumed from the last checkpoint and finished
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, log[-3000:]
    tries = [json.loads(x) for x in (run / "tries.jsonl").read_text().splitlines()]
    assert [(t["try"], t["ended"]) for t in tries] == [(0, "hang"), (1, "finished")], tries
    assert tries[1]["from_step"] > 0 and tries[1]["to_step"] == FROZEN["max_steps"], tries
    print(
        f"\nSIGSTOP on node 1: the try ended {took:.1f} s later (hang_timeout_s 15), requeued, resumed; {cause}"
    )
