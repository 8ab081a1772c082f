"""The alert lifecycle: edge episodes into cases, and the street office's steps on them.

An *episode* is what a gateway raises, updates and clears (its id minted at the edge). A *case*
(an ``alerts`` row) is what the street office works on::

    new -> acknowledged -> dispatched (线下核查: assignee, due time)
        -> confirmed | false_alarm
    confirmed -> rectifying (限期整改: deadline, default 5 days)
    rectifying -> rectifying (recheck failed: 3 more days) -> closed
    false_alarm -> closed

At most one case per (subject, kind) is not closed: a partial unique index
(``uq_alerts_open_subject_kind``) guarantees it on PostgreSQL and SQLite, whatever races
concurrent ingest runs. A new episode on a subject that has such a case attaches to it (and
updates it); only when there is none does a new case start, marked ``recurring`` (回潮) when
the flat had a case closed within :data:`RECURRING_DAYS`.

Every step is written to the audit log (``audit_log``, entity ``alert``) with its comment and
photo ids; edge events are written there too (actor ``gateway:<id>``, via ``ingest``), so the
audit entries of an alert are its timeline. Steps and edge events that receivers should hear of
are enqueued for forwarding in the same transaction (``fleet/channels/outbox.py``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from contract.alerts import AlertKind, Category, Change, EvidenceValue, Subject
from contract.messages import AlertMessage
from fleet.channels.outbox import enqueue
from fleet.models import (
    Alert,
    AlertEpisodeRow,
    AlertPhoto,
    AuditEntry,
    Building,
    Compound,
    Device,
    Entrance,
    Flat,
    Gateway,
    Notification,
)
from fleet.texts import kind_title

RECURRING_DAYS = 90
FLAP_WINDOW = timedelta(minutes=10)
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}
ACTOR_ROLES = frozenset({"officer", "admin"})
PHOTO_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


class Status(StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    CONFIRMED = "confirmed"
    FALSE_ALARM = "false_alarm"
    RECTIFYING = "rectifying"
    CLOSED = "closed"


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    DISPATCH = "dispatch"
    CONFIRM = "confirm"
    FALSE_ALARM = "false_alarm"
    RECTIFY = "rectify"
    RECHECK = "recheck"
    CLOSE = "close"


TRANSITIONS: dict[Action, tuple[frozenset[Status], Status]] = {
    Action.ACKNOWLEDGE: (frozenset({Status.NEW}), Status.ACKNOWLEDGED),
    # Dispatching again re-assigns (another person, another due time).
    Action.DISPATCH: (frozenset({Status.ACKNOWLEDGED, Status.DISPATCHED}), Status.DISPATCHED),
    Action.CONFIRM: (frozenset({Status.DISPATCHED}), Status.CONFIRMED),
    Action.FALSE_ALARM: (frozenset({Status.DISPATCHED}), Status.FALSE_ALARM),
    Action.RECTIFY: (frozenset({Status.CONFIRMED}), Status.RECTIFYING),
    Action.RECHECK: (frozenset({Status.RECTIFYING}), Status.RECTIFYING),
    Action.CLOSE: (frozenset({Status.RECTIFYING, Status.FALSE_ALARM}), Status.CLOSED),
}
COMMENT_REQUIRED = frozenset({Action.FALSE_ALARM, Action.RECHECK, Action.CLOSE})


class LifecycleError(Exception):
    """Base of the refusals; the API maps each to a status code."""


class NotFoundError(LifecycleError):
    pass


class NotAllowedError(LifecycleError):
    pass


class WrongStateError(LifecycleError):
    def __init__(self, action: str, status: str) -> None:
        super().__init__(f"cannot {action} an alert that is {status}")
        self.action = action
        self.status = status


class InvalidInputError(LifecycleError):
    pass


@dataclass(frozen=True, slots=True)
class Person:
    """Who takes a step: name for the audit log, role for the permission check."""

    name: str
    id: int | None
    role: str
    via: str = "api"


@dataclass(frozen=True, slots=True)
class Defaults:
    dispatch_due: timedelta = timedelta(hours=48)
    rectify: timedelta = timedelta(days=5)
    recheck: timedelta = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Photo:
    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StepInput:
    comment: str | None = None
    assignee: str | None = None
    due_at: datetime | None = None
    deadline_at: datetime | None = None
    category: str | None = None
    photos: Sequence[Photo] = ()


# -- site resolution -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    flat_id: int | None
    compound_id: int | None
    subject_key: str


def resolve_site(session: Session, gateway_id: str, subject: Subject) -> Site:
    """Which flat and compound an episode is about, and the key cases are unique by.

    The compound is the gateway's (through its entrance). The flat is the one the device is
    mapped to in the register, else the flat with the subject's unit id in the gateway's
    building. Unmapped subjects stay keyed by gateway, so they never merge across sites.
    """
    row = session.execute(
        sa.select(Entrance.building_id, Building.compound_id)
        .join(Building, Building.id == Entrance.building_id)
        .join(Gateway, Gateway.entrance_id == Entrance.id)
        .where(Gateway.gateway_id == gateway_id)
    ).first()
    building_id, compound_id = (row[0], row[1]) if row is not None else (None, None)
    flat_id: int | None = None
    if compound_id is not None:
        for device_id in (subject.sensor_id, subject.meter_id):
            if device_id is None or flat_id is not None:
                continue
            flat_id = session.scalar(
                sa.select(Device.flat_id).where(
                    Device.compound_id == compound_id, Device.device_id == device_id
                )
            )
    if flat_id is None and building_id is not None and subject.unit_id is not None:
        flat_id = session.scalar(
            sa.select(Flat.id).where(
                Flat.building_id == building_id, Flat.unit_id == subject.unit_id
            )
        )
    if flat_id is not None:
        key = f"flat:{flat_id}"
    elif compound_id is not None:
        key = f"compound:{compound_id}|{subject.key()}"
    else:
        key = f"gw:{gateway_id}|{subject.key()}"
    if len(key) > 255:
        key = key[:190] + "#" + hashlib.sha256(key.encode()).hexdigest()
    return Site(flat_id, compound_id, key)


def flat_label(session: Session, flat_id: int | None) -> str | None:
    """``阳光小区 3号楼 1-201``: how officers name a flat."""
    if flat_id is None:
        return None
    row = session.execute(
        sa.select(Compound.name, Building.name, Flat.unit_id)
        .join(Building, Building.id == Flat.building_id)
        .join(Compound, Compound.id == Building.compound_id)
        .where(Flat.id == flat_id)
    ).first()
    return " ".join(str(x) for x in row) if row is not None else None


def street_office_of(session: Session, compound_id: int | None) -> int | None:
    if compound_id is None:
        return None
    return session.scalar(sa.select(Compound.street_office_id).where(Compound.id == compound_id))


# -- notifications and audit ----------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def alert_payload(
    alert: Alert, *, event: str, seq: int, label: str | None, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The frozen document of one notification (the webhook body, links added at send)."""
    kind = AlertKind(alert.kind)
    return {
        "v": 1,
        "alert_id": alert.alert_id,
        "event": event,
        "seq": seq,
        "kind": alert.kind,
        "category": alert.category,
        "severity": alert.severity,
        "state": alert.state,
        "status": alert.status,
        "recurring": alert.recurring,
        "episodes": alert.episodes,
        "title_zh": kind_title(kind, "zh"),
        "title_en": kind_title(kind, "en"),
        "flat_id": alert.flat_id,
        "compound_id": alert.compound_id,
        "flat_label": label,
        "unit_id": alert.unit_id,
        "building": alert.building,
        "sensor_id": alert.sensor_id,
        "meter_id": alert.meter_id,
        "reader_id": alert.reader_id,
        "gateway_id": alert.gateway_id,
        "raised_at": _iso(alert.raised_at),
        "cleared_at": _iso(alert.cleared_at),
        "assignee": alert.assignee,
        "due_at": _iso(alert.due_at),
        "deadline_at": _iso(alert.deadline_at),
        "evidence": alert.evidence,
        "link_path": f"/alerts/{alert.alert_id}",
        **extra,
    }


