"""Webhooks for finished jobs, signed exactly as OpenAI signs its own (Standard Webhooks), so
``openai.OpenAI().webhooks.unwrap(body, headers, secret=...)`` verifies them.

A delivery is written by :func:`record_job_event` in the transaction that makes the job terminal:
it is never lost, and never sent for a change that rolled back. :func:`deliver_due` runs in every
process's reconciler; it claims an attempt with an UPDATE conditioned on the attempt count, so
however many processes run it, each attempt is made by one of them (at least once overall).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Collection, Sequence
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


Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4_IN_LAST_32_BITS = tuple(
    ipaddress.IPv6Network(prefix)
    for prefix in (
        "64:ff9b::/96",  # NAT64, the well-known prefix
        "64:ff9b:1::/48",  # NAT64, local use (read as the usual /96 layout)
        "::ffff:0:0:0/96",  # IPv4-translated
        "::/96",  # IPv4-compatible (also holds :: and ::1, read as 0.0.0.0 and 0.0.0.1)
    )
)


class Refused(Exception):
    """A destination that must not be called; the message says why."""


def ipv4_inside(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host that traffic to ``address`` reaches through a translator or tunnel, if any:
    such an address is only as public as the IPv4 address it carries."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client, already de-obfuscated
    if any(address in network for network in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def is_public(address: Address) -> bool:
    """Globally routable unicast. ``is_global`` alone is not enough: it passes multicast,
    site-local and IPv6 addresses that carry a private IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        if (inner := ipv4_inside(address)) is not None:
            return is_public(inner)
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_link_local
        or address.is_loopback
        or address.is_private
    )


def resolve(host: str) -> list[Address]:
    """Every address ``host`` resolves to, in the resolver's order; an IP literal is itself."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"its host {host!r} does not resolve ({exc})") from exc
    addresses = (ipaddress.ip_address(str(sockaddr[0]).split("%")[0]) for *_, sockaddr in infos)
    return list(dict.fromkeys(addresses))


def vet(host: str, allow_private: bool = False) -> list[Address]:
    """``host``'s addresses, resolved once and each one checked; raises :class:`Refused`.

    Only public addresses pass: otherwise any tenant could have the service POST to the cloud
    metadata endpoint, the database or anything else inside the cluster
    (``FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` lifts this for receivers on a private network).
    """
    addresses = resolve(host)
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise Refused(
                    f"its host {host!r} resolves to {address}, which is not a public address"
                )
    return addresses


DEFAULT_PORTS = {"http": 80, "https": 443}


def blocked_port(url: str, allowed: Collection[int] | None) -> str | None:
    """Why ``url``'s port is not one the deployment lets deliveries out on
    (``FTAAS_WEBHOOK_ALLOWED_PORTS``, which its egress policy mirrors), or None; None allows any."""
    parsed = httpx2.URL(url)
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    if allowed is None or port in allowed:
        return None
    ports = ", ".join(map(str, sorted(allowed)))
    return f"port {port} is not open for webhooks here (allowed: {ports})"


def refusal(url: str) -> str | None:
    """Why a tenant's webhook URL must not be called (see :func:`vet`), or None."""
    try:
        vet(httpx2.URL(url).host)
    except Refused as refused:
        return str(refused)
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
    allow_private = settings.webhook_allow_private_networks
    with ThreadPoolExecutor(max_workers=len(claims), thread_name_prefix="webhook") as pool:
        outcomes = list(pool.map(lambda claim: _attempt(claim, allow_private), claims))
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


def _attempt(claim: Claim, allow_private: bool) -> Outcome:
    """One attempt on a client of its own: connections are pooled by IP address, and one whose
    certificate was verified for one host must not carry a request for another at that IP."""
    with httpx2.Client(timeout=DELIVERY_TIMEOUT, follow_redirects=False) as client:
        return _send(client, claim, allow_private)


def _send(client: httpx2.Client, claim: Claim, allow_private: bool) -> Outcome:
    """POST the payload, signed now (receivers reject timestamps over 5 minutes old).

    The destination is vetted again here, not only when the endpoint was registered (DNS answers
    change), and the POST goes to the addresses vetted: a second lookup could answer otherwise
    (DNS rebinding)."""
    url = httpx2.URL(claim.url)
    try:
        addresses = vet(url.host, allow_private)
    except Refused as refused:
        return Outcome(None, f"Not sent: {refused}.")
    headers = signed_headers(claim.secret, claim.id, claim.payload, int(time.time()))
    try:
        return _post_to_any(client, url, addresses, claim.payload, headers)
    except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:1000])


def _post_to_any(
    client: httpx2.Client,
    url: httpx2.URL,
    addresses: Sequence[Address],
    payload: str,
    headers: dict[str, str],
) -> Outcome:
    """Each address in turn until one takes the connection, as ``socket.create_connection`` goes
    through the addresses it resolves (a host's IPv6 one may be unreachable from here)."""
    *others, last = addresses
    for address in others:
        with contextlib.suppress(httpx2.ConnectError):
            return _post(client, url, address, payload, headers)
    return _post(client, url, last, payload, headers)


def _post(
    client: httpx2.Client, url: httpx2.URL, address: Address, payload: str, headers: dict[str, str]
) -> Outcome:
    """POST to ``url`` at ``address``: the URL names the IP, so nothing resolves the host again,
    while the Host header and TLS (SNI, certificate check) keep the host's name."""
    pinned = url.copy_with(host=str(address))
    headers = headers | {"host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": url.raw_host.decode("ascii")}
    # Streamed and never read: the receiver's answer body is none of our business.
    with client.stream(
        "POST", pinned, content=payload.encode(), headers=headers, extensions=extensions
    ) as r:
        if r.is_success:
            return Outcome(r.status_code, None)
        return Outcome(r.status_code, f"HTTP {r.status_code} {r.reason_phrase}".strip())


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
