"""Notebook 03's training beside a busy core: OpenMP's spin count, the kit's 1000 against libgomp's 300000.

torch's OpenMP threads spin at every barrier before they sleep. On 2 cores with one of them busy (another
participant's process, a second pytest worker, a node process of a local Slurm job), a thread waiting for its
partner spins away the time slice the partner needs. Each side runs notebook 03 under papermill (a kernel, as
participants train) for --steps steps and reads the training time from the run's result.json.

  idle/300000  idle/1000   the machine otherwise idle: what the kit's setting costs
  busy/300000  busy/1000   one core kept busy by a Python loop for the whole run

Every repetition runs each side once, in rotated order; ratios are taken inside a repetition, median (min-max).

    python benchmarks/busy_core.py [--reps 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import fmt_ratio, fmt_value, interleave, machine, ratios  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = "[{path: data/synthetic/train.jsonl, max_rows: 200}]"


def notebook_run(out: Path, name: str, steps: int, spin: str, busy: bool) -> dict:
    env = {**os.environ, "GOMP_SPINCOUNT": spin, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_WAIT_POLICY", None)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        subprocess.run(
            [sys.executable, "-m", "papermill", "notebooks/03_train.ipynb", str(out / f"{name}.ipynb")]
            + ["-p", "run_name", name, "-p", "output_root", str(out), "-p", "max_steps", str(steps)]
            + [
                "-y",
                f"overrides: {{eval_strategy: 'no', n_generate: 0, save_steps: 1000, train_file: {DATA}}}",
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
    finally:
        if hog:
            hog.kill()
    return {"train_s": json.loads((out / name / "result.json").read_text())["runtime_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"busy core: notebook 03, {args.steps} steps, {args.reps} interleaved repetitions; {machine()}")
    out = Path(tempfile.mkdtemp(prefix="busy-core-"))
    sides = {
        f"{load}/{spin}": (
            lambda r, load=load, spin=spin: notebook_run(
                out, f"{load}-{spin}-{r}", args.steps, spin, busy=load == "busy"
            )
        )
        for load in ("idle", "busy")
        for spin in ("300000", "1000")
    }
    reps = interleave(sides, args.reps)
    for side in sides:
        print(f"{side:<12} training {fmt_value([row[side]['train_s'] for row in reps], '.2f', ' s')}")
    print(f"idle: 1000 / 300000   {fmt_ratio(ratios(reps, 'idle/1000', 'idle/300000', 'train_s'))}")
    print(f"busy: 300000 / 1000   {fmt_ratio(ratios(reps, 'busy/300000', 'busy/1000', 'train_s'))}")


if __name__ == "__main__":
    main()
