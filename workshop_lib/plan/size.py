"""What a model is made of, from its config.json alone: parameter counts and stored precision.

No weights are needed. `quantization` reads a checkpoint's `quantization_config` (GPTQ, AWQ,
bitsandbytes, fp8) and says how many bytes each quantized weight takes as stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GATED_MLP = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "cohere",
    "internlm2",
    "deepseek_v2",
    "smollm3",
    "yi",
}


class PlanError(ValueError):
    """The planner cannot plan this: names the file or field, what is wrong and what to do."""


def _field(cfg: dict, names: tuple[str, ...], source: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    if default is not None:
        return default
    raise PlanError(
        f"{source}: none of the fields {', '.join(names)} is set: the planner cannot tell the model's "
        f"size. Add it to the config, or plan with a config of the same architecture."
    )


def read_config(model_or_path: str | Path | dict) -> dict:
    """config.json of a local model folder (or a path to the file, or a dict); no weights needed."""
    if isinstance(model_or_path, dict):
        return dict(model_or_path, _source=model_or_path.get("_source", "config"))
    from ..model import resolve_model

    p = Path(model_or_path).expanduser()
    if not p.exists() and str(model_or_path) == "tiny":
        p = Path(resolve_model("tiny"))
    path = p / "config.json" if p.is_dir() else p
    if not path.exists():
        try:  # a hub id: only its config is fetched (works offline when cached)
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(str(model_or_path)).to_dict()
        except Exception as e:
            raise PlanError(
                f"{path}: no config.json (and {model_or_path!r} could not be loaded as a hub id: "
                f"{type(e).__name__}). Give a model folder or its config.json."
            ) from None
        return _text_config(cfg, str(model_or_path))
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return _text_config(cfg, str(path))


def _text_config(cfg: dict, source: str) -> dict:
    # multimodal configs keep the language model under text_config; quantization stays at the top
    text = dict(cfg.get("text_config") or cfg)
    if cfg.get("quantization_config") and not text.get("quantization_config"):
        text["quantization_config"] = cfg["quantization_config"]
    text["_source"] = source
    return text


def count_parameters(cfg: dict) -> dict[str, Any]:
    """Parameter counts from the config alone: embeddings, per layer (attention, MLP), total."""
    src = cfg.get("_source", "config")
    h = int(_field(cfg, ("hidden_size", "n_embd", "d_model"), src))
    layers = int(_field(cfg, ("num_hidden_layers", "n_layer", "num_layers"), src))
    heads = int(_field(cfg, ("num_attention_heads", "n_head", "num_heads"), src))
    vocab = int(_field(cfg, ("vocab_size",), src))
    kv = int(
        cfg.get("num_key_value_heads")
        or cfg.get("num_kv_heads")
        or cfg.get("multi_query_group_num")
        or (1 if cfg.get("multi_query") else heads)
    )
    head_dim = int(cfg.get("head_dim") or h // heads)
    inter = int(_field(cfg, ("intermediate_size", "n_inner", "ffn_hidden_size"), src, default=4 * h))
    model_type = str(cfg.get("model_type", ""))
    gated = model_type in GATED_MLP or (
        cfg.get("hidden_act") in ("silu", "swiglu", "gelu_pytorch_tanh") and model_type != "bloom"
    )
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = (3 if gated else 2) * h * inter * experts
    norms = 2 * h
    embed = vocab * h
    tied = cfg.get("tie_word_embeddings", model_type in ("bloom", "gpt2"))
    lm_head = 0 if tied else vocab * h
    total = embed + lm_head + layers * (attn + mlp + norms) + h
    return {
        "total": total,
        "embedding": embed,
        "lm_head": lm_head,
        "per_layer": attn + mlp + norms,
        "attention": attn,
        "mlp": mlp,
        "layers": layers,
        "hidden": h,
        "vocab": vocab,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
        "intermediate": inter,
        "gated": gated,
        "experts": experts,
        "experts_per_token": int(cfg.get("num_experts_per_tok") or 1),
        # the largest single module: what ZeRO-3 gathers whole (DeepSpeed's "largest layer")
        "largest_module": max(embed, lm_head, h * inter * experts, h * heads * head_dim),
        "model_type": model_type,
    }


def lora_parameters(counts: dict, r: int = 16) -> int:
    """LoRA on all linear layers of the decoder (PEFT's all-linear): r * (in + out) per matrix."""
    h, kvd, inter = counts["hidden"], counts["kv_heads"] * counts["head_dim"], counts["intermediate"]
    qd = counts["heads"] * counts["head_dim"]
    attn = r * ((h + qd) + 2 * (h + kvd) + (qd + h))
    mlp = r * (h + inter) * (3 if counts["gated"] else 2) * counts["experts"]
    return counts["layers"] * (attn + mlp)


# ----------------------------------------------------------------------------- quantized checkpoints
@dataclass(frozen=True)
class Quantization:
    """How a checkpoint stores its linear weights: bytes per weight including scales and zero points."""

    method: str  # gptq | awq | bitsandbytes | fp8
    bits: int
    bytes_per_weight: float
    lm_head: bool  # is the output layer quantized too (rare)
    describe: str


# The kit's own QLoRA (train.load_model): bitsandbytes nf4, double quantization, bf16 compute
KIT_QLORA = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}


