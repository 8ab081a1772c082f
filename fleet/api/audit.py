"""``GET /api/audit``: the audit log, newest first.

Admins read all of it; everyone else reads the entries of their compounds (changes to users and
keys, and to districts and street offices, belong to no compound and are for admins only).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from fleet.api.deps import CurrentUser, SessionDep, scope_filter
from fleet.api.types import IdQuery, Limit, Offset, TextQuery
from fleet.models import AuditEntry

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditEntryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    via: str
    action: str
    entity: str
    entity_id: str | None
    compound_id: int | None
    summary: dict[str, Any]


class AuditPublic(BaseModel):
    items: list[AuditEntryPublic]
    total: int


@router.get("")
def read_audit(
    session: SessionDep,
    user: CurrentUser,
    *,
    entity: TextQuery = None,
    entity_id: TextQuery = None,
    compound_id: IdQuery = None,
    actor: TextQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditPublic:
    stmt = scope_filter(sa.select(AuditEntry), user, AuditEntry.compound_id)
    for column, value in (
        (AuditEntry.entity, entity),
        (AuditEntry.entity_id, entity_id),
        (AuditEntry.compound_id, compound_id),
        (AuditEntry.actor, actor),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)).all()
    return AuditPublic(items=[AuditEntryPublic.model_validate(r) for r in rows], total=total)
