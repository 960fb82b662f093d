"""Kernels started side by side: how often jupyter_client's TCP ports collide, and whether Unix sockets do.

Several processes (--procs, as jobs on a shared node or test workers) each run a tiny two-cell notebook with
papermill --runs times in a row, all at once. Side `tcp` uses papermill's own kernel manager (TCP ports
chosen in the client, bound later by the kernel); side `ipc` the kit's (`workshop_lib.kernel_sockets`:
Unix sockets in a private folder). Counted for each side:

  failed       papermill raised (a kernel that died at start, a cell timeout of 60 s)
  cross-talk   a kernel logged a message that was not meant for it: another kernel's client reached it
               ("DELIM not in msg_list", "Invalid Signature", "Address already in use" in the kernels' stderr)

A repetition runs each side once, in rotated order. Collisions are rare (about one in several hundred
notebooks on 2 cores): take --runs in the hundreds.

    python benchmarks/kernel_starts.py [--reps 2] [--procs 3] [--runs 100]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import interleave, machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIGNS = ("DELIM not in msg_list", "Invalid Signature", "Address already in use", "Invalid Message")

# one process of a side: --runs notebooks in a row; prints one line per failure
WORKER = """
import sys, papermill as pm
nb, out, runs, transport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
kw = {}
if transport == "ipc":
    from workshop_lib.kernel_sockets import KernelManager
    kw["kernel_manager_class"] = KernelManager
for i in range(runs):
    try:
        pm.execute_notebook(nb, out, kernel_name="python3", progress_bar=False, execution_timeout=60,
                            start_timeout=60, **kw)
    except Exception as e:
        print("FAILED", i, type(e).__name__, str(e)[:200], flush=True)
"""


def side(transport: str, procs: int, runs: int, tmp: Path):
    def run(rep: int) -> dict:
        import nbformat

        nb = tmp / "t.ipynb"
        cells = [nbformat.v4.new_code_cell("x = 6 * 7\nprint(x)"), nbformat.v4.new_code_cell("import sys")]
        nbformat.write(nbformat.v4.new_notebook(cells=cells), nb)
        t = time.perf_counter()
        ps = []
        for p in range(procs):
            err = open(tmp / f"{transport}-{rep}-{p}.err", "w")  # noqa: SIM115 (closed below)
            out = str(tmp / f"{transport}-{rep}-{p}.ipynb")
            cmd = [sys.executable, "-c", WORKER, str(nb), out, str(runs), transport]
            ps.append((subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True), err))
        failed = 0
        for proc, err in ps:
            out, _ = proc.communicate()
            err.close()
            failed += sum(line.startswith("FAILED") for line in out.splitlines())
            for line in out.splitlines():
                print("   ", transport, line)
        wall = time.perf_counter() - t
        stderr = "".join((tmp / f"{transport}-{rep}-{p}.err").read_text() for p in range(procs))
        talk = sum(stderr.count(s) for s in SIGNS)
        return {
            "notebooks": procs * runs,
            "failed": failed,
            "cross_talk": talk,
            "s_per_notebook": wall / runs,
        }

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100, help="notebooks per process and repetition")
    a = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sides = {t: side(t, a.procs, a.runs, tmp) for t in ("tcp", "ipc")}
        reps = interleave(sides, a.reps)
    print(f"\n{a.procs} processes at once, {a.runs} notebooks each, {a.reps} repetitions:")
    for t in sides:
        n = sum(r[t]["notebooks"] for r in reps)
        f = sum(r[t]["failed"] for r in reps)
        c = sum(r[t]["cross_talk"] for r in reps)
        s = sorted(r[t]["s_per_notebook"] for r in reps)
        print(
            f"  {t}: {n} notebooks, {f} failed, {c} with cross-talk; {s[len(s) // 2]:.2f} s a notebook (median)"
        )


if __name__ == "__main__":
    main()
