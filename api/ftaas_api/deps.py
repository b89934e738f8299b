"""Request dependencies as ``Annotated`` shortcuts: the database, the object store, the caller,
room for an upload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from ftaas_api.auth import current_tenant
from ftaas_core.db import Database, get_database
from ftaas_core.settings import Settings, get_settings
from ftaas_core.storage import LocalStore, S3Store, get_store


# The cached getters are wrapped in coroutines because FastAPI runs a plain function dependency
# on a worker thread, and that hop costs far more than the lookup itself.
async def _database() -> Database:
    return get_database()


async def _store() -> LocalStore | S3Store:
    return get_store()


async def _settings() -> Settings:
    return get_settings()


async def _upload_room(request: Request) -> AsyncIterator[None]:
    """Room in the upload spool for the body about to be read, held until the route is done
    (429 when there is none: :class:`ftaas_api.limits.UploadSpool`)."""
    limit = get_settings().max_upload_bytes
    declared = request.headers.get("content-length", "")
    size = min(int(declared), limit) if declared.isdigit() else limit
    with request.app.state.spool.reserve(size):
        yield


DB = Annotated[Database, Depends(_database)]
Store = Annotated[LocalStore | S3Store, Depends(_store)]
Config = Annotated[Settings, Depends(_settings)]
TenantId = Annotated[str, Depends(current_tenant)]
UploadRoom = Annotated[None, Depends(_upload_room)]
