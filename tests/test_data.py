"""Data module: every supported format converts; every bad input gives one clear, located message."""

import json

import pytest

from workshop_lib import data as D
from workshop_lib.model import REPO_ROOT

RAW = REPO_ROOT / "data" / "raw"


def write(tmp_path, name, text, binary=False):
    p = tmp_path / name
    p.write_bytes(text if binary else text.encode("utf-8"))
    return p


@pytest.mark.parametrize(
    "name, fmt, n",
    [
        ("alpaca_fi.json", "alpaca", 6),
        ("sharegpt_fi.json", "sharegpt", 4),
        ("prompt_completion.jsonl", "prompt_completion", 4),
        ("qa.csv", "qa", 4),
    ],
)
def test_bundled_raw_samples_convert(name, fmt, n):
    rows, report = D.load_conversations(RAW / name)
    assert report.format == fmt and len(rows) == n and not report.problems
    for r in rows:
        assert D.validate(r["messages"]) == []
        assert r["messages"][-1]["role"] == "assistant"
    # non-ASCII survives the round trip
    assert any("ä" in m["content"] for r in rows for m in r["messages"])


def test_sharegpt_roles_and_system_are_normalised(tmp_path):
    p = write(
        tmp_path,
        "s.json",
        json.dumps(
            [
                {
                    "system": "Be brief.",
                    "conversations": [
                        {"from": "Human", "value": "hi"},
                        {"from": "GPT", "value": "hello"},
                        {"from": "human", "value": "again"},
                        {"from": "bot", "value": "yes"},
                    ],
                }
            ]
        ),
    )
    rows, _ = D.load_conversations(p)
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_alpaca_input_joins_instruction(tmp_path):
    p = write(
        tmp_path,
        "a.jsonl",
        json.dumps({"instruction": "Translate", "input": "kissa", "output": "cat"}) + "\n",
    )
    rows, _ = D.load_conversations(p)
    assert rows[0]["messages"] == [
        {"role": "user", "content": "Translate\n\nkissa"},
        {"role": "assistant", "content": "cat"},
    ]


def test_custom_columns_and_parquet_and_datasets_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    table = {"kysymys": ["Mikä?", "Kuka?"], "vastaus": ["Tämä.", "Minä."]}
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    rows, rep = D.load_conversations(
        tmp_path / "t.parquet", columns={"user": "kysymys", "assistant": "vastaus"}
    )
    assert len(rows) == 2 and rows[1]["messages"][1]["content"] == "Minä."
    Dataset.from_dict({"question": ["q1"], "answer": ["a1"]}).save_to_disk(tmp_path / "ds")
    rows, rep = D.load_conversations(tmp_path / "ds")
    assert rep.format == "qa" and rows[0]["messages"][0]["content"] == "q1"


def test_bom_and_crlf_are_handled(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    p = write(tmp_path, "b.jsonl", b"\xef\xbb\xbf" + (line + "\r\n").encode() * 2, binary=True)
    rows, rep = D.load_conversations(p)
    assert len(rows) == 2 and not rep.problems
    csv = write(tmp_path, "c.csv", b"\xef\xbb\xbfquestion,answer\r\nq,a\r\n", binary=True)
    rows, _ = D.load_conversations(csv)
    assert rows[0]["messages"][0] == {"role": "user", "content": "q"}


BAD = {
    "invalid JSON": ('{"messages": [', "invalid JSON", "(line)"),
    "missing role": (
        [{"content": "x"}, {"role": "assistant", "content": "y"}],
        "missing role",
        "messages[0].role",
    ),
    "unknown role": (
        [{"role": "user", "content": "x"}, {"role": "assistent", "content": "y"}],
        "unknown role",
        "messages[1].role",
    ),
    "empty content": (
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}],
        "empty content",
        "messages[1].content",
    ),
    "non-string content": (
        [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}],
        "content must be a string",
        "messages[0].content",
    ),
    "system not first": (
        [
            {"role": "user", "content": "x"},
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": "y"},
        ],
        "system message that is not first",
        "messages[1].role",
    ),
    "no assistant": (
        [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
        "no assistant turn",
        "messages",
    ),
    "ends with user": (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y"},
            {"role": "user", "content": "z"},
        ],
        "not the assistant",
        "messages[2].role",
    ),
    "consecutive": (
        [
            {"role": "user", "content": "x"},
            {"role": "user", "content": "x2"},
            {"role": "assistant", "content": "y"},
        ],
        "two user turns in a row",
        "messages[1].role",
    ),
    "not a list": ("hello", "non-empty list", "messages"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_row_gives_one_located_message(tmp_path, case):
    body, expected, fld = BAD[case]
    good = json.dumps(
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "ok"}]}
    )
    bad = body if isinstance(body, str) and body.startswith("{") else json.dumps({"messages": body})
    p = write(tmp_path, "x.jsonl", f"{good}\n{good}\n{bad}\n")
    with pytest.raises(D.DataError) as err:
        D.load_conversations(p)
    problems = err.value.report.problems
    assert len(problems) == 1, problems
    (prob,) = problems
    assert prob.line == 3 and prob.field == fld and expected in prob.message and prob.hint
    text = str(err.value)
    assert f"{p}:line 3" in text and "Fix:" in text and "3 rows" in text and "on_error='drop'" in text
    # drop mode keeps the good rows and reports the bad one
    rows, report = D.load_conversations(p, on_error="drop")
    assert len(rows) == 2 and report.dropped == 1 and len(report.problems) == 1


