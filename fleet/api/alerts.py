"""``/api/alerts``: alert episodes as the edge raised them, newest first.

Every role reads the alerts of its own compounds: an alert belongs to the compound recorded when
it was raised, else to the one its gateway is mapped to (gateway -> entrance -> building ->
compound); alerts of unmapped gateways are shown to admins only, and an alert outside the
caller's compounds is 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from contract.alerts import AlertKind
from fleet.api.deps import CurrentUser, SessionDep, ensure_compound, scope_filter
from fleet.api.types import TextPath, TextQuery
from fleet.models import Alert, ForwardDelivery
from fleet.queries import alert_deliveries, get_alert
from fleet.sites import alert_compound, compound_of_alert
from fleet.texts import kind_title

router = APIRouter(prefix="/alerts", tags=["alerts"])


class AlertPublic(BaseModel):
    alert_id: str
    kind: AlertKind
    category: str
    severity: str
    state: Literal["open", "cleared"]
    title_zh: str
    title_en: str
    unit_id: str | None
    building: str | None
    sensor_id: str | None
    meter_id: str | None
    reader_id: str | None
    gateway_id: str
    raised_at: datetime
    cleared_at: datetime | None
    evidence: dict[str, Any]
    first_received_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, alert: Alert) -> AlertPublic:
        kind = AlertKind(alert.kind)
        return cls.model_validate(
            {
                **{name: getattr(alert, name) for name in _ROW_FIELDS},
                "kind": kind,
                "title_zh": kind_title(kind, "zh"),
                "title_en": kind_title(kind, "en"),
            }
        )


_ROW_FIELDS = tuple(
    name for name in AlertPublic.model_fields if name not in ("kind", "title_zh", "title_en")
)


class DeliveryPublic(BaseModel):
    """Forwarding to one receiver. The URL is shown without query or credentials: webhook URLs
    often carry their access key there."""

    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, delivery: ForwardDelivery) -> DeliveryPublic:
        parts = urlsplit(delivery.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return cls.model_validate(
            {
                "url": f"{parts.scheme}://{host}{port}{parts.path}",
                "status": delivery.status,
                "attempts": delivery.attempts,
                "last_error": delivery.last_error,
                "next_attempt_at": delivery.next_attempt_at,
                "delivered_at": delivery.delivered_at,
            }
        )


class AlertDetail(AlertPublic):
    deliveries: list[DeliveryPublic]


class AlertsPublic(BaseModel):
    items: list[AlertPublic]
    total: int


@router.get("")
def read_alerts(
    session: SessionDep,
    user: CurrentUser,
    *,
    kind: AlertKind | None = None,
    state: Literal["open", "cleared"] | None = None,
    gateway_id: TextQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AlertsPublic:
    stmt = scope_filter(sa.select(Alert), user, alert_compound())
    if kind is not None:
        stmt = stmt.where(Alert.kind == kind.value)
    if state is not None:
        stmt = stmt.where(Alert.state == state)
    if gateway_id is not None:
        stmt = stmt.where(Alert.gateway_id == gateway_id)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(Alert.raised_at.desc(), Alert.alert_id).limit(limit).offset(offset)
    ).all()
    return AlertsPublic(items=[AlertPublic.of(a) for a in rows], total=total)


@router.get("/{alert_id}")
def read_alert(session: SessionDep, user: CurrentUser, alert_id: TextPath) -> AlertDetail:
    alert = get_alert(session, alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such alert")
    ensure_compound(user, compound_of_alert(session, alert))
    public = AlertPublic.of(alert)
    deliveries = [DeliveryPublic.of(d) for d in alert_deliveries(session, alert_id)]
    return AlertDetail(**public.model_dump(), deliveries=deliveries)
