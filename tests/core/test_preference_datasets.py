"""Preference files (OpenAI's format for DPO): validated like the other formats, every bad line
named with its field, and a file holds one format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ftaas_core.datasets import iter_examples, parse_example
from ftaas_core.examples import ChatExample, Message, PreferenceExample
from tests.core.test_datasets import CHAT, jsonl, only_error, validate


def pair(**changes: Any) -> dict[str, Any]:
    example: dict[str, Any] = {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "PARIS."}],
        "non_preferred_output": [{"role": "assistant", "content": "paris."}],
    }
    for key, value in changes.items():
        if value is None:
            del example[key]
        else:
            example[key] = value
    return example


def test_a_preference_example_and_what_it_trains() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    conversation = {
        "messages": [
            {"role": "system", "content": "Shout."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "HELLO"},  # context: never trained
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        ],
        "tools": tools,
        "parallel_tool_calls": False,
    }

    example = parse_example(pair(input=conversation))

    assert isinstance(example, PreferenceExample)
    assert [m.weight for m in example.prompt] == [0, 0, 0, 0]
    assert example.prompt[-1].content == "Capital of France?"
    assert example.preferred == Message("assistant", "PARIS.", 1)
    assert example.non_preferred.content == "paris."
    assert json.loads(example.tools or "") == tools
    assert example.parallel_tool_calls is False
    chosen = example.answered(example.preferred)
    assert chosen == ChatExample((*example.prompt, example.preferred), example.tools)


def test_a_preference_file_validates_and_says_its_format() -> None:
    report = validate(jsonl(pair(), pair(), pair()), chunk_size=7)

    assert (report.n_examples, report.n_errors, report.format) == (3, 0, "preference")
    assert report.n_chars == 3 * len("Capital of France?PARIS.paris.")
    assert validate(jsonl(CHAT)).format == "supervised"
    assert len(list(iter_examples([jsonl(pair(), pair())]))) == 2


@pytest.mark.parametrize(
    ("example", "field", "message"),
    [
        (pair(input=None), "input", "missing required field 'input'"),
        (pair(non_preferred_output=None), "non_preferred_output", "missing required field"),
        (pair(input=[]), "input", "input must be an object"),
        (pair(input={"tools": []}), "input", "missing required field 'messages'"),
        (pair(input={"messages": []}), "input.messages", "must not be empty"),
        (pair(input={"messages": [{"role": "user"}]}), "input.messages[0].content", "missing"),
        (
            pair(input={"messages": [{"role": "robot", "content": "x"}]}),
            "input.messages[0].role",
            "role must be one of",
        ),
        (pair(input={"messages": [], "extra": 1}), "input.extra", "unknown field"),
        (
            pair(input={"messages": [{"role": "user", "content": "q"}], "tools": {}}),
            "input.tools",
            "tools must be an array of objects",
        ),
        (
            pair(input={"messages": [{"role": "user", "content": "q"}], "parallel_tool_calls": 1}),
            "input.parallel_tool_calls",
            "must be true or false",
        ),
        (pair(preferred_output=[]), "preferred_output", "array of one assistant message"),
        (
            pair(preferred_output={"role": "assistant", "content": "x"}),
            "preferred_output",
            "array of one assistant message",
        ),
        (
            pair(non_preferred_output=[{"role": "user", "content": "x"}]),
            "non_preferred_output[0].role",
            "role must be assistant",
        ),
        (
            pair(preferred_output=[{"role": "assistant", "content": ""}]),
            "preferred_output[0].content",
            "must not be empty",
        ),
        (
            pair(preferred_output=[{"role": "assistant", "content": 3}]),
            "preferred_output[0].content",
            "content must be a string",
        ),
        (pair(messages=CHAT["messages"]), None, "mixes preference fields with 'messages'"),
        (pair(rating=5), "rating", "unknown field"),
    ],
)
def test_each_bad_preference_line_is_named_with_its_field(
    example: dict[str, Any], field: str | None, message: str
) -> None:
    error = only_error(jsonl(pair(), example))

    assert (error.line, error.field) == (2, field)
    assert message in error.message


def test_every_bad_line_is_reported_with_its_number() -> None:
    lines = [pair(), {"x": 1}, pair(), pair(preferred_output=[]), CHAT, pair()]

    report = validate(jsonl(*lines))

    assert report.n_examples == 3
    assert [(e.line, e.field) for e in report.errors] == [
        (2, None),
        (4, "preferred_output"),
        (5, None),
    ]
    assert "a supervised example in a file of preference examples" in report.errors[2].message


def test_a_supervised_file_refuses_preference_lines() -> None:
    error = only_error(jsonl(CHAT, pair()))

    assert error.line == 2
    assert "a preference example in a file of supervised examples" in error.message
