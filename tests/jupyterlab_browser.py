"""JupyterLab in headless Chromium, driven as a person would: the tests' browser (tests/test_browser.py, and
tests/test_lab.py against JupyterLab in a Slurm job). `Lab(root, work, artifacts)` starts its own JupyterLab;
`Lab(..., url=...)` drives one that runs elsewhere. Importing it skips the calling test module where Chromium
or selenium is missing (a failure in CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from workshop_lib.kernel_sockets import LAB_OPTION

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "chromium or chromedriver not found: run scripts/install_browser.sh as root", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

WIDGET_ERRORS = ("Error displaying widget", "model not found", "Loading widget")


def until(check: Callable[[], object], timeout: float, what: str, every: float = 0.25):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    from selenium.common.exceptions import StaleElementReferenceException

    end = time.time() + timeout
    while True:
        try:
            value = check()
        except StaleElementReferenceException:  # the output redrew while we read it: look again
            value = None
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Lab:
    """A JupyterLab server and a headless Chromium looking at it."""

    def __init__(self, root: Path, work: Path, artifacts: Path, url: str | None = None):
        """root: the folder JupyterLab shows (notebooks are copied there); url: drive a JupyterLab that runs
        already (with its token in the URL), else start one here, token-less, on a free port."""
        self.root, self.artifacts = root, artifacts
        self.server, self.query = None, ""
        if url:
            base, _, token = url.partition("?token=")
            self.url, self.query = base.split("/lab")[0].rstrip("/"), f"token={token}" if token else ""
        else:
            self._start_server(work)
        self._start_browser()

    def _start_server(self, work: Path) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cfg, settings = work / "config", work / "settings"
        cfg.mkdir()
        # the language server is not needed and costs start-up time on 2 cores
        (cfg / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}}})
        )
        # no "would you like to receive Jupyter news?" toast over the notebook
        notes = settings / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True)
        (notes / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(cfg),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
            JUPYTER_RUNTIME_DIR=str(work / "runtime"),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        self.log = work / "jupyterlab.log"
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                f"--port={port}",
                "--ServerApp.ip=127.0.0.1",
                "--IdentityProvider.token=",
                "--ServerApp.password=",
                f"--ServerApp.root_dir={self.root}",
                "--ServerApp.disable_check_xsrf=True",  # the test shuts kernels down through the REST API
                LAB_OPTION,  # kernels on Unix sockets, as in a lab job
            ],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def _start_browser(self) -> None:
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # console errors, for failures
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        until(self._up, 120, f"JupyterLab to answer on {self.url}")

    def api(self, path: str) -> str:
        """A URL of JupyterLab's REST API, with the token when there is one."""
        return f"{self.url}{path}" + (f"?{self.query}" if self.query else "")

    def _up(self) -> bool:
        if self.server is not None:
            assert self.server.poll() is None, f"JupyterLab exited: {self.log.read_text()[-2000:]}"
        try:
            urllib.request.urlopen(self.api("/api/status"), timeout=2)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.driver.quit()
        if self.server is None:
            return
        self.server.terminate()
        try:
            self.server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.server.kill()

    # ------------------------------------------------------------------ the page
    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def panel(self):
        return self.driver.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden)")

    def prompts(self) -> list[str]:
        return self.js(
            "return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell"
            " .jp-InputPrompt')].map(e => e.textContent.trim())"
        )

    def text(self) -> str:
        return self.panel().text

    def open(self, name: str) -> None:
        """Open a notebook in a fresh workspace and wait until its kernel is idle."""
        self.driver.get(f"{self.url}/lab/tree/{name}?reset" + (f"&{self.query}" if self.query else ""))
        n_code = sum(c.cell_type == "code" for c in nbformat.read(self.root / name, as_version=4).cells)
        until(lambda: len(self.prompts()) == n_code, 120, f"{name} to show its {n_code} code cells")
        until(self._kernel_idle, 120, f"the kernel of {name} to start")

    def _kernel_idle(self) -> bool:
        return bool(
            self.js(
                "const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) "
                ".jp-Notebook-ExecutionIndicator');"
                "const bar = document.querySelector('#jp-main-statusbar');"
                "return s && s.dataset.status === 'idle' && bar && /Idle/.test(bar.textContent)"
            )
        )

    def menu(self, label: str, item: str) -> None:
        """Click a menu-bar entry, then one of its items by its label, as a person would."""
        self.driver.find_element(
            By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel') and text()='{label}']"
        ).click()
        xpath = f"//li[contains(@class,'lm-Menu-item')][div[contains(@class,'lm-Menu-itemLabel') and text()='{item}']]"
        until(lambda: self.driver.find_elements(By.XPATH, xpath), 10, f"{label} > {item}")[0].click()

    def run_all(self, timeout: float) -> float:
        """Run > Run All Cells; wait until no cell is running or queued. Returns the seconds it took."""
        self.panel().find_element(By.CSS_SELECTOR, ".jp-Cell").click()
        t0 = time.time()
        self.menu("Run", "Run All Cells")
        until(lambda: any(p != "[ ]:" for p in self.prompts()), 30, "Run All to start")
        done = 0

        def finished() -> bool:
            nonlocal done
            quiet = "[*]:" not in self.prompts() and self._kernel_idle()
            done = done + 1 if quiet else 0
            return done >= 3  # idle on three polls in a row: not between two cells

        until(finished, timeout, "Run All to finish", every=0.3)
        return time.time() - t0 - 0.6

    def type_at_end_of_cell(self, code_cell: int, text: str) -> None:
        """Click into a code cell's editor, go to its end and type, as a person would."""
        editor = self.panel().find_elements(By.CSS_SELECTOR, ".jp-CodeCell .cm-content")[code_cell]
        self.js("arguments[0].scrollIntoView()", editor)
        editor.click()
        editor.send_keys(Keys.CONTROL, Keys.END)
        editor.send_keys(text)
        until(lambda: text.strip() in editor.text, 10, f"{text.strip()!r} to appear in the cell")

    def widget_outputs(self) -> list:
        """The outputs that display a widget (not those nested inside another widget)."""
        return self.js(
            "return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
            ".jp-OutputArea-output.lm-Panel')].filter(e => !e.parentElement.closest('.jupyter-widgets'))"
        )

    def assert_widgets_rendered(self, expected: int | None = None) -> None:
        """Every widget output shows a widget: no placeholder and no error text, anywhere in the notebook."""

        def settled() -> bool:
            return not any(e in self.text() for e in WIDGET_ERRORS[2:])

        until(settled, 20, "widgets to leave 'Loading widget...'")
        text = self.text()
        for err in WIDGET_ERRORS:
            assert err not in text, f"{err!r} shown in the notebook; the browser's console: {self.console()}"
        views = self.widget_outputs()
        if expected is not None:
            assert len(views) == expected, f"{len(views)} widget outputs, expected {expected}"
        for view in views:
            assert view.find_elements(By.CSS_SELECTOR, ".jupyter-widgets *"), (
                f"an empty widget output: {view.text}"
            )

    def console(self) -> list[str]:
        """The page's console errors since the last call (what the widget manager logged)."""
        return [e["message"][:300] for e in self.driver.get_log("browser")]

    def save(self, name: str) -> nbformat.NotebookNode:
        self.menu("File", "Save Notebook")
        until(
            lambda: (
                not self.driver.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tab.jp-mod-current.jp-mod-dirty")
            ),
            30,
            f"{name} to be saved",
        )

        def written() -> nbformat.NotebookNode | None:
            # jupyter_server writes the file in place (after a backup copy): it can be caught half-written
            try:
                return nbformat.read(self.root / name, as_version=4)
            except (nbformat.reader.NotJSONError, ValueError):
                return None

        return until(written, 30, f"{name} to be written to disk")

    def screenshot(self, stem: str, element=None) -> None:
        if element is not None:
            self.js("arguments[0].scrollIntoView()", element)
        self.driver.save_screenshot(str(self.artifacts / f"{stem}.png"))

    def shutdown_kernels(self) -> None:
        for session in json.load(urllib.request.urlopen(self.api("/api/sessions"))):
            req = urllib.request.Request(self.api(f"/api/sessions/{session['id']}"), method="DELETE")
            urllib.request.urlopen(req)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def errors_in(nb: nbformat.NotebookNode) -> list[str]:
    """Error outputs of a saved notebook, and code cells that never ran."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            found.append(f"cell {i} did not run")
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {i}: {out.ename}: {out.evalue}")
    return found


def image_sources(element) -> list[str]:
    """The images under element once they have stopped changing: a widget output redraws by clearing
    and re-adding its image (ipywidgets), so a read in between sees a stale element or a passing state.
    [] when there is no image (or the output kept changing for 5 s)."""

    def read() -> list[str] | None:
        try:
            return [img.get_attribute("src") for img in element.find_elements(By.CSS_SELECTOR, "img")]
        except StaleElementReferenceException:
            return None

    last, deadline = read(), time.time() + 5
    while time.time() < deadline:
        time.sleep(0.3)
        now = read()
        if now is not None and now == last:
            return now
        last = now
    return []
