"""Published chat templates of real model families: checked, made training-ready (or refused), trained.

Each family: its verbatim public template (tests/templates/, sources in README.md) on a tokenizer that
carries the family's special tokens (bos, eos, pad or its absence), built from the kit's tiny tokenizer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workshop_lib import chat

REAL = Path(__file__).parent / "templates"
LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3 += ["<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
LLAMA31 = [*LLAMA3, "<|finetune_right_pad_id|>", "<|eom_id|>", "<|python_tag|>"]
LLAMA4 = ["<|begin_of_text|>", "<|end_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|eom|>"]
LLAMA4 += ["<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>", "<|image|>"]
MISTRAL_V3 = [
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
]
MISTRAL_V3 += ["[/TOOL_RESULTS]"]
QWEN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GPT_OSS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
]
GPT_OSS += ["<|call|>", "<|constrain|>"]
LFM2 = ["<|tool_list_start|>", "<|tool_list_end|>", "<|tool_response_start|>", "<|tool_response_end|>"]
COHERE2 = ["<BOS_TOKEN>", "<PAD>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>"]
COHERE2 += [
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<|START_THINKING|>",
]
COHERE2 += [
    "<|END_THINKING|>",
    "<|START_ACTION|>",
    "<|END_ACTION|>",
    "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>",
]
DEEPSEEK = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜▁pad▁｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
]
DEEPSEEK += ["<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"]
DEEPSEEK += [
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
]
DEEPSEEK += ["<｜tool▁output▁end｜>"]
PHI3 = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|placeholder1|>", "<|endoftext|>"]


@dataclass
class Family:
    name: str
    template: str | None  # file in tests/templates, None: the model publishes no chat template
    eos: str
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    specials: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # added, non-special tokens (Qwen3's <think>)
    # what the check must find and the fix must do
    system: str = "keeps"  # keeps | rejects | drops
    alternation: bool = False  # requires strictly alternating user/assistant turns
    default_system: bool = False  # writes a system turn when the conversation has none
    tools: str = (
        "keeps"  # what it does with a tool-calling conversation: keeps | rejects | drops (the results)
    )
    eot: str = ""  # the token that closes an answer
    fix: str = (
        "kit"  # trl | kit | narrow (its own markers narrowed) | answer (one sample per answer) | refuse
    )
    trained_after_eot: str = ""  # whitespace the fixed template trains after the end-of-turn token
    trained_at_end: str = ""  # what it trains after the last answer (Phi-3 closes a conversation with eos)
    written_first: str = ""  # what the model writes (trained) after the inference prompt, before its answer
    before_fails: tuple = ("generation markers", "end of turn trained")  # checks the published template fails
    refusal: str = ""  # words the refusal must contain (refused families)
    train: bool = (
        True  # also in the 20-step training test (the families added later are checked, not trained)
    )
    end_last: str = ""  # the end token of the last answer when it differs (gpt-oss: <|return|>)
    appended: str = ""  # what the fixed template writes after a conversation's last answer, the original not
    reasoning: bool = False  # every answer must carry its reasoning (the inference prompt opens it)


FAMILIES = [
    Family(
        "llama3",
        "llama3.jinja",
        "<|eot_id|>",
        "<|begin_of_text|>",
        specials=LLAMA3,
        eot="<|eot_id|>",
        fix="trl",
    ),
    Family(
        "llama3_1",
        "llama3_1.jinja",
        "<|eot_id|>",
        "<|begin_of_text|>",
        specials=LLAMA31,
        eot="<|eot_id|>",
        default_system=True,
    ),
    Family(
        "llama3_2",
        "llama3_2.jinja",
        "<|eot_id|>",
        "<|begin_of_text|>",
        specials=LLAMA31,
        eot="<|eot_id|>",
        default_system=True,
    ),
    Family(
        "llama4",
        "llama4.jinja",
        "<|eot|>",
        "<|begin_of_text|>",
        "<|finetune_right_pad|>",
        specials=LLAMA4,
        eot="<|eot|>",
        fix="answer",  # no marker fix fits its assistant branch: one sample per answer (1.66x tokens here)
        train=False,
    ),
    Family(
        "mistral_v0_1",
        "mistral_v0_1.jinja",
        "</s>",
        "<s>",
        unk="<unk>",
        system="rejects",
        alternation=True,
        eot="</s>",
        tools="rejects",
    ),
    Family(
        "mixtral_mistral_v0_2",
        "mixtral.jinja",
        "</s>",
        "<s>",
        unk="<unk>",
        system="rejects",
        alternation=True,
        eot="</s>",
        tools="rejects",
    ),
    Family(
        "mistral_v0_3_tools",
        "mistral_v0_3.jinja",
        "</s>",
        "<s>",
        unk="<unk>",
        specials=MISTRAL_V3,
        system="drops",
        alternation=True,
        eot="</s>",
    ),
    Family(
        "gemma_1_2",
        "gemma.jinja",
        "<eos>",
        "<bos>",
        "<pad>",
        "<unk>",
        ["<start_of_turn>", "<end_of_turn>"],
        system="rejects",
        alternation=True,
        eot="<end_of_turn>",
        fix="trl",
        trained_after_eot="\n",
        tools="rejects",
    ),
    Family(
        "gemma3",
        "gemma3.jinja",
        "<eos>",
        "<bos>",
        "<pad>",
        "<unk>",
        ["<start_of_turn>", "<end_of_turn>"],
        alternation=True,
        eot="<end_of_turn>",
        fix="trl",
        trained_after_eot="\n",
        tools="rejects",
    ),
    Family(
        "qwen2",
        "qwen2.jinja",
        "<|im_end|>",
        None,
        "<|endoftext|>",
        specials=QWEN,
        default_system=True,
        eot="<|im_end|>",
    ),
    Family(
        "qwen2_5",
        "qwen2_5.jinja",
        "<|im_end|>",
        None,
        "<|endoftext|>",
        specials=QWEN,
        added=["<tool_call>", "</tool_call>"],
        default_system=True,
        eot="<|im_end|>",
        fix="kit",  # TRL's qwen2_5_training.jinja trains the header '<|im_start|>assistant\n' (prompt tokens)
    ),
    Family(
        "qwen3",
        "qwen3.jinja",
        "<|im_end|>",
        None,
        "<|endoftext|>",
        specials=QWEN,
        added=["<think>", "</think>", "<tool_call>", "</tool_call>"],
        eot="<|im_end|>",
        fix="answer",  # not prefix-stable: one sample per answer
        written_first="<think>\n\n</think>\n\n",
    ),
    Family(
        "phi3",
        "phi3.jinja",
        "<|endoftext|>",
        "<s>",
        "<|endoftext|>",
        "<unk>",
        PHI3,
        eot="<|end|>",
        fix="trl",
        trained_after_eot="\n",
        trained_at_end="<|endoftext|>",
        tools="drops",
    ),
    Family(
        "phi3_5",
        "phi3_5.jinja",
        "<|endoftext|>",
        "<s>",
        "<|endoftext|>",
        "<unk>",
        PHI3,
        eot="<|end|>",
        fix="trl",
        trained_after_eot="\n",
        trained_at_end="<|endoftext|>",
        tools="drops",
    ),
    Family(
        "phi4",
        "phi4.jinja",
        "<|im_end|>",
        "<|endoftext|>",
        "<|dummy_85|>",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|dummy_85|>"],
        eot="<|im_end|>",
        tools="drops",
    ),
    Family(
        "phi4_mini",
        "phi4_mini.jinja",
        "<|endoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
        specials=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>"],
        eot="<|end|>",  # the answer's end: generation stops there; the closing eos stays untrained
        train=False,
    ),
    Family(
        "smollm2",
        "smollm2.jinja",
        "<|im_end|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        QWEN,
        default_system=True,
        eot="<|im_end|>",
    ),
    Family("zephyr_tinyllama", "zephyr.jinja", "</s>", "<s>", "</s>", "<unk>", eot="</s>", tools="drops"),
    Family(
        "olmo2",
        "olmo2.jinja",
        "<|endoftext|>",
        "<|endoftext|>",
        "<|pad|>",
        specials=["<|pad|>"],
        eot="<|endoftext|>",
        tools="drops",
    ),
    Family(
        "chatml_poro",
        "chatml.jinja",
        "<|im_end|>",
        "<s>",
        unk="<unk>",
        specials=["<|im_start|>", "<|im_end|>"],
        eot="<|im_end|>",
    ),
    Family("viking", None, "</s>", "<s>", unk="<unk>", fix="refuse"),
    # ---- families released 2024-2026 (issue 22)
    Family(
        "smollm3",
        "smollm3.jinja",
        "<|im_end|>",
        None,
        "<|endoftext|>",
        specials=QWEN,
        added=["<think>", "</think>"],
        default_system=True,
        eot="<|im_end|>",
        fix="narrow",  # its own markers wrap the header '<|im_start|>assistant\n': narrowed to answer + end
        before_fails=("assistant mask",),
        train=False,
    ),
    Family(
        "gpt_oss",
        "gptoss.jinja",
        "<|return|>",
        "<|startoftext|>",
        "<|endoftext|>",
        specials=GPT_OSS,
        eot="<|end|>",
        end_last="<|return|>",  # mid-conversation answers end with <|end|>, the last with <|return|>: both trained
        written_first="<|channel|>final<|message|>",
        train=False,
    ),
    Family(
        "gemma4",
        "gemma4.jinja",
        "<turn|>",
        "<bos>",
        "<pad>",
        "<unk>",
        [
            "<|turn>",
            "<turn|>",
            "<|think|>",
            "<|channel>",
            "<channel|>",
            "<|image|>",
            "<|audio|>",
            "<|video|>",
        ],
        eot="<turn|>",
        fix="answer",  # no marker can be placed safely (content and end token in separate expressions)
        train=False,
    ),
    Family(
        "lfm2",
        "lfm2.jinja",
        "<|im_end|>",
        "<|startoftext|>",
        "<|pad|>",
        specials=["<|startoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", *LFM2],
        eot="<|im_end|>",
        fix="trl",
        trained_after_eot="\n",
        train=False,
    ),
    Family(
        "command_r7b_cohere2",
        "cohere2.jinja",
        "<|END_OF_TURN_TOKEN|>",
        "<BOS_TOKEN>",
        "<PAD>",
        specials=COHERE2,
        alternation=True,
        tools="rejects",
        eot="<|END_RESPONSE|>",
        fix="trl",
        trained_after_eot="<|END_OF_TURN_TOKEN|>",
        train=False,
    ),
    Family(
        "command_r7b_tool_use",
        "command_r7b_tool_use.jinja",
        "<|END_OF_TURN_TOKEN|>",
        "<BOS_TOKEN>",
        "<PAD>",
        specials=COHERE2,
        eot="<|END_RESPONSE|>",
        fix="answer",  # the answer is raw template text between tags: no marker fits; it always appends a header
        written_first="<|START_RESPONSE|>",
        trained_after_eot="<|END_OF_TURN_TOKEN|>",
        train=False,
    ),
    Family(
        "qwen3_2507",
        "qwen3_2507.jinja",
        "<|im_end|>",
        None,
        "<|endoftext|>",
        specials=QWEN,
        added=["<tool_call>", "</tool_call>"],
        eot="<|im_end|>",
        fix="trl",
        trained_after_eot="\n",
        train=False,
    ),
    Family(
        "deepseek_r1_distill",
        "deepseek_r1_distill.jinja",
        "<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>",
        "<｜▁pad▁｜>",
        specials=DEEPSEEK,
        added=["<think>", "</think>"],
        eot="<｜end▁of▁sentence｜>",
        fix="refuse",  # the inference prompt opens '<think>\n'; rendered answers never contain it
        refusal="not even one that carries its reasoning",  # it keeps only what follows '</think>'
        train=False,
    ),
    Family(
        "deepseek_v3",
        "deepseekv3.jinja",
        "<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>",
        "<｜▁pad▁｜>",
        specials=DEEPSEEK,
        added=["<think>", "</think>"],
        eot="<｜end▁of▁sentence｜>",
        tools="rejects",
        fix="refuse",
        refusal="not even one that carries its reasoning",  # it keeps only what follows '</think>'
        train=False,
    ),
    Family(
        "nemotron_3_nano",
        "nemotron_3_nano.jinja",
        "<|im_end|>",
        "<s>",
        "<unk>",
        specials=["<s>", "<unk>", "<|im_start|>", "<|im_end|>"],
        added=["<think>", "</think>", "<tool_call>", "</tool_call>"],
        default_system=True,
        eot="<|im_end|>",
        # the prompt opens '<think>\n' and the template writes an answer's reasoning there: answers carry theirs
        fix="answer",
        reasoning=True,
        written_first=chat.CHECK_REASONING + "\n</think>\n",
        train=False,
    ),
    Family(
        "glm4_moe",
        "glm4moe.jinja",
        "<|endoftext|>",
        "[gMASK]",
        "<|endoftext|>",
        specials=[
            "[gMASK]",
            "<sop>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|observation|>",
            "<|endoftext|>",
        ],
        added=["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
        eot="<|user|>",  # no end token: the next turn's role token follows
        fix="trl_end",  # answers end with no token at all: GLM stops on the next turn's <|user|>, which
        appended="<|user|>",  # TRL's template also writes after the last answer
        written_first="<think></think>\n",
        train=False,
    ),
    Family(
        "granite3_3",
        "granite3_3.jinja",
        "<|end_of_text|>",
        "<|end_of_text|>",
        "<|pad|>",
        specials=["<|end_of_text|>", "<|pad|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"],
        default_system=True,
        eot="<|end_of_text|>",
        train=False,
    ),
    Family(
        "mistral_small_3_1",
        "mistral_small_3_1.jinja",
        "</s>",
        "<s>",
        unk="<unk>",
        specials=[*MISTRAL_V3, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"],
        default_system=True,
        eot="</s>",
        train=False,
    ),
    Family(
        "mistral_nemo_tekken",
        "mistral_nemo.jinja",
        "</s>",
        "<s>",
        unk="<unk>",
        specials=MISTRAL_V3,
        system="drops",  # written before the last user message only: every rendering ending with an answer drops it
        alternation=True,
        eot="</s>",
        train=False,
    ),
]


def family_tokenizer(tiny_dir: Path, fam: Family):
    """The tiny tokenizer with the family's special tokens instead of its own three."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads((Path(tiny_dir) / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    for i, old in enumerate(("<|pad|>", "<|im_start|>", "<|im_end|>")):  # keep the ids, drop the names
        vocab[f"<tiny_special_{i}>"] = vocab.pop(old)
    data["added_tokens"] = []
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), model_max_length=4096
    )
    roles = {"bos_token": fam.bos, "eos_token": fam.eos, "pad_token": fam.pad, "unk_token": fam.unk}
    roles = {k: v for k, v in roles.items() if v}
    extra = [t for t in fam.specials if t not in roles.values()]
    tok.add_special_tokens({**roles, "additional_special_tokens": extra}, replace_extra_special_tokens=False)
    tok.add_tokens(fam.added)
    tok.chat_template = (REAL / fam.template).read_text() if fam.template else None
    return tok


