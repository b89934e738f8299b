"""Tenants and their API keys. Keys are shown once and stored only as SHA-256 hashes.

API servers remember live keys briefly (``ftaas_api.auth``); a revocation replaces the key epoch in
Redis, which voids what every server remembers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ftaas_core.db import Database
from ftaas_core.ids import new_id
from ftaas_core.models import ApiKey, Tenant, now
from ftaas_core.queue import get_redis

KEY_PREFIX = "ftk_"
KEY_EPOCH = "ftaas:keys:epoch"
# How long a server may go on accepting a revoked key if the revocation could not reach Redis.
KEY_CACHE_SECONDS = 60


def new_epoch() -> str:
    return secrets.token_hex(8)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> str:
    """A new key for ``tenant_name`` (the tenant is created on first use); returns the key."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=new_id("org"), name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key), display_prefix=key[:12]
        )
    )
    return key


def tenant_for_digest(session: Session, digest: str) -> str | None:
    """The tenant id a live key (by its hash) belongs to, or None, compared in constant time."""
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.key_hash).where(
            ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.tenant_id


def revoke_key(db: Database, key: str) -> bool:
    """Revoke a key; False if there is no such live key. Raises RedisError when the revocation
    is recorded but servers could not be told: they then notice within KEY_CACHE_SECONDS, or
    within a sync of their key gate when the revocation is run again."""
    with db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        if row is None:
            return False
        was_live = row.revoked_at is None
        if was_live:
            row.revoked_at = now()
    # Only after the commit: a server that sees the new epoch must also see the revocation.
    get_redis().set(KEY_EPOCH, new_epoch())
    return was_live
