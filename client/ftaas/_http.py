"""HTTP plumbing shared by ``Client`` and ``AsyncClient``: settings, request building, retries
and error mapping. Only the small send loop exists twice, once blocking and once awaiting.

The HTTP client is httpx2: the maintained successor of httpx with the same API, and what the
openai SDK and Starlette's TestClient now use, so an ftaas user who also has openai installed
shares one HTTP stack. ``http_client=`` or ``transport=`` (e.g. ``httpx2.MockTransport``) is the
seam for tests and for custom proxies, TLS or limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx2
from pydantic import BaseModel

from ftaas.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    FtaasError,
    status_error_class,
)
from ftaas.types import ErrorBody, Page

M = TypeVar("M", bound=BaseModel)

RETRY_STATUSES = frozenset({408, 409, 429})
INITIAL_DELAY = 0.5
MAX_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
USER_AGENT = "ftaas-python"

# Looked up at call time, so tests can replace them and observe the delays.
sleep: Callable[[float], None] = time.sleep
async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class Settings:
    base_url: str
    api_key: str
    timeout: float
    max_retries: int

    @classmethod
    def resolve(
        cls, base_url: str | None, api_key: str | None, timeout: float, max_retries: int
    ) -> Settings:
        """Arguments win over FTAAS_BASE_URL and FTAAS_API_KEY; a trailing ``/v1`` is optional."""
        base_url = base_url or os.environ.get("FTAAS_BASE_URL")
        api_key = api_key or os.environ.get("FTAAS_API_KEY")
        if not base_url:
            raise FtaasError(
                "No server URL: pass base_url= (or --base-url) or set FTAAS_BASE_URL, "
                "e.g. http://localhost:8000."
            )
        if not api_key:
            raise FtaasError("No API key: pass api_key= (or --api-key) or set FTAAS_API_KEY.")
        return cls(base_url.rstrip("/").removesuffix("/v1"), api_key, timeout, max_retries)


@dataclass(frozen=True)
class Upload:
    """A multipart file part. A path is opened anew for each attempt and streamed from disk."""

    filename: str
    source: Path | bytes

    @contextmanager
    def open(self) -> Iterator[IO[bytes] | bytes]:
        if isinstance(self.source, bytes):
            yield self.source
            return
        with self.source.open("rb") as f:
            yield f


@dataclass(frozen=True)
class Call:
    """One API request, described once and sent by either client."""

    method: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = None
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    upload: Upload | None = None

    @property
    def replayable(self) -> bool:
        """Whether sending it twice is harmless: reads, deletes, and POSTs under an idempotency
        key. Anything else is retried only when the connection failed before it was sent."""
        return self.method in ("GET", "DELETE") or "Idempotency-Key" in self.headers

    def after(self, cursor: str) -> Call:
        return dataclasses.replace(self, params={**self.params, "after": cursor})


def status_error(response: httpx2.Response) -> APIStatusError:
    """The typed error for an error response, carrying the server's OpenAI-style body."""
    cls = status_error_class(response.status_code)
    try:
        detail = ErrorBody.model_validate_json(response.content).error
    except ValueError:  # not our error body: a proxy's page, an empty answer
        return cls(response.text or response.reason_phrase, response=response)
    return cls(
        detail.message, response=response, type=detail.type, param=detail.param, code=detail.code
    )


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER else None


def _backoff(attempt: int) -> float:
    """Exponential, capped, with jitter so that many clients do not retry in lockstep."""
    return min(MAX_DELAY, INITIAL_DELAY * 2**attempt) * (1 - 0.25 * random.random())


