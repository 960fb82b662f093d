"""Shared test set-up. With CI=true a skipped or xfailed test, or a skipped module, is a failure: CI must
run everything."""

import os

import pytest

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model, built once per session into the shared cache (it is deterministic)."""
    from workshop_lib.model import build_tiny_model

    return build_tiny_model()
