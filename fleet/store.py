"""Apply validated uplink messages to the database, idempotently, a batch at a time.

MQTT QoS 1 and the edge outbox deliver at least once, so every message is keyed by the id
minted at the edge: :func:`apply_batch` first records the batch's ids in ``uplink_messages``
(``INSERT ... ON CONFLICT DO NOTHING RETURNING``) and applies only the ones that were new, so a
redelivered message of any kind changes nothing. The rows themselves keep their natural keys
too (readings by gateway/meter/timestamp, swipes and charging events by message id, alerts by
alert id), as a second line of defence.

Gateway liveness follows sessions and does not depend on the order messages arrive in (several
ingest workers share the stream, so one gateway's messages may be applied out of order): a
death ends its session for good (``death_session``), a message of an older session never
overrides a newer one, and any message of a session newer than the last death proves the
gateway is up. Sequence numbers are tracked per session in ``gateway_sessions``: the agent
numbers every message of a session from 1 and mints its last will just before each birth, so a
birth accounts for two numbers and a delivered will for none; ``max_seq - received`` is the
number of messages missing so far (a late backlog message fills its gap).

Everything here is synchronous and runs inside one transaction the caller commits. Rows of the
batch's gateways are locked (in gateway id order, so two workers cannot deadlock) for the rest
of the transaction, which serialises everything done per gateway.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from contract.alerts import EvidenceValue
from contract.messages import (
    AlertMessage,
    Birth,
    CardSwipeEvent,
    ChargingEvent,
    ConfigState,
    Death,
    DeviceStatus,
    Envelope,
    Heartbeat,
    MeterTelemetry,
)
from fleet.desired import record_config_state
from fleet.lifecycle import apply_alert_message
from fleet.models import (
    Base,
    CardSwipe,
    DeviceHealth,
    Gateway,
    GatewayHeartbeat,
    GatewaySession,
    HealthNotification,
    MeterReading,
    UplinkMessage,
)
from fleet.models import ChargingEvent as ChargingEventRow

log = logging.getLogger(__name__)

PROPERTY = "property"  # the only audience of health notifications (never the street office)


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one message did that the caller must act on."""

    deliveries_enqueued: int = 0


@dataclass(frozen=True, slots=True)
class Received:
    """A validated message and when ingest received it."""

    message: Envelope
    received_at: datetime


@dataclass(slots=True)
class BatchOutcome:
    """What :func:`apply_batch` did: new messages by type, duplicates skipped, side effects."""

    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    deliveries_enqueued: int = 0
    notifications: int = 0


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


def _upsert(
    session: Session,
    model: type[Base],
    index_elements: Sequence[str],
    set_: Callable[[Any, Any], Mapping[str, Any]],
) -> sa.Insert:
    """``INSERT ... ON CONFLICT DO UPDATE SET set_(table, excluded)``."""
    dialect = session.get_bind().dialect.name
    table = model.__table__
    if dialect == "postgresql":
        pg = postgresql.insert(model)
        return pg.on_conflict_do_update(
            index_elements=index_elements, set_=dict(set_(table.c, pg.excluded))
        )
    if dialect == "sqlite":
        lite = sqlite.insert(model)
        return lite.on_conflict_do_update(
            index_elements=index_elements, set_=dict(set_(table.c, lite.excluded))
        )
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def _bulk_insert(
    session: Session,
    model: type[Base],
    rows: Sequence[Mapping[str, Any]],
    conflict: Sequence[str],
    *,
    pg_on_conflict: str = "DO NOTHING",
    set_: Callable[[Any, Any], Mapping[str, Any]] | None = None,
    returning: Sequence[str] = (),
) -> Sequence[sa.Row[Any]]:
    """Insert ``rows`` (all with the same keys) ``ON CONFLICT (conflict) ...``, returning the
    ``returning`` columns of the rows inserted or updated.

    On PostgreSQL this is one ``INSERT ... SELECT * FROM unnest(array, array, ...)`` with one
    array parameter per column: a constant statement whatever the row count, so the client
    neither builds nor parses a statement with thousands of placeholders, and the server plans
    it once (measured: several times less CPU than executemany for ingest batches). Elsewhere
    (SQLite) it is an executemany of the dialect's ``INSERT ... ON CONFLICT`` (``set_`` builds
    its ``DO UPDATE`` clause from the table's and the excluded columns).
    """
    if not rows:
        return []
    table = model.__table__
    assert isinstance(table, sa.Table)
    if session.get_bind().dialect.name == "postgresql":
        columns = list(rows[0])
        dialect = session.get_bind().dialect
        casts = ", ".join(
            f"CAST(:c{i} AS {table.c[c].type.compile(dialect=dialect)}[])"
            for i, c in enumerate(columns)
        )
        # Identifiers come from the model's own metadata; every value is a bound parameter.
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({casts}) "  # noqa: S608
            f"ON CONFLICT ({', '.join(conflict)}) {pg_on_conflict}"
        )
        if returning:
            sql += f" RETURNING {', '.join(returning)}"
        params = {f"c{i}": [r[c] for r in rows] for i, c in enumerate(columns)}
        result = session.execute(sa.text(sql), params)
        return result.all() if returning else []
    if set_ is None:
        stmt = insert_ignoring_duplicates(session, model, conflict)
    else:
        stmt = _upsert(session, model, conflict, set_)
    if returning:
        return session.execute(stmt.returning(*(table.c[c] for c in returning)), list(rows)).all()
    session.execute(stmt, list(rows))
    return []


