"""Request dependencies as ``Annotated`` shortcuts: the database, the object store, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

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


DB = Annotated[Database, Depends(_database)]
Store = Annotated[LocalStore | S3Store, Depends(_store)]
Config = Annotated[Settings, Depends(_settings)]
TenantId = Annotated[str, Depends(current_tenant)]
