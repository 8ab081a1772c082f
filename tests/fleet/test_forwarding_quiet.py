"""Quiet hours per channel: everything but high severity waits for the window's end, and a
high-severity notification brings the flat's deferred ones along (order kept)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from contract.alerts import AlertKind, Severity
from fleet.channels.outbox import quiet_until
from fleet.db import make_engine, make_sessionmaker, migrate
from fleet.models import ForwardChannel, ForwardDelivery, Notification
from fleet.store import apply_uplink
from tests.fleet.helpers import alert
from tests.fleet.test_lifecycle import seed_site

TZ = "Asia/Shanghai"


@pytest.mark.parametrize(
    ("local", "start", "end", "until"),
    [
        ("2026-11-24T23:30", "22:00", "07:00", "2026-11-25T07:00"),  # across midnight
        ("2026-11-25T03:00", "22:00", "07:00", "2026-11-25T07:00"),
        ("2026-11-25T07:00", "22:00", "07:00", None),  # the end is not quiet
        ("2026-11-25T12:00", "22:00", "07:00", None),
        ("2026-11-25T12:30", "12:00", "14:00", "2026-11-25T14:00"),  # a lunch break
        ("2026-11-25T12:30", None, None, None),
        ("2026-11-25T12:30", "08:00", "08:00", None),  # empty window
    ],
)
def test_quiet_until(local: str, start: str | None, end: str | None, until: str | None) -> None:
    zone = ZoneInfo(TZ)
    now = datetime.fromisoformat(local).replace(tzinfo=zone).astimezone(UTC)
    got = quiet_until(start, end, now, TZ)
    expected = datetime.fromisoformat(until).replace(tzinfo=zone) if until else None
    assert got == expected


def test_quiet_hours_defer_all_but_high_severity(database_url: str) -> None:
    migrate(database_url)
    site = seed_site(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    night = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai
    morning = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)  # 07:00 the next day there
    try:
        with sessions() as s, s.begin():
            s.add(
                ForwardChannel(
                    street_office_id=site.street_office_id,
                    name="night-quiet",
                    kind="wecom",
                    config={"url": "http://127.0.0.1:9/cgi-bin/webhook/send?key=k"},
                    quiet_start="22:00",
                    quiet_end="07:00",
                    send_reports=False,
                    enabled=True,
                    source="api",
                    created_at=night,
                )
            )
        medium, high = uuid.uuid4().hex, uuid.uuid4().hex
        with sessions() as s:
            with s.begin():
                apply_uplink(s, alert(site.gateway, medium), received_at=night)
            with s.begin():
                rows = s.scalars(sa.select(ForwardDelivery)).all()
                assert [r.next_attempt_at for r in rows] == [morning]
            with s.begin():
                apply_uplink(
                    s,
                    alert(site.gateway, high, kind=AlertKind.OVERLOAD, severity=Severity.HIGH),
                    received_at=night + timedelta(minutes=5),
                )
            rows = s.execute(
                sa.select(Notification.key, ForwardDelivery.next_attempt_at)
                .join(Notification, Notification.id == ForwardDelivery.notification_id)
                .order_by(ForwardDelivery.id)
            ).all()
            # Both go now: the high one at once, the flat's deferred one pulled along before it.
            assert [(k, t) for k, t in rows] == [
                (medium, night + timedelta(minutes=5)),
                (high, night + timedelta(minutes=5)),
            ]
    finally:
        engine.dispose()
