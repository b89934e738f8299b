"""The validator's fast path never accepts what the precise path refuses, and when it accepts,
it reads the same example: checked on thousands of mutated lines."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from ftaas_core import fast_lines
from ftaas_core.datasets import ExampleError, parse_example

VALUES: list[Any] = [
    None, True, False, 0, 1, -0.0, 1.0, 2, "", "x", "text", "assistant", "user", "tool",
    "system", [], [{"type": "text", "text": "a"}], [{"type": "image"}], {}, {"a": 1},
    [{"type": "text", "text": 5}], [{"type": "text"}], float("nan"),
]  # fmt: skip
KEYS = ["role", "content", "weight", "name", "tool_calls", "function_call", "tool_call_id"]
TOP_KEYS = ["messages", "prompt", "completion", "tools", "functions", "parallel_tool_calls"]
SEEDS: list[Any] = [
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {
        "messages": [
            {"role": "system", "content": "s", "name": "n"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}], "weight": 0},
            {"role": "tool", "content": "r", "tool_call_id": "c"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok", "x": 1}]},
        ],
        "tools": [],
    },
    {"prompt": "p", "completion": "c"},
]


def mutate(rng: random.Random, example: Any) -> Any:
    example = copy.deepcopy(example)
    for _ in range(rng.randint(1, 3)):
        messages = example.get("messages") if isinstance(example, dict) else None
        if isinstance(messages, list) and messages and rng.random() < 0.7:
            message = rng.choice(messages)
            if isinstance(message, dict):
                key = rng.choice(KEYS)
                if rng.random() < 0.3:
                    message.pop(key, None)
                else:
                    message[key] = copy.deepcopy(rng.choice(VALUES))
        elif isinstance(example, dict):
            key = rng.choice(TOP_KEYS)
            if rng.random() < 0.4:
                example.pop(key, None)
            else:
                example[key] = copy.deepcopy(
                    rng.choice([*VALUES, [{"role": "assistant", "content": "a"}]])
                )
    return example


def precise(raw: bytes) -> Any:
    try:
        return parse_example(json.loads(raw))
    except ExampleError:
        return None


def fast(raw: bytes) -> Any:
    decoded = fast_lines.decode(raw, 1 << 20)
    return None if decoded is None else fast_lines.example(decoded)


@pytest.mark.parametrize("seed", range(3))
def test_fast_path_agrees_with_the_precise_one(seed: int) -> None:
    rng = random.Random(seed)
    accepted = 0
    for _ in range(3000):
        raw = json.dumps(mutate(rng, rng.choice(SEEDS))).encode()
        if (example := fast(raw)) is not None:
            accepted += 1
            assert example == precise(raw), raw
            decoded = fast_lines.decode(raw, 1 << 20)
            assert decoded is not None
            assert fast_lines.n_chars(decoded) is not None
    assert accepted > 100  # the mutations leave plenty valid


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "\\ud800", "completion": "c"}',  # a lone surrogate
        b'{"prompt": "p", "completion": "c", "tools": []}',  # a chat key on a completion
        b'{"messages": [{"role": "user", "role": "assistant", "content": "a"}]}',
        b'{"messages": [{"role": "assistant", "content": "a", "weight": true}]}',
        b'{"messages": [{"role": "assistant", "content": "a", "weight": 1.0}]}',
        b'{"messages": [{"role": "user", "content": "a", "weight": 1}]}',
        b'{"messages": [{"role": "assistant", "content": ""}]}',
        b'{"messages": [], "prompt": "p"}',
        b'{"prompt": "p", "completion": "c"} {"prompt": "p", "completion": "c"}',
        b'[{"prompt": "p", "completion": "c"}]',
    ],
)
def test_what_the_fast_path_leaves_to_the_precise_one(raw: bytes) -> None:
    assert fast(raw) is None
