"""Who is calling: the bearer key's tenant, checked on every request, and the tenant's rate limit.

No request waits on Redis. Each API process keeps a :class:`KeyGate`: the live keys it has looked
up in SQL, and its tenants' request counts in the current minute. A background task syncs the
gate with Redis every ``SYNC_SECONDS``. It adds this process's new counts to the per-minute
counters all replicas share, reads back their totals, and reads the key epoch that every
revocation replaces (:func:`ftaas.keys.revoke_key`). A new epoch voids every remembered key, so a
revoked key is refused on every replica within one sync. Once the gate has gone ``BLIND_SECONDS``
without a sync (Redis unreachable), keys are checked in SQL on every request, and each process
limits a tenant on the counts it has seen itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from typing import Annotated, NamedTuple

from fastapi import Header, Request
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from api.errors import APIError
from ftaas.db import get_database
from ftaas.keys import KEY_CACHE_SECONDS, KEY_EPOCH, hash_key, new_epoch, tenant_for_digest
from ftaas.settings import get_settings

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
        self.known: dict[str, _Known] = {}  # key digest -> tenant
        self.epoch: bytes | None = None
        self.synced_at = -math.inf  # monotonic time the last good sync was sent
        self.minute = 0
        self.totals: dict[str, int] = {}  # tenant -> its shared count at the last sync
        self.pending: Counter[str] = Counter()  # tenant -> requests not yet added to Redis

    async def tenant(self, digest: str) -> str | None:
        """The tenant of the live key with this digest, or None."""
        seen = time.monotonic()
        blind = seen - self.synced_at > BLIND_SECONDS
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
        self.pending[tenant] += 1
        return self.totals.get(tenant, 0) + self.pending[tenant]

    async def sync(self) -> None:
        """Add the pending counts to Redis, read back their totals and the key epoch."""
        self._roll_minute()
        sent, minute, pending = time.monotonic(), self.minute, self.pending
        self.pending = Counter()
        pipeline = self.redis.pipeline(transaction=False)
        pipeline.setnx(KEY_EPOCH, new_epoch()).get(KEY_EPOCH)
        for tenant, n in pending.items():
            key = f"ftaas:rate:{tenant}:{minute}"
            pipeline.incrby(key, n).expire(key, 120)
        try:
            _, epoch, *replies = await pipeline.execute()
        except BaseException:
            if minute == self.minute:  # still this minute's: count them next time
                self.pending.update(pending)
            raise
        if minute == self.minute:
            self.totals.update(zip(pending, replies[::2], strict=True))
        if epoch != self.epoch:
            self.epoch = epoch
            self.known.clear()
        self.synced_at = sent

    async def sync_forever(self) -> None:
        """Sync every SYNC_SECONDS; log when Redis stops and starts answering, not each failure."""
        failing = False
        while True:
            try:
                await self.sync()
                if failing:
                    log.warning("Redis answers again: keys and rate limits are shared again")
                failing = False
            except RedisError as exc:
                if not failing:
                    log.warning(
                        "Redis unreachable, keys checked in SQL, limits per process: %s", exc
                    )
                failing = True
            await asyncio.sleep(SYNC_SECONDS)

    def _roll_minute(self) -> None:
        minute = int(time.time() // 60)
        if minute != self.minute:
            self.minute = minute
            self.totals.clear()
            self.pending.clear()


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
