"""``/api/gateways``: every gateway that has ever sent a message, its health and its devices.

For admins, installers and property users (officers: 403). Scoped: a user sees the gateways
mapped (gateway -> entrance -> building -> compound) into their compounds; gateways not mapped
to any entrance yet are seen by admins only. A gateway outside the caller's scope is 403, like
every other scoped object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, Field

from fleet.api.deps import (
    OfflineLimitDep,
    Principal,
    SessionDep,
    ensure_compound,
    require,
    scope_filter,
)
from fleet.api.types import IdQuery, Offset, TextPath
from fleet.db import utcnow
from fleet.health import device_state
from fleet.models import Building, DeviceHealth, Entrance, Gateway, Role
from fleet.queries import gateway_online, gateway_state, gateway_state_of, online_clause
from fleet.sites import compound_of_gateway

router = APIRouter(prefix="/gateways", tags=["gateways"])

MAX_PAGE = 1000

# Gateway health is the business of installers and property companies (and admins); street
# office officers work with hazard alerts and get 403 here.
GatewayUser = Annotated[Principal, Depends(require(Role.ADMIN, Role.INSTALLER, Role.PROPERTY))]


class GatewayPublic(BaseModel):
    gateway_id: str
    site_id: str | None
    entrance_id: int | None
    compound_id: int | None = Field(description="Via the gateway's entrance; null if unmapped.")
    online: bool = Field(
        description="False after a death message (last will or clean stop), or after "
        "FLEET_GATEWAY_OFFLINE_AFTER_S without any message (see offline_reason); the same "
        "test as the web pages, so both always agree."
    )
    offline_reason: str | None = Field(description="'death' or 'timeout' while offline.")
    offline_since: datetime | None
    last_seen: datetime | None
    last_heartbeat_at: datetime | None
    session: int | None
    last_seq: int | None
    seq_gaps: int = Field(description="Messages of the current session missing so far.")
    agent_version: str | None
    death_reason: str | None = Field(
        description="Reason in the death message of the current session, if any."
    )
    last_birth_at: datetime | None
    last_death_at: datetime | None
    first_seen: datetime

    @classmethod
    def of(
        cls, gateway: Gateway, compound_id: int | None, *, now: datetime, offline_after_s: float
    ) -> GatewayPublic:
        online, reason, since = gateway_state_of(gateway, now=now, offline_after_s=offline_after_s)
        return cls(
            gateway_id=gateway.gateway_id,
            site_id=gateway.site_id,
            entrance_id=gateway.entrance_id,
            compound_id=compound_id,
            online=online,
            offline_reason=reason,
            offline_since=since,
            last_seen=gateway.last_seen,
            last_heartbeat_at=gateway.last_heartbeat_at,
            session=gateway.session,
            last_seq=gateway.last_seq,
            seq_gaps=gateway.seq_gaps,
            agent_version=gateway.agent_version,
            death_reason=gateway.death_reason,
            last_birth_at=gateway.last_birth_at,
            last_death_at=gateway.last_death_at,
            first_seen=gateway.first_seen,
        )


class GatewaysPublic(BaseModel):
    items: list[GatewayPublic]
    total: int = Field(description="How many gateways match the filters (all pages).")
    limit: int
    offset: int
    next_after: str | None = Field(
        description="Pass as ?after= for the next page (keyset paging: stable while gateways "
        "are added); null on the last page."
    )


class DevicePublic(BaseModel):
    device_id: str
    kind: str | None
    unit_id: str | None
    location: str | None
    state: str = Field(
        description="ok, fault, offline (reported by a live gateway) or unknown (the gateway "
        "is offline, so nobody can tell; not a device fault)."
    )
    fault: str | None
    device_last_seen: datetime | None
    reported_at: datetime | None
    counters: dict[str, Any]


_LIST_FIELDS = tuple(name for name in GatewayPublic.model_fields if name != "compound_id")


@router.get("", response_model=GatewaysPublic)
def read_gateways(
    *,
    session: SessionDep,
    user: GatewayUser,
    offline_after_s: OfflineLimitDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Offset = 0,
    online: bool | None = None,
    compound_id: IdQuery = None,
    after: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
) -> Response:
    """Gateways ordered by id, a page at a time (``limit`` with ``offset``, or with ``after``
    = the previous page's ``next_after``); filter by ``online`` and ``compound_id``.

    The fleet's busiest read: plain columns instead of ORM objects, and the page serialised
    once (the values come from the database, already of the declared types)."""
    if compound_id is not None:
        ensure_compound(user, compound_id)
    columns = [Gateway.__table__.c[name] for name in _LIST_FIELDS]
    stmt = scope_filter(
        sa.select(*columns, Building.compound_id)
        .outerjoin(Entrance, Entrance.id == Gateway.entrance_id)
        .outerjoin(Building, Building.id == Entrance.building_id),
        user,
        Building.compound_id,
    )
    now = utcnow()
    if online is not None:
        clause = online_clause(now=now, offline_after_s=offline_after_s)
        stmt = stmt.where(clause if online else sa.not_(clause))
    if compound_id is not None:
        stmt = stmt.where(Building.compound_id == compound_id)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    if after is not None:
        stmt = stmt.where(Gateway.gateway_id > after)
    rows = session.execute(stmt.order_by(Gateway.gateway_id).limit(limit + 1).offset(offset)).all()
    more = len(rows) > limit
    items = []
    for row in rows[:limit]:
        fields = dict(row._mapping)
        fields["online"], fields["offline_reason"], fields["offline_since"] = gateway_state(
            fields["online"],
            fields["offline_reason"],
            fields["offline_since"],
            fields["last_seen"],
            now=now,
            offline_after_s=offline_after_s,
        )
        items.append(GatewayPublic.model_construct(**fields))
    page = GatewaysPublic.model_construct(
        items=items,
        total=total,
        limit=limit,
        offset=offset,
        next_after=items[-1].gateway_id if more and items else None,
    )
    return Response(content=page.model_dump_json(), media_type="application/json")


def _visible_gateway(session: SessionDep, user: GatewayUser, gateway_id: TextPath) -> Gateway:
    gateway = session.get(Gateway, gateway_id)
    if gateway is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such gateway")
    ensure_compound(user, compound_of_gateway(session, gateway_id))
    return gateway


@router.get("/{gateway_id}")
def read_gateway(
    session: SessionDep, user: GatewayUser, offline_after_s: OfflineLimitDep, gateway_id: TextPath
) -> GatewayPublic:
    gateway = _visible_gateway(session, user, gateway_id)
    return GatewayPublic.of(
        gateway,
        compound_of_gateway(session, gateway_id),
        now=utcnow(),
        offline_after_s=offline_after_s,
    )


@router.get("/{gateway_id}/devices")
def read_gateway_devices(
    session: SessionDep, user: GatewayUser, offline_after_s: OfflineLimitDep, gateway_id: TextPath
) -> list[DevicePublic]:
    """The devices behind a gateway as it last reported them (birth and heartbeats)."""
    gateway = _visible_gateway(session, user, gateway_id)
    live = gateway_online(gateway, now=utcnow(), offline_after_s=offline_after_s)
    rows = session.scalars(
        sa.select(DeviceHealth)
        .where(DeviceHealth.gateway_id == gateway_id)
        .order_by(DeviceHealth.device_id)
    ).all()
    return [
        DevicePublic(
            device_id=d.device_id,
            kind=d.kind,
            unit_id=d.unit_id,
            location=d.location,
            state=device_state(gateway_online=live, online=d.online, fault=d.fault),
            fault=d.fault,
            device_last_seen=d.device_last_seen,
            reported_at=d.reported_at,
            counters=d.counters,
        )
        for d in rows
    ]