def _greatest(session: Session, *values: Any) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return sa.func.max(*values)  # SQLite's multi-argument max() is a scalar
    return sa.func.greatest(*values)


def apply_uplink(
    session: Session,
    message: Envelope,
    *,
    received_at: datetime,
    webhook_urls: Sequence[str] = (),
) -> Applied:
    """Record one ``message`` (already validated against its topic) in ``session``."""
    outcome = apply_batch(session, [Received(message, received_at)], webhook_urls=webhook_urls)
    return Applied(deliveries_enqueued=outcome.deliveries_enqueued)


def message_kind(message: Envelope) -> str:
    """The message's ``type`` (every uplink model declares one)."""
    return str(getattr(message, "type", "unknown"))


def apply_batch(
    session: Session, batch: Sequence[Received], *, webhook_urls: Sequence[str] = ()
) -> BatchOutcome:
    """Record every message of ``batch`` that was not recorded before, in ``session``."""
    outcome = BatchOutcome()
    unique: dict[str, Received] = {}
    for item in batch:
        unique.setdefault(item.message.id, item)
    outcome.duplicates = len(batch) - len(unique)
    if not unique:
        return outcome
    new_ids = {
        row[0]
        for row in _bulk_insert(
            session,
            UplinkMessage,
            [
                {
                    "message_id": r.message.id,
                    "gateway_id": r.message.gw,
                    "session": r.message.session,
                    "seq": r.message.seq,
                    "received_at": r.received_at,
                }
                for r in unique.values()
            ],
            ["message_id"],
            returning=["message_id"],
        )
    }
    fresh = [r for r in unique.values() if r.message.id in new_ids]
    outcome.duplicates += len(unique) - len(fresh)
    if not fresh:
        return outcome

    gateways = _lock_gateways(session, fresh)
    notes: dict[str, dict[str, Any]] = {}
    sessions: dict[tuple[str, int], list[Any]] = {}
    readings: list[dict[str, Any]] = []
    swipes: list[dict[str, Any]] = []
    charging: list[dict[str, Any]] = []
    births: list[Received] = []
    heartbeats: dict[str, list[Received]] = {}
    history: list[dict[str, Any]] = []
    for item in fresh:
        message, now = item.message, item.received_at
        outcome.stored[message_kind(message)] += 1
        _update_liveness(gateways[message.gw], message, now, notes)
        _count_seq(sessions, message, now)
        match message:
            case MeterTelemetry():
                readings.extend(_reading_rows(message))
            case CardSwipeEvent():
                swipes.append(_swipe_row(message, now))
            case ChargingEvent():
                charging.append(_charging_row(message, now))
            case Birth():
                births.append(item)
            case Heartbeat():
                history.append(_heartbeat_row(message))
                heartbeats.setdefault(message.gw, []).append(item)
            case Death():
                pass  # liveness only
            case _:
                applied = _apply_other(session, message, now, webhook_urls)
                outcome.deliveries_enqueued += applied.deliveries_enqueued

    _store_sessions(session, gateways, sessions)
    _bulk_insert(session, MeterReading, readings, ["gateway_id", "meter_id", "ts"])
    _bulk_insert(session, GatewayHeartbeat, history, ["gateway_id", "ts"])
    if swipes:
        session.execute(insert_ignoring_duplicates(session, CardSwipe, ["message_id"]), swipes)
    if charging:
        session.execute(
            insert_ignoring_duplicates(session, ChargingEventRow, ["message_id"]), charging
        )
    if births:
        _store_birth_devices(session, births)
    if heartbeats:
        _store_device_health(session, gateways, heartbeats, notes)
    if notes:
        session.execute(
            insert_ignoring_duplicates(session, HealthNotification, ["key"]), list(notes.values())
        )
        outcome.notifications = len(notes)
    return outcome


