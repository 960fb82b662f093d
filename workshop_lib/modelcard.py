"""The model card: <run>/final/README.md, the page the Hugging Face hub shows for a pushed model or adapter.

It is written from the run folder alone (recipe.yaml, result.json, metrics.jsonl and the data files the
recipe names), so it can be rewritten at any time and says the same for the same folder: `train.record`
writes it when a run finishes, `train.record_scores` again once held-out scores are in result.json,
`push` before uploading, and `python -m workshop_lib model-card RUN` by hand. The YAML block at its top is
the metadata the hub reads (base_model, library_name, tags, license, datasets).
"""

from __future__ import annotations

import hashlib
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from . import plots, runs
from .trainers import KINDS

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name: a model or dataset on the hub
CARD_FILE, PLOT_FILE = "README.md", "loss_curves.png"


def kit_version() -> str:
    """The installed version of this kit (the `name` in pyproject.toml)."""
    try:
        return metadata.version("workshop-lib")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def hub_id(source: Any) -> str | None:
    """The hub id a model or data source names ('org/name', a ':split' dropped), or None for a local path."""
    text = str(source or "")
    if text.startswith(("/", ".", "~")) or Path(text).exists():
        return None
    text = text.split(":", 1)[0]
    return text if HUB_ID.match(text) else None


def sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def count_rows(path: Path) -> int:
    """Records in a data file or folder as the kit reads them (JSONL: its non-blank lines)."""
    if path.is_file() and path.suffix == ".jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    from .data.read import read_source

    return len(read_source(str(path)))


def data_sources(role: str, spec: Any) -> list[dict[str, Any]]:
    """One row per source a recipe's train_file/eval_file names (a path, a hub id, or a mixture list):
    local files with their row count and sha256, hub datasets marked as such."""
    if spec in (None, ""):
        return []
    entries = spec if isinstance(spec, list) else [{"path": spec}]
    rows = []
    for e in entries:
        e = e if isinstance(e, dict) else {"path": e}
        row = {"role": role, "path": str(e["path"]), **{k: v for k, v in e.items() if k != "path"}}
        path = Path(str(e["path"])).expanduser()
        if path.exists():
            try:
                row.update(rows=count_rows(path), sha256=sha256(path))
            except Exception as err:  # noqa: BLE001 (a card says what it could not read; training is done)
                row.update(rows=None, sha256=None, note=f"unreadable: {type(err).__name__}: {err}")
        elif hub_id(e["path"]):
            row.update(rows=None, sha256=None, note="hub dataset", hub_id=hub_id(e["path"]))
        else:
            row.update(rows=None, sha256=None, note="not found when the card was written")
        rows.append(row)
    return rows


def numeric_metrics(result: dict[str, Any]) -> dict[str, float | int]:
    """Every number in result.json (losses, exact match, steps, tokens, runtimes; whatever the trainer adds)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def loss_plot(run_dir: Path, out: Path) -> Path | None:
    """The run's train and eval loss as a PNG next to the card (None when nothing was logged)."""
    run = runs.load_run(run_dir)
    if not run.series("loss")[0] and not run.series("eval_loss")[0]:
        return None
    fig = plots.plot_runs([run], metrics=["loss", "eval_loss"], title=run.name)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    tmp.replace(out)
    plots.close(fig)  # in a notebook kernel a figure left open would be shown under the cell
    return out


