"""TRL's training templates (trl/chat_templates): which one belongs to a model's template, and when the kit may
take it in place of the model's own (identical renderings, or only the stop token written after the last answer).
"""

from __future__ import annotations

from .probe import TOOL_CALL, conversation_set
from .templates import TemplateError, template_of, try_render


def appended_end(tokenizer, original: str, candidate: str) -> str | None:
    """The special token `candidate` writes after a conversation's last answer where the original writes
    nothing more (GLM: the next turn's role token, which generation stops on), if that is the only difference
    on every test conversation; else None."""
    added = set()
    for conv, gen in [*conversation_set(), (TOOL_CALL, False)]:
        a = try_render(tokenizer, original, conv, gen)
        b = try_render(tokenizer, candidate, conv, gen)
        if isinstance(a, Exception) or isinstance(b, Exception):
            if isinstance(a, Exception) != isinstance(b, Exception):
                return None
            continue
        if a != b:
            if gen or conv[-1]["role"] != "assistant" or not b.startswith(a):
                return None
            added.add(b[len(a) :])
    end = added.pop() if len(added) == 1 else ""
    return end if end.strip() in tokenizer.get_added_vocab() else None


def trl_candidate(tokenizer, text: str) -> str | None:
    """TRL's training template for this exact published template (Llama 3, Gemma, Qwen2.5/3, Phi-3...)."""
    try:
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:
        return None
    saved = tokenizer.chat_template
    tokenizer.chat_template = text
    try:
        return get_training_chat_template(processing_class=tokenizer)
    except Exception:  # ValueError: not a family TRL knows; anything else: TRL's probe failed on it
        return None
    finally:
        tokenizer.chat_template = saved


def trl_file(candidate: str | None) -> str | None:
    """The path of TRL's bundled template file with this text, if any."""
    if candidate is None:
        return None
    import trl.chat_template_utils as ctu

    for path in sorted(ctu._CHAT_TEMPLATES_DIR.glob("*_training.jinja")):
        if path.read_text(encoding="utf-8") == candidate:
            return str(path)
    return None


def use_trl_template(tokenizer) -> list[str]:
    """`template: trl`: TRL's training template for the model's own template, or a clear refusal."""
    text = template_of(tokenizer)
    trl = trl_candidate(tokenizer, text)
    if trl is None:
        raise TemplateError(
            "template: trl asks for TRL's training template for this model's chat template, but TRL has none for "
            "it (TRL recognises a family by the exact text of its published template). Leave template unset: the "
            "kit makes the model's own template training-ready or says why it cannot."
        )
    tokenizer.chat_template = trl
    return [
        f"template: trl: TRL's training template for this family ({trl_file(trl) or 'trl'}), one sample per conversation"
    ]
