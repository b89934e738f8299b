"""OpenAI's Uploads API as records and store work: a file sent in parts (in parallel, in any
order), assembled and validated on completion into a normal file.

Every change of an upload's row starts with one conditional UPDATE of it (``_claim``), so
concurrent requests are ordered by the database (a row lock on PostgreSQL, the write lock on
SQLite), never by what a request read earlier. An upload that is cancelled, expires, or fails
its checks on completion leaves no part behind; the reconciler expires pending uploads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from ftaas_core.datasets import DatasetReport, DatasetValidator, upload_refusal
from ftaas_core.db import Database
from ftaas_core.ids import new_id
from ftaas_core.models import File, Upload, UploadPart, now
from ftaas_core.settings import Settings
from ftaas_core.storage import MAX_PART_NUMBER, ObjectStore, StagedPart

PART_MAX_BYTES = 64 * 1024 * 1024
"""OpenAI's largest part (what its SDK sends)."""
EXPIRED_PER_ROUND = 100


class UploadRefused(Exception):
    """A request the Uploads API refuses, with the parts of OpenAI's error body."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def file_key(tenant: str, file_id: str) -> str:
    """Where a file's object lives, whether it came through /v1/files or /v1/uploads."""
    return f"files/{tenant}/{file_id}"


def _prefix(row: Upload) -> str:
    """Where the parts kept as objects of their own live."""
    return f"uploads/{row.tenant_id}/{row.id}"


def status_of(row: Upload) -> str:
    """OpenAI's status: a pending upload past its time is expired before the reconciler
    marks it; one being completed is still pending."""
    if row.status == "completing":
        return "pending"
    if row.status == "pending" and row.expires_at <= now():
        return "expired"
    return row.status


def _refusal(session: Session, tenant: str, upload_id: str) -> UploadRefused:
    """Why a claim found no pending upload of this tenant with this id."""
    row = session.scalar(select(Upload).where(Upload.id == upload_id, Upload.tenant_id == tenant))
    if row is None:
        return UploadRefused(
            f"No upload found with id '{upload_id}'.", param="id", code="not_found", status=404
        )
    status = "being completed" if row.status == "completing" else status_of(row)
    return UploadRefused(
        f"Upload '{upload_id}' is {status}: only a pending upload takes this request.",
        param="id",
        code="upload_not_pending",
    )


