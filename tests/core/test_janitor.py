"""The reconciler's janitor on every backend: what a killed process left of unfinished uploads,
and expired files, go; what is young or another deployment's stays."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import select

from ftaas_core import reconcile
from ftaas_core.db import get_database
from ftaas_core.models import File, Tenant, now
from ftaas_core.reconcile import reconcile_once
from ftaas_core.settings import get_settings
from ftaas_core.storage import LocalStore, S3Store, get_store
from tests.conftest import Backend

DAY = 24 * 3600


def aged(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half an upload")
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


@pytest.fixture
def tmp_dir(backend: Backend) -> Iterator[Path]:
    """The upload temp dir, emptied afterwards (the upload tests expect it empty)."""
    tmp = get_settings().upload_tmp_dir
    yield tmp
    for path in tmp.glob("upload-janitor-*"):
        path.unlink(missing_ok=True)


def test_stale_upload_temp_files_go_and_young_ones_stay(tmp_dir: Path) -> None:
    stale = aged(tmp_dir / "upload-janitor-stale.jsonl", DAY + 60)
    young = aged(tmp_dir / "upload-janitor-young.jsonl", DAY - 600)
    reconcile_once()
    assert not stale.exists()
    assert young.exists()


def test_stale_local_store_writes_go_and_young_ones_stay(backend: Backend) -> None:
    store = get_store()
    if not isinstance(store, LocalStore):
        pytest.skip("the store is not a local directory")
    stale = aged(store.root / "files" / "janitor" / ".upload-stale", DAY + 60)
    young = aged(store.root / "files" / "janitor" / ".upload-young", 60)
    store.put_stream("files/janitor/kept", [b"x"])
    reconcile_once()
    assert not stale.exists()
    assert young.exists()
    assert store.list("files/janitor") == ["files/janitor/.upload-young", "files/janitor/kept"]
    store.delete_prefix("files/janitor")


@pytest.fixture
def s3(backend: Backend) -> Iterator[tuple[Any, str, str]]:
    """A boto3 client on the backend's S3 endpoint, its bucket and this deployment's prefix."""
    if not isinstance(get_store(), S3Store):
        pytest.skip("the store is not S3")
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["FTAAS_S3_ENDPOINT_URL"])
    url = urlparse(os.environ["FTAAS_STORAGE_URL"])
    yield client, url.netloc, url.path.strip("/")
    for upload in client.list_multipart_uploads(Bucket=url.netloc).get("Uploads", []):
        if "janitor" in upload["Key"]:
            client.abort_multipart_upload(
                Bucket=url.netloc, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def start_multipart(client: Any, bucket: str, key: str) -> str:
    """What a process killed in the middle of ``S3Store.put_stream`` leaves: a begun multipart
    upload with a part in it."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 100)
    return upload_id


def test_stale_s3_multipart_uploads_under_the_prefix_are_aborted(
    s3: tuple[Any, str, str],
) -> None:
    """Aborted once older than the bound by both S3's clock and the janitor's: moto dates every
    multipart upload 2010-11-10, and an upload in progress must survive that."""
    client, bucket, prefix = s3
    ours = start_multipart(client, bucket, f"{prefix}/files/janitor/ours")
    # In the same bucket, another deployment's:
    theirs = start_multipart(client, bucket, f"{prefix}-other/files/janitor/theirs")

    def left() -> set[str]:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return {upload["UploadId"] for upload in uploads}

    reconcile_once()  # first seen now: young by the janitor's clock, whatever S3 says
    assert {ours, theirs} <= left()
    later = get_settings().model_copy(update={"upload_tmp_max_age_seconds": 1})
    time.sleep(1.5)
    reconcile_once(settings=later)
    assert ours not in left()
    assert theirs in left()


def expiring_file(storage_content: bytes = b"{}\n") -> File:
    """A stored file that expires in an hour: later than the API servers' reconcilers of this
    session look, so only a test that moves its own clock on sees it expired."""
    tenant = f"org-janitor{uuid.uuid4().hex[:12]}"
    file_id = f"file-janitor{uuid.uuid4().hex[:12]}"
    key = f"files/{tenant}/{file_id}"
    get_store().put_stream(key, [storage_content])
    row = File(
        id=file_id,
        tenant_id=tenant,
        filename="e.jsonl",
        purpose="fine-tune",
        bytes=len(storage_content),
        status="processed",
        storage_key=key,
        expires_at=now() + 3600,
    )
    with get_database().session() as session:
        session.add(Tenant(id=tenant, name=tenant))
        session.flush()
        session.add(row)
    return row


def file_row(file_id: str) -> File | None:
    with get_database().session() as session:
        return session.scalar(select(File).where(File.id == file_id))


@pytest.fixture
def two_hours_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "now", lambda: now() + 7200)


def test_an_expired_file_loses_its_row_and_its_object(
    backend: Backend, two_hours_later: None
) -> None:
    row = expiring_file()
    reconcile_once()
    assert file_row(row.id) is None
    assert get_store().list(row.storage_key) == []


def test_an_expired_file_whose_object_delete_fails_is_retried_next_round(
    backend: Backend, two_hours_later: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the process were killed between the two deletes: the row stays to be found again."""
    row = expiring_file()
    store = get_store()

    def store_away(prefix: str) -> None:
        raise ConnectionError("store unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(store, "delete_prefix", store_away)
        with pytest.raises(ConnectionError):
            reconcile_once()
    assert file_row(row.id) is not None
    reconcile_once()
    assert file_row(row.id) is None
    assert store.list(row.storage_key) == []
