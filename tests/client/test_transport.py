"""The SDK's HTTP behaviour against ``httpx2.MockTransport``: retries and their backoff,
``Retry-After``, which requests are safe to repeat, error mapping, paging, polling, downloads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ftaas import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    FtaasError,
    IntegrityError,
    InternalServerError,
    RateLimitError,
    WaitTimeoutError,
    _http,
)

Handler = Callable[[httpx2.Request], httpx2.Response]

FILE = {
    "id": "file-1",
    "object": "file",
    "bytes": 3,
    "created_at": 1,
    "filename": "a.jsonl",
    "purpose": "fine-tune",
    "status": "processed",
}


def job(job_id: str = "ftjob-1", status: str = "queued") -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": 1,
        "error": None,
        "fine_tuned_model": None,
        "finished_at": None,
        "hyperparameters": {"n_epochs": 1},
        "model": "tiny",
        "organization_id": "acme",
        "result_files": [],
        "seed": 1,
        "status": status,
        "trained_tokens": None,
        "training_file": "file-1",
        "validation_file": None,
        "estimated_finish": None,
    }


def error(status: int, message: str = "boom", **headers: str) -> httpx2.Response:
    body = {"error": {"message": message, "type": "x", "param": None, "code": None}}
    return httpx2.Response(status, json=body, headers=headers)


class Recorder:
    """Answers requests from a script of responses (or exceptions) and remembers them."""

    def __init__(self, *script: httpx2.Response | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the SDK asked for, sync or async, without waiting."""
    recorded: list[float] = []

    async def async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(_http, "sleep", recorded.append)
    monkeypatch.setattr(_http, "async_sleep", async_sleep)
    return recorded


def client(handler: Handler, max_retries: int = 2) -> Client:
    return Client(
        "http://ftaas.test",
        "ftk_test",
        max_retries=max_retries,
        transport=httpx2.MockTransport(handler),
    )


def async_client(handler: Handler, max_retries: int = 2) -> AsyncClient:
    transport = httpx2.MockTransport(handler)
    return AsyncClient(
        "http://ftaas.test/v1/", "ftk_test", max_retries=max_retries, transport=transport
    )


def test_retries_a_500_then_succeeds_with_jittered_backoff(delays: list[float]) -> None:
    server = Recorder(error(500), error(502), httpx2.Response(200, json=FILE))
    with client(server) as sdk:
        assert sdk.files.get("file-1").id == "file-1"
    assert len(server.requests) == 3
    assert str(server.requests[0].url) == "http://ftaas.test/v1/files/file-1"
    assert server.requests[0].headers["authorization"] == "Bearer ftk_test"
    assert 0.375 <= delays[0] <= 0.5 and 0.75 <= delays[1] <= 1.0


def test_retry_after_is_honoured(delays: list[float]) -> None:
    server = Recorder(error(429, **{"Retry-After": "3"}), httpx2.Response(200, json=FILE))
    with client(server) as sdk:
        sdk.files.get("file-1")
    assert delays == [3.0]


def test_gives_up_after_max_retries_with_the_typed_error(delays: list[float]) -> None:
    server = Recorder(*[error(429, "slow down", **{"Retry-After": "1"})] * 3)
    with client(server) as sdk, pytest.raises(RateLimitError) as caught:
        sdk.files.list()
    assert caught.value.message == "slow down"
    assert delays == [1.0, 1.0]


def test_no_retry_on_400_and_the_error_carries_the_body(delays: list[float]) -> None:
    body = {
        "error": {
            "message": "bad seed",
            "type": "invalid_request_error",
            "param": "seed",
            "code": "invalid_request",
        }
    }
    server = Recorder(httpx2.Response(400, json=body, headers={"x-request-id": "req-42"}))
    with client(server) as sdk, pytest.raises(BadRequestError) as caught:
        sdk.fine_tuning.jobs.get("ftjob-1")
    assert len(server.requests) == 1 and delays == []
    err = caught.value
    assert (err.status_code, err.message, err.param, err.code, err.request_id) == (
        400,
        "bad seed",
        "seed",
        "invalid_request",
        "req-42",
    )