def notification_key(alert_id: str, seq: int) -> str:
    """The idempotency key: the alert id for its first notification (what receivers of the
    first webhook version keyed on), then ``<alert id>.<n>``."""
    return alert_id if seq == 1 else f"{alert_id}.{seq}"


def notify(
    session: Session,
    alert: Alert,
    event: str,
    now: datetime,
    *,
    extra: Mapping[str, Any] | None = None,
    tz: str = "Asia/Shanghai",
) -> int:
    """Enqueue ``event`` about ``alert`` for its channels; returns deliveries added."""
    alert.notify_seq += 1
    seq = alert.notify_seq
    payload = alert_payload(
        alert, event=event, seq=seq, label=flat_label(session, alert.flat_id), extra=extra or {}
    )
    return enqueue(
        session,
        key=notification_key(alert.alert_id, seq),
        event=event,
        severity=alert.severity,
        payload=payload,
        alert_id=alert.alert_id,
        street_office_id=street_office_of(session, alert.compound_id),
        order_key=alert.subject_key,
        now=now,
        tz=tz,
    )


def _flapping(session: Session, alert_id: str, event: str, now: datetime) -> bool:
    """True when ``event`` was already notified for this alert within :data:`FLAP_WINDOW`."""
    return (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Notification)
            .where(
                Notification.alert_id == alert_id,
                Notification.event == event,
                Notification.created_at > now - FLAP_WINDOW,
            )
        )
        or 0
    ) > 0


