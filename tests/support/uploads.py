"""What the upload tests share: large valid datasets and reading a file back."""

from __future__ import annotations

import httpx2

from tests.support.data import chat_line, jsonl


def dataset(size: int) -> bytes:
    """Valid chat JSONL of at least ``size`` bytes, each line different."""
    lines, total, i = [], 0, 0
    while total < size:
        line = jsonl([chat_line(f"question {i} {'x' * 200}", f"answer {i}")])
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


def content(http: httpx2.Client, file_id: str) -> bytes:
    return http.get(f"/v1/files/{file_id}/content").content
