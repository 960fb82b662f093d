"""The trainer kinds a recipe can name (`trainer: sft | dpo | grpo`), in one table.

Each kind says which TRL config and trainer it uses, what its data files hold, which notebook teaches it
(and runs it in a batch job), and the kit's defaults for its TRL config, each with the reason a participant
reads in that notebook. Everything that depends on the trainer looks it up here, so a new TRL trainer is one
more row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Defaults every trainer shares: (value, why).
_SHARED: dict[str, tuple[Any, str]] = {
    "num_train_epochs": (1, "one pass over the data"),
    "per_device_train_batch_size": (8, "conversations per process per step"),
    "gradient_accumulation_steps": (1, "raise it to grow the global batch without more memory"),
    "lr_scheduler_type": ("cosine", "decay to zero by the end"),
    "warmup_steps": (0.03, "a float below 1 is a fraction of the steps: 3% warm-up"),
    "logging_steps": (10, "one line of metrics.jsonl every 10 steps"),
    "save_strategy": ("steps", "checkpoints during training: a preempted job resumes from the last one"),
    "save_steps": (200, "a checkpoint every 200 steps"),
    "save_total_limit": (2, "checkpoints are large: keep the last two"),
    "eval_strategy": ("epoch", "held-out loss after every epoch"),
    "report_to": (
        "tensorboard",
        "event files in <run>/runs/ (rank 0 only): `tensorboard --logdir runs`; metrics.jsonl as well",
    ),
    "seed": (42, "the same data order and initialisation on every run"),
}


@dataclasses.dataclass(frozen=True)
class TrainerKind:
    """One TRL trainer as the kit uses it."""

    name: str  # the recipe's `trainer` value
    config: str  # TRL's config class (its fields are the recipe's TRL keys)
    trainer: str  # TRL's trainer class
    data: str  # what train_file/eval_file hold: "messages" (conversations) or "preference" (pairs)
    notebook: str  # the notebook that teaches it and that a batch job executes
    defaults: dict[str, tuple[Any, str]]  # the kit's defaults for the config: (value, why)
    what: str  # one line for messages and tables

    def config_class(self) -> type:
        import trl

        return getattr(trl, self.config)

    def trainer_class(self) -> type:
        import trl

        return getattr(trl, self.trainer)


KINDS: dict[str, TrainerKind] = {
    "sft": TrainerKind(
        name="sft",
        config="SFTConfig",
        trainer="SFTTrainer",
        data="messages",
        notebook="notebooks/03_train.ipynb",
        what="supervised fine-tuning: learn the answers",
        defaults={
            "assistant_only_loss": (True, "train on the answers only: the prompt is given, not predicted"),
            "padding_free": (
                True,
                "no pad tokens computed: conversations are concatenated (same loss, faster)",
            ),
            "learning_rate": (2e-5, "a safe rate for full fine-tuning of real models (LoRA takes ~1e-4)"),
            **_SHARED,
            "max_length": (2048, "longer conversations are cut (notebook 02 shows how many)"),
        },
    ),
    "dpo": TrainerKind(
        name="dpo",
        config="DPOConfig",
        trainer="DPOTrainer",
        data="preference",
        notebook="notebooks/06_preference_tuning.ipynb",
        what="preference tuning: prefer the chosen answer over the rejected one",
        defaults={
            "beta": (0.1, "how far the policy may move from the reference model (higher: stay closer)"),
            "learning_rate": (
                5e-7,
                "DPO moves a trained model a little: rates ~100x below SFT's (LoRA ~5e-6)",
            ),
            **_SHARED,
            "max_length": (1024, "prompt plus answer, cut from the end (truncation_mode keep_start)"),
        },
    ),
    "grpo": TrainerKind(
        name="grpo",
        config="GRPOConfig",
        trainer="GRPOTrainer",
        data="prompts",
        notebook="notebooks/07_grpo.ipynb",
        what="reinforcement learning with verifiable rewards: sample answers, reward the right ones",
        defaults={
            "learning_rate": (
                1e-6,
                "TRL's rate for real models: each step moves towards answers sampled a moment ago",
            ),
            "num_generations": (
                8,
                "answers sampled per prompt: each is rewarded relative to its group's mean",
            ),
            "max_completion_length": (
                256,
                "a sampled answer is cut here (and a cut answer rarely earns a reward)",
            ),
            "temperature": (1.0, "sampling temperature: the group needs different answers to compare"),
            "beta": (0.0, "no KL penalty, so no reference model in memory (TRL's default since DAPO)"),
            **_SHARED,
            "per_device_train_batch_size": (32, "completions per process per step: 4 prompts x 8 answers"),
            "eval_strategy": (
                "no",
                "GRPO's evaluation samples answers too: the kit scores held-out prompts instead",
            ),
            "logging_steps": (5, "rewards move quickly: a line every 5 steps"),
        },
    ),
}
TRAINERS = tuple(KINDS)


def trl_fields(trainer: str) -> dict[str, dataclasses.Field]:
    """The fields of the trainer's TRL config that a recipe may set."""
    return {f.name: f for f in dataclasses.fields(KINDS[trainer].config_class()) if f.init}