def audit(
    session: Session,
    alert: Alert,
    *,
    actor: str,
    actor_id: int | None,
    via: str,
    action: str,
    at: datetime,
    summary: Mapping[str, Any],
) -> AuditEntry:
    entry = AuditEntry(
        at=at,
        actor=actor,
        actor_id=actor_id,
        via=via,
        action=action[:16],
        entity="alert",
        entity_id=alert.alert_id,
        compound_id=alert.compound_id,
        summary=dict(summary),
    )
    session.add(entry)
    return entry


# -- edge episodes ----------------------------------------------------------------------------


def _json_safe(evidence: Mapping[str, EvidenceValue]) -> dict[str, Any]:
    """NaN/infinity become None: not JSON, and one odd number must not lose an alert."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in evidence.items()
    }


def _insert_ignore(session: Session, model: type[Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` against every unique index (the partial one too)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    return sqlite.insert(model).on_conflict_do_nothing()


def _subject(message: AlertMessage) -> Subject:
    s = message.subject
    return Subject(
        unit_id=s.unit_id,
        building=s.building,
        sensor_id=s.sensor_id,
        meter_id=s.meter_id,
        reader_id=s.reader_id,
    )


def apply_alert_message(
    session: Session, message: AlertMessage, now: datetime, *, tz: str = "Asia/Shanghai"
) -> int:
    """Apply one edge alert message (raise, update or clear) in the caller's transaction.

    Idempotent: a re-delivered or overtaken message changes nothing. Returns the number of
    forwarding deliveries enqueued, so the caller can wake the forwarder.
    """
    edge_state = "cleared" if message.change is Change.CLEARED else "open"
    evidence = _json_safe(message.evidence)
    site: Site | None = None
    for _attempt in range(5):
        episode = session.get(
            AlertEpisodeRow, message.alert_id, with_for_update=True, populate_existing=True
        )
        if episode is not None:
            return _update_episode(
                session,
                episode,
                message=message,
                edge_state=edge_state,
                evidence=evidence,
                now=now,
                tz=tz,
            )
        if site is None:
            site = resolve_site(session, message.gw, _subject(message))
        created = session.execute(
            _insert_ignore(session, Alert)
            .values(
                alert_id=message.alert_id,
                kind=message.kind.value,
                category=message.category.value,
                severity=message.severity.value,
                state=edge_state,
                unit_id=message.subject.unit_id,
                building=message.subject.building,
                sensor_id=message.subject.sensor_id,
                meter_id=message.subject.meter_id,
                reader_id=message.subject.reader_id,
                gateway_id=message.gw,
                raised_at=message.raised_at,
                cleared_at=message.cleared_at,
                evidence=evidence,
                first_received_at=now,
                updated_at=now,
                source_ts=message.ts,
                last_message_id=message.id,
                status=Status.NEW.value,
                subject_key=site.subject_key,
                flat_id=site.flat_id,
                compound_id=site.compound_id,
                recurring=_recently_closed(session, site, now),
                episodes=1,
                rechecks=0,
                notify_seq=0,
            )
            .returning(Alert.alert_id)
        ).first()
        if created is not None:
            session.add(_episode_row(message, message.alert_id, edge_state, now))
            alert = session.get(Alert, message.alert_id, populate_existing=True)
            assert alert is not None
            _edge_audit(session, alert, message, "raised", now)
            return notify(session, alert, "raised", now, tz=tz)
        # Another case holds the key (or this episode was created meanwhile): attach to it.
        alert = session.scalars(
            sa.select(Alert)
            .where(
                Alert.subject_key == site.subject_key,
                Alert.kind == message.kind.value,
                Alert.status != Status.CLOSED.value,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()
        if alert is None:
            continue  # closed in between, or the episode itself exists now: look again
        attached = session.execute(
            _insert_ignore(session, AlertEpisodeRow)
            .values(**_episode_values(message, alert.alert_id, edge_state, now))
            .returning(AlertEpisodeRow.episode_id)
        ).first()
        if attached is None:
            continue  # attached by a concurrent copy of this message: update it next round
        return _attach(
            session,
            alert,
            message=message,
            edge_state=edge_state,
            evidence=evidence,
            now=now,
            tz=tz,
        )
    raise RuntimeError(f"could not place alert episode {message.alert_id}")


def _episode_values(
    message: AlertMessage, alert_id: str, edge_state: str, now: datetime
) -> dict[str, Any]:
    return {
        "episode_id": message.alert_id,
        "alert_id": alert_id,
        "gateway_id": message.gw,
        "severity": message.severity.value,
        "state": edge_state,
        "raised_at": message.raised_at,
        "cleared_at": message.cleared_at,
        "source_ts": message.ts,
        "last_message_id": message.id,
        "first_received_at": now,
    }


def _episode_row(
    message: AlertMessage, alert_id: str, edge_state: str, now: datetime
) -> AlertEpisodeRow:
    return AlertEpisodeRow(**_episode_values(message, alert_id, edge_state, now))


def _recently_closed(session: Session, site: Site, now: datetime) -> bool:
    since = now - timedelta(days=RECURRING_DAYS)
    same = (
        Alert.flat_id == site.flat_id
        if site.flat_id is not None
        else (Alert.subject_key == site.subject_key)
    )
    found = session.scalar(
        sa.select(Alert.alert_id)
        .where(same, Alert.status == Status.CLOSED.value, Alert.closed_at >= since)
        .limit(1)
    )
    return found is not None


def _edge_audit(
    session: Session, alert: Alert, message: AlertMessage, action: str, now: datetime
) -> None:
    audit(
        session,
        alert,
        actor=f"gateway:{message.gw}",
        actor_id=None,
        via="ingest",
        action=action,
        at=now,
        summary={
            "episode_id": message.alert_id,
            "severity": message.severity.value,
            "raised_at": _iso(message.raised_at),
            "cleared_at": _iso(message.cleared_at),
        },
    )


def _attach(
    session: Session,
    alert: Alert,
    *,
    message: AlertMessage,
    edge_state: str,
    evidence: dict[str, Any],
    now: datetime,
    tz: str,
) -> int:
    was_cleared = alert.state == "cleared"
    severity_up = SEVERITY_RANK[message.severity.value] > SEVERITY_RANK.get(alert.severity, 0)
    alert.episodes += 1
    alert.state = edge_state if was_cleared else alert.state
    alert.cleared_at = message.cleared_at if alert.state == "cleared" else None
    alert.evidence = evidence
    alert.source_ts = max(alert.source_ts, message.ts)
    alert.last_message_id = message.id
    alert.updated_at = now
    if severity_up:
        alert.severity = message.severity.value
    _edge_audit(session, alert, message, "reraised", now)
    if was_cleared and not _flapping(session, alert.alert_id, "reraised", now):
        return notify(session, alert, "reraised", now, tz=tz)
    if severity_up:
        return notify(session, alert, "severity", now, tz=tz)
    return 0


def _update_episode(
    session: Session,
    episode: AlertEpisodeRow,
    *,
    message: AlertMessage,
    edge_state: str,
    evidence: dict[str, Any],
    now: datetime,
    tz: str,
) -> int:
    if message.id == episode.last_message_id or message.ts < episode.source_ts:
        return 0  # a re-delivery, or overtaken by a newer state
    if episode.state == "cleared" and edge_state != "cleared":
        return 0  # an episode that ended stays ended; a new one has a new id
    episode.severity = message.severity.value
    episode.state = edge_state
    episode.cleared_at = message.cleared_at
    episode.source_ts = message.ts
    episode.last_message_id = message.id
    alert = session.get(Alert, episode.alert_id, with_for_update=True, populate_existing=True)
    assert alert is not None
    if alert.status == Status.CLOSED:
        return 0  # the case is done; the episode's own row keeps its state
    session.flush()
    still_open = session.scalar(
        sa.select(sa.func.count())
        .select_from(AlertEpisodeRow)
        .where(AlertEpisodeRow.alert_id == alert.alert_id, AlertEpisodeRow.state == "open")
    )
    was_open = alert.state == "open"
    alert.state = "open" if still_open else "cleared"
    alert.cleared_at = message.cleared_at if alert.state == "cleared" else None
    if message.ts >= alert.source_ts:
        alert.evidence = evidence
        alert.source_ts = message.ts
        alert.last_message_id = message.id
    alert.updated_at = now
    severity_up = SEVERITY_RANK[message.severity.value] > SEVERITY_RANK.get(alert.severity, 0)
    if severity_up:
        alert.severity = message.severity.value
    added = 0
    if severity_up:
        _edge_audit(session, alert, message, "severity", now)
        added += notify(session, alert, "severity", now, tz=tz)
    if was_open and alert.state == "cleared":
        _edge_audit(session, alert, message, "cleared", now)
        if not _flapping(session, alert.alert_id, "cleared", now):
            added += notify(session, alert, "cleared", now, tz=tz)
    return added


# -- the street office's steps ---------------------------------------------------------------


def check_photo(photo: Photo, max_bytes: int) -> str:
    """The photo's content type (JPEG or PNG by its magic bytes), or :class:`InvalidInputError`."""
    if not photo.data:
        raise InvalidInputError(f"photo {photo.filename!r} is empty")
    if len(photo.data) > max_bytes:
        raise InvalidInputError(f"photo {photo.filename!r} is larger than {max_bytes} bytes")
    for magic, content_type in PHOTO_TYPES.items():
        if photo.data.startswith(magic):
            return content_type
    raise InvalidInputError(f"photo {photo.filename!r} is not a JPEG or PNG image")


