"""Webhooks for finished jobs, signed exactly as OpenAI signs its own (Standard Webhooks), so
``openai.OpenAI().webhooks.unwrap(body, headers, secret=...)`` verifies them.

A delivery is written by :func:`record_job_event` in the transaction that makes the job terminal:
it is never lost, and never sent for a change that rolled back. :func:`deliver_due` runs in every
process's reconciler; it claims an attempt with an UPDATE conditioned on the attempt count, so
however many processes run it, each attempt is made by one of them (at least once overall).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, get_args

import httpx2
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ftaas_core.db import Database
from ftaas_core.models import Job, WebhookDelivery, WebhookEndpoint, now
from ftaas_core.settings import Settings, get_settings

log = logging.getLogger("ftaas.webhooks")

EventType = Literal[
    "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

DELIVERY_TIMEOUT = 10.0
IN_FLIGHT_SECONDS = DELIVERY_TIMEOUT + 20
"""A claimed attempt is not made again elsewhere before this, unless its process died."""
MAX_BACKOFF = 3600.0
BATCH = 8
"""Attempts per round, sent concurrently: a slow receiver delays the reconciler by one timeout."""


def new_secret() -> str:
    """A signing secret in OpenAI's format: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_event_id() -> str:
    """OpenAI's event id shape (``evt_`` and hex); also the ``webhook-id`` a receiver dedupes on."""
    return "evt_" + secrets.token_hex(16)


def event_payload(event_id: str, type: EventType, job_id: str, created_at: int) -> str:
    """The body OpenAI sends for a fine-tuning event, serialised once so the signed bytes and
    the sent bytes are the same on every attempt."""
    event: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "created_at": created_at,
        "type": type,
        "data": {"id": job_id},
    }
    return json.dumps(event, separators=(",", ":"))


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed by the decoded secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{webhook_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, webhook_id: str, body: str, timestamp: int) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def retry_delay(attempts: int, base: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``base·2^(attempts-1)``,
    capped at an hour, less up to 25% jitter so that retries after an outage spread out."""
    delay = min(MAX_BACKOFF, base * 2.0 ** min(attempts - 1, 32))
    return delay * (1 - 0.25 * random.random())


def refusal(url: str) -> str | None:
    """Why a tenant's webhook URL must not be called, or None.

    Its host must resolve only to public addresses: otherwise any tenant could have the service
    POST to the cloud metadata endpoint, the database or anything else inside the cluster
    (``FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` lifts this for receivers on a private network).
    """
    host = httpx2.URL(url).host
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"its host {host!r} does not resolve ({exc})"
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global:
            return f"its host {host!r} resolves to {address}, which is not a public address"
    return None


def record_job_event(session: Session, job: Job, type: EventType) -> None:
    """Queue one delivery per live endpoint of the job's tenant that subscribes to ``type``;
    call it inside the transaction that changes the job's status."""
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == job.tenant_id, WebhookEndpoint.disabled_at.is_(None)
        )
    ).all()
    for endpoint in endpoints:
        if type not in endpoint.event_types:
            continue
        event_id = new_event_id()
        session.add(
            WebhookDelivery(
                id=event_id,
                endpoint_id=endpoint.id,
                tenant_id=job.tenant_id,
                job_id=job.id,
                type=type,
                payload=event_payload(event_id, type, job.id, job.finished_at or now()),
                status="pending",
                attempts=0,
                next_attempt_at=time.time(),
            )
        )


@dataclass(frozen=True)
class Claim:
    """One attempt this process owns: ``attempt`` is the count its UPDATE set."""

    id: str
    url: str
    secret: str
    payload: str
    attempt: int


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None


def deliver_due(db: Database, settings: Settings | None = None) -> int:
    """Make the attempts that are due (at most :data:`BATCH`); returns how many were made."""
    settings = settings or get_settings()
    claims = _claim(db, settings.webhook_max_attempts)
    if not claims:
        return 0
    with (
        httpx2.Client(timeout=DELIVERY_TIMEOUT, follow_redirects=False) as client,
        ThreadPoolExecutor(max_workers=len(claims), thread_name_prefix="webhook") as pool,
    ):
        outcomes = list(
            pool.map(
                lambda claim: _send(client, claim, settings.webhook_allow_private_networks),
                claims,
            )
        )
    for claim, outcome in zip(claims, outcomes, strict=True):
        _record(db, claim, outcome, settings)
    return len(claims)


def _claim(db: Database, max_attempts: int) -> Sequence[Claim]:
    claims: list[Claim] = []
    with db.session() as session:
        # Plain columns, not ORM objects: the UPDATEs below would otherwise rewrite them in place.
        due = session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.attempts,
                WebhookDelivery.payload,
                WebhookEndpoint.url,
                WebhookEndpoint.secret,
                WebhookEndpoint.disabled_at,
            )
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= time.time()
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(BATCH)
            .with_for_update(of=WebhookDelivery, skip_locked=True)  # PostgreSQL: skip others'
        ).all()
        for delivery_id, attempts, payload, url, secret, disabled_at in due:
            mine = update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == attempts,
            )
            if disabled_at is not None:
                session.execute(
                    mine.values(status="failed", last_error="The endpoint was deleted.")
                )
            elif attempts >= max_attempts:  # the last attempt's process died mid-send
                session.execute(mine.values(status="failed"))
            elif session.execute(
                mine.values(attempts=attempts + 1, next_attempt_at=time.time() + IN_FLIGHT_SECONDS)
            ).rowcount:
                claims.append(Claim(delivery_id, url, secret, payload, attempts + 1))
    return claims


def _send(client: httpx2.Client, claim: Claim, allow_private: bool) -> Outcome:
    """POST the payload, signed now (receivers reject timestamps over 5 minutes old).

    The destination is checked again here, not only when the endpoint was registered: DNS
    answers change."""
    if not allow_private and (reason := refusal(claim.url)):
        return Outcome(None, f"Not sent: {reason}.")
    headers = signed_headers(claim.secret, claim.id, claim.payload, int(time.time()))
    try:
        # Streamed and never read: the receiver's answer body is none of our business.
        with client.stream("POST", claim.url, content=claim.payload.encode(), headers=headers) as r:
            if r.is_success:
                return Outcome(r.status_code, None)
            return Outcome(r.status_code, f"HTTP {r.status_code} {r.reason_phrase}".strip())
    except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:1000])


def _record(db: Database, claim: Claim, outcome: Outcome, settings: Settings) -> None:
    values: dict[str, Any] = {
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    if outcome.error is None:
        values |= {"status": "delivered", "delivered_at": now()}
    elif claim.attempt >= settings.webhook_max_attempts:
        values["status"] = "failed"
        log.warning("webhook %s failed for good after %d attempts", claim.id, claim.attempt)
    else:
        delay = retry_delay(claim.attempt, settings.webhook_backoff_seconds)
        values["next_attempt_at"] = time.time() + delay
    with db.session() as session:
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claim.id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == claim.attempt,
            )
            .values(**values)
        )
