"""Unit tests for the streaming JSONL training-data validator."""

from __future__ import annotations

import json
import random

import pytest

from ftaas_core.datasets import (
    MAX_REPORTED_ERRORS,
    ChatExample,
    CompletionExample,
    DatasetError,
    DatasetFormatError,
    DatasetReport,
    DatasetValidator,
    ExampleError,
    Message,
    iter_examples,
    parse_example,
    summarize_errors,
)

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
COMPLETION = {"prompt": "2+2=", "completion": "4"}


def jsonl(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def validate(data: bytes, *, chunk_size: int | None = None, **kwargs: int) -> DatasetReport:
    validator = DatasetValidator(**kwargs)
    step = chunk_size or max(len(data), 1)
    for i in range(0, len(data), step):
        validator.feed(data[i : i + step])
    return validator.finish()


def only_error(data: bytes, **kwargs: int) -> DatasetError:
    report = validate(data, **kwargs)
    assert report.n_errors == 1, report.errors
    return report.errors[0]


def chat(*messages: object, **extra: object) -> dict[str, object]:
    return {"messages": list(messages), **extra}


# --- valid examples -------------------------------------------------------------------------


def test_valid_chat() -> None:
    example = parse_example(
        chat(
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "bob"},
            {"role": "assistant", "content": "yo"},
        )
    )
    assert example == ChatExample(
        messages=(
            Message("system", "be brief", 0),
            Message("user", "hi", 0),
            Message("assistant", "yo", 1),
        )
    )


def test_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    example = parse_example(
        chat({"role": "user", "content": parts}, {"role": "assistant", "content": parts})
    )
    assert isinstance(example, ChatExample)
    assert [m.content for m in example.messages] == ["ab", "ab"]


def test_weights() -> None:
    example = parse_example(
        chat(
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "bad", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "good", "weight": 1},
        )
    )
    assert isinstance(example, ChatExample)
    assert [m.weight for m in example.messages] == [0, 0, 0, 1]


def test_tool_messages_and_ignored_openai_keys() -> None:
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    example = parse_example(
        chat(
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": call},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            {"role": "assistant", "content": None, "tool_calls": call, "weight": 0},
            {"role": "assistant", "content": "It is sunny."},
            tools=[{"type": "function", "function": {"name": "f"}}],
            functions=[],
            parallel_tool_calls=False,
        )
    )
    assert isinstance(example, ChatExample)
    assert [(m.role, m.content, m.weight) for m in example.messages] == [
        ("user", "weather?", 0),
        ("assistant", "", 1),
        ("tool", "sunny", 0),
        ("assistant", "", 0),
        ("assistant", "It is sunny.", 1),
    ]


def test_prompt_completion() -> None:
    assert parse_example(COMPLETION) == CompletionExample("2+2=", "4")
    assert parse_example({"prompt": "", "completion": "x"}) == CompletionExample("", "x")


def test_report_counts() -> None:
    data = jsonl(CHAT, COMPLETION) + b"\n  \n" + jsonl(CHAT)
    report = validate(data)
    assert report == DatasetReport(
        n_examples=3,
        n_lines=3,
        n_bytes=len(data),
        errors=[],
        n_errors=0,
        n_chars=4 + 5 + 4,
        format="supervised",
    )
    assert report.ok


def test_empty_file_is_not_ok() -> None:
    report = validate(b"\n\n")
    assert (report.n_examples, report.n_lines, report.n_errors) == (0, 0, 0)
    assert not report.ok


# --- errors, with exact line numbers and fields ---------------------------------------------