def _store_photos(
    session: Session,
    alert: Alert,
    entry: AuditEntry,
    *,
    photos: Sequence[Photo],
    person: Person,
    now: datetime,
    max_bytes: int,
) -> list[int]:
    rows = []
    for photo in photos:
        content_type = check_photo(photo, max_bytes)
        rows.append(
            AlertPhoto(
                alert_id=alert.alert_id,
                audit_id=entry.id,
                filename=photo.filename[:200] or "photo",
                content_type=content_type,
                size=len(photo.data),
                sha256=hashlib.sha256(photo.data).hexdigest(),
                data=photo.data,
                uploaded_by=person.name,
                uploaded_at=now,
            )
        )
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def _visible(scope: frozenset[int] | None, alert: Alert, session: Session) -> bool:
    if scope is None:
        return True
    compound = alert.compound_id
    if compound is None:
        compound = session.scalar(
            sa.select(Building.compound_id)
            .join(Entrance, Entrance.building_id == Building.id)
            .join(Gateway, Gateway.entrance_id == Entrance.id)
            .where(Gateway.gateway_id == alert.gateway_id)
        )
    return compound is not None and compound in scope


def load_for_step(
    session: Session, alert_id: str, scope: frozenset[int] | None, *, lock: bool = True
) -> Alert:
    alert = session.get(Alert, alert_id, with_for_update=lock)
    if alert is None or not _visible(scope, alert, session):
        raise NotFoundError(alert_id)
    return alert


