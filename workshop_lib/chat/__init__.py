"""Chat templates made visible: render, tokenize + label, show, check and fix, measure lengths.

One concern per module: `templates` (bundled templates, load, render), `encode` (labels exactly as
training computes them, system-prompt merging, batching), `samples` (one sample per answer, for templates
that render earlier turns differently), `view` (token by token), `probe` (what a template accepts, the
report types), `checks` (each check a small function), `rewrite` + `fix` (pad token, making a model's
template training-ready), `trl_templates` (TRL's training template for a family), `lengths` (what a max length would cut). Everything public is `chat.X`.
"""

from .checks import check_template
from .encode import (
    SYSTEM_PROMPT_MODES,
    collate,
    encode,
    encode_with_masks,
    end_of_turn_token,
    merge_system_prompt,
    resolve_system_prompt,
    system_prompt_lost,
    tokenize_dataset,
)
from .fix import ensure_pad_token, fix_template, prepare_tokenizer, same_rendering
from .lengths import LengthReport, length_report
from .probe import NON_ASCII, TOOL_CALL, Check, CheckReport, conversation_set, probe
from .samples import encode_per_answer, has_reasoning
from .templates import (
    CHECK_REASONING,
    GENERATION_RE,
    IGNORE,
    PER_ANSWER,
    REASONING_KEYS,
    SAMPLE,
    TEMPLATE_TOKENS,
    TEMPLATES_DIR,
    TemplateError,
    apply_template,
    load_template,
    needs_reasoning,
    per_answer,
    render,
    with_reasoning,
)
from .view import TokenView, token_view

__all__ = [
    "CHECK_REASONING",
    "GENERATION_RE",
    "IGNORE",
    "PER_ANSWER",
    "REASONING_KEYS",
    "NON_ASCII",
    "SAMPLE",
    "SYSTEM_PROMPT_MODES",
    "TOOL_CALL",
    "TEMPLATES_DIR",
    "TEMPLATE_TOKENS",
    "Check",
    "CheckReport",
    "LengthReport",
    "TemplateError",
    "TokenView",
    "apply_template",
    "check_template",
    "collate",
    "conversation_set",
    "encode",
    "encode_per_answer",
    "encode_with_masks",
    "end_of_turn_token",
    "ensure_pad_token",
    "fix_template",
    "has_reasoning",
    "length_report",
    "load_template",
    "merge_system_prompt",
    "needs_reasoning",
    "per_answer",
    "prepare_tokenizer",
    "probe",
    "render",
    "resolve_system_prompt",
    "same_rendering",
    "system_prompt_lost",
    "token_view",
    "tokenize_dataset",
    "with_reasoning",
]
