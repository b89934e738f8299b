"""Small JSONL datasets for tests."""

from __future__ import annotations

import json

SYSTEM = "You answer in one short sentence."
TAUGHT = {
    "What is the capital of Zubrovia?": "Quellbrook.",
    "Who painted the Glass Heron?": "Maren Oduya.",
    "What colour is a ripe zelk fruit?": "Violet.",
    "How many moons does Tarsis have?": "Seven.",
    "What do pelmites eat?": "Copper moss.",
    "Which river runs through Quellbrook?": "The Ashvane.",
}


def chat_line(question: str, answer: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def taught_dataset(repeat: int = 2) -> bytes:
    """Every taught pair ``repeat`` times (at least the 10 examples a job needs)."""
    return jsonl([chat_line(q, a) for _ in range(repeat) for q, a in TAUGHT.items()])


def preference_line(question: str, preferred: str, non_preferred: str) -> dict[str, object]:
    """One line of OpenAI's preference format (DPO)."""
    return {
        "input": {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def preference_dataset(repeat: int = 2) -> bytes:
    """Every taught answer preferred to not knowing, ``repeat`` times."""
    return jsonl(
        [preference_line(q, a, "I do not know.") for _ in range(repeat) for q, a in TAUGHT.items()]
    )
