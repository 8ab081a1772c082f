"""Apply validated uplink messages to the database, idempotently.

MQTT QoS 1 and the edge outbox deliver at least once, so every write here is keyed by an id
minted at the edge: readings by (gateway, meter, timestamp), swipes and charging events by
message id, alerts by alert id. Applying the same message twice leaves the database as applying
it once did. Gateway liveness follows sessions: a message from an older session (a late last
will, a backlog message) never overrides what a newer session said.

Everything here is synchronous and runs inside one transaction the caller commits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from contract.alerts import Change, EvidenceValue
from contract.messages import (
    AlertMessage,
    Birth,
    CardSwipeEvent,
    ChargingEvent,
    Death,
    Envelope,
    Heartbeat,
    MeterTelemetry,
)
from fleet.models import (
    Alert,
    AlertState,
    Base,
    CardSwipe,
    DeliveryStatus,
    ForwardDelivery,
    Gateway,
    MeterReading,
)
from fleet.models import ChargingEvent as ChargingEventRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one message did that the caller must act on."""

    deliveries_enqueued: int = 0


def insert_ignoring_duplicates(
    session: Session, model: type[Base], index_elements: Sequence[str]
) -> sa.Insert:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for the session's database."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=index_elements)
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing(index_elements=index_elements)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def apply_uplink(
    session: Session,
    message: Envelope,
    *,
    received_at: datetime,
    webhook_urls: Sequence[str] = (),
) -> Applied:
    """Record ``message`` (already validated against its topic) in ``session``."""
    gateway = _lock_gateway(session, message.gw, received_at)
    _update_liveness(gateway, message, received_at)
    match message:
        case MeterTelemetry():
            _store_readings(session, message)
        case CardSwipeEvent():
            _store_swipe(session, message, received_at)
        case ChargingEvent():
            _store_charging(session, message, received_at)
        case AlertMessage():
            return _store_alert(session, message, received_at, webhook_urls)
        case _:
            pass  # birth, death, heartbeat: liveness only
    return Applied()


def _lock_gateway(session: Session, gateway_id: str, now: datetime) -> Gateway:
    """The gateway's row, created on first contact and locked against concurrent ingest."""
    session.execute(
        insert_ignoring_duplicates(session, Gateway, ["gateway_id"]).values(
            gateway_id=gateway_id, online=False, first_seen=now
        )
    )
    return session.scalars(
        sa.select(Gateway).where(Gateway.gateway_id == gateway_id).with_for_update()
    ).one()


def _update_liveness(gateway: Gateway, message: Envelope, now: datetime) -> None:
    # Any message proves the gateway reached the broker; even a stale one updates last_seen.
    if gateway.last_seen is None or now > gateway.last_seen:
        gateway.last_seen = now
    current = gateway.session
    if current is not None and message.session < current:
        if isinstance(message, Death):
            log.info(
                "ignoring death of %s session %d: session %d is newer",
                message.gw,
                message.session,
                current,
            )
        return
    if current is None or message.session > current:
        gateway.session = message.session
        gateway.last_seq = message.seq
    elif gateway.last_seq is None or message.seq > gateway.last_seq:
        gateway.last_seq = message.seq
    if isinstance(message, Death):
        # The will's payload was built when the agent connected, so its ts says nothing about
        # when the connection died: record when the death reached us.
        gateway.online = False
        gateway.last_death_at = now
        gateway.death_reason = message.reason
        return
    # A message of the current (or a newer) session after a death means the agent reconnected.
    gateway.online = True
    if isinstance(message, Birth):
        gateway.last_birth_at = now
        gateway.agent_version = message.agent_version
        gateway.site_id = message.site_id
    elif isinstance(message, Heartbeat):
        gateway.agent_version = message.agent_version


def _store_readings(session: Session, message: MeterTelemetry) -> None:
    rows = [
        {
            "gateway_id": message.gw,
            "message_id": message.id,
            "meter_id": r.meter_id,
            "unit_id": r.unit_id,
            "ts": r.ts,
            "power_w": r.power_w,
            "voltage_v": r.voltage_v,
            "current_a": r.current_a,
            "energy_kwh": r.energy_kwh,
            "power_factor": r.power_factor,
        }
        for r in message.readings
    ]
    stmt = insert_ignoring_duplicates(session, MeterReading, ["gateway_id", "meter_id", "ts"])
    session.execute(stmt, rows)


def _store_swipe(session: Session, message: CardSwipeEvent, now: datetime) -> None:
    session.execute(
        insert_ignoring_duplicates(session, CardSwipe, ["message_id"]).values(
            message_id=message.id,
            gateway_id=message.gw,
            reader_id=message.reader_id,
            card=message.card,
            unit_id=message.unit_id,
            event_ts=message.event_ts,
            received_at=now,
        )
    )


def _store_charging(session: Session, message: ChargingEvent, now: datetime) -> None:
    session.execute(
        insert_ignoring_duplicates(session, ChargingEventRow, ["message_id"]).values(
            message_id=message.id,
            gateway_id=message.gw,
            sensor_id=message.sensor_id,
            unit_id=message.unit_id,
            location=message.location,
            charging=message.charging,
            power_w=message.power_w,
            event_ts=message.event_ts,
            received_at=now,
        )
    )


def _json_safe(evidence: Mapping[str, EvidenceValue]) -> dict[str, Any]:
    """Evidence with NaN/infinity replaced by None: they are not JSON (PostgreSQL refuses them)
    and dropping a whole alert over one odd number would lose the alert."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in evidence.items()
    }


def _store_alert(
    session: Session, message: AlertMessage, now: datetime, webhook_urls: Sequence[str]
) -> Applied:
    state = AlertState.CLEARED if message.change is Change.CLEARED else AlertState.OPEN
    episode = {
        "severity": message.severity.value,
        "state": state.value,
        "raised_at": message.raised_at,
        "cleared_at": message.cleared_at,
        "evidence": _json_safe(message.evidence),
        "source_ts": message.ts,
        "last_message_id": message.id,
    }
    inserted = session.execute(
        insert_ignoring_duplicates(session, Alert, ["alert_id"])
        .values(
            alert_id=message.alert_id,
            kind=message.kind.value,
            category=message.category.value,
            unit_id=message.subject.unit_id,
            building=message.subject.building,
            sensor_id=message.subject.sensor_id,
            meter_id=message.subject.meter_id,
            reader_id=message.subject.reader_id,
            gateway_id=message.gw,
            first_received_at=now,
            updated_at=now,
            **episode,
        )
        .returning(Alert.alert_id)
    ).first()
    if inserted is not None:
        for url in webhook_urls:
            session.execute(
                insert_ignoring_duplicates(session, ForwardDelivery, ["alert_id", "url"]).values(
                    alert_id=message.alert_id,
                    url=url,
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        return Applied(deliveries_enqueued=len(webhook_urls))

    alert = session.scalars(
        sa.select(Alert).where(Alert.alert_id == message.alert_id).with_for_update()
    ).one()
    if message.id == alert.last_message_id or message.ts < alert.source_ts:
        return Applied()  # a re-delivery, or overtaken by a newer state
    if alert.state == AlertState.CLEARED and state is not AlertState.CLEARED:
        return Applied()  # an episode that ended stays ended; a new one has a new id
    for field, value in episode.items():
        setattr(alert, field, value)
    alert.updated_at = now
    return Applied()
