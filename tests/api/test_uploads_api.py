"""OpenAI's Uploads API on every backend: the official SDK's ``upload_file_chunked`` and its
three calls, parts sent in parallel out of order, every refusal of ``complete``, cancelled
and expired uploads that leave nothing behind (no part, no S3 multipart upload)."""

from __future__ import annotations

import hashlib
import http.client as http_client
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx2
import openai
import pytest
from sqlalchemy import select, update

from ftaas_core import chunked
from ftaas_core.db import get_database
from ftaas_core.models import Upload
from ftaas_core.reconcile import reconcile_once
from ftaas_core.settings import get_settings
from ftaas_core.storage import S3_MIN_PART_BYTES, S3Store, get_store
from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import chat_line, jsonl, taught_dataset
from tests.support.uploads import content, dataset

MiB = 1024 * 1024


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture
def sdk(api_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=api_key, max_retries=0)


def create(http: httpx2.Client, size: int, **extra: Any) -> dict[str, Any]:
    body = {"bytes": size, "filename": "big.jsonl", "mime_type": "text/jsonl"}
    response = http.post("/v1/uploads", json=body | {"purpose": "fine-tune"} | extra)
    assert response.status_code == 200, response.text
    return response.json()


def send_part(http: httpx2.Client, upload_id: str, data: bytes, **fields: str) -> httpx2.Response:
    return http.post(f"/v1/uploads/{upload_id}/parts", data=fields, files={"data": ("blob", data)})


def part_id(http: httpx2.Client, upload_id: str, data: bytes, **fields: str) -> str:
    response = send_part(http, upload_id, data, **fields)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "upload.part"
    return str(response.json()["id"])


def complete(http: httpx2.Client, upload_id: str, part_ids: list[str], **extra: Any) -> Any:
    return http.post(f"/v1/uploads/{upload_id}/complete", json={"part_ids": part_ids} | extra)


def refused(response: httpx2.Response, param: str | None, status: int = 400) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return str(error["message"])


def leftovers(upload_id: str) -> list[str]:
    """Whatever the store still holds of the upload: objects under its prefix, and on S3 its
    multipart upload."""
    with get_database().session() as session:
        row = session.scalars(select(Upload).where(Upload.id == upload_id)).one()
    store = get_store()
    kept = store.list(f"uploads/{row.tenant_id}/{row.id}")
    if isinstance(store, S3Store):
        listing = store.client.list_multipart_uploads(Bucket=store.bucket)
        kept += [u["UploadId"] for u in listing.get("Uploads", []) if u["UploadId"] == row.staging]
    return kept


@pytest.mark.parametrize("part_size", [256 * 1024, S3_MIN_PART_BYTES])
def test_the_official_sdk_uploads_a_file_in_parts(
    sdk: openai.OpenAI, http: httpx2.Client, tmp_path: Path, part_size: int
) -> None:
    """Small parts (objects of their own on S3) and S3-sized ones with a short last part."""
    data = dataset(2 * part_size + 1000)
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    upload = sdk.uploads.upload_file_chunked(
        file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=part_size,
        md5=hashlib.md5(data).hexdigest(),
    )  # fmt: skip
    assert upload.status == "completed"
    assert upload.file is not None and upload.file.bytes == len(data)
    assert upload.file.status == "processed" and upload.file.filename == "train.jsonl"
    assert sdk.files.retrieve(upload.file.id).bytes == len(data)
    assert content(http, upload.file.id) == data
    assert leftovers(upload.id) == []