def _constraint(report, words: str) -> bool:
    return any(words in c for c in report.constraints)


def _accepted(template: str, tok) -> list[tuple[list[dict], bool, str]]:
    """The test conversations the original template accepts, with its rendering."""
    out = []
    for conv, gen in chat.conversation_set():
        try:
            out.append(
                (
                    conv,
                    gen,
                    tok.apply_chat_template(
                        conv, chat_template=template, tokenize=False, add_generation_prompt=gen
                    ),
                )
            )
        except Exception:
            continue
    return out


def _trained_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    runs, cur = [], []
    for t, lab in zip(ids, labels, strict=True):
        if lab != chat.IGNORE:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.fixture(scope="module")
def train_rows():
    sys.path.insert(0, str(Path(__file__).parent.parent / "data"))
    from make_synthetic import generate

    rows, _ = generate(12, 0, seed=3)
    return [r["messages"] for r in rows] + [chat.NON_ASCII, [chat.SAMPLE[0], *chat.NON_ASCII]]


@pytest.fixture(scope="module")
def shared_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def _prepared(fam: Family, tiny_dir):
    """The family's tokenizer after prepare_tokenizer (for refused families: with the template the refusal
    message points to), its report, and the refusal message (None when not refused)."""
    tok = family_tokenizer(tiny_dir, fam)
    if fam.fix != "refuse":
        return tok, chat.prepare_tokenizer(tok), None
    with pytest.raises(chat.TemplateError) as refused:
        chat.prepare_tokenizer(tok)
    message = str(refused.value)
    if "set template: " in message:  # TRL's training template, where it passes the kit's checks
        chosen = message.split("set template: ")[1].split()[0].rstrip(".")
    else:  # no template of the family's own is trainable: the kit's ChatML shows the rest of the test
        chosen = "chatml"
    tok = family_tokenizer(tiny_dir, fam)
    return tok, chat.prepare_tokenizer(tok, template=chosen), message


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_template_checked_and_fixed(fam, tiny_model_dir):
    tok = family_tokenizer(tiny_model_dir, fam)
    original = tok.chat_template

    # 1. the check reports the family's real properties, before any fix
    before = chat.check_template(tok)
    if fam.template is None:
        assert before.failed() == ["has a chat template"]
    else:
        assert set(fam.before_fails) <= set(before.failed()), str(before)
        assert before.end_of_turn == (fam.eot or None), str(before)
        assert _constraint(before, "rejects a system turn") == (fam.system == "rejects")
        assert _constraint(before, "drops the system prompt") == (fam.system == "drops")
        assert _constraint(before, "strictly alternating") == fam.alternation
        assert _constraint(before, "writes a system turn even when there is none") == fam.default_system
        assert ("pad token" in before.failed()) == (fam.pad is None)
        assert _constraint(before, "rejects tool-calling turns") == (fam.tools == "rejects")
        assert _constraint(before, "leaves the tool results out") == (fam.tools == "drops")

    # 2. made training-ready, or refused with the reason and what to do
    tok, report, refused = _prepared(fam, tiny_model_dir)
    if fam.fix == "refuse":
        if fam.template is None:
            assert "has no chat template" in refused
        else:  # the reason, the part of the template, what to do
            assert fam.refusal in refused and "What to do" in refused, refused
    else:
        how = {
            "trl": "TRL's training template",
            "trl_end": "replaced by TRL's training template for this family",
            "kit": "wrapped each assistant answer",
            "narrow": "narrowed the template's own {% generation %} markers",
            "answer": "each answer is trained in its own sample",
        }[fam.fix]
        assert any(how in n for n in report.notes), str(report)
        assert chat.per_answer(tok.chat_template) == (fam.fix == "answer")
        assert tok.chat_template != original
        for conv, gen, text in _accepted(original, tok):  # identical wherever the original accepts
            if fam.appended and not gen and conv[-1]["role"] == "assistant":
                text += fam.appended
            assert chat.render(conv, tok, add_generation_prompt=gen) == text, [m["role"] for m in conv]
    assert report.ok, str(report)
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert any("pad token" in n for n in report.notes)

    # 3. the mask covers each answer and its end-of-turn token exactly
    merge = fam.system in ("rejects", "drops")
    eot = report.end_of_turn if fam.fix == "refuse" else fam.eot  # refused: the template chosen instead
    accepted = _accepted(tok.chat_template, tok)
    convs = [chat.merge_system_prompt(c) if merge else c for c, gen, _ in accepted if not gen]
    convs = [c for c in convs if c[-1]["role"] == "assistant"]
    convs = [chat.with_reasoning(c) for c in convs] if fam.reasoning else convs
    assert len(convs) >= 4
    for conv in convs:
        enc = chat.encode([conv], tok)  # one row, or one per answer (each answer's trained run in its row)
        runs = [
            r for x, y in zip(enc["input_ids"], enc["labels"], strict=True) for r in _trained_runs(tok, x, y)
        ]
        answers = [m["content"].strip() for m in conv if m["role"] == "assistant"]
        assert len(enc["input_ids"]) == (len(answers) if fam.fix == "answer" else 1)
        # what the model writes before its answer, trained: Qwen3's (empty) thinking block, gpt-oss's channel
        runs = [r.replace(fam.written_first, "", 1) if fam.written_first else r for r in runs]
        expected = [a + eot + fam.trained_after_eot for a in answers]
        if fam.end_last:
            expected[-1] = answers[-1] + fam.end_last
        expected[-1] += fam.trained_at_end
        assert [r.lstrip() for r in runs] == expected, runs


