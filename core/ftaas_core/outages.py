"""Outages of the object store and the database: errors that pass, told apart from errors that
do not, and retried with backoff for a bounded time.

A training job outlives a short outage by retrying the write it was making; past the bound
(``FTAAS_OUTAGE_RETRY_SECONDS``) the worker parks the job, which resumes from its newest stored
checkpoint once it is queued again, without spending its retry budget.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("ftaas.outages")

P = ParamSpec("P")
T = TypeVar("T")
FIRST_DELAY, MAX_DELAY = 0.5, 8.0
SERVER_SIDE = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


class ServiceOutage(Exception):
    """The object store or the database stayed unreachable past the retry bound."""

    def __init__(self, what: str, seconds: float, cause: BaseException) -> None:
        super().__init__(
            f"{what}: unreachable for {seconds:.0f} s ({type(cause).__name__}: {cause})"
        )
        self.what = what


def is_transient(exc: BaseException) -> bool:
    """Whether the error is the service being away (connection, timeout, a 5xx), not a fault of
    the request: only those are worth waiting out."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):  # botocore's, incl. timeouts
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in SERVER_SIDE
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retrying(what: str, bound: Callable[[], float]) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Retry the decorated call on transient errors, doubling the wait, for ``bound()`` seconds;
    then raise :class:`ServiceOutage`. The call must be safe to repeat (a transaction that
    rolled back, an object written under the same key)."""

    def decorate(call: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(call)
        def attempt(*args: P.args, **kwargs: P.kwargs) -> T:
            started, delay = time.monotonic(), FIRST_DELAY
            while True:
                try:
                    return call(*args, **kwargs)
                except Exception as exc:
                    waited, limit = time.monotonic() - started, bound()
                    if not is_transient(exc):
                        raise
                    if waited >= limit:
                        raise ServiceOutage(what, waited, exc) from exc
                    pause = min(delay, limit - waited)
                    log.warning("%s failed (%s); retrying in %.1f s", what, exc, pause)
                    time.sleep(pause)
                    delay = min(delay * 2, MAX_DELAY)

        return attempt

    return decorate