class BaseHTTP:
    """What both clients share: how a ``Call`` becomes a request and whether to retry it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "User-Agent": USER_AGENT,
        }

    def _build(
        self, client: httpx2.Client | httpx2.AsyncClient, call: Call, body: IO[bytes] | bytes | None
    ) -> httpx2.Request:
        return client.build_request(
            call.method,
            self.settings.base_url + call.path,
            params={k: v for k, v in call.params.items() if v is not None},
            json=call.json,
            data=call.data,
            files=None if call.upload is None else {"file": (call.upload.filename, body)},
            headers={**self._headers, **call.headers},
        )

    def _delay_or_raise(
        self, call: Call, attempt: int, outcome: httpx2.Response | httpx2.TransportError
    ) -> float:
        """Seconds to wait before the next attempt, or raise the error the caller gets."""
        if isinstance(outcome, httpx2.Response):
            status = outcome.status_code
            if (
                attempt >= self.settings.max_retries
                or not call.replayable
                or not (status in RETRY_STATUSES or status >= 500)
            ):
                raise status_error(outcome)
            retry_after = _retry_after(outcome)
            return _backoff(attempt) if retry_after is None else retry_after
        never_sent = isinstance(outcome, httpx2.ConnectError | httpx2.ConnectTimeout)
        if attempt >= self.settings.max_retries or not (call.replayable or never_sent):
            error_type = (
                APITimeoutError
                if isinstance(outcome, httpx2.TimeoutException)
                else APIConnectionError
            )
            raise error_type(
                f"{call.method} {call.path} failed: {type(outcome).__name__}: {outcome}"
            ) from outcome
        return _backoff(attempt)


def _follow(call: Call) -> bool:
    """Downloads may redirect to a presigned object-store URL; nothing else should redirect."""
    return call.method == "GET"


class SyncHTTP(BaseHTTP):
    def __init__(
        self,
        settings: Settings,
        http_client: httpx2.Client | None = None,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        super().__init__(settings)
        self._owns_client = http_client is None
        self._client = http_client or httpx2.Client(transport=transport, timeout=settings.timeout)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def send(self, call: Call, *, stream: bool = False) -> httpx2.Response:
        """A successful response (its body unread when ``stream``), after any retries."""
        attempt = 0
        while True:
            outcome: httpx2.Response | httpx2.TransportError
            try:
                with call.upload.open() if call.upload else nullcontext() as body:
                    request = self._build(self._client, call, body)
                    outcome = self._client.send(
                        request, stream=stream, follow_redirects=_follow(call)
                    )
                if outcome.is_success:
                    return outcome
                outcome.read()
            except httpx2.TransportError as exc:
                outcome = exc
            sleep(self._delay_or_raise(call, attempt, outcome))
            attempt += 1

    def request(self, call: Call, model: type[M]) -> M:
        return model.model_validate_json(self.send(call).content)

    @contextmanager
    def stream(self, call: Call) -> Iterator[httpx2.Response]:
        response = self.send(call, stream=True)
        try:
            yield response
        finally:
            response.close()

    def iterate(self, call: Call, item: type[M]) -> Iterator[M]:
        """Every item of a list endpoint, fetching the next page (``after``) when needed."""
        while True:
            page = self.request(call, Page[item])  # type: ignore[valid-type]
            yield from page.data
            if not page.has_more or page.last_id is None:
                return
            call = call.after(page.last_id)


class AsyncHTTP(BaseHTTP):
    def __init__(
        self,
        settings: Settings,
        http_client: httpx2.AsyncClient | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(settings)
        self._owns_client = http_client is None
        self._client = http_client or httpx2.AsyncClient(
            transport=transport, timeout=settings.timeout
        )

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def send(self, call: Call, *, stream: bool = False) -> httpx2.Response:
        """A successful response (its body unread when ``stream``), after any retries."""
        attempt = 0
        while True:
            outcome: httpx2.Response | httpx2.TransportError
            try:
                with call.upload.open() if call.upload else nullcontext() as body:
                    request = self._build(self._client, call, body)
                    outcome = await self._client.send(
                        request, stream=stream, follow_redirects=_follow(call)
                    )
                if outcome.is_success:
                    return outcome
                await outcome.aread()
            except httpx2.TransportError as exc:
                outcome = exc
            await async_sleep(self._delay_or_raise(call, attempt, outcome))
            attempt += 1

    async def request(self, call: Call, model: type[M]) -> M:
        return model.model_validate_json((await self.send(call)).content)

    @asynccontextmanager
    async def stream(self, call: Call) -> AsyncIterator[httpx2.Response]:
        response = await self.send(call, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def iterate(self, call: Call, item: type[M]) -> AsyncIterator[M]:
        """Every item of a list endpoint, fetching the next page (``after``) when needed."""
        while True:
            page = await self.request(call, Page[item])  # type: ignore[valid-type]
            for entry in page.data:
                yield entry
            if not page.has_more or page.last_id is None:
                return
            call = call.after(page.last_id)
