"""The kit's Jupyter kernel spec: installed, listed, started through the kernel protocol (the LUMI one through
faked `module` and `singularity`, as tests/test_lumi.py fakes them), removed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from workshop_lib.model import REPO_ROOT


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "workshop_lib", "kernel", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def run_in(kernel_name: str, code: str) -> str:
    """Start the kernel by its spec, run code, return what it printed."""
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=90)
    try:
        out = []
        kc.execute_interactive(
            code, output_hook=lambda m: out.append(m["content"].get("text", "")), timeout=60
        )
        return "".join(out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture
def prefix(tmp_path, monkeypatch):
    """Kernel specs under a prefix of our own; Jupyter looks there first (JUPYTER_PATH)."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    return tmp_path


def test_local_kernel_runs_the_kits_python_with_the_profiles_environment(prefix):
    done = cli("install", "--profile", "local", "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    assert "installed kernel workshop-kit-local" in done.stdout
    assert "workshop-kit-local" in cli("list").stdout
    shown = run_in(
        "workshop-kit-local",
        "import os, sys, workshop_lib; print(sys.executable, os.environ['HF_HUB_OFFLINE'])",
    )
    assert shown.split() == [str(REPO_ROOT / ".venv" / "bin" / "python"), "1"]
    assert (
        cli("remove", "workshop-kit-local").returncode == 0 and "workshop-kit-local" not in cli("list").stdout
    )
    gone = cli("remove", "workshop-kit-local")
    assert gone.returncode == 2 and "no kit kernel named" in gone.stderr and "Traceback" not in gone.stderr


def test_lumi_kernel_starts_python_inside_the_container(prefix, monkeypatch):
    bin_dir = prefix / "bin"
    bin_dir.mkdir()
    log = prefix / "calls.log"
    (bin_dir / "module").write_text(f'#!/bin/sh\necho "module $*" >> {log}\n')
    # singularity exec [--bind X] IMAGE CMD...: record, then run CMD here (the container's python is ours)
    (bin_dir / "singularity").write_text(
        f'#!/bin/bash\necho "singularity $*" >> {log}\nshift\n'
        'while [[ $1 == --* ]]; do shift 2; done\nshift\nexec "$@"\n'
    )
    for tool in ("module", "singularity"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("USER", "instructor")  # installs it once for everyone (--prefix) ...
    done = cli("install", "--profile", "lumi", "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("USER", "participant7")  # ... a participant's session starts it
    shown = run_in(
        "workshop-kit-lumi",
        "import os; print(os.environ['NCCL_SOCKET_IFNAME'], os.environ['HF_HUB_OFFLINE'], os.environ.get('WORKSHOP_CPU_BIND'), os.environ['WORKSHOP_OUTPUT_ROOT'])",
    )
    # the profile's output_root, $USER expanded by the kernel's own start: each participant's runs apart
    assert shown.split() == [
        "hsn0,hsn1,hsn2,hsn3",
        "1",
        "None",
        "/scratch/project_462000000/participant7/runs",
    ]
    calls = log.read_text().splitlines()
    assert calls[:2] == ["module use /appl/local/laifs/modules", "module load lumi-aif-singularity-bindings"]
    assert calls[2].startswith(f"singularity exec --bind {REPO_ROOT} /appl/local/laifs/containers/")
    assert calls[2].endswith(
        f"{REPO_ROOT}/.venv/bin/python -m ipykernel_launcher -f " + calls[2].split(" -f ")[1]
    )
    assert Path(calls[2].split(" -f ")[1]).suffix == ".json"  # the connection file Jupyter passed
