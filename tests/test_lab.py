"""`lab` on the suite's real Slurm cluster: JupyterLab comes up in a job, answers only with its token through
the printed URL, headless Chromium opens notebook 03 inside the job and Run All trains; `scancel` ends the job
with nothing of it left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from jupyterlab_browser import Lab, errors_in

from workshop_lib.model import REPO_ROOT

pytestmark = pytest.mark.slow  # a Slurm job and a browser: make test and CI run it


@pytest.mark.lane("lab_job")
def test_lab_job_serves_the_notebooks_trains_and_ends_on_scancel(lane):
    print(lane.result("lab_job"))


def lab_job(cluster, tmp_path_factory) -> str:
    """The job's whole life, in conftest's background lane (it waits on a job and a browser): its assertions
    fail in the test above; what it measured."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    tmp_path = tmp_path_factory.mktemp("lab")

    root = tmp_path / "notebooks"  # what JupyterLab opens: a copy of 03 with a short run's parameters
    root.mkdir()
    nb = load_notebook_node(str(REPO_ROOT / "notebooks" / "03_train.ipynb"))
    params = {  # no output_root: the job's WORKSHOP_OUTPUT_ROOT (the --output-root below) is where runs go
        "max_steps": 6,
        "overrides": {
            "logging_steps": 2,
            "save_steps": 6,
            "eval_strategy": "no",
            "n_generate": 4,
            "warmup_steps": 0,
        },
    }
    nbformat.write(parameterize_notebook(nb, params), root / "03_train.ipynb")
    # the job inherits this environment (sbatch exports it): no news toast over the notebook
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    env = {**cluster.env, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}

    t0 = time.time()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workshop_lib",
            "lab",
            "--profile",
            "local",
            "--time",
            "00:10:00",
            "--root",
            str(root),
            "--output-root",
            str(tmp_path / "runs"),
            "--wait-s",
            "180",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=240,
    )
    started = re.search(r"job (\d+) submitted", out.stdout)
    if out.returncode != 0 and started:
        cluster.run("scancel", started.group(1), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    answered = f"lab answered after {time.time() - t0:.1f} s"
    job = re.search(r"JupyterLab is up in job (\d+)", out.stdout).group(1)
    url = re.search(r"on the cluster's network:\s+(\S+)", out.stdout).group(1)
    assert re.search(r"ssh -N -L (\d+):\S+:\1 \S+@\S+", out.stdout) and f"scancel {job}" in out.stdout
    base, token = url.split("/lab?token=")
    assert len(token) >= 32
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no notebooks
        urllib.request.urlopen(f"{base}/api/contents", timeout=5)
    assert refused.value.code == 403
    urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=5)

    lab = Lab(root, tmp_path, tmp_path_factory.mktemp("lab-artifacts"), url=url)
    try:
        lab.open("03_train.ipynb")
        lab.run_all(400)
        saved = lab.save("03_train.ipynb")
        assert not errors_in(saved), errors_in(saved)
        (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "lab"]  # lab/: the job's own folder
        assert (run / "final").is_dir() and (run / "result.json").exists()
        # what runs for this job now: JupyterLab and the notebook's kernel
        pids = subprocess.run(
            ["pgrep", "-f", f"root_dir={root}"], capture_output=True, text=True
        ).stdout.split()
        assert pids, "no JupyterLab process found for the job"
        kernels = subprocess.run(
            ["pgrep", "-P", ",".join(pids)], capture_output=True, text=True
        ).stdout.split()
    finally:
        lab.driver.quit()
    cluster.run("scancel", job)
    info = cluster.wait(job, timeout=60)
    assert info["JobState"] == "CANCELLED", info
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids + kernels):
        time.sleep(0.5)
    left = [p for p in pids + kernels if os.path.exists(f"/proc/{p}")]
    assert not left, f"still running after scancel: {left}"
    return answered
