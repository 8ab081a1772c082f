"""Reminders, escalation and the scheduled reports: one periodic tick in the app's lifespan.

:func:`tick` takes ``now`` as an argument (tests inject it) and does, in one transaction:

- **escalation**: a high-severity case still ``new`` (nobody acknowledged it) after
  ``FLEET_ESCALATE_AFTER_MIN`` is marked escalated and an ``escalated`` notification goes out;
  once per case;
- **overdue check**: a ``dispatched`` case past its due time gets a ``remind_dispatch``
  notification, repeated every ``FLEET_REMINDER_REPEAT_H`` while it stays overdue;
- **deadline**: a ``rectifying`` case past its deadline gets ``remind_deadline`` (time for the
  re-check), repeated the same way.

Every reminder is also an audit entry (actor ``system``), so it shows on the alert's timeline.
The 14th/29th report run is in :mod:`fleet.reports` (:func:`fleet.reports.report_tick`); the
worker below calls both.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.lifecycle import Status, audit, notify
from fleet.models import Alert
from fleet.reports import report_tick
from fleet.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TickResult:
    escalated: int = 0
    dispatch_reminders: int = 0
    deadline_reminders: int = 0
    reports: int = 0
    deliveries: int = 0


def _system_step(session: Session, alert: Alert, action: str, now: datetime, tz: str) -> int:
    audit(
        session,
        alert,
        actor="system",
        actor_id=None,
        via="reminders",
        action=action,
        at=now,
        summary={
            "status": alert.status,
            "due_at": alert.due_at.isoformat() if alert.due_at else None,
            "deadline_at": alert.deadline_at.isoformat() if alert.deadline_at else None,
        },
    )
    return notify(session, alert, action, now, tz=tz)


def tick(session: Session, now: datetime, settings: Settings) -> TickResult:
    """One round of escalations and reminders at ``now``, in the caller's transaction."""
    result = TickResult()
    tz = settings.display_timezone
    escalate_before = now - timedelta(minutes=settings.escalate_after_min)
    for alert in session.scalars(
        sa.select(Alert)
        .where(
            Alert.status == Status.NEW.value,
            Alert.severity == "high",
            Alert.escalated_at.is_(None),
            Alert.first_received_at <= escalate_before,
        )
        .order_by(Alert.first_received_at)
        .with_for_update(skip_locked=True)
    ):
        alert.escalated_at = now
        result.deliveries += _system_step(session, alert, "escalated", now, tz)
        result.escalated += 1
    repeat_before = now - timedelta(hours=settings.reminder_repeat_h)
    not_recent = sa.or_(Alert.reminded_at.is_(None), Alert.reminded_at <= repeat_before)
    for status, column, action in (
        (Status.DISPATCHED, Alert.due_at, "remind_dispatch"),
        (Status.RECTIFYING, Alert.deadline_at, "remind_deadline"),
    ):
        for alert in session.scalars(
            sa.select(Alert)
            .where(Alert.status == status.value, column <= now, not_recent)
            .order_by(column)
            .with_for_update(skip_locked=True)
        ):
            alert.reminded_at = now
            result.deliveries += _system_step(session, alert, action, now, tz)
            if status is Status.DISPATCHED:
                result.dispatch_reminders += 1
            else:
                result.deadline_reminders += 1
    reports, deliveries = report_tick(session, now, settings)
    result.reports += reports
    result.deliveries += deliveries
    return result


class Reminders:
    """Runs :func:`tick` every ``FLEET_LIFECYCLE_TICK_S`` until cancelled."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        wake_forwarder: asyncio.Event,
        *,
        db: DbThreads,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._wake = wake_forwarder
        self._db = db

    def run_once(self, now: datetime | None = None) -> TickResult:
        with self._sessions() as session, session.begin():
            return tick(session, now or utcnow(), self._settings)

    async def run(self) -> None:
        while True:
            try:
                result = await self._db.run(self.run_once)
                if result.deliveries:
                    self._wake.set()
            except sa.exc.SQLAlchemyError as exc:
                log.error(  # noqa: TRY400 - one line per failed round is enough
                    "reminder tick failed: %s", str(exc).splitlines()[0][:300]
                )
            await asyncio.sleep(self._settings.lifecycle_tick_s)
