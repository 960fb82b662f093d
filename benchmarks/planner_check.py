"""The planner's terms against measurements on this machine (CPU), term by term.

    .venv/bin/python benchmarks/planner_check.py            # everything (a few minutes on 2 cores)
    .venv/bin/python benchmarks/planner_check.py --quick    # the tiny model only

Measured, not assumed:
  * model states in bf16 with AdamW as the kit's DDP path runs them (bf16 weights, torch AdamW states in
    the parameters' dtype): bytes of the real tensors after one optimizer step;
  * ZeRO-3 across 2 processes (gloo): per-rank bytes of the real DeepSpeed engine's tensors: the bf16
    parameter partitions, the fp32 gradient partition, the fp32 master copy and Adam's m and v, and the
    reduction bucket; also what DeepSpeed's own estimator says;
  * activations with torch's MemTracker (torch.distributed._tools.mem_tracker, device-agnostic): the peak
    of one micro-batch's forward and backward above the model states, for the tiny model (real tensors) and
    a ~150M Llama-shaped model (built from a config, under FakeTensorMode: the same autograd graph and sizes
    without the arithmetic; checked equal to real tensors on the tiny model), at two sequence lengths, with
    and without activation checkpointing, in bf16.
Prints one row per term: estimate, measurement, relative error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workshop_lib import plan  # noqa: E402

LLAMA_150M = dict(
    model_type="llama",
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=3072,
    vocab_size=32000,
    tie_word_embeddings=False,
)


def build(cfg: dict, dtype=None):
    """A Llama-shaped model with random weights from a config dict (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    keys = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "model_type"}
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or default)  # built in its dtype (a cast cannot swap fake tensors)
    try:
        return LlamaForCausalLM(LlamaConfig(**keys))
    finally:
        torch.set_default_dtype(default)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_states(model, optimizer) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer states held after a step (real tensors)."""
    import torch

    params = list(model.parameters())
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return {
        "weights": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": tensor_bytes(states),
    }


def ddp_bf16_states(cfg: dict) -> dict[str, int]:
    """The kit's single-process/DDP path on GPUs: bf16 weights, torch AdamW, one step."""
    import torch

    model = build(cfg, torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg["vocab_size"], (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return model_states(model, opt)


def activation_peak(
    cfg: dict, seq_len: int, checkpointing: bool, dtype: str = "bf16", fake: bool = False
) -> int:
    """Peak bytes above the model states during one forward + backward, by torch's MemTracker.

    One backward runs first so that gradients exist (zeroed, not freed): the tracked peak minus the memory
    at the start is then activations and backward temporaries only. fake=True runs it under torch's
    FakeTensorMode: the same autograd graph and tensor sizes without computing values (what makes the
    ~150M model affordable on 2 cores; on the tiny model both give the same bytes, checked in main)."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode() if fake else contextlib.nullcontext():
        model = build(cfg, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        ids = torch.randint(0, cfg["vocab_size"], (1, seq_len))
        model(input_ids=ids, labels=ids).loss.backward()
        for p in model.parameters():
            p.grad.zero_()
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            now = next(iter(tracker.get_tracker_snapshot().values()))
            start = sum(v for k, v in now.items() if k != "Total")
            model(input_ids=ids, labels=ids).loss.backward()
        return next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"] - start


# ----------------------------------------------------------------------------- ZeRO-3 on 2 processes
ZERO3_BUCKET = 2_000_000  # elements: small, so the CPU run stays light; the planner takes it as given


def _zero3_rank(rank: int, world: int, port: int, cfg: dict, out) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import deepspeed
    import torch

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "contiguous_gradients": True, "reduce_bucket_size": ZERO3_BUCKET},
        "zero_allow_untested_optimizer": True,
    }
    model = build(cfg)  # deepspeed.initialize partitions it (zero.Init would also work, on import order)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    ids = torch.randint(0, cfg["vocab_size"], (1, 16))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    stage = engine.zero_optimization_stage()
    inner = zopt.optimizer
    states = [t for s in inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    buckets = [b.buffer for b in zopt.ipg_buckets.values() if getattr(b, "buffer", None) is not None]
    measured = {
        "stage": stage,
        "weights": tensor_bytes(p.ds_tensor for p in engine.module.parameters()),
        "gradients": tensor_bytes([zopt.grad_partitions_flat_buffer]),
        "optimizer": tensor_bytes(zopt.fp32_partitioned_groups_flat) + tensor_bytes(states),
        "buffers": tensor_bytes(buckets),
    }
    out.put((rank, measured))
    torch.distributed.barrier()


def zero3_two_ranks(cfg: dict) -> dict[int, dict]:
    """Per-rank bytes of the DeepSpeed ZeRO-3 engine's tensors, 2 processes on CPU (gloo)."""
    import multiprocessing as mp

    from workshop_lib.launch import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_zero3_rank, args=(r, 2, port, cfg, out)) for r in range(2)]
    for p in procs:
        p.start()
    import queue

    results: dict[int, dict] = {}
    while len(results) < len(procs):
        try:
            rank, measured = out.get(timeout=2)
            results[rank] = measured
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise RuntimeError(
                    f"a ZeRO-3 rank failed (exit codes {dead}): see its traceback above"
                ) from None
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"ZeRO-3 rank exited with {p.exitcode}")
    return results


