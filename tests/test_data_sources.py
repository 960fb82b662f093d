"""Where data comes from: hub ids (offline, through datasets.load_dataset), dataset folders, weighted mixtures,
and the `validate` command with its exit statuses."""

import json
import os
import subprocess
import sys

import pytest

from workshop_lib import data as D
from workshop_lib.data import command
from workshop_lib.paths import REPO_ROOT

RAW = REPO_ROOT / "data" / "raw"
# the command as users run it; `python -m workshop_lib validate` once cli.py registers data.command
CLI = [sys.executable, "-m", "workshop_lib", "validate"]
SHA = "fdf72ae0827c1cda404aff25b6603abec9e3399b"


def hub_cache(tmp_path):
    """A datasets cache holding "OpenAssistant/oasst1" laid out as an online load_dataset leaves it.

    Online, load_dataset reads the repository's parquet files with the Parquet builder into
    <cache>/OpenAssistant___oasst1/default/0.0.0/<commit>/oasst1-<split>.arrow. Offline (HF_HUB_OFFLINE=1),
    load_dataset finds no hub and falls back to that folder (datasets' CachedDatasetModuleFactory). Here
    the same builder writes it from local parquet files of the public row shape; only the folder's name
    is set by hand (the builder refuses data files outside the named repository).
    """
    from datasets import Dataset
    from datasets.packaged_modules.parquet.parquet import Parquet

    rows = [json.loads(x) for x in (RAW / "oasst_messages.jsonl").read_text(encoding="utf-8").splitlines()]
    ds = Dataset.from_list(rows)  # one schema for both splits, as the hub's parquet files have
    files = {
        "train": tmp_path / "train-00000-of-00001.parquet",
        "validation": tmp_path / "validation-00000-of-00001.parquet",
    }
    ds.select(range(7)).to_parquet(files["train"])
    ds.select(range(7, 9)).to_parquet(files["validation"])
    cache = tmp_path / "hf-datasets"
    Parquet(
        cache_dir=str(cache),
        dataset_name="oasst1",
        hash=SHA,
        data_files={k: str(v) for k, v in files.items()},
    ).download_and_prepare()
    (built,) = (cache / "oasst1").iterdir()  # default-<hash of the data files>
    (cache / "OpenAssistant___oasst1").mkdir()
    built.rename(cache / "OpenAssistant___oasst1" / "default")
    return cache, files


