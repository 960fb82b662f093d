"""The environment descriptions agree, and the set-up script is idempotent."""

import re
import subprocess
import tomllib

import pytest
import yaml

from workshop_lib.model import REPO_ROOT


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;#]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(s) for s in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(s) for s in extra}
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(s) for s in pip_list if not s.startswith("-e")}
    assert listed == wanted, (
        f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    )


def test_torch_pins_agree():
    env = (REPO_ROOT / "environment.yml").read_text()
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    pin = re.search(r"TORCH_SPEC:-(torch==[\d.]+)", setup).group(1)
    assert pin in env


def test_setup_is_idempotent_and_quick_when_done():
    # the suite runs inside the environment the script made, so a second run must do nothing
    out = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "environment ready" not in out.stdout  # nothing was installed


@pytest.mark.parametrize(
    "module, laptop_says",
    [
        ("import pytest\n\ndef test_x():\n    pytest.skip('no cluster')\n", "1 skipped"),
        (
            "import pytest\n\npytest.importorskip('no_such_module_here')\n\ndef test_x():\n    pass\n",
            "1 skipped",
        ),
        (
            "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_x():\n    assert False\n",
            "1 xfailed",
        ),
        ("import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_x():\n    pass\n", "1 xpassed"),
    ],
    ids=["skip", "module-importorskip", "xfail", "xpass"],
)
def test_a_skip_or_xfail_fails_the_run_in_ci(tmp_path, module, laptop_says):
    (tmp_path / "test_skipping.py").write_text(module)
    (tmp_path / "conftest.py").write_text((REPO_ROOT / "tests" / "conftest.py").read_text())
    import os
    import sys

    env = dict(os.environ, CI="true")
    ci = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert ci.returncode != 0 and "in CI (CI=true), which counts as a failure" in ci.stdout, ci.stdout
    env["CI"] = ""
    laptop = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    # on a laptop it passes (exit 5: a skipped module leaves no test to run)
    assert laptop.returncode in (0, 5) and laptop_says in laptop.stdout, laptop.stdout
