"""Tenants and their API keys. Keys are shown once and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ftaas.ids import new_id
from ftaas.models import ApiKey, Tenant, now

KEY_PREFIX = "ftk_"


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


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant id a live key belongs to, or None. The stored hash is compared in constant time."""
    digest = hash_key(key)
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.key_hash).where(
            ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.tenant_id


def revoke_key(session: Session, key: str) -> bool:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now()
    return True
