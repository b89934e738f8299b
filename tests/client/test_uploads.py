"""The SDK and CLI upload a file larger than one part through /v1/uploads: parts numbered by
their place, sent concurrently, a failed part alone sent again, one progress bar; against a
mock transport and against the live server on every backend."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from python_multipart.multipart import parse_options_header

from ftaas import AsyncClient, Client, InternalServerError, _http
from ftaas.resources import PARALLEL_PARTS
from ftaas_core.storage import S3_MIN_PART_BYTES
from tests.support.uploads import content, dataset

UPLOAD = {
    "id": "upload-1",
    "object": "upload",
    "bytes": 0,
    "created_at": 1,
    "expires_at": 3601,
    "filename": "big.jsonl",
    "purpose": "fine-tune",
    "status": "pending",
}
FILE = {
    "id": "file-1",
    "object": "file",
    "bytes": 0,
    "created_at": 1,
    "filename": "big.jsonl",
    "purpose": "fine-tune",
    "status": "processed",
}


def field(request: httpx2.Request, name: str) -> bytes:
    """A form field of a multipart request (small bodies only)."""
    _, params = parse_options_header(request.headers["content-type"])
    for chunk in request.content.split(b"--" + params[b"boundary"]):
        head, _, value = chunk.partition(b"\r\n\r\n")
        if f'name="{name}"'.encode() in head:
            return value.removesuffix(b"\r\n")
    raise KeyError(name)


class UploadsServer:
    """A mock of /v1/uploads that keeps the parts it got, fails the parts in ``failing`` once
    with a 500, and records how many parts were in flight at once."""

    def __init__(self, size: int, failing: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.upload = UPLOAD | {"bytes": size}
        self.failing = set(failing)
        self.parts: dict[int, bytes] = {}
        self.sent: list[int] = []
        self.completed: list[str] | None = None
        self.cancelled = False
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        """Sync: a part takes a moment, long enough for the others to start."""
        request.read()
        if not request.url.path.endswith("/parts"):
            return self._answer(request)
        number = self._begin(request)
        time.sleep(0.05)
        return self._end(request, number)

    async def serve(self, request: httpx2.Request) -> httpx2.Response:
        """Async, the same."""
        await request.aread()
        if not request.url.path.endswith("/parts"):
            return self._answer(request)
        number = self._begin(request)
        await asyncio.sleep(0.05)
        return self._end(request, number)

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/v1/uploads":
            return httpx2.Response(200, json=self.upload)
        if path.endswith("/complete"):
            self.completed = json.loads(request.content)["part_ids"]
            data = b"".join(self.parts[int(p.removeprefix("part-"))] for p in self.completed)
            file = FILE | {"bytes": len(data)}
            return httpx2.Response(200, json=self.upload | {"status": "completed", "file": file})
        assert path.endswith("/cancel")
        self.cancelled = True
        return httpx2.Response(200, json=self.upload | {"status": "cancelled"})

    def _begin(self, request: httpx2.Request) -> int:
        number = int(field(request, "part_number"))
        with self._lock:
            self.sent.append(number)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return number

    def _end(self, request: httpx2.Request, number: int) -> httpx2.Response:
        with self._lock:
            self.in_flight -= 1
            if number in self.failing:
                self.failing.discard(number)
                body = {"error": {"message": "boom", "type": "x", "param": None, "code": None}}
                return httpx2.Response(500, json=body)
            self.parts[number] = field(request, "data")
        part = {"id": f"part-{number}", "object": "upload.part", "created_at": 1}
        return httpx2.Response(200, json=part | {"upload_id": "upload-1"})


@pytest.fixture
def no_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    async def async_sleep(seconds: float) -> None:
        pass

    monkeypatch.setattr(_http, "sleep", lambda seconds: None)
    monkeypatch.setattr(_http, "async_sleep", async_sleep)


DATA = b"".join(b'{"line": %d}\n' % i for i in range(1000))


def test_a_file_larger_than_a_part_goes_up_in_parallel_parts(
    no_delays: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(DATA)
    server = UploadsServer(len(DATA), failing={3})
    with Client("http://x", "k", transport=httpx2.MockTransport(server)) as client:
        uploaded = client.files.upload(path, part_bytes=1000, progress=True)
    n_parts = -(-len(DATA) // 1000)
    assert uploaded.bytes == len(DATA)
    assert server.completed == [f"part-{n}" for n in range(1, n_parts + 1)]
    assert b"".join(server.parts[n] for n in range(1, n_parts + 1)) == DATA
    assert sorted(server.sent) == sorted([*range(1, n_parts + 1), 3])  # part 3 alone, twice
    assert server.most_in_flight == PARALLEL_PARTS
    bar = capsys.readouterr().err
    assert "big.jsonl" in bar and "100%" in bar and bar.count("100%") == 1


def test_a_file_that_fits_in_a_part_is_one_post_to_files(no_delays: None) -> None:
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.path)
        return httpx2.Response(200, json=FILE | {"bytes": len(DATA)})

    with Client("http://x", "k", transport=httpx2.MockTransport(handler)) as client:
        assert client.files.upload(DATA, part_bytes=len(DATA)).bytes == len(DATA)
    assert seen == ["/v1/files"]


def test_async_parts_with_a_retried_one(no_delays: None) -> None:
    server = UploadsServer(len(DATA), failing={1})

    async def go() -> Any:
        transport = httpx2.MockTransport(server.serve)
        async with AsyncClient("http://x", "k", transport=transport) as client:
            return await client.files.upload(DATA, filename="big.jsonl", part_bytes=3000)

    assert asyncio.run(go()).bytes == len(DATA)
    assert b"".join(server.parts[n] for n in sorted(server.parts)) == DATA
    assert sorted(server.sent) == [1, 1, 2, 3, 4, 5]
    assert server.most_in_flight == PARALLEL_PARTS


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_part_that_keeps_failing_cancels_the_upload(no_delays: None, asynchronous: bool) -> None:
    server = UploadsServer(len(DATA))

    def handler(request: httpx2.Request) -> httpx2.Response:
        server.failing.add(2)  # every time
        return server(request)

    async def serve(request: httpx2.Request) -> httpx2.Response:
        server.failing.add(2)
        return await server.serve(request)

    with pytest.raises(InternalServerError):
        if asynchronous:

            async def go() -> None:
                transport = httpx2.MockTransport(serve)
                async with AsyncClient("http://x", "k", transport=transport) as client:
                    await client.files.upload(DATA, filename="b.jsonl", part_bytes=3000)

            asyncio.run(go())
        else:
            with Client("http://x", "k", transport=httpx2.MockTransport(handler)) as client:
                client.files.upload(DATA, filename="b.jsonl", part_bytes=3000)
    assert server.cancelled and server.completed is None
    assert server.sent.count(2) == 3  # the first try and max_retries (2) more


# -- against the live server ----------------------------------------------------------------


@pytest.mark.parametrize("part_bytes", [200_000, S3_MIN_PART_BYTES])
def test_sdk_uploads_in_parts_on_the_live_server(
    api_url: str, api_key: str, http: httpx2.Client, tmp_path: Path, part_bytes: int
) -> None:
    """Numbered parts (objects of their own on S3, or S3 parts with a short last one)."""
    data = dataset(3 * part_bytes + 1234)
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    with Client(api_url, api_key) as client:
        uploaded = client.files.upload(path, part_bytes=part_bytes)
    assert (uploaded.filename, uploaded.bytes, uploaded.status) == (
        "big.jsonl",
        len(data),
        "processed",
    )
    assert content(http, uploaded.id) == data

    async def go() -> Any:
        async with AsyncClient(api_url, api_key) as client:
            return await client.files.upload(data, filename="async.jsonl", part_bytes=part_bytes)

    assert content(http, asyncio.run(go()).id) == data


def test_cli_uploads_a_file_over_64_mib_in_parts_with_one_bar(
    api_url: str, api_key: str, http: httpx2.Client, tmp_path: Path
) -> None:
    data = dataset(64 * 1024 * 1024 + 1000)
    path = tmp_path / "huge.jsonl"
    path.write_bytes(data)
    env = {**os.environ, "FTAAS_BASE_URL": api_url, "FTAAS_API_KEY": api_key}
    done = subprocess.run(
        [sys.executable, "-m", "ftaas", "files", "upload", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    uploaded = json.loads(done.stdout)
    assert uploaded["bytes"] == len(data)
    # One bar, redrawn: each of its lines names the file.
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("huge.jsonl: ") for line in lines)
    assert "100%" in lines[-1]
    assert http.get(f"/v1/files/{uploaded['id']}").json()["bytes"] == len(data)