BAD_EXAMPLES = [
    ([1, 2], None, "expected a JSON object (got array)"),
    ("text", None, "expected a JSON object (got 'text')"),
    (
        {},
        None,
        "expected 'messages' (chat), 'prompt' and 'completion', or 'input', 'preferred_output' "
        "and 'non_preferred_output' (preference) fields",
    ),
    ({**CHAT, **COMPLETION}, None, "example mixes 'messages' with 'prompt'/'completion'"),
    ({**CHAT, "extra": 1}, "extra", "unknown field 'extra'"),
    ({**COMPLETION, "tools": []}, "tools", "unknown field 'tools'"),
    ({"messages": "hi"}, "messages", "messages must be an array (got 'hi')"),
    ({"messages": []}, "messages", "messages must not be empty"),
    (chat("hi"), "messages[0]", "message must be an object (got 'hi')"),
    (chat({"content": "x"}), "messages[0].role", "missing required field 'role'"),
    (
        chat({"role": "user", "content": "q"}, {"role": "bot", "content": "a"}),
        "messages[1].role",
        "role must be one of system, user, assistant, tool (got 'bot')",
    ),
    (
        chat({"role": None, "content": "a"}),
        "messages[0].role",
        "role must be one of system, user, assistant, tool (got null)",
    ),
    (
        chat({"role": "user", "content": "q", "weight": 1}),
        "messages[0].weight",
        "weight is only allowed on assistant messages",
    ),
    (
        chat({"role": "assistant", "content": "a", "weight": 2}),
        "messages[0].weight",
        "weight must be 0 or 1 (got 2)",
    ),
    (
        chat({"role": "assistant", "content": "a", "weight": True}),
        "messages[0].weight",
        "weight must be 0 or 1 (got true)",
    ),
    (
        chat({"role": "assistant", "content": "a", "weight": 1.0}),
        "messages[0].weight",
        "weight must be 0 or 1 (got 1.0)",
    ),
    (
        chat({"role": "user", "content": "q", "tool_calls": []}),
        "messages[0].tool_calls",
        "unknown field 'tool_calls' on user messages",
    ),
    (
        chat({"role": "assistant", "content": "a", "contents": "b"}),
        "messages[0].contents",
        "unknown field 'contents' on assistant messages",
    ),
    (chat({"role": "user"}), "messages[0].content", "missing required field 'content'"),
    (
        chat({"role": "assistant", "content": None}),
        "messages[0].content",
        "content must be a string or an array of text parts (got null)",
    ),
    (
        chat({"role": "assistant", "content": 5}),
        "messages[0].content",
        "content must be a string or an array of text parts (got 5)",
    ),
    (
        chat({"role": "assistant", "content": ["x"]}),
        "messages[0].content[0]",
        "content part must be an object (got 'x')",
    ),
    (
        chat({"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}),
        "messages[0].content[0].type",
        "content part type must be 'text' (got 'image_url')",
    ),
    (
        chat({"role": "assistant", "content": [{"type": "text", "text": 1}]}),
        "messages[0].content[0].text",
        "text must be a string (got 1)",
    ),
    (
        chat({"role": "user", "content": "q"}),
        "messages",
        "no assistant message with weight 1 to train on",
    ),
    (
        chat({"role": "assistant", "content": "a", "weight": 0}),
        "messages",
        "no assistant message with weight 1 to train on",
    ),
    (
        chat({"role": "assistant", "content": ""}),
        "messages",
        "no assistant message with weight 1 to train on",
    ),
    (
        chat({"role": "assistant", "content": "\ud800"}),
        "messages[0].content",
        "text contains an unpaired UTF-16 surrogate",
    ),
    ({"prompt": "p"}, "completion", "missing required field 'completion'"),
    ({"completion": "c"}, "prompt", "missing required field 'prompt'"),
    ({"prompt": 1, "completion": "c"}, "prompt", "prompt must be a string (got 1)"),
    ({"prompt": "p", "completion": ["c"]}, "completion", "completion must be a string (got array)"),
    ({"prompt": "p", "completion": ""}, "completion", "completion must not be empty"),
]


@pytest.mark.parametrize(("obj", "field", "message"), BAD_EXAMPLES)
def test_parse_example_errors(obj: object, field: str | None, message: str) -> None:
    with pytest.raises(ExampleError) as info:
        parse_example(obj)
    assert (info.value.field, info.value.message) == (field, message)


@pytest.mark.parametrize(("obj", "field", "message"), BAD_EXAMPLES)
def test_validator_reports_line_and_field(obj: object, field: str | None, message: str) -> None:
    data = jsonl(CHAT) + b"\n" + jsonl(obj, COMPLETION)
    report = validate(data)
    assert report.errors == [DatasetError(3, field, message)]
    assert (report.n_examples, report.n_lines, report.n_errors) == (2, 3, 1)
    assert not report.ok


def test_long_values_are_clipped_in_messages() -> None:
    with pytest.raises(ExampleError) as info:
        parse_example(chat({"role": "x" * 1000, "content": "a"}))
    assert len(info.value.message) < 120
    assert info.value.message.endswith("…')")


def test_invalid_json() -> None:
    error = only_error(jsonl(CHAT) + b'{"prompt": "a" "completion": "b"}\n')
    assert error == DatasetError(2, None, "invalid JSON (Expecting ',' delimiter at column 16)")


def test_deeply_nested_json() -> None:
    error = only_error(b"[" * 100_000 + b"\n" + jsonl(CHAT))
    assert error == DatasetError(1, None, "invalid JSON (nested too deeply)")


def test_huge_integer() -> None:
    error = only_error(b'{"prompt": ' + b"9" * 10_000 + b', "completion": "c"}')
    assert error == DatasetError(1, None, "invalid JSON (number has too many digits)")


def test_invalid_utf8() -> None:
    data = jsonl(CHAT) + b'{"prompt": "\xff", "completion": "c"}\n' + jsonl(CHAT)
    assert only_error(data) == DatasetError(2, None, "invalid UTF-8 at byte 13")


def test_overlong_line() -> None:
    ok = b'{"prompt": "", "completion": "' + b"x" * 68 + b'"}'
    assert len(ok) == 100
    data = ok + b"\n" + ok[:-1] + b" }\n" + ok + b"\r\n" + ok + b" \r\n"
    report = validate(data, max_line_bytes=100)
    message = "line is longer than the maximum of 100 bytes"
    assert report.errors == [DatasetError(2, None, message), DatasetError(4, None, message)]
    assert report.n_examples == 2
    # Streaming byte by byte: the discarded bytes must not be buffered nor leak into line 3.
    assert validate(data, max_line_bytes=100, chunk_size=1) == report


def test_overlong_last_line_without_newline() -> None:
    report = validate(jsonl(CHAT) + b"x" * 1000, max_line_bytes=100, chunk_size=7)
    assert report.errors == [DatasetError(2, None, "line is longer than the maximum of 100 bytes")]


def test_overlong_line_is_not_buffered() -> None:
    validator = DatasetValidator(max_line_bytes=100)
    for _ in range(1000):
        validator.feed(b"x" * 1000)
    assert len(validator._reader._buf) == 0
    assert validator.finish().n_errors == 1


def test_bom_crlf_and_last_line_without_newline() -> None:
    data = b"\xef\xbb\xbf" + jsonl(CHAT).replace(b"\n", b"\r\n") + b"\r\n" + jsonl(COMPLETION)
    data = data.rstrip(b"\n")
    report = validate(data)
    assert (report.n_examples, report.n_lines, report.n_errors) == (2, 2, 0)
    assert validate(data, chunk_size=1) == report


def test_bom_only_stripped_at_file_start() -> None:
    data = jsonl(CHAT) + b"\xef\xbb\xbf" + jsonl(CHAT)
    assert only_error(data).line == 2


def test_errors_capped_but_counted() -> None:
    data = b"nope\n" * (MAX_REPORTED_ERRORS + 5) + jsonl(CHAT)
    report = validate(data)
    assert len(report.errors) == MAX_REPORTED_ERRORS
    assert report.n_errors == MAX_REPORTED_ERRORS + 5
    assert report.errors[-1].line == MAX_REPORTED_ERRORS
    assert (report.n_examples, report.n_lines) == (1, MAX_REPORTED_ERRORS + 6)


def test_error_cap_is_a_parameter_and_examples_come_with_lines() -> None:
    data = jsonl(CHAT) + b"nope\n" * 50 + b"\n" + jsonl(COMPLETION)[:-1]  # no final newline
    validator = DatasetValidator(max_errors=40)
    examples = list(validator.examples(data[i : i + 7] for i in range(0, len(data), 7)))
    report = validator.finish()
    assert examples == [(1, parse_example(CHAT)), (53, parse_example(COMPLETION))]
    assert (len(report.errors), report.n_errors, report.n_bytes) == (40, 50, len(data))


# --- chunking -------------------------------------------------------------------------------


def test_byte_chunks_match_single_chunk() -> None:
    parts = [{"type": "text", "text": "héllo ✓ 🎉"}]
    data = (
        b"\xef\xbb\xbf"
        + jsonl(CHAT, chat({"role": "assistant", "content": parts}))
        + b"\r\n\n"
        + b"garbage\r\n"
        + b'{"prompt": "\xe2\x82", "completion": "c"}\n'
        + jsonl({"messages": [{"role": "bot"}]}, COMPLETION)
    )
    whole = validate(data)
    assert (whole.n_examples, whole.n_errors, whole.n_bytes) == (3, 3, len(data))
    for size in (1, 2, 3, 5, 64):
        assert validate(data, chunk_size=size) == whole


def test_empty_chunks_are_harmless() -> None:
    validator = DatasetValidator()
    for byte in jsonl(CHAT):
        validator.feed(b"")
        validator.feed(bytes([byte]))
    assert validator.finish().n_examples == 1


# --- iter_examples --------------------------------------------------------------------------


def test_iter_examples_yields_examples() -> None:
    data = b"\xef\xbb\xbf" + jsonl(CHAT) + b"\n" + jsonl(COMPLETION).rstrip(b"\n")
    chunks = [data[i : i + 3] for i in range(0, len(data), 3)]
    examples = list(iter_examples(chunks))
    assert examples == [parse_example(CHAT), parse_example(COMPLETION)]


def test_iter_examples_raises_on_first_bad_line() -> None:
    data = jsonl(CHAT, COMPLETION, {"prompt": "p", "completion": 3}) + b"nope\n"
    seen = []
    with pytest.raises(DatasetFormatError) as info:
        for example in iter_examples([data]):
            seen.append(example)
    assert len(seen) == 2
    assert info.value.error == DatasetError(3, "completion", "completion must be a string (got 3)")
    assert str(info.value) == "line 3: completion: completion must be a string (got 3)"
    assert isinstance(info.value, ValueError)


def test_iter_examples_overlong_last_line() -> None:
    with pytest.raises(DatasetFormatError) as info:
        list(iter_examples([jsonl(CHAT), b"x" * 50], max_line_bytes=10))
    assert info.value.error.line == 1


# --- summarize_errors -----------------------------------------------------------------------


def test_summarize_errors() -> None:
    bad_role = {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}
    data = jsonl(CHAT, CHAT, bad_role) + b"x\n" * 6 + b"{oops\n"
    message, param = summarize_errors(validate(data))
    assert message == (
        "Invalid training file: "
        "line 3: messages[1].role: role must be one of system, user, assistant, tool (got 'bot'); "
        "line 4: invalid JSON (Expecting value at column 1); "
        "line 5: invalid JSON (Expecting value at column 1); "
        "and 5 more errors"
    )
    assert param == "messages[1].role"


def test_summarize_single_error_without_field() -> None:
    message, param = summarize_errors(validate(jsonl(CHAT) + b"[1]\n"))
    assert message == "Invalid training file: line 2: expected a JSON object (got array)"
    assert param is None


def test_summarize_counts_unreported_errors() -> None:
    report = validate(b"x\n" * 30)
    message, _ = summarize_errors(report)
    assert message.endswith("; and 27 more errors")
    message, _ = summarize_errors(validate(b"x\n" * 4))
    assert message.endswith("; and 1 more error")


def test_summarize_no_examples() -> None:
    assert summarize_errors(validate(b"")) == (
        "Invalid training file: no training examples found",
        None,
    )


# --- fuzz -----------------------------------------------------------------------------------

_FRAGMENTS = [
    *(jsonl(o) for o in (CHAT, COMPLETION, *(bad for bad, _, _ in BAD_EXAMPLES))),
    b"\n",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xe2\x82",
    b"{",
    b"[" * 50,
    b'"',
    b"\\u",
    b"null",
]


def _random_data(rng: random.Random) -> bytes:
    pieces = []
    for _ in range(rng.randrange(12)):
        if rng.random() < 0.3:
            pieces.append(rng.randbytes(rng.randrange(40)))
        else:
            fragment = bytearray(rng.choice(_FRAGMENTS))
            for _ in range(rng.randrange(3)):  # mutate a few bytes
                if fragment:
                    fragment[rng.randrange(len(fragment))] = rng.randrange(256)
            pieces.append(bytes(fragment))
    return b"".join(pieces)


def test_fuzz_validator_never_raises_and_is_chunk_invariant() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        data = _random_data(rng)
        max_line_bytes = rng.choice([16, 200, 8 * 1024 * 1024])
        whole = validate(data, max_line_bytes=max_line_bytes)
        assert validate(data, chunk_size=rng.randint(1, 17), max_line_bytes=max_line_bytes) == whole
        assert whole.n_examples + whole.n_errors == whole.n_lines
        assert len(whole.errors) == min(whole.n_errors, MAX_REPORTED_ERRORS)
        try:
            examples = list(iter_examples([data], max_line_bytes=max_line_bytes))
        except DatasetFormatError as e:
            assert e.error == whole.errors[0]
        else:
            assert whole.n_errors == 0
            assert len(examples) == whole.n_examples
        summarize_errors(whole)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    keys = ["messages", "role", "content", "weight", "prompt", "completion", "type", "text"]
    scalars = [None, True, 0, 1, 2, 1.5, "", "x", "assistant", "user", "tool", "text", "\ud800"]
    kind = rng.random()
    if depth > 3 or kind < 0.4:
        return rng.choice(scalars)
    if kind < 0.6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_fuzz_parse_example_only_raises_example_error() -> None:
    rng = random.Random(99)
    for _ in range(3000):
        value = _random_value(rng)
        try:
            example = parse_example(value)
        except ExampleError as e:
            assert e.message
        else:
            assert isinstance(example, ChatExample | CompletionExample)