def quantization(cfg: dict) -> Quantization | None:
    """The stored precision of a quantized checkpoint (None: not quantized).

    Bytes per weight, as the formats pack them:
      GPTQ/AWQ   bits/8 for the packed weight + per group of `group_size` inputs an fp16 scale and a
                 packed zero point: (2 + bits/8) / group_size.
      bnb 4-bit  0.5 + the absmax of each block of 64: fp32 (4/64), or with double quantization one byte
                 per block plus an fp32 per 256 blocks (1/64 + 4/16384).
      bnb 8-bit  1 + an fp32 scale per output row (~4/4096, counted as 4/hidden).
      fp8        1 + an fp32 scale per 128x128 block (or per tensor).
    Embeddings, norms and (unless the config says otherwise) the output layer stay 16-bit.
    """
    q = cfg.get("quantization_config")
    if not q:
        return None
    src = cfg.get("_source", "config")
    if not isinstance(q, dict):
        raise PlanError(f"{src}: quantization_config is a {type(q).__name__}, expected a mapping.")
    method = str(q.get("quant_method") or ("bitsandbytes" if "load_in_4bit" in q else "")).lower()
    h = int(_field(cfg, ("hidden_size", "n_embd", "d_model"), src))
    if method in ("gptq", "awq"):
        bits = int(q.get("bits") or q.get("w_bit") or 4)
        group = int(q.get("group_size") or q.get("q_group_size") or 128)
        group = h if group <= 0 else group  # -1: one scale per output column
        per = bits / 8 + (2 + bits / 8) / group
        label = f"{method.upper()} {bits}-bit, group size {group}"
        return Quantization(method, bits, per, bool(q.get("lm_head", False)), label)
    if method == "bitsandbytes":
        if q.get("load_in_4bit") or q.get("_load_in_4bit"):
            dq = bool(q.get("bnb_4bit_use_double_quant"))
            per = 0.5 + (1 / 64 + 4 / (64 * 256) if dq else 4 / 64)
            kind = q.get("bnb_4bit_quant_type", "fp4")
            return Quantization(
                method, 4, per, False, f"bitsandbytes 4-bit {kind}{', double quant' if dq else ''}"
            )
        if q.get("load_in_8bit") or q.get("_load_in_8bit"):
            return Quantization(method, 8, 1 + 4 / h, False, "bitsandbytes 8-bit (LLM.int8)")
        raise PlanError(
            f"{src}: quantization_config says bitsandbytes but neither load_in_4bit nor load_in_8bit is true."
        )
    if method == "fp8":
        block = q.get("weight_block_size") or [h, h]
        per = 1 + 4 / (int(block[0]) * int(block[1]))
        return Quantization(method, 8, per, False, "fp8")
    raise PlanError(
        f"{src}: quantization_config.quant_method {method or '(missing)'!r} is not known to the planner "
        "(it reads gptq, awq, bitsandbytes and fp8). Plan with the unquantized model's config.json "
        "for an upper bound, or remove quantization_config from a copy of the config."
    )


def stored_weight_bytes(counts: dict, quant: Quantization | None, bytes_16: float = 2) -> float:
    """Bytes of the base model's weights as loaded: quantized linear layers at their stored size,
    everything else (embeddings, norms, unquantized output layer) at `bytes_16`."""
    if quant is None:
        return counts["total"] * bytes_16
    linear = counts["layers"] * (counts["attention"] + counts["mlp"])
    if quant.lm_head:
        linear += counts["lm_head"]
    return linear * quant.bytes_per_weight + (counts["total"] - linear) * bytes_16
