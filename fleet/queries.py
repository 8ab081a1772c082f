"""Read-side queries shared by the JSON API and the web pages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fleet.models import Alert, ForwardDelivery, Gateway
from fleet.settings import Settings

# "Never" for a silence limit: while silence cannot be judged, only the stored flag counts
UNJUDGED_S = 1e9


def offline_limit_s(settings: Settings, listening_since: datetime | None, now: datetime) -> float:
    """The silence after which a gateway counts as offline, as this process can judge it.

    Silence means something only once messages have been received without interruption for
    the health grace period (``FLEET_HEALTH_GRACE_S``, by default the offline limit): after a
    restart or a broker outage, every gateway's last message is old because nobody was
    listening. Until then -- and in a process that does not ingest at all -- the stored flag
    decides alone (a death message, or the health sweep of the process that ingests). The
    health sweep, the API, /metrics and every page use this one limit, so they agree.
    """
    grace = (
        settings.gateway_offline_after_s
        if settings.health_grace_s is None
        else settings.health_grace_s
    )
    if listening_since is None or (now - listening_since).total_seconds() < grace:
        return UNJUDGED_S
    return settings.gateway_offline_after_s


def gateway_state(
    online: bool,
    reason: str | None,
    since: datetime | None,
    last_seen: datetime | None,
    *,
    now: datetime,
    offline_after_s: float,
) -> tuple[bool, str | None, datetime | None]:
    """(online, offline_reason, offline_since) of a gateway's stored columns, judged now.

    Online = no death since its last birth, and heard from recently. The last will covers
    crashes and lost connections that the broker notices; the silence limit covers what it
    cannot notice (a half-open connection, a broker restart that lost the will, an agent that
    is connected but stuck). The stored flag is only cleared by the health sweep, so a gateway
    silent for longer than the limit is offline ("timeout", since the limit passed) before
    the sweep has run.
    """
    if not online:
        return False, reason, since
    if last_seen is None:
        return False, "timeout", None
    limit = timedelta(seconds=offline_after_s)
    if now - last_seen > limit:
        return False, "timeout", last_seen + limit
    return True, None, None


def gateway_state_of(
    gateway: Gateway, *, now: datetime, offline_after_s: float
) -> tuple[bool, str | None, datetime | None]:
    """:func:`gateway_state` of a gateway row."""
    return gateway_state(
        gateway.online,
        gateway.offline_reason,
        gateway.offline_since,
        gateway.last_seen,
        now=now,
        offline_after_s=offline_after_s,
    )


def gateway_online(gateway: Gateway, *, now: datetime, offline_after_s: float) -> bool:
    """Whether :func:`gateway_state` says online."""
    return gateway_state_of(gateway, now=now, offline_after_s=offline_after_s)[0]


def online_clause(*, now: datetime, offline_after_s: float) -> sa.ColumnElement[bool]:
    """The online test of :func:`gateway_state` as a SQL condition (counts and filters agree
    with each row)."""
    return sa.and_(
        Gateway.online.is_(True),
        Gateway.last_seen.is_not(None),
        Gateway.last_seen >= now - timedelta(seconds=offline_after_s),
    )


def list_gateways(session: Session) -> Sequence[Gateway]:
    return session.scalars(sa.select(Gateway).order_by(Gateway.gateway_id)).all()


def list_alerts(
    session: Session,
    *,
    kind: str | None = None,
    state: str | None = None,
    gateway_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Alert], int]:
    """Alerts newest first (by when they were raised), and how many match in total."""
    conditions = []
    if kind is not None:
        conditions.append(Alert.kind == kind)
    if state is not None:
        conditions.append(Alert.state == state)
    if gateway_id is not None:
        conditions.append(Alert.gateway_id == gateway_id)
    total = session.scalar(sa.select(sa.func.count()).select_from(Alert).where(*conditions)) or 0
    rows = session.scalars(
        sa.select(Alert)
        .where(*conditions)
        .order_by(Alert.raised_at.desc(), Alert.alert_id)
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, total


def get_alert(session: Session, alert_id: str) -> Alert | None:
    return session.get(Alert, alert_id)


def alert_deliveries(session: Session, alert_id: str) -> Sequence[ForwardDelivery]:
    return session.scalars(
        sa.select(ForwardDelivery)
        .where(ForwardDelivery.alert_id == alert_id)
        .order_by(ForwardDelivery.id)
    ).all()
