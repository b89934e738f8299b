"""Request dependencies as ``Annotated`` shortcuts: the database, the object store, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from api.errors import APIError
from api.limits import check_rate
from ftaas.db import Database, get_database
from ftaas.keys import tenant_for_key
from ftaas.settings import Settings, get_settings
from ftaas.storage import LocalStore, S3Store, get_store


def current_tenant(authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant behind the bearer key; 401 with OpenAI's wording otherwise."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    with get_database().session() as session:
        tenant = tenant_for_key(session, key.strip())
    if tenant is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    check_rate(tenant)
    return tenant


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
