"""Events the drivers yield: the contract's typed device events plus the raw card read.

A :class:`CardRead` carries the raw card number and never leaves the gateway process: the agent
turns it into a :class:`contract.events.CardSwipe` with a pseudonym before anything else sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from contract.events import ChargingSensorReading, DeviceFault, MeterReading


@dataclass(frozen=True, slots=True)
class CardRead:
    """A card presented at a reader, with the raw number (kept out of reprs and logs).

    Wiegand readers also give the number's parts (``facility`` and ``card``, see
    :mod:`drivers.wiegand`); other readers leave them ``None``.
    """

    ts: datetime
    reader_id: str
    number: str = field(repr=False)
    facility: int | None = field(default=None, repr=False)
    card: int | None = field(default=None, repr=False)


DriverEvent = MeterReading | ChargingSensorReading | CardRead | DeviceFault