def transition(
    session: Session,
    alert: Alert,
    action: Action,
    person: Person,
    step: StepInput,
    *,
    now: datetime,
    defaults: Defaults = Defaults(),
    photo_max_bytes: int = 5 * 1024 * 1024,
    tz: str = "Asia/Shanghai",
) -> AuditEntry:
    """Take ``action`` on ``alert`` (already loaded, locked and scope-checked)."""
    if person.role not in ACTOR_ROLES:
        raise NotAllowedError(f"a {person.role} may not change alerts")
    sources, target = TRANSITIONS[action]
    if alert.status not in sources:
        raise WrongStateError(action.value, alert.status)
    comment = (step.comment or "").strip() or None
    if action in COMMENT_REQUIRED and comment is None:
        raise InvalidInputError(f"{action.value} needs a comment")
    before = alert.status
    details: dict[str, Any] = {}
    match action:
        case Action.ACKNOWLEDGE:
            alert.acknowledged_at = now
        case Action.DISPATCH:
            assignee = (step.assignee or "").strip()
            if not assignee:
                raise InvalidInputError("dispatch needs an assignee")
            due = step.due_at or now + defaults.dispatch_due
            if due <= now:
                raise InvalidInputError("the due time must be in the future")
            alert.assignee = assignee[:64]
            alert.due_at = due
            alert.dispatched_at = now
            alert.reminded_at = None
            details = {"assignee": alert.assignee, "due_at": due.isoformat()}
        case Action.CONFIRM:
            if step.category is not None:
                try:
                    alert.category = Category(step.category).value
                except ValueError as exc:
                    raise InvalidInputError(f"unknown hazard category {step.category!r}") from exc
            alert.outcome = "confirmed"
            alert.decided_at = now
            details = {"category": alert.category}
        case Action.FALSE_ALARM:
            alert.outcome = "false_alarm"
            alert.decided_at = now
        case Action.RECTIFY | Action.RECHECK:
            span = defaults.rectify if action is Action.RECTIFY else defaults.recheck
            deadline = step.deadline_at or now + span
            if deadline <= now:
                raise InvalidInputError("the deadline must be in the future")
            alert.deadline_at = deadline
            alert.reminded_at = None
            if action is Action.RECTIFY:
                alert.rectifying_at = now
            else:
                alert.rechecks += 1
            details = {"deadline_at": deadline.isoformat(), "rechecks": alert.rechecks}
        case Action.CLOSE:
            alert.closed_at = now
    alert.status = target.value
    alert.updated_at = now
    entry = audit(
        session,
        alert,
        actor=person.name,
        actor_id=person.id,
        via=person.via,
        action=action.value,
        at=now,
        summary={"from": before, "to": target.value, "comment": comment, **details},
    )
    session.flush()
    photo_ids = _store_photos(
        session,
        alert,
        entry,
        photos=step.photos,
        person=person,
        now=now,
        max_bytes=photo_max_bytes,
    )
    if photo_ids:
        entry.summary = {**entry.summary, "photos": photo_ids}
    notify(session, alert, action.value, now, extra={"comment": comment}, tz=tz)
    return entry


