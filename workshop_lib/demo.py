"""The main job: notebooks 01 -> 07 executed headless on the tiny model, into run folders.

`python -m workshop_lib demo` (or `make demo`) shows what a participant's day produces: converted data,
a trained model, loss curves, scored answers, then TRL's next two lessons from a *briefly* trained SFT model
(notebook 03 again, a few dozen steps: runs/<name>-brief), which is right only sometimes: DPO (runs/<name>-dpo)
and GRPO (runs/<name>-grpo). A fully trained model would leave them nothing to improve. A summary at the end
says what each step added.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path

from .paths import REPO_ROOT
from .runs import load_run, read_result

NOTEBOOKS = [
    "01_data_formatting",
    "02_chat_templates",
    "03_train",
    "04_loss_curves",
    "05_chat_and_export",
    "06_preference_tuning",
    "07_grpo",
]
BRIEF_STEPS = 30  # the SFT model DPO and GRPO start from: about one held-out answer in ten right
GRPO_STEPS = 30  # each step samples 8 answers for each of 8 prompts: about 1 s a step on 2 CPU cores


def run_notebook(
    name: str, out_dir: Path, parameters: dict, log_output: bool = False, cell_timeout_s: int = 900
) -> Path:
    """Execute notebooks/<name>.ipynb with papermill into out_dir/<name>.ipynb (cwd: the repository).

    cell_timeout_s: a cell (or a reply from the kernel) that takes longer fails the run instead of waiting
    forever: on a heavily loaded machine a kernel's reply can be lost, and papermill would wait for it."""
    import papermill as pm

    from .kernel_sockets import KernelManager

    out = Path(out_dir) / f"{name}.ipynb"
    pm.execute_notebook(
        str(REPO_ROOT / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(REPO_ROOT),
        kernel_name="python3",
        progress_bar=False,
        log_output=log_output,
        execution_timeout=cell_timeout_s,
        start_timeout=600,  # papermill's 60 s is short for a first import on a busy machine
        kernel_manager_class=KernelManager,  # Unix sockets: no port to share with a neighbour's kernel
    )
    return out


def demo(name: str | None, recipe_file: str = "recipes/tiny_cpu.yaml") -> int:
    """The whole pipeline on the tiny model, one run folder, a summary at the end."""
    from .model import build_tiny_model

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = name or datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    run_dir = REPO_ROOT / "runs" / name
    brief_dir, dpo_dir, grpo_dir = (run_dir.with_name(f"{name}-{x}") for x in ("brief", "dpo", "grpo"))
    if any((d / "recipe.yaml").exists() for d in (run_dir, brief_dir, dpo_dir, grpo_dir)):
        print(f"demo: {run_dir} exists already; choose another --name (nothing was changed)", file=sys.stderr)
        return 2
    nb_dir = run_dir / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"demo: tiny model at {build_tiny_model()} ({time.time() - t0:.1f} s)")
    data_dir = run_dir / "data"
    params = {
        "01_data_formatting": {"output_dir": str(data_dir)},
        "02_chat_templates": {"dataset": str(data_dir / "train.jsonl")},
        "03_train": {
            "recipe_file": recipe_file,
            "run_name": name,
            "output_root": str(REPO_ROOT / "runs"),
            "train_file": str(data_dir / "train.jsonl"),
            "eval_file": str(data_dir / "eval.jsonl"),
        },
        "04_loss_curves": {"runs": str(run_dir)},
        "05_chat_and_export": {"run": str(run_dir)},
        # DPO and GRPO start from the brief SFT run, each into its own run folder
        "06_preference_tuning": {"model": str(brief_dir / "final"), "run_name": dpo_dir.name},
        "07_grpo": {"model": str(brief_dir / "final"), "run_name": grpo_dir.name, "max_steps": GRPO_STEPS},
    }
    for nb in ("06_preference_tuning", "07_grpo"):
        params[nb]["output_root"] = str(REPO_ROOT / "runs")
    brief = {  # notebook 03 again, briefly: a model that is right only sometimes
        **params["03_train"],
        "run_name": brief_dir.name,
        "max_steps": BRIEF_STEPS,
        "overrides": {"eval_strategy": "no", "save_steps": BRIEF_STEPS},
    }
    steps = [(nb, nb_dir, params[nb]) for nb in NOTEBOOKS]
    steps.insert(NOTEBOOKS.index("06_preference_tuning"), ("03_train", brief_dir / "notebooks", brief))
    for nb, out_dir, parameters in steps:
        t = time.time()
        print(f"demo: running {nb} -> {parameters.get('run_name', run_dir.name)} ...", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_notebook(
            nb, out_dir, parameters, log_output=nb in ("03_train", "06_preference_tuning", "07_grpo")
        )
        print(f"demo: {nb} done in {time.time() - t:.0f} s -> {out_dir / (nb + '.ipynb')}", flush=True)
    print_summary(run_dir, time.time() - t0, brief_dir, dpo_dir, grpo_dir)
    return 0


def _em(result: dict) -> str:
    b, a = result.get("exact_match_before"), result.get("exact_match_after")
    return f"{b:.1%} -> {a:.1%}" if a is not None and b is not None else "-"


def print_summary(
    run_dir: Path,
    seconds: float,
    brief_dir: Path | None = None,
    dpo_dir: Path | None = None,
    grpo_dir: Path | None = None,
) -> None:
    result = read_result(run_dir)
    _, loss = load_run(run_dir).series("loss")
    em_b, em_a = result.get("exact_match_before"), result.get("exact_match_after")
    lines = [
        "",
        f"demo finished in {seconds:.0f} s: {run_dir}",
        f"  final train loss   {loss[-1]:.4f}" if loss else "  final train loss   -",
        f"  final eval loss    {result['eval_loss']:.4f}"
        if result.get("eval_loss") is not None
        else "  final eval loss    -",
        f"  held-out exact match: before {em_b:.1%} -> after {em_a:.1%} (n={result.get('exact_match_n')})"
        if em_a is not None and em_b is not None
        else "  held-out exact match: -",
        f"  executed notebooks {run_dir / 'notebooks'}",
        f"  model              {run_dir / 'final'}",
    ]
    for extra in ("loss_curves.png", "merged"):
        if (run_dir / extra).exists():
            lines.append(f"  {extra:<18} {run_dir / extra}")
    brief = read_result(brief_dir) if brief_dir else {}
    if brief:
        lines.append(
            f"  brief SFT ({brief.get('global_step')} steps, {brief_dir}): held-out exact match {_em(brief)}: "
            "where DPO and GRPO start"
        )
    dpo = read_result(dpo_dir) if dpo_dir else {}
    if "preference_accuracy_after" in dpo:
        lines += [
            f"  DPO ({dpo_dir}):",
            f"    held-out preference accuracy {dpo['preference_accuracy_before']:.1%} -> "
            f"{dpo['preference_accuracy_after']:.1%}, reward margin {dpo['preference_reward_margin_after']:.3f} "
            f"(n={dpo['preference_n']})",
            f"    held-out exact match {_em(dpo)}",
        ]
    grpo = read_result(grpo_dir) if grpo_dir else {}
    if "reward_after" in grpo:
        lines += [
            f"  GRPO ({grpo_dir}):",
            f"    held-out mean reward {grpo['reward_before']:.3f} -> {grpo['reward_after']:.3f}, exact match {_em(grpo)}",
        ]
        before, after = grpo.get("rewards_before") or {}, grpo.get("rewards_after") or {}
        lines += [f"      {k:<12} {before[k]:.3f} -> {after[k]:.3f}" for k in after if k in before]
    print("\n".join(lines))


def register(sub) -> None:
    d = sub.add_parser("demo", help="the demo pipeline (notebooks 01 -> 07) on the tiny model")
    d.add_argument("--name", help="run folder name under runs/ (default: demo-<date>-<time>)")
    d.add_argument("--recipe", default="recipes/tiny_cpu.yaml")
    d.set_defaults(func=lambda a: demo(a.name, a.recipe))
