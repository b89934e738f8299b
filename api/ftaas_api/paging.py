"""Cursor pagination in OpenAI's shape: ``after=<id>``, ``limit``, ``has_more``, first/last id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from ftaas.types import Page
from ftaas_api.errors import APIError

W = TypeVar("W")


def paginate(
    session: Session,
    entity: Any,
    scope: Sequence[ColumnElement[bool]],
    wire: Callable[[Any], W],
    after: str | None,
    limit: int,
    ascending: bool = False,
) -> Page[W]:
    """Rows of ``entity`` within ``scope``, ordered by ``seq``, starting after the row ``after``."""
    query = select(entity).where(*scope)
    if after:
        cursor = session.scalar(select(entity.seq).where(entity.id == after, *scope))
        if cursor is None:
            raise APIError(400, f"Unknown cursor: no object with id '{after}'.", param="after")
        query = query.where(entity.seq > cursor if ascending else entity.seq < cursor)
    order = entity.seq.asc() if ascending else entity.seq.desc()
    rows = session.scalars(query.order_by(order).limit(limit + 1)).all()
    page = rows[:limit]
    return Page[W](
        data=[wire(row) for row in page],
        has_more=len(rows) > limit,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )
