"""The site model (which device is in which flat or place) and rule thresholds.

Both travel on the wire (the fleet manager pushes them as part of a gateway's desired config)
and both are read by ``edge-agent replay`` from ``site.json`` / the agent config, so they live in
the contract. Field names follow ``spec/replay.md``.
"""

from __future__ import annotations

from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(StrEnum):
    UNIT = "unit"
    STAIRWELL = "stairwell"
    CORRIDOR = "corridor"
    LOBBY = "lobby"
    BIKE_SHED = "bike_shed"


class Unit(_Strict):
    unit_id: str = Field(min_length=1)
    building: str = Field(min_length=1)
    floor_area_m2: float | None = Field(default=None, gt=0)
    rooms: int | None = Field(default=None, ge=1)
    registered_occupants: int | None = Field(default=None, ge=0)
    rated_current_a: float | None = Field(default=None, gt=0)


class CardRegistration(_Strict):
    card: str = Field(min_length=1)
    unit_id: str


class MeterPlacement(_Strict):
    meter_id: str = Field(min_length=1)
    unit_id: str


class SensorPlacement(_Strict):
    sensor_id: str = Field(min_length=1)
    location: Location
    unit_id: str | None = None
    building: str | None = None

    @model_validator(mode="after")
    def _placed(self) -> SensorPlacement:
        if self.location is Location.UNIT and self.unit_id is None:
            raise ValueError("a sensor at location 'unit' needs unit_id")
        if self.location is not Location.UNIT and self.building is None and self.unit_id is None:
            raise ValueError(f"a sensor at location {self.location.value!r} needs building")
        return self


class ReaderPlacement(_Strict):
    reader_id: str = Field(min_length=1)
    building: str


class Site(_Strict):
    """``site.json`` of the replay spec; also the mapping part of a gateway's config."""

    site_id: str = Field(min_length=1)
    timezone: str = "Asia/Shanghai"
    units: list[Unit] = Field(default_factory=list)
    cards: list[CardRegistration] = Field(default_factory=list)
    meters: list[MeterPlacement] = Field(default_factory=list)
    sensors: list[SensorPlacement] = Field(default_factory=list)
    readers: list[ReaderPlacement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Site:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r} (use an IANA name)") from None
        units = {u.unit_id for u in self.units}
        refs: list[tuple[str, list[str]]] = [
            ("cards", [c.unit_id for c in self.cards]),
            ("meters", [m.unit_id for m in self.meters]),
        ]
        for kind, unit_ids in refs:
            for i, unit_id in enumerate(unit_ids):
                if unit_id not in units:
                    raise ValueError(f"{kind}[{i}]: unknown unit_id {unit_id!r}")
        for i, s in enumerate(self.sensors):
            if s.unit_id is not None and s.unit_id not in units:
                raise ValueError(f"sensors[{i}]: unknown unit_id {s.unit_id!r}")
        for kind, ids in (
            ("unit_id", [u.unit_id for u in self.units]),
            ("meter_id", [m.meter_id for m in self.meters]),
            ("sensor_id", [s.sensor_id for s in self.sensors]),
            ("reader_id", [r.reader_id for r in self.readers]),
        ):
            seen: set[str] = set()
            for x in ids:
                if x in seen:
                    raise ValueError(f"duplicate {kind} {x!r}")
                seen.add(x)
        return self


class EbikeChargingConfig(_Strict):
    """Thresholds of the ``ebike_charging`` rule (charging sensors).

    Charging indoors, in lobbies, corridors, stairwells and exits is forbidden:
    高层民用建筑消防安全管理规定 (2021) art. 37; 上海市非机动车安全管理条例 (amended 2024).
    """

    min_duration_s: float = Field(default=120.0, ge=0, description="charging must hold this long")
    clear_after_s: float = Field(
        default=60.0, ge=0, description="not-charging must hold this long to clear (hysteresis)"
    )
    stale_after_s: float = Field(
        default=900.0, gt=0, description="no report for this long ends the episode"
    )
    peak_update_ratio: float = Field(
        default=1.10,
        ge=1.0,
        description="re-publish an open episode when its peak power rises by this factor",
    )
    night_start_hour: int = Field(default=22, ge=0, le=23)
    night_end_hour: int = Field(default=6, ge=0, le=23)


class RulesConfig(_Strict):
    """All rule thresholds. Defaults and their sources are documented in docs/rules.md."""

    ebike_charging: EbikeChargingConfig = Field(default_factory=EbikeChargingConfig)
