"""Before a run folder exists: check the model, tokenizer, template and data, so a failed start leaves nothing.

train.fit calls `check` first (the `train` command, the Slurm job's `workshop_lib train`, several processes
from a notebook): it loads the model's config and tokenizer, checks the chat template and reads and tokenizes
the data, the things that fail for foreseen reasons (a typo in a path, a model not in the offline cache, a
template that drops system prompts, a file without assistant turns). Those come back as one StartError of one
or two lines with the fix, and no run folder has been created. The tokenized data is what training then uses.

The hub: with HF_HUB_OFFLINE set, nothing is asked of it. Otherwise one quick probe (a TCP connection to
the hub, 3 s) tells whether it can be reached; if not, the run works offline from the cache at once instead
of after transformers' 50 s of retries.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from . import build
from .chat.templates import TemplateError
from .data.problems import DataError
from .model import is_hub_id, resolve_model
from .prefetch import offline
from .recipe import Recipe, RecipeError

PROBE_S = 3.0


class StartError(RecipeError):
    """A foreseen reason why the run cannot start: one or two lines with the fix; nothing was created."""


def hub_offline() -> bool:
    """True when the hub is off limits: HF_HUB_OFFLINE is set, or one quick probe cannot reach it (then
    HF_HUB_OFFLINE is set for this process, so that cached models load without retries)."""
    if offline(os.environ.get("HF_HUB_OFFLINE")):
        _offline()
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=PROBE_S):
            return False
    except OSError:
        _offline()
        print(f"preflight: the hub ({url.hostname}) cannot be reached: working offline from the cache")
        return True


def _offline() -> None:
    """HF_HUB_OFFLINE for this process, also where huggingface_hub read the variable already (at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub

        hub.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def check(recipe: Recipe) -> tuple[Any, Any, Any]:
    """The model's config, tokenizer and template, and the data, checked; returns (tokenizer, train, eval)
    as training takes them. Raises StartError (foreseen, one message) before anything is written."""
    offline = hub_offline() if is_hub_id(str(recipe.model)) else False
    try:
        from transformers import AutoConfig  # heavy: imported when a run starts, not with the CLI

        AutoConfig.from_pretrained(resolve_model(recipe.model))
        tokenizer, _ = build.tokenizer(recipe)
    except (OSError, ValueError) as e:
        if isinstance(e, TemplateError | RecipeError):
            raise StartError(f"model {recipe.model}: {e}") from None
        raise StartError(_model_message(recipe.model, e, offline)) from None
    try:
        train_ds, eval_ds, _ = build.datasets(recipe, tokenizer)
    except (DataError, TemplateError, FileNotFoundError) as e:
        raise StartError(_two_lines(str(e))) from None
    return tokenizer, train_ds, eval_ds


def _two_lines(text: str) -> str:
    """What went wrong (the first line) and the fix (the last): a data report's middle lines are counts."""
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return "\n".join(lines[:1] + lines[-1:]) if len(lines) > 2 else "\n".join(lines)


def _model_message(model: str, e: Exception, offline: bool) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if is_hub_id(model) and offline:
        return (
            f"model {model!r} is not in the local cache and the hub is offline (HF_HUB_OFFLINE or unreachable). "
            f"Fetch it where there is internet: python -m workshop_lib prefetch {model} (into the HF_HOME the "
            "job reads), or set model to a local folder."
        )
    if is_hub_id(model):
        return (
            f"model {model!r}: {first}. Check the name on the hub (org/name), or set model to a local folder."
        )
    return f"model {model!r}: {first}"
