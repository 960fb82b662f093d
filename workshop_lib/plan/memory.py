"""Memory per GPU (GiB) and time for a training job, from a model's config.json alone.

Per GPU, in bytes. N parameters of the base model, T trainable (N for full fine-tuning, the adapter for
LoRA), W processes, b = 2 for bf16/fp16 runs and 4 for fp32 runs. Each rule follows what the kit's stack
does (train.load_model, build.trl_config); benchmarks/planner_check.py measures them.

  DDP (and one process): the kit loads the model in bf16 on GPUs and the Trainer's torch AdamW keeps its
      states in the parameters' dtype:  weights b*N, gradients b*T, optimizer 2*b*T (m and v).
      LoRA: PEFT keeps the adapter in fp32 (autocast_adapter_dtype): adapter weights 4T, grads 4T, Adam 8T.
  DeepSpeed ZeRO (bf16): the engine casts the module to bf16 and keeps an fp32 master copy of what
      trains, as in DeepSpeed's estimators: weights 2N (ZeRO-3: 2N/W + two copies of the largest module,
      gathered), gradients 4T/W (fp32 partition) + 2T (ZeRO-1) or 2T/W (ZeRO-2) in 16 bits; ZeRO-3 keeps a
      bf16 partition 2T/W and its step converts one sub-group (<= 1e9 elements) to fp32: + 4*min(T/W, 1e9).
      optimizer 12T/W (master 4 + m 4 + v 4). buffers: the gradient-reduction bucket(s), reduce_bucket_size elements (DeepSpeed default
      5e8: 1 GB in bf16; two of them in ZeRO-1/2 with overlap_comm).
  FSDP: accelerate upcasts the sharded parameters to fp32 under mixed precision: 4N/W + 4T/W + 8T/W,
      plus two decoder layers gathered in bf16.
  Quantized base (GPTQ, AWQ, bitsandbytes, QLoRA): the linear layers at their stored bytes (size.py),
      the rest 16-bit; full fine-tuning of quantized weights is refused.
  activations: per token and decoder layer of a Llama-shaped model (RMSNorm computed in fp32, rotary,
      SDPA/flash attention that keeps no s x s matrix, gated MLP), counted from the tensors autograd
      saves and checked with torch's MemTracker:
          norms 2 * (4h + b*h) + attention 5 * b * q_dim (q, k and v repeated to all heads, output and its
          reshaped copy) + MLP 4 * b * i (gate, act, up, product; 2 * b * i ungated) + 4 * heads.
      Models without SDPA support (eager attention, e.g. BLOOM) add (4 + 2b) * heads * seq_len.
      LoRA adds the low-precision copy of each adapted linear's input: b * (5h + q_dim + i).
      With activation checkpointing only each layer's input (b*h) is kept, plus the larger of one layer
      recomputed with its backward's temporaries (3 * b * i) and the logits (the loss's backward is done
      before the first layer is recomputed).
      Outside the layers: the final norm (4h + b*h) and the logits, 12 * vocab bytes per token (bf16
      logits, their fp32 copy in the loss, log-softmax and its gradient).
  reference model (DPO; GRPO with beta > 0): a frozen copy of the weights, b*N (ZeRO-3: b*N/W); none with
      LoRA (the base with its adapters switched off is the reference).
  generation (GRPO, in the training process): the KV cache of every sequence generated at once,
      2 (k and v) * layers * kv_heads * head_dim * b per token, plus fp32 logits of one step (4 * vocab per
      sequence). With vLLM colocated, vLLM's own share of the GPU (vllm_gpu_memory_utilization) instead.
  overhead: 2 GiB per GPU: CUDA/ROCm context, NCCL/RCCL buffers, allocator fragmentation.
Time: FLOPs per token = 6N for full fine-tuning (2N forward + 4N backward), 4N for LoRA (no weight
gradients for the frozen base), + 2N with activation checkpointing (the forward is recomputed).
"""

from __future__ import annotations

import functools
from typing import Any

from .size import KIT_QLORA, PlanError, count_parameters, lora_parameters, quantization, stored_weight_bytes

