"""Object store: S3 (boto3; AWS, MinIO, Ceph…) or a local directory, behind one small interface.

Objects stream in and out in chunks, so no whole dataset or adapter is held in memory.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

from ftaas_core.settings import get_settings

CHUNK = 1024 * 1024
_PARTIAL = ".upload-"
"""The name prefix of a local object still being written."""
S3_PART_BYTES = 8 * CHUNK
S3_MIN_PART_BYTES = 5 * CHUNK
"""S3 refuses smaller parts, except the last, when a multipart upload completes."""
MAX_PART_NUMBER = 10_000
"""S3's highest part number, so the most parts an object is assembled from."""

Through = Callable[[Iterator[bytes]], Iterator[bytes]]
"""What an assembled object's bytes pass through on their way in: it may raise at the end, and
then nothing is kept."""


@dataclass(frozen=True)
class StagedPart:
    """A part of an object being assembled: on S3, part ``number`` of its multipart upload
    (``etag`` set) when it holds at least S3_MIN_PART_BYTES, else an object of its own at
    ``key``, as every part is on the local store."""

    number: int
    size: int
    etag: str | None
    key: str


class ObjectNotFound(KeyError):
    pass


class ObjectStore(Protocol):
    moves_files: bool
    """Whether :meth:`adopt` renames the file (else it copies it: worth sending early)."""

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

    def adopt(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key``; the local store moves it into place, so
        the caller removes whatever is left at ``path``."""
        ...

    def begin_parts(self, key: str) -> str:
        """Begin assembling ``key`` from parts; returns its staging id (S3's upload id)."""
        ...

    def put_part(
        self, key: str, staging: str, number: int, part_key: str, path: Path
    ) -> str | None:
        """Store the file at ``path`` as part ``number`` of ``key``: its ETag when it became an
        S3 part, None when it is kept at ``part_key`` (see :class:`StagedPart`)."""
        ...

    def assemble(self, key: str, staging: str, parts: list[StagedPart], through: Through) -> None:
        """Make ``key`` of ``parts`` in this order, every byte passing ``through``; when that
        raises, ``key`` is not kept. The parts are left to :meth:`abort_parts`."""
        ...

    def abort_parts(self, key: str, staging: str, prefix: str) -> None:
        """Drop whatever the parts of ``key`` left: S3's multipart upload, the objects under
        ``prefix``."""
        ...


def _in_order(store: ObjectStore, parts: list[StagedPart]) -> Iterator[bytes]:
    for part in parts:
        yield from iter_stream(store.open(part.key))


def _regroup(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The chunks as pieces of ``size`` bytes (the last may be shorter), copying only chunks
    that are not of that size already."""
    buffer = bytearray()
    for chunk in chunks:
        if not buffer and len(chunk) == size:
            yield chunk
            continue
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def iter_stream(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(size):
            yield chunk


def put_file(store: ObjectStore, key: str, path: Path) -> int:
    with path.open("rb") as f:
        return store.put_stream(key, iter_stream(f))


class LocalStore:
    """Objects as files under a root directory; writes go to a temp file, then rename atomically."""

    moves_files = True

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

    def adopt(self, key: str, path: Path) -> None:
        """A rename when ``path`` is on the store's filesystem: no byte is copied."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            put_file(self, key, path)

    def begin_parts(self, key: str) -> str:
        return ""

    def put_part(
        self, key: str, staging: str, number: int, part_key: str, path: Path
    ) -> str | None:
        self.adopt(part_key, path)
        return None

    def assemble(self, key: str, staging: str, parts: list[StagedPart], through: Through) -> None:
        """The part files concatenated into one, a chunk at a time."""
        self.put_stream(key, through(_in_order(self, parts)))

    def abort_parts(self, key: str, staging: str, prefix: str) -> None:
        self.delete_prefix(prefix)


class S3Store:
    """A bucket and key prefix on any S3-compatible endpoint; big objects go up in parts."""

    moves_files = False

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
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full_key)[
            "UploadId"
        ]
        parts: list[dict[str, Any]] = []
        size = 0
        try:
            for piece in _regroup(chunks, S3_PART_BYTES):
                parts.append(self._upload_part(full_key, upload_id, len(parts) + 1, piece))
                size += len(piece)
            if not parts:
                parts.append(self._upload_part(full_key, upload_id, 1, b""))
            self._complete(full_key, upload_id, parts)
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            raise
        return size

    def _upload_part(self, key: str, upload_id: str, number: int, data: Any) -> dict[str, Any]:
        response = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _complete(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    def adopt(self, key: str, path: Path) -> None:
        """Read a part's worth at a time: each read is a part, copied nowhere else."""
        with path.open("rb") as f:
            self.put_stream(key, iter_stream(f, S3_PART_BYTES))

    def begin_parts(self, key: str) -> str:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        return str(upload["UploadId"])

    def put_part(
        self, key: str, staging: str, number: int, part_key: str, path: Path
    ) -> str | None:
        """Sent straight from the file as S3 part ``number``; a smaller part, which S3 would
        refuse unless it came last, is an object of its own."""
        if path.stat().st_size < S3_MIN_PART_BYTES:
            put_file(self, part_key, path)
            return None
        with path.open("rb") as body:
            return str(self._upload_part(self._key(key), staging, number, body)["ETag"])

    def assemble(self, key: str, staging: str, parts: list[StagedPart], through: Through) -> None:
        """Parts in ascending number, all S3 parts but perhaps the last (copied in by S3),
        complete the multipart upload as they are, and are then read once to pass
        ``through``. Any other order is completed as it is and then copied, part by part
        from its range, through this process into a fresh upload of the same key."""
        full_key = self._key(key)
        try:
            listed = self._listed_in_order(full_key, staging, parts)
            if listed is not None:
                self._complete(full_key, staging, listed)
                for _ in through(iter_stream(self.open(key))):
                    pass
                return
            s3_parts = sorted((p for p in parts if p.etag is not None), key=lambda p: p.number)
            if s3_parts:
                self._complete(full_key, staging, [_listed(p) for p in s3_parts])
            self.put_stream(key, through(self._given_order(key, parts, s3_parts)))
        except BaseException:
            self.client.delete_object(Bucket=self.bucket, Key=full_key)
            raise

    def _listed_in_order(
        self, full_key: str, staging: str, parts: list[StagedPart]
    ) -> list[dict[str, Any]] | None:
        """The parts as S3 completes them when they are in S3's order, else None. A small last
        part is copied (inside S3) into the next part number."""
        *head, last = parts
        numbers = [p.number for p in head]
        if any(p.etag is None for p in head) or any(a >= b for a, b in itertools.pairwise(numbers)):
            return None
        floor = numbers[-1] if numbers else 0
        listed = [_listed(p) for p in head]
        if last.etag is not None:
            return [*listed, _listed(last)] if last.number > floor else None
        if floor >= MAX_PART_NUMBER:
            return None
        copied = self.client.upload_part_copy(
            Bucket=self.bucket,
            Key=full_key,
            UploadId=staging,
            PartNumber=floor + 1,
            CopySource={"Bucket": self.bucket, "Key": self._key(last.key)},
        )
        return [*listed, {"PartNumber": floor + 1, "ETag": copied["CopyPartResult"]["ETag"]}]

    def _given_order(
        self, key: str, parts: list[StagedPart], s3_parts: list[StagedPart]
    ) -> Iterator[bytes]:
        """The parts' bytes in the given order: S3 parts as ranges of ``key`` (where they lie
        in ascending number), the others from their own objects."""
        offsets, at = {}, 0
        for part in s3_parts:
            offsets[part.number], at = at, at + part.size
        for part in parts:
            if part.etag is None:
                yield from iter_stream(self.open(part.key))
                continue
            start = offsets[part.number]
            span = f"bytes={start}-{start + part.size - 1}"
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=span)
            yield from iter_stream(response["Body"])

    def abort_parts(self, key: str, staging: str, prefix: str) -> None:
        with contextlib.suppress(self.client.exceptions.NoSuchUpload):  # completed before
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), UploadId=staging
            )
        self.delete_prefix(prefix)

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


def _listed(part: StagedPart) -> dict[str, Any]:
    return {"PartNumber": part.number, "ETag": part.etag}


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
