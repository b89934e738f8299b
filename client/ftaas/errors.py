"""Typed SDK errors: one class per kind of failure, so callers catch what they can handle.

HTTP errors carry the server's OpenAI-style body (``message``, ``type``, ``param``, ``code``)
and the ``x-request-id`` to quote when reporting a problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx2

    from ftaas.types import FineTuningJob


class FtaasError(Exception):
    """Base of every error the SDK raises."""


class APIConnectionError(FtaasError):
    """The server could not be reached, or the connection broke before an answer arrived."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(FtaasError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx2.Response,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.status_code = response.status_code
        self.type = type
        self.param = param
        self.code = code
        self.request_id = response.headers.get("x-request-id")

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


class BadRequestError(APIStatusError):
    """400/422: the request is invalid; ``param`` and ``code`` say what to fix."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: no such object for this API key's tenant."""


class ConflictError(APIStatusError):
    """409."""


class RateLimitError(APIStatusError):
    """429: slow down (the SDK already retried, honouring ``Retry-After``)."""


class InternalServerError(APIStatusError):
    """5xx: the server failed (the SDK already retried where that was safe)."""


class IntegrityError(FtaasError):
    """A download's sha256 does not match the checksum the server announced."""


class WaitTimeoutError(FtaasError, TimeoutError):
    """``jobs.wait`` gave up before the job finished; ``job`` is its last known state."""

    def __init__(self, message: str, job: FineTuningJob) -> None:
        super().__init__(message)
        self.job = job


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: BadRequestError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIStatusError)
