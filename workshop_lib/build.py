"""Builders: recipe -> tokenizer, datasets, model, LoraConfig, TRL config keyword arguments, callbacks.

Notebooks 03 (SFT) and 06 (DPO) call them one per cell and build TRL's config and trainer themselves, so a
participant sees (and can change) every object; `worker.train` calls the same functions in every process of
a multi-process or multi-node run. Each builder does one thing and says what it decided.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import chat, data
from .control import STOP_FILE
from .model import resolve_model
from .recipe import Recipe, RecipeError
from .trainers import KINDS


def device_kind() -> str:
    """'cuda' (ROCm builds too) or 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tokenizer(recipe: Recipe):
    """The model's tokenizer made ready for training: the recipe's template if it names one, a pad token,
    the chat template checked and made training-ready where that is safe (chat.prepare_tokenizer).
    Returns (tokenizer, report); the report says what was found and done, or the call refuses clearly."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(recipe.model))
    report = chat.prepare_tokenizer(tok, recipe.template, recipe.system_prompt)
    return tok, report


def rows(spec: Any, seed: int = 0, kind: str = "messages") -> list[dict]:
    """Validated conversations (kind "messages") or preference pairs ("preference") from a file, folder,
    hub id or weighted mixture (data.load_training_rows)."""
    found, _ = data.load_training_rows(spec, seed=seed, kind=kind)
    return found


def row_kind(recipe: Recipe) -> str:
    """What the recipe's data files hold: preference pairs for DPO, conversations otherwise (GRPO makes its
    prompts from conversations)."""
    return "preference" if KINDS[recipe.trainer].data == "preference" else "messages"


def datasets(recipe: Recipe, tokenizer) -> tuple[Any, Any, list[dict]]:
    """Validated rows -> the Datasets the recipe's trainer takes, and the held-out rows.

    SFT: tokenized, labelled conversations (input_ids + labels). The kit labels the data itself
    (chat.encode: the labels notebook 02 shows); with padding-free batches TRL does not cut long rows, so
    they are cut here, and rows left without any answer token are dropped.
    DPO: prompt/chosen/rejected conversations, which DPOTrainer tokenizes with the chat template itself.
    """
    if KINDS[recipe.trainer].data == "preference":
        return _preference_datasets(recipe, tokenizer)
    if KINDS[recipe.trainer].data == "prompts":
        return _prompt_datasets(recipe, tokenizer)
    sft = recipe.trl
    cut = sft.get("max_length") if sft.get("padding_free") and not sft.get("packing") else None

    def prepare(found: list[dict]):
        ds = chat.tokenize_dataset(
            data.to_dataset(found),
            tokenizer,
            assistant_only=sft.get("assistant_only_loss", True),
            system_prompt=recipe.system_prompt,
        )
        if cut:
            ds = ds.map(lambda r: {"input_ids": r["input_ids"][:cut], "labels": r["labels"][:cut]})
            ds = ds.filter(lambda r: any(t != chat.IGNORE for t in r["labels"]))
            ds = ds.flatten_indices()  # a filtered dataset reads through an index map: 1.6-4x slower batches
        return ds

    seed = int(sft.get("seed", 0))
    train_ds = prepare(rows(recipe.train_file, seed))
    eval_rows = rows(recipe.eval_file, seed) if recipe.eval_file else []
    return train_ds, (prepare(eval_rows) if eval_rows else None), eval_rows


def _preference_datasets(recipe: Recipe, tokenizer) -> tuple[Any, Any, list[dict]]:
    seed = int(recipe.trl.get("seed", 0))
    merge = chat.resolve_system_prompt(tokenizer, recipe.system_prompt) == "merge"

    def prepare(found: list[dict]):
        if merge:
            found = [{**p, "prompt": chat.merge_system_prompt(p["prompt"])} for p in found]
        return data.to_dataset(found)

    train_rows = rows(recipe.train_file, seed, "preference")
    eval_rows = rows(recipe.eval_file, seed, "preference") if recipe.eval_file else []
    return prepare(train_rows), (prepare(eval_rows) if eval_rows else None), eval_rows


def _prompt_datasets(recipe: Recipe, tokenizer) -> tuple[Any, Any, list[dict]]:
    """GRPO: every assistant turn of the conversations becomes a prompt with its reference answer; the held-out
    conversations are returned whole for exact match before and after."""
    from .data.prompts import to_prompts

    seed = int(recipe.trl.get("seed", 0))

    def prepare(found: list[dict]):
        prompts = to_prompts([{"messages": as_trained(recipe, c["messages"], tokenizer)} for c in found])
        return data.to_dataset(prompts)

    train_rows = rows(recipe.train_file, seed)
    eval_rows = rows(recipe.eval_file, seed) if recipe.eval_file else []
    return prepare(train_rows), (prepare(eval_rows) if eval_rows else None), eval_rows


DEFAULT_REWARDS = ("correct", "well_formed")


def reward_funcs(recipe: Recipe) -> list:
    """GRPO's reward functions, by the recipe's names (workshop_lib.rewards)."""
    from .rewards import REWARDS

    return [REWARDS[name] for name in recipe.rewards or DEFAULT_REWARDS]


def trainer_kwargs(recipe: Recipe) -> dict[str, Any]:
    """What the recipe's TRL trainer takes beyond model, args, data, tokenizer, LoRA and callbacks."""
    return {"reward_funcs": reward_funcs(recipe)} if recipe.trainer == "grpo" else {}


