"""Driving jobs through the HTTP API in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2

from tests.support.services import Process

TERMINAL = {"succeeded", "failed", "cancelled"}
# Settings under which the tiny model learns the taught facts in seconds.
HYPERPARAMETERS = {
    "n_epochs": 12,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "warmup_ratio": 0.0,
    "save_steps": 6,
}


def upload(http: httpx2.Client, content: bytes, name: str = "train.jsonl") -> str:
    response = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, content)}
    )
    response.raise_for_status()
    return response.json()["id"]


def create_job(http: httpx2.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/fine_tuning/jobs", json={"model": "tiny", **body})
    response.raise_for_status()
    return response.json()


def events(http: httpx2.Client, job_id: str) -> list[dict[str, Any]]:
    """All events, oldest first."""
    page = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()
    return page["data"][::-1]


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    workers: list[Process] = (),  # type: ignore[assignment]
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(w.output()[-4000:] for w in workers)
    raise TimeoutError(f"timed out waiting for {what}\n{logs}")


def wait_for_status(
    http: httpx2.Client,
    job_id: str,
    statuses: set[str],
    timeout: float = 180,
    workers: list[Process] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        job = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_until(current, timeout, f"{job_id} to reach {statuses}", workers)
