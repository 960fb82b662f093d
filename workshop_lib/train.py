"""Train: recipe -> tokenizer, datasets, model, SFTConfig (+ LoRA) -> TRL SFTTrainer -> run folder.

`prepare_run(recipe)` runs once in the notebook (creates or resumes the run folder); `train(flat
recipe)` runs on every worker, in-process or under the launcher; `fit(recipe)` does both and shows
progress from the live metrics file, so the notebook sees the same thing whether training runs
here or in forked workers.

A run folder `runs/<name>/` holds: recipe.yaml (resolved), metrics.jsonl (live, one line per
log step), checkpoint-N/, final/ (model or adapter + tokenizer), trainer_state.json,
result.json, logs/rank*.log, and the executed notebook(s). It is never overwritten: the same
name again needs resume=True and continues from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .recipe import Recipe, RecipeError, load_recipe

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STOP_FILE = "STOP"  # written by the SLURM job (or by hand) to make training checkpoint and stop
PREEMPTED_FILE = "PREEMPTED"  # written by training when it stopped early with a checkpoint: resume it


# ----------------------------------------------------------------------------- run folder
def _abs(path: str | None, root: Path) -> str | None:
    if not path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p))


def resolve_paths(recipe: Recipe, root: str | Path | None = None) -> Recipe:
    """Make file paths absolute (relative ones are relative to the repository), so workers agree."""
    from .model import REPO_ROOT

    root = Path(root) if root else REPO_ROOT
    for key in ("train_file", "eval_file", "output_root"):
        recipe.kit[key] = _abs(recipe.kit[key], root)
    model = recipe.kit["model"]
    if model != "tiny" and (root / model).exists() and not Path(model).is_absolute():
        recipe.kit["model"] = str(root / model)
    return recipe


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-N folder (one with trainer_state.json), or None."""
    run_dir = Path(run_dir)
    done = [
        p
        for p in run_dir.glob("checkpoint-*")
        if (p / "trainer_state.json").exists() and p.name[11:].isdigit()
    ]
    return max(done, key=lambda p: int(p.name[11:])) if done else None


def prepare_run(recipe: Recipe) -> Path:
    """Create the run folder, or check it may be resumed. Never overwrites a run.

    A new run writes recipe.yaml. An existing one needs resume=True; its metrics after the last
    checkpoint (logged by a run that was then killed) are dropped, so no step appears twice.
    """
    from .launch import this_node_rank

    run_dir = recipe.run_dir
    if this_node_rank(recipe.kit["nnodes"], recipe.kit["node_rank"]) != 0:
        return run_dir  # node 0 creates or checks the folder (shared file system); training waits for it
    if (run_dir / "recipe.yaml").exists():
        if not recipe.kit["resume"]:
            ckpt = last_checkpoint(run_dir)
            state = f"its last checkpoint is {ckpt.name}" if ckpt else "it has no checkpoint yet"
            if (run_dir / "result.json").exists():
                state = "it finished"
            raise RecipeError(
                f"run folder {run_dir} exists ({state}). Nothing was changed. Pass resume=True (papermill: "
                f"-p resume True) to continue it, or choose another run_name."
            )
        ckpt = last_checkpoint(run_dir)
        _trim_metrics(run_dir / "metrics.jsonl", _ckpt_step(ckpt) if ckpt else 0)
        for marker in (STOP_FILE, PREEMPTED_FILE):
            (run_dir / marker).unlink(missing_ok=True)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    recipe.save(run_dir / "recipe.yaml")
    return run_dir


