"""``/v1/uploads``: OpenAI's Uploads API, for datasets larger than one request should carry.

Create an Upload with the file's size, send its parts (at most 64 MiB each, in parallel, in any
order), then complete it with the parts' ids in order: the parts are assembled, validated like
any upload, and become a file. The work is in :mod:`ftaas_core.chunked`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ftaas.types import FileObject, Upload, UploadPart
from ftaas_api.deps import DB, Config, Store, TenantId, UploadRoom
from ftaas_api.errors import APIError
from ftaas_api.uploads import form_body, receive_upload
from ftaas_api.wire import file_wire
from ftaas_core import chunked, models
from ftaas_core.storage import MAX_PART_NUMBER

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

PART_NUMBER = re.compile(r"[0-9]{1,5}")


class ExpiresAfter(BaseModel):
    """When the completed file expires, as for ``/v1/files`` (1 h to 30 days)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=30 * 86400)]


class CreateUpload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    bytes: Annotated[int, Field(ge=1)]
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    mime_type: Annotated[str, Field(min_length=1, max_length=128)]
    purpose: Literal["fine-tune"]
    expires_after: ExpiresAfter | None = None


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    part_ids: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=10_000)]
    md5: Annotated[str, Field(max_length=64)] | None = None


PART_BODY = form_body(
    {
        "data": {"type": "string", "format": "binary"},
        "part_number": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PART_NUMBER,
            "description": "ftaas: the part's place in the file, so parts sent in parallel need "
            "no reordering on S3 (a part sent again under the same number replaces it). Without "
            "it, parts are numbered as they arrive.",
        },
    },
    required=["data"],
)


@contextmanager
def _refusals() -> Iterator[None]:
    """The core's refusals as OpenAI's error body."""
    try:
        yield
    except chunked.UploadRefused as exc:
        raise APIError(exc.status, exc.message, param=exc.param, code=exc.code) from exc


def upload_wire(row: models.Upload, file: FileObject | None = None) -> Upload:
    return Upload(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        filename=row.filename,
        purpose=row.purpose,
        status=chunked.status_of(row),
        file=file,
    )


@router.post("")
async def create_upload(
    body: CreateUpload, tenant: TenantId, db: DB, store: Store, settings: Config
) -> Upload:
    with _refusals():
        row = await run_in_threadpool(
            chunked.create,
            db,
            store,
            settings,
            tenant,
            filename=body.filename,
            purpose=body.purpose,
            size=body.bytes,
            mime_type=body.mime_type,
            file_expires_after=body.expires_after.seconds if body.expires_after else None,
        )
    return upload_wire(row)


@router.post("/{upload_id}/parts", openapi_extra=PART_BODY)
async def add_part(
    upload_id: str,
    request: Request,
    tenant: TenantId,
    _: UploadRoom,
    db: DB,
    store: Store,
    settings: Config,
) -> UploadPart:
    received = await receive_upload(
        request,
        chunked.PART_MAX_BYTES,
        settings.upload_tmp_dir,
        file_field="data",
        validate=False,
    )
    try:
        if received.path is None:
            raise APIError(400, "No part named 'data' in the body.", param="data")
        number = _part_number(received.fields.get("part_number"))
        with _refusals():
            part = await run_in_threadpool(
                chunked.add_part, db, store, settings, tenant, upload_id, received.path, number
            )
    finally:
        received.discard()
    return UploadPart(id=part.id, created_at=part.created_at, upload_id=upload_id)


def _part_number(field: str | None) -> int | None:
    if field is None:
        return None
    if not PART_NUMBER.fullmatch(field) or not 1 <= int(field) <= MAX_PART_NUMBER:
        raise APIError(
            400,
            f"part_number must be a whole number from 1 to {MAX_PART_NUMBER}.",
            param="part_number",
        )
    return int(field)


@router.post("/{upload_id}/complete")
async def complete_upload(
    upload_id: str, body: CompleteUpload, tenant: TenantId, db: DB, store: Store
) -> Upload:
    """Assembles and validates the parts (a pass over the whole file), then makes the file."""
    with _refusals():
        row, file = await run_in_threadpool(
            chunked.complete, db, store, tenant, upload_id, body.part_ids, body.md5
        )
    return upload_wire(row, file_wire(file))


@router.post("/{upload_id}/cancel")
async def cancel_upload(upload_id: str, tenant: TenantId, db: DB, store: Store) -> Upload:
    with _refusals():
        row = await run_in_threadpool(chunked.cancel, db, store, tenant, upload_id)
    return upload_wire(row)