def test_a_body_that_is_not_json_still_maps_by_status(delays: list[float]) -> None:
    server = Recorder(httpx2.Response(401, text="<html>nope</html>"))
    with client(server) as sdk, pytest.raises(AuthenticationError, match="nope"):
        sdk.models.list()


def test_job_create_is_retried_under_one_idempotency_key(delays: list[float]) -> None:
    server = Recorder(error(503), httpx2.ReadTimeout("slow"), httpx2.Response(200, json=job()))
    with client(server) as sdk:
        created = sdk.fine_tuning.jobs.create(
            "tiny", "file-1", hyperparameters={"n_epochs": 2, "lora_r": 8}
        )
    assert created.id == "ftjob-1"
    keys = {r.headers["idempotency-key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1 and len(keys.pop()) == 36
    body = json.loads(server.requests[0].content)
    assert body["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2, "lora_r": 8}
    assert "hyperparameters" not in body

    server = Recorder(error(500), httpx2.Response(200, json=job()))
    with client(server) as sdk:
        sdk.fine_tuning.jobs.create("tiny", "file-1", idempotency_key="mine")
    assert [r.headers["idempotency-key"] for r in server.requests] == ["mine", "mine"]


def test_other_posts_are_not_retried_once_sent(delays: list[float], tmp_path: Path) -> None:
    server = Recorder(error(500))
    with client(server) as sdk, pytest.raises(InternalServerError):
        sdk.files.upload(b'{"prompt": "a", "completion": "b"}\n')
    server = Recorder(httpx2.ReadTimeout("slow"))
    with client(server) as sdk, pytest.raises(APITimeoutError):
        sdk.fine_tuning.jobs.cancel("ftjob-1")
    assert len(server.requests) == 1 and delays == []

    # Refused before anything was sent: safe to try again, and the file is streamed again.
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"x" * 200_000)
    server = Recorder(httpx2.ConnectError("refused"), httpx2.Response(200, json=FILE))
    with client(server) as sdk:
        sdk.files.upload(path)
    assert len(server.requests) == 2
    assert b'filename="train.jsonl"' in server.requests[1].content
    assert server.requests[1].content.count(b"x" * 200_000) == 1


def test_connection_errors_become_api_connection_error_after_retries(delays: list[float]) -> None:
    server = Recorder(*[httpx2.ConnectError("refused")] * 4)
    with client(server, max_retries=3) as sdk, pytest.raises(APIConnectionError, match="refused"):
        sdk.files.list()
    assert len(server.requests) == 4 and len(delays) == 3


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTAAS_BASE_URL", raising=False)
    monkeypatch.delenv("FTAAS_API_KEY", raising=False)
    with pytest.raises(FtaasError, match="FTAAS_BASE_URL"):
        Client()
    monkeypatch.setenv("FTAAS_BASE_URL", "http://example.test:8000/v1/")
    with pytest.raises(FtaasError, match="FTAAS_API_KEY"):
        Client()
    monkeypatch.setenv("FTAAS_API_KEY", "ftk_env")
    with Client() as sdk:
        assert sdk.base_url == "http://example.test:8000"


def test_list_pages_with_after(delays: list[float]) -> None:
    pages = [
        {"data": [job("ftjob-3"), job("ftjob-2")], "has_more": True, "last_id": "ftjob-2"},
        {"data": [job("ftjob-1")], "has_more": False, "last_id": "ftjob-1"},
    ]
    server = Recorder(*[httpx2.Response(200, json={"object": "list", **p}) for p in pages])
    with client(server) as sdk:
        assert [j.id for j in sdk.fine_tuning.jobs.list(limit=2)] == [
            "ftjob-3",
            "ftjob-2",
            "ftjob-1",
        ]
    assert [dict(r.url.params) for r in server.requests] == [
        {"limit": "2"},
        {"limit": "2", "after": "ftjob-2"},
    ]


def event(n: int) -> dict[str, Any]:
    return {"id": f"ftevent-{n}", "created_at": n, "level": "info", "message": f"event {n}"}


def test_stream_events_yields_each_new_event_once_oldest_first(delays: list[float]) -> None:
    def events(*numbers: int) -> httpx2.Response:
        return httpx2.Response(200, json={"object": "list", "data": [event(n) for n in numbers]})

    server = Recorder(
        httpx2.Response(200, json=job(status="running")),
        events(2, 1),
        httpx2.Response(200, json=job(status="running")),
        events(2, 1),
        httpx2.Response(200, json=job(status="succeeded")),
        events(4, 3, 2, 1),
    )
    with client(server) as sdk:
        streamed = [
            e.message for e in sdk.fine_tuning.jobs.events.stream("ftjob-1", poll_interval=0.25)
        ]
    assert streamed == ["event 1", "event 2", "event 3", "event 4"]
    assert delays == [0.25, 0.25]


def test_wait_times_out_with_a_timeout_error(delays: list[float]) -> None:
    server = Recorder(*[httpx2.Response(200, json=job(status="running"))] * 2)
    with client(server) as sdk, pytest.raises(TimeoutError) as caught:
        sdk.fine_tuning.jobs.wait("ftjob-1", timeout=0)
    assert isinstance(caught.value, WaitTimeoutError) and caught.value.job.status == "running"


def adapter_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b'{"r": 8}'
        info = tarfile.TarInfo("adapter_config.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_download_follows_a_redirect_and_checks_the_announced_sha256(
    delays: list[float], tmp_path: Path
) -> None:
    archive = adapter_archive()
    server = Recorder(
        httpx2.Response(
            307,
            headers={
                "Location": "http://store.test/a.tar.gz",
                "X-Content-SHA256": hashlib.sha256(archive).hexdigest(),
            },
        ),
        httpx2.Response(200, content=archive),
    )
    with client(server) as sdk:
        adapter = sdk.fine_tuning.jobs.download_adapter(
            "ftjob-1", tmp_path / "a", checkpoint="ftckpt-9"
        )
    assert (
        server.requests[0].url.path == "/v1/fine_tuning/jobs/ftjob-1/checkpoints/ftckpt-9/adapter"
    )
    assert [p.name for p in adapter.iterdir()] == ["adapter_config.json"]


def test_async_retries_backoff_idempotency_and_connection_errors(
    delays: list[float], tmp_path: Path
) -> None:
    archive = adapter_archive()

    async def scenario() -> None:
        server = Recorder(
            error(500), error(429, **{"Retry-After": "2"}), httpx2.Response(200, json=job())
        )
        async with async_client(server) as sdk:
            await sdk.fine_tuning.jobs.create("tiny", "file-1")
        assert str(server.requests[0].url) == "http://ftaas.test/v1/fine_tuning/jobs"
        assert len({r.headers["idempotency-key"] for r in server.requests}) == 1
        assert delays[1] == 2.0 and 0.375 <= delays[0] <= 0.5

        server = Recorder(error(400))
        async with async_client(server) as sdk:
            with pytest.raises(BadRequestError):
                await sdk.files.get("file-1")
        assert len(server.requests) == 1

        server = Recorder(error(502))
        async with async_client(server) as sdk:
            with pytest.raises(InternalServerError):
                await sdk.fine_tuning.jobs.cancel("ftjob-1")
        assert len(server.requests) == 1

        server = Recorder(*[httpx2.ConnectError("refused")] * 3)
        async with async_client(server) as sdk:
            with pytest.raises(APIConnectionError):
                await sdk.models.list()
        assert len(server.requests) == 3

        bad = {"X-Content-SHA256": "0" * 64}
        server = Recorder(httpx2.Response(200, content=archive, headers=bad))
        async with async_client(server) as sdk:
            with pytest.raises(IntegrityError):
                await sdk.fine_tuning.jobs.download_adapter("ftjob-1", tmp_path / "bad")
        assert list((tmp_path / "bad").iterdir()) == []

    asyncio.run(scenario())


def test_the_ftaas_command_imports_no_server_library_to_parse() -> None:
    """Every installed distribution adds its commands, and none pays for the server stack."""
    code = (
        "import sys, ftaas, ftaas.cli\n"
        "ftaas.cli.build_parser()\n"
        "heavy = {'fastapi', 'sqlalchemy', 'torch', 'transformers', 'redis', 'rq', 'boto3'}\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
