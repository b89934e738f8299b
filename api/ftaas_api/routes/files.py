"""``/v1/files``: JSONL datasets, validated while they stream in, stored in the object store."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ftaas.types import FileDeleted, FileObject, FileReport, Page
from ftaas_api.deps import DB, Config, Store, TenantId, UploadRoom
from ftaas_api.errors import APIError, not_found
from ftaas_api.follow import Follower
from ftaas_api.paging import paginate
from ftaas_api.uploads import form_body, receive_upload
from ftaas_api.wire import file_wire
from ftaas_core.chunked import file_key
from ftaas_core.datasets import upload_refusal
from ftaas_core.db import Database
from ftaas_core.hyperparams import MaxSeqLength
from ftaas_core.ids import new_id
from ftaas_core.models import File, now
from ftaas_core.storage import ObjectStore, iter_stream

log = logging.getLogger("ftaas.api")
router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)
SECONDS = re.compile(r"[0-9]{1,8}")


def _owned_file(session: Session, tenant: str, file_id: str) -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant))
    if row is None:
        raise not_found("file", file_id)
    return row


UPLOAD_BODY = form_body(
    {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(PURPOSES)},
    },
    required=["file", "purpose"],
)


@router.post("", openapi_extra=UPLOAD_BODY)
async def upload_file(
    request: Request, tenant: TenantId, _: UploadRoom, db: DB, store: Store, settings: Config
) -> FileObject:
    file_id = new_id("file")
    key = file_key(tenant, file_id)
    # A store that copies is sent the file while it arrives; the local store renames it after.
    follow = None if store.moves_files else functools.partial(Follower, store, key)
    upload = await receive_upload(
        request, settings.max_upload_bytes, settings.upload_tmp_dir, follow=follow
    )
    try:
        purpose = upload.fields.get("purpose")
        if purpose not in PURPOSES:
            raise APIError(
                400,
                f"'purpose' must be one of {', '.join(PURPOSES)} (got {purpose!r}).",
                param="purpose",
            )
        if upload.path is None or upload.report is None:
            raise APIError(400, "No file part named 'file' in the upload.", param="file")
        expires_at = _expiry(upload.fields)
        report = upload.report
        if (problem := upload_refusal(report)) is not None:
            message, param = problem
            raise APIError(400, message, param=param, code="invalid_file")
        await run_in_threadpool(upload.keep, store, key)
        row = File(
            id=file_id,
            tenant_id=tenant,
            filename=upload.filename or "upload.jsonl",
            purpose=purpose,
            bytes=upload.size,
            status="processed",
            storage_key=key,
            n_examples=report.n_examples,
            n_chars=report.n_chars,
            expires_at=expires_at,
            dataset_format=report.format,
        )
        try:
            await run_in_threadpool(_insert, db, row)
        except BaseException:
            await run_in_threadpool(store.delete_prefix, key)
            raise
        return file_wire(row)
    finally:
        upload.discard()


def _expiry(fields: dict[str, str]) -> int | None:
    """OpenAI's ``expires_after[anchor]=created_at`` and ``expires_after[seconds]`` (1 h to 30 d)."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise APIError(
            400, "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    # ASCII digits, a few of them: str.isdigit() passes '²', which int() refuses, and int()
    # refuses more than 4,300 digits.
    if not SECONDS.fullmatch(seconds or "") or not 3600 <= int(seconds or 0) <= 30 * 86400:
        raise APIError(
            400,
            "expires_after[seconds] must be a whole number of seconds from 3600 to 2592000.",
            param="expires_after.seconds",
        )
    return now() + int(seconds or 0)


def _insert(db: Database, row: File) -> None:
    with db.session() as session:
        session.add(row)


@router.get("")
def list_files(
    tenant: TenantId,
    db: DB,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> Page[FileObject]:
    scope = [File.tenant_id == tenant]
    if purpose:
        scope.append(File.purpose == purpose)
    with db.session() as session:
        return paginate(session, File, scope, file_wire, after, limit, ascending=order == "asc")


@router.get("/{file_id}")
def get_file(file_id: str, tenant: TenantId, db: DB) -> FileObject:
    with db.session() as session:
        return file_wire(_owned_file(session, tenant, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, tenant: TenantId, db: DB, store: Store) -> StreamingResponse:
    with db.session() as session:
        row = _owned_file(session, tenant, file_id)
    return StreamingResponse(
        iter_stream(store.open(row.storage_key)),
        media_type="application/octet-stream",
        headers={"Content-Length": str(row.bytes)},
    )


@router.delete("/{file_id}")
def delete_file(file_id: str, tenant: TenantId, db: DB, store: Store) -> FileDeleted:
    with db.session() as session:
        row = _owned_file(session, tenant, file_id)
        session.delete(row)
    store.delete_prefix(row.storage_key)
    return FileDeleted(id=file_id, deleted=True)


class ReportRequest(BaseModel):
    """Unknown fields are refused, so a misspelt option is never silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_seq_length: MaxSeqLength = 2048
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None


@router.post("/{file_id}/report")
async def report_file(
    file_id: str, body: ReportRequest, tenant: TenantId, db: DB, store: Store, settings: Config
) -> FileReport:
    """A dry run of training on the file with the model's tokenizer: every error, token counts,
    truncation, duplicates, overlap with ``validation_file`` and a preview of what is trained."""
    model_path = settings.models.get(body.model)
    if model_path is None:
        available = ", ".join(sorted(settings.models)) or "none"
        raise APIError(
            400,
            f"Model '{body.model}' is not available. Available models: {available}.",
            param="model",
            code="model_not_available",
        )
    # Tokenising a whole file is CPU work: off the event loop, like the blocking reads.
    return await run_in_threadpool(_report, db, store, tenant, file_id, body, model_path)


def _stored(store: ObjectStore, key: str) -> Iterator[bytes]:
    """Opens the object only when first read, so the validation file's stream is not left
    idle (and timing out, on S3) while the training file is tokenised."""
    yield from iter_stream(store.open(key))


def _report(
    db: Database,
    store: ObjectStore,
    tenant: str,
    file_id: str,
    body: ReportRequest,
    model_path: str,
) -> FileReport:
    # Imported on first use: transformers takes seconds to import, which API start-up should not.
    from ftaas_core.report import build_report, load_tokenizer

    with db.session() as session:
        training_key = _owned_file(session, tenant, file_id).storage_key
        validation_key = (
            _owned_file(session, tenant, body.validation_file).storage_key
            if body.validation_file is not None
            else None
        )
    try:
        tokenizer = load_tokenizer(model_path)
    except Exception as exc:  # whatever the loader meets: missing files, bad config, no hub
        log.warning("tokenizer of %s (%s) did not load: %s", body.model, model_path, exc)
        raise APIError(
            400,
            f"The tokenizer of model '{body.model}' could not be loaded.",
            param="model",
            code="model_not_available",
        ) from exc
    return build_report(
        tokenizer,
        body.model,
        _stored(store, training_key),
        body.max_seq_length,
        _stored(store, validation_key) if validation_key is not None else None,
    )