def _apply_other(
    session: Session, message: Envelope, now: datetime, webhook_urls: Sequence[str]
) -> Applied:
    """Kinds applied one message at a time (rare, with more logic than a row insert)."""
    match message:
        case AlertMessage():
            return _store_alert(session, message, now, webhook_urls)
        case ConfigState():
            record_config_state(session, message, now)  # desired vs applied (fleet/desired.py)
            return Applied()
        case _:
            return Applied()


def _lock_gateways(session: Session, batch: Sequence[Received]) -> dict[str, Gateway]:
    """The batch's gateway rows, created on first contact and locked against other workers."""
    first_seen: dict[str, datetime] = {}
    for item in batch:
        first_seen.setdefault(item.message.gw, item.received_at)
    ids = sorted(first_seen)
    _bulk_insert(
        session,
        Gateway,
        [
            {"gateway_id": gw, "online": False, "first_seen": first_seen[gw], "seq_gaps": 0}
            for gw in ids
        ],
        ["gateway_id"],
    )
    rows = session.scalars(
        sa.select(Gateway)
        .where(Gateway.gateway_id.in_(ids))
        .order_by(Gateway.gateway_id)
        .with_for_update()
    ).all()
    return {g.gateway_id: g for g in rows}


def _note(
    notes: dict[str, dict[str, Any]],
    key: str,
    kind: str,
    gateway_id: str,
    now: datetime,
    *,
    device_id: str | None = None,
    detail: str | None = None,
) -> None:
    notes.setdefault(
        key,
        {
            "key": key[:200],
            "kind": kind,
            "audience": PROPERTY,
            "gateway_id": gateway_id,
            "device_id": device_id,
            "detail": detail[:200] if detail else None,
            "created_at": now,
        },
    )


def gateway_offline_key(gateway_id: str, session: int | None) -> str:
    """One gateway-offline notification per session, whether a will or silence reported it."""
    return f"gateway_offline:{gateway_id}:{session}"


def _update_liveness(
    gateway: Gateway, message: Envelope, now: datetime, notes: dict[str, dict[str, Any]]
) -> None:
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
        gateway.seq_gaps = 0
    elif gateway.last_seq is None or message.seq > gateway.last_seq:
        gateway.last_seq = message.seq
    if isinstance(message, Death):
        # The will's payload was built when the agent connected, so its ts says nothing about
        # when the connection died: record when the death reached us.
        was_online = gateway.online
        gateway.online = False
        gateway.death_session = max(gateway.death_session or 0, message.session)
        gateway.last_death_at = now
        gateway.death_reason = message.reason
        if was_online or gateway.offline_reason != "death":
            gateway.offline_reason = "death"
            gateway.offline_since = now
        if was_online and message.reason == "connection_lost":
            _note(
                notes,
                gateway_offline_key(message.gw, message.session),
                "gateway_offline",
                message.gw,
                now,
                detail="connection_lost",
            )
        return
    if gateway.death_session is not None and message.session <= gateway.death_session:
        return  # a late message of a session that has already ended
    # A message of a live session: the agent is up (again).
    if not gateway.online:
        if gateway.offline_reason is not None and gateway.death_reason != "clean_stop":
            _note(
                notes,
                f"gateway_recovered:{message.gw}:{message.session}",
                "gateway_recovered",
                message.gw,
                now,
            )
        gateway.online = True
        gateway.offline_reason = None
        gateway.offline_since = None
    if isinstance(message, Birth):
        gateway.last_birth_at = now
        gateway.agent_version = message.agent_version
        gateway.site_id = message.site_id
        gateway.death_reason = None
    elif isinstance(message, Heartbeat):
        gateway.agent_version = message.agent_version
        if not message.historical:
            gateway.last_heartbeat_at = now


