"""The dataset report on in-memory files, with the tiny model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftaas.cli import format_report
from ftaas.types import RepeatedExample, TruncatedExample
from ftaas_core.datasets import parse_example
from ftaas_core.encoding import encode_example
from ftaas_core.report import build_report, load_tokenizer
from tests.support.data import SYSTEM, chat_line, jsonl


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(str(tiny_model))


def n_tokens(tok: PreTrainedTokenizerBase, row: dict[str, object]) -> int:
    return len(encode_example(tok, parse_example(row), 10**6).input_ids)


def test_every_error_is_listed_with_its_line_and_field(tok: PreTrainedTokenizerBase) -> None:
    bad_role = {"messages": [{"role": "bot", "content": "x"}]}
    data = jsonl([chat_line("q", "a")]) + b"{nope\n" * 30 + jsonl([bad_role, {"prompt": "p"}])

    report = build_report(tok, "tiny", [data], 2048)

    assert (report.n_lines, report.n_examples, report.n_errors) == (33, 1, 32)
    assert [e.line for e in report.errors] == list(range(2, 34))  # beyond the upload's 20
    assert report.errors[-2].field == "messages[0].role"
    assert report.errors[-1].field == "completion"
    assert "invalid JSON" in report.errors[0].message

    capped = build_report(tok, "tiny", [data], 2048, max_listed=5)
    assert capped.n_errors == 32 and [e.line for e in capped.errors] == [2, 3, 4, 5, 6]


def test_token_statistics(tok: PreTrainedTokenizerBase) -> None:
    rows = [chat_line("What is the capital of Zubrovia?" * i, "Quellbrook.") for i in range(1, 21)]
    lengths = sorted(n_tokens(tok, row) for row in rows)
    answer = len(tok("Quellbrook.", add_special_tokens=False)["input_ids"]) + 1  # and the eos

    stats = build_report(tok, "tiny", [jsonl(rows)], 2048).tokens

    assert stats is not None
    assert (stats.min, stats.max, stats.total) == (lengths[0], lengths[-1], sum(lengths))
    assert stats.mean == round(sum(lengths) / 20, 2)
    assert stats.p95 == lengths[18]  # nearest rank: the 19th of 20
    assert stats.trained == 20 * answer


def test_examples_beyond_max_seq_length_are_listed(tok: PreTrainedTokenizerBase) -> None:
    short, long_answer, long_question = (
        chat_line("Hi", "Hello."),
        chat_line("Hi", "Hello. " * 40),
        chat_line("Hello there " * 40, "Hi."),
    )
    limit = n_tokens(tok, short) + 4

    report = build_report(tok, "tiny", [jsonl([short, long_answer, long_question])], limit)

    assert report.n_truncated == 2
    assert report.truncated == [
        TruncatedExample(line=2, n_tokens=n_tokens(tok, long_answer), dropped=False),
        TruncatedExample(line=3, n_tokens=n_tokens(tok, long_question), dropped=True),
    ]
    assert report.tokens is not None and report.tokens.max == n_tokens(tok, long_question)


def test_duplicates_are_found_after_parsing(tok: PreTrainedTokenizerBase) -> None:
    row = chat_line("Who painted the Glass Heron?", "Maren Oduya.")
    respaced = json.dumps(row, indent=None, separators=(" ,", " : ")).encode() + b"\n"
    as_parts = {
        "messages": [
            {"content": SYSTEM, "role": "system"},
            {"role": "user", "content": [{"type": "text", "text": "Who painted the Glass Heron?"}]},
            {"role": "assistant", "content": "Maren Oduya.", "weight": 1},
        ]
    }
    other = chat_line("Who painted the Glass Heron?", "Someone else.")
    data = jsonl([row, other]) + respaced + jsonl([as_parts, other])

    report = build_report(tok, "tiny", [data], 2048)

    assert report.n_duplicates == 3
    assert report.duplicates == [
        RepeatedExample(line=3, first_line=1),
        RepeatedExample(line=4, first_line=1),
        RepeatedExample(line=5, first_line=2),
    ]


def test_validation_overlap(tok: PreTrainedTokenizerBase) -> None:
    train = jsonl([chat_line(f"Question {i}?", f"Answer {i}.") for i in range(5)])
    valid = jsonl([chat_line("Question 3?", "Answer 3."), chat_line("New?", "Yes."), {"x": 1}])

    report = build_report(tok, "tiny", [train], 2048, validation=[valid])

    assert report.validation is not None
    assert (report.validation.n_examples, report.validation.n_errors) == (2, 1)
    assert report.validation.errors[0].line == 3
    assert report.n_overlapping == 1
    assert report.overlapping == [RepeatedExample(line=1, first_line=4)]
    assert build_report(tok, "tiny", [train], 2048).validation is None


def test_preview_marks_exactly_the_trained_tokens(tok: PreTrainedTokenizerBase) -> None:
    data = b"not json\n" + jsonl([chat_line("What do pelmites eat?", "Copper moss.")])

    preview = build_report(tok, "tiny", [data], 2048).preview

    assert preview is not None and preview.line == 2
    assert preview.text == (
        f"<|bos|><|system|>\n{SYSTEM}<|end|><|user|>\nWhat do pelmites eat?<|end|>"
        "<|assistant|>\n⟦Copper moss.<|eos|>⟧"
    )
    answer = len(tok("Copper moss.", add_special_tokens=False)["input_ids"]) + 1
    assert preview.n_trained_tokens == answer
    assert preview.n_tokens == n_tokens(tok, chat_line("What do pelmites eat?", "Copper moss."))
    assert not preview.truncated


def test_examples_the_chat_template_rejects_are_errors(tiny_model: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)  # not the cached one: its template changes
    tok.chat_template = (
        "{%- for m in messages -%}{%- if m['role'] == 'system' -%}"
        "{{- raise_exception('System messages are not supported') -}}{%- endif -%}"
        "{{- m['content'] + eos_token -}}{%- endfor -%}"
    )
    no_system = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    }
    data = jsonl([chat_line("Hi", "Yo"), no_system, {"prompt": "a", "completion": "b"}])

    report = build_report(tok, "tiny", [data], 2048)

    assert (report.n_examples, report.n_errors) == (2, 1)
    assert report.errors[0].line == 1
    assert "System messages are not supported" in report.errors[0].message
    assert report.preview is not None and report.preview.line == 2


def test_text_form(tok: PreTrainedTokenizerBase) -> None:
    rows = [chat_line("Hi", "Hello.")] * 23 + [chat_line("Hi " * 30, "Hello.")]
    valid = jsonl([chat_line("Hi", "Hello.")])
    report = build_report(tok, "tiny", [jsonl(rows) + b"{nope\n"], 30, validation=[valid])

    text = format_report(report)

    assert "training file: 24 examples in 25 lines" in text
    assert "errors: 1\n  line 25: invalid JSON" in text
    assert "truncated: 1\n  line 24: " in text and "(dropped: nothing left to train)" in text
    assert "duplicates: 22\n  line 2 repeats line 1" in text
    assert "... and 2 more (see --json)" in text
    assert "in both files: 1\n  validation line 1 = training line 1" in text
    assert text.endswith("<|assistant|>\n⟦Hello.<|eos|>⟧")


def preference_line(question: str, preferred: str, non_preferred: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def test_preference_pairs(tok: PreTrainedTokenizerBase) -> None:
    def answer_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # and the eos

    rows = [
        preference_line("Hi", "Hello.", "Go away."),
        preference_line("Hi", "Hello.", "Hello."),  # teaches nothing
        preference_line("Hello there " * 40, "Hi.", "No."),  # nothing left after truncation
        preference_line("Hi", "Hello. " * 40, "Hi."),  # the preferred row is cut
    ]
    prompt = _prompt_tokens(tok, rows[0])
    limit = prompt + 10

    report = build_report(tok, "tiny", [jsonl(rows)], limit)

    assert (report.n_examples, report.format) == (4, "preference")
    pairs = report.preference
    assert pairs is not None
    assert (pairs.n_identical, pairs.identical) == (1, [2])
    assert pairs.prompt_tokens.min == prompt
    assert pairs.preferred_tokens.max == answer_tokens("Hello. " * 40)
    assert pairs.non_preferred_tokens.min == answer_tokens("No.")
    assert [(t.line, t.dropped) for t in report.truncated] == [(3, True), (4, False)]
    assert report.preview is not None and report.preview.text.endswith("⟦Hello.<|eos|>⟧")
    assert "pairs with identical answers: 1\n  line 2" in format_report(report)
    assert build_report(tok, "tiny", [jsonl([chat_line("q", "a")])], 2048).preference is None


def _prompt_tokens(tok: PreTrainedTokenizerBase, row: dict[str, object]) -> int:
    conversation = row["input"]["messages"]  # type: ignore[index]
    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])