def _ckpt_step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def _trim_metrics(path: Path, keep_until: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("step", 0) <= keep_until:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in kept))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- callbacks
def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _Callbacks:
    """Built lazily so that importing this module stays light (no transformers import)."""

    @staticmethod
    def metrics(path: Path):
        base = _trainer_callback_base()

        class MetricsJSONL(base):
            """Append one JSON line per log step on rank 0: loss, eval loss, lr, grad norm, tokens/s, memory."""

            def __init__(self):
                self.t0 = self.tokens0 = None

            def on_train_begin(self, args, state, control, **kw):
                self.t0, self.tokens0 = time.time(), None

            def on_log(self, args, state, control, logs=None, **kw):
                if not state.is_world_process_zero or not logs:
                    return
                import torch

                now = time.time()
                rec = {
                    "step": state.global_step,
                    "epoch": round(state.epoch or 0, 4),
                    "max_steps": state.max_steps,
                    "time": now,
                }
                rec.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
                tokens = logs.get("num_tokens")
                if tokens is not None:
                    if self.tokens0 is not None and now > self.t0:
                        # TRL's num_tokens already counts the tokens of all ranks
                        rec["tokens_per_s"] = (tokens - self.tokens0) / (now - self.t0)
                    self.t0, self.tokens0 = now, tokens
                if torch.cuda.is_available():
                    rec["memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
                else:
                    import resource

                    rec["memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                with open(path, "a") as f:
                    f.write(json.dumps(rec) + "\n")

        return MetricsJSONL()

    @staticmethod
    def preemption(stop_file: Path):
        base = _trainer_callback_base()

        class StopOnSignal(base):
            """Save a checkpoint at the next step and stop cleanly when asked: by SIGUSR1/SIGTERM to this
            process, or by a STOP file in the run folder (what the SLURM job writes when it gets its
            time-limit warning, since the signal reaches the batch shell, not the kernel's workers).
            The job then requeues itself and resumes from that checkpoint."""

            def __init__(self):
                self.flag = threading.Event()
                if threading.current_thread() is threading.main_thread():
                    for s in PREEMPT_SIGNALS:
                        signal.signal(s, lambda *_: self.flag.set())

            def on_step_end(self, args, state, control, **kw):
                import torch.distributed as dist

                stop = self.flag.is_set() or stop_file.exists()
                if dist.is_available() and dist.is_initialized():
                    import torch

                    t = torch.tensor(
                        [1.0 if stop else 0.0], device="cuda" if torch.cuda.is_available() else "cpu"
                    )
                    dist.all_reduce(t)  # all ranks stop at the same step, even if one got the signal
                    stop = t.item() > 0
                if stop:
                    control.should_save = True
                    control.should_training_stop = True
                    state.preempted = True
                return control

        return StopOnSignal()


# ----------------------------------------------------------------------------- build
def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(recipe: Recipe):
    """The model's tokenizer with the recipe's template; refuses one that fails the template check."""
    from transformers import AutoTokenizer

    from . import chat
    from .model import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(recipe.kit["model"]))
    if recipe.kit["template"]:
        chat.apply_template(tok, recipe.kit["template"])
    if tok.pad_token is None:
        chat.fix_template(tok)
    report = chat.check_template(tok)
    if not report.ok:
        raise chat.TemplateError(
            f"the chat template of {recipe.kit['model']} is not safe to train with:\n{report}\n"
            "Fix: set template: chatml (or llama3, mistral, gemma, zephyr) in the recipe, or repair it with "
            "chat.fix_template (notebook 02)."
        )
    return tok


def load_datasets(recipe: Recipe, tokenizer) -> tuple[Any, Any, list[dict]]:
    """Validated conversations -> tokenized + labelled Datasets (and the raw held-out rows)."""
    from datasets import Dataset

    from . import chat, data

    max_length = recipe.sft.get("max_length")
    cut = max_length if (recipe.sft.get("padding_free") and not recipe.sft.get("packing")) else None

    def prepare(path: str) -> tuple[Any, list[dict]]:
        rows, _ = data.load_conversations(path)
        ds = chat.tokenize_dataset(
            Dataset.from_list(rows), tokenizer, assistant_only=recipe.sft.get("assistant_only_loss", True)
        )
        if (
            cut
        ):  # padding-free batches are not truncated by TRL: cut here, keep rows that still have an answer
            ds = ds.map(lambda r: {"input_ids": r["input_ids"][:cut], "labels": r["labels"][:cut]})
            ds = ds.filter(lambda r: any(t != chat.IGNORE for t in r["labels"]))
        return ds, rows

    train_ds, _ = prepare(recipe.kit["train_file"])
    eval_ds, eval_rows = prepare(recipe.kit["eval_file"]) if recipe.kit["eval_file"] else (None, [])
    return train_ds, eval_ds, eval_rows


def sft_config(recipe: Recipe, run_dir: Path, interactive: bool = False):
    """SFTConfig from the recipe plus what the kit decides: device, precision, distribution, logging."""
    from trl import SFTConfig

    args = dict(recipe.sft)
    # the kit tokenizes and labels the data itself (chat.encode, the same labels notebook 02 shows);
    # TRL then uses those labels as they are
    args["assistant_only_loss"] = False
    gpu = device_kind() == "cuda"
    if "activation_checkpointing" not in args and "gradient_checkpointing" not in args:
        args["activation_checkpointing"] = gpu  # memory for speed on GPUs; on CPU it only costs time
    if not gpu:
        args["use_cpu"] = True  # without it, CPU workers form a group but each trains everything un-wrapped
        args["bf16"] = bool(args.get("bf16", False))  # TRL turns bf16 on by default; on a CPU only on request
    else:
        args.setdefault("bf16", True)
    if args.get("padding_free") and not args.get("packing"):
        args["max_length"] = None  # cut by the kit during tokenization (TRL refuses a max_length here)
    dist = recipe.kit["distributed"]
    if recipe.world_size > 1 or dist in ("zero2", "zero3"):
        if dist == "fsdp":
            args.setdefault("fsdp", "full_shard auto_wrap")
            args.setdefault(
                "fsdp_config",
                {
                    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                    "use_orig_params": True,
                    "sync_module_states": True,
                    "cpu_ram_efficient_loading": False,
                },
            )
        elif dist in ("zero2", "zero3"):
            stage = int(dist[-1])
            zero: dict[str, Any] = {"stage": stage, "overlap_comm": gpu, "contiguous_gradients": True}
            if stage == 3:
                zero.update(stage3_gather_16bit_weights_on_model_save=True)
            args.setdefault(
                "deepspeed",
                {
                    "zero_optimization": zero,
                    "bf16": {"enabled": "auto"},
                    "train_micro_batch_size_per_gpu": "auto",
                    "gradient_accumulation_steps": "auto",
                    "train_batch_size": "auto",
                    "gradient_clipping": "auto",
                },
            )
    if recipe.kit["method"] == "full":
        args.setdefault(
            "ddp_find_unused_parameters", False
        )  # every parameter gets a gradient: skip the search
    args.update(
        output_dir=str(run_dir),
        ddp_timeout=recipe.kit["collective_timeout_s"],
        disable_tqdm=not interactive,
        log_level="warning",
        dataloader_num_workers=0,
        save_only_model=False,
    )
    if args.get("eval_strategy", "no") != "no" and not recipe.kit["eval_file"]:
        args["eval_strategy"] = "no"
    return SFTConfig(**args)


def peft_config(recipe: Recipe, tokenizer_grew: bool):
    if recipe.kit["method"] == "full":
        return None
    from peft import LoraConfig

    lora = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", **recipe.lora}
    if tokenizer_grew:  # new special tokens need trained embeddings
        lora.setdefault("modules_to_save", ["embed_tokens", "lm_head"])
    return LoraConfig(task_type="CAUSAL_LM", **lora)


def load_model(recipe: Recipe, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from .model import resolve_model

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if device_kind() == "cuda" else torch.float32}
    if recipe.kit["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    model = AutoModelForCausalLM.from_pretrained(resolve_model(recipe.kit["model"]), **kwargs)
    grew = len(tokenizer) > model.get_input_embeddings().weight.shape[0]
    if grew:
        model.resize_token_embeddings(len(tokenizer))
    eot = tokenizer.convert_tokens_to_ids(_eot(tokenizer))
    model.generation_config.eos_token_id = eot
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, grew


def _eot(tokenizer) -> str:
    from . import chat

    return chat.end_of_turn_token(tokenizer) or tokenizer.eos_token


def param_digest(model) -> str:
    """A hash of all parameters (full tensors, gathered when sharded): equal across ranks after DDP/ZeRO."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        t = p.detach()
        if hasattr(p, "ds_tensor"):  # ZeRO-3 shard: gather the full parameter
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                t = p.detach().clone()
        h.update(name.encode())
        h.update(t.to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- worker
def _exact_match(model, tokenizer, rows, n, recipe) -> dict:
    from . import generate

    model.to(device_kind())
    return generate.exact_match(model, tokenizer, rows, n=n, max_new_tokens=recipe.kit["max_new_tokens"])


def train(flat: dict, interactive: bool = False, prepared: tuple | None = None) -> dict:
    """Run SFT for one worker. `flat` is a resolved recipe (Recipe.flat()); returns a summary dict.

    prepared: (tokenizer, train_ds, eval_ds, eval_rows) built by the notebook already; forked workers
    inherit them instead of tokenizing the data again.
    """
    import torch.distributed as dist
    from trl import SFTTrainer

    recipe = load_recipe(flat)
    run_dir = recipe.run_dir
    if not interactive:
        from datasets import disable_progress_bars

        disable_progress_bars()
    rank = int(os.environ.get("RANK", 0))
    if recipe.kit["distributed"] in ("zero2", "zero3") and "RANK" not in os.environ:
        # DeepSpeed wants a process group even for one process (else it looks for MPI)
        from .launch import free_port

        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    if recipe.kit["distributed"] == "zero3" and device_kind() == "cpu" and "RANK" in os.environ:
        import deepspeed

        deepspeed.init_distributed(
            dist_backend="gloo"
        )  # before from_pretrained, so ZeRO-3 can partition on load

    if prepared is None:
        tokenizer = load_tokenizer(recipe)
        train_ds, eval_ds, eval_rows = load_datasets(recipe, tokenizer)
    else:
        tokenizer, train_ds, eval_ds, eval_rows = prepared
    model, grew = load_model(recipe, tokenizer)
    # exact match on held-out prompts, before and after training, on rank 0 (answers are returned to the
    # notebook). Sharded models (FSDP, ZeRO-3 on several ranks) cannot generate on one rank: notebook 05 does it.
    n_gen = recipe.kit["n_generate"] if eval_rows else 0
    sharded = recipe.world_size > 1 and recipe.kit["distributed"] in ("fsdp", "zero3")
    generate_here = n_gen > 0 and rank == 0 and not sharded and not recipe.kit["resume"]
    before = _exact_match(model, tokenizer, eval_rows, n_gen, recipe) if generate_here else None
    args = sft_config(recipe, run_dir, interactive)
    stopper = _Callbacks.preemption(run_dir / STOP_FILE)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config(recipe, grew),
        callbacks=[_Callbacks.metrics(run_dir / "metrics.jsonl"), stopper],
    )
    if not interactive:  # batch: no dict printing, no progress bars; the notebook prints metrics lines
        from transformers.trainer_callback import PrinterCallback
        from transformers.utils import logging as hf_logging

        trainer.remove_callback(PrinterCallback)
        hf_logging.disable_progress_bar()
    ckpt = last_checkpoint(run_dir) if recipe.kit["resume"] else None
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    preempted = bool(getattr(trainer.state, "preempted", False))
    result: dict[str, Any] = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "train_loss": out.training_loss,
        "train_runtime_s": time.time() - t0,
        "resumed_from": ckpt.name if ckpt else None,
        "preempted": preempted,
        "group_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
        "device": device_kind(),  # "cuda" (ROCm too) or "cpu": GPU-hours in the run summary
        # what accelerate wrapped the model in: DistributedDataParallel, DeepSpeedEngine, ...
        "wrapped_as": type(trainer.model_wrapped).__name__,
    }
    if preempted:
        result["param_digest"] = param_digest(trainer.model)
        if trainer.is_world_process_zero():
            (run_dir / PREEMPTED_FILE).write_text(
                json.dumps({"step": trainer.state.global_step, "time": time.time()})
            )
        return result
    if eval_ds is not None:
        last_eval = [h for h in trainer.state.log_history if "eval_loss" in h]
        if last_eval and last_eval[-1].get("step") == trainer.state.global_step:
            result["eval_loss"] = last_eval[-1]["eval_loss"]  # already evaluated at this step
        else:
            result["eval_loss"] = trainer.evaluate()["eval_loss"]
    if n_gen > 0 and rank == 0 and not sharded:
        after = _exact_match(trainer.model, tokenizer, eval_rows, n_gen, recipe)
        result["exact_match_after"] = after["exact_match"]
        result["examples_after"] = after["examples"][:20]
        if before is not None:
            result["exact_match_before"] = before["exact_match"]
            result["examples_before"] = before["examples"][:20]
        result["exact_match_n"] = after["n"]
    result["param_digest"] = param_digest(trainer.model)
    trainer.save_model(str(run_dir / "final"))  # the model, or the LoRA adapter
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(run_dir / "final")
        trainer.save_state()  # trainer_state.json with the whole log history
    return result


# ----------------------------------------------------------------------------- notebook side
def _is_interactive() -> bool:
    """True in JupyterLab/Notebook (the server names the session), False under papermill or a script."""
    return bool(os.environ.get("JPY_SESSION_NAME")) and "PAPERMILL_OUTPUT_PATH" not in os.environ


class Progress(threading.Thread):
    """Follows metrics.jsonl from the notebook process and prints one line per logged step (and redraws
    the live plot, if given). Works whether training runs here or in forked workers."""

    def __init__(self, path: Path, every: float = 2.0, plot=None):
        super().__init__(daemon=True)
        self.path, self.every, self.plot = path, every, plot
        self.done = threading.Event()
        self.offset = 0  # bytes of the file already read
        self.records: list[dict] = []

    def _read(self) -> list[dict]:
        """Complete new lines since the last read (a line being written is read next time)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an earlier kill: plots.load_run reports those
        return records

    def poll(self) -> None:
        for r in self._read():
            self.records.append(r)
            if "loss" in r or "eval_loss" in r:
                print(format_log_line(r), flush=True)
        if self.plot is not None and self.records:
            self.plot(self.records)

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.poll()
        self.poll()


def format_log_line(r: dict) -> str:
    parts = [f"step {r['step']:>5}/{r.get('max_steps', '?')}", f"epoch {r.get('epoch', 0):5.2f}"]
    if "loss" in r:
        parts.append(f"loss {r['loss']:.4f}")
    if "eval_loss" in r:
        parts.append(f"eval_loss {r['eval_loss']:.4f}")
    if "learning_rate" in r:
        parts.append(f"lr {r['learning_rate']:.2e}")
    if "grad_norm" in r:
        parts.append(f"grad_norm {r['grad_norm']:.3f}")
    if "tokens_per_s" in r:
        parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
    return " | ".join(parts)


def fit(recipe: Recipe, interactive: bool | None = None, plot=None, prepared: tuple | None = None) -> dict:
    """Prepare the run folder, launch training on every worker of this node, follow its progress.

    Returns rank 0's summary (or this node's first worker's on other nodes), with all ranks' results.
    """
    from . import launch

    interactive = _is_interactive() if interactive is None else interactive
    run_dir = prepare_run(recipe)
    progress = Progress(run_dir / "metrics.jsonl", plot=plot)
    progress._read()  # a resumed run: skip what earlier tries logged
    progress.start()
    kit = recipe.kit
    try:
        results = launch.run(
            _logged_train,
            recipe.flat(),
            interactive and recipe.world_size == 1,
            str(run_dir / "logs"),
            prepared,
            nproc_per_node=kit["nproc_per_node"],
            nnodes=kit["nnodes"],
            node_rank=kit["node_rank"],
            master_addr=kit["master_addr"],
            master_port=kit["master_port"],
        )
    finally:
        progress.done.set()
        progress.join()
    first = results[min(results)]
    summary = dict(first, ranks=results)
    if not first.get("preempted") and launch.this_node_rank(kit["nnodes"], kit["node_rank"]) == 0:
        (run_dir / "result.json").write_text(json.dumps(first, indent=1))
    return summary


def _logged_train(flat: dict, interactive: bool, log_dir: str, prepared: tuple | None = None) -> dict:
    """Worker entry point: forked workers write their output to logs/rank<R>.log, not to the kernel
    (a forked process writing to the notebook would log 'attempted to send message from fork')."""
    rank = int(os.environ.get("RANK", 0))
    if "LOCAL_RANK" in os.environ:  # forked by the launcher
        # no progress bars in forked workers: in a notebook they would be widgets of the parent's kernel
        from datasets import disable_progress_bars
        from huggingface_hub.utils import disable_progress_bars as hub_quiet
        from transformers.utils import logging as hf_logging

        disable_progress_bars()
        hub_quiet()
        hf_logging.disable_progress_bar()
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"rank{rank}.log", "a", buffering=1)  # noqa: SIM115
        sys.stdout = sys.stderr = log
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    return train(flat, interactive, prepared)
