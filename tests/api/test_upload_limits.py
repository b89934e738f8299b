"""The upload parser against hostile and malformed bodies, on a server with a 200 KB upload limit.

Bodies are built by hand (field order, truncation, sizes) and the worst ones sent over a bare
socket that stops as soon as the server answers, so a test sees how much the server read.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from ftaas_api.uploads import MAX_FIELD_BYTES, MAX_PARTS
from ftaas_core.settings import get_settings
from ftaas_core.storage import get_store
from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import chat_line, jsonl, taught_dataset
from tests.support.services import Process

MAX_UPLOAD = 200_000
BOUNDARY = "ftaas-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(backend: Backend) -> Iterator[tuple[str, Process]]:
    with api_server(backend, FTAAS_MAX_UPLOAD_BYTES=str(MAX_UPLOAD)) as running:
        yield running


@pytest.fixture(scope="module")
def key(server: tuple[str, Process]) -> str:
    return new_key(f"uploads-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def client(server: tuple[str, Process], key: str) -> Iterator[httpx2.Client]:
    with tenant_client(server[0], key) as http:
        yield http


def part(name: str, value: bytes, filename: str | None = None, headers: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n"
    return head.encode() + value + b"\r\n"


def closed(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


PURPOSE = part("purpose", b"fine-tune")


def file_part(content: bytes) -> bytes:
    return part("file", content, filename="d.jsonl")


def post(
    http: httpx2.Client, body: bytes | Iterable[bytes], content_type: str = CONTENT_TYPE
) -> httpx2.Response:
    return http.post("/v1/files", content=body, headers={"Content-Type": content_type})


def assert_error(response: httpx2.Response, status: int | tuple[int, ...]) -> dict[str, object]:
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), (
        response.text
    )
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


def tmp_files() -> list[Path]:
    tmp = get_settings().upload_tmp_dir
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


def stored_state(http: httpx2.Client) -> tuple[list[str], list[str]]:
    """The tenant's file ids and every object under ``files/``: what an upload may add."""
    ids = [f["id"] for f in http.get("/v1/files", params={"limit": 100}).json()["data"]]
    return ids, get_store().list("files")


# -- 1. exactly one file part, whatever the order of the fields ------------------------------
def test_a_field_after_the_file_is_not_written_into_the_dataset(client: httpx2.Client) -> None:
    content = taught_dataset()
    note = jsonl([chat_line("Injected?", "Yes.")])
    created = post(client, closed(PURPOSE, file_part(content), part("note", note)))
    assert created.status_code == 200, created.text
    assert created.json()["bytes"] == len(content)
    assert client.get(f"/v1/files/{created.json()['id']}/content").content == content


def test_the_file_may_come_before_purpose(client: httpx2.Client) -> None:
    """The order of the Node SDK and of ``curl -F file=@t.jsonl -F purpose=fine-tune``."""
    content = taught_dataset()
    created = post(client, closed(file_part(content), PURPOSE))
    assert created.status_code == 200, created.text
    assert client.get(f"/v1/files/{created.json()['id']}/content").content == content


def test_purpose_after_the_file_is_still_validated(client: httpx2.Client) -> None:
    before = stored_state(client)
    refused = post(client, closed(file_part(taught_dataset()), part("purpose", b"assistants")))
    assert assert_error(refused, 400)["param"] == "purpose"
    assert stored_state(client) == before
    assert tmp_files() == []


def test_a_second_file_part_is_refused(client: httpx2.Client) -> None:
    before = stored_state(client)
    dataset = file_part(taught_dataset())
    assert assert_error(post(client, closed(PURPOSE, dataset, dataset)), 400)["param"] == "file"
    assert stored_state(client) == before
    assert tmp_files() == []


# -- 2. a body without its closing boundary ---------------------------------------------------
def test_a_truncated_body_is_refused_and_leaves_nothing(client: httpx2.Client) -> None:
    before = stored_state(client)
    lines = taught_dataset().splitlines(keepends=True)[:12]
    whole = closed(PURPOSE, file_part(b"".join(lines)))
    cut = whole[: whole.index(lines[11])]  # after line 11 of 12, no closing boundary
    assert assert_error(post(client, cut), 400)["param"] == "file"
    assert stored_state(client) == before
    assert tmp_files() == []