# ----------------------------------------------------------------------------- report
def row(what: str, estimate: float, measured: float) -> tuple[str, float, float, float]:
    err = (estimate - measured) / measured if measured else float("nan")
    print(f"{what:58} {estimate / 1e6:10.2f} MB {measured / 1e6:10.2f} MB {err:+8.1%}")
    return what, estimate, measured, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny model only")
    args = ap.parse_args()
    from workshop_lib.model import build_tiny_model

    tiny = plan.read_config(build_tiny_model())
    models = {"tiny": tiny} if args.quick else {"tiny": tiny, "llama-153M": dict(LLAMA_150M)}
    print(f"{'term':58} {'estimate':>13} {'measured':>13} {'error':>8}")
    rows = []
    for name, cfg in models.items():
        est = plan.estimate_memory(cfg, method="full", precision="bf16", strategy="ddp", world_size=1)
        real = ddp_bf16_states(cfg)
        for term in ("weights", "gradients", "optimizer"):
            rows.append(row(f"{name} bf16 AdamW (DDP) {term}", est[term] * plan.GiB, real[term]))
    for name, cfg in models.items():
        est = plan.estimate_memory(
            cfg, method="full", strategy="zero3", world_size=2, reduce_bucket_size=ZERO3_BUCKET
        )
        per_rank = zero3_two_ranks(cfg)
        c = plan.count_parameters(cfg)
        # in the estimate but not persistent tensors: the gathered largest module (forward/backward) and
        # the fp32 copy of the gradient partition made during the step
        transient = {"weights": 2 * 2 * c["largest_module"], "gradients": 4 * c["total"] / 2}
        for rank, real in sorted(per_rank.items()):
            assert real["stage"] == 3, real
            for term in ("weights", "gradients", "optimizer", "buffers"):
                guess = est[term] * plan.GiB - transient.get(term, 0)
                rows.append(row(f"{name} ZeRO-3 bf16 rank {rank}/2 {term} (partition)", guess, real[term]))
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
            c["total"], c["largest_module"], num_gpus_per_node=2, cpu_offload=False
        )
        ours = sum(est[k] for k in ("weights", "gradients", "optimizer")) * plan.GiB
        rows.append(row(f"{name} ZeRO-3 model states vs DeepSpeed's estimator", ours, ds_gpu))
    for name, cfg in models.items():
        for seq in (512, 1024):
            for ckpt in (False, True):
                fake = name != "tiny"
                est = plan.estimate_memory(cfg, seq_len=seq, activation_checkpointing=ckpt)["activations"]
                real = activation_peak(cfg, seq, ckpt, fake=fake)
                label = f"{name} activations bf16 seq {seq}{' ckpt' if ckpt else ''}{' (fake tensors)' if fake else ''}"
                rows.append(row(label, est * plan.GiB, real))
                if name == "tiny" and seq == 512:  # do fake tensors allocate what real ones do?
                    rows.append(
                        row(f"{label}: fake tensors vs real", activation_peak(cfg, seq, ckpt, True), real)
                    )
    worst = max(abs(r[3]) for r in rows)
    print(f"largest error: {worst:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
