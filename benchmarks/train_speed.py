"""Training speed, three sides on the same model, data, learning rate, global batch and epochs:

  kit        the kit's recipe (recipes/tiny_cpu.yaml), built by the kit's builders, trained by TRL's SFTTrainer
  trl        TRL's default SFTConfig (only use_cpu=True added, which TRL needs on a CPU), raw messages in
  trl_tuned  TRL configured by hand with the kit's settings: padding-free batches, assistant-only loss through
             TRL's own mechanism (assistant_only_loss=True, TRL tokenizes), fp32 on a CPU as the kit chooses,
             no activation checkpointing, and the recipe's schedule; raw messages in

Every repetition trains each side once, in rotated order (A B C, B C A, ...); ratios are taken inside a
repetition and reported as median (min-max). Each side uses --threads torch threads (default 1). Inside
each run a probe measures the held-out answer loss (assistant tokens only, the same measure for every side)
every --eval-every steps, off the clock, so "time to target loss" is read from one run: the target is the
worst final answer loss of the repetition, which every side reaches. Throughput counts the conversations'
unpadded tokens. The run checks that all sides train on the same input_ids, and kit and TRL tuned on the
same answer labels.

Part (b): notebook 03 under papermill against the same training from a plain script (`train.fit`), with
papermill's fixed cost (an empty notebook) subtracted; also interleaved.

    python benchmarks/train_speed.py [--reps 3] [--epochs 1] [--rows 0] [--part all|train|papermill] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _bench as B  # noqa: E402

from workshop_lib import chat, data  # noqa: E402
from workshop_lib.model import REPO_ROOT, build_tiny_model  # noqa: E402

RECIPE = REPO_ROOT / "recipes" / "tiny_cpu.yaml"


# ----------------------------------------------------------------------------- the probe
class AnswerLoss:
    """Held-out answer loss of a model: the eval conversations tokenized and labelled once by the kit
    (assistant tokens only), padded into one batch. Every side is scored with this same object."""

    def __init__(self, rows: list[dict], tokenizer):
        import torch

        enc = chat.encode([r["messages"] for r in rows], tokenizer)
        n = max(map(len, enc["input_ids"]))
        pad = tokenizer.pad_token_id or 0
        ids = [x + [pad] * (n - len(x)) for x in enc["input_ids"]]
        lab = [x + [chat.IGNORE] * (n - len(x)) for x in enc["labels"]]
        att = [[1] * len(x) + [0] * (n - len(x)) for x in enc["input_ids"]]
        self.ids, self.labels, self.mask = torch.tensor(ids), torch.tensor(lab), torch.tensor(att)

    def __call__(self, model) -> float:
        import torch
        import torch.nn.functional as F

        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=self.ids, attention_mask=self.mask).logits.float()
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                self.labels[:, 1:].reshape(-1),
                ignore_index=chat.IGNORE,
                reduction="mean",
            )
        model.train(was_training)
        return float(loss)


def probe_callback(score: AnswerLoss, every: int):
    """A TrainerCallback that scores the model every `every` steps and at the end; its own time is kept
    apart (eval_s) so the training clock excludes it."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self):
            self.t0, self.eval_s, self.points = time.perf_counter(), 0.0, []

        def _probe(self, step: int, model) -> None:
            t = time.perf_counter()
            train_s = t - self.t0 - self.eval_s
            self.points.append({"step": step, "train_s": train_s, "answer_loss": score(model)})
            self.eval_s += time.perf_counter() - t

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0:
                self._probe(state.global_step, model)

        def on_train_end(self, args, state, control, model=None, **kw):
            if not self.points or self.points[-1]["step"] != state.global_step:
                self._probe(state.global_step, model)

    return Probe()


# ----------------------------------------------------------------------------- the three sides
def kit_recipe(out: Path, args, name: str):
    from workshop_lib.recipe import load_recipe

    overrides = {
        "run_name": name,
        "output_root": str(out),
        "train_file": str(args.train_file),
        "eval_file": str(args.eval_file),
        "num_train_epochs": args.epochs,
        "learning_rate": args.lr,
        "per_device_train_batch_size": args.batch,
        "n_generate": 0,
        "eval_strategy": "no",  # the probe scores every side the same way
        "save_strategy": "no",
    }
    return load_recipe(RECIPE, overrides=overrides)


