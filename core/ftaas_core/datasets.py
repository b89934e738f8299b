"""Training data: the JSONL validator shared by the API (uploads) and the worker (training)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from ftaas_core import fast_lines as fast
from ftaas_core.examples import (
    ChatExample,
    CompletionExample,
    DatasetFormat,
    Example,
    Message,
    PreferenceExample,
    format_of,
)

MAX_REPORTED_ERRORS = 20
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024

_ROLES = ("system", "user", "assistant", "tool")
# Top-level keys OpenAI accepts next to "messages"; they only matter for tool-use training.
_CHAT_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
_COMPLETION_KEYS = frozenset({"prompt", "completion"})
_PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
_PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
_BASE_MESSAGE_KEYS = frozenset({"role", "content", "name"})
_MESSAGE_KEYS = {
    "system": _BASE_MESSAGE_KEYS,
    "user": _BASE_MESSAGE_KEYS,
    "assistant": _BASE_MESSAGE_KEYS | {"weight", "tool_calls", "function_call"},
    "tool": _BASE_MESSAGE_KEYS | {"tool_call_id"},
}
_BOM = b"\xef\xbb\xbf"
_SUMMARY_ERRORS = 3
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class DatasetError:
    """One bad line, precise enough for a user to find and fix it."""

    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: {self.field}" if self.field else f"line {self.line}"
        return f"{where}: {self.message}"


class ExampleError(ValueError):
    """A decoded JSON value is not a valid example; ``field`` is the JSON path at fault."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class DatasetFormatError(ValueError):
    """Raised by :func:`iter_examples` so the trainer fails with the same error the API reports."""

    def __init__(self, error: DatasetError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class DatasetReport:
    """Outcome of validating a whole file; errors are capped but always counted.

    ``n_lines`` counts non-blank lines; ``n_chars`` counts all text of the valid examples
    (prompts included, since training reads them too) as a cheap size proxy.
    """

    n_examples: int = 0
    n_lines: int = 0
    n_bytes: int = 0
    errors: list[DatasetError] = field(default_factory=list)
    n_errors: int = 0
    n_chars: int = 0
    format: DatasetFormat | None = None  # of the first valid example; the others must match

    @property
    def ok(self) -> bool:
        return self.n_errors == 0 and self.n_examples > 0


def _clip(text: str) -> str:
    """Bounds user-controlled text echoed in errors, so error bodies stay small."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def _describe(value: object) -> str:
    """Renders an offending value the way the user wrote it in JSON (containers by type only)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(_clip(value))
    if isinstance(value, int | float):
        return _clip(repr(value))
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _check_text(text: str, path: str) -> str:
    """Rejects lone surrogates (from JSON \\u escapes): valid JSON, but they crash tokenizers."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ExampleError(path, "text contains an unpaired UTF-16 surrogate") from None
    return text


def _required_str(obj: dict[str, object], key: str, path: str) -> str:
    if key not in obj:
        raise ExampleError(path, f"missing required field '{key}'")
    value = obj[key]
    if not isinstance(value, str):
        raise ExampleError(path, f"{key} must be a string (got {_describe(value)})")
    return _check_text(value, path)


def _join_parts(parts: list[object], path: str) -> str:
    """Flattens OpenAI's ``[{"type": "text", "text": ...}]`` content into one string."""
    texts = []
    for j, part in enumerate(parts):
        part_path = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise ExampleError(part_path, f"content part must be an object (got {_describe(part)})")
        if part.get("type") != "text":
            raise ExampleError(
                f"{part_path}.type",
                f"content part type must be 'text' (got {_describe(part.get('type'))})",
            )
        texts.append(_required_str(part, "text", f"{part_path}.text"))
    return "".join(texts)


def _parse_content(message: dict[str, object], path: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return _check_text(content, path)
    if isinstance(content, list):
        return _join_parts(content, path)
    # A tool-calling turn carries its payload in tool_calls (assistant-only keys), so its
    # content may be null or absent.
    calls_tool = message.get("tool_calls") is not None or message.get("function_call") is not None
    if content is None and calls_tool:
        return ""
    if "content" not in message:
        raise ExampleError(path, "missing required field 'content'")
    raise ExampleError(
        path, f"content must be a string or an array of text parts (got {_describe(content)})"
    )


def _parse_message(message: object, path: str) -> Message:
    if not isinstance(message, dict):
        raise ExampleError(path, f"message must be an object (got {_describe(message)})")
    if "role" not in message:
        raise ExampleError(f"{path}.role", "missing required field 'role'")
    role = message["role"]
    if not isinstance(role, str) or role not in _ROLES:
        raise ExampleError(
            f"{path}.role", f"role must be one of {', '.join(_ROLES)} (got {_describe(role)})"
        )
    for key in message:
        if key not in _MESSAGE_KEYS[role]:
            if key == "weight":
                reason = "weight is only allowed on assistant messages"
            else:
                reason = f"unknown field {_describe(key)} on {role} messages"
            raise ExampleError(f"{path}.{_clip(key)}", reason)
    weight = message.get("weight", 1 if role == "assistant" else 0)
    if type(weight) is not int or weight not in (0, 1):
        raise ExampleError(f"{path}.weight", f"weight must be 0 or 1 (got {_describe(weight)})")
    content = _parse_content(message, f"{path}.content")
    return Message(role=role, content=content, weight=weight)


def _parse_messages(messages: object, path: str) -> tuple[Message, ...]:
    if not isinstance(messages, list):
        raise ExampleError(path, f"{path} must be an array (got {_describe(messages)})")
    if not messages:
        raise ExampleError(path, f"{path} must not be empty")
    return tuple(_parse_message(m, f"{path}[{i}]") for i, m in enumerate(messages))


def _parse_chat(messages: object) -> ChatExample:
    parsed = _parse_messages(messages, "messages")
    if not any(m.role == "assistant" and m.weight == 1 and m.content for m in parsed):
        raise ExampleError("messages", "no assistant message with weight 1 to train on")
    return ChatExample(messages=parsed)


def _parse_completion(obj: dict[str, object]) -> CompletionExample:
    prompt = _required_str(obj, "prompt", "prompt")
    completion = _required_str(obj, "completion", "completion")
    if not completion:
        raise ExampleError("completion", "completion must not be empty")
    return CompletionExample(prompt=prompt, completion=completion)


def _check_keys(obj: dict[str, object], allowed: frozenset[str], path: str = "") -> None:
    for key in obj:
        if key not in allowed:
            raise ExampleError(f"{path}{_clip(key)}", f"unknown field {_describe(key)}")


def _parse_answer(obj: dict[str, object], key: str) -> Message:
    """One of a preference example's answers: a list holding one assistant message."""
    if key not in obj:
        raise ExampleError(key, f"missing required field '{key}'")
    answer = obj[key]
    if not isinstance(answer, list) or len(answer) != 1:
        raise ExampleError(
            key, f"{key} must be an array of one assistant message (got {_describe(answer)})"
        )
    message = _parse_message(answer[0], f"{key}[0]")
    if message.role != "assistant":
        raise ExampleError(f"{key}[0].role", f"role must be assistant (got {message.role!r})")
    if not message.content:
        raise ExampleError(f"{key}[0].content", "content must not be empty")
    return message


def _parse_tools(conversation: dict[str, object]) -> str | None:
    tools = conversation.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise ExampleError(
            "input.tools", f"tools must be an array of objects (got {_describe(tools)})"
        )
    return json.dumps(tools, sort_keys=True, separators=(",", ":"))


def _parse_preference(obj: dict[str, object]) -> PreferenceExample:
    if "input" not in obj:
        raise ExampleError("input", "missing required field 'input'")
    conversation = obj["input"]
    if not isinstance(conversation, dict):
        raise ExampleError("input", f"input must be an object (got {_describe(conversation)})")
    _check_keys(conversation, _PREFERENCE_INPUT_KEYS, "input.")
    if "messages" not in conversation:
        raise ExampleError("input", "missing required field 'messages'")
    parallel = conversation.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ExampleError(
            "input.parallel_tool_calls",
            f"parallel_tool_calls must be true or false (got {_describe(parallel)})",
        )
    prompt = _parse_messages(conversation["messages"], "input.messages")
    return PreferenceExample(
        prompt=tuple(replace(message, weight=0) for message in prompt),
        preferred=_parse_answer(obj, "preferred_output"),
        non_preferred=_parse_answer(obj, "non_preferred_output"),
        tools=_parse_tools(conversation),
        parallel_tool_calls=parallel,
    )


def parse_example(obj: object) -> Example:
    """Validates one decoded JSON line; the single source of truth for API and trainer alike."""
    if not isinstance(obj, dict):
        raise ExampleError(None, f"expected a JSON object (got {_describe(obj)})")
    is_chat = "messages" in obj
    has_completion_keys = not _COMPLETION_KEYS.isdisjoint(obj)
    is_preference = not _PREFERENCE_KEYS.isdisjoint(obj)
    if is_chat and has_completion_keys:
        raise ExampleError(None, "example mixes 'messages' with 'prompt'/'completion'")
    if is_preference and (is_chat or has_completion_keys):
        raise ExampleError(
            None, "example mixes preference fields with 'messages' or 'prompt'/'completion'"
        )
    if is_preference:
        _check_keys(obj, _PREFERENCE_KEYS)
        return _parse_preference(obj)
    if not is_chat and not has_completion_keys:
        raise ExampleError(
            None,
            "expected 'messages' (chat), 'prompt' and 'completion', or 'input', "
            "'preferred_output' and 'non_preferred_output' (preference) fields",
        )
    _check_keys(obj, _CHAT_KEYS if is_chat else _COMPLETION_KEYS)
    return _parse_chat(obj["messages"]) if is_chat else _parse_completion(obj)


def _n_chars(example: Example) -> int:
    if isinstance(example, PreferenceExample):
        turns = (*example.prompt, example.preferred, example.non_preferred)
        return sum(len(m.content) for m in turns)
    if isinstance(example, ChatExample):
        return sum(len(m.content) for m in example.messages)
    return len(example.prompt) + len(example.completion)


class _LineReader:
    """Splits a byte stream into numbered lines, buffering at most one (bounded) line: the one
    that runs across chunks."""

    def __init__(self, max_line_bytes: int) -> None:
        # Slack for a BOM and a "\r" that are stripped before the exact length check.
        self._limit = max_line_bytes + len(_BOM) + 1
        self._buf = bytearray()
        self._too_long = False
        self._line_no = 0

    def feed(self, chunk: bytes) -> tuple[int, list[bytes | None]]:
        """The number of the first completed line and the completed lines, raw (a line left
        ``None`` ran past the limit across chunks)."""
        *complete, tail = chunk.split(b"\n")
        lines: list[bytes | None] = list(complete)
        if lines and (self._buf or self._too_long):
            self._append(complete[0])
            lines[0] = self._take()
        first = self._line_no + 1
        self._line_no += len(lines)
        self._append(tail)
        return first, lines

    def end(self) -> tuple[int, bytes | None] | None:
        """The last line when the stream does not end with a newline."""
        if not self._buf and not self._too_long:
            return None
        self._line_no += 1
        return self._line_no, self._take()

    def _append(self, part: bytes) -> None:
        if self._too_long:
            return
        if len(self._buf) + len(part) > self._limit:
            self._too_long = True
            self._buf = bytearray()
        else:
            self._buf += part

    def _take(self) -> bytes | None:
        line, self._buf = bytes(self._buf), bytearray()
        too_long, self._too_long = self._too_long, False
        return None if too_long else line


def _normalize(line_no: int, line: bytes | None, max_line_bytes: int) -> bytes | None:
    """The line without its "\r" (and the file's BOM); None when it is too long."""
    if line is None:
        return None
    if line.endswith(b"\r"):
        line = line[:-1]
    if line_no == 1 and line.startswith(_BOM):
        line = line[len(_BOM) :]
    return None if len(line) > max_line_bytes else line


def _parse_line(line: bytes | None, max_line_bytes: int) -> Example | None:
    """The precise path: returns None for a blank line; raises ExampleError naming the field
    at fault (None for undecodable lines)."""
    if line is None:
        raise ExampleError(None, f"line is longer than the maximum of {max_line_bytes} bytes")
    if not line or line.isspace():
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExampleError(None, f"invalid UTF-8 at byte {e.start + 1}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExampleError(None, f"invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ExampleError(None, "invalid JSON (nested too deeply)") from None
    except ValueError:
        # json raises a plain ValueError only for integers beyond sys.get_int_max_str_digits().
        raise ExampleError(None, "invalid JSON (number has too many digits)") from None
    return parse_example(obj)


def _example(line_no: int, line: bytes | None, max_line_bytes: int) -> Example | None:
    """One raw line's example (None when blank): the fast path when it is sure, else the
    precise one, which raises ExampleError."""
    decoded = fast.decode(line, max_line_bytes)
    if decoded is not None and (example := fast.example(decoded)) is not None:
        return example
    return _parse_line(_normalize(line_no, line, max_line_bytes), max_line_bytes)


class DatasetValidator:
    """Incremental: feed byte chunks of any size (a line may span chunks); never holds more
    than one line besides the chunk, so uploads can be validated while they stream to storage.

    Each line is decoded straight into typed structs and only counted (no example is built);
    a line that does not fit them goes through the precise path, which words its error.
    ``max_errors`` bounds the errors kept (all are counted): uploads answer with a few, while a
    dataset report lists many.
    """

    def __init__(
        self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, max_errors: int = MAX_REPORTED_ERRORS
    ) -> None:
        self._max_line_bytes = max_line_bytes
        self._max_errors = max_errors
        self._reader = _LineReader(max_line_bytes)
        self._report = DatasetReport()

    def feed(self, chunk: bytes) -> None:
        self._report.n_bytes += len(chunk)
        line_no, lines = self._reader.feed(chunk)
        report, max_bytes = self._report, self._max_line_bytes
        for line in lines:
            decoded = fast.decode(line, max_bytes)
            chars = fast.n_chars(decoded) if decoded is not None else None
            # Only supervised lines fit the structs: in a preference file they are an error.
            if chars is None or report.format == "preference":
                self._check(line_no, line)
            else:
                report.format = "supervised"
                report.n_lines += 1
                report.n_examples += 1
                report.n_chars += chars
            line_no += 1

    def finish(self) -> DatasetReport:
        """Checks a final line that lacks a trailing newline and returns the report."""
        last = self._reader.end()
        if last is not None:
            self._check(*last)
        return self._report

    def examples(self, chunks: Iterable[bytes]) -> Iterator[tuple[int, Example]]:
        """Validates a whole stream, yielding each valid example with its line number, for
        callers that look deeper than the format; :meth:`finish` still gives the report."""
        for chunk in chunks:
            self._report.n_bytes += len(chunk)
            line_no, lines = self._reader.feed(chunk)
            for i, line in enumerate(lines, line_no):
                if (example := self._check(i, line)) is not None:
                    yield i, example
        last = self._reader.end()
        if last is not None and (example := self._check(*last)) is not None:
            yield last[0], example

    def _check(self, line_no: int, line: bytes | None) -> Example | None:
        report = self._report
        try:
            example = _example(line_no, line, self._max_line_bytes)
            if example is not None:
                report.format = _same_format(report.format, example)
        except ExampleError as e:
            report.n_lines += 1
            report.n_errors += 1
            if len(report.errors) < self._max_errors:
                report.errors.append(DatasetError(line_no, e.field, e.message))
            return None
        if example is not None:
            report.n_lines += 1
            report.n_examples += 1
            report.n_chars += _n_chars(example)
        return example


def _same_format(fixed: DatasetFormat | None, example: Example) -> DatasetFormat:
    """A file holds one format, the first valid example's: a job trains with one method."""
    found = format_of(example)
    if fixed not in (None, found):
        raise ExampleError(
            None, f"a {found} example in a file of {fixed} examples: keep each kind in its own file"
        )
    return found


def _numbered_lines(
    chunks: Iterable[bytes], max_line_bytes: int
) -> Iterator[tuple[int, bytes | None]]:
    reader = _LineReader(max_line_bytes)
    for chunk in chunks:
        line_no, lines = reader.feed(chunk)
        yield from enumerate(lines, line_no)
    last = reader.end()
    if last is not None:
        yield last


def iter_examples(
    chunks: Iterable[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Example]:
    """Used by the trainer: yields parsed examples from a byte stream; raises
    DatasetFormatError on the first bad line (the file may have changed since validation)."""
    for line_no, line in _numbered_lines(chunks, max_line_bytes):
        try:
            example = _example(line_no, line, max_line_bytes)
        except ExampleError as e:
            raise DatasetFormatError(DatasetError(line_no, e.field, e.message)) from None
        if example is not None:
            yield example


def upload_refusal(report: DatasetReport) -> tuple[str, str | None] | None:
    """Why an uploaded file with this report is refused, as (message, param), or None: the
    words of /v1/files and of a completed /v1/uploads alike."""
    if report.n_errors:
        return summarize_errors(report)
    if report.n_examples == 0:
        return "The file holds no examples.", "file"
    return None


def summarize_errors(report: DatasetReport) -> tuple[str, str | None]:
    """(message, param) for an HTTP error body on a report that is not ok.

    Names the first few bad lines so users can fix them without a separate tool; param is
    the field path of the first error.
    """
    if not report.errors:
        return "Invalid training file: no training examples found", None
    shown = report.errors[:_SUMMARY_ERRORS]
    parts = [str(e) for e in shown]
    more = report.n_errors - len(shown)
    if more:
        parts.append(f"and {more} more error{'s' if more > 1 else ''}")
    return "Invalid training file: " + "; ".join(parts), shown[0].field