# one family per path in the fast tier (TRL's template, the kit's markers, merged system prompts, one sample per
# answer, eos trained at the end); every family in the slow tier
FAST_TRAIN = ("llama3", "qwen2_5", "mistral_v0_3_tools", "qwen3", "phi3")


@pytest.mark.parametrize(
    "fam",
    [f if f.name in FAST_TRAIN else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES if f.train],
    ids=lambda f: f.name,
)
def test_family_trains_20_steps(fam, tiny_model_dir, shared_model, train_rows, tmp_path):
    """Twenty steps of real training on what chat.tokenize_dataset gives (what the kit's trainer gets)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, _, _ = _prepared(fam, tiny_model_dir)
    merge = fam.system in ("rejects", "drops")
    ds = chat.tokenize_dataset(
        Dataset.from_dict({"messages": train_rows}), tok, system_prompt="merge" if merge else "keep"
    )
    if len(tok) != shared_model.get_input_embeddings().num_embeddings:
        shared_model.resize_token_embeddings(len(tok))
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=False,
        padding_free=True,
        max_length=None,
        use_cpu=True,
        bf16=False,
        max_steps=20,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=10,
        disable_tqdm=True,
    )
    out = SFTTrainer(model=shared_model, args=args, train_dataset=ds, processing_class=tok).train()
    assert out.global_step == 20 and 0 < out.training_loss < 100, out


def test_gpt_oss_end_tokens_and_thinking(tiny_model_dir):
    """gpt-oss ends answers with <|end|> mid-conversation and <|return|> last (both trained), writes the
    final-channel header itself (trained), and renders `thinking` for the last answer only: conversations
    with thinking train each answer in its own sample, its analysis channel included."""
    fam = next(f for f in FAMILIES if f.name == "gpt_oss")
    tok = family_tokenizer(tiny_model_dir, fam)
    report = chat.prepare_tokenizer(tok)
    assert report.end_tokens == ["<|end|>", "<|return|>"], str(report)
    plain = chat.encode([chat.SAMPLE], tok)
    runs = _trained_runs(tok, plain["input_ids"][0], plain["labels"][0])
    assert runs == [
        "<|channel|>final<|message|>The animal is otter.<|end|>",
        "<|channel|>final<|message|>The fruit is peach.<|return|>",
    ]
    think = [dict(m) for m in chat.SAMPLE]
    think[2]["thinking"], think[4]["thinking"] = "otter swims.", "peach is sweet."
    enc = chat.encode([think], tok)
    trained = [tok.decode([t for t in y if t != chat.IGNORE]) for y in enc["labels"]]
    assert trained == [
        "<|channel|>analysis<|message|>otter swims.<|end|><|start|>assistant<|channel|>final<|message|>"
        "The animal is otter.<|return|>",
        "<|channel|>analysis<|message|>peach is sweet.<|end|><|start|>assistant<|channel|>final<|message|>"
        "The fruit is peach.<|return|>",
    ]
    assert "otter swims." not in tok.decode(enc["input_ids"][1])  # dropped from later turns, as at inference


def test_a_prompt_that_opens_the_reasoning_trains_answers_with_theirs(tiny_model_dir):
    """Nemotron's inference prompt ends with '<think>\\n': each answer is trained with its reasoning, written where
    the prompt opens it. An answer without reasoning is refused, and the refusal's advice (the template's own
    switch, enable_thinking off) trains it; DeepSeek-R1 never writes an answer's reasoning: refused."""
    fam = next(f for f in FAMILIES if f.name == "nemotron_3_nano")
    tok = family_tokenizer(tiny_model_dir, fam)
    report = chat.prepare_tokenizer(tok)
    assert any("every answer in the data must carry its reasoning" in n for n in report.notes), str(report)
    think = [dict(m) for m in chat.SAMPLE]
    think[2]["reasoning_content"], think[4]["reasoning_content"] = "otter swims.", "peach is sweet."
    enc = chat.encode([think], tok)
    trained = [tok.decode([t for t in y if t != chat.IGNORE]) for y in enc["labels"]]
    assert trained == [
        "otter swims.\n</think>\nThe animal is otter.<|im_end|>",
        "peach is sweet.\n</think>\nThe fruit is peach.<|im_end|>",
    ]
    assert "assistant\n<think>\n" + trained[0] in tok.decode(
        enc["input_ids"][0]
    )  # after the inference prompt
    with pytest.raises(chat.TemplateError, match="message 2: the answer has no reasoning.*enable_thinking"):
        chat.encode([chat.SAMPLE], tok)
    from datasets import Dataset

    rows = Dataset.from_dict(
        {"messages": [chat.SAMPLE], "chat_template_kwargs": [{"enable_thinking": False}]}
    )
    off = chat.tokenize_dataset(rows, tok)  # TRL's column, as the loader keeps it
    trained = [tok.decode([t for t in y if t != chat.IGNORE]) for y in off["labels"]]
    assert trained == ["The animal is otter.<|im_end|>", "The fruit is peach.<|im_end|>"]

    deepseek = family_tokenizer(tiny_model_dir, next(f for f in FAMILIES if f.name == "deepseek_r1_distill"))
    with pytest.raises(chat.TemplateError, match="not even one that carries its reasoning"):
        chat.prepare_tokenizer(deepseek)


