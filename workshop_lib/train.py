"""Train a recipe on this node: prepare the run folder, launch the workers, follow progress, record.

`fit` is what notebook 03 calls for several processes or nodes (with one process the notebook runs the
same steps in its own cells), what the tests and benchmarks call, and, with scoring, what the `train`
command runs for batch jobs that need no executed notebook:

    python -m workshop_lib train recipes/tiny_cpu.yaml -p run_name my-run -p learning_rate 1e-3
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from . import launch, progress, runfolder, worker
from .recipe import Recipe
from .worker import TrainResult


def fit(recipe: Recipe, prepared: tuple | None = None, plot: Callable | None = None) -> TrainResult:
    """Prepare (or resume) the run folder, train on every worker of this node, record the try."""
    return launch_workers(runfolder.prepare(recipe), prepared, plot)


def launch_workers(
    recipe: Recipe, prepared: tuple | None = None, plot: Callable | None = None
) -> TrainResult:
    """Train on every worker of this node (the run folder is prepared already) and record the try.

    prepared: (tokenizer, train_ds, eval_ds) built already; forked workers inherit them. Returns rank 0's
    result (on other nodes, this node's first worker's), with every local rank's in `.ranks`.
    """
    if recipe.world_size > 1 and prepared is None:  # tokenize once here; forked workers inherit the data
        from . import build

        tokenizer, _ = build.tokenizer(recipe)
        prepared = (tokenizer, *build.datasets(recipe, tokenizer)[:2])
    if recipe.world_size == 1:
        fn = functools.partial(worker.train, recipe, prepared)
    else:
        fn = functools.partial(worker.logged_train, recipe, str(recipe.run_dir / "logs"), prepared)
    with progress.follow(recipe.run_dir, plot=plot):
        results = launch.run(
            fn,
            nproc_per_node=recipe.nproc_per_node,
            nnodes=recipe.nnodes,
            node_rank=recipe.node_rank,
            master_addr=recipe.master_addr,
            master_port=recipe.master_port,
        )
    first = results[min(results)]
    first.ranks = results
    record(recipe, first)
    return first


def record(recipe: Recipe, result: TrainResult) -> None:
    """Node 0 records the try (tries.jsonl) and, for a finished run, result.json."""
    if runfolder.is_node_zero(recipe):
        runfolder.record_try(recipe.run_dir, result)
        if not result.preempted:
            runfolder.write_result(recipe.run_dir, result.to_dict())


def record_scores(recipe: Recipe, result: TrainResult, before: dict | None, after: dict | None) -> None:
    """Add held-out exact match before/after to a finished run's result.json (node 0)."""
    from . import scoring

    if runfolder.is_node_zero(recipe) and not result.preempted:
        runfolder.write_result(recipe.run_dir, {**result.to_dict(), **scoring.summary(before, after)})


def run(recipe: Recipe) -> TrainResult:
    """fit, then (node 0, finished runs) score held-out answers before and after and write result.json."""
    from . import build, scoring

    result = fit(recipe)
    if (
        result.preempted
        or not runfolder.is_node_zero(recipe)
        or not recipe.eval_file
        or not recipe.n_generate
    ):
        return result
    rows = build.rows(recipe.eval_file, int(recipe.trl.get("seed", 0)))
    scores = scoring.from_run_folder(recipe, rows)
    record_scores(recipe, result, scores["before"], scores["after"])
    print(
        f"held-out exact match: {scores['before']['exact_match']:.1%} -> {scores['after']['exact_match']:.1%}"
    )
    return result


def _main(args) -> int:
    from .recipe import RecipeError, load_recipe
    from .submit import parse_value

    try:
        recipe = load_recipe(args.recipe, overrides={k: parse_value(v) for k, v in args.p})
        result = run(recipe)
    except RecipeError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    state = "stopped with a checkpoint (resume it)" if result.preempted else "finished"
    print(f"train: {state} at step {result.global_step}/{result.max_steps}: {recipe.run_dir}")
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
