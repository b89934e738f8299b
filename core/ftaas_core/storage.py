"""Object store: S3 (boto3; AWS, MinIO, Ceph…) or a local directory, behind one small interface.

Objects stream in and out in chunks, so no whole dataset or adapter is held in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

from ftaas_core.settings import get_settings

CHUNK = 1024 * 1024
_PARTIAL = ".upload-"
"""The name prefix of a local object still being written."""


class ObjectNotFound(KeyError):
    pass


class ObjectStore(Protocol):
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the chunks under ``key``; returns the byte count. Nothing is left on failure."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object; raises :class:`ObjectNotFound`."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...

    def abort_stale_uploads(self, started_before: float) -> int:
        """Drop writes begun before this Unix time and never finished (their process was
        killed); returns how many."""
        ...


def iter_stream(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(size):
            yield chunk


def put_file(store: ObjectStore, key: str, path: Path) -> int:
    with path.open("rb") as f:
        return store.put_stream(key, iter_stream(f))


class LocalStore:
    """Objects as files under a root directory; writes go to a temp file, then rename atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_PARTIAL)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def abort_stale_uploads(self, started_before: float) -> int:
        """Temporary files of writes that never reached their rename."""
        return remove_files_older_than(self.root.rglob(f"{_PARTIAL}*"), started_before)


class S3Store:
    """A bucket and key prefix on any S3-compatible endpoint; big objects go up in parts."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._first_seen: dict[str, float] = {}  # upload id → when the janitor first listed it
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Multipart upload in 8 MiB parts; a failed upload is aborted so no part lingers."""
        full_key = self._key(key)
        part_size = 8 * CHUNK
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=full_key)
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        size = 0
        buffer = bytearray()
        try:
            for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= part_size:
                    parts.append(
                        self._upload_part(full_key, upload_id, len(parts) + 1, buffer[:part_size])
                    )
                    del buffer[:part_size]
            if buffer or not parts:
                parts.append(self._upload_part(full_key, upload_id, len(parts) + 1, buffer))
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            raise
        return size

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytearray
    ) -> dict[str, Any]:
        response = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(data)
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey as exc:
            raise ObjectNotFound(key) from exc
        return response["Body"]

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = len(self.prefix) + 1 if self.prefix else 0
        return [
            obj["Key"][start:]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for obj in page.get("Contents", [])
        ]

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def abort_stale_uploads(self, started_before: float) -> int:
        """Multipart uploads under this store's prefix never completed or aborted: S3 keeps
        (and bills) their parts until they are aborted. An upload's age counts from the later
        of the start S3 reports and when this process first saw it, so a store whose clock is
        off (moto dates every upload 2010) never has a live upload aborted."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        listed = [
            upload
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(""))
            for upload in page.get("Uploads", [])
        ]
        seen_now = time.time()
        self._first_seen = {
            upload["UploadId"]: self._first_seen.get(upload["UploadId"], seen_now)
            for upload in listed
        }
        stale = [
            upload
            for upload in listed
            if max(upload["Initiated"].timestamp(), self._first_seen[upload["UploadId"]])
            < started_before
        ]
        for upload in stale:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        return len(stale)


def remove_files_older_than(paths: Iterable[Path], modified_before: float) -> int:
    """Remove those of ``paths`` last modified before this Unix time; returns how many. A file
    that another process removes meanwhile is no error."""
    removed = 0
    for path in paths:
        try:
            if path.is_file() and path.stat().st_mtime < modified_before:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def open_store(url: str, s3_endpoint_url: str | None = None) -> LocalStore | S3Store:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, s3_endpoint_url)
    raise ValueError(f"FTAAS_STORAGE_URL must be file:///dir or s3://bucket/prefix, got {url!r}")


@lru_cache
def get_store() -> LocalStore | S3Store:
    settings = get_settings()
    return open_store(settings.object_store_url, settings.s3_endpoint_url)
