"""The example types shared by the API (validation) and the worker (training)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """One chat turn; ``weight`` 1 means the model is trained on it (assistant turns only)."""

    role: str
    content: str
    weight: int = 0


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str


Example = ChatExample | CompletionExample
