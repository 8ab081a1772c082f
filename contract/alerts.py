"""Alert kinds, categories and the episode model shared by rules, replay and the fleet."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class AlertKind(StrEnum):
    SUSPECTED_GROUP_RENTAL = "suspected_group_rental"
    EBIKE_CHARGING = "ebike_charging"
    EBIKE_CHARGING_SUSPECTED = "ebike_charging_suspected"
    OVERLOAD = "overload"
    DATA_SILENCE = "data_silence"


class Category(StrEnum):
    """Hazard dictionary of seed 002 (附件2)."""

    PUBLIC_ORDER = "治安"
    FIRE = "消防"
    HOUSING = "住房"
    OTHER = "其他"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


CATEGORY_OF: dict[AlertKind, Category] = {
    AlertKind.SUSPECTED_GROUP_RENTAL: Category.HOUSING,
    AlertKind.EBIKE_CHARGING: Category.FIRE,
    AlertKind.EBIKE_CHARGING_SUSPECTED: Category.FIRE,
    AlertKind.OVERLOAD: Category.FIRE,
    AlertKind.DATA_SILENCE: Category.OTHER,
}

# Namespace for deterministic episode ids: the same episode always gets the same id, so a
# re-sent alert is recognised by the fleet manager and replay output is byte-for-byte stable.
_EPISODE_NS = uuid.UUID("5b0f6c1e-8e0a-4c1e-9b7e-3f2d8a6c4e11")

EvidenceValue = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class Subject:
    """What an alert is about. Only the fields that apply to the kind are set."""

    unit_id: str | None = None
    building: str | None = None
    sensor_id: str | None = None
    meter_id: str | None = None
    reader_id: str | None = None

    def key(self) -> str:
        parts = (
            ("unit", self.unit_id),
            ("building", self.building),
            ("sensor", self.sensor_id),
            ("meter", self.meter_id),
            ("reader", self.reader_id),
        )
        return ";".join(f"{k}={v}" for k, v in parts if v is not None)


def episode_id(kind: AlertKind, subject: Subject, raised_at: datetime, scope: str = "") -> str:
    """Deterministic id of an alert episode (minted at the edge).

    The raise time is normalised to UTC so the id does not depend on the input's UTC offset.
    """
    name = f"{scope}|{kind.value}|{subject.key()}|{raised_at.astimezone(UTC).isoformat()}"
    return str(uuid.uuid5(_EPISODE_NS, name))


@dataclass(frozen=True, slots=True)
class AlertEpisode:
    """One alert episode: raised at a time, possibly cleared later, with its evidence."""

    kind: AlertKind
    severity: Severity
    subject: Subject
    raised_at: datetime
    evidence: dict[str, EvidenceValue] = field(default_factory=dict)
    cleared_at: datetime | None = None
    id: str = ""

    @property
    def category(self) -> Category:
        return CATEGORY_OF[self.kind]


class Change(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What a rule says happened to an episode at ``episode``'s latest state."""

    change: Change
    episode: AlertEpisode