GiB = 2**30
GB = 10**9  # vendors quote GPU memory in GB (an MI250X GCD: 64 GB, an H100: 80 GB)
OVERHEAD_GIB = 2.0
DEEPSPEED_REDUCE_BUCKET = 500_000_000  # elements: DeepSpeed's default reduce_bucket_size
ZERO3_SUB_GROUP = 1_000_000_000  # elements: DeepSpeed's default sub_group_size (optimizer step unit)
PEAK_TFLOPS = {"mi250x-gcd": 191.5, "mi300x": 1307.0, "h100": 989.0, "h200": 989.0, "a100": 312.0, "cpu": 0.5}


def gb_to_gib(gb: float) -> float:
    """A vendor's GB figure in GiB: the planner's one unit."""
    return gb * GB / GiB


@functools.lru_cache(maxsize=64)
def supports_sdpa(model_type: str) -> bool:
    """Does transformers run this architecture with SDPA/flash attention (no s x s matrix kept)?"""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
        return bool(getattr(cls, "_supports_sdpa", False) or getattr(cls, "_supports_flash_attn", False))
    except Exception:  # an architecture transformers does not know: assume the modern default
        return True


def activation_bytes(
    c: dict,
    seq_len: int,
    micro_batch: int,
    b: int,
    activation_checkpointing: bool,
    lora: bool = False,
    sdpa: bool = True,
) -> float:
    """Bytes of activations at the peak of one micro-batch's forward and backward (see module doc)."""
    h, i, heads = c["hidden"], c["intermediate"] * c["experts_per_token"], c["heads"]
    qd = heads * c["head_dim"]
    layer = 2 * (4 * h + b * h) + 5 * b * qd + (4 if c["gated"] else 2) * b * i + 4 * heads + 8
    if not sdpa:
        layer += (4 + 2 * b) * heads * seq_len
    if lora:
        layer += b * (5 * h + qd + i)
    outside = (4 * h + b * h) + 12 * c["vocab"]
    if activation_checkpointing:
        # the loss's backward (logits) runs before any layer is recomputed: the larger of the two counts
        # (a layer's backward adds the gradients of its MLP's intermediate tensors: 3 * b * i)
        per_token = c["layers"] * (b * h) + max(layer + 3 * b * i, outside)
    else:
        per_token = c["layers"] * layer + outside
    return seq_len * micro_batch * per_token


