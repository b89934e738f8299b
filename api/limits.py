"""Per-tenant request rate limit (a Redis counter per minute, shared by all API replicas) and a
bound on request bodies other than the streamed file upload."""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import APIError, error_response
from ftaas.queue import get_redis
from ftaas.settings import get_settings

log = logging.getLogger("ftaas.api")


def check_rate(tenant: str) -> None:
    """429 with ``Retry-After`` once a tenant exceeds its requests in the current minute.

    Fails open when Redis is away: the queue being down must not also lock users out of reads.
    """
    window = int(time.time() // 60)
    key = f"ftaas:rate:{tenant}:{window}"
    try:
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = pipe.execute()[0]
    except RedisError as exc:
        log.warning("rate limit not checked: %s", exc)
        return
    if count > get_settings().rate_limit_per_minute:
        raise APIError(
            429,
            "Rate limit reached for requests per minute; retry after the time in Retry-After.",
            code="rate_limit_exceeded",
            retry_after=60 - int(time.time()) % 60,
        )


class BodyLimit:
    """Refuse request bodies over ``max_request_bytes`` (413) while they stream in.

    The file upload route enforces its own, larger limit as it parses, so it is exempt.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exempt = scope["type"] != "http" or (
            scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files"
        )
        if exempt:
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_request_bytes
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


def _too_large_message(limit: int) -> str:
    return f"Request body is larger than {limit} bytes."