# -- 3. every part of the body is bounded, before memory grows --------------------------------
def send_raw(url: str, key: str, head: dict[str, str], chunks: Iterable[bytes]) -> tuple[int, int]:
    """POST ``chunks`` to ``/v1/files`` over a bare socket, stopping as soon as the server
    answers; returns the status and the body bytes sent until then."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, "Authorization": f"Bearer {key}"} | head
    request = "POST /v1/files HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(request.encode() + b"\r\n")
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        error = json.loads(response.read())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return response.status, sent


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_many_large_fields_are_refused_before_memory_grows(
    server: tuple[str, Process], key: str
) -> None:
    url, process = server

    def fields() -> Iterator[bytes]:  # 3,000 fields of 60 KB: 180 MB, chunked
        yield PURPOSE
        for i in range(3000):
            yield part(f"f{i}", b"x" * 60_000)

    peak = peak_rss(process.pid)
    status, sent = send_raw(
        url, key, {"Content-Type": CONTENT_TYPE, "Transfer-Encoding": "chunked"}, chunked(fields())
    )
    assert status in (400, 413)
    assert sent < 20 * MB  # what the socket buffers hold, on loopback up to several MB
    assert peak_rss(process.pid) - peak < 20 * MB


def chunked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    yield b"0\r\n\r\n"


def test_too_many_parts_are_refused(client: httpx2.Client) -> None:
    fields = [part(f"f{i}", b"x") for i in range(MAX_PARTS)]
    assert_error(post(client, closed(PURPOSE, *fields, file_part(taught_dataset()))), 400)


def test_a_field_over_its_limit_is_refused(client: httpx2.Client) -> None:
    long = part("purpose", b"x" * (MAX_FIELD_BYTES + 1))
    assert assert_error(post(client, closed(long, file_part(taught_dataset()))), 400)["param"]


def test_the_whole_body_is_bounded_even_where_the_parser_discards_it(
    server: tuple[str, Process], key: str
) -> None:
    """An epilogue after the closing boundary (or a preamble) is no part: only the body limit
    holds it."""
    url, _ = server

    def body() -> Iterator[bytes]:
        yield closed(PURPOSE, file_part(taught_dataset()))
        for _ in range(3000):  # 200 MB
            yield b"\r\n" * 32_768

    status, sent = send_raw(
        url, key, {"Content-Type": CONTENT_TYPE, "Transfer-Encoding": "chunked"}, chunked(body())
    )
    assert status == 413
    assert sent < 20 * MB  # what the socket buffers hold, on loopback up to several MB
    declared = {"Content-Type": CONTENT_TYPE, "Content-Length": str(100 * MB)}
    assert send_raw(url, key, declared, []) == (413, 0)


# -- 4. bad input is a 4xx with OpenAI's error body, never a 500 ------------------------------
def with_expiry(seconds: str) -> bytes:
    anchor = part("expires_after[anchor]", b"created_at")
    return closed(PURPOSE, anchor, part("expires_after[seconds]", seconds.encode()), file_part(b""))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(with_expiry("²"), CONTENT_TYPE, id="superscript-digit-seconds"),
        pytest.param(with_expiry("9" * 5000), CONTENT_TYPE, id="5000-digit-seconds"),
        pytest.param(
            closed(PURPOSE, file_part(taught_dataset())),
            "multipart/form-data; boundary=another",
            id="wrong-boundary",
        ),
        pytest.param(b"garbage, not multipart", CONTENT_TYPE, id="garbage-body"),
        pytest.param(
            closed(PURPOSE, file_part(taught_dataset())),
            f"multipart/form-data; boundary={'b' * 300}",
            id="300-character-boundary",
        ),
        pytest.param(
            closed(PURPOSE, part("file", taught_dataset(), filename="n" * 100_000)),
            CONTENT_TYPE,
            id="100-KB-filename",
        ),
        pytest.param(
            closed(PURPOSE, part("file", b"{}", headers="X-A: 1\r\n" * 20)),
            CONTENT_TYPE,
            id="20-part-headers",
        ),
    ],
)
def test_bad_input_is_a_4xx_with_an_error_body(
    client: httpx2.Client, body: bytes, content_type: str
) -> None:
    before = stored_state(client)
    assert_error(post(client, body, content_type), (400, 413))
    assert stored_state(client) == before
    assert tmp_files() == []


def test_a_5_mb_part_header_is_a_400_under_the_default_limits(http: httpx2.Client) -> None:
    """Under the 512 MiB default the body limit lets it through: the parser's header bound holds."""
    padded = part("file", taught_dataset(), headers=f"X-Pad: {'p' * 5 * MB}\r\n")
    assert_error(post(http, closed(PURPOSE, padded)), 400)
    assert tmp_files() == []


def test_a_client_that_disconnects_mid_upload_is_a_quiet_log_line(
    server: tuple[str, Process], key: str
) -> None:
    url, process = server
    parts = urlsplit(url)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {MAX_UPLOAD}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode() + PURPOSE + part("file", taught_dataset())[:-2])
        deadline = time.monotonic() + 20
        while not tmp_files():  # the file part is streaming into its temporary file
            assert time.monotonic() < deadline, "no temporary upload file appeared"
            time.sleep(0.05)
    deadline = time.monotonic() + 20
    while tmp_files() or "disconnected" not in process.output():
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.05)
    assert "unhandled error" not in process.output()
    assert "Traceback" not in process.output()
