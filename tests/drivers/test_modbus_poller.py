"""ModbusTcpMeterPoller against simulated DDSU666 meters on a real pymodbus TCP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing

import pytest

from contract.events import DeviceFault, MeterReading
from drivers.base import DriverConfigError
from drivers.modbus_meter import MeterSpec, ModbusTcpMeterPoller
from firmware_sim.modbus_meters import ModbusMeterSim
from tests.conftest import free_port
from tests.drivers.helpers import collect_until

Event = MeterReading | DeviceFault

LOADS = {1: 1500.0, 2: 320.5, 3: 42.0}
METERS = [MeterSpec("m-1-101", 1), MeterSpec("m-1-102", 2), MeterSpec("m-1-201", 3)]


def _constant(w: float) -> Callable[[float], float]:
    return lambda t: w


def _sim(port: int = 0) -> ModbusMeterSim:
    return ModbusMeterSim({s: _constant(w) for s, w in LOADS.items()}, port=port)


def _poller(port: int, **kw: object) -> ModbusTcpMeterPoller:
    args: dict[str, object] = {"interval_s": 0.1, "timeout_s": 0.2, **kw}
    return ModbusTcpMeterPoller(host="127.0.0.1", port=port, meters=METERS, **args)  # type: ignore[arg-type]


def _readings(events: list[Event], meter_id: str) -> list[MeterReading]:
    return [e for e in events if isinstance(e, MeterReading) and e.meter_id == meter_id]


def _faults(events: list[Event], meter_id: str) -> list[DeviceFault]:
    return [e for e in events if isinstance(e, DeviceFault) and e.device_id == meter_id]


async def test_readings_match_the_simulated_load() -> None:
    async with _sim() as sim:
        poller = _poller(sim.port)
        async with aclosing(poller.events()) as events:
            got = await collect_until(
                events, lambda seen: all(_readings(seen, m.meter_id) for m in METERS)
            )
    assert not [e for e in got if isinstance(e, DeviceFault)]
    for spec in METERS:
        r = _readings(got, spec.meter_id)[0]
        meter = sim.meters[spec.slave]
        assert r.power_w == pytest.approx(LOADS[spec.slave], rel=1e-6)
        assert r.voltage_v is not None and 220.0 <= r.voltage_v <= 235.0
        assert r.power_factor == pytest.approx(meter.power_factor, rel=1e-6)
        assert r.power_factor is not None
        assert r.current_a == pytest.approx(r.power_w / (r.voltage_v * r.power_factor), rel=1e-4)
        assert r.energy_kwh is not None and r.energy_kwh > 0
        assert r.ts.tzinfo is not None
    assert poller.counters["reads_ok"] >= 3
    status = poller.device_status()
    assert set(status) == {m.meter_id for m in METERS}
    assert all(s.online and s.fault is None and s.last_seen for s in status.values())


async def test_values_follow_the_load_over_time() -> None:
    level = {"w": 100.0}
    async with ModbusMeterSim({1: lambda t: level["w"]}) as sim:
        poller = ModbusTcpMeterPoller(
            host="127.0.0.1", port=sim.port, meters=[METERS[0]], interval_s=0.05, timeout_s=0.2
        )
        async with aclosing(poller.events()) as events:
            first = await collect_until(events, lambda seen: len(seen) >= 1)
            level["w"] = 2300.0
            later = await collect_until(
                events,
                lambda seen: isinstance(seen[-1], MeterReading) and seen[-1].power_w > 2000,
            )
    a, b = first[0], later[-1]
    assert isinstance(a, MeterReading) and isinstance(b, MeterReading)
    assert a.power_w == pytest.approx(100.0) and b.power_w == pytest.approx(2300.0)
    assert a.energy_kwh is not None and b.energy_kwh is not None
    assert b.energy_kwh >= a.energy_kwh  # the energy register only counts up


async def test_silent_meter_faults_once_others_keep_reading_and_it_recovers() -> None:
    async with _sim() as sim:
        sim.set_mode(2, "silent")
        poller = _poller(sim.port)
        started = time.monotonic()
        async with aclosing(poller.events()) as events:
            got = await collect_until(
                events,
                lambda seen: (
                    len(_readings(seen, "m-1-101")) >= 5 and len(_readings(seen, "m-1-201")) >= 5
                ),
            )
            elapsed = time.monotonic() - started
            assert [(f.fault, f.detail, f.active) for f in _faults(got, "m-1-102")] == [
                ("timeout", "no answer within 0.2s", True)
            ]
            assert not _readings(got, "m-1-102")
            # five cycles of 0.1 s, each costing the dead meter at most its 0.2 s timeout
            assert elapsed < 5 * (0.1 + 0.2) + 1.0
            assert poller.device_status()["m-1-102"].fault == "timeout"
            assert not poller.device_status()["m-1-102"].online
            assert poller.device_status()["m-1-101"].online

            sim.set_mode(2, "ok")
            back = await collect_until(events, lambda seen: bool(_readings(seen, "m-1-102")))
    recovered = _faults(back, "m-1-102")
    assert len(recovered) == 1 and recovered[0].fault == "timeout" and not recovered[0].active
    assert poller.counters["timeouts"] >= 5
    assert poller.device_status()["m-1-102"].online


async def test_meter_answering_exceptions_faults() -> None:
    async with _sim() as sim:
        sim.set_mode(3, "exception")
        poller = _poller(sim.port)
        async with aclosing(poller.events()) as events:
            got = await collect_until(events, lambda seen: len(_readings(seen, "m-1-101")) >= 3)
    faults = _faults(got, "m-1-201")
    assert [(f.fault, f.active) for f in faults] == [("modbus_exception", True)]
    assert "exception code 4" in faults[0].detail
    assert poller.counters["exceptions"] >= 2


async def test_input_registers_when_configured() -> None:
    async with _sim() as sim:
        poller = ModbusTcpMeterPoller(
            host="127.0.0.1",
            port=sim.port,
            meters=[MeterSpec("m-1-101", 1, function_code=0x04)],
            interval_s=0.1,
        )
        async with aclosing(poller.events()) as events:
            got = await collect_until(events, lambda seen: len(seen) >= 1)
    assert isinstance(got[0], MeterReading) and got[0].power_w == pytest.approx(1500.0)


async def test_unreachable_endpoint_then_reconnect_after_a_drop() -> None:
    port = free_port()
    poller = _poller(port)
    async with aclosing(poller.events()) as events:
        # nothing listens yet: every meter is unreachable, reported once
        got = await collect_until(events, lambda seen: len(seen) >= 3)
        assert {(e.device_id, e.fault) for e in got if isinstance(e, DeviceFault)} == {
            (m.meter_id, "unreachable") for m in METERS
        }
        async with _sim(port=port) as sim:
            back = await collect_until(
                events, lambda seen: all(_readings(seen, m.meter_id) for m in METERS)
            )
            cleared = [e for e in back if isinstance(e, DeviceFault)]
            assert {(e.device_id, e.active) for e in cleared} == {
                (m.meter_id, False) for m in METERS
            }
            # the endpoint drops every connection and comes back on the same port
            await sim.pause()
            dropped = await collect_until(
                events, lambda seen: len([e for e in seen if isinstance(e, DeviceFault)]) >= 3
            )
            assert {e.device_id for e in dropped if isinstance(e, DeviceFault)} == {
                m.meter_id for m in METERS
            }
            await sim.resume()
            await collect_until(
                events, lambda seen: all(_readings(seen, m.meter_id) for m in METERS)
            )
    assert poller.counters["reconnects"] >= 2


async def test_cancelling_the_consumer_stops_the_poller() -> None:
    async with _sim() as sim:
        poller = _poller(sim.port)

        async def consume() -> None:
            async for _ in poller.events():
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert poller.counters["reads_ok"] >= 3


@pytest.mark.parametrize(
    ("meters", "message"),
    [
        pytest.param([MeterSpec("a", 1), MeterSpec("a", 2)], "duplicate", id="duplicate-id"),
        pytest.param([MeterSpec("a", 300)], "slave", id="bad-slave"),
        pytest.param([MeterSpec("a", 1, "sdm999")], "unknown profile", id="unknown-profile"),
        pytest.param([MeterSpec("a", 1, function_code=6)], "function code", id="bad-fc"),
    ],
)
def test_bad_configuration_is_refused(meters: list[MeterSpec], message: str) -> None:
    with pytest.raises(DriverConfigError, match=message):
        ModbusTcpMeterPoller(host="127.0.0.1", port=502, meters=meters)