def test_broken_sample_reports_every_problem_with_counts():
    with pytest.raises(D.DataError) as err:
        D.load_conversations(RAW / "broken_chats.jsonl")
    report = err.value.report
    assert report.rows == 11 and report.kept == 2
    assert [p.line for p in report.problems] == sorted(p.line for p in report.problems)
    assert "9 with problems" in str(err.value)


def test_unknown_format_and_missing_file(tmp_path):
    p = write(tmp_path, "u.jsonl", json.dumps({"text": "just text"}) + "\n")
    with pytest.raises(D.DataError, match=r"unrecognised format \(fields: text\)"):
        D.load_conversations(p)
    with pytest.raises(FileNotFoundError, match="no such file"):
        D.load_conversations(tmp_path / "missing.jsonl")
    bad = write(tmp_path, "latin1.jsonl", "caf\xe9".encode("latin-1"), binary=True)
    with pytest.raises(ValueError, match="not UTF-8"):
        D.load_conversations(bad)


def test_json_array_syntax_error_has_line(tmp_path):
    p = write(
        tmp_path, "a.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]'
    )
    with pytest.raises(D.DataError, match=r"a.json:line 3: \(file\): invalid JSON"):
        D.load_conversations(p)


def test_dedup_split_overlap_stats():
    rows, _ = D.load_conversations(REPO_ROOT / "data" / "synthetic" / "train.jsonl")
    doubled = rows[:50] + rows[:50]
    unique, dropped = D.deduplicate(doubled)
    assert dropped == 50 and unique == rows[:50]
    a_train, a_eval = D.split(rows, 0.1, seed=3)
    b_train, b_eval = D.split(rows, 0.1, seed=3)
    assert (
        a_eval == b_eval and len(a_eval) == round(len(rows) * 0.1) and len(a_train) + len(a_eval) == len(rows)
    )
    assert D.split(rows, 0.1, seed=4)[1] != a_eval
    assert D.overlap(a_train, a_eval) == 0 and D.overlap(rows, rows[:7]) == 7
    s = D.stats(rows)
    assert (
        s["conversations"] == len(rows)
        and 0 < s["with_system"] < len(rows)
        and 0 < s["multi_turn"] < len(rows)
    )


def test_bundled_synthetic_splits_are_valid_and_disjoint():
    train = D.read_jsonl(REPO_ROOT / "data" / "synthetic" / "train.jsonl")
    held_out = D.read_jsonl(REPO_ROOT / "data" / "synthetic" / "eval.jsonl")
    assert len(train) >= 1000 and len(held_out) >= 100 and D.overlap(train, held_out) == 0


def test_write_jsonl_is_atomic_and_never_overwrites(tmp_path):
    out = tmp_path / "o.jsonl"
    D.write_jsonl([{"messages": []}], out)
    D.write_jsonl([{"messages": []}], out)  # the same rows again: a no-op, so notebook cells can rerun
    with pytest.raises(FileExistsError, match="overwrite=True"):
        D.write_jsonl([{"messages": [1]}], out)

    def rows_then_fail():
        yield {"messages": [1]}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        D.write_jsonl(rows_then_fail(), out, overwrite=True)
    assert out.read_text() == '{"messages": []}\n'  # untouched
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.jsonl"]  # no temp file left behind


