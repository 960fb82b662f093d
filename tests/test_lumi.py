"""LUMI without LUMI: what can be checked on a CPU-only machine. The rendered job script (container route by
default, module route by the profile's `torch` key; CPU binding, a per-job MIOpen cache, RCCL/Slingshot
settings, the notebook chosen by the recipe's trainer), doctor on recorded rocm-smi/amd-smi output, the
per-rank CPU binding, and spawned workers training exactly like forked ones. What needs an AMD GPU (RCCL
over Slingshot, MIOpen, the container itself) is listed in the README's LUMI section."""

import os
import re
from pathlib import Path

import pytest

from workshop_lib import launch, ports, train
from workshop_lib import recipe as R
from workshop_lib.paths import REPO_ROOT

DATA = Path(__file__).parent / "data"


# ----------------------------------------------------------------------------- fork or spawn
def test_the_start_method_is_a_visible_decision(monkeypatch):
    import torch

    monkeypatch.delenv(launch.START_METHOD_ENV, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert launch.start_method().name == "fork"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert launch.start_method() == (
        "spawn",
        "CUDA is initialised in this process: forked workers could not use it",
    )
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.version, "hip", "6.2.41134")
    method = launch.start_method()
    assert method.name == "spawn" and "ROCm build (HIP 6.2.41134)" in method.reason
    monkeypatch.setenv(launch.START_METHOD_ENV, "fork")  # the switch wins, and says so
    assert launch.start_method() == ("fork", "WORKSHOP_START_METHOD=fork is set")
    monkeypatch.setenv(launch.START_METHOD_ENV, "forkserver")
    with pytest.raises(launch.LaunchError, match="use fork or spawn"):
        launch.start_method()


def _fit(tmp_path, name):
    overrides = dict(
        run_name=name,
        output_root=str(tmp_path),
        nproc_per_node=2,
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=4,
        eval_strategy="no",
        n_generate=0,
        warmup_steps=0,
    )
    return train.fit(R.load_recipe(REPO_ROOT / "recipes" / "tiny_cpu.yaml", overrides=overrides))


@pytest.mark.slow
def test_spawned_workers_train_the_same_parameters_as_forked_ones(tmp_path, monkeypatch, capsys):
    """Two real CPU workers each way, the same threads per worker: the prepared datasets reach spawned
    workers through the run folder (saved once, removed after) and give the same parameters, bit for bit."""
    monkeypatch.setenv(launch.START_METHOD_ENV, "fork")
    forked = _fit(tmp_path, "forked")
    monkeypatch.setenv(launch.START_METHOD_ENV, "spawn")
    spawned = _fit(tmp_path, "spawned")
    out = capsys.readouterr().out
    assert "start with fork: WORKSHOP_START_METHOD=fork is set" in out
    assert "start with spawn: WORKSHOP_START_METHOD=spawn is set" in out
    assert spawned.group_size == forked.group_size == 2 and set(spawned.ranks) == {0, 1}
    assert spawned.ranks[0].param_digest == spawned.ranks[1].param_digest
    assert spawned.param_digest == forked.param_digest
    assert not list((tmp_path / "spawned").glob(".prepared-node*"))  # the saved datasets are gone


def _cores_and_threads():
    return sorted(os.sched_getaffinity(0)), os.environ["OMP_NUM_THREADS"]


def test_each_local_rank_binds_to_the_cores_of_its_mask(monkeypatch, capsys):
    """As on LUMI-G (a mask per GCD, in GPU order), with this machine's cores: rank 0 gets the last core,
    rank 1 the first; each worker's threads follow its cores."""
    cores = sorted(os.sched_getaffinity(0))
    first, last = cores[0], cores[-1]
    monkeypatch.setenv(launch.CPU_BIND_ENV, f"{1 << last:#x},{1 << first:x}")
    monkeypatch.setenv(launch.START_METHOD_ENV, "fork")
    got = launch.run(_cores_and_threads, nproc_per_node=2, master_port=ports.free_port())
    assert got == {0: ([last], "1"), 1: ([first], "1")}
    assert f"local rank: cores -> 0: {last}, 1: {first}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "masks, message",
    [
        ("0x1,zz", "mask 1 'zz' is not hexadecimal"),
        ("0x1", "1 mask(s) for 2 local workers"),
        (f"0x1,{1 << 200:#x}", "local rank 1's mask [200] has no core this job may use"),
    ],
)
def test_a_bad_binding_is_refused_before_any_worker_starts(monkeypatch, masks, message):
    monkeypatch.setenv(launch.CPU_BIND_ENV, masks)
    with pytest.raises(launch.LaunchError, match=re.escape(message)):
        launch.run(_cores_and_threads, nproc_per_node=2, master_port=ports.free_port())