def test_tool_calls_are_trained_with_their_end_token(tiny_model_dir):
    """A tool call is an answer too: conversations with tool calls are trained one sample per answer, so the
    call the template writes (Llama 3.1: a JSON object) and its end token are trained, not only text answers."""
    fam = next(f for f in FAMILIES if f.name == "llama3_1")
    tok = family_tokenizer(tiny_model_dir, fam)
    chat.prepare_tokenizer(tok)
    enc = chat.encode([chat.TOOL_CALL], tok)
    trained = [tok.decode([t for t in y if t != chat.IGNORE]) for y in enc["labels"]]
    assert len(trained) == 2 and trained[1] == "It is -12 C and snowing in Oulu.<|eot_id|>"
    assert '"name": "weather"' in trained[0] and '"Oulu"' in trained[0] and trained[0].endswith("<|eot_id|>")
    assert "What is the weather" not in trained[0] and "-12 C, snow" not in trained[0]


if __name__ == "__main__":  # explore: python tests/test_chat_families.py
    from workshop_lib.model import build_tiny_model

    tiny = build_tiny_model()
    for fam in FAMILIES if len(sys.argv) < 2 else [f for f in FAMILIES if f.name in sys.argv[1:]]:
        tok = family_tokenizer(tiny, fam)
        print("=" * 30, fam.name)
        print(chat.check_template(tok))
        try:
            print("--- prepared:\n" + str(chat.prepare_tokenizer(tok)))
        except chat.TemplateError as e:
            print("--- refused:", str(e)[:1500])


