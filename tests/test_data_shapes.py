"""Public row shapes: OpenAssistant message trees, tool calling, list-of-parts content, reasoning fields."""

import json

import pytest

from workshop_lib import data as D
from workshop_lib.paths import REPO_ROOT

RAW = REPO_ROOT / "data" / "raw"


def write_jsonl(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def texts(row):
    return [(m["role"], m["content"]) for m in row["messages"]]


def test_flat_message_tree_every_path_and_best_path():
    rows, rep = D.load_conversations(RAW / "oasst_messages.jsonl")
    # tree 1: a ranked fork at the first answer, a follow-up under the best one (whose rank-1 sibling was
    # deleted), a prompter leaf "Kiitos!" under the other (cut: no answer to learn); tree 2: one exchange
    assert rep.format == "oasst" and rep.rows == 9 and len(rows) == 3 and not rep.problems
    assert [len(r["messages"]) for r in rows] == [4, 2, 2]
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert not any("En ole varma" in m["content"] for r in rows for m in r["messages"])  # deleted
    assert any("deleted" in n for n in rep.notes) and any("3 conversations" in n for n in rep.notes)
    meta = rows[0]["metadata"]
    assert meta["lang"] == "fi" and meta["message_tree_id"] == "6ab24d72-0181-4594-a9cd-deaf170242fb"
    assert len(meta["message_ids"]) == 4 and meta["message_ids"][0] == meta["message_tree_id"]
    assert "rank" not in meta and "text" not in meta and rows[2]["metadata"]["lang"] == "en"

    best, rep = D.load_conversations(RAW / "oasst_messages.jsonl", paths="best")
    assert len(best) == 2  # one per tree
    assert best[0]["messages"][1]["content"].startswith("Suomen pisin joki on Kemijoki")  # rank 0, not rank 1
    assert len(best[0]["messages"]) == 4  # the best path continues below the rank-0 answer


def test_nested_tree_file_and_best_rank():
    rows, rep = D.load_conversations(RAW / "oasst_trees.jsonl")
    assert rep.rows == 1 and len(rows) == 2 and rep.format == "oasst"
    assert {len(r["messages"]) for r in rows} == {2, 4}
    assert rows[0]["metadata"]["tree_state"] == "ready_for_export"
    best, _ = D.load_conversations(RAW / "oasst_trees.jsonl", paths="best")
    # the rank-0 reply is the second one in the file and has no follow-up
    assert texts(best[0]) == [
        ("user", "Miksi taivas on sininen?"),
        ("assistant", "Sininen valo siroaa ilmakehässä eniten."),
    ]


def test_tree_problems_point_at_the_message_line(tmp_path):
    lines = (RAW / "oasst_messages.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines]
    rows[4]["text"] = None  # the follow-up answer of tree 1, line 5
    orphan = dict(rows[8], message_id="zz", parent_id="missing-parent")
    p = write_jsonl(tmp_path, "t.jsonl", [*rows, orphan])
    kept, rep = D.load_conversations(p, on_error="drop")
    got = {(x.line, x.field, x.kind) for x in rep.problems}
    assert got == {(5, "text", "missing content"), (10, "parent_id", "orphan message")}, rep.problems
    assert len(kept) == 2  # the path through line 5 is dropped; the other two stay
    with pytest.raises(D.DataError, match=r"t.jsonl:line 10: parent_id: the parent message 'missing-parent'"):
        D.load_conversations(p)


def test_columns_hint_cannot_make_answers_repeat_prompts(tmp_path):
    # what the old "unrecognised format" hint led to: both roles reading the same column
    with pytest.raises(ValueError, match="user and assistant both read the column 'text'"):
        D.load_conversations(RAW / "oasst_messages.jsonl", columns={"user": "text", "assistant": "text"})
    # two columns that hold the same text (a copy) are caught on the data itself
    p = write_jsonl(tmp_path, "c.jsonl", [{"q": f"kysymys {i}", "a": f"kysymys {i}"} for i in range(4)])
    with pytest.raises(D.DataError, match="answer is the user's text word for word") as err:
        D.load_conversations(p, columns={"user": "q", "assistant": "a"})
    assert "name the column of the answers" in str(err.value)


def test_tool_calling_rows_as_transformers_defines_them():
    rows, rep = D.load_conversations(RAW / "tool_calls.jsonl")
    assert len(rows) == 4 and not rep.problems
    first = rows[0]
    assert first["tools"][0]["function"]["name"] == "get_weather"
    call = first["messages"][1]["tool_calls"][0]
    assert call == {
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Turku", "unit": "celsius"}},
    }
    assert first["messages"][2] == {
        "role": "tool",
        "content": '{"temperature": -3, "sky": "lumisadetta"}',
        "name": "get_weather",
    }
    # OpenAI style: JSON-string arguments become objects, null content "", ids kept
    calls = rows[1]["messages"][2]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Oulu"}, {"city": "Helsinki"}]
    assert [c["id"] for c in calls] == ["call_1", "call_2"] and rows[1]["messages"][2]["content"] == ""
    # reasoning kept; a conversation may end with the call (the model learns to call)
    assert rows[2]["messages"][1]["reasoning_content"].startswith("The user wants")
    # list-of-parts text joined as templates that accept parts render it
    assert texts(rows[3])[0] == ("user", "Tiivistä: Kalevala on kansaneepos.") and "tools" not in rows[3]
    kept, _ = D.load_conversations(RAW / "tool_calls.jsonl", parts="keep")
    assert kept[3]["messages"][0]["content"][1] == {"type": "text", "text": "Kalevala on kansaneepos."}


def test_llama_factory_sharegpt_tool_shape():
    rows, rep = D.load_conversations(RAW / "sharegpt_tools.json")
    assert rep.format == "sharegpt" and len(rows) == 2
    msgs = rows[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["tool_calls"][0]["function"] == {
        "name": "convert_currency",
        "arguments": {"amount": 100, "from": "USD", "to": "EUR"},
    }
    # the flat {"name", "description", "parameters"} schema (a JSON string) in transformers' shape
    assert (
        rows[0]["tools"][0]["type"] == "function"
        and rows[0]["tools"][0]["function"]["name"] == "convert_currency"
    )
    assert "tools" not in rows[1]  # "[]": no tools


GOOD_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Turku"}}}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
]
TOOL_BAD = {
    "undeclared tool": (
        [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [dict(GOOD_CALL, function={"name": "get_wether", "arguments": {}})],
            },
        ],
        "messages[1].tool_calls[0].function.name",
        "calls 'get_wether', which the row's tools do not declare",
    ),
    "arguments not JSON": (
        [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": "{city: Turku}"}}
                ],
            },
        ],
        "messages[1].tool_calls[0].function.arguments",
        "arguments a str, not a JSON object",
    ),
    "orphan tool result": (
        [
            {"role": "user", "content": "x"},
            {"role": "tool", "content": "22"},
            {"role": "assistant", "content": "y"},
        ],
        "messages[1].role",
        "a tool result with no tool call before it",
    ),
    "missing result": (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [GOOD_CALL, GOOD_CALL]},
            {"role": "tool", "content": "1"},
            {"role": "assistant", "content": "y"},
        ],
        "messages[1].tool_calls",
        "2 tool call(s) but 1 tool result(s)",
    ),
    "unknown call id": (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [dict(GOOD_CALL, id="a")]},
            {"role": "tool", "tool_call_id": "b", "content": "1"},
            {"role": "assistant", "content": "y"},
        ],
        "messages[2].tool_call_id",
        "'b' is not the id of a call before it",
    ),
    "image part": (
        [
            {
                "role": "user",
                "content": [{"type": "image", "url": "x.png"}, {"type": "text", "text": "what?"}],
            },
            {"role": "assistant", "content": "y"},
        ],
        "messages[0].content[0]",
        "a 'image' part: this kit trains text-only models",
    ),
    "reasoning on user": (
        [{"role": "user", "content": "x", "reasoning_content": "hm"}, {"role": "assistant", "content": "y"}],
        "messages[0].reasoning_content",
        "reasoning_content on a 'user' turn",
    ),
}


@pytest.mark.parametrize("case", list(TOOL_BAD))
def test_each_bad_tool_row_gives_one_located_message(tmp_path, case):
    messages, fld, expected = TOOL_BAD[case]
    p = write_jsonl(tmp_path, "t.jsonl", [{"messages": messages, "tools": TOOLS}])
    _, rep = D.load_conversations(p, on_error="drop")
    assert len(rep.problems) == 1, rep.problems
    (prob,) = rep.problems
    assert prob.field == fld and expected in prob.message and prob.hint and prob.line == 1


def test_to_dataset_round_trips_tool_arguments_and_metadata():
    rows, _ = D.load_conversations(RAW / "tool_calls.jsonl")
    trees, _ = D.load_conversations(RAW / "oasst_messages.jsonl")
    mixed = rows + trees
    ds = D.to_dataset(mixed)
    back = [{k: v for k, v in r.items() if v is not None} for r in ds]
    assert back == mixed  # no key of one row's arguments leaks into another's (plain from_list would)
    from datasets import Dataset

    leaky = Dataset.from_list(rows[:3])[0]["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert leaky != rows[0]["messages"][1]["tool_calls"][0]["function"]["arguments"]  # why to_dataset exists