def add_comment(
    session: Session,
    alert: Alert,
    person: Person,
    step: StepInput,
    *,
    now: datetime,
    photo_max_bytes: int = 5 * 1024 * 1024,
) -> AuditEntry:
    """A note (and photos) on the alert's timeline without a change of state. Property
    companies may add these: they are often the ones on site."""
    if person.role not in ACTOR_ROLES | {"property"}:
        raise NotAllowedError(f"a {person.role} may not comment on alerts")
    comment = (step.comment or "").strip()
    if not comment and not step.photos:
        raise InvalidInputError("a comment needs text or a photo")
    entry = audit(
        session,
        alert,
        actor=person.name,
        actor_id=person.id,
        via=person.via,
        action="comment",
        at=now,
        summary={"status": alert.status, "comment": comment or None},
    )
    session.flush()
    photo_ids = _store_photos(
        session,
        alert,
        entry,
        photos=step.photos,
        person=person,
        now=now,
        max_bytes=photo_max_bytes,
    )
    if photo_ids:
        entry.summary = {**entry.summary, "photos": photo_ids}
    return entry


def timeline(session: Session, alert_ids: Sequence[str]) -> list[AuditEntry]:
    """Audit entries of these alerts, oldest first."""
    if not alert_ids:
        return []
    return list(
        session.scalars(
            sa.select(AuditEntry)
            .where(AuditEntry.entity == "alert", AuditEntry.entity_id.in_(list(alert_ids)))
            .order_by(AuditEntry.at, AuditEntry.id)
        )
    )