def estimate_memory(
    cfg: dict,
    method: str = "full",
    precision: str = "bf16",
    optimizer: str = "adamw",
    strategy: str = "ddp",
    seq_len: int = 2048,
    micro_batch: int = 1,
    activation_checkpointing: bool = True,
    world_size: int = 1,
    lora_r: int = 16,
    reduce_bucket_size: int = DEEPSPEED_REDUCE_BUCKET,
    reference: bool = False,
    generation: tuple[int, int] | None = None,
    reserved_gib: float = 0.0,
) -> dict[str, Any]:
    """Per-GPU memory in GiB: weights, gradients, optimizer, buffers, activations, reference, generation,
    overhead, total. reference: DPO/GRPO keep a frozen copy of the model; generation: (sequences generated at
    once on a GPU, tokens each) for GRPO sampling in the training process; reserved_gib: what vLLM, colocated,
    holds on each GPU for GRPO's generation instead (see module doc)."""
    c = count_parameters(cfg)
    src = cfg.get("_source", "config")
    quant = quantization(cfg)
    if quant and method == "full":
        raise PlanError(
            f"{src}: the checkpoint is stored quantized ({quant.describe}): its integer weights cannot be "
            "fully fine-tuned. Use method: lora (adapters trained on the quantized base, as in QLoRA), "
            "or the unquantized model for method: full."
        )
    if method == "qlora" and quant is None:
        quant = quantization({**cfg, "quantization_config": KIT_QLORA})
    if quant and strategy in ("zero3", "fsdp"):
        raise PlanError(
            f"{src}: a quantized base ({quant.describe}) with distributed {strategy} is not supported by "
            "the kit: use ddp (the quantized base fits each GPU) or zero2."
        )
    n = c["total"]
    t = n if method == "full" else lora_parameters(c, lora_r)
    adapter = 0 if method == "full" else t  # LoRA weights come on top of the base model's
    b = 4 if precision == "fp32" else 2
    w = max(int(world_size), 1)
    eight_bit = optimizer in ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit")
    buffers = 0.0
    if strategy in ("zero1", "zero2", "zero3"):
        stage = int(strategy[-1])
        base = stored_weight_bytes(c, quant, b)
        weights = base + adapter * b
        if stage == 3:
            weights = weights / w + 2 * b * c["largest_module"]
        if b == 2 and stage == 3:  # a bf16 partition; the step makes an fp32 copy of one sub-group
            grads = 2 * t / w + 4 * min(t / w, ZERO3_SUB_GROUP)
        elif b == 2:  # as DeepSpeed's estimator: 16-bit gradients + the fp32 partition
            grads = (2 * t if stage == 1 else 2 * t / w) + 4 * t / w
        else:
            grads = 4 * t / (w if stage >= 2 else 1)
        opt = t * ((4 if b == 2 else 0) + (2 if eight_bit else 8)) / w
        bucket_bytes = 4 if stage == 1 else b
        buffers = reduce_bucket_size * bucket_bytes * (1 if stage == 3 else 2)
    elif strategy == "fsdp":
        weights = 4 * (n + adapter) / w + 2 * 2 * c["per_layer"]
        grads, opt = 4 * t / w, (2 if eight_bit else 8) * t / w
    else:  # ddp or one process
        if method == "full":
            weights, grads, opt = n * b, t * b, t * (2 if eight_bit else 2 * b)
        else:
            weights = stored_weight_bytes(c, quant, b) + 4 * adapter
            grads, opt = 4 * t, (2 if eight_bit else 8) * t
    act = activation_bytes(
        c,
        seq_len,
        micro_batch,
        b,
        activation_checkpointing,
        lora=method != "full",
        sdpa=supports_sdpa(c["model_type"]),
    )
    ref = 0.0
    if reference and method == "full":
        ref = stored_weight_bytes(c, quant, b) / (w if strategy == "zero3" else 1)
    gen = 0.0
    if generation:
        sequences, tokens = generation
        gen = sequences * (tokens * 2 * c["layers"] * c["kv_heads"] * c["head_dim"] * b + 4 * c["vocab"])
    out = {"weights": weights, "gradients": grads, "optimizer": opt, "buffers": buffers, "activations": act}
    out |= {"reference": ref, "generation": gen}
    out = {k: v / GiB for k, v in out.items()}
    out["generation"] += reserved_gib
    out["overhead"] = OVERHEAD_GIB
    out["total"] = sum(out.values())
    out["parameters"] = n
    out["trainable"] = t
    out["quantization"] = quant.describe if quant else None
    return out


def flops_per_token(n_params: int, method: str = "full", activation_checkpointing: bool = True) -> float:
    return (6 if method == "full" else 4) * n_params + (2 * n_params if activation_checkpointing else 0)


def plan_nodes(
    cfg: dict,
    gpu_memory_gb: float,
    gpus_per_node: int = 8,
    max_nodes: int = 64,
    headroom: float = 0.9,
    comfortable: float = 0.7,
    **kw: Any,
) -> dict[str, Any]:
    """Smallest node count whose per-GPU estimate fits (<= 90% of memory), and the smallest with room to
    spare (<= 70%: fragmentation, collective buffers, a longer batch than planned). gpu_memory_gb is the
    vendor's figure (GB); it is converted to GiB once, here."""
    capacity = gb_to_gib(gpu_memory_gb)
    fits = comfy = None
    rows = []
    for nodes in range(1, max_nodes + 1):
        est = estimate_memory(cfg, world_size=nodes * gpus_per_node, **kw)
        rows.append((nodes, round(est["total"], 2)))
        if fits is None and est["total"] <= headroom * capacity:
            fits = nodes
        if comfy is None and est["total"] <= comfortable * capacity:
            comfy = nodes
            break
        if kw.get("strategy", "ddp") == "ddp":
            break  # DDP replicates everything: more nodes never fit more
    return {"min_nodes": fits, "comfortable_nodes": comfy, "gpu_memory_gib": capacity, "per_node_count": rows}


def time_per_epoch(
    n_params: int,
    tokens: int,
    gpus: int,
    peak_tflops: float,
    mfu: float = 0.35,
    method: str = "full",
    activation_checkpointing: bool = True,
) -> float:
    """Seconds for one epoch of `tokens` tokens."""
    return (
        flops_per_token(n_params, method, activation_checkpointing)
        * tokens
        / (gpus * peak_tflops * 1e12 * mfu)
    )
