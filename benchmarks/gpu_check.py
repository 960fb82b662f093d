"""GPU check, one command, under 8 minutes on one H100/H200-class GPU (nothing is downloaded):

  1. MFU of SFT on a ~0.6B Llama-shaped model built from a config (random weights): the kit's recipe vs
     TRL's default SFTConfig vs TRL tuned by hand with the kit's settings (padding-free, assistant-only
     loss by TRL's own masks, bf16, activation checkpointing), on the same conversations of about --seq tokens
  2. the planner (`workshop_lib.plan.plan_recipe`) against torch.cuda.max_memory_allocated for full, LoRA
     and QLoRA fine-tuning at two sequence lengths (each in its own process, so peaks do not mix)
  3. FSDP with one process: the kit's recipe with distributed: fsdp; asserts FullyShardedDataParallel
     wrapped the model (accelerate applies FSDP only on GPUs, so a CPU cannot check this)

    python benchmarks/gpu_check.py [--json out.json] [--peak-tflops 989]
    python benchmarks/gpu_check.py --cpu-smoke    # the same logic on a tiny config on a CPU (numbers meaningless)

MFU = model FLOPs per token (6 N + 12 L d s, N without the input embedding; recomputation from activation
checkpointing is not counted) x tokens/s / peak bf16 FLOP/s. Tokens are the conversations' real tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workshop_lib.model import REPO_ROOT, build_tiny_model  # noqa: E402

# Dense bf16 peak of one device, TFLOP/s (vendor figures, without sparsity). Matched on the device name.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "MI300X": 1307.0,
}
# ~0.6B parameters, Llama-shaped (grouped-query attention, gated MLP); the smoke test's tiny twin
GPU_MODEL = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip
SMOKE_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)  # fmt: skip


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return dict(model=SMOKE_MODEL, seq=128, batch=4, steps=4, warmup=1, mem_seqs=(64, 128), mem_steps=2)
    return dict(model=GPU_MODEL, seq=1024, batch=16, steps=40, warmup=10, mem_seqs=(512, 2048), mem_steps=4)


# ----------------------------------------------------------------------------- model and data
def make_model(out: Path, shape: dict) -> Path:
    """A Llama-shaped model with random weights, saved in bf16 (as public checkpoints are), with the kit's
    tiny tokenizer (its chat template has the generation markers assistant-only loss needs)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(build_tiny_model())
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=None, eos_token_id=tok.eos_token_id)  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out