def _claim(session: Session, tenant: str, upload_id: str, **values: object) -> Upload:
    """Lock the tenant's pending, unexpired upload by updating it with ``values``; refuse
    otherwise."""
    claimed = session.execute(
        update(Upload)
        .where(
            Upload.id == upload_id,
            Upload.tenant_id == tenant,
            Upload.status == "pending",
            Upload.expires_at > now(),
        )
        .values(**(values or {"status": "pending"}))
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise _refusal(session, tenant, upload_id)
    return session.scalars(select(Upload).where(Upload.id == upload_id)).one()


def create(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    tenant: str,
    *,
    filename: str,
    purpose: str,
    size: int,
    mime_type: str,
    file_expires_after: int | None,
) -> Upload:
    if size > settings.uploads_max_bytes:
        raise UploadRefused(
            f"An upload holds at most {settings.uploads_max_bytes} bytes.",
            param="bytes",
            code="file_too_large",
        )
    row = Upload(
        id=new_id("upload"),
        tenant_id=tenant,
        filename=filename,
        purpose=purpose,
        mime_type=mime_type,
        bytes=size,
        status="pending",
        file_id=new_id("file"),
        file_expires_after=file_expires_after,
        next_part=0,
        expires_at=now() + settings.uploads_expire_seconds,
    )
    row.staging = store.begin_parts(file_key(tenant, row.file_id))
    try:
        with db.session() as session:
            session.add(row)
    except BaseException:
        store.abort_parts(file_key(tenant, row.file_id), row.staging, _prefix(row))
        raise
    return row


def add_part(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    tenant: str,
    upload_id: str,
    path: Path,
    number: int | None,
) -> UploadPart:
    """Store the file at ``path`` as a part: numbered in arrival order unless the client gave
    its place (``number``, which replaces a part sent before under it)."""
    size = path.stat().st_size
    if size == 0:
        raise UploadRefused("A part holds at least one byte.", param="data")
    with db.session() as session:
        upload = _claim(session, tenant, upload_id, next_part=Upload.next_part + 1)
    number = number or upload.next_part
    if not 1 <= number <= MAX_PART_NUMBER:
        raise UploadRefused(f"An upload holds at most {MAX_PART_NUMBER} parts.", param="data")
    part_key = f"{_prefix(upload)}/{number:05d}"
    etag = store.put_part(file_key(tenant, upload.file_id), upload.staging, number, part_key, path)
    try:
        return _record_part(db, settings, tenant, upload_id, number, size, etag)
    except BaseException:
        if etag is None:
            store.delete_prefix(part_key)
        raise


def _record_part(
    db: Database,
    settings: Settings,
    tenant: str,
    upload_id: str,
    number: int,
    size: int,
    etag: str | None,
) -> UploadPart:
    with db.session() as session:
        _claim(session, tenant, upload_id)
        session.execute(
            delete(UploadPart).where(UploadPart.upload_id == upload_id, UploadPart.number == number)
        )
        stored = session.scalar(
            select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(
                UploadPart.upload_id == upload_id
            )
        )
        if stored + size > settings.uploads_max_bytes:
            raise UploadRefused(
                f"An upload holds at most {settings.uploads_max_bytes} bytes.",
                param="data",
                code="file_too_large",
            )
        part = UploadPart(
            id=new_id("part"), upload_id=upload_id, number=number, bytes=size, etag=etag
        )
        session.add(part)
    return part


def cancel(db: Database, store: ObjectStore, tenant: str, upload_id: str) -> Upload:
    """The parts go in the same transaction: if the store fails, the upload stays pending."""
    with db.session() as session:
        upload = _claim(session, tenant, upload_id, status="cancelled")
        _drop_parts(session, store, upload)
    return upload


def _drop_parts(session: Session, store: ObjectStore, upload: Upload) -> None:
    store.abort_parts(file_key(upload.tenant_id, upload.file_id), upload.staging, _prefix(upload))
    session.execute(delete(UploadPart).where(UploadPart.upload_id == upload.id))


def complete(
    db: Database,
    store: ObjectStore,
    tenant: str,
    upload_id: str,
    part_ids: list[str],
    md5: str | None,
) -> tuple[Upload, File]:
    """Refusals about the parts leave the upload pending; once it is assembled, a wrong md5
    or an invalid dataset cancels it (S3 has consumed its parts)."""
    with db.session() as session:
        upload = _claim(session, tenant, upload_id, status="completing")
        staged = _listed_parts(session, upload, part_ids)
    key = file_key(tenant, upload.file_id)
    check = _Check(md5)
    try:
        store.assemble(key, upload.staging, staged, check)
        row = _file_row(upload, check.report)
        with db.session() as session:
            session.add(row)
            _finish(session, store, upload, "completed")
    except BaseException:
        store.delete_prefix(key)
        with db.session() as session:
            _finish(session, store, upload, "cancelled")
        raise
    upload.status = "completed"
    return upload, row


def _listed_parts(session: Session, upload: Upload, part_ids: list[str]) -> list[StagedPart]:
    if not part_ids:
        raise UploadRefused("part_ids must list at least one part.", param="part_ids")
    seen: set[str] = set()
    for part_id in part_ids:
        if part_id in seen:
            raise UploadRefused(f"Part '{part_id}' is listed more than once.", param="part_ids")
        seen.add(part_id)
    rows = {
        part.id: part
        for part in session.scalars(
            select(UploadPart).where(UploadPart.upload_id == upload.id, UploadPart.id.in_(part_ids))
        )
    }
    missing = next((p for p in part_ids if p not in rows), None)
    if missing is not None:
        raise UploadRefused(
            f"Upload '{upload.id}' has no part '{missing}'.", param="part_ids", code="not_found"
        )
    total = sum(rows[p].bytes for p in part_ids)
    if total != upload.bytes:
        raise UploadRefused(
            f"The parts hold {total} bytes, not the {upload.bytes} the upload was created with.",
            param="part_ids",
            code="bytes_mismatch",
        )
    prefix = _prefix(upload)
    return [
        StagedPart(part.number, part.bytes, part.etag, f"{prefix}/{part.number:05d}")
        for part in (rows[p] for p in part_ids)
    ]


class _Check:
    """The assembled bytes' way in: the dataset validator and md5, which refuse at the end."""

    def __init__(self, md5: str | None) -> None:
        self.md5 = md5
        self.report = DatasetReport()

    def __call__(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        validator, digest = DatasetValidator(), hashlib.md5(usedforsecurity=False)
        for chunk in chunks:
            validator.feed(chunk)
            digest.update(chunk)
            yield chunk
        if self.md5 is not None and digest.hexdigest() != self.md5.lower():
            raise UploadRefused(
                f"The parts' md5 is {digest.hexdigest()}, not {self.md5}.",
                param="md5",
                code="md5_mismatch",
            )
        self.report = validator.finish()
        if (problem := upload_refusal(self.report)) is not None:
            message, param = problem
            raise UploadRefused(message, param=param, code="invalid_file")


def _file_row(upload: Upload, report: DatasetReport) -> File:
    created = now()
    after = upload.file_expires_after
    return File(
        id=upload.file_id,
        tenant_id=upload.tenant_id,
        filename=upload.filename,
        purpose=upload.purpose,
        bytes=report.n_bytes,
        status="processed",
        storage_key=file_key(upload.tenant_id, upload.file_id),
        n_examples=report.n_examples,
        n_chars=report.n_chars,
        dataset_format=report.format,
        created_at=created,
        expires_at=created + after if after is not None else None,
    )


def _finish(session: Session, store: ObjectStore, upload: Upload, status: str) -> None:
    session.execute(update(Upload).where(Upload.id == upload.id).values(status=status))
    _drop_parts(session, store, upload)


def expire(db: Database, store: ObjectStore, settings: Settings) -> int:
    """Pending uploads past their time, and those whose completing process died (the file it
    may have begun goes too), become expired and lose their parts; returns how many."""
    moment = now()
    with db.session() as session:
        rows = session.scalars(
            select(Upload)
            .where(
                or_(
                    and_(Upload.status == "pending", Upload.expires_at <= moment),
                    and_(
                        Upload.status == "completing",
                        Upload.expires_at <= moment - settings.upload_tmp_max_age_seconds,
                    ),
                )
            )
            .limit(EXPIRED_PER_ROUND)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            if row.status == "completing":
                store.delete_prefix(file_key(row.tenant_id, row.file_id))
            _finish(session, store, row, "expired")
    return len(rows)