def _count_seq(
    sessions: dict[tuple[str, int], list[Any]], message: Envelope, now: datetime
) -> None:
    if isinstance(message, Death) and message.reason == "connection_lost":
        weight = 0  # the will: its number was accounted for by the birth that followed it
    elif isinstance(message, Birth):
        weight = 2  # itself and the will minted just before it
    else:
        weight = 1
    key = (message.gw, message.session)
    acc = sessions.get(key)
    if acc is None:
        sessions[key] = [message.seq, weight, now, now]
    else:
        acc[0] = max(acc[0], message.seq)
        acc[1] += weight
        acc[3] = now


def _store_sessions(
    session: Session, gateways: Mapping[str, Gateway], sessions: Mapping[tuple[str, int], list[Any]]
) -> None:
    rows = [
        {
            "gateway_id": gw,
            "session": number,
            "max_seq": acc[0],
            "received": acc[1],
            "first_received_at": acc[2],
            "last_received_at": acc[3],
        }
        for (gw, number), acc in sorted(sessions.items())
    ]
    updated = _bulk_insert(
        session,
        GatewaySession,
        rows,
        ["gateway_id", "session"],
        pg_on_conflict="DO UPDATE SET "
        "max_seq = GREATEST(gateway_sessions.max_seq, EXCLUDED.max_seq), "
        "received = gateway_sessions.received + EXCLUDED.received, "
        "last_received_at = GREATEST(gateway_sessions.last_received_at, "
        "EXCLUDED.last_received_at)",
        set_=lambda t, x: {
            "max_seq": _greatest(session, t.max_seq, x.max_seq),
            "received": t.received + x.received,
            "last_received_at": _greatest(session, t.last_received_at, x.last_received_at),
        },
        returning=["gateway_id", "session", "max_seq", "received"],
    )
    for row in updated:
        gw, number, max_seq, received = tuple(row)
        gateway = gateways[gw]
        if gateway.session == number:
            gateway.seq_gaps = max(0, max_seq - received)


def _reading_rows(message: MeterTelemetry) -> list[dict[str, Any]]:
    return [
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


def _first(value: int | None, otherwise: int) -> int:
    return otherwise if value is None else value


def _heartbeat_row(message: Heartbeat) -> dict[str, Any]:
    """The heartbeat as a row of the gateway's history (every heartbeat, backlog ones too:
    their ``ts`` places them in the chart)."""
    devices = message.devices.values()
    return {
        "gateway_id": message.gw,
        "ts": message.ts,
        "session": message.session,
        "outbox_depth": message.outbox_depth,
        "outbox_oldest_age_s": message.outbox_oldest_age_s,
        "load_1m": message.load_avg[0] if message.load_avg else None,
        "mem_available_bytes": message.mem_available_bytes,
        "mem_rss_bytes": message.mem_rss_bytes,
        "disk_free_bytes": message.disk_free_bytes,
        "cpu_temp_c": message.cpu_temp_c,
        # a partial heartbeat (too many devices for one message) counts them all for us
        "devices_total": _first(message.devices_total, len(message.devices)),
        "devices_online": _first(message.devices_online, sum(1 for d in devices if d.online)),
        "devices_faulty": _first(message.devices_faulty, sum(1 for d in devices if d.fault)),
        "config_version": message.config_version,
    }


def _swipe_row(message: CardSwipeEvent, now: datetime) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "gateway_id": message.gw,
        "reader_id": message.reader_id,
        "card": message.card,
        "unit_id": message.unit_id,
        "event_ts": message.event_ts,
        "received_at": now,
    }


