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
from sqlalchemy.orm import Session, aliased

from contract.alerts import AlertKind
from fleet.models import Alert, SublandlordFlat
from fleet.texts import RISK_REASONS, Lang, kind_title

WINDOW = timedelta(days=180)
UNVERIFIED = frozenset({"new", "acknowledged", "dispatched"})


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a flat has its level: a code (a key of ``fleet.texts.RISK_REASONS``) and the values
    its sentence needs (``kind``, ``alert_id``, ``count``, ``flat``), so pages can say it in
    their language while the API keeps its English ``text``."""

    code: str
    params: dict[str, str | int] = field(default_factory=dict)

    def render(self, lang: Lang) -> str:
        values: dict[str, str | int] = dict(self.params)
        kind = self.params.get("kind")
        if isinstance(kind, str) and kind in AlertKind._value2member_map_:
            values["kind"] = kind_title(AlertKind(kind), lang) if lang == "zh" else kind
        return RISK_REASONS[self.code][lang].format(**values)

    @property
    def text(self) -> str:
        """The English sentence (what GET /api/risk/flats has always returned)."""
        return self.render("en")


@dataclass(frozen=True, slots=True)
class Risk:
    level: str
    reasons: list[Reason] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.reasons]


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """The columns of an alert the rules read (a building's cases load without the rest)."""

    alert_id: str
    kind: str
    status: str
    outcome: str | None
    recurring: bool
    first_received_at: datetime
    deadline_at: datetime | None
    decided_at: datetime | None
    closed_at: datetime | None


FACT_COLUMNS = (
    Alert.alert_id,
    Alert.kind,
    Alert.status,
    Alert.outcome,
    Alert.recurring,
    Alert.first_received_at,
    Alert.deadline_at,
    Alert.decided_at,
    Alert.closed_at,
)


def _case(code: str, alert: Alert | CaseFacts) -> Reason:
    return Reason(code, {"kind": alert.kind, "alert_id": alert.alert_id})


def assess(alerts: Sequence[Alert | CaseFacts], now: datetime) -> Risk:
    """The level from one flat's cases (no sublandlord rule: see :func:`flat_risk`)."""
    since = now - WINDOW
    high: list[Reason] = []
    for a in alerts:
        if a.outcome == "confirmed" and a.status in ("confirmed", "rectifying"):
            high.append(_case("confirmed_open", a))
        if a.status == "rectifying" and a.deadline_at is not None and a.deadline_at < now:
            high.append(_case("rectification_overdue", a))
        if a.recurring and a.first_received_at >= since:
            high.append(_case("recurring", a))
    confirmed_recent = [
        a for a in alerts if a.outcome == "confirmed" and a.decided_at and a.decided_at >= since
    ]
    if len(confirmed_recent) >= 2:
        high.append(Reason("confirmed_repeatedly", {"count": len(confirmed_recent)}))
    if high:
        return Risk("high", high)
    medium = [_case("unverified", a) for a in alerts if a.status in UNVERIFIED]
    medium += [
        _case("closed_recently", a)
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
    return flat_risks(session, [flat_id], now)[flat_id]


def flat_risks(session: Session, flat_ids: Sequence[int], now: datetime) -> dict[int, Risk]:
    """:func:`flat_risk` of many flats (a building's) in three queries, not three per flat."""
    wanted = sorted(set(flat_ids))
    if not wanted:
        return {}
    alerts = _alerts_by_flat(session, wanted)
    risks = {f: assess(alerts.get(f, []), now) for f in wanted}
    low = [f for f, r in risks.items() if r.level == "low"]
    if not low:
        return risks
    # The sublandlord rule: a low flat let by someone who also lets a high-risk flat.
    mine = aliased(SublandlordFlat)
    pairs = session.execute(
        sa.select(mine.flat_id, SublandlordFlat.flat_id)
        .join(SublandlordFlat, SublandlordFlat.sublandlord_id == mine.sublandlord_id)
        .where(mine.flat_id.in_(low), SublandlordFlat.flat_id != mine.flat_id)
        .distinct()
    ).all()
    siblings: dict[int, list[int]] = {}
    for flat, other in pairs:
        siblings.setdefault(flat, []).append(other)
    others = sorted({o for group in siblings.values() for o in group})
    other_alerts = _alerts_by_flat(session, others) if others else {}
    high = {o for o in others if assess(other_alerts.get(o, []), now).level == "high"}
    for flat, group in siblings.items():
        first = next((o for o in sorted(group) if o in high), None)
        if first is not None:
            risks[flat] = Risk("medium", [Reason("sublandlord_high", {"flat": first})])
    return risks


def _alerts_by_flat(session: Session, flat_ids: Sequence[int]) -> dict[int, list[CaseFacts]]:
    out: dict[int, list[CaseFacts]] = {}
    for chunk in range(0, len(flat_ids), 500):
        for flat_id, *facts in session.execute(
            sa.select(Alert.flat_id, *FACT_COLUMNS)
            .where(Alert.flat_id.in_(flat_ids[chunk : chunk + 500]))
            .order_by(Alert.raised_at)
        ):
            if flat_id is not None:
                out.setdefault(flat_id, []).append(CaseFacts(*facts))
    return out
