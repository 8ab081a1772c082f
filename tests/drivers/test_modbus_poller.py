"""ModbusMeterPoller against simulated meters on real transports: Modbus TCP, RTU over a TCP
socket (``socket://``) and RTU on a pseudo-terminal, with the simulator's faults on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager

import pytest

from contract.events import DeviceFault, MeterReading
from drivers.base import DriverConfigError
from drivers.modbus_bus import ModbusLink, RtuSerialPort, parse_link_url
from drivers.modbus_meter import MeterSpec, ModbusMeterPoller, ModbusTcpMeterPoller
from drivers.modbus_rtu import encode_read_request
from firmware_sim.modbus_meters import ModbusMeterSim, Transport, constant_load
from tests.conftest import free_port
from tests.drivers.helpers import collect_until, consuming

Event = MeterReading | DeviceFault

LOADS = {1: 1500.0, 2: 320.5, 3: 42.0}
PROFILE = {1: "ddsu666", 2: "sdm120", 3: "sdm630"}
METERS = [
    MeterSpec("m-1-101", 1, "ddsu666"),
    MeterSpec("m-1-102", 2, "sdm120"),
    MeterSpec("m-1-201", 3, "sdm630"),
]
ALL = ["tcp", "rtu-tcp", "rtu-pty"]
RTU = ["rtu-tcp", "rtu-pty"]


def _sim(transport: Transport = "tcp", port: int = 0) -> ModbusMeterSim:
    loads = {s: constant_load(w) for s, w in LOADS.items()}
    return ModbusMeterSim(loads, profile=PROFILE, transport=transport, port=port)


def _poller(
    sim: ModbusMeterSim, meters: list[MeterSpec] = METERS, **kw: object
) -> ModbusMeterPoller:
    args: dict[str, object] = {"interval_s": 0.05, "timeout_s": 0.2, **kw}
    link = ModbusLink(parse_link_url(sim.url))
    return ModbusMeterPoller(link=link, meters=meters, **args)  # type: ignore[arg-type]


def _readings(events: list[Event], meter_id: str) -> list[MeterReading]:
    return [e for e in events if isinstance(e, MeterReading) and e.meter_id == meter_id]


def _faults(events: list[Event], meter_id: str | None = None) -> list[DeviceFault]:
    return [
        e
        for e in events
        if isinstance(e, DeviceFault) and (meter_id is None or e.device_id == meter_id)
    ]


def _each_read(n: int, meters: list[MeterSpec] = METERS) -> Callable[[list[Event]], bool]:
    def done(seen: list[Event]) -> bool:
        return all(len(_readings(seen, m.meter_id)) >= n for m in meters)

    return done


@asynccontextmanager
async def _running(
    sim: ModbusMeterSim, **kw: object
) -> AsyncIterator[tuple[ModbusMeterPoller, AsyncIterator[Event]]]:
    poller = _poller(sim, **kw)
    async with aclosing(poller.events()) as events:
        yield poller, events


@pytest.mark.parametrize("transport", ALL)
async def test_readings_match_the_simulated_load(transport: Transport) -> None:
    async with _sim(transport) as sim, _running(sim) as (poller, events):
        got = await collect_until(events, _each_read(1))
    assert not _faults(got)
    for spec in METERS:
        r = _readings(got, spec.meter_id)[0]
        meter = sim.meters[spec.slave]
        assert r.power_w == pytest.approx(LOADS[spec.slave], rel=1e-6)
        assert r.voltage_v is not None and 220.0 <= r.voltage_v <= 235.0
        assert r.power_factor == pytest.approx(meter.power_factor, rel=1e-6)
        assert r.energy_kwh is not None and r.energy_kwh > 0
        assert r.ts.tzinfo is not None
        assert r.current_a is not None
        if spec.profile == "sdm630":  # the most loaded phase's current
            phase = max(meter.phase_split) * r.power_w / r.power_factor
            assert phase / 236 < r.current_a < phase / 222
        else:
            assert r.current_a == pytest.approx(
                r.power_w / (r.voltage_v * r.power_factor), rel=1e-4
            )
    assert poller.counters["reads_ok"] >= 3
    assert poller.counters["timeouts"] == poller.counters["bad_responses"] == 0
    status = poller.device_status()
    assert set(status) == {m.meter_id for m in METERS}
    assert all(s.online and s.fault is None and s.last_seen for s in status.values())


async def test_values_follow_the_load_over_time() -> None:
    level = {"w": 100.0}
    async with ModbusMeterSim({1: lambda t: level["w"]}) as sim:
        poller = _poller(sim, [METERS[0]])
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


@pytest.mark.parametrize("transport", ALL)
async def test_silent_meter_is_quarantined_faults_once_and_recovers(transport: Transport) -> None:
    async with _sim(transport) as sim:
        sim.set_mode(2, "silent")
        async with _running(sim) as (poller, events):
            started = time.monotonic()
            got = await collect_until(
                events,
                lambda seen: (
                    bool(_faults(seen, "m-1-102")) and _each_read(6, [METERS[0], METERS[2]])(seen)
                ),
            )
            elapsed = time.monotonic() - started
            assert [(f.fault, f.detail, f.active) for f in _faults(got)] == [
                ("timeout", "no answer within 0.2s", True)
            ]
            assert not _readings(got, "m-1-102")
            # 6 rounds of 50 ms; the dead meter is tried at growing intervals, not every round
            assert elapsed < 6 * 0.05 + 4 * 0.2 + 1.0
            counters = poller.device_counters()["m-1-102"]
            assert 2 <= counters["timeouts"] <= 5
            assert counters["quarantined"] >= 1 + 2
            assert counters["reads_ok"] == 0
            assert poller.device_counters()["m-1-101"]["timeouts"] == 0
            status = poller.device_status()
            assert status["m-1-102"].fault == "timeout" and not status["m-1-102"].online
            assert status["m-1-101"].online

            sim.set_mode(2, "ok")
            back = await collect_until(events, lambda seen: bool(_readings(seen, "m-1-102")))
    recovered = _faults(back)
    assert [(f.device_id, f.fault, f.active) for f in recovered] == [("m-1-102", "timeout", False)]
    assert poller.device_status()["m-1-102"].online
    assert poller.counters["timeouts"] == poller.device_counters()["m-1-102"]["timeouts"]
    assert poller.counters["reconnects"] == 0  # one dead slave never drops the connection


@pytest.mark.parametrize("transport", ALL)
async def test_meter_answering_exceptions_faults_without_quarantine(transport: Transport) -> None:
    async with _sim(transport) as sim:
        sim.set_mode(3, "exception")
        async with _running(sim) as (poller, events):
            got = await collect_until(events, lambda seen: len(_readings(seen, "m-1-101")) >= 6)
    faults = _faults(got)
    assert [(f.device_id, f.fault, f.active) for f in faults] == [
        ("m-1-201", "modbus_exception", True)
    ]
    assert faults[0].detail == "exception code 4 reading 12 registers at 0x0000"
    counters = poller.device_counters()["m-1-201"]
    assert counters["exceptions"] >= 4  # polled at its normal rate: an exception costs no wait
    assert counters["quarantined"] == counters["timeouts"] == 0


async def test_wrong_function_code_is_an_exception_fault() -> None:
    async with _sim() as sim:
        meters = [MeterSpec("m-1-102", 2, "sdm120", function_code=3)]  # SDM120 answers 0x04
        async with _running(sim, meters=meters) as (_, events):
            got = await collect_until(events, lambda seen: len(seen) >= 1)
    assert [(f.fault, f.detail) for f in _faults(got)] == [
        ("modbus_exception", "exception code 2 reading 14 registers at 0x0000")
    ]


async def test_ddsu666_answers_input_registers_when_configured() -> None:
    async with _sim() as sim:
        meters = [MeterSpec("m-1-101", 1, function_code=0x04)]
        async with _running(sim, meters=meters) as (_, events):
            got = await collect_until(events, lambda seen: len(seen) >= 1)
    assert isinstance(got[0], MeterReading) and got[0].power_w == pytest.approx(1500.0)


# -- the RTU line ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", RTU)
async def test_noise_before_replies_is_skipped(transport: Transport) -> None:
    async with _sim(transport) as sim:
        sim.line.noise = b"\x00\xff"  # a badly biased line at every turnaround
        sim.line.noise_next = 6
        async with _running(sim) as (poller, events):
            got = await collect_until(events, _each_read(2))
            sim.write_noise(b"\xff\x00\x13")  # and a burst between transactions
            got += await collect_until(events, _each_read(2))
    assert sim.line.noised == 6
    assert not _faults(got)
    assert poller.counters["bad_responses"] == poller.counters["timeouts"] == 0
    powers = [r.power_w for r in _readings(got, "m-1-101")]
    # at least 2 + 2 reads (the last poll round may add one more before collection stops)
    assert len(powers) >= 4 and powers == [pytest.approx(1500.0)] * len(powers)


@pytest.mark.parametrize("transport", RTU)
async def test_corrupted_replies_are_counted_then_fault_then_recover(transport: Transport) -> None:
    async with _sim(transport) as sim, _running(sim, timeout_s=0.1) as (poller, events):
        await collect_until(events, _each_read(1))
        sim.line.corrupt_next = 1  # one CRC error: counted, but no fault for a single glitch
        got = await collect_until(events, _each_read(3))
        assert poller.counters["bad_responses"] == 1
        assert not _faults(got)

        sim.line.corrupt_rate = 1.0  # every reply garbled (wrong baud rate looks like this)
        bad = await collect_until(events, lambda seen: len(_faults(seen)) >= 3)
        assert {(f.device_id, f.fault, f.active) for f in _faults(bad)} == {
            (m.meter_id, "bad_response", True) for m in METERS
        }
        assert all("bytes but no valid reply" in f.detail for f in _faults(bad))
        sim.line.corrupt_rate = 0.0
        back = await collect_until(events, lambda seen: len(_faults(seen)) >= 3, timeout=5)
    assert {(f.device_id, f.active) for f in _faults(back)} == {(m.meter_id, False) for m in METERS}
    assert poller.counters["quarantined"] >= 3
    assert poller.counters["timeouts"] == 0


@pytest.mark.parametrize("transport", RTU)
async def test_split_frames_are_reassembled(transport: Transport) -> None:
    async with _sim(transport) as sim:
        sim.line.split = True
        sim.line.split_gap_s = 0.004
        async with _running(sim) as (poller, events):
            got = await collect_until(events, _each_read(3))
    assert not _faults(got)
    assert poller.counters["bad_responses"] == poller.counters["timeouts"] == 0
    powers = [r.power_w for r in _readings(got, "m-1-102")]
    assert len(powers) >= 3 and powers == [pytest.approx(320.5)] * len(powers)


@pytest.mark.parametrize("transport", ALL)
async def test_slow_meters(transport: Transport) -> None:
    async with _sim(transport) as sim:
        sim.set_mode(1, "slow", delay_s=0.03)  # slow but within the 0.1 s timeout
        sim.set_mode(2, "slow", delay_s=0.15)  # too slow: its late replies must not be mixed up
        async with _running(sim, timeout_s=0.1) as (poller, events):
            got = await collect_until(
                events,
                lambda seen: bool(_faults(seen)) and _each_read(5, [METERS[0], METERS[2]])(seen),
            )
    assert [(f.device_id, f.fault) for f in _faults(got)] == [("m-1-102", "timeout")]
    # every reading carries its own meter's values (a late reply never answers another request)
    assert {round(r.power_w, 3) for r in _readings(got, "m-1-101")} == {1500.0}
    assert {round(r.power_w, 3) for r in _readings(got, "m-1-201")} == {42.0}
    assert poller.device_counters()["m-1-101"]["timeouts"] == 0


# -- the bus itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "rtu-tcp"])
async def test_unreachable_endpoint_then_reconnect_after_a_drop(transport: Transport) -> None:
    port = free_port()
    scheme = "tcp" if transport == "tcp" else "socket"
    link = ModbusLink(parse_link_url(f"{scheme}://127.0.0.1:{port}"))
    poller = ModbusMeterPoller(
        link=link, meters=METERS, interval_s=0.05, timeout_s=0.2, reconnect_initial_s=0.05
    )
    async with aclosing(poller.events()) as events:
        # nothing listens yet: every meter is unreachable, reported once each
        got = await collect_until(events, lambda seen: len(seen) >= 3)
        assert {(e.device_id, e.fault) for e in _faults(got)} == {
            (m.meter_id, "unreachable") for m in METERS
        }
        async with _sim(transport, port=port) as sim:
            back = await collect_until(events, _each_read(1))
            assert {(e.device_id, e.active) for e in _faults(back)} == {
                (m.meter_id, False) for m in METERS
            }
            # the endpoint drops every connection and comes back on the same port
            await sim.pause()
            dropped = await collect_until(events, lambda seen: len(_faults(seen)) >= 3)
            assert {(e.device_id, e.fault) for e in _faults(dropped)} == {
                (m.meter_id, "unreachable") for m in METERS
            }
            await sim.resume()
            await collect_until(events, _each_read(1))
    assert poller.counters["reconnects"] >= 2


async def test_dead_rs485_line_times_out_every_meter_then_recovers() -> None:
    """A cut cable or swapped A/B on a serial bus: every meter times out, the port stays open."""
    async with _sim("rtu-pty") as sim, _running(sim, timeout_s=0.1) as (poller, events):
        await collect_until(events, _each_read(1))
        await sim.pause()
        dead = await collect_until(events, lambda seen: len(_faults(seen)) >= 3)
        assert {(f.device_id, f.fault) for f in _faults(dead)} == {
            (m.meter_id, "timeout") for m in METERS
        }
        await sim.resume()
        back = await collect_until(events, lambda seen: len(_faults(seen)) >= 3, timeout=5)
    assert {(f.device_id, f.active) for f in _faults(back)} == {(m.meter_id, False) for m in METERS}
    assert poller.counters["reconnects"] == 0


async def test_missing_serial_port_is_unreachable() -> None:
    link = ModbusLink(RtuSerialPort("/dev/does-not-exist-ttyUSB9"))
    poller = ModbusMeterPoller(link=link, meters=METERS[:2], reconnect_initial_s=0.01)
    async with aclosing(poller.events()) as events:
        got = await collect_until(events, lambda seen: len(seen) >= 2)
    assert [(f.device_id, f.fault) for f in _faults(got)] == [
        ("m-1-101", "unreachable"),
        ("m-1-102", "unreachable"),
    ]
    assert "cannot open /dev/does-not-exist-ttyUSB9" in got[0].detail  # type: ignore[union-attr]


async def test_wire_trace_hook_sees_every_frame() -> None:
    frames: list[tuple[str, bytes]] = []
    async with _sim("rtu-tcp") as sim:
        link = ModbusLink(parse_link_url(sim.url), trace=lambda d, b: frames.append((d, b)))
        poller = ModbusMeterPoller(link=link, meters=[METERS[0]], interval_s=1.0)
        async with aclosing(poller.events()) as events:
            await collect_until(events, lambda seen: len(seen) >= 1)
    assert frames[0] == ("tx", encode_read_request(1, 3, 0x2000, 16))
    assert [d for d, _ in frames[:2]] == ["tx", "rx"]
    assert frames[1][1][:3] == bytes.fromhex("010320")  # slave 1, fc 3, 32 bytes


async def test_tcp_shorthand_keeps_working() -> None:
    async with _sim() as sim:
        poller = ModbusTcpMeterPoller(
            host="127.0.0.1", port=sim.port, meters=METERS, interval_s=0.05
        )
        assert poller.name == f"modbus-tcp:127.0.0.1:{sim.port}"
        async with aclosing(poller.events()) as events:
            got = await collect_until(events, _each_read(1))
    assert not _faults(got)


async def test_cancelling_the_consumer_stops_the_poller() -> None:
    async with _sim() as sim:
        poller = _poller(sim)

        async def consume() -> None:
            async for _ in poller.events():
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert poller.counters["reads_ok"] >= 3


# -- one dead meter must not stall the bus ------------------------------------------------------


async def test_one_of_16_meters_stops_answering_the_others_keep_their_rate() -> None:
    """16 meters at 0.25 s on a bus where every reply takes 4 ms (about what 9600 baud costs),
    so the bus is about half busy. Meter 16 goes silent (0.3 s timeout, the default): without
    quarantine it would eat more bus time than there is. The 15 others' reads per second after
    it goes silent must stay at least 90 % of what they were before, within this one run."""
    interval = 0.25
    loads: Mapping[int, Callable[[float], float]] = {
        s: constant_load(100.0 * s) for s in range(1, 17)
    }
    meters = [MeterSpec(f"m-{s}", s) for s in range(1, 17)]
    async with ModbusMeterSim(loads, transport="rtu-tcp") as sim:
        for s in range(1, 17):
            sim.set_mode(s, "slow", delay_s=0.004)
        link = ModbusLink(parse_link_url(sim.url))
        poller = ModbusMeterPoller(link=link, meters=meters, interval_s=interval, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        stamps: list[tuple[float, str]] = []

        async def record() -> None:
            async for e in poller.events():
                if isinstance(e, MeterReading):
                    stamps.append((loop.time(), e.meter_id))

        task = asyncio.create_task(record())
        try:
            await asyncio.sleep(0.3)  # settle
            t0 = loop.time()
            await asyncio.sleep(1.5)
            t1 = loop.time()
            sim.set_mode(16, "silent")
            await asyncio.sleep(2.5)
            t2 = loop.time()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    healthy = {f"m-{s}" for s in range(1, 16)}

    def rate(a: float, b: float) -> float:
        return sum(1 for t, m in stamps if a <= t < b and m in healthy) / (b - a)

    before, after = rate(t0, t1), rate(t1, t2)
    assert before > 0.9 * 15 / interval  # the baseline itself is (nearly) the full rate
    assert after >= 0.9 * before, (before, after)
    dead = poller.device_counters()["m-16"]
    assert dead["timeouts"] <= 3 and dead["quarantined"] >= 3  # not 10 (once per interval)
    assert poller.device_status()["m-16"].fault == "timeout"


@pytest.mark.parametrize(
    ("meters", "message"),
    [
        pytest.param([MeterSpec("a", 1), MeterSpec("a", 2)], "duplicate", id="duplicate-id"),
        pytest.param([MeterSpec("a", 1), MeterSpec("b", 1)], "share slave 1", id="same-slave"),
        pytest.param([MeterSpec("a", 300)], "slave", id="bad-slave"),
        pytest.param([MeterSpec("a", 0)], "slave", id="broadcast-slave"),
        pytest.param([MeterSpec("a", 1, "sdm999")], "unknown profile", id="unknown-profile"),
        pytest.param([MeterSpec("a", 1, function_code=6)], "function code", id="bad-fc"),
        pytest.param([MeterSpec("a", 1, interval_s=0)], "positive", id="bad-interval"),
        pytest.param([], "at least one meter", id="no-meters"),
    ],
)
def test_bad_configuration_is_refused(meters: list[MeterSpec], message: str) -> None:
    with pytest.raises(DriverConfigError, match=message):
        ModbusTcpMeterPoller(host="127.0.0.1", port=502, meters=meters)


async def test_consuming_helper_with_a_poller_on_a_pty() -> None:
    """The driver's stream works with the agent's way of consuming (a background task)."""
    async with _sim("rtu-pty") as sim:
        poller = _poller(sim)
        async with consuming(poller.events()) as c:
            got = await c.until(_each_read(2))
    assert sim.path.startswith("/dev/")
    assert all(isinstance(e, MeterReading) for e in got)