def _charging_row(message: ChargingEvent, now: datetime) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "gateway_id": message.gw,
        "sensor_id": message.sensor_id,
        "unit_id": message.unit_id,
        "location": message.location,
        "charging": message.charging,
        "power_w": message.power_w,
        "event_ts": message.event_ts,
        "received_at": now,
    }


def _store_birth_devices(session: Session, births: Iterable[Received]) -> None:
    """What each device is, as the birth lists it (its state comes with heartbeats)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for item in births:
        assert isinstance(item.message, Birth)
        for device in item.message.devices:
            rows[(item.message.gw, device.device_id)] = {
                "gateway_id": item.message.gw,
                "device_id": device.device_id,
                "kind": device.kind,
                "unit_id": device.unit_id,
                "location": device.location,
                "counters": {},
            }
    if rows:
        stmt = _upsert(
            session,
            DeviceHealth,
            ["gateway_id", "device_id"],
            lambda _t, x: {"kind": x.kind, "unit_id": x.unit_id, "location": x.location},
        )
        session.execute(stmt, [rows[k] for k in sorted(rows)])


def _store_device_health(
    session: Session,
    gateways: Mapping[str, Gateway],
    heartbeats: Mapping[str, Sequence[Received]],
    notes: dict[str, dict[str, Any]],
) -> None:
    """Each device's state from the newest heartbeat of the batch that lists it (a partial
    heartbeat lists only some devices, see docs/protocol.md); a live gateway's report of a
    device going offline or faulty becomes one notification for the property company."""
    existing = {
        (d.gateway_id, d.device_id): d
        for d in session.scalars(
            sa.select(DeviceHealth).where(DeviceHealth.gateway_id.in_(sorted(heartbeats)))
        )
    }
    for gw in sorted(heartbeats):
        newest: dict[str, tuple[DeviceStatus, Received]] = {}
        for item in sorted(heartbeats[gw], key=lambda r: r.message.ts):
            assert isinstance(item.message, Heartbeat)
            for device_id, status in item.message.devices.items():
                newest[device_id] = (status, item)
        gateway = gateways[gw]
        for device_id, (status, item) in sorted(newest.items()):
            message = item.message
            assert isinstance(message, Heartbeat)
            live = gateway.online and not message.historical and gateway.session == message.session
            row = existing.get((message.gw, device_id))
            if row is None:
                row = DeviceHealth(gateway_id=message.gw, device_id=device_id, counters={})
                session.add(row)
                previous_online, previous_fault = None, None
            elif row.reported_at is not None and message.ts <= row.reported_at:
                continue  # an older report than the one shown
            else:
                previous_online, previous_fault = row.online, row.fault
            row.online = status.online
            row.fault = status.fault[:200] if status.fault else None
            row.device_last_seen = status.last_seen
            row.reported_at = message.ts
            row.counters = dict(status.counters)
            if not live:
                continue
            if not status.online and previous_online is not False:
                _note(
                    notes,
                    f"device_offline:{message.gw}:{device_id}:{message.id}",
                    "device_offline",
                    message.gw,
                    item.received_at,
                    device_id=device_id,
                    detail=status.fault,
                )
            elif status.fault and status.fault != previous_fault:
                _note(
                    notes,
                    f"device_fault:{message.gw}:{device_id}:{message.id}",
                    "device_fault",
                    message.gw,
                    item.received_at,
                    device_id=device_id,
                    detail=status.fault,
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
    """Episodes become lifecycle cases (fleet/lifecycle.py): an update or clear changes the
    case, a new episode on a subject with an open case attaches to it, and the notifications
    for the forwarding channels are enqueued in this transaction. ``webhook_urls`` are
    channels in the database now (synced at startup), so they are not used here."""
    del webhook_urls
    return Applied(deliveries_enqueued=apply_alert_message(session, message, now))
