"""The console's routes: its page at ``/``, its assets under ``/console/``, and two reads the
pages need that OpenAI's routes do not carry. None of them appears in the OpenAPI description."""

from __future__ import annotations

import json
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from ftaas_api.console.assets import asset
from ftaas_api.deps import DB, TenantId
from ftaas_api.errors import APIError
from ftaas_api.routes.jobs import JobCreate
from ftaas_core.models import File

router = APIRouter(include_in_schema=False)

# Scripts and styles only from the API's own origin, no inline script, no framing, and (Trusted
# Types) no string may ever reach an HTML sink such as innerHTML: user text is always text.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (by ETag), so an upgraded server never runs a stale script.
    "Cache-Control": "no-cache",
}


def _serve(request: Request, name: str) -> Response:
    found = asset(name)
    if found is None:
        raise APIError(404, f"The console has no file '{name}'.", code="not_found")
    headers = SECURITY_HEADERS | {"ETag": found.etag, "Vary": "Accept-Encoding"}
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(found.gzipped, media_type=found.media_type, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get("/console/api/job-form")
async def job_form() -> Response:
    """The job-creation request's JSON schema: the form's methods, fields, bounds and defaults,
    always those this server validates against."""
    return Response(_job_form_json(), media_type="application/json", headers=SECURITY_HEADERS)


@cache
def _job_form_json() -> bytes:
    return json.dumps(JobCreate.model_json_schema()).encode()


@router.get("/console/api/file-examples")
def file_examples(
    tenant: TenantId, db: DB, ids: Annotated[list[str], Query(alias="id", max_length=100)]
) -> dict[str, Any]:
    """Examples counted in each of the caller's files named by ``id`` (the file object lacks
    them); files that are not the caller's are left out."""
    with db.session() as session:
        rows = session.execute(
            select(File.id, File.n_examples).where(File.tenant_id == tenant, File.id.in_(ids))
        ).all()
    return {"data": {file_id: n_examples for file_id, n_examples in rows}}


@router.get("/")
async def index(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/console/{name:path}")
async def static(request: Request, name: str) -> Response:
    return _serve(request, name)
