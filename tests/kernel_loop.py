"""A participant's loop without a browser: one Jupyter kernel, a notebook's cells run in it as JupyterLab's
Run All runs them (in order, stopping at the first error), the parameters cell edited between runs.

Shared by the fast tier (tests/test_notebook_loop.py) and by anyone who wants to drive a notebook the way a
participant does; tests/test_browser.py does the same in a real JupyterLab.
"""

from __future__ import annotations

import os
import re

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from workshop_lib.kernel_sockets import KernelManager
from workshop_lib.paths import REPO_ROOT

# the environment at import (collection), for every process the background lane (conftest.Lane) starts
# (kernels, papermill): tests in the main thread change os.environ (monkeypatch) meanwhile
ENV = dict(os.environ)


class Kernel:
    """One kernel started in notebooks/ (where JupyterLab starts it), with a notebook loaded into it."""

    def __init__(self, notebook: str, env: dict | None = None):
        self.nb = nbformat.read(REPO_ROOT / "notebooks" / notebook, as_version=4)
        self.client = NotebookClient(
            self.nb,
            timeout=600,
            kernel_name="python3",
            kernel_manager_class=KernelManager,  # Unix sockets: no port race with kernels of other processes
            resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}},
        )
        # JupyterLab names its sessions: the kit then shows its live plot, as participants see it
        env = {**ENV, "JPY_SESSION_NAME": f"notebooks/{notebook}", **(env or {})}
        self.client.km = self.client.create_kernel_manager()
        self.client.start_new_kernel(env=env)
        self.client.start_new_kernel_client()

    def restart(self) -> None:
        """Kernel > Restart Kernel: a fresh process, the notebook and its outputs stay as they are."""
        from jupyter_core.utils import ensure_async, run_sync

        async def restart() -> None:
            await ensure_async(self.client.km.restart_kernel())
            await ensure_async(self.client.kc.wait_for_ready(timeout=60))

        run_sync(restart)()

    def close(self) -> None:
        self.client._cleanup_kernel()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def parameters_index(self) -> int:
        return next(i for i, c in enumerate(self.nb.cells) if "parameters" in c.metadata.get("tags", []))

    def set(self, **values) -> None:
        """Edit the parameters cell as a participant would: change a `name = value` line, or add one."""
        cell = self.nb.cells[self.parameters_index]
        for name, value in values.items():
            line = f"{name} = {value!r}"
            pattern = re.compile(rf"^{name} = .*$", re.M)
            cell.source = (
                pattern.sub(line, cell.source) if pattern.search(cell.source) else f"{cell.source}\n{line}"
            )

    def run(self, start: int = 0, stop: int | None = None) -> CellExecutionError | None:
        """Run cells[start:stop] in order; stop at the first error and return it (None: all ran)."""
        for index, cell in enumerate(self.nb.cells[start:stop], start):
            if cell.cell_type != "code":
                continue
            try:
                self.client.execute_cell(cell, index)
            except CellExecutionError as e:
                return e
        return None

    def clear(self) -> None:
        """Edit > Clear Outputs of All Cells."""
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None

    def run_all(self) -> None:
        """Run All, and fail with the notebook's own error text when a cell fails."""
        error = self.run()
        assert error is None, f"a cell failed on Run All: {error}"

    def text(self) -> str:
        """What the cells show now: streams, text/plain of displays, and errors."""
        out = []
        for cell in self.nb.cells:
            for o in cell.get("outputs", []):
                if o.output_type == "error":
                    out.append(f"{o.ename}: {o.evalue}")
                out.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
        return "\n".join(out)

    def error_outputs(self) -> list[str]:
        return [
            f"{o.ename}: {o.evalue}"
            for c in self.nb.cells
            for o in c.get("outputs", [])
            if o.output_type == "error"
        ]

    def index_of(self, text: str) -> int:
        """The first code cell whose source contains text."""
        return next(i for i, c in enumerate(self.nb.cells) if c.cell_type == "code" and text in c.source)
