"""Who is calling: the bearer key's tenant, checked on every request, and the tenant's rate limit.

No key check or rate count waits on Redis. Each API process keeps a :class:`KeyGate`: the live
keys it has looked up in SQL, and its tenants' request counts in the current minute. A
background task, running while the gate is entered (``async with``), syncs it with Redis every
``SYNC_SECONDS``. It writes this process's counts into the per-minute counters all replicas
share, reads back the other replicas' counts, and reads the key epoch that every revocation
replaces (:func:`ftaas_core.keys.revoke_key`). A new epoch voids every remembered key, so a revoked key is refused on every replica within about one
sync. Once the gate has gone ``BLIND_SECONDS`` without a sync (Redis unreachable), keys are
checked in SQL on every request, and each process limits a tenant on the counts it has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from typing import Annotated, NamedTuple

from fastapi import Header, Request
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from ftaas_api.errors import APIError
from ftaas_core.db import get_database
from ftaas_core.keys import KEY_CACHE_SECONDS, KEY_EPOCH, hash_key, new_epoch, tenant_for_digest
from ftaas_core.settings import get_settings

log = logging.getLogger("ftaas.api")

SYNC_SECONDS = 0.1
BLIND_SECONDS = 1.0
_MAX_KNOWN = 10_000


class _Known(NamedTuple):
    tenant: str
    epoch: bytes | None  # the epoch read before the SQL lookup
    until: float  # monotonic time; bounds staleness if a revocation could not reach Redis


class KeyGate:
    """One API process's view of live keys and request counts, synced with Redis."""

    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self.replica = uuid.uuid4().hex  # this process's field in each shared counter
        self.known: dict[str, _Known] = {}  # key digest -> tenant
        self.epoch: bytes | None = None
        self.synced_at = -math.inf  # monotonic time the last good sync was sent
        self.minute = 0
        self.mine: Counter[str] = Counter()  # tenant -> this process's requests this minute
        self.others: dict[str, int] = {}  # tenant -> other replicas' requests, at the last sync
        self.unsent: set[str] = set()  # tenants whose count Redis has not seen yet
        self._stop = asyncio.Event()
        self._syncing: asyncio.Task[None] | None = None

    def blind(self, at: float | None = None) -> bool:
        """Whether the last sync with Redis is older than BLIND_SECONDS (Redis unreachable)."""
        return (time.monotonic() if at is None else at) - self.synced_at > BLIND_SECONDS

    async def tenant(self, digest: str) -> str | None:
        """The tenant of the live key with this digest, or None."""
        seen = time.monotonic()
        blind = self.blind(seen)
        known = self.known.get(digest)
        if not blind and known and known.epoch == self.epoch and known.until > seen:
            return known.tenant
        epoch = self.epoch  # before SQL: a revocation committed after this also replaces it
        tenant = await run_in_threadpool(_lookup, digest)
        if tenant is None:
            # Forgotten here too: after a revocation whose epoch never reached Redis, the entry
            # would otherwise be trusted again once Redis answers.
            self.known.pop(digest, None)
        elif not blind:
            if len(self.known) >= _MAX_KNOWN:
                self.known.clear()
            self.known[digest] = _Known(tenant, epoch, seen + KEY_CACHE_SECONDS)
        return tenant

    def count(self, tenant: str) -> int:
        """Count a request; its number in the tenant's minute, as far as this process knows."""
        self._roll_minute()
        self.mine[tenant] += 1
        self.unsent.add(tenant)
        return self.others.get(tenant, 0) + self.mine[tenant]

    async def sync(self) -> None:
        """Tell Redis this process's counts, read the other replicas' and the key epoch.

        Each replica writes its own absolute count into a hash field, so a sync that is sent
        twice (a retry, or a timeout after Redis applied it) counts nothing twice.
        """
        self._roll_minute()
        sent, minute, tenants = time.monotonic(), self.minute, list(self.unsent)
        self.unsent = set()
        pipeline = self.redis.pipeline(transaction=False)
        pipeline.setnx(KEY_EPOCH, new_epoch()).get(KEY_EPOCH)
        for tenant in tenants:
            key = f"ftaas:rate:{tenant}:{minute}"
            pipeline.hset(key, self.replica, self.mine[tenant]).expire(key, 120).hgetall(key)
        try:
            _, epoch, *replies = await pipeline.execute()
        except BaseException:
            if minute == self.minute:
                self.unsent.update(tenants)
            raise
        if minute == self.minute:
            me = self.replica.encode()
            for tenant, counts in zip(tenants, replies[2::3], strict=True):
                self.others[tenant] = sum(int(n) for field, n in counts.items() if field != me)
        if epoch != self.epoch:
            self.epoch = epoch
            self.known.clear()
        self.synced_at = sent

    async def __aenter__(self) -> KeyGate:
        """Start syncing in the background."""
        self._syncing = asyncio.create_task(self._sync_until_stopped())
        return self

    async def __aexit__(self, *_: object) -> None:
        """Stop syncing and close the client. At most one sync is in flight, bounded by the
        client's 1 s timeouts; even so, a stuck Redis client must never hold up an exit."""
        self._stop.set()
        if self._syncing is not None:
            await asyncio.wait({self._syncing}, timeout=5)
            self._syncing.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.redis.aclose(), 5)

    async def _sync_until_stopped(self) -> None:
        """Sync every SYNC_SECONDS until stopped (by an event, not a cancellation: one that
        meets a socket timeout can be swallowed); log when syncing fails and recovers."""
        failing = False
        while not self._stop.is_set():
            try:
                await self.sync()
                if failing:
                    log.warning("Key gate synced again: keys and rate limits are shared again")
                failing = False
            except Exception as exc:  # Redis's errors above all; none may end the task
                if not failing:
                    log.warning(
                        "Key gate cannot sync, so keys are checked in SQL and limits are per "
                        "process: %s",
                        exc,
                        exc_info=not isinstance(exc, RedisError),
                    )
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SYNC_SECONDS)

    def _roll_minute(self) -> None:
        minute = int(time.time() // 60)
        if minute != self.minute:
            self.minute = minute
            self.mine.clear()
            self.others.clear()
            self.unsent.clear()


async def current_tenant(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The tenant behind the bearer key (401 with OpenAI's wording otherwise), rate limited."""
    gate: KeyGate = request.app.state.keys
    tenant = await gate.tenant(hash_key(_bearer_key(authorization)))
    if tenant is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    if gate.count(tenant) > get_settings().rate_limit_per_minute:
        raise APIError(
            429,
            "Rate limit reached for requests per minute; retry after the time in Retry-After.",
            code="rate_limit_exceeded",
            retry_after=60 - int(time.time()) % 60,
        )
    return tenant


def _bearer_key(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    return key.strip()


def _lookup(digest: str) -> str | None:
    with get_database().session() as session:
        return tenant_for_digest(session, digest)