def test_the_lumi_masks_are_the_cores_next_to_each_gcd():
    """The profile's masks, in GPU order, are the LUMI-G map of GCD -> closest 7 cores (core 0, 8, ... are
    the system's): the numbers of LUMI's documentation, checked here once."""
    import yaml

    profile = yaml.safe_load((REPO_ROOT / "slurm" / "profiles" / "lumi.yaml").read_text())
    masks = launch.parse_cpu_masks(",".join(profile["cpu_bind_masks"]))
    first_core = [49, 57, 17, 25, 1, 9, 33, 41]
    assert masks == [set(range(c, c + 7)) for c in first_core]


# ----------------------------------------------------------------------------- doctor on AMD GPUs
@pytest.mark.parametrize(
    "file, parse, n, name, gib",
    [
        ("rocm-smi_productname_meminfo_rocm5.json", "parse_rocm_smi", 8, "AMD INSTINCT MI250X / MI250", 64),
        ("rocm-smi_productname_rocm6.json", "parse_rocm_smi", 2, "AMD Instinct MI250X", None),
        ("amd-smi_static_asic_vram_rocm6.1.json", "parse_amd_smi", 2, "AMD Instinct MI250X", 64),
        ("amd-smi_static_asic_vram_rocm6.4.json", "parse_amd_smi", 8, "AMD Instinct MI250X", 64),
        ("amd-smi_list_rocm6.1.json", "parse_amd_smi", 8, "AMD GPU at 0000:c1:00.0", None),
    ],
)
def test_doctor_reads_the_amd_tools_output(file, parse, n, name, gib):
    from workshop_lib import doctor

    gpus = getattr(doctor, parse)((DATA / file).read_text())
    assert len(gpus) == n and gpus[0].name == name
    assert all(g.memory_gib is None for g in gpus) if gib is None else round(gpus[0].memory_gib) == gib


