"""Shared test set-up. With CI=true a skipped or xfailed test, or a skipped module, is a failure: CI must
run everything."""

import inspect
import os
import threading

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


# Tests that mostly wait on other processes (Slurm jobs, the lab job, papermill, kernels) name scenarios: these
# start in a background thread at the session's first test (`lane`), the modules are collected last (the Slurm
# jobs first: they take longest), and by the time their tests run they read what the processes did. The
# suite's one process keeps both cores busy meanwhile. The multi-process trainings come just before them:
# when the lane has ended, they are what keeps the second core busy.
LATE = ("test_dpo.py", "test_grpo.py", "test_train.py")
LAST = ("test_slurm.py", "test_lab.py", "test_notebooks.py", "test_notebook_loop.py")


def pytest_collection_modifyitems(items):
    order = {name: 1 for name in LATE} | {name: 2 + k for k, name in enumerate(LAST)}
    items.sort(key=lambda item: order.get(item.path.name, 0))  # stable: the rest keep their order


class Lane:
    """Scenarios run one after another in one thread; `result(name)` waits for one and returns what it returned,
    or raises what it raised (an assertion, a skip) in the test that asks."""

    def __init__(self, scenarios: list, kwargs: dict):
        self.done: dict[str, tuple] = {}
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(scenarios, kwargs), daemon=True, name="lane")
        self.thread.start()

    def _run(self, scenarios, kwargs):
        for fn in scenarios:
            try:
                outcome = (True, fn(**kwargs[fn.__name__]))
            except BaseException as e:  # an assertion, a timeout or a skip: re-raised in the test that asks
                outcome = (False, e)
            with self.ready:
                self.done[fn.__name__] = outcome
                self.ready.notify_all()

    def result(self, name: str, timeout: float = 1800):
        with self.ready:
            if not self.ready.wait_for(lambda: name in self.done, timeout):
                raise TimeoutError(f"the background scenario {name} did not end in {timeout} s")
            ok, value = self.done[name]
        if not ok:
            raise value
        return value


@pytest.fixture(scope="session")
def lane(request):
    """The background lane of this session's selected tests marked `lane(scenario, ...)`: each scenario is a
    function of the test's module, called with the fixtures its parameters name (resolved here, in the main
    thread: fixtures are not thread-safe), in the order the tests are collected."""
    scenarios, kwargs = [], {}
    for item in request.session.items:
        for mark in item.iter_markers("lane"):
            for name in mark.args:
                if name in kwargs:
                    continue
                fn = getattr(item.module, name)
                try:
                    kwargs[name] = {p: request.getfixturevalue(p) for p in inspect.signature(fn).parameters}
                    scenarios.append(fn)
                except BaseException as e:  # e.g. no cluster here (a skip): the tests that ask get it

                    def failed(e=e):
                        raise e

                    failed.__name__ = name
                    kwargs[name] = {}
                    scenarios.append(failed)
    return Lane(scenarios, kwargs)


@pytest.fixture(scope="session", autouse=True)
def _start_the_lane(request):
    """The lane starts at the session's first test when any selected test is marked `lane`."""
    if any(item.get_closest_marker("lane") for item in request.session.items):
        request.getfixturevalue("lane")


@pytest.fixture(scope="session")
def cluster():
    """One real Slurm cluster on localhost for the whole session (tests/slurm_cluster.py)."""
    from slurm_cluster import for_tests

    return for_tests()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model, built once per session into the shared cache (it is deterministic)."""
    from workshop_lib.model import build_tiny_model

    return build_tiny_model()


def _once_per_run(tmp_path_factory, name: str, run_name: str, train_it):
    """A run folder trained once per test run (tests only read these runs)."""
    root = tmp_path_factory.getbasetemp() / name
    train_it(root)
    return root / run_name


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