def kit_trainer(recipe, callbacks: list):
    """The trainer the kit's worker builds for a recipe (workshop_lib.worker.train), with the probe added."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from workshop_lib import build, runfolder

    recipe = runfolder.prepare(recipe)  # the run folder the kit's callbacks write to
    tok, _ = build.tokenizer(recipe)
    train_ds, _, _ = build.datasets(recipe, tok)
    model = build.model(recipe, tok)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**build.trl_args(recipe)[0]),
        train_dataset=train_ds,
        processing_class=tok,
        peft_config=build.lora_config(recipe, model),
        callbacks=[*build.callbacks(recipe), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def trl_trainer(out: Path, args, tuned: bool, callbacks: list):
    """SFTTrainer as a user without the kit writes it: raw messages in, TRL tokenizes."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir = str(build_tiny_model())
    rows = [{"messages": r["messages"]} for r in data.read_jsonl(args.train_file)]
    common = dict(
        output_dir=str(out),
        use_cpu=True,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    if tuned:
        # the kit's settings, written by hand: its recipe's schedule and logging, padding-free batches
        # (no max_length: TRL refuses one without packing), loss on the answers by TRL's own masks, fp32
        kit = kit_recipe(out, args, "tuned-settings")
        for key in ("lr_scheduler_type", "warmup_steps", "weight_decay", "logging_steps", "seed"):
            if key in kit.trl:
                common[key] = kit.trl[key]
        common.update(
            padding_free=True,
            max_length=None,
            assistant_only_loss=True,
            bf16=False,
            activation_checkpointing=False,
        )
    return SFTTrainer(
        model=model_dir,
        args=SFTConfig(**common),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=callbacks,
    )


def run_side(side: str, out: Path, args, score: AnswerLoss, rep: int) -> dict[str, Any]:
    import transformers

    transformers.logging.set_verbosity_error()
    probe = probe_callback(score, args.eval_every)
    name = f"{side}-{rep}"
    with redirect_stdout(io.StringIO()):
        if side == "kit":
            recipe = kit_recipe(out, args, name)
            trainer = kit_trainer(recipe, [probe])
        else:
            trainer = trl_trainer(out / name, args, side == "trl_tuned", [probe])
        t = time.perf_counter()
        probe.t0 = t
        trainer.train()
        train_s = time.perf_counter() - t - probe.eval_s
    ds = trainer.train_dataset
    tokens = sum(len(x) for x in ds["input_ids"]) * args.epochs
    trained = (
        sum(sum(1 for t in lab if t != chat.IGNORE) for lab in ds["labels"])
        if "labels" in ds.column_names
        else 0
    )
    return {
        "train_s": train_s,
        "tokens_per_s": tokens / train_s,
        "tokens": tokens,
        "label_tokens": trained,
        "steps": trainer.state.global_step,
        "answer_loss": probe.points[-1]["answer_loss"],
        "points": probe.points,
        "_dataset": ds if rep == 0 else None,
    }


def time_to(points: list[dict], target: float) -> float | None:
    """Training seconds until the probed answer loss first reached the target (None: never)."""
    return next((p["train_s"] for p in points if p["answer_loss"] <= target), None)


def training(args, out: Path) -> dict[str, Any]:
    from datasets import disable_progress_bars
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()

    tok = AutoTokenizer.from_pretrained(build_tiny_model())
    score = AnswerLoss(data.read_jsonl(args.eval_file), tok)
    sides = {s: (lambda r, s=s: run_side(s, out, args, score, r)) for s in ("kit", "trl", "trl_tuned")}
    reps = B.interleave(sides, args.reps)
    # the same work on every side: the same conversations, tokens and (kit vs TRL tuned) answer labels
    first = reps[0]
    kit_ds, tuned_ds, trl_ds = (first[s].pop("_dataset") for s in ("kit", "trl_tuned", "trl"))
    same_ids = kit_ds["input_ids"] == tuned_ds["input_ids"] == trl_ds["input_ids"]
    same_labels = kit_ds["labels"] == tuned_ds["labels"]
    for row in reps:
        for res in row.values():
            res.pop("_dataset", None)
        # the target every side reaches in this repetition: the worst final answer loss
        target = max(res["answer_loss"] for res in row.values())
        for res in row.values():
            res["target"] = target
            res["time_to_target_s"] = time_to(res["points"], target)
    return {"reps": reps, "same_input_ids": same_ids, "same_labels_kit_vs_tuned": same_labels}


# ----------------------------------------------------------------------------- papermill
def papermill_overhead(args, out: Path) -> dict[str, Any]:
    """(b): the same short training from a script and from notebook 03 under papermill, and an empty
    notebook (papermill's fixed cost: its start-up and a kernel), interleaved."""
    import nbformat

    params = {
        "max_steps": args.pm_steps,
        "n_generate": 0,
        "eval_strategy": "no",
        "save_strategy": "no",
        "nproc_per_node": 2,
    }
    empty = out / "empty.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, empty)
    pm = [sys.executable, "-m", "papermill", "--cwd", str(REPO_ROOT)]

    def script(rep: int) -> dict:
        code = (
            "from workshop_lib.recipe import load_recipe\nfrom workshop_lib.train import fit\n"
            f"r = load_recipe('recipes/tiny_cpu.yaml', overrides=dict(run_name='script-{rep}', "
            f"output_root={str(out)!r}, **{params!r}))\n"
            "fit(r)\n"
        )
        return _timed([sys.executable, "-c", code])

    def notebook(rep: int) -> dict:
        cmd = [*pm, str(REPO_ROOT / "notebooks" / "03_train.ipynb"), str(out / f"03-{rep}.ipynb")]
        cmd += [
            "-p",
            "recipe_file",
            str(RECIPE),
            "-p",
            "run_name",
            f"notebook-{rep}",
            "-p",
            "output_root",
            str(out),
        ]
        # keys the notebook declares as parameters go as -p, the others in its `overrides` dict
        declared = ("max_steps", "nproc_per_node")
        for k in declared:
            cmd += ["-p", k, str(params[k])]
        cmd += ["-y", json.dumps({"overrides": {k: v for k, v in params.items() if k not in declared}})]
        return _timed(cmd)

    def fixed(rep: int) -> dict:
        return _timed([*pm, str(empty), str(out / f"empty-{rep}.out.ipynb")])

    reps = B.interleave({"script": script, "notebook": notebook, "papermill_fixed": fixed}, args.reps)
    for row in reps:
        row["notebook"]["minus_fixed_s"] = row["notebook"]["s"] - row["papermill_fixed"]["s"]
    return {"reps": reps, "params": params}


def _timed(cmd: list[str]) -> dict:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    s = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"benchmark command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return {"s": s}


# ----------------------------------------------------------------------------- report
def report(args, res: dict[str, Any]) -> None:
    print(f"\n{B.machine()}")
    if "training" in res:
        tr = res["training"]
        reps = tr["reps"]
        k = reps[0]["kit"]
        print(
            f"training: {args.train_file.name} ({args.rows or 'all'} rows), {k['tokens']:,.0f} tokens, "
            f"{k['steps']} steps of {args.batch}, lr {args.lr}, {args.epochs} epoch(s), probe every "
            f"{args.eval_every} steps; same input_ids on all sides: {tr['same_input_ids']}; "
            f"same answer labels kit vs TRL tuned: {tr['same_labels_kit_vs_tuned']}"
        )
        for side in ("kit", "trl", "trl_tuned"):
            print(
                f"  {side:<10} {B.fmt_value(B.column(reps, side, 'tokens_per_s'), unit=' tokens/s')}  "
                f"final answer loss {B.fmt_value(B.column(reps, side, 'answer_loss'), '.4f')}  "
                f"to target {B.fmt_value(B.column(reps, side, 'time_to_target_s'), '.1f', ' s')}"
            )
        for other, label in (("trl", "TRL defaults"), ("trl_tuned", "TRL tuned")):
            print(
                f"  kit vs {label:<12} tokens/s {B.fmt_ratio(B.ratios(reps, 'kit', other, 'tokens_per_s'))}"
                f"   time to target loss {B.fmt_ratio(B.ratios(reps, other, 'kit', 'time_to_target_s'))} faster"
                f"   end to end (data, model, train) {B.fmt_ratio(B.ratios(reps, other, 'kit', 'wall_s'))} faster"
            )
    if "papermill" in res:
        reps = res["papermill"]["reps"]
        nb_ratio = [row["notebook"]["minus_fixed_s"] / row["script"]["s"] for row in reps]
        print(
            f"papermill ({res['papermill']['params']['max_steps']} steps, 2 processes): notebook "
            f"{B.fmt_value(B.column(reps, 'notebook', 's'), '.1f', ' s')}, script "
            f"{B.fmt_value(B.column(reps, 'script', 's'), '.1f', ' s')}, fixed cost "
            f"{B.fmt_value(B.column(reps, 'papermill_fixed', 's'), '.1f', ' s')}; "
            f"(notebook - fixed) / script {B.fmt_ratio(nb_ratio)}"
        )


def subset(path: Path, rows: int, out: Path) -> Path:
    """The first `rows` rows of a JSONL file (0: the whole file)."""
    if not rows:
        return path
    dst = out / f"{path.stem}-{rows}.jsonl"
    with open(path) as src, open(dst, "w") as f:
        for i, line in enumerate(src):
            if i >= rows:
                break
            f.write(line)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each side")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rows", type=int, default=0, help="train on the first N rows (0: all)")
    ap.add_argument("--eval-every", type=int, default=0, help="probe every N steps (0: 10 points per run)")
    ap.add_argument("--pm-steps", type=int, default=120, help="training steps of the papermill comparison")
    ap.add_argument("--part", choices=("all", "train", "papermill"), default="all")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the training sides (0: torch's default). One by default: on a shared machine "
        "the threads of a process that does not get all its cores wait for each other at every step (50x "
        "slower seen here at load 24 on 2 cores), which would swamp the comparison",
    )
    ap.add_argument("--json", type=Path, help="also write all measurements here")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        args.train_file = subset(REPO_ROOT / "data" / "synthetic" / "train.jsonl", args.rows, out)
        args.eval_file = REPO_ROOT / "data" / "synthetic" / "eval.jsonl"
        n_rows = sum(1 for _ in open(args.train_file))
        steps = math.ceil(math.ceil(n_rows / args.batch) * args.epochs)
        args.eval_every = args.eval_every or max(1, steps // 10)
        if args.part in ("all", "train"):
            print(
                f"training: {args.reps} interleaved repetitions of kit, trl, trl_tuned ({steps} steps each)"
            )
            res["training"] = training(args, out)
        if args.part in ("all", "papermill"):
            print(f"papermill: {args.reps} interleaved repetitions of script, notebook, empty notebook")
            res["papermill"] = papermill_overhead(args, out)
    report(args, res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