def trainer_class(recipe: Recipe) -> type:
    """TRL's trainer for the recipe: SFTTrainer or DPOTrainer."""
    return KINDS[recipe.trainer].trainer_class()


def model(recipe: Recipe, tokenizer):
    """The base model in the dtype the device wants (4-bit for QLoRA), embeddings grown for new tokens,
    generation stopping at the template's end of turn."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if device_kind() == "cuda" else torch.float32}
    if recipe.method == "qlora":
        from transformers import BitsAndBytesConfig

        if device_kind() != "cuda":  # a recipe may be planned and submitted from anywhere; training needs it
            raise RecipeError(
                f"{recipe.source}: method: qlora quantizes the base model to 4 bits with bitsandbytes, which needs "
                "a CUDA GPU; none is visible here. Train it on the GPU nodes (submit), or use method: lora here."
            )

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    m = AutoModelForCausalLM.from_pretrained(resolve_model(recipe.model), **kwargs)
    if len(tokenizer) > m.get_input_embeddings().weight.shape[0]:
        m.resize_token_embeddings(len(tokenizer))
    eot = chat.end_of_turn_token(tokenizer) or tokenizer.eos_token
    m.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(eot)
    m.generation_config.pad_token_id = tokenizer.pad_token_id
    trainer_log = logging.getLogger("transformers.trainer")
    for old in [f for f in trainer_log.filters if isinstance(f, TiedWeightsAreNotMissing)]:
        trainer_log.removeFilter(old)
    trainer_log.addFilter(TiedWeightsAreNotMissing(m))  # resuming this model: no false alarm
    return m


class TiedWeightsAreNotMissing(logging.Filter):
    """On resume, transformers warns that lm_head.weight is 'missing' from a checkpoint of a model with tied
    embeddings: it is not missing, it is the embedding matrix. Drop only that warning."""

    def __init__(self, model):
        super().__init__()
        ties = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
        self.tied = set(getattr(model, "_tied_weights_keys", None) or {}) if ties else set()  # untied: warn

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "missing keys in the checkpoint" not in msg or not self.tied:
            return True
        return not all(any(t in part for t in self.tied) for part in msg.split("[", 1)[-1].split(","))


LORA_DEFAULTS: dict[str, tuple[Any, str]] = {
    "r": (16, "rank of the low-rank update: 8-64 is usual; higher learns more and costs more"),
    "lora_alpha": (32, "scale alpha/r = 2: the update's weight, kept when r changes"),
    "lora_dropout": (0.0, "no dropout: short fine-tuning runs rarely overfit through the adapters"),
    "target_modules": (
        "all-linear",
        "adapters beside every linear layer (QLoRA paper): better than q,v only",
    ),
}


def lora_args(recipe: Recipe, model=None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """Keyword arguments for PEFT's LoraConfig (None for method full): the recipe's keys over the kit's
    defaults, and {key: why} for what the kit chose. If the tokenizer brought new tokens (the model's
    embeddings grew), their embeddings must train, so those modules are saved whole."""
    if recipe.method == "full":
        return None, {}
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"task_type": "CAUSAL_LM"}
    why = {"task_type": "a causal language model: PEFT wraps it for generation"}
    for key, (value, reason) in LORA_DEFAULTS.items():
        if key not in recipe.lora:
            kwargs[key], why[key] = value, reason
    kwargs.update(recipe.lora)
    base_vocab = AutoConfig.from_pretrained(resolve_model(recipe.model)).vocab_size
    if model is not None and model.get_input_embeddings().weight.shape[0] > base_vocab:
        if "modules_to_save" not in kwargs:
            kwargs["modules_to_save"] = ["embed_tokens", "lm_head"]
            why["modules_to_save"] = "the tokenizer added tokens: their new embeddings must train too"
    return kwargs, why


def lora_config(recipe: Recipe, model=None):
    """PEFT's LoraConfig built from lora_args (None for full fine-tuning): what the workers use."""
    kwargs, _ = lora_args(recipe, model)
    if kwargs is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**kwargs)


def as_trained(recipe: Recipe, messages: list[dict], tokenizer=None) -> list[dict]:
    """One conversation as training sees it (system prompt merged when the recipe says so, or, with
    system_prompt: auto, when the tokenizer's template drops or rejects it): what the token view in notebook
    03 shows."""
    mode = recipe.system_prompt
    if tokenizer is not None:
        mode = chat.resolve_system_prompt(tokenizer, mode)
    return chat.merge_system_prompt(messages) if mode == "merge" else messages


