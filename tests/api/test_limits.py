"""Quotas, rate limits, body bounds and concurrency, on a server of their own with low limits."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import upload


@pytest.fixture(scope="module")
def strict_url(backend: Backend) -> Iterator[str]:
    limits = {"RATE_LIMIT_PER_MINUTE": "60", "MAX_ACTIVE_JOBS": "2", "MAX_REQUEST_BYTES": "4096"}
    with api_server(backend, **{f"FTAAS_{k}": v for k, v in limits.items()}) as (url, _):
        yield url


def test_active_job_quota_is_429_with_retry_after(strict_url: str) -> None:
    with tenant_client(strict_url, new_key(f"quota-{uuid.uuid4().hex[:6]}")) as http:
        file_id = upload(http, taught_dataset())
        body = {"model": "tiny", "training_file": file_id}
        assert http.post("/v1/fine_tuning/jobs", json=body).status_code == 200
        assert http.post("/v1/fine_tuning/jobs", json=body).status_code == 200
        refused = http.post("/v1/fine_tuning/jobs", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "exceeded_quota"
        assert int(refused.headers["retry-after"]) > 0


def test_rate_limit_is_429_with_retry_after(strict_url: str) -> None:
    headers = {"Authorization": f"Bearer {new_key(f'rate-{uuid.uuid4().hex[:6]}')}"}
    if time.time() % 60 > 50:  # the counter is per minute: start well inside a window
        time.sleep(61 - time.time() % 60)
    with httpx2.Client(base_url=strict_url, headers=headers) as http:  # it creates no jobs
        statuses = [http.get("/v1/files").status_code for _ in range(70)]
        assert statuses.count(200) <= 60
        limited = http.get("/v1/files")
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert 0 < int(limited.headers["retry-after"]) <= 60


def test_request_bodies_are_bounded(strict_url: str) -> None:
    with tenant_client(strict_url, new_key(f"body-{uuid.uuid4().hex[:6]}")) as http:
        big = {"model": "tiny", "training_file": "file-x", "metadata": {"k": "v" * 8000}}
        response = http.post("/v1/fine_tuning/jobs", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: bounded while it streams
            yield b'{"model": "tiny", "metadata": {"k": "'
            yield b"v" * 8000
            yield b'"}}'

        response = http.post(
            "/v1/fine_tuning/jobs", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413


def test_concurrent_creates_with_one_idempotency_key_make_one_job(
    api_url: str, api_key: str, http: httpx2.Client
) -> None:
    file_id = upload(http, taught_dataset())
    key = uuid.uuid4().hex

    async def create_all() -> list[httpx2.Response]:
        headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
        async with httpx2.AsyncClient(base_url=api_url, headers=headers, timeout=60) as client:
            body = {"model": "tiny", "training_file": file_id}
            return await asyncio.gather(
                *(client.post("/v1/fine_tuning/jobs", json=body) for _ in range(20))
            )

    responses = asyncio.run(create_all())
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1


def test_many_concurrent_uploads_and_polls_all_succeed(
    api_url: str, api_key: str, http: httpx2.Client
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    data = taught_dataset()
    job = http.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": upload(http, data)}
    ).json()

    async def load() -> tuple[list[int], list[int]]:
        limits = httpx2.Limits(max_connections=100)
        async with httpx2.AsyncClient(
            base_url=api_url, headers=headers, timeout=120, limits=limits
        ) as client:
            files = {"file": ("u.jsonl", data)}
            uploads = await asyncio.gather(
                *(
                    client.post("/v1/files", data={"purpose": "fine-tune"}, files=files)
                    for _ in range(100)
                )
            )
            polls = []
            for _ in range(400):  # 200 polls a second for two seconds
                polls.append(asyncio.create_task(client.get(f"/v1/fine_tuning/jobs/{job['id']}")))
                await asyncio.sleep(1 / 200)
            done = await asyncio.gather(*polls)
            await asyncio.gather(*(client.delete(f"/v1/files/{u.json()['id']}") for u in uploads))
        return [u.status_code for u in uploads], [p.status_code for p in done]

    uploads, polls = asyncio.run(load())
    assert set(uploads) == {200}
    assert set(polls) == {200}
