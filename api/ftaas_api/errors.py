"""Every error leaves the API as OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftaas.types import ErrorBody
from ftaas_core.storage import ObjectNotFound

log = logging.getLogger("ftaas.api")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Invalid request",
        401: "Missing or bad API key",
        404: "No such object for this tenant",
        413: "Body too large",
        429: "Rate limit or quota reached",
        503: "A backing service is unavailable",
    }.items()
}


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after


def not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No {kind} found with id '{object_id}'.", param="id", code="not_found")


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status)


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Pydantic puts union branch tags ("constrained-int", "literal['auto']", "int") into locations.
_NOT_FIELDS = {
    "body",
    "query",
    "path",
    "header",
    "int",
    "float",
    "str",
    "bool",
    "list",
    "dict",
    "none",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = [p for p in loc if isinstance(p, int) or (_FIELD.match(p) and p not in _NOT_FIELDS)]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    unknown = [_field_path(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0]
    first = errors[0]
    param = _field_path(first["loc"]) or None
    message = first["msg"]
    if param:
        message = f"Invalid value for '{param}': {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message, param


def _unavailable(message: str) -> JSONResponse:
    response = error_response(503, message, code="service_unavailable")
    response.headers["Retry-After"] = "5"
    return response


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        response = error_response(exc.status, exc.message, exc.param, exc.code)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, str(exc.detail), code=_HTTP_CODES.get(exc.status_code)
        )

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return _unavailable("The database is unavailable; retry shortly.")

    @app.exception_handler(PoolTimeout)
    async def _db_busy(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free: %s", exc)
        return _unavailable("The database is busy; retry shortly.")

    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("queue unavailable: %s", exc)
        return _unavailable("The job queue is unavailable; retry shortly.")

    @app.exception_handler(BotoCoreError)
    @app.exception_handler(ClientError)
    async def _store_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("object store unavailable: %s", exc)
        return _unavailable("The object store is unavailable; retry shortly.")

    @app.exception_handler(ObjectNotFound)
    async def _object_missing(_: Request, exc: ObjectNotFound) -> JSONResponse:
        log.error("stored object missing: %s", exc)
        return error_response(
            404, "The stored content for this object is missing.", code="not_found"
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "The server had an error while processing your request.")
