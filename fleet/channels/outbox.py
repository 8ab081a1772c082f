"""The outbox's write side: notifications and their deliveries, in the caller's transaction.

Kept apart from the worker (``fleet/forwarder.py``) so that ingest and the lifecycle can enqueue
without importing HTTP or SMTP clients. See the forwarder's docstring for the whole design.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleet.channels import ChannelKind, redact_url
from fleet.models import DeliveryStatus, ForwardChannel, ForwardDelivery, Notification


def _insert_notification(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(Notification).on_conflict_do_nothing(index_elements=["key"])
    return sqlite.insert(Notification).on_conflict_do_nothing(index_elements=["key"])


# Events a channel gets when its ``events`` list is empty (all of them but the routine
# acknowledge step, which only the officer who did it needs to see).
DEFAULT_EVENTS = frozenset(
    {
        "raised",
        "reraised",
        "severity",
        "cleared",
        "escalated",
        "remind_dispatch",
        "remind_deadline",
        "dispatch",
        "confirm",
        "false_alarm",
        "rectify",
        "recheck",
        "close",
    }
)


def _parse_hhmm(value: str) -> time:
    hour, minute = value.split(":")
    return time(int(hour), int(minute))


def quiet_until(start: str | None, end: str | None, now: datetime, tz: str) -> datetime | None:
    """When the quiet window that ``now`` falls in ends, or None when ``now`` is not quiet."""
    if not start or not end or start == end:
        return None
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    s, e = _parse_hhmm(start), _parse_hhmm(end)
    t = local.time()
    inside = (s <= t < e) if s < e else (t >= s or t < e)
    if not inside:
        return None
    end_day = local.date() if t < e else local.date() + timedelta(days=1)
    return datetime.combine(end_day, e, tzinfo=zone)


def enqueue(
    session: Session,
    *,
    key: str,
    event: str,
    severity: str,
    payload: dict[str, Any],
    alert_id: str | None,
    street_office_id: int | None,
    order_key: str,
    now: datetime,
    tz: str = "Asia/Shanghai",
    report: bool = False,
) -> int:
    """Record a notification and its deliveries; returns how many deliveries were added (0 when
    ``key`` was recorded before: enqueueing is idempotent)."""
    notification_id = session.execute(
        _insert_notification(session)
        .values(
            key=key,
            alert_id=alert_id,
            event=event,
            severity=severity,
            payload=payload,
            created_at=now,
        )
        .returning(Notification.id)
    ).scalar()
    if notification_id is None:
        return 0
    where: list[sa.ColumnElement[bool]] = [ForwardChannel.enabled.is_(True)]
    if street_office_id is None:
        where.append(ForwardChannel.street_office_id.is_(None))
    else:
        where.append(
            sa.or_(
                ForwardChannel.street_office_id.is_(None),
                ForwardChannel.street_office_id == street_office_id,
            )
        )
    if report:
        where.append(ForwardChannel.send_reports.is_(True))
    added = 0
    for channel in session.scalars(sa.select(ForwardChannel).where(*where)):
        if not report and event not in (channel.events or DEFAULT_EVENTS):
            continue
        due = now
        if severity != "high":
            due = quiet_until(channel.quiet_start, channel.quiet_end, now, tz) or now
        elif channel.quiet_start:
            # Jumping the quiet window must not jump the queue: bring this flat's deferred
            # rows along.
            session.execute(
                sa.update(ForwardDelivery)
                .where(
                    ForwardDelivery.channel_id == channel.id,
                    ForwardDelivery.order_key == order_key,
                    ForwardDelivery.status == DeliveryStatus.PENDING.value,
                    ForwardDelivery.next_attempt_at > now,
                    ForwardDelivery.attempts == 0,
                )
                .values(next_attempt_at=now)
            )
        session.add(
            ForwardDelivery(
                notification_id=notification_id,
                channel_id=channel.id,
                alert_id=alert_id,
                order_key=order_key,
                url=_display_target(channel),
                status=DeliveryStatus.PENDING.value,
                attempts=0,
                next_attempt_at=due,
                created_at=now,
            )
        )
        added += 1
    session.flush()
    return added


def _display_target(channel: ForwardChannel) -> str:
    if channel.kind == ChannelKind.EMAIL:
        to = channel.config.get("to", [])
        return "mailto:" + ",".join(str(a) for a in to)[:2000]
    return str(channel.config.get("url", ""))


def sync_env_channels(session: Session, urls: list[str], now: datetime) -> None:
    """Make the ``FLEET_WEBHOOK_URLS`` the enabled district-wide ``env`` channels."""
    existing = {
        str(c.config.get("url")): c
        for c in session.scalars(sa.select(ForwardChannel).where(ForwardChannel.source == "env"))
    }
    for url in urls:
        channel = existing.pop(url, None)
        if channel is None:
            session.add(
                ForwardChannel(
                    street_office_id=None,
                    name=redact_url(url)[:64],
                    kind=ChannelKind.WEBHOOK.value,
                    config={"url": url},
                    send_reports=False,
                    enabled=True,
                    source="env",
                    created_at=now,
                )
            )
        else:
            channel.enabled = True
    for channel in existing.values():
        channel.enabled = False
