"""Small builders for hand-made event sequences and the episodes they should produce."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from contract.alerts import AlertChange, AlertEpisode, AlertKind, EvidenceValue, Severity, Subject
from contract.alerts import episode_id as contract_episode_id
from contract.events import ChargingSensorReading, RuleInput, Tick
from contract.site import (
    EbikeChargingConfig,
    Location,
    MeterPlacement,
    ReaderPlacement,
    RulesConfig,
    SensorPlacement,
    Site,
    Unit,
)
from rules.engine import RuleEngine

TZ = ZoneInfo("Asia/Shanghai")
SCOPE = "sgxc-07"

FLAT = "ble-flat"  # in flat 3-301
STAIR = "ble-stair"  # stairwell of building 3
CORRIDOR = "ble-corridor"  # corridor placed by unit only: building comes from the unit
SHED = "ble-shed"  # bike shed: charging allowed

SITE = Site(
    site_id=SCOPE,
    timezone="Asia/Shanghai",
    units=[Unit(unit_id="3-301", building="3"), Unit(unit_id="5-102", building="5")],
    meters=[MeterPlacement(meter_id="m-3-301", unit_id="3-301")],
    sensors=[
        SensorPlacement(sensor_id=FLAT, location=Location.UNIT, unit_id="3-301"),
        SensorPlacement(sensor_id=STAIR, location=Location.STAIRWELL, building="3"),
        SensorPlacement(sensor_id=CORRIDOR, location=Location.CORRIDOR, unit_id="5-102"),
        SensorPlacement(sensor_id=SHED, location=Location.BIKE_SHED, building="3"),
    ],
    readers=[ReaderPlacement(reader_id="b3-entrance", building="3")],
)

SUBJECTS = {
    FLAT: Subject(unit_id="3-301", sensor_id=FLAT),
    STAIR: Subject(building="3", sensor_id=STAIR),
    CORRIDOR: Subject(building="5", sensor_id=CORRIDOR),
}
LOCATIONS = {FLAT: "unit", STAIR: "stairwell", CORRIDOR: "corridor"}

DAY = datetime(2026, 3, 1, 14, 0, tzinfo=TZ)  # a Sunday afternoon
EVENING = datetime(2026, 3, 1, 21, 0, tzinfo=TZ)
NIGHT = datetime(2026, 3, 1, 23, 0, tzinfo=TZ)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def engine(config: RulesConfig | None = None, scope: str = SCOPE) -> RuleEngine:
    return RuleEngine(SITE, config or RulesConfig(), scope=scope)


def config(**ebike: float) -> RulesConfig:
    return RulesConfig(ebike_charging=EbikeChargingConfig.model_validate(ebike))


def on(t: datetime, sensor: str = FLAT, power: float | None = None) -> ChargingSensorReading:
    return ChargingSensorReading(ts=t, sensor_id=sensor, charging=True, power_w=power)


def off(t: datetime, sensor: str = FLAT) -> ChargingSensorReading:
    return ChargingSensorReading(ts=t, sensor_id=sensor, charging=False)


def tick(t: datetime) -> Tick:
    return Tick(ts=t)


def feed(eng: RuleEngine, events: Iterable[RuleInput]) -> list[AlertChange]:
    out: list[AlertChange] = []
    for event in events:
        out += eng.process(event)
    return out


def evidence(
    *,
    sensor: str,
    since: datetime,
    until: datetime,
    reports: int,
    last: datetime,
    peak: float | None = None,
    ended_by: str | None = None,
) -> dict[str, EvidenceValue]:
    return {
        "peak_power_w": peak,
        "charging_since": since.astimezone(TZ).isoformat(),
        "duration_s": (until - since).total_seconds(),
        "location": LOCATIONS[sensor],
        "reports": reports,
        "last_report_at": last.astimezone(TZ).isoformat(),
        "ended_by": ended_by,
    }


def episode(
    *,
    sensor: str,
    severity: Severity,
    raised_at: datetime,
    evidence: dict[str, EvidenceValue],
    cleared_at: datetime | None = None,
    scope: str = SCOPE,
) -> AlertEpisode:
    subject = SUBJECTS[sensor]
    return AlertEpisode(
        kind=AlertKind.EBIKE_CHARGING,
        severity=severity,
        subject=subject,
        raised_at=raised_at,
        evidence=evidence,
        cleared_at=cleared_at,
        id=contract_episode_id(AlertKind.EBIKE_CHARGING, subject, raised_at.astimezone(TZ), scope),
    )