def _fake_tools(tmp_path, monkeypatch, **outputs):
    """Scripts named like the tools on PATH, printing a recorded file (or failing, for None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool, file in outputs.items():
        script = bin_dir / tool.replace("_", "-")
        body = f"cat {DATA / file}" if file else "echo 'ERROR: no AMD GPU driver loaded' >&2; exit 1"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


@pytest.fixture
def rocm_torch(monkeypatch):
    """torch as a ROCm build, whose GPU runtime doctor must not touch (that would break forked workers)."""
    import torch

    def refuse(*_):
        raise AssertionError("doctor initialised the GPU runtime in this process")

    monkeypatch.setattr(torch.version, "hip", "6.2.41134")
    monkeypatch.setattr(torch.cuda, "device_count", refuse)
    monkeypatch.setattr(torch.cuda, "is_available", refuse)
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")


def test_doctor_counts_amd_gpus_with_amd_smi_without_starting_hip(tmp_path, monkeypatch, rocm_torch):
    from workshop_lib import doctor

    _fake_tools(tmp_path, monkeypatch, amd_smi="amd-smi_static_asic_vram_rocm6.4.json")
    lines = doctor.check_gpus()
    assert str(lines[0]) == (
        "[PASS] GPUs: 8 AMD GPU(s) on this node (amd-smi static), ROCm 6.2.41134; this job sees 0,1,2,3,4,5,6,7"
    )
    assert str(lines[1]) == "[PASS] GPU 0: AMD Instinct MI250X, 64 GiB" and len(lines) == 9


def test_doctor_falls_back_to_rocm_smi(tmp_path, monkeypatch, rocm_torch):
    from workshop_lib import doctor

    _fake_tools(tmp_path, monkeypatch, amd_smi=None, rocm_smi="rocm-smi_productname_meminfo_rocm5.json")
    lines = doctor.check_gpus()
    assert (
        lines[0].status == "PASS"
        and "8 AMD GPU(s) on this node (rocm-smi --showproductname)" in lines[0].detail
    )
    assert lines[1].detail == "AMD INSTINCT MI250X / MI250, 64 GiB"


def test_doctor_without_gpus_or_with_the_wrong_torch(tmp_path, monkeypatch, rocm_torch):
    import torch

    from workshop_lib import doctor

    _fake_tools(tmp_path, monkeypatch, amd_smi=None)  # a login node: the tool is there, no GPU answers
    [line] = doctor.check_gpus()
    assert line.status == "WARN" and "amd-smi failed; rocm-smi not found" in line.detail
    # a CPU build of torch on a GPU node: it would train on the CPU without a word
    _fake_tools(tmp_path / "2", monkeypatch, rocm_smi="rocm-smi_productname_meminfo_rocm5.json")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.version, "cuda", None)
    [line] = doctor.check_gpus()
    assert line.status == "FAIL" and "8 AMD GPU(s) here" in line.detail and "CPU-only build" in line.detail


# ----------------------------------------------------------------------------- the LUMI job script
LUMI_IMAGE = "/appl/local/laifs/containers/lumi-multitorch-u24r70f21m50t210-20260415_130625"


@pytest.fixture
def render(tmp_path, monkeypatch):
    """submit's dry run in this process, without asking any Slurm (a laptop's view): the job, and a check
    that nothing was written."""
    from workshop_lib import submit

    monkeypatch.setattr(submit, "partition_info", lambda partition: None)

    def job(profile="lumi", recipe="recipes/poro34b_zero3.yaml", nodes=3, overrides=None, **kw):
        out = tmp_path / "runs"
        made = submit.prepare(profile, recipe, nodes, None, overrides or {}, output_root=str(out), **kw)
        assert not out.exists()  # a dry run writes nothing
        return made

    return job


def _lumi_profile(tmp_path, **changes):
    import yaml

    profile = yaml.safe_load((REPO_ROOT / "slurm" / "profiles" / "lumi.yaml").read_text())
    path = tmp_path / "lumi-changed.yaml"
    path.write_text(yaml.safe_dump({**profile, **changes}))
    return str(path)


def _environment(script: str, **env) -> dict:
    """Run the script's environment section in bash (module and singularity faked) and return what it
    exported: the values a LUMI node would see, shell expansions included."""
    import subprocess

    section = script.split("# ---- environment (from the profile) ----")[1].split("# ---- the run")[0]
    probe = "module() { :; }\nset -u\n" + section + '\nprintf "%s\\n" "$PYTHON" "$MIOPEN_USER_DB_PATH"'
    out = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}
    )
    assert out.returncode == 0, out.stderr
    python, miopen = out.stdout.splitlines()
    return {"PYTHON": python, "MIOPEN_USER_DB_PATH": miopen}


def test_the_lumi_script_runs_python_in_the_container_with_the_venv_on_top(render):
    script = render().script
    for line in [
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=56",
        "#SBATCH --exclusive",
        "# route torch: container (the profile's torch key; the other: module)",
        "module use /appl/local/laifs/modules\nmodule load lumi-aif-singularity-bindings\n",
        f"SIF={LUMI_IMAGE}/lumi-multitorch-full-u24r70f21m50t210-20260415_130625.sif",
        f'PYTHON="singularity exec --bind {REPO_ROOT} $SIF {REPO_ROOT}/.venv/bin/python"',
        # RCCL over Slingshot
        "export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3\n",
        "export FI_MR_CACHE_MONITOR=userfaultfd\n",  # the AI guide's current settings (PR 118) ...
        "export FI_CXI_DEFAULT_CQ_SIZE=262144\n",
        "export HSA_FORCE_FINE_GRAIN_PCIE=1\n",
        # the binding: the task keeps all cores, each worker binds to its GCD's
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpu-bind=none",
        "export WORKSHOP_CPU_BIND=0x00fe000000000000,0xfe00000000000000,0x0000000000fe0000,0x00000000fe000000,"
        "0x00000000000000fe,0x000000000000fe00,0x000000fe00000000,0x0000fe0000000000\n",
        # MIOpen per job, made and removed by each node's task
        'export MIOPEN_USER_DB_PATH="/tmp/$USER-miopen-$SLURM_JOB_ID/db"',
        'mkdir -p "$MIOPEN_USER_DB_PATH" "$MIOPEN_CUSTOM_CACHE_DIR"',
        'NOTEBOOK="notebooks/03_train.ipynb"',
    ]:
        assert line in script, line
    assert "module load PyTorch" not in script
    assert "NCCL_NET_GDR_LEVEL=" not in script  # ... without the one it dropped (PR 97: it made jobs hang)
    env = _environment(script, USER="alice", SLURM_JOB_ID="4242")
    assert env["MIOPEN_USER_DB_PATH"] == "/tmp/alice-miopen-4242/db"
    assert env["PYTHON"].startswith(f"singularity exec --bind {REPO_ROOT} {LUMI_IMAGE}/")


def test_the_module_route_is_one_profile_key_away(render, tmp_path):
    script = render(_lumi_profile(tmp_path, torch="module")).script
    assert "# route torch: module (the profile's torch key; the other: container)" in script
    assert (
        "module load LUMI\nmodule load PyTorch/2.7.1-rocm-6.2.4-python-3.12-singularity-20250827\n" in script
    )
    assert "SIF=/appl" not in script and "lumi-aif-singularity-bindings" not in script
    # the module sets SIF; without it the job stops at once, saying so
    env = _environment(script, USER="alice", SLURM_JOB_ID="7", SIF="/appl/local/pytorch.sif")
    assert (
        env["PYTHON"]
        == f"singularity exec --bind {REPO_ROOT} /appl/local/pytorch.sif {REPO_ROOT}/.venv/bin/python"
    )
    with pytest.raises(AssertionError, match="SIF: is not set"):
        _environment(script, USER="alice", SLURM_JOB_ID="7")
    from workshop_lib import submit

    with pytest.raises(submit.SubmitError, match="torch: 'conda' has no entry under routes"):
        render(_lumi_profile(tmp_path, torch="conda"))


def test_the_rendered_script_is_valid_bash_for_every_profile(render):
    import subprocess

    for profile in ("lumi", "nvidia", "local"):
        script = render(profile, "recipes/tiny_cpu.yaml", nodes=2).script
        check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, (profile, check.stderr)


def test_local_and_nvidia_profiles_render_as_before(render):
    for profile in ("local", "nvidia"):
        script = render(profile, "recipes/tiny_cpu.yaml", nodes=1).script
        assert f'PYTHON="{REPO_ROOT}/.venv/bin/python"' in script
        assert (
            "SIF" not in script
            and "MIOPEN" not in script.split("srun")[0]
            and "WORKSHOP_CPU_BIND=" not in script
        )
        assert 'NOTEBOOK="notebooks/03_train.ipynb"' in script
    assert "module load cuda/12.4\n" in render("nvidia", "recipes/tiny_cpu.yaml", nodes=1).script


def test_the_job_runs_the_notebook_of_the_recipes_trainer(render):

    dpo = {"trainer": "dpo"}
    job = render("local", "recipes/tiny_cpu.yaml", 1, dpo, launcher="python")
    assert (
        'NOTEBOOK="notebooks/06_preference_tuning.ipynb"' in job.script and 'LAUNCHER="python"' in job.script
    )
    assert job.recipes["recipe.yaml"]["trainer"] == "dpo"  # `workshop_lib train` reads the trainer from it
    # papermill runs notebook 06 on every node
    assert (
        'NOTEBOOK="notebooks/06_preference_tuning.ipynb"'
        in render("lumi", "recipes/tiny_cpu.yaml", 1, dpo).script
    )
    assert 'NOTEBOOK="notebooks/03_train.ipynb"' in render("lumi", "recipes/tiny_cpu.yaml", 1).script


def test_a_sweep_over_trainers_is_refused(render, tmp_path):
    import yaml

    from workshop_lib import submit

    sweep = tmp_path / "both.yaml"
    sweep.write_text(yaml.safe_dump({"recipe": "recipes/tiny_cpu.yaml", "grid": {"trainer": ["sft", "dpo"]}}))
    with pytest.raises(submit.SubmitError, match=r"trainers \['dpo', 'sft'\]: one job runs one notebook"):
        render("local", None, 1, sweep_path=str(sweep), launcher="python")


def test_setup_env_builds_the_venv_inside_the_routes_container(tmp_path):
    """slurm/setup_env.sh reads the route without a YAML library: with fake module and singularity commands,
    what it would run on a LUMI login node, for both routes."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("module", "singularity"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["bash", "slurm/setup_env.sh", "lumi"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert calls[:2] == ["module use /appl/local/laifs/modules", "module load lumi-aif-singularity-bindings"]
    assert calls[2].startswith(f"singularity exec --bind {REPO_ROOT} {LUMI_IMAGE}/") and calls[2].endswith(
        "env VENV=.venv TORCH_SPEC=skip VENV_FLAGS=--system-site-packages PYTHON=python3 bash scripts/setup.sh"
    )
    log.unlink()
    profile = _lumi_profile(tmp_path, torch="module")
    env["SIF"] = "/appl/local/pytorch.sif"
    out = subprocess.run(
        ["bash", "slurm/setup_env.sh", profile], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert calls[:2] == [
        "module load LUMI",
        "module load PyTorch/2.7.1-rocm-6.2.4-python-3.12-singularity-20250827",
    ]
    assert calls[2].startswith(f"singularity exec --bind {REPO_ROOT} /appl/local/pytorch.sif env VENV=.venv")


def test_the_profiles_output_root_keeps_participants_apart(monkeypatch):
    """A shared project: lumi.yaml's output_root has $USER in it, expanded for whoever submits."""
    from workshop_lib import submit

    monkeypatch.setattr(submit, "partition_info", lambda partition: None)
    monkeypatch.setenv("USER", "alice")
    job = submit.prepare("lumi", "recipes/tiny_cpu.yaml", 1, None, {})
    assert str(job.out_root) == "/scratch/project_462000000/alice/runs"
    assert job.log_dir == job.out_root / "logs"
    poro = submit.prepare(
        "lumi", "recipes/poro34b_zero3.yaml", 1, None, {}
    )  # offline profile, nothing fetched
    assert len(poro.refusals) == 1 and "prefetch LumiOpen/Poro-34B --profile lumi" in poro.refusals[0]
    given = submit.prepare("lumi", "recipes/tiny_cpu.yaml", 1, None, {}, output_root="/tmp/mine")
    assert str(given.out_root) == "/tmp/mine"  # --output-root wins