def test_lima_and_dolly_shapes(tmp_path):
    lima = write(
        tmp_path,
        "lima.jsonl",
        json.dumps(
            {"conversations": ["Mikä on sisu?", "Sitkeyttä.", "Entä?", "Sinnikkyyttä."], "source": "lima"}
        )
        + "\n",
    )
    rows, rep = D.load_conversations(lima)
    assert rep.format == "sharegpt"
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    dolly = write(
        tmp_path,
        "dolly.jsonl",
        json.dumps(
            {
                "instruction": "Tiivistä.",
                "context": "Pitkä teksti.",
                "response": "Lyhyt.",
                "category": "summarization",
            }
        )
        + "\n",
    )
    rows, rep = D.load_conversations(dolly)
    assert rep.format == "alpaca"
    assert rows[0]["messages"] == [
        {"role": "user", "content": "Tiivistä.\n\nPitkä teksti."},
        {"role": "assistant", "content": "Lyhyt."},
    ]


# ----------------------------------------------------------------------------- issue 12: errors people met
@pytest.mark.parametrize(
    "name, text",
    [("e.jsonl", ""), ("b.jsonl", "\n  \n"), ("a.json", "[]"), ("h.csv", "question,answer\n")],
)
def test_empty_file_is_an_error_naming_the_file(tmp_path, name, text):
    p = write(tmp_path, name, text)
    with pytest.raises(D.DataError, match=r"no rows: the file is empty") as err:
        D.load_conversations(p)
    assert str(p) in str(err.value)
    rows, report = D.load_conversations(p, on_error="drop")
    assert rows == [] and report.problems[0].kind == "empty file"


def test_alpaca_row_without_output_names_the_field(tmp_path):
    p = write(tmp_path, "a.jsonl", json.dumps({"instruction": "Käännä", "input": "kissa"}) + "\n")
    with pytest.raises(D.DataError) as err:
        D.load_conversations(p)
    (prob,) = err.value.report.problems
    assert (
        prob.field == "output" and "missing field 'output'" in prob.message and prob.kind == "missing field"
    )


def test_sharegpt_problems_name_the_original_field(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hei"}, {"from": "gpt", "value": None}]},
        {
            "system": "Ole lyhyt.",
            "conversations": [{"from": "human", "value": "Hei"}, {"from": "gtp", "value": "x"}],
        },
    ]
    p = write(tmp_path, "s.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _, report = D.load_conversations(p, on_error="drop")
    null, role = report.problems
    assert (null.line, null.field) == (1, "conversations[1].value") and "null" in null.message
    assert "quote" not in null.hint  # a null is missing text, not a number to quote
    # the system field is prepended, yet the problem still points at conversations[1], not messages[2]
    assert (role.line, role.field) == (2, "conversations[1].from") and "unknown role 'gtp'" in role.message


def test_row_that_is_a_json_array(tmp_path):
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    p = write(tmp_path, "r.jsonl", json.dumps(turns) + "\n" + json.dumps([1, 2]) + "\n")
    _, report = D.load_conversations(p, on_error="drop")
    a, b = report.problems
    assert "the row is a JSON array, not an object" in a.message and '{"messages": [...]}' in a.hint
    assert "JSON array" in b.message and "messages" not in b.hint
    assert "fields: list" not in str(report)


def test_json_messages_read_right(tmp_path):
    p = write(tmp_path, "u.jsonl", '{"messages": "unterminated\n')
    _, report = D.load_conversations(p, on_error="drop")
    (prob,) = report.problems
    assert prob.message == "invalid JSON: Unterminated string starting at column 14"
    p = write(tmp_path, "u.json", '[{"a": 1}')
    _, report = D.load_conversations(p, on_error="drop")
    assert " at at " not in str(report) and "at column" in str(report)


def test_fields_in_other_case_get_a_rename_hint(tmp_path):
    p = write(tmp_path, "c.jsonl", json.dumps({"Instruction": "Käännä", "Output": "cat"}) + "\n")
    with pytest.raises(D.DataError, match="rename them in lower case"):
        D.load_conversations(p)
