"""Risk level per flat (the three-level management of seed 000), from its alert history.

Rules, first match wins (all windows end at ``now``):

- **high**: a confirmed hazard not yet closed (confirmed or rectifying); or a recurring case
  (回潮: raised again within 90 days of a closed one) in the last 180 days; or two or more
  confirmed cases in the last 180 days; or a rectification deadline that has passed.
- **medium**: a case not yet verified (new, acknowledged, dispatched); or a confirmed case
  closed in the last 180 days (under observation); or the flat's sublandlord (二房东) lets
  another flat that is high risk.
- **low**: everything else.

Each level comes with the reasons that produced it, so an officer can see why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fleet.models import Alert, SublandlordFlat

WINDOW = timedelta(days=180)
UNVERIFIED = frozenset({"new", "acknowledged", "dispatched"})


@dataclass(frozen=True, slots=True)
class Risk:
    level: str
    reasons: list[str] = field(default_factory=list)


def assess(alerts: Sequence[Alert], now: datetime) -> Risk:
    """The level from one flat's cases (no sublandlord rule: see :func:`flat_risk`)."""
    since = now - WINDOW
    high: list[str] = []
    for a in alerts:
        if a.outcome == "confirmed" and a.status in ("confirmed", "rectifying"):
            high.append(f"confirmed hazard open: {a.kind} ({a.alert_id})")
        if a.status == "rectifying" and a.deadline_at is not None and a.deadline_at < now:
            high.append(f"rectification overdue: {a.kind} ({a.alert_id})")
        if a.recurring and a.first_received_at >= since:
            high.append(f"recurring: {a.kind} ({a.alert_id})")
    confirmed_recent = [
        a for a in alerts if a.outcome == "confirmed" and a.decided_at and a.decided_at >= since
    ]
    if len(confirmed_recent) >= 2:
        high.append(f"{len(confirmed_recent)} confirmed hazards in 180 days")
    if high:
        return Risk("high", high)
    medium = [f"unverified: {a.kind} ({a.alert_id})" for a in alerts if a.status in UNVERIFIED]
    medium += [
        f"closed in the last 180 days: {a.kind} ({a.alert_id})"
        for a in alerts
        if a.outcome == "confirmed" and a.closed_at is not None and a.closed_at >= since
    ]
    if medium:
        return Risk("medium", medium)
    return Risk("low", [])


def flat_alerts(session: Session, flat_id: int) -> list[Alert]:
    return list(
        session.scalars(sa.select(Alert).where(Alert.flat_id == flat_id).order_by(Alert.raised_at))
    )


def flat_risk(session: Session, flat_id: int, now: datetime) -> Risk:
    risk = assess(flat_alerts(session, flat_id), now)
    if risk.level != "low":
        return risk
    siblings = session.scalars(
        sa.select(SublandlordFlat.flat_id)
        .where(
            SublandlordFlat.sublandlord_id.in_(
                sa.select(SublandlordFlat.sublandlord_id).where(SublandlordFlat.flat_id == flat_id)
            ),
            SublandlordFlat.flat_id != flat_id,
        )
        .distinct()
    ).all()
    for other in siblings:
        if assess(flat_alerts(session, other), now).level == "high":
            return Risk("medium", [f"same sublandlord as high-risk flat {other}"])
    return risk
