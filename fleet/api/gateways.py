"""``/api/gateways``: every gateway that has ever sent a message, and whether it is online."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from fleet.api.deps import CurrentUser, SessionDep, SettingsDep
from fleet.db import utcnow
from fleet.models import Gateway
from fleet.queries import gateway_online, list_gateways

router = APIRouter(prefix="/gateways", tags=["gateways"])


class GatewayPublic(BaseModel):
    gateway_id: str
    site_id: str | None
    online: bool = Field(
        description="False after a death message, or after FLEET_GATEWAY_OFFLINE_AFTER_S of "
        "silence."
    )
    last_seen: datetime | None
    session: int | None
    last_seq: int | None
    agent_version: str | None
    death_reason: str | None = Field(
        description="Reason in the gateway's last death message (kept after it comes back)."
    )
    last_birth_at: datetime | None
    last_death_at: datetime | None
    first_seen: datetime

    @classmethod
    def of(cls, gateway: Gateway, *, now: datetime, offline_after_s: float) -> GatewayPublic:
        return cls(
            gateway_id=gateway.gateway_id,
            site_id=gateway.site_id,
            online=gateway_online(gateway, now=now, offline_after_s=offline_after_s),
            last_seen=gateway.last_seen,
            session=gateway.session,
            last_seq=gateway.last_seq,
            agent_version=gateway.agent_version,
            death_reason=gateway.death_reason,
            last_birth_at=gateway.last_birth_at,
            last_death_at=gateway.last_death_at,
            first_seen=gateway.first_seen,
        )


class GatewaysPublic(BaseModel):
    items: list[GatewayPublic]
    total: int


@router.get("")
def read_gateways(session: SessionDep, settings: SettingsDep, _user: CurrentUser) -> GatewaysPublic:
    now = utcnow()
    items = [
        GatewayPublic.of(g, now=now, offline_after_s=settings.gateway_offline_after_s)
        for g in list_gateways(session)
    ]
    return GatewaysPublic(items=items, total=len(items))


@router.get("/{gateway_id}")
def read_gateway(
    session: SessionDep, settings: SettingsDep, _user: CurrentUser, gateway_id: str
) -> GatewayPublic:
    gateway = session.get(Gateway, gateway_id)
    if gateway is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such gateway")
    return GatewayPublic.of(gateway, now=utcnow(), offline_after_s=settings.gateway_offline_after_s)
