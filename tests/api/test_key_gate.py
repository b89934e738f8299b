"""The API's key gate against the real Redis and SQL: replicas share a tenant's minute, and a
revocation voids what a replica remembers at its next sync."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from ftaas_api import auth
from ftaas_api.auth import KeyGate
from ftaas_core.db import get_database
from ftaas_core.keys import hash_key, revoke_key
from ftaas_core.queue import connect_async_redis
from tests.conftest import Backend, new_key
from tests.support.services import free_port


def _inside_one_minute() -> None:
    """Counts are per minute: start well inside a window."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


@asynccontextmanager
async def synced_gate() -> AsyncIterator[KeyGate]:
    gate = KeyGate(connect_async_redis())
    try:
        await gate.sync()
        yield gate
    finally:
        await gate.redis.aclose()


def test_replicas_count_a_tenant_together(backend: Backend) -> None:
    tenant = f"org-{uuid.uuid4().hex}"

    async def scenario() -> None:
        async with synced_gate() as first, synced_gate() as second:
            assert [first.count(tenant) for _ in range(5)][-1] == 5
            assert [second.count(tenant) for _ in range(3)][-1] == 3  # neither has synced
            await first.sync()
            await second.sync()  # reads the first replica's 5
            assert second.count(tenant) == 9
            first.count(tenant)
            await first.sync()  # reads the second's 3: its fourth is not in Redis yet
            assert first.count(tenant) == 10
            first.unsent.add(tenant)
            await first.sync()  # sent again, as after a timeout: counts nothing twice
            await second.sync()
            assert second.count(tenant) == 7 + 5

    _inside_one_minute()
    asyncio.run(scenario())


def test_a_revocation_voids_a_remembered_key_at_the_next_sync(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "BLIND_SECONDS", 3600)  # however slow this machine, never blind
    key = new_key(f"gate-{uuid.uuid4().hex[:6]}")
    digest = hash_key(key)

    async def scenario() -> None:
        async with synced_gate() as gate:
            tenant = await gate.tenant(digest)
            assert tenant is not None and gate.known[digest].tenant == tenant
            revoke_key(get_database(), key)
            assert await gate.tenant(digest) == tenant  # remembered until the next sync
            await gate.sync()
            assert await gate.tenant(digest) is None
            assert digest not in gate.known

    asyncio.run(scenario())


def test_a_gate_that_cannot_sync_checks_every_key_in_sql(backend: Backend) -> None:
    key = new_key(f"gate-{uuid.uuid4().hex[:6]}")

    async def scenario() -> None:
        async with synced_gate() as gate:
            assert await gate.tenant(hash_key(key)) is not None
            gate.synced_at -= 2  # as if the last good sync were two seconds old
            revoke_key(get_database(), key)
            assert await gate.tenant(hash_key(key)) is None  # SQL decided; the epoch is old

    asyncio.run(scenario())


def test_a_failed_sync_keeps_counting_and_sends_later(backend: Backend) -> None:
    tenant = f"org-{uuid.uuid4().hex}"

    async def scenario() -> None:
        gate = KeyGate(AsyncRedis.from_url(f"redis://127.0.0.1:{free_port()}/0"))  # nobody there
        assert [gate.count(tenant) for _ in range(3)][-1] == 3
        with pytest.raises(RedisError):
            await gate.sync()
        assert gate.count(tenant) == 4  # the process limits on its own counts meanwhile
        assert tenant in gate.unsent
        async with synced_gate() as other:
            gate.redis = other.redis  # Redis is back
            await gate.sync()
            other.count(tenant)
            await other.sync()  # a replica reads the counts of tenants it has seen
            assert other.count(tenant) == 4 + 2

    _inside_one_minute()
    asyncio.run(scenario())
