"""``/v1/webhooks``: a tenant's endpoints for job events, and each endpoint's delivery log."""

from __future__ import annotations

import math
from typing import Annotated

import httpx2
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from ftaas.types import Page, WebhookDelivery, WebhookEndpoint, WebhookEndpointDeleted
from ftaas_api.deps import DB, Config, TenantId
from ftaas_api.errors import APIError, not_found
from ftaas_api.paging import paginate
from ftaas_core import models
from ftaas_core.ids import new_id
from ftaas_core.models import now
from ftaas_core.webhooks import EVENT_TYPES, EventType, blocked_port, new_secret, refusal

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

Events = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=2048)]
    events: Events | None = None

    @field_validator("url")
    @classmethod
    def http_url(cls, value: str) -> str:
        """Only an absolute http(s) URL that the delivering HTTP client can parse."""
        try:
            url = httpx2.URL(value)
        except httpx2.InvalidURL as exc:
            raise ValueError(f"not a valid URL ({exc})") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value


def endpoint_wire(row: models.WebhookEndpoint, secret: str | None = None) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id, created_at=row.created_at, url=row.url, events=row.event_types, secret=secret
    )


def delivery_wire(row: models.WebhookDelivery) -> WebhookDelivery:
    pending = row.status == "pending"
    return WebhookDelivery(
        id=row.id,
        type=row.type,
        job_id=row.job_id,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        next_attempt_at=math.ceil(row.next_attempt_at) if pending else None,
    )


def _owned_endpoint(session: Session, tenant: str, endpoint_id: str) -> models.WebhookEndpoint:
    row = session.scalar(
        select(models.WebhookEndpoint).where(
            models.WebhookEndpoint.id == endpoint_id,
            models.WebhookEndpoint.tenant_id == tenant,
            models.WebhookEndpoint.disabled_at.is_(None),
        )
    )
    if row is None:
        raise not_found("webhook endpoint", endpoint_id)
    return row


@router.post("")
def create_webhook(
    body: WebhookCreate, tenant: TenantId, db: DB, config: Config
) -> WebhookEndpoint:
    """The answer is the only time the signing secret is shown."""
    reason = blocked_port(body.url, config.webhook_allowed_ports)
    if not (reason or config.webhook_allow_private_networks):
        reason = refusal(body.url)
    if reason:
        raise APIError(
            400, f"Webhook URL refused: {reason}.", param="url", code="invalid_webhook_url"
        )
    events = list(dict.fromkeys(body.events)) if body.events else list(EVENT_TYPES)
    row = models.WebhookEndpoint(
        id=new_id("whep"), tenant_id=tenant, url=body.url, secret=new_secret(), event_types=events
    )
    with db.session() as session:
        session.add(row)
    return endpoint_wire(row, secret=row.secret)


@router.get("")
def list_webhooks(
    tenant: TenantId,
    db: DB,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[WebhookEndpoint]:
    scope = [
        models.WebhookEndpoint.tenant_id == tenant,
        models.WebhookEndpoint.disabled_at.is_(None),
    ]
    with db.session() as session:
        return paginate(session, models.WebhookEndpoint, scope, endpoint_wire, after, limit)


@router.delete("/{endpoint_id}")
def delete_webhook(endpoint_id: str, tenant: TenantId, db: DB) -> WebhookEndpointDeleted:
    """Disabled rather than removed: deliveries still pending fail instead of being sent."""
    with db.session() as session:
        _owned_endpoint(session, tenant, endpoint_id).disabled_at = now()
    return WebhookEndpointDeleted(id=endpoint_id, deleted=True)


@router.get("/{endpoint_id}/deliveries")
def list_deliveries(
    endpoint_id: str,
    tenant: TenantId,
    db: DB,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[WebhookDelivery]:
    """Newest first, each with its attempts and the receiver's last answer."""
    with db.session() as session:
        _owned_endpoint(session, tenant, endpoint_id)
        scope = [models.WebhookDelivery.endpoint_id == endpoint_id]
        return paginate(session, models.WebhookDelivery, scope, delivery_wire, after, limit)
