"""HTTP plumbing shared by ``Client`` and ``AsyncClient``: settings, request building, retries,
error mapping, and the two executors that carry out the resources' operations.

A resource method is written once, as an operation: a generator that yields effects (a ``Call``
to send, a ``Sleep``, a ``Download``) and returns its result. ``SyncHTTP`` carries the effects
out blocking, ``AsyncHTTP`` awaiting them; only these small loops and the send loop exist twice.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import asynccontextmanager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import httpx2
from pydantic import BaseModel

from ftaas._download import AdapterDownload
from ftaas.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    FtaasError,
    status_error_class,
)
from ftaas.pagination import AsyncPage, SyncPage
from ftaas.types import ErrorBody

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

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
class FileBody:
    """A multipart file part named ``field``: the file, or ``length`` bytes of it from
    ``offset``. A path is opened anew for each attempt and streamed from disk."""

    filename: str
    source: Path | bytes
    offset: int = 0
    length: int | None = None
    field: str = "file"

    @contextmanager
    def open(self) -> Iterator[IO[bytes] | bytes]:
        if isinstance(self.source, bytes):
            whole = self.length is None
            yield self.source if whole else self.source[self.offset : self.offset + self.length]
            return
        with self.source.open("rb") as f:
            yield f if self.length is None else _Slice(f, self.offset, self.length)


class _Slice:
    """``length`` bytes of a file from ``offset``, as a file of that size (httpx2 finds a
    part's length by seeking to its end)."""

    def __init__(self, file: IO[bytes], offset: int, length: int) -> None:
        self._file, self._offset, self._length, self._at = file, offset, length, 0

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        self._at = position + (self._length if whence == os.SEEK_END else 0)
        return self._at

    def tell(self) -> int:
        return self._at

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._at
        self._file.seek(self._offset + self._at)
        data = self._file.read(left if size < 0 else min(size, left))
        self._at += len(data)
        return data


@dataclass(frozen=True)
class Call:
    """One API request, described once and sent by either client."""

    method: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = None
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    upload: FileBody | None = None
    idempotent: bool = False
    """A POST that the server answers the same when sent twice (an Upload's numbered part)."""

    @property
    def replayable(self) -> bool:
        """Whether sending it twice is harmless: reads, deletes, and POSTs under an idempotency
        key or idempotent. Anything else is retried only when the connection failed before it
        was sent."""
        return (
            self.method in ("GET", "DELETE") or "Idempotency-Key" in self.headers or self.idempotent
        )

    def after(self, cursor: str) -> Call:
        return dataclasses.replace(self, params={**self.params, "after": cursor})


@dataclass(frozen=True)
class Listing(Generic[M]):
    """A list endpoint: the request for a page and the type of its items. An executor answers
    it with its own page type, which fetches the next pages when iterated."""

    call: Call
    item: type[M]

    def after(self, cursor: str) -> Listing[M]:
        return Listing(self.call.after(cursor), self.item)


@dataclass(frozen=True)
class Sleep:
    """Wait between polls; the executor sleeps with ``sleep`` or ``async_sleep``."""

    seconds: float


@dataclass(frozen=True)
class Download:
    """Stream an adapter archive into ``dest``, verify it and unpack it; answered with the
    adapter directory. An effect of its own because the streaming is blocking or awaited."""

    call: Call
    dest: Path


@dataclass(frozen=True)
class Gather:
    """Send ``calls`` ``limit`` at a time, each with its own retries; answered with their
    responses in order, or the first error (the calls not yet sent are not). ``done`` hears of
    each call as it succeeds."""

    calls: tuple[Call, ...]
    limit: int
    done: Callable[[Call], None] = lambda call: None


@dataclass(frozen=True)
class Emit(Generic[T]):
    """Hand ``item`` to the caller of a streamed method, then carry on."""

    item: T


# What an operation yields; each is answered with: the response (read), None, the directory,
# the responses.
Effect = Call | Sleep | Download | Gather
Op = Generator[Effect, Any, T]  # an operation that returns a T
Stream = Generator[Effect | Emit[T], Any, None]  # one that emits Ts as it goes


class Steps(Generic[T]):
    """An operation in progress: ``effect`` is what it waits on, until it is ``done`` with a
    ``result``. An effect's error is raised inside the operation, where it yielded."""

    result: T

    def __init__(self, op: Generator[Any, Any, T]) -> None:
        self._op = op
        self.done = False
        self.effect: Any = None
        self.send(None)

    def send(self, value: Any) -> None:
        self._resume(self._op.send, value)

    def throw(self, error: Exception) -> None:
        self._resume(self._op.throw, error)

    def _resume(self, step: Callable[[Any], Any], value: Any) -> None:
        try:
            self.effect = step(value)
        except StopIteration as stop:
            self.done, self.result = True, stop.value


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
            files=None
            if call.upload is None
            else {call.upload.field: (call.upload.filename, body)},
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
    """Sends calls and carries out operations blocking: ``Client``'s executor."""

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

    @contextmanager
    def stream(self, call: Call) -> Iterator[httpx2.Response]:
        response = self.send(call, stream=True)
        try:
            yield response
        finally:
            response.close()

    def run(self, op: Op[T]) -> T:
        """Carry out an operation and return its result."""
        steps = Steps(op)
        with closing(op):
            while not steps.done:
                self._advance(steps)
        return steps.result

    def iterate(self, stream: Stream[T]) -> Iterator[T]:
        """Carry out a streamed operation, yielding each item as it is emitted."""
        steps = Steps(stream)
        with closing(stream):
            while not steps.done:
                if isinstance(steps.effect, Emit):
                    yield steps.effect.item
                    steps.send(None)
                else:
                    self._advance(steps)

    def page(self, listing: Listing[M]) -> SyncPage[M]:
        response = self.send(listing.call)
        parse = SyncPage[listing.item]  # type: ignore[name-defined]  # a type known at run time
        page = parse.model_validate_json(response.content)
        page._after = lambda cursor: self.page(listing.after(cursor))
        return page

    def _advance(self, steps: Steps[Any]) -> None:
        try:
            value = self._perform(steps.effect)
        except Exception as exc:
            steps.throw(exc)
        else:
            steps.send(value)

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Call):
            return self.send(effect)
        if isinstance(effect, Sleep):
            return sleep(effect.seconds)
        if isinstance(effect, Gather):
            return self._gather(effect)
        with (
            self.stream(effect.call) as response,
            AdapterDownload(effect.dest, response) as download,
        ):
            for chunk in response.iter_bytes():
                download.write(chunk)
        return download.unpack()

    def _gather(self, gather: Gather) -> list[httpx2.Response]:
        def send(call: Call) -> httpx2.Response:
            response = self.send(call)
            gather.done(call)
            return response

        with ThreadPoolExecutor(gather.limit, thread_name_prefix="ftaas-gather") as pool:
            futures = [pool.submit(send, call) for call in gather.calls]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            return [future.result() for future in futures]


