"""``GET /api/health`` (for load balancers and people, no login) and the health notifications
for the property company (``GET /api/health/notifications``).

``/api/health`` is 200 with ``status: ok`` when the database answers, the workers run and, if
this process runs ingest, its broker connections are up; 503 with ``status: degraded``
otherwise. It shows this process's ingest counters (numbers only, nothing a gateway sent).

Health notifications (a gateway offline through its last will or silence, back online, a device
offline or faulty as reported by its live gateway) are recorded for the property company (物业)
only: the route is for admins and property users, scoped to their compounds, and street office
officers get 403. Forwarding them to channels (WeCom, SMS, ...) comes with the channels work;
until then they are read here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, Field

from fleet.api.deps import Principal, RuntimeDep, SessionDep, gateway_scope_filter, require
from fleet.api.ingest import IngestStatsPublic
from fleet.api.types import Offset
from fleet.models import HealthNotification, Role

router = APIRouter(tags=["health"])

PropertyUser = Annotated[Principal, Depends(require(Role.ADMIN, Role.PROPERTY))]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    mqtt_connected: bool
    ingest_in_process: bool = Field(
        description="False when dedicated `fleet-manager ingest` workers do the ingest."
    )
    workers_running: bool
    ingest: IngestStatsPublic


@router.get("/health")
def read_health(runtime: RuntimeDep, response: Response) -> Health:
    try:
        with runtime.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        database = True
    except sa.exc.SQLAlchemyError:
        database = False
    stats = IngestStatsPublic.model_validate(runtime.ingest_stats.snapshot())
    in_process = runtime.settings.ingest_enabled
    healthy = database and runtime.workers_running and (stats.mqtt_connected or not in_process)
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if healthy else "degraded",
        database=database,
        mqtt_connected=stats.mqtt_connected,
        ingest_in_process=in_process,
        workers_running=runtime.workers_running,
        ingest=stats,
    )


_TEXTS: dict[str, tuple[str, str]] = {
    "gateway_offline": ("网关 {gw} 离线", "Gateway {gw} is offline"),
    "gateway_recovered": ("网关 {gw} 已恢复在线", "Gateway {gw} is back online"),
    "device_offline": (
        "网关 {gw} 下的设备 {dev} 离线",
        "Device {dev} behind gateway {gw} is offline",
    ),
    "device_fault": (
        "网关 {gw} 下的设备 {dev} 故障",
        "Device {dev} behind gateway {gw} reports a fault",
    ),
}


class HealthNotificationPublic(BaseModel):
    id: int
    kind: str = Field(
        description="gateway_offline, gateway_recovered, device_offline, device_fault"
    )
    audience: Literal["property"]
    gateway_id: str
    device_id: str | None
    detail: str | None = Field(description="connection_lost / timeout, or the device's fault")
    text: str
    created_at: datetime


class HealthNotificationsPublic(BaseModel):
    items: list[HealthNotificationPublic]
    total: int


@router.get("/health/notifications")
def read_health_notifications(
    session: SessionDep,
    user: PropertyUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
    lang: Literal["zh", "en"] = "zh",
) -> HealthNotificationsPublic:
    """Newest first, within the caller's compounds."""
    stmt = gateway_scope_filter(sa.select(HealthNotification), user, HealthNotification.gateway_id)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(HealthNotification.created_at.desc(), HealthNotification.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    index = 0 if lang == "zh" else 1
    items = []
    for n in rows:
        template = _TEXTS.get(n.kind, ("{kind}: {gw}", "{kind}: {gw}"))[index]
        items.append(
            HealthNotificationPublic(
                id=n.id,
                kind=n.kind,
                audience="property",
                gateway_id=n.gateway_id,
                device_id=n.device_id,
                detail=n.detail,
                text=template.format(gw=n.gateway_id, dev=n.device_id or "?", kind=n.kind),
                created_at=n.created_at,
            )
        )
    return HealthNotificationsPublic(items=items, total=total)
