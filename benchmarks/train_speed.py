"""Benchmark, in one run on the bundled data and the tiny model:

(a) the kit's default recipe against TRL's default SFTConfig (only use_cpu=True added, which TRL needs
    on a CPU): tokens/s of each and the held-out loss on the answers after the same epochs;
(b) notebook 03 run by papermill against the same train function called from a plain script: wall
    time ratio, minus papermill's fixed cost (kernel start, measured on an empty notebook).

    python benchmarks/train_speed.py [--epochs 1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workshop_lib import chat, data  # noqa: E402
from workshop_lib import recipe as R  # noqa: E402
from workshop_lib import train as T  # noqa: E402
from workshop_lib.model import REPO_ROOT, build_tiny_model  # noqa: E402

TRAIN = REPO_ROOT / "data" / "synthetic" / "train.jsonl"
EVAL = REPO_ROOT / "data" / "synthetic" / "eval.jsonl"


def answer_loss(model_dir: Path) -> float:
    """Mean loss on the held-out answers (assistant tokens only), the same measure for both runs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tiny_model())
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = data.read_jsonl(EVAL)
    enc = chat.encode([r["messages"] for r in rows], tok)
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(enc["input_ids"], enc["labels"], strict=True):
            lab = torch.tensor([labels])
            k = int((lab[:, 1:] != -100).sum())
            total += model(input_ids=torch.tensor([ids]), labels=lab).loss.item() * k
            n += k
    return total / n


def trl_default(out: Path, epochs: float, lr: float, batch: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(build_tiny_model())
    ds = Dataset.from_list(data.read_jsonl(TRAIN))
    args = SFTConfig(
        output_dir=str(out),
        use_cpu=True,
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=50,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(build_tiny_model()),
        args=args,
        train_dataset=ds,
        processing_class=tok,
    )
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    trainer.save_model(str(out / "final"))
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * epochs
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "answer_loss": answer_loss(out / "final")}


def kit(out: Path, epochs: float, lr: float, batch: int, nproc: int, max_steps: int = -1) -> dict:
    overrides = {
        "run_name": f"kit-{nproc}-{max_steps}",
        "output_root": str(out),
        "num_train_epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": lr,
        "per_device_train_batch_size": batch // nproc,
        "nproc_per_node": nproc,
        "n_generate": 0,
        "eval_strategy": "no",
        "save_strategy": "no",
    }
    recipe = T.resolve_paths(R.load_recipe(REPO_ROOT / "recipes" / "tiny_cpu.yaml", overrides=overrides))
    import io
    from contextlib import redirect_stdout

    with redirect_stdout(io.StringIO()):
        res = T.fit(recipe, interactive=False)
    lengths = [len(x) for x in T.load_datasets(recipe, T.load_tokenizer(recipe))[0]["input_ids"]]
    tokens = sum(lengths) * epochs if max_steps < 0 else sum(lengths) * max_steps * batch / len(lengths)
    return {
        "seconds": res["train_runtime_s"],
        "tokens_per_s": tokens / res["train_runtime_s"],
        "answer_loss": answer_loss(recipe.run_dir / "final"),
    }


def papermill_overhead(out: Path) -> dict:
    """(b): the same short training from a script and from notebook 03 under papermill."""
    params = {
        "max_steps": 250,
        "n_generate": 0,
        "eval_strategy": "no",
        "save_strategy": "no",
        "nproc_per_node": 2,
    }
    script = (
        f"import json; from workshop_lib import recipe as R, train as T; "
        f"r = T.resolve_paths(R.load_recipe('recipes/tiny_cpu.yaml', overrides=dict(run_name='script', "
        f"output_root={str(out)!r}, **{params!r}))); T.fit(r, interactive=False)"
    )
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, capture_output=True)
    t_script = time.perf_counter() - t
    empty = out / "empty.ipynb"
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, empty)
    pm = [sys.executable, "-m", "papermill", "--cwd", str(REPO_ROOT)]
    t = time.perf_counter()
    subprocess.run([*pm, str(empty), str(out / "empty.out.ipynb")], check=True, capture_output=True)
    t_fixed = time.perf_counter() - t
    cmd = [
        *pm,
        str(REPO_ROOT / "notebooks" / "03_train.ipynb"),
        str(out / "03.ipynb"),
        "-f",
        str(REPO_ROOT / "recipes" / "tiny_cpu.yaml"),
        "-p",
        "run_name",
        "notebook",
        "-p",
        "output_root",
        str(out),
    ]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    t_nb = time.perf_counter() - t
    return {
        "script_s": t_script,
        "notebook_s": t_nb,
        "papermill_fixed_s": t_fixed,
        "ratio": (t_nb - t_fixed) / t_script,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        results["trl_default"] = trl_default(out / "trl", args.epochs, args.lr, args.batch)
        results["kit_1proc"] = kit(out, args.epochs, args.lr, args.batch, 1)
        results["kit_recipe_2proc"] = kit(out, args.epochs, args.lr, args.batch, 2)
        # time to equal loss: the kit's wall time until its held-out answer loss is TRL default's final one
        steps_per_epoch = -(-4000 // args.batch)
        for frac in (0.125, 0.25, 0.5):
            r = kit(out, args.epochs, args.lr, args.batch, 1, max_steps=max(1, int(steps_per_epoch * frac)))
            results[f"kit_{frac}_epoch"] = r
            if r["answer_loss"] <= results["trl_default"]["answer_loss"]:
                results["time_to_equal_loss_ratio"] = results["trl_default"]["seconds"] / r["seconds"]
                results["equal_loss_at_epoch"] = frac
                break
        results["papermill"] = papermill_overhead(out)
    base = results["trl_default"]["tokens_per_s"]
    print(
        f"same data, lr {args.lr}, global batch {args.batch}, {args.epochs} epoch(s), {os.cpu_count()} cores"
    )
    for name in ("trl_default", "kit_1proc", "kit_recipe_2proc"):
        r = results[name]
        print(
            f"{name:18} {r['tokens_per_s']:9,.0f} tokens/s  ({r['tokens_per_s'] / base:4.2f}x)  "
            f"held-out answer loss {r['answer_loss']:.4f}  train {r['seconds']:.1f} s"
        )
    if "equal_loss_at_epoch" in results:
        r = results[f"kit_{results['equal_loss_at_epoch']}_epoch"]
        print(
            f"kit reaches TRL default's final answer loss after {results['equal_loss_at_epoch']} epoch "
            f"({r['answer_loss']:.4f} in {r['seconds']:.1f} s): {results['time_to_equal_loss_ratio']:.2f}x "
            "faster to equal loss (goal >= 1.8x)"
        )
    p = results["papermill"]
    print(
        f"papermill notebook {p['notebook_s']:.1f} s vs script {p['script_s']:.1f} s; papermill's fixed cost "
        f"(empty notebook) {p['papermill_fixed_s']:.1f} s; ratio without it {p['ratio']:.2f}x (goal <= 1.10x)"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
