"""The pieces every driver shares, and that every driver offers the agent's interface."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers.base import Backoff, DeviceState, Driver, DriverCounters
from drivers.ble_charging import AdvertCallback, BleChargingSensors
from drivers.modbus_meter import MeterSpec, ModbusTcpMeterPoller
from drivers.serial_card import SerialCardReader


class _NoAdverts:
    @asynccontextmanager
    async def scan(self, callback: AdvertCallback) -> AsyncIterator[None]:
        yield


def test_counters() -> None:
    c = DriverCounters(("a", "b"))
    c.inc("a")
    c.inc("a", 2)
    c.inc("new")
    assert c.snapshot() == {"a": 3, "b": 0, "new": 1}
    assert c["missing"] == 0
    snap = c.snapshot()
    snap["a"] = 99
    assert c["a"] == 3  # a snapshot is a copy


def test_backoff_grows_with_jitter_and_resets() -> None:
    b = Backoff(0.1, 1.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert delays[-1] > delays[0]
    b.reset()
    assert b.next() <= 0.1


def test_every_driver_offers_the_interface() -> None:
    drivers: list[Driver] = [
        ModbusTcpMeterPoller(host="127.0.0.1", port=502, meters=[MeterSpec("m-1", 1)]),
        SerialCardReader(url="/dev/null-reader", reader_id="b1-entrance"),
        BleChargingSensors(sensors={"A4:C1:38:AA:00:01": "ble-1"}, source=_NoAdverts()),
    ]
    names = [d.name for d in drivers]
    assert len(set(names)) == 3
    for d in drivers:
        assert isinstance(d.counters.snapshot(), dict)
        status = d.device_status()
        assert status and all(isinstance(s, DeviceState) for s in status.values())
        assert all(not s.online and s.last_seen is None for s in status.values())
        assert hasattr(d.events(), "__anext__")
