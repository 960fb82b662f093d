"""Reading raw records: files (JSONL, JSON, CSV/TSV, Parquet), dataset folders, and datasets by hub id.

Hub ids go through `datasets.load_dataset`, so the usual rules hold: with HF_HUB_OFFLINE=1 a dataset loaded
once (on a login node with network, say) is read from the local cache (HF_DATASETS_CACHE or HF_HOME); a
folder holding a dataset repository's files (`hf download --repo-type dataset ...`, `git clone`) is read
with the same code; a `save_to_disk` folder with `load_from_disk`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .problems import Problem, Report, json_error

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".gz")
# "name", "org/name", optionally ":split" (the split may carry a slice: "train[:1000]")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Row:
    """A raw record and where it came from."""

    line: int
    data: Any
    where: str = "line"


def split_spec(spec: str) -> tuple[str, str | None]:
    """'org/name:test' -> ('org/name', 'test'); a path that exists as given keeps any colon it has."""
    if Path(spec).exists() or ":" not in spec:
        return spec, None
    source, _, split = spec.partition(":")  # the first colon: a split may carry a slice, "train[:100]"
    return source, split or None


def read_rows(path: str | Path, report: Report | None = None) -> list[Row]:
    """Read raw records from a file or a dataset folder (see read_source for hub ids and splits).

    Undecodable JSONL lines become problems (with their line number) instead of stopping the
    read, so one run reports them all. A UTF-8 BOM and CRLF line ends are accepted.
    """
    return read_source(str(path), report=report)


def read_source(
    spec: str, name: str | None = None, split: str | None = None, report: Report | None = None
) -> list[Row]:
    """Records of a file, a folder (save_to_disk, or a dataset repository's files) or a hub dataset id."""
    report = report if report is not None else Report(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            from datasets import load_from_disk

            return _records(_pick_split(load_from_disk(str(path)), split, spec))
        return _records(_load_dataset(str(path), name, split, spec))
    if path.exists():
        if split:
            raise ValueError(
                f"{spec}: a split ({split!r}) was given for a file; files have one split. Drop it."
            )
        return _read_file(path, report)
    if path.suffix.lower() in FILE_SUFFIXES or spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        raise FileNotFoundError(
            f"{spec}: no such file or folder. Check the path (relative paths start at {Path.cwd()})."
        )
    return _records(_load_dataset(spec, name, split, spec))


def _records(ds) -> list[Row]:
    return [Row(i + 1, r, "record") for i, r in enumerate(ds)]


def _pick_split(ds, split: str | None, spec: str):
    """A Dataset as is; from a DatasetDict the split asked for, else train, else the only one."""
    if not hasattr(ds, "keys"):
        if split:
            raise ValueError(f"{spec}: holds one dataset without splits; drop the split {split!r}.")
        return ds
    splits = list(ds.keys())
    if split is None:
        if "train" in splits or len(splits) == 1:
            return ds["train" if "train" in splits else splits[0]]
        raise ValueError(f"{spec}: has splits {', '.join(splits)}; name one, e.g. {spec}:{splits[0]}")
    base = split.split("[")[0]
    if base not in splits:
        raise ValueError(f"{spec}: no split {base!r}; it has {', '.join(splits)}.")
    return ds[base]


def _load_dataset(source: str, name: str | None, split: str | None, spec: str):
    """datasets.load_dataset with the errors people meet offline turned into one way out."""
    import datasets
    from datasets import load_dataset

    try:
        ds = load_dataset(source, name=name, split=split)
    except ValueError as e:  # an unknown split or config: datasets lists the ones it has
        raise ValueError(f"{spec}: {e}") from None
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        cache = datasets.config.HF_DATASETS_CACHE
        raise FileNotFoundError(
            f"{spec}: not a file or folder here, and not readable as a Hugging Face dataset ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}). Fix: check the spelling; on a machine without network, load it once where "
            f"there is network with datasets.load_dataset({source!r}) into the same cache (now {cache}), then set "
            "HF_HUB_OFFLINE=1; or download its files into a folder and give the folder."
        ) from None
    return _pick_split(ds, None, spec) if split is None else ds


def _read_file(path: Path, report: Report) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [Row(i + 1, r, "record") for i, r in enumerate(pq.read_table(path).to_pylist())]
    if suffix == ".arrow":
        from datasets import Dataset

        return _records(Dataset.from_file(str(path)))
    raw = path.read_bytes()
    if suffix == ".gz":  # oasst ships *.jsonl.gz: read the inner format
        import gzip

        raw, suffix = gzip.decompress(raw), Path(path.stem).suffix.lower()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a BOM is dropped, not parsed
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}). Re-save the file as UTF-8.") from None

    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        # reader.line_num is the physical line where the row ended; good enough to find it
        return [Row(reader.line_num, dict(r)) for r in reader]

    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            hint = (
                "repair the JSON (a JSON file holds one array of records; use .jsonl for one record per line)"
            )
            report.problems.append(
                Problem(str(path), e.lineno, "(file)", json_error(e), hint, kind="invalid JSON")
            )
            return []
        if isinstance(data, dict):  # {"data": [...]} and similar wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of records, found {type(data).__name__}.")
        return [Row(i + 1, r, "record") for i, r in enumerate(data)]

    # JSONL (and anything else: read as JSON lines)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):  # splitlines: \n, \r\n, \r
        if not line.strip():
            continue
        try:
            rows.append(Row(number, json.loads(line)))
        except json.JSONDecodeError as e:
            report.rows += 1
            report.dropped += 1
            hint = "repair the line: each line of a .jsonl file is one complete JSON object"
            report.problems.append(
                Problem(str(path), number, "(line)", json_error(e), hint, kind="invalid JSON")
            )
    return rows