def test_a_rows_tools_and_chat_template_kwargs_reach_the_template(tiny_model_dir, tmp_path):
    """As TRL's SFTTrainer does, a row's `tools` and `chat_template_kwargs` go to the template: the tool
    schemas are in the prompt, and Llama 3.1 ends a built-in tool call (builtin_tools) with <|eom_id|>, trained."""

    from workshop_lib import data

    fam = next(f for f in FAMILIES if f.name == "llama3_1")
    tok = family_tokenizer(tiny_model_dir, fam)
    chat.prepare_tokenizer(tok)
    weather = {"type": "function", "function": {"name": "weather", "description": "Weather in a city"}}
    weather["function"]["parameters"] = {"type": "object", "properties": {"city": {"type": "string"}}}
    search = [
        {"role": "user", "content": "Who won the 2025 Finlandia Hiihto?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"function": {"name": "brave_search", "arguments": {"query": "Finlandia Hiihto 2025"}}}
            ],
        },
        {"role": "ipython", "content": "Perttu Hyvärinen won."},
        {"role": "assistant", "content": "Perttu Hyvärinen won it."},
    ]
    rows = [
        {"messages": chat.TOOL_CALL, "tools": [weather]},
        {"messages": search, "chat_template_kwargs": {"builtin_tools": ["brave_search"]}},
        {"messages": chat.TOOL_CALL},
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, _ = data.load_training_rows(str(path))  # the loader keeps both columns
    assert loaded[1]["chat_template_kwargs"] == {"builtin_tools": ["brave_search"]} and "tools" in loaded[0]
    ds = chat.tokenize_dataset(data.to_dataset(loaded), tok)  # as training builds it
    texts = [tok.decode(x) for x in ds["input_ids"]]
    trained = [tok.decode([t for t in y if t != chat.IGNORE]) for y in ds["labels"]]
    with_schema = [t for t in texts if '"description": "Weather in a city"' in t]
    assert len(with_schema) == 2, texts  # the first row's two samples (one per answer), not the third row's
    calls = [t for t in trained if "brave_search.call" in t]
    assert len(calls) == 1 and calls[0].endswith("<|eom_id|>"), trained  # a built-in call ends with eom
    assert sum(t.endswith("<|eot_id|>") for t in trained) == len(trained) - 1