def long_conversations(tok, n: int, max_tokens: int, fill: bool) -> list[dict]:
    """Multi-turn conversations made of the synthetic task's turns. fill=False: each stays at or under
    max_tokens (no side truncates anything); fill=True: each goes past it (the kit cuts rows to exactly
    max_tokens, so every row of a memory measurement has the planned length)."""
    sys.path.insert(0, str(REPO_ROOT / "data"))
    from make_synthetic import generate

    turns = [
        t
        for r in generate(n * max_tokens // 16, 0, seed=3)[0]
        for t in r["messages"]
        if t["role"] != "system"
    ]
    pairs = [turns[i : i + 2] for i in range(0, len(turns) - 1, 2) if turns[i]["role"] == "user"]
    out, conv, k = [], [], 0
    while len(out) < n and k < len(pairs):
        nxt = conv + pairs[k]
        k += 1
        length = len(tok.apply_chat_template(nxt, tokenize=True, return_dict=True)["input_ids"])
        if length > max_tokens:
            out.append({"messages": nxt if fill else conv})
            conv = []
        else:
            conv = nxt
    if len(out) < n:
        raise SystemExit(f"gpu_check: made only {len(out)} of {n} conversations of ~{max_tokens} tokens")
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- one training, timed
def step_timer(warmup: int):
    """A TrainerCallback noting the (synchronised) time at the end of step `warmup` and of the last step."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        t_start = t_end = None

        def on_step_end(self, args, state, control, **kw):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == warmup:
                self.t_start = time.perf_counter()
            self.t_end = time.perf_counter()

    return Timer()


def kit_recipe(model_dir: Path, train_file: Path, out: Path, name: str, **overrides):
    from workshop_lib.recipe import load_recipe

    base = dict(model=str(model_dir), train_file=str(train_file), eval_file="", run_name=name,
                output_root=str(out), n_generate=0, eval_strategy="no", save_strategy="no",
                learning_rate=1e-4, logging_steps=10, report_to="none")  # fmt: skip
    return load_recipe(None, overrides={**base, **overrides})  # the kit's defaults, as for a new model


def build_kit_trainer(recipe, extra_callbacks: list):
    """What workshop_lib.worker.train builds, plus a callback."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from workshop_lib import build, runfolder

    recipe = runfolder.prepare(recipe)
    tok, _ = build.tokenizer(recipe)
    train_ds, _, _ = build.datasets(recipe, tok)
    model = build.model(recipe, tok)
    trainer = SFTTrainer(model=model, args=SFTConfig(**build.trl_args(recipe)[0]), train_dataset=train_ds,
                         processing_class=tok, peft_config=build.lora_config(recipe, model),
                         callbacks=[*build.callbacks(recipe), *extra_callbacks])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # as the worker does: no dict printed per log step
    return trainer


def mfu_side(side: str, model_dir: Path, train_file: Path, out: Path, z: dict) -> dict[str, Any]:
    """Train `steps` steps of one side; throughput over the steps after the warm-up."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from workshop_lib import data

    timer = step_timer(z["warmup"])
    common = dict(max_steps=z["steps"], per_device_train_batch_size=z["batch"], learning_rate=1e-4)
    if side == "kit":
        trainer = build_kit_trainer(kit_recipe(model_dir, train_file, out, "mfu-kit", **common), [timer])
    else:
        args = dict(
            output_dir=str(out / side), report_to="none", save_strategy="no", disable_tqdm=True, **common
        )
        if not torch.cuda.is_available():
            args.update(use_cpu=True, bf16=False)  # the smoke test: TRL's bf16 default needs a GPU here
        if side == "trl_tuned":  # the kit's settings, by hand
            args.update(padding_free=True, max_length=None, assistant_only_loss=True,
                        activation_checkpointing=torch.cuda.is_available(),
                        model_init_kwargs={"dtype": "bfloat16" if torch.cuda.is_available() else "float32"})  # fmt: skip
        rows = [{"messages": r["messages"]} for r in data.read_jsonl(train_file)]
        trainer = SFTTrainer(model=str(model_dir), args=SFTConfig(**args), train_dataset=Dataset.from_list(rows),
                             processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[timer])  # fmt: skip
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    trainer.train()
    seconds = timer.t_end - timer.t_start
    tokens = sum(lengths) / len(lengths) * z["batch"] * (z["steps"] - z["warmup"])
    res = {"tokens_per_s": tokens / seconds, "mean_row_tokens": sum(lengths) / len(lengths),
           "dtype": str(next(trainer.model.parameters()).dtype),
           "activation_checkpointing": bool(trainer.args.gradient_checkpointing),
           "padding_free": bool(trainer.args.padding_free), "bf16": bool(trainer.args.bf16)}  # fmt: skip
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def model_flops_per_token(cfg: dict, seq: float) -> float:
    """6 N + 12 L d s: N the weights a token passes through (all but the input embedding), s the sequence
    length it attends over (PaLM's convention; activation checkpointing's recomputation not counted)."""
    h, layers, inter, v = (
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    )
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    n = layers * per_layer + h * v
    return 6 * n + 12 * layers * h * seq


# ----------------------------------------------------------------------------- memory and FSDP, in a child
def child_memory(spec: dict) -> dict[str, Any]:
    """One kit training of a few steps; the planner's estimate and the measured peak."""
    import torch

    from workshop_lib import plan

    recipe = kit_recipe(Path(spec["model_dir"]), Path(spec["train_file"]), Path(spec["out"]), spec["name"],
                        method=spec["method"], max_length=spec["seq"], per_device_train_batch_size=spec["batch"],
                        max_steps=spec["steps"])  # fmt: skip
    est = plan.plan_recipe(recipe)["memory_gib"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = build_kit_trainer(recipe, [])
    rows = trainer.train_dataset["input_ids"]
    assert all(len(r) == spec["seq"] for r in rows), "memory rows must all have the planned length"
    trainer.train()
    measured = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"estimate_gib": est, "measured_gib": measured}


def child_fsdp(spec: dict) -> dict[str, Any]:
    """The kit's fit() with distributed: fsdp on one process (a process group of one, as a launcher makes)."""
    from workshop_lib.launch import free_port
    from workshop_lib.train import fit

    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    recipe = kit_recipe(Path(spec["model_dir"]), Path(spec["train_file"]), Path(spec["out"]), "fsdp-1proc",
                        distributed="fsdp", max_steps=spec["steps"], per_device_train_batch_size=spec["batch"])  # fmt: skip
    res = fit(recipe)
    return {"wrapped_as": res.wrapped_as, "group_size": res.group_size, "train_loss": res.train_loss}


def in_child(kind: str, spec: dict) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [x for x in p.stdout.splitlines() if x.startswith("CHILD ")]
    if p.returncode or not lines:
        return {
            "error": f"exit {p.returncode}: " + (p.stderr.strip().splitlines() or ["no output"])[-1][-400:]
        }
    return json.loads(lines[-1][6:])


# ----------------------------------------------------------------------------- main
def refuse_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        return
    raise SystemExit(
        f"gpu_check: no GPU visible (torch {torch.__version__}, torch.cuda.is_available() is False). It measures "
        "MFU, GPU memory (torch.cuda.max_memory_allocated) and FSDP, which need one: run it on a GPU node with a "
        "CUDA/ROCm build of torch (README: TORCH_SPEC), or pass --cpu-smoke to check its logic on a tiny model."
    )


def peak_tflops(given: float | None) -> tuple[float | None, str]:
    import torch

    if given:
        return given, "given"
    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return value, name
    return None, name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: checks the logic only")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in PEAK_TFLOPS")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        res = child_memory(spec) if kind == "memory" else child_fsdp(spec)
        print("CHILD " + json.dumps(res), flush=True)
        return 0
    if not args.cpu_smoke:
        refuse_without_gpu()
    import torch
    import transformers
    from datasets import disable_progress_bars

    disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    z = sizes(args.cpu_smoke)
    gpu = torch.cuda.is_available() and not args.cpu_smoke
    peak, device = peak_tflops(args.peak_tflops)
    results: dict[str, Any] = {"device": device, "peak_tflops": peak, "torch": torch.__version__}
    failures: list[str] = []
    out = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        from transformers import AutoTokenizer

        model_dir = make_model(out / "model", z["model"])
        tok = AutoTokenizer.from_pretrained(model_dir)
        print(f"[{time.perf_counter() - t0:5.0f} s] model: {z['model']} -> {model_dir}", flush=True)

        # 2. memory, each in its own process (before the MFU runs hold memory in this one)
        results["memory"] = []
        methods = ("full", "lora", "qlora") if gpu else ("full", "lora")  # QLoRA's 4-bit kernels need a GPU
        for seq in z["mem_seqs"]:
            f = write_jsonl(long_conversations(tok, 64, seq, fill=True), out / f"mem-{seq}.jsonl")
            for method in methods:
                spec = dict(model_dir=str(model_dir), train_file=str(f), out=str(out), name=f"mem-{method}-{seq}",
                            method=method, seq=seq, batch=4, steps=z["mem_steps"])  # fmt: skip
                r = {"method": method, "seq": seq, **in_child("memory", spec)}
                if r.get("measured_gib"):
                    est = r["estimate_gib"]
                    # max_memory_allocated has no CUDA context or allocator slack: compare without the overhead
                    r["estimate_wo_overhead_gib"] = est["total"] - est.get("overhead", 0)
                    r["rel_error"] = r["estimate_wo_overhead_gib"] / r["measured_gib"] - 1
                if "error" in r:
                    failures.append(f"memory {method} {seq}: {r['error']}")
                results["memory"].append(r)
                print(
                    f"[{time.perf_counter() - t0:5.0f} s] memory {method} seq {seq}: {_mem_line(r)}",
                    flush=True,
                )

        # 3. FSDP on one process
        if gpu:
            f = write_jsonl(long_conversations(tok, 64, z["seq"], fill=False), out / "fsdp.jsonl")
            spec = dict(
                model_dir=str(model_dir), train_file=str(f), out=str(out), steps=z["mem_steps"], batch=4
            )
            r = in_child("fsdp", spec)
            r["ok"] = r.get("wrapped_as") == "FullyShardedDataParallel"
            if not r["ok"]:
                failures.append(
                    f"FSDP: the model was wrapped as {r.get('wrapped_as')} ({r.get('error', '')})"
                )
            results["fsdp"] = r
            print(f"[{time.perf_counter() - t0:5.0f} s] fsdp 1 process: {r}", flush=True)
        else:
            results["fsdp"] = {"skipped": "accelerate applies FSDP only on GPUs"}

        # 1. MFU, three sides on the same conversations
        f = write_jsonl(
            long_conversations(tok, z["batch"] * z["steps"], z["seq"], fill=False), out / "mfu.jsonl"
        )
        results["mfu"] = {}
        for side in ("kit", "trl", "trl_tuned"):
            r = mfu_side(side, model_dir, f, out, z)
            fpt = model_flops_per_token(z["model"], r["mean_row_tokens"])
            r["mfu"] = fpt * r["tokens_per_s"] / (peak * 1e12) if peak else None
            results["mfu"][side] = r
            mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a (no peak)"
            print(f"[{time.perf_counter() - t0:5.0f} s] {side:<10} {r['tokens_per_s']:>10,.0f} tokens/s  {mfu}  {r}",
                  flush=True)  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    results["seconds"] = time.perf_counter() - t0
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


def _mem_line(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    est = r["estimate_gib"]
    if r.get("measured_gib") is None:
        return f"estimate {est['total']:.2f} GiB (no GPU: not measured)"
    return (f"estimate {r['estimate_wo_overhead_gib']:.2f} GiB without overhead, measured {r['measured_gib']:.2f} GiB, "
            f"error {r['rel_error']:+.1%}")  # fmt: skip


def report(res: dict) -> str:
    lines = [f"\ndevice {res['device']}, peak {res['peak_tflops']} TFLOP/s, {res['seconds']:.0f} s in all"]
    m = res.get("mfu", {})
    if "kit" in m:
        for side in ("trl", "trl_tuned"):
            lines.append(f"kit vs {side}: {m['kit']['tokens_per_s'] / m[side]['tokens_per_s']:.2f}x tokens/s")
    for r in res.get("memory", []):
        lines.append(f"memory {r['method']:<5} seq {r['seq']:>5}: {_mem_line(r)}")
    lines.append(f"fsdp: {res.get('fsdp')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
