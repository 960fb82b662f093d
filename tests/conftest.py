"""Shared test set-up. With CI=true a skipped or xfailed test, or a skipped module, is a failure: CI must
run everything."""

import os

import pytest

import workshop_lib  # noqa: F401  (its thread settings, before anything loads torch; kernels inherit them)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _ci_failure(report, what: str) -> None:
    report.outcome = "failed"
    if hasattr(report, "wasxfail"):
        del report.wasxfail  # pytest does not count a failure that carries it
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.longrepr = f"{what} in CI (CI=true), which counts as a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped, xfailed or xpassed test fails in CI: CI must run, and pass, everything."""
    outcome = yield
    report = outcome.get_result()
    if not IN_CI:
        return
    if hasattr(report, "wasxfail"):
        if report.when == "call" or report.skipped:
            _ci_failure(report, f"xfail ({report.wasxfail or 'no reason'})")
    elif report.skipped:
        _ci_failure(report, "skipped")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module skipped as a whole (pytest.importorskip or pytest.skip(allow_module_level=True)) fails in CI."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        _ci_failure(report, "module skipped")


# The Slurm module waits on its jobs much of its time: collected first, it runs beside the rest of the suite
# with two pytest workers (README, "Tests": one test file at a time each, in this order; make test uses one).
FIRST = ("test_slurm.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model, built once per session into the shared cache (it is deterministic)."""
    from workshop_lib.model import build_tiny_model

    return build_tiny_model()


def _once_per_run(tmp_path_factory, name: str, run_name: str, train_it):
    """A run folder trained once per test run, even with several pytest workers (the README's optional
    two-worker command): the first worker to ask trains it under a lock, the others read it (tests only read
    these runs)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common folder
    with FileLock(str(root / f"{name}.lock")):
        run_dir = root / name / run_name
        if not (run_dir / "result.json").exists():
            train_it(root / name)
    return run_dir


@pytest.fixture(scope="session")
def short_sft_run(tmp_path_factory, tiny_model_dir):
    """A finished SFT run of a few steps (a run folder with final/ and result.json), shared by the tests
    that start from an SFT model: notebooks 05 and 06, DPO."""
    from workshop_lib import recipe, train

    def train_it(root):
        overrides = dict(
            run_name="sft-short", output_root=str(root), max_steps=6, logging_steps=2, save_steps=6
        )
        overrides |= dict(eval_strategy="no", n_generate=0, warmup_steps=0)
        train.fit(recipe.load_recipe("recipes/tiny_cpu.yaml", overrides=overrides))

    return _once_per_run(tmp_path_factory, "sft-runs", "sft-short", train_it)


@pytest.fixture(scope="session")
def brief_sft_run(tmp_path_factory, tiny_model_dir):
    """A briefly trained SFT run (100 steps: about half the held-out answers right), what DPO and GRPO start
    from in their tests: room to improve, and right often enough to learn from."""
    from workshop_lib import recipe, train

    def train_it(root):
        overrides = dict(
            run_name="sft", output_root=str(root), max_steps=100, n_generate=0, eval_strategy="no"
        )
        train.fit(recipe.load_recipe("recipes/tiny_cpu.yaml", overrides=overrides))

    return _once_per_run(tmp_path_factory, "brief-sft", "sft", train_it)
