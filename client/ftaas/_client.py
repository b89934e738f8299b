"""``Client`` and ``AsyncClient``: settings plus the resource tree (``files``,
``fine_tuning.jobs``, ``models``, ``webhooks``), the same tree on either executor."""

from __future__ import annotations

from types import TracebackType
from typing import Generic

import httpx2

from ftaas._http import AsyncHTTP, Settings, SyncHTTP
from ftaas.resources import Files, FineTuning, H, Models, Webhooks


class _Tree(Generic[H]):
    """The resources at the root, shared by both clients; ``http`` says how they run."""

    def __init__(self, http: H) -> None:
        self._http: H = http
        self.files = Files(http)
        self.fine_tuning = FineTuning(http)
        self.models = Models(http)
        self.webhooks = Webhooks(http)

    @property
    def base_url(self) -> str:
        return self._http.settings.base_url


class Client(_Tree[SyncHTTP]):
    """A blocking ftaas client; a context manager that closes its connections on exit.

    ``base_url`` is the server root (``http://host:8000``, ``/v1`` optional) and defaults to
    ``FTAAS_BASE_URL``; ``api_key`` defaults to ``FTAAS_API_KEY``. ``max_retries`` bounds the
    retries of failed requests that are safe to repeat.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        *,
        http_client: httpx2.Client | None = None,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        settings = Settings.resolve(base_url, api_key, timeout, max_retries)
        super().__init__(SyncHTTP(settings, http_client, transport))

    def close(self) -> None:
        """Close the connections (not those of an ``http_client`` passed in)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Tree[AsyncHTTP]):
    """``Client`` with awaitable methods; an async context manager."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        *,
        http_client: httpx2.AsyncClient | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        settings = Settings.resolve(base_url, api_key, timeout, max_retries)
        super().__init__(AsyncHTTP(settings, http_client, transport))

    async def close(self) -> None:
        """Close the connections (not those of an ``http_client`` passed in)."""
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