def test_create_parts_and_complete_one_by_one_with_the_official_sdk(
    sdk: openai.OpenAI, http: httpx2.Client
) -> None:
    data = taught_dataset()
    upload = sdk.uploads.create(
        bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    assert upload.status == "pending" and upload.file is None
    assert upload.expires_at == upload.created_at + 3600
    parts = [sdk.uploads.parts.create(upload_id=upload.id, data=p) for p in pieces(data, 500)]
    assert {p.upload_id for p in parts} == {upload.id}
    done = sdk.uploads.complete(upload_id=upload.id, part_ids=[p.id for p in parts])
    assert done.status == "completed" and done.file is not None
    assert content(http, done.file.id) == data
    job = sdk.fine_tuning.jobs.create(model="tiny", training_file=done.file.id)
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"


@pytest.mark.parametrize("numbered", [False, True])
def test_parts_sent_in_parallel_arrive_out_of_order(http: httpx2.Client, numbered: bool) -> None:
    """S3-sized parts, shuffled, four at a time: numbered by their place (as the ftaas SDK
    sends them) or not (S3 then gets them out of order and they are reordered)."""
    data = dataset(3 * S3_MIN_PART_BYTES + 5000)
    chunks = pieces(data, S3_MIN_PART_BYTES)
    upload = create(http, len(data))
    order = list(range(len(chunks)))
    random.Random(7).shuffle(order)

    def send(i: int) -> str:
        time.sleep(random.random() / 20)
        fields = {"part_number": str(i + 1)} if numbered else {}
        return part_id(http, upload["id"], chunks[i], **fields)

    with ThreadPoolExecutor(4) as pool:
        ids = dict(zip(order, pool.map(send, order), strict=True))
    response = complete(http, upload["id"], [ids[i] for i in range(len(chunks))])
    assert response.status_code == 200, response.text
    assert content(http, response.json()["file"]["id"]) == data
    assert leftovers(upload["id"]) == []


def test_a_part_sent_again_under_its_number_replaces_it(http: httpx2.Client) -> None:
    data = taught_dataset()
    upload = create(http, len(data))
    first = part_id(http, upload["id"], b"garbage" * 10, part_number="1")
    second = part_id(http, upload["id"], data, part_number="1")
    refused(complete(http, upload["id"], [first]), "part_ids")
    assert complete(http, upload["id"], [second]).status_code == 200


def test_complete_refuses_parts_that_are_unknown_repeated_or_another_uploads(
    http: httpx2.Client,
) -> None:
    data = taught_dataset()
    half = len(data) // 2
    upload, other = create(http, len(data)), create(http, len(data))
    a = part_id(http, upload["id"], data[:half])
    b = part_id(http, upload["id"], data[half:])
    theirs = part_id(http, other["id"], data[half:])
    assert "no part 'part-nope'" in refused(
        complete(http, upload["id"], [a, "part-nope"]), "part_ids"
    )
    assert "more than once" in refused(complete(http, upload["id"], [a, b, b]), "part_ids")
    assert theirs in refused(complete(http, upload["id"], [a, theirs]), "part_ids")
    assert "at least one" in refused(complete(http, upload["id"], []), "part_ids")
    # Refusals about the parts leave the upload pending: the right list still completes it.
    response = complete(http, upload["id"], [a, b])
    assert response.status_code == 200, response.text
    assert content(http, response.json()["file"]["id"]) == data


def test_complete_refuses_a_byte_total_other_than_declared(http: httpx2.Client) -> None:
    data = taught_dataset()
    upload = create(http, len(data) + 1)
    whole = part_id(http, upload["id"], data)
    message = refused(complete(http, upload["id"], [whole]), "part_ids")
    assert f"{len(data)} bytes, not the {len(data) + 1}" in message
    upload = create(http, len(data) - 1)
    refused(complete(http, upload["id"], [part_id(http, upload["id"], data)]), "part_ids")


def test_complete_refuses_an_md5_that_does_not_match(http: httpx2.Client) -> None:
    data = taught_dataset()
    upload = create(http, len(data))
    whole = part_id(http, upload["id"], data)
    response = complete(http, upload["id"], [whole], md5=hashlib.md5(b"other").hexdigest())
    assert "md5" in refused(response, "md5")
    assert response.json()["error"]["code"] == "md5_mismatch"
    # Once assembled the parts are spent: the upload is cancelled and leaves nothing.
    assert "cancelled" in refused(complete(http, upload["id"], [whole]), "id")
    assert leftovers(upload["id"]) == []


def test_an_invalid_dataset_is_refused_as_post_files_refuses_it(http: httpx2.Client) -> None:
    """The same validator, the same words: every bad line named."""
    good = jsonl([chat_line("q", "a")])
    data = good + b"{not json\n" + good + b'{"messages": []}\n' + b'{"prompt": 1}\n'
    direct = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("d.jsonl", data)}
    )
    upload = create(http, len(data))
    ids = [part_id(http, upload["id"], p) for p in pieces(data, 7)]  # lines across parts
    response = complete(http, upload["id"], ids)
    assert response.status_code == direct.status_code == 400
    assert response.json()["error"] == direct.json()["error"]
    assert (
        "line 2" in direct.json()["error"]["message"]
        and "line 5" in direct.json()["error"]["message"]
    )
    assert leftovers(upload["id"]) == []


