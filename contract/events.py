"""Typed device events: what drivers emit, what rules consume, what replay reads.

Frozen, slotted dataclasses rather than pydantic models: replay pushes hundreds of thousands of
them per second through the rules, and they are built by trusted code (drivers, the replay
parser), which validates at its own edge.

Timestamps are timezone-aware :class:`datetime.datetime` values. Rules take time only from these
events (and from :class:`Tick`), never from a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CardSwipe:
    """A card presented at an entrance reader.

    ``card`` is the pseudonym (HMAC-SHA256 under the site key) on a live gateway; in replay it is
    whatever the input file carries. Raw card numbers never leave the gateway.
    """

    ts: datetime
    reader_id: str
    card: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One reading of a per-flat electricity meter."""

    ts: datetime
    meter_id: str
    power_w: float
    voltage_v: float | None = None
    current_a: float | None = None
    energy_kwh: float | None = None
    power_factor: float | None = None


@dataclass(frozen=True, slots=True)
class ChargingSensorReading:
    """A BLE e-bike charging sensor's report (BTHome v2 advert, decoded)."""

    ts: datetime
    sensor_id: str
    charging: bool
    power_w: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """A driver could not read a device (timeout, bad frames, ...) or recovered from that."""

    ts: datetime
    device_id: str
    fault: str
    detail: str = ""
    active: bool = True


@dataclass(frozen=True, slots=True)
class Tick:
    """The passage of time with no device event (emitted by the agent's clock, never by rules)."""

    ts: datetime


DeviceEvent = CardSwipe | MeterReading | ChargingSensorReading | DeviceFault
RuleInput = CardSwipe | MeterReading | ChargingSensorReading | Tick