def trainer_class(trainer: str) -> str:
    """TRL's trainer class of a recipe's `trainer` (the name as given for one the kit does not know)."""
    return KINDS[trainer].trainer if trainer in KINDS else trainer


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _usage(repo: str, adapter: bool) -> str:
    if adapter:
        load = (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")  # the base model, then this adapter\n'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n'
        )
    return (
        f"```python\n{load}"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # with the chat template it was trained with\n'
        'messages = [{"role": "user", "content": "Hello!"}]\n'
        'ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")\n'
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))\n```"
    )


METHODS = {"full": "full fine-tuning", "lora": "LoRA adapter", "qlora": "QLoRA adapter (4-bit base)"}


def _facts(recipe: dict, result: dict, base_text: str) -> list[list[Any]]:
    """The card's first table: what was trained, how, how long, with which kit."""
    method, trainer = recipe.get("method", "full"), recipe.get("trainer", "sft")
    lora = ", ".join(
        f"{k}={recipe[k]}" for k in ("r", "lora_alpha", "lora_dropout", "target_modules") if k in recipe
    )
    tries = result.get("tries", "?")
    return [
        ["base model", base_text],
        ["method", METHODS.get(method, method) + (f" ({lora})" if lora else "")],
        ["trainer", f"{trainer} (TRL `{trainer_class(trainer)}`)"],
        ["steps", f"{result.get('global_step', '?')} of {result.get('max_steps', '?')}"],
        [
            "processes",
            f"{result.get('world_size', '?')} on {result.get('device', '?')}, "
            + ("1 try" if tries == 1 else f"{tries} tries (requeued)"),
        ],
        ["kit", f"workshop-lib {kit_version()}"],
    ]


def _data_section(data: list[dict]) -> str:
    """The data table (source, rows, sha256) and, for a mixture, each source's split/weight/max_rows."""
    if not data:
        return "No data files recorded."
    rows = [
        [
            d["role"],
            f"`{d['path']}`",
            "-" if d["rows"] is None else d["rows"],
            d["sha256"] or d.get("note", ""),
        ]
        for d in data
    ]
    text = _table(["role", "source", "rows", "sha256"], rows)
    settings = [
        f"`{d['path']}` " + ", ".join(f"{k}={d[k]}" for k in ("split", "weight", "max_rows") if k in d)
        for d in data
        if set(d) & {"split", "weight", "max_rows"}
    ]
    return text + ("\n\nMixture settings: " + "; ".join(settings) if settings else "")


def render(run_dir: Path, repo_id: str | None = None, license: str | None = None) -> str:
    """The card's text (YAML metadata block + Markdown) for a run folder with a final/ model or adapter."""
    from huggingface_hub import ModelCardData

    final = run_dir / "final"
    recipe, result = runs.read_params(run_dir), runs.read_result(run_dir)
    trainer, method, model = (
        recipe.get("trainer", "sft"),
        recipe.get("method", "full"),
        recipe.get("model", "?"),
    )
    adapter = (final / "adapter_config.json").exists()  # LoRA/QLoRA: final/ holds the adapter only
    base = hub_id(model)
    data = data_sources("train", recipe.get("train_file")) + data_sources("eval", recipe.get("eval_file"))
    meta = ModelCardData(
        base_model=base,
        library_name="peft" if adapter else "transformers",
        license=license or "unknown",
        datasets=sorted({d["hub_id"] for d in data if d.get("hub_id")}) or None,
        tags=["trl", trainer, *([method] if method != "full" else []), "workshop-kit"],
        model_name=run_dir.name,
        pipeline_tag="text-generation",
    )
    base_text = (
        f"[{base}](https://huggingface.co/{base})"
        if base
        else f"`{model}`" + (" (the kit's offline tiny model)" if model == "tiny" else " (a local folder)")
    )
    metrics = numeric_metrics(result)
    plot = loss_plot(run_dir, final / PLOT_FILE)
    sections = [
        f"# {run_dir.name}",
        f"A {METHODS.get(method, method)} of {base_text} with TRL's `{trainer_class(trainer)}`, "
        f"made with the workshop kit (workshop-lib {kit_version()}). Everything below comes from the run folder.",
        _table(["", ""], _facts(recipe, result, base_text)),
        "## Use it",
        _usage(repo_id or str(final), adapter),
        "## Metrics (result.json)",
        _table(["metric", "value"], [[k, v] for k, v in metrics.items()])
        if metrics
        else "No result.json yet.",
        "## Loss curves",
        f"![loss curves]({PLOT_FILE})" if plot else "No losses were logged.",
        "## Data",
        _data_section(data),
        "## Recipe (recipe.yaml, resolved)",
        "```yaml\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip() + "\n```",
    ]
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def write(run_dir: str | Path, repo_id: str | None = None, license: str | None = None) -> Path:
    """Write (or rewrite) <run_dir>/final/README.md and final/loss_curves.png; returns the card's path."""
    from huggingface_hub import ModelCard

    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not final.is_dir():
        raise FileNotFoundError(
            f"{final}: no final model, so no model card. The run has not finished (still running, preempted "
            "or killed): resume it (resume: true) and the card is written when it finishes."
        )
    path = final / CARD_FILE
    ModelCard(render(run_dir, repo_id, license)).save(path)
    return path


def _main(args) -> int:
    try:
        print(write(args.run, license=args.license))
    except FileNotFoundError as e:
        print(f"model-card: {e}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "model-card",
        help="(re)write a finished run's model card, final/README.md",
        description="Write <run>/final/README.md (hub metadata, metrics, data hashes, recipe, loss plot).",
    )
    p.add_argument("run", help="run folder (runs/<name>)")
    p.add_argument("--license", help="license id for the hub metadata (default: unknown)")
    p.set_defaults(func=_main)
