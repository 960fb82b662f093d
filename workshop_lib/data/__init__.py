"""Data: raw rows as people bring them -> validated chat conversations ("messages") -> JSONL for training.

What participants have rarely looks like what TRL and chat templates expect:

    {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": "..."}, ...], "tools": [...]}

This package reads the usual shapes (JSONL, JSON, CSV, Parquet, dataset folders, hub ids through
`datasets.load_dataset`), detects their format (messages, ShareGPT, Alpaca, prompt/completion,
question/answer columns, OpenAssistant message trees), converts them, validates every conversation
(tool calls and list-of-parts content included) and writes JSONL atomically. Every problem names the
file, the line (or record), the field as the file has it, what is wrong and how to fix it.

One module per concern: read (files, folders, hub ids), source (one source read with its report),
formats (row shapes -> turns), trees (message trees), pairs (preference pairs for DPO), checks (validation),
load (the pipeline and mixtures), ops (dedup, split, stats, writing), command (the `validate` command).
"""

from .checks import validate
from .formats import FORMATS, ROLE_ALIASES, ROLES, convert, detect_format, to_messages
from .load import load_conversations, load_training_rows, read_jsonl
from .ops import _key, deduplicate, overlap, split, stats, text_of, to_dataset, write_jsonl
from .pairs import check_pair, load_preferences, to_pair
from .problems import DataError, Problem, Report
from .read import Row, read_rows, read_source

__all__ = [
    "FORMATS",
    "ROLES",
    "ROLE_ALIASES",
    "DataError",
    "Problem",
    "Report",
    "Row",
    "convert",
    "deduplicate",
    "detect_format",
    "check_pair",
    "load_conversations",
    "load_preferences",
    "to_pair",
    "load_training_rows",
    "overlap",
    "read_jsonl",
    "read_rows",
    "read_source",
    "split",
    "stats",
    "text_of",
    "to_dataset",
    "to_messages",
    "validate",
    "write_jsonl",
    "_key",
]