class AsyncHTTP(BaseHTTP):
    """Sends calls and carries out operations awaiting: ``AsyncClient``'s executor."""

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

    @asynccontextmanager
    async def stream(self, call: Call) -> AsyncIterator[httpx2.Response]:
        response = await self.send(call, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def run(self, op: Op[T]) -> T:
        """Carry out an operation and return its result."""
        steps = Steps(op)
        with closing(op):
            while not steps.done:
                await self._advance(steps)
        return steps.result

    async def iterate(self, stream: Stream[T]) -> AsyncIterator[T]:
        """Carry out a streamed operation, yielding each item as it is emitted."""
        steps = Steps(stream)
        with closing(stream):
            while not steps.done:
                if isinstance(steps.effect, Emit):
                    yield steps.effect.item
                    steps.send(None)
                else:
                    await self._advance(steps)

    async def page(self, listing: Listing[M]) -> AsyncPage[M]:
        response = await self.send(listing.call)
        parse = AsyncPage[listing.item]  # type: ignore[name-defined]  # a type known at run time
        page = parse.model_validate_json(response.content)
        page._after = lambda cursor: self.page(listing.after(cursor))
        return page

    async def _advance(self, steps: Steps[Any]) -> None:
        try:
            value = await self._perform(steps.effect)
        except Exception as exc:
            steps.throw(exc)
        else:
            steps.send(value)

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Call):
            return await self.send(effect)
        if isinstance(effect, Sleep):
            return await async_sleep(effect.seconds)
        if isinstance(effect, Gather):
            return await self._gather(effect)
        async with self.stream(effect.call) as response:
            with AdapterDownload(effect.dest, response) as download:
                async for chunk in response.aiter_bytes():
                    download.write(chunk)
        return await asyncio.to_thread(download.unpack)

    async def _gather(self, gather: Gather) -> list[httpx2.Response]:
        room = asyncio.Semaphore(gather.limit)

        async def send(call: Call) -> httpx2.Response:
            async with room:
                response = await self.send(call)
            gather.done(call)
            return response

        tasks = [asyncio.ensure_future(send(call)) for call in gather.calls]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
