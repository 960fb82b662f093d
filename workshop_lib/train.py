"""Train a recipe on this node: prepare the run folder, launch the workers, follow progress, record.

`fit` is what notebook 03 calls for several processes or nodes (with one process the notebook runs the
same steps in its own cells), what the tests and benchmarks call, and, with scoring, what the `train`
command runs for batch jobs that need no executed notebook:

    python -m workshop_lib train recipes/tiny_cpu.yaml -p run_name my-run -p learning_rate 1e-3
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from . import build, launch, modelcard, preflight, progress, runfolder, scoring, worker
from .control import this_node_rank
from .recipe import Recipe, RecipeError, load_recipe, parse_value
from .worker import TrainResult


def fit(recipe: Recipe, prepared: tuple | None = None, plot: Callable | None = None) -> TrainResult:
    """Check model, tokenizer, template and data (preflight: a failed start leaves no run folder), prepare
    (or resume) the run folder, train on every worker of this node, record the try."""
    if prepared is None:
        prepared = preflight.check(recipe)
    return launch_workers(runfolder.prepare(recipe), prepared, plot)


def launch_workers(
    recipe: Recipe, prepared: tuple | None = None, plot: Callable | None = None
) -> TrainResult:
    """Train on every worker of this node (the run folder is prepared already) and record the try.

    prepared: (tokenizer, train_ds, eval_ds) built already. Forked workers inherit them; spawned workers
    (launch.start_method: ROCm, or a GPU runtime already initialised here) load them from the run folder,
    where they are saved once. Returns rank 0's result (on other nodes, this node's first worker's), with
    every local rank's in `.ranks`.
    """
    if recipe.world_size > 1 and prepared is None:  # tokenize once here, not once per worker
        tokenizer, _ = build.tokenizer(recipe)
        prepared = (tokenizer, *build.datasets(recipe, tokenizer)[:2])
    start = launch.start_method() if recipe.world_size > 1 else None
    saved = None
    if recipe.world_size == 1:
        fn = functools.partial(worker.train, recipe, prepared)
    elif start.name == "fork":
        fn = functools.partial(worker.logged_train, recipe, str(recipe.run_dir / "logs"), prepared)
    else:
        saved = save_prepared(recipe, prepared)
        fn = functools.partial(train_saved, recipe, str(recipe.run_dir / "logs"), prepared[0], str(saved))
    try:
        with progress.follow(recipe.run_dir, plot=plot):
            results = launch.run(
                fn,
                nproc_per_node=recipe.nproc_per_node,
                nnodes=recipe.nnodes,
                node_rank=recipe.node_rank,
                master_addr=recipe.master_addr,
                master_port=recipe.master_port,
                start=start,
                hang_timeout_s=recipe.hang_timeout_s,
            )
    finally:
        if saved:
            shutil.rmtree(saved, ignore_errors=True)
    first = results[min(results)]
    first.ranks = results
    record(recipe, first)
    return first


def save_prepared(recipe: Recipe, prepared: tuple) -> Path:
    """Save the prepared datasets once for spawned workers: <run>/.prepared-node<N>/{train,eval}.
    Each worker memory-maps them (Dataset.load_from_disk): one copy in the page cache for all workers, not
    one pickled copy per worker; the folder is removed when the workers end."""
    import datasets

    _, train_ds, eval_ds = prepared
    folder = recipe.run_dir / f".prepared-node{this_node_rank(recipe.nnodes, recipe.node_rank)}"
    shutil.rmtree(folder, ignore_errors=True)  # a leftover of a killed try
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a saving bar per dataset would only clutter the notebook
    try:
        train_ds.save_to_disk(str(folder / "train"))
        if eval_ds is not None:
            eval_ds.save_to_disk(str(folder / "eval"))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return folder


def train_saved(recipe: Recipe, log_dir: str, tokenizer, folder: str) -> TrainResult:
    """Entry point of a spawned worker: the datasets save_prepared wrote, then worker.logged_train."""
    from datasets import load_from_disk

    train_ds = load_from_disk(str(Path(folder) / "train"))
    eval_ds = load_from_disk(str(Path(folder) / "eval")) if (Path(folder) / "eval").exists() else None
    return worker.logged_train(recipe, log_dir, (tokenizer, train_ds, eval_ds))


def record(recipe: Recipe, result: TrainResult) -> None:
    """Node 0 records the try (tries.jsonl) and, for a finished run, result.json and the model card."""
    if runfolder.is_node_zero(recipe):
        runfolder.record_try(recipe.run_dir, result, recipe.trl.get("gradient_accumulation_steps"))
        if not result.preempted:
            runfolder.write_result(recipe.run_dir, result.to_dict())
            modelcard.write(recipe.run_dir)


def record_scores(
    recipe: Recipe,
    result: TrainResult,
    before: dict | None,
    after: dict | None,
    preference: tuple[dict | None, dict | None] = (None, None),
) -> None:
    """Add held-out exact match before/after (and, for DPO, the preference scores before/after) to a
    finished run's result.json and model card (node 0)."""
    if runfolder.is_node_zero(recipe) and not result.preempted:
        scores = {**scoring.summary(before, after), **scoring.preference_summary(*preference)}
        runfolder.write_result(recipe.run_dir, {**result.to_dict(), **scores})
        modelcard.write(recipe.run_dir)


def run(recipe: Recipe) -> TrainResult:
    """fit, then (node 0, finished runs) score held-out answers before and after and write result.json."""
    result = fit(recipe)
    if (
        result.preempted
        or not runfolder.is_node_zero(recipe)
        or not recipe.eval_file
        or not recipe.n_generate
    ):
        return result
    rows = build.rows(recipe.eval_file, int(recipe.trl.get("seed", 0)), build.row_kind(recipe))
    scores = scoring.from_run_folder(recipe, rows)
    preference = (scores.get("preference_before"), scores.get("preference_after"))
    record_scores(recipe, result, scores["before"], scores["after"], preference)
    print(
        f"held-out exact match: {scores['before']['exact_match']:.1%} -> {scores['after']['exact_match']:.1%}"
    )
    if "reward" in scores["after"]:
        print(f"held-out mean reward: {scores['before']['reward']:.3f} -> {scores['after']['reward']:.3f}")
    if preference[1]:
        print(
            f"held-out preference accuracy: {preference[0]['accuracy']:.1%} -> {preference[1]['accuracy']:.1%}, "
            f"reward margin {preference[1]['reward_margin']:.3f}"
        )
    return result


def _main(args) -> int:
    try:
        recipe = load_recipe(args.recipe, overrides={k: parse_value(v) for k, v in args.p})
        result = run(recipe)
    except RecipeError as e:  # foreseen (preflight, run folder, recipe): the message is the fix
        print(f"train: {e}", file=sys.stderr)
        return 2
    state = "stopped with a checkpoint (resume it)" if result.preempted else "finished"
    print(f"train: {state} at step {result.global_step}/{result.max_steps}: {recipe.run_dir}")
    if result.system_prompt == "merge":  # the log says what the template report said (result.json too)
        print(
            f"train: system prompts were merged into the first user turn (system_prompt: {recipe.system_prompt})"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe without a notebook (the same code path as notebook 03)",
        description="Train a recipe on this node: one process, several, or one node of a multi-node job.",
    )
    p.add_argument("recipe", help="recipe YAML (recipes/*.yaml or a run's recipe.yaml)")
    p.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="recipe override"
    )
    p.set_defaults(func=_main)
