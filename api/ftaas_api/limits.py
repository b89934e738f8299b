"""A bound on every request body, and on the disk the uploads being received take (the rate
limit is in :mod:`ftaas_api.auth`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftaas_api.errors import APIError, error_response
from ftaas_api.uploads import max_body_bytes
from ftaas_core.chunked import PART_MAX_BYTES
from ftaas_core.settings import get_settings

_PARTS = re.compile(r"/v1/uploads/[^/]+/parts/?")


class BodyLimit:
    """Refuse request bodies over their bound (413) while they stream in.

    The bound is ``max_request_bytes``, or for a file upload (an Upload's part) the upload (part)
    limit plus what its other parts may hold: the upload parser bounds the file and each part,
    this the whole body, which also holds what the parser skips (a preamble, an epilogue).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(413, _too_large_message(limit), code="body_too_large")
            await response(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            # Raised as an HTTPException because FastAPI turns any other error while it reads
            # the body into a 400.
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, _too_large_message(limit))
            return message

        await self.app(scope, bounded, send)


def _limit(scope: Scope) -> int:
    settings = get_settings()
    if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
        return max_body_bytes(settings.max_upload_bytes)
    if scope["method"] == "POST" and _PARTS.fullmatch(scope["path"]):
        return max_body_bytes(PART_MAX_BYTES)
    return settings.max_request_bytes


def _too_large_message(limit: int) -> str:
    return f"Request body is larger than {limit} bytes."


UPLOAD_RETRY_SECONDS = 5


class UploadSpool:
    """Room in this process's upload spool (``upload_tmp_dir``): ``max_upload_bytes`` times
    ``max_concurrent_uploads``, what the volume holding it is sized for.

    Each upload reserves what its body declares (Content-Length, at most the upload limit; the
    whole limit when it declares nothing) before the body is read. One that does not fit is
    refused with 429 and Retry-After rather than queued: a spool that outgrew its volume would
    get the pod evicted on Kubernetes. Small uploads share the room, so many go at once. Used
    on the event loop only, so it needs no lock.
    """

    def __init__(self, capacity: int) -> None:
        self.free = capacity

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.free:
            raise APIError(
                429,
                "This server is receiving as many uploads as it has room for; retry after the "
                "time in Retry-After.",
                code="too_many_uploads",
                retry_after=UPLOAD_RETRY_SECONDS,
            )
        self.free -= nbytes
        try:
            yield
        finally:
            self.free += nbytes
