"""The example types shared by the API (validation) and the worker (training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Message:
    """One chat turn; ``weight`` 1 means the model is trained on it (assistant turns only)."""

    role: str
    content: str
    weight: int = 0


@dataclass(frozen=True)
class ChatExample:
    """``tools``: the tools offered to the model, as canonical JSON (hashable, so that the
    report finds duplicates); only preference examples carry them so far."""

    messages: tuple[Message, ...]
    tools: str | None = None


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferenceExample:
    """A conversation and two answers to it, one preferred: OpenAI's format for DPO.

    The prompt's turns are context only (weight 0); each answer is one assistant turn.
    """

    prompt: tuple[Message, ...]
    preferred: Message
    non_preferred: Message
    tools: str | None = None
    parallel_tool_calls: bool | None = None

    def answered(self, answer: Message) -> ChatExample:
        """The conversation ending in ``answer``, its only trained turn."""
        return ChatExample((*self.prompt, answer), self.tools)


SupervisedExample = ChatExample | CompletionExample
Example = SupervisedExample | PreferenceExample
DatasetFormat = Literal["supervised", "preference"]
"""What a file holds, and so which method trains on it: supervised, or DPO on preferences."""


def format_of(example: Example) -> DatasetFormat:
    return "preference" if isinstance(example, PreferenceExample) else "supervised"
