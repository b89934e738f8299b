"""``Client`` and ``AsyncClient``: settings plus the resource tree (files, jobs, models,
webhooks)."""

from __future__ import annotations

from types import TracebackType

import httpx2

from ftaas._http import AsyncHTTP, Settings, SyncHTTP
from ftaas.resources import (
    AsyncFiles,
    AsyncJobs,
    AsyncModels,
    AsyncWebhooks,
    Files,
    Jobs,
    Models,
    Webhooks,
)


class Client:
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
        self._http = SyncHTTP(
            Settings.resolve(base_url, api_key, timeout, max_retries), http_client, transport
        )
        self.files = Files(self._http)
        self.jobs = Jobs(self._http)
        self.models = Models(self._http)
        self.webhooks = Webhooks(self._http)

    @property
    def base_url(self) -> str:
        return self._http.settings.base_url

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


class AsyncClient:
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
        self._http = AsyncHTTP(
            Settings.resolve(base_url, api_key, timeout, max_retries), http_client, transport
        )
        self.files = AsyncFiles(self._http)
        self.jobs = AsyncJobs(self._http)
        self.models = AsyncModels(self._http)
        self.webhooks = AsyncWebhooks(self._http)

    @property
    def base_url(self) -> str:
        return self._http.settings.base_url

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