def run_cli(*args, cwd, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_hub_id_offline_from_the_cache_and_mixture(tmp_path, monkeypatch):
    import datasets

    cache, _ = hub_cache(tmp_path)
    # in-process, the two settings HF_DATASETS_CACHE and HF_HUB_OFFLINE=1 give (datasets reads them at import)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    spec = [
        {"path": "OpenAssistant/oasst1", "split": "train", "paths": "best"},
        {"path": "OpenAssistant/oasst1:validation", "weight": 2},
        {"path": str(RAW / "tool_calls.jsonl"), "max_rows": 2},
    ]
    rows, report = D.load_training_rows(spec, seed=1)
    # train: tree 1, best path only (1); validation: tree 2 (1) twice; tool calls: 2 of 4
    assert len(rows) == 1 + 2 + 2, report
    assert sum(r.get("metadata", {}).get("lang") == "en" for r in rows) == 2
    assert sum("tools" in r or r["messages"][0]["content"].startswith("Tiivistä") for r in rows) == 2
    assert "weight 2 -> 2 used" in str(report) and "max_rows 2 -> 2" in str(report)
    assert rows == D.load_training_rows(spec, seed=1)[0]
    env = {"HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    # the command reads hub ids the same way; an id that is not cached says how to get it (exit 2)
    cli = run_cli("OpenAssistant/oasst1:validation", "OpenAssistant/oasst2", cwd=tmp_path, env=env)
    assert cli.returncode == 2 and "OpenAssistant/oasst1: 2 rows (oasst), 1 valid" in cli.stdout, (
        cli.stdout + cli.stderr
    )
    assert "OpenAssistant/oasst2: cannot read" in cli.stdout and "HF_HUB_OFFLINE=1" in cli.stdout


def test_dataset_repository_folder_and_save_to_disk(tmp_path):
    _, files = hub_cache(tmp_path)
    repo = tmp_path / "oasst1-repo" / "data"  # what `hf download --repo-type dataset` leaves
    repo.mkdir(parents=True)
    for f in files.values():
        f.rename(repo / f.name)
    rows, rep = D.load_training_rows(f"{repo.parent}:validation")
    assert rep.format == "oasst" and len(rows) == 1 and rows[0]["metadata"]["lang"] == "en"
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", "a2"]}),
            "test": Dataset.from_dict({"question": ["q3"], "answer": ["a3"]}),
        }
    ).save_to_disk(tmp_path / "dd")
    rows, _ = D.load_training_rows(f"{tmp_path / 'dd'}:test")
    assert rows == [{"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]}]
    assert len(D.load_training_rows(tmp_path / "dd")[0]) == 2  # train by default
    assert (
        D.load_conversations(f"{tmp_path / 'dd'}:test")[0] == rows
    )  # the same spec reads the same everywhere
    with pytest.raises(ValueError, match="no split 'dev'; it has train, test"):
        D.load_training_rows(f"{tmp_path / 'dd'}:dev")


def test_mixture_is_seeded_weighted_and_checked():
    spec = [
        {"path": str(RAW / "alpaca_fi.json"), "weight": 0.5},
        {"path": str(RAW / "qa.csv"), "weight": 1.5, "max_rows": 2},
        str(RAW / "sharegpt_fi.json"),
    ]
    a, rep = D.load_training_rows(spec, seed=3)
    b, _ = D.load_training_rows(spec, seed=3)
    c, _ = D.load_training_rows(spec, seed=4)
    assert a == b and a != c and len(a) == 3 + 3 + 4  # 6 * 0.5, round(2 * 1.5), all 4
    assert rep.kept == 10 and "alpaca" in rep.format and not rep.problems
    alpaca, _ = D.load_conversations(RAW / "alpaca_fi.json")
    assert sum(r in alpaca for r in a) == 3
    with pytest.raises(ValueError, match=r"data\[0\]: unknown key 'wieght' \(did you mean 'weight'\?\)"):
        D.load_training_rows([{"path": "x.jsonl", "wieght": 2}])
    with pytest.raises(ValueError, match=r"data\[1\]: weight must be a number > 0"):
        D.load_training_rows([{"path": "x.jsonl"}, {"path": "y.jsonl", "weight": 0}])
    with pytest.raises(D.DataError, match="broken_chats.jsonl:line 2"):  # problems of any source stop it
        D.load_training_rows([str(RAW / "qa.csv"), str(RAW / "broken_chats.jsonl")])


def validate(capsys, *args) -> tuple[int, str]:
    """The command in-process (the subprocess test above covers the module entry point)."""
    status = command.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_validate_command_statuses_and_drop(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = RAW / "qa.csv"
    broken = tmp_path / "broken_chats.jsonl"
    broken.write_bytes((RAW / "broken_chats.jsonl").read_bytes())
    (tmp_path / "notjson.json").write_text("[{", encoding="utf-8")

    status, out = validate(capsys, good)
    assert status == 0 and "4 valid" in out
    status, out = validate(capsys, good, broken)
    assert status == 1 and f"{broken}:line 3: messages[1].role: unknown role 'assistent'" in out
    assert "11 rows (messages" in out and not (tmp_path / "broken_chats.valid.jsonl").exists()
    status, out = validate(capsys, good, "missing.jsonl")
    assert status == 2 and "missing.jsonl: cannot read: missing.jsonl: no such file" in out
    status, out = validate(capsys, tmp_path / "notjson.json")
    assert status == 2 and "invalid JSON" in out

    status, out = validate(capsys, broken, "--drop")
    written = tmp_path / "broken_chats.valid.jsonl"
    assert status == 1 and f"2 valid conversations written to {written}" in out
    assert len(D.read_jsonl(written)) == 2
    status, out = validate(capsys, broken, "--drop")  # the same rows: nothing rewritten
    assert status == 1 and "already in" in out
    written.write_text("something else\n", encoding="utf-8")
    status, out = validate(capsys, broken, "--drop")  # never replaces a file it did not write
    assert status == 2 and "exists with other rows; it was kept" in out
    assert written.read_text(encoding="utf-8") == "something else\n"
    status, out = validate(capsys, good, "--columns", "user=question,assistant")
    assert status == 2 and "role=column pairs" in out
