"""Who is calling: the bearer key's tenant, checked on every request with the tenant's rate limit.

The common case costs one Redis round trip and no SQL. Each process remembers the keys it has
seen live, stamped with the key epoch: a token in Redis that every revocation replaces
(:func:`ftaas.keys.revoke_key`). The Lua call that counts the request also reads the epoch, so a
revoked key fails on every replica from the next request on. While Redis is unreachable, keys
are checked in SQL and the rate limit is not applied: the queue being down must not also lock
users out of reads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated, NamedTuple

from fastapi import Header, Request
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError, RedisError
from starlette.concurrency import run_in_threadpool

from api.errors import APIError
from ftaas.db import get_database
from ftaas.keys import KEY_CACHE_SECONDS, KEY_EPOCH, hash_key, new_epoch, tenant_for_digest
from ftaas.settings import get_settings

log = logging.getLogger("ftaas.api")


class _Known(NamedTuple):
    tenant: str
    epoch: bytes
    until: float  # monotonic time; bounds staleness if a revocation could not reach Redis


_known: dict[str, _Known] = {}  # key digest -> tenant
_MAX_KNOWN = 10_000


async def current_tenant(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The tenant behind the bearer key (401 with OpenAI's wording otherwise), rate limited."""
    digest = hash_key(_bearer_key(authorization))
    try:
        tenant, count = await _check(request.app.state.redis, digest)
    except RedisError as exc:
        log.warning("API key checked in SQL, rate limit not applied: %s", exc)
        tenant, count = await run_in_threadpool(_lookup, digest), None
    if tenant is None:
        # Forgotten here too: after a revocation whose epoch never reached Redis, the entry
        # would otherwise be trusted again once Redis answers.
        _known.pop(digest, None)
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    if count is not None and count > get_settings().rate_limit_per_minute:
        raise APIError(
            429,
            "Rate limit reached for requests per minute; retry after the time in Retry-After.",
            code="rate_limit_exceeded",
            retry_after=60 - int(time.time()) % 60,
        )
    return tenant


async def _check(redis: AsyncRedis, digest: str) -> tuple[str | None, int | None]:
    """The key's tenant (None: no live key) and the request's number in the tenant's minute."""
    count: int | None = None
    known = _known.get(digest)
    if known is not None and known.until > time.monotonic():
        count, epoch = await _count(redis, known.tenant)
        if epoch == known.epoch:  # no revocation since the key was looked up
            return known.tenant, count
    # The epoch is read before SQL: a revocation committed after this read also replaces it.
    epoch = await _epoch(redis)
    tenant = await run_in_threadpool(_lookup, digest)
    if tenant is None:
        return None, None
    if len(_known) >= _MAX_KNOWN:
        _known.clear()
    _known[digest] = _Known(tenant, epoch, time.monotonic() + KEY_CACHE_SECONDS)
    if count is None:
        count, _ = await _count(redis, tenant)
    return tenant, count


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


# One round trip: count the request in the tenant's minute and read the key epoch.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 120) end
return {n, redis.call('GET', KEYS[2])}
"""
_COUNT_SHA = hashlib.sha1(_COUNT.encode()).hexdigest()


async def _count(redis: AsyncRedis, tenant: str) -> tuple[int, bytes | None]:
    """This request's number in the tenant's current minute, and the key epoch."""
    keys = (f"ftaas:rate:{tenant}:{int(time.time() // 60)}", KEY_EPOCH)
    try:
        count, epoch = await redis.execute_command("EVALSHA", _COUNT_SHA, 2, *keys)
    except NoScriptError:  # a new or restarted Redis: load the script once
        count, epoch = await redis.execute_command("EVAL", _COUNT, 2, *keys)
    return count, epoch


async def _epoch(redis: AsyncRedis) -> bytes:
    """The key epoch, set on first use."""
    pipeline = redis.pipeline(transaction=False).setnx(KEY_EPOCH, new_epoch()).get(KEY_EPOCH)
    _, epoch = await pipeline.execute()
    return epoch
