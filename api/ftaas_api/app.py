"""The FastAPI application: routes, error bodies, request ids, and start-up work."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftaas_api import console
from ftaas_api.auth import KeyGate
from ftaas_api.errors import ERROR_RESPONSES, install_error_handlers
from ftaas_api.limits import BodyLimit, UploadSpool
from ftaas_api.routes import files, health, jobs, models, uploads, webhooks
from ftaas_core.queue import connect_async_redis
from ftaas_core.reconcile import Reconciler
from ftaas_core.settings import get_settings

REQUEST_THREADS = 20
"""Blocking request work at once (SQL, object store, tokenising). SQL beyond the connection pool
(``FTAAS_DATABASE_POOL_SIZE``) waits for a connection rather than opening one."""


class RequestId:
    """Echo the caller's ``x-request-id`` or mint one, on every response (as OpenAI does)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id")
        request_id = given[:128] if given else uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The schema is migrated before this runs, by ``ftaas serve``."""
    to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
    reconciler = Reconciler()
    reconciler.start()
    async with KeyGate(connect_async_redis()) as app.state.keys:
        try:
            yield
        finally:
            reconciler.stop()


def create_app() -> FastAPI:
    app = FastAPI(
        title="ftaas",
        summary="OpenAI-compatible fine-tuning on your own GPUs",
        version="0.1.0",
        lifespan=lifespan,
    )
    settings = get_settings()
    app.state.spool = UploadSpool(settings.max_upload_bytes * settings.max_concurrent_uploads)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestId)
    for module in (files, uploads, jobs, models, webhooks):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(health.router)
    app.include_router(console.router)

    return app
