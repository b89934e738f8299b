"""Job events: the timeline a user reads with ``GET /v1/fine_tuning/jobs/{id}/events``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ftaas_core.ids import new_id
from ftaas_core.models import JobEvent


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(
            id=new_id("ftevent"), job_id=job_id, level=level, type=type, message=message, data=data
        )
    )
