"""The validator's fast path: a JSONL line decoded by msgspec straight into typed structs.

The structs admit a subset of what :func:`ftaas_core.datasets.parse_example` accepts, never
more: a line they refuse (or that decodes but breaks a rule types cannot say) goes to that
precise path, which accepts it or words its error. So the fast path only has to be sure, and
the error messages stay those of one implementation. msgspec refuses lone surrogates, invalid
UTF-8, NaN and integers beyond 64 bits outright, so none of those ever passes here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ftaas_core.examples import ChatExample, CompletionExample, Example, Message


class _TextPart(msgspec.Struct, gc=False):
    type: Literal["text"]
    text: str


class _Turn(msgspec.Struct, tag_field="role", forbid_unknown_fields=True, gc=False):
    """A message; each role is a subclass holding the keys OpenAI allows on it."""

    role: ClassVar[str]
    weight: ClassVar[int] = 0
    content: str | list[_TextPart] | None = None
    name: Any = None

    def text(self) -> str | None:
        """The content as one string; None when it is missing (it is an error)."""
        content = self.content
        if type(content) is str:
            return content
        return None if content is None else "".join(part.text for part in content)


class _System(_Turn, tag="system"):
    role = "system"


class _User(_Turn, tag="user"):
    role = "user"


class _Tool(_Turn, tag="tool"):
    role = "tool"
    tool_call_id: Any = None


class _Assistant(_Turn, tag="assistant"):
    role = "assistant"
    weight: Literal[0, 1] = 1  # type: ignore[misc]  # a field here, 0 on the other roles
    tool_calls: Any = None
    function_call: Any = None

    def text(self) -> str | None:
        """A tool-calling turn carries its payload in tool_calls, so its content may be null."""
        text = super().text()
        if text is None and (self.tool_calls is not None or self.function_call is not None):
            return ""
        return text


class Line(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Every top-level key of either kind of example; which kind it is is checked after."""

    messages: list[_System | _User | _Assistant | _Tool] | UnsetType = UNSET
    tools: Any = UNSET
    functions: Any = UNSET
    parallel_tool_calls: Any = UNSET
    prompt: str | UnsetType = UNSET
    completion: str | UnsetType = UNSET


_DECODER = msgspec.json.Decoder(Line)


def decode(line: bytes | None, max_line_bytes: int) -> Line | None:
    """The line as structs; None when it is too long to be sure of or does not fit them."""
    if line is None or len(line) > max_line_bytes:
        return None
    try:
        return _DECODER.decode(line)
    except (msgspec.MsgspecError, RecursionError):
        return None


def _is_chat(line: Line) -> bool | None:
    """True for a chat example, False for a prompt/completion one, None for neither."""
    if line.messages is not UNSET:
        return None if line.prompt is not UNSET or line.completion is not UNSET else True
    chat_only = (line.tools, line.functions, line.parallel_tool_calls)
    if line.prompt is UNSET or line.completion is UNSET or any(v is not UNSET for v in chat_only):
        return None
    return False if line.completion else None


def n_chars(line: Line) -> int | None:
    """The example's text length when it is valid, else None; builds nothing."""
    is_chat = _is_chat(line)
    if is_chat is None:
        return None
    if not is_chat:
        return len(line.prompt) + len(line.completion)  # type: ignore[arg-type]
    total, trained = 0, False
    for turn in line.messages:  # type: ignore[union-attr]
        text = turn.content if type(turn.content) is str else turn.text()  # the usual, inline
        if text is None:
            return None
        total += len(text)
        trained = trained or (turn.weight == 1 and bool(text))
    return total if trained else None


def example(line: Line) -> Example | None:
    """The example when it is valid, else None: what the trainer and the report read."""
    if n_chars(line) is None:
        return None
    if line.messages is UNSET:
        return CompletionExample(prompt=line.prompt, completion=line.completion)  # type: ignore[arg-type]
    return ChatExample(
        messages=tuple(
            Message(role=turn.role, content=turn.text() or "", weight=turn.weight)
            for turn in line.messages
        )
    )
