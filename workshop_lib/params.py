"""A notebook's parameters: what its parameters cell sets, read from the cell itself, made into a Recipe.

The training notebooks (03, 06) start with a cell tagged `parameters`. A participant edits it; papermill
(`-p key value`, and the Slurm job) adds a cell after it with the values it was given. Both cells start with
the line `# Parameters`. `parameters_cell()` reads the most recent run of those cells from IPython's input
history and evaluates their assignments on their own, so the values are exactly what the cells say. The
notebook's namespace is never inspected: a notebook variable (`trainer`, `model`, ...) can never be taken
for a recipe key, and Run All twice behaves like Run All once.

Any recipe key may be written there as a plain variable (`warmup_steps = 0`); `None` means "as the recipe
says"; `overrides = {...}` takes keys as one dict (papermill: `-y 'overrides: {r: 8}'`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .recipe import KIT_FIELDS, Recipe, RecipeError, load_recipe, lora_fields, read_yaml
from .trainers import KINDS, TRAINERS, trl_fields

MARK = "# Parameters"  # first line of the parameters cell, and of the cell papermill injects after it
NOTEBOOK_ONLY = ("recipe_file", "overrides")  # names of the parameters cell that are not recipe keys


def parameters_cell() -> dict[str, Any]:
    """{name: value} for every name the last run of the parameters cell (and papermill's injected cell
    after it) assigns, evaluated from the cells' own source, in order (injected values win)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        raise RecipeError(
            "params.parameters_cell() reads a notebook's parameters cell: run it inside Jupyter. "
            "In a script, build the recipe with recipe.load_recipe(file, overrides)."
        )
    return read_cells(shell.history_manager.input_hist_parsed[:-1])  # [-1] is the cell calling this


def read_cells(history: list[str]) -> dict[str, Any]:
    """The parameters from an input history (oldest first): the newest run of consecutive cells that start
    with MARK (the parameters cell, then papermill's), their assignments evaluated in a fresh namespace."""
    cells: list[str] = []
    for source in reversed(history):
        if source.lstrip().startswith(MARK):
            cells.append(source)
        elif cells:
            break
    if not cells:
        raise RecipeError(
            "no parameters cell has run in this kernel: run the notebook from the top (Run > Run All Cells), "
            "or at least the cell that starts with '# Parameters'."
        )
    names: list[str] = []
    namespace: dict[str, Any] = {}
    for source in reversed(cells):
        tree = ast.parse(source)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
        exec(compile(tree, "<parameters cell>", "exec"), namespace)  # the cells' own code, nothing else
    return {name: namespace[name] for name in dict.fromkeys(names)}


def notebook_recipe(params: Mapping[str, Any]) -> Recipe:
    """The recipe a notebook trains: `recipe_file`, then `overrides`, then every other parameter that is
    not None (each must be a recipe key). run_name None gives a fresh folder name,
    <recipe's run_name>-<date>-<time>, so running the notebook again never meets the last run."""
    params = dict(params)
    recipe_file = params.pop("recipe_file", None)
    overrides = params.pop("overrides", None) or {}
    if not isinstance(overrides, dict):
        raise RecipeError(
            f"parameters cell: overrides = {overrides!r}: expected a dict of recipe keys, e.g. "
            "overrides = {'warmup_steps': 0} (or write warmup_steps = 0 on its own line)."
        )
    given = {**overrides, **{k: v for k, v in params.items() if v is not None}}
    from_file = read_yaml(recipe_file) if recipe_file else {}
    _check_names(list(given), trainer={**from_file, **given}.get("trainer", Recipe.trainer))
    label = (
        f"{recipe_file} + parameters cell" if recipe_file and given else str(recipe_file or "parameters cell")
    )
    recipe = load_recipe(from_file, overrides=given, name=label)
    origin = {k: "parameters cell" if v == "override" else v for k, v in recipe.origin.items()}
    recipe = dataclasses.replace(recipe, origin_items=tuple(origin.items()))
    if "run_name" not in given:
        if recipe.nnodes > 1:
            raise RecipeError(
                f"{label}: a multi-node run needs run_name (every node must name the same folder)."
            )
        recipe = recipe.replace(run_name=fresh_name(recipe.output_root, recipe.run_name))
    return recipe


def fresh_name(output_root: str | Path, base: str) -> str:
    """<base>-<date>-<time>, with -2, -3, ... if that folder exists already (two runs in one second)."""
    name = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken, n = name, 2
    while (Path(output_root) / taken).exists():
        taken, n = f"{name}-{n}", n + 1
    return taken


def _check_names(names: list[str], trainer: str) -> None:
    """Every parameter is a recipe key: else one message naming it, with the closest key."""
    if trainer not in KINDS:
        return  # load_recipe says what is wrong with the trainer itself
    known = [*KIT_FIELDS, *trl_fields(trainer), *lora_fields()]
    for name in names:
        if name in known or name.startswith("_"):
            continue
        other = [t for t in TRAINERS if t != trainer and name in trl_fields(t)]
        if other:
            why = f"it is a key of {KINDS[other[0]].config}; this recipe trains with {KINDS[trainer].config}"
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            why = (
                f"did you mean {close[0]!r}?"
                if close
                else (f"recipe keys are the kit's (Recipe), {KINDS[trainer].config}'s and LoraConfig's")
            )
        raise RecipeError(
            f"parameters cell: {name!r} is not a recipe key ({why}). Every name in the parameters cell is a recipe "
            f"key, {' or '.join(NOTEBOOK_ONLY)}: rename or remove it."
        )
