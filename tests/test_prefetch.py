"""prefetch against a hub served from localhost (tests/hub_server.py): what training needs goes into the
cache the jobs read, and an offline job then trains from it; unreachable or offline hubs say so at once."""

import os
import shutil
import subprocess
import sys
import time

import pytest
from hub_server import Hub

from workshop_lib.model import REPO_ROOT, build_tiny_model


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("hub")
    model = root / "models" / "org" / "tiny-chat"
    shutil.copytree(build_tiny_model(), model)
    (model / "model.gguf").write_text("another format training does not read")
    (model / "original").mkdir()
    (model / "original" / "consolidated.pth").write_text("the original checkpoint")
    data = root / "datasets" / "org" / "chats" / "data"
    data.mkdir(parents=True)
    lines = (REPO_ROOT / "data" / "synthetic" / "train.jsonl").read_text().splitlines()[:24]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    server = Hub(root)
    yield server
    server.close()


def cli(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "workshop_lib", "prefetch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )


def test_prefetch_fetches_what_training_reads_and_an_offline_job_trains_from_it(hub, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: org/tiny-chat\ntrain_file: org/chats\neval_file: null\nmax_steps: 2\n")
    home = tmp_path / "hf"
    env = {"HF_ENDPOINT": hub.url}

    dry = cli(str(recipe), "--hf-home", str(home), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "model   org/tiny-chat: 6 files" in dry.stdout and "dataset org/chats: 1 files" in dry.stdout
    assert (
        "dry run: nothing downloaded" in dry.stdout
        and not (home / "hub" / "models--org--tiny-chat" / "blobs").exists()
    )

    # doctor, for an offline profile that reads this cache: what is missing, and the command that fetches it
    from workshop_lib.prefetch import offline_cache

    profile = tmp_path / "offline.yaml"
    profile.write_text(f"env:\n  HF_HOME: {home}\n  HF_HUB_OFFLINE: 1\n")
    before = offline_cache(str(profile), [str(recipe)])
    assert [ok for ok, _ in before] == [False, False], before
    assert f"prefetch dataset:org/chats --profile {profile}" in before[1][1], before

    done = cli(str(recipe), "--hf-home", str(home), env=env)
    assert done.returncode == 0, done.stderr
    assert [ok for ok, _ in offline_cache(str(profile), [str(recipe)])] == [True, True]
    snapshot = next((home / "hub" / "models--org--tiny-chat" / "snapshots").iterdir())
    fetched = sorted(p.name for p in snapshot.iterdir())
    assert "model.safetensors" in fetched and "tokenizer.json" in fetched and "chat_template.jinja" in fetched
    assert "model.gguf" not in fetched and "original" not in fetched  # only what training reads

    again = cli(str(recipe), "--hf-home", str(home), "--dry-run", env=env)
    assert "cached 6, to download 0.0 MB" in again.stdout

    # a compute node without network: the recipe trains from the cache alone (and reads the dataset)
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "workshop_lib",
            "train",
            str(recipe),
            "-p",
            "output_root",
            str(tmp_path / "runs"),
            "-p",
            "run_name",
            "offline",
            "-p",
            "n_generate",
            "0",
            "-p",
            "eval_strategy",
            "no",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        env={**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert (tmp_path / "runs" / "offline" / "final").is_dir()


def test_prefetch_says_at_once_when_the_hub_cannot_be_reached(hub, tmp_path):
    t = time.time()
    closed = cli("org/tiny-chat", "--hf-home", str(tmp_path), env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert closed.returncode == 2 and "the hub cannot be reached" in closed.stderr and time.time() - t < 30
    offline = cli("org/tiny-chat", "--hf-home", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE=1 is set here" in offline.stderr
    missing = cli("org/nope", "--hf-home", str(tmp_path), env={"HF_ENDPOINT": hub.url})
    assert missing.returncode == 2 and "org/nope: no such model on the hub" in missing.stderr
    assert "Traceback" not in closed.stderr + offline.stderr + missing.stderr


def test_prefetch_fills_the_cache_a_profile_names(hub, tmp_path):
    profile = tmp_path / "cluster.yaml"
    profile.write_text(f"env:\n  HF_HOME: {tmp_path / 'scratch' / 'hf_cache'}\n")
    out = cli("org/tiny-chat", "--profile", str(profile), "--dry-run", env={"HF_ENDPOINT": hub.url})
    assert out.returncode == 0 and f"into {tmp_path / 'scratch' / 'hf_cache' / 'hub'}" in out.stdout, (
        out.stderr
    )