def trl_args(recipe: Recipe) -> tuple[dict[str, Any], dict[str, str]]:
    """Keyword arguments for SFTConfig or DPOConfig: the recipe's, plus what the kit decides for this device
    and run, each decision with its reason. Returns (kwargs, {key: why}) so notebooks 03 and 06 show both."""
    args = dict(recipe.trl)
    why: dict[str, str] = {}

    def decide(key: str, value: Any, reason: str, force: bool = True) -> None:
        if force or key not in args:
            args[key] = value
            why[key] = reason

    gpu = device_kind() == "cuda"
    sft = recipe.trainer == "sft"
    if sft:
        decide(
            "assistant_only_loss",
            False,
            "the recipe's assistant_only_loss is done already: the kit put -100 on every token but the answers "
            "(chat.encode, section 3); False keeps TRL from masking again",
        )
    if "activation_checkpointing" not in args and "gradient_checkpointing" not in args:
        decide(
            "activation_checkpointing", gpu, "GPU: memory for speed" if gpu else "on a CPU it only costs time"
        )
    if gpu:
        decide("bf16", True, "bfloat16 mixed precision on GPUs", force=False)
    else:
        decide(
            "use_cpu", True, "no GPU: without it, CPU workers form a group but each trains everything alone"
        )
        decide(
            "bf16", bool(args.get("bf16", False)), "TRL turns bf16 on by default; on a CPU only on request"
        )
    if sft and args.get("padding_free") and not args.get("packing"):
        decide(
            "max_length", None, "padding-free rows are cut by the kit during tokenization (TRL refuses one)"
        )
    if recipe.world_size > 1 or recipe.distributed != "ddp":
        _distribution(recipe, args, decide, gpu)
    if recipe.method == "full":
        decide(
            "ddp_find_unused_parameters",
            False,
            "every weight gets a gradient: skip DDP's search",
            force=False,
        )
    if args.get("report_to") is None:  # `-p report_to none` arrives as None, which transformers refuses
        decide("report_to", "none", "None: no reporting integrations")
    decide("output_dir", str(recipe.run_dir), "the run folder")
    decide(
        "ddp_timeout", recipe.collective_timeout_s, "collective_timeout_s: a stuck collective fails the job"
    )
    decide("disable_tqdm", True, "one progress display: the kit's lines or live plot from metrics.jsonl")
    decide("log_level", "warning", "TRL's info lines would repeat what the kit shows")
    decide("dataloader_num_workers", 0, "the data is tokenized already: no loader processes to fork")
    decide("save_only_model", False, "checkpoints keep optimizer and RNG states: resume is exact")
    if recipe.trainer == "grpo":  # its batches are prompts, not input_ids: the trainer's count would warn
        decide(
            "include_num_input_tokens_seen",
            "no",
            "GRPOTrainer counts its prompts and completions itself, into the count checkpoints keep",
        )
    else:
        decide(
            "include_num_input_tokens_seen",
            "non_padding",
            "the trainer counts tokens and saves the count in checkpoints: totals survive a resume",
        )
    if args.get("eval_strategy", "no") != "no" and not recipe.eval_file:
        decide("eval_strategy", "no", "no eval_file")
    return args, why


def _distribution(recipe: Recipe, args: dict, decide, gpu: bool) -> None:
    """FSDP or DeepSpeed ZeRO settings (DDP needs none: the trainer wraps the model itself)."""
    if recipe.distributed == "fsdp":
        decide("fsdp", "full_shard auto_wrap", "shard weights, gradients and optimizer states", force=False)
        fsdp = {
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "use_orig_params": True,
            "sync_module_states": True,
            "cpu_ram_efficient_loading": False,
        }
        decide("fsdp_config", fsdp, "wrap each decoder layer", force=False)
    elif recipe.distributed in ("zero2", "zero3"):
        stage = int(recipe.distributed[-1])
        zero: dict[str, Any] = {"stage": stage, "overlap_comm": gpu, "contiguous_gradients": True}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        config = {
            "zero_optimization": zero,
            "bf16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
        }
        decide("deepspeed", config, f"DeepSpeed ZeRO stage {stage}; 'auto' values come from SFTConfig", False)


def trl_config(recipe: Recipe):
    """TRL's SFTConfig or DPOConfig built from trl_args."""
    return KINDS[recipe.trainer].config_class()(**trl_args(recipe)[0])


def callbacks(recipe: Recipe) -> list:
    """The kit's callbacks: the live metrics file and checkpoint-and-stop on request."""
    from .callbacks import MetricsJSONL, StopOnRequest

    return [MetricsJSONL(Path(recipe.run_dir) / "metrics.jsonl"), StopOnRequest(recipe.run_dir / STOP_FILE)]