def test_a_cancelled_upload_leaves_nothing_and_takes_no_more(http: httpx2.Client) -> None:
    data = dataset(S3_MIN_PART_BYTES + 100)
    upload = create(http, len(data))
    big, small = pieces(data, S3_MIN_PART_BYTES)
    part_id(http, upload["id"], big)  # an S3 part on S3
    part_id(http, upload["id"], small)  # an object of its own there
    response = http.post(f"/v1/uploads/{upload['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert leftovers(upload["id"]) == []
    assert "cancelled" in refused(send_part(http, upload["id"], small), "id")
    refused(http.post(f"/v1/uploads/{upload['id']}/cancel"), "id")


def test_another_tenants_upload_is_not_found(
    http: httpx2.Client, other_http: httpx2.Client
) -> None:
    upload = create(http, 10)
    refused(send_part(other_http, upload["id"], b"x" * 10), "id", 404)
    refused(complete(other_http, upload["id"], []), "id", 404)
    refused(other_http.post(f"/v1/uploads/{upload['id']}/cancel"), "id", 404)


def test_create_refuses_what_openai_refuses(http: httpx2.Client) -> None:
    body = {"bytes": 10, "filename": "f.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"}
    refused(http.post("/v1/uploads", json=body | {"purpose": "vision"}), "purpose")
    refused(http.post("/v1/uploads", json=body | {"bytes": 9 * 1024**3}), "bytes")
    refused(http.post("/v1/uploads", json={k: v for k, v in body.items() if k != "bytes"}), "bytes")
    expiring = create(http, 10, expires_after={"anchor": "created_at", "seconds": 3600})
    assert expiring["status"] == "pending"


def test_a_part_over_64_mib_is_refused_before_it_is_read(
    http: httpx2.Client, api_url: str, api_key: str
) -> None:
    """Its declared length alone is refused (413); the body is never sent."""
    upload = create(http, 10)
    conn = http_client.HTTPConnection(urlparse(api_url).netloc, timeout=30)
    conn.putrequest("POST", f"/v1/uploads/{upload['id']}/parts")
    for name, value in {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": str(65 * MiB),
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_an_expired_upload_takes_nothing_and_the_janitor_leaves_nothing(
    backend: Backend,
) -> None:
    """As if the API were killed mid-upload: its parts stay until the upload expires, then
    the reconciler's janitor expires it and removes them (and aborts S3's upload)."""
    data = dataset(S3_MIN_PART_BYTES + 100)
    big, small = pieces(data, S3_MIN_PART_BYTES)
    with (
        api_server(backend, FTAAS_UPLOADS_EXPIRE_SECONDS="3") as (url, _),
        tenant_client(url, new_key(f"expiry-{uuid.uuid4().hex[:6]}")) as http,
    ):
        upload = create(http, len(data))
        assert upload["expires_at"] == upload["created_at"] + 3
        part_id(http, upload["id"], big)
        part_id(http, upload["id"], small)
        assert leftovers(upload["id"]) != []
        time.sleep(4.5)
        assert "expired" in refused(send_part(http, upload["id"], small), "id")
        assert "expired" in refused(complete(http, upload["id"], []), "id")
    reconcile_once()
    assert leftovers(upload["id"]) == []


def test_the_janitor_expires_an_upload_whose_completing_process_was_killed(
    http: httpx2.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed for completion, then nothing: a day past its hour, it expires with its parts."""
    data = dataset(S3_MIN_PART_BYTES + 100)
    upload = create(http, len(data))
    for piece in pieces(data, S3_MIN_PART_BYTES):
        part_id(http, upload["id"], piece)
    with get_database().session() as session:
        claim = update(Upload).where(Upload.id == upload["id"]).values(status="completing")
        session.execute(claim)
    reconcile_once()
    assert leftovers(upload["id"]) != []  # a completion may still be running
    later = chunked.now() + 3600 + get_settings().upload_tmp_max_age_seconds + 60
    monkeypatch.setattr(chunked, "now", lambda: later)
    reconcile_once()
    assert leftovers(upload["id"]) == []
    with get_database().session() as session:
        assert session.scalars(select(Upload.status).where(Upload.id == upload["id"])).one() == (
            "expired"
        )


def open_multipart_uploads() -> set[str]:
    store = get_store()
    if not isinstance(store, S3Store):
        return set()
    listing = store.client.list_multipart_uploads(Bucket=store.bucket)
    return {u["UploadId"] for u in listing.get("Uploads", [])}


@pytest.mark.parametrize("valid", [True, False])
def test_post_files_sends_a_large_file_on_while_it_arrives(
    http: httpx2.Client, valid: bool
) -> None:
    """On S3 a POST /v1/files is sent on as a multipart upload while it streams in: kept only
    when it is valid, and an invalid one leaves no object and no multipart upload."""
    data = dataset(20 * MiB) + (b"" if valid else b"{broken\n")
    before = open_multipart_uploads()
    response = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("big.jsonl", data)}
    )
    if valid:
        assert response.status_code == 200, response.text
        assert content(http, response.json()["id"]) == data
    else:
        assert "line" in refused(response, None)
        deadline = time.monotonic() + 10  # the abort runs on the follower's thread
        while open_multipart_uploads() - before and time.monotonic() < deadline:
            time.sleep(0.1)
    assert open_multipart_uploads() <= before
