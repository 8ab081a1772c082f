"""Dlt645Poller against the simulated meter bus, on a real pty and over socket://, with faults."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from contract.events import DeviceFault, MeterReading
from drivers.base import DriverConfigError
from drivers.dlt645 import DI_VOLTAGE_A, Dlt645MeterSpec, Dlt645Poller
from firmware_sim.dlt645_meter import Dlt645BusSim, SimMeter
from tests.drivers.helpers import StepClock, collect_until

A1, A2, A3 = "000000123456", "000000000002", "201907150003"


def _meters() -> list[SimMeter]:
    return [
        SimMeter(A1, lambda t: 180.5, energy_kwh=1234.56, power_factor=0.62),
        SimMeter(A2, lambda t: 2000.0),
        SimMeter(A3, lambda t: 35.3),  # the meter resolves 0.1 W
    ]


def _poller(url: str, **kw: object) -> Dlt645Poller:
    options: dict[str, object] = {"interval_s": 0.05, "timeout_s": 0.3, "clock": StepClock()}
    options.update(kw)
    return Dlt645Poller(
        url=url,
        meters=[Dlt645MeterSpec("m1", A1), Dlt645MeterSpec("m2", A2), Dlt645MeterSpec("m3", A3)],
        **options,  # type: ignore[arg-type]
    )


def _readings(events: list[MeterReading | DeviceFault], meter: str) -> list[MeterReading]:
    return [e for e in events if isinstance(e, MeterReading) and e.meter_id == meter]


def _faults(events: list[MeterReading | DeviceFault]) -> list[tuple[str, str, bool]]:
    return [(e.device_id, e.fault, e.active) for e in events if isinstance(e, DeviceFault)]


async def _first_cycle(
    events: AsyncIterator[MeterReading | DeviceFault],
) -> list[MeterReading | DeviceFault]:
    return await collect_until(events, lambda seen: len(seen) >= 3)


@pytest.mark.parametrize("tcp", [False, True], ids=["pty", "socket"])
async def test_every_meter_is_read(tcp: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with Dlt645BusSim(_meters(), tcp=tcp) as bus:
        assert bus.url.startswith("socket://" if tcp else "/dev/")
        poller = _poller(bus.url)
        async with aclosing(poller.events()) as events:
            got = await _first_cycle(events)
    assert [e.meter_id for e in got if isinstance(e, MeterReading)] == ["m1", "m2", "m3"]
    m1, m2, m3 = (_readings(got, m)[0] for m in ("m1", "m2", "m3"))
    assert m1.power_w == 180.5
    assert m1.energy_kwh == pytest.approx(1234.56, abs=0.011)
    assert m1.power_factor == 0.62
    assert m1.voltage_v is not None and 217 <= m1.voltage_v <= 223
    assert m1.current_a == pytest.approx(180.5 / (m1.voltage_v * 0.62), abs=0.002)
    assert m2.power_w == 2000.0 and m3.power_w == 35.3
    assert poller.counters.snapshot() == {
        "frames_ok": 15,  # 3 meters x 5 data identifiers
        "readings": 3,
        "bad_checksum": 0,
        "resync": 0,
        "bad_data": 0,
        "timeouts": 0,
        "error_replies": 0,
        "unexpected": 0,
        "retries": 0,
        "reopen": 0,
    }
    assert poller.device_status()["m3"].online
    if not tcp:
        assert "refuses parity E" in caplog.text  # a pty has no line: opened without parity


async def test_garbage_split_replies_and_bad_checksums_are_survived() -> None:
    async with Dlt645BusSim(_meters()) as bus:
        poller = _poller(bus.url)
        bus.garbage_next(2)
        bus.split_next(2)
        bus.corrupt_next(1)
        async with aclosing(poller.events()) as events:
            got = await _first_cycle(events)
    assert [e.meter_id for e in got if isinstance(e, MeterReading)] == ["m1", "m2", "m3"]
    assert not _faults(got)
    c = poller.counters
    assert (c["resync"], c["bad_checksum"], c["retries"], c["timeouts"]) == (2, 1, 1, 0)
    assert c["frames_ok"] == 15
    assert bus.faults == {"garbage": 2, "split": 2, "corrupt": 1}


async def test_a_silent_meter_faults_once_does_not_stall_the_others_and_recovers() -> None:
    async with Dlt645BusSim(_meters(), tcp=True) as bus:
        bus.silence(A2)
        poller = _poller(bus.url)
        loop = asyncio.get_running_loop()
        async with aclosing(poller.events()) as events:
            started = loop.time()
            got = await collect_until(
                events,
                lambda seen: len(_readings(seen, "m1")) >= 3 and len(_readings(seen, "m3")) >= 3,
            )
            elapsed = loop.time() - started
            assert not poller.device_status()["m2"].online
            bus.silence(A2, False)
            got += await collect_until(events, lambda seen: bool(_readings(seen, "m2")))
    # one timeout per cycle for the dead meter, and only one (its other reads are skipped)
    assert elapsed < 3 * (0.3 + 0.05) + 0.5
    assert _faults(got) == [("m2", "timeout", True), ("m2", "timeout", False)]
    assert poller.counters["timeouts"] >= 3
    assert _readings(got, "m2")[0].power_w == 2000.0


async def test_error_replies() -> None:
    async with Dlt645BusSim(_meters()) as bus:
        bus.error_next(A1, 0x02, di=DI_VOLTAGE_A)  # an optional value: just left out
        bus.error_next(A3, 0x04)  # the power read itself: a fault
        poller = _poller(bus.url)
        async with aclosing(poller.events()) as events:
            got = await collect_until(events, lambda seen: len(_readings(seen, "m3")) >= 1)
    m1 = _readings(got, "m1")[0]
    assert m1.voltage_v is None and m1.power_w == 180.5 and m1.energy_kwh is not None
    faults = [e for e in got if isinstance(e, DeviceFault)]
    assert [(f.device_id, f.fault, f.active) for f in faults] == [
        ("m3", "error_reply", True),
        ("m3", "error_reply", False),
    ]
    assert "0x04" in faults[0].detail and "password" in faults[0].detail
    assert poller.counters["error_replies"] == 2


async def test_late_and_foreign_replies_are_ignored() -> None:
    async with Dlt645BusSim(_meters()) as bus:
        poller = _poller(bus.url, trace_frame=lambda d, raw: trace.append((d, raw)))
        trace: list[tuple[str, bytes]] = []
        async with aclosing(poller.events()) as events:
            await collect_until(events, lambda seen: len(seen) >= 1)
            # a reply nobody asked for (another meter's late answer) arrives mid-transaction
            await bus.send_raw(
                bytes.fromhex("fe fe 68 99 99 99 99 99 99 68 91 06 33 34 34 35 34 55") + b"\x00\x16"
            )
            await collect_until(events, lambda seen: len(seen) >= 5)
    assert poller.counters["frames_ok"] >= 25
    assert poller.counters["bad_checksum"] + poller.counters["unexpected"] >= 1
    assert trace[0] == (
        "tx",
        bytes.fromhex("fe fe fe fe 68 56 34 12 00 00 00 68 11 04 33 33 36 35 52 16"),
    )
    assert any(d == "rx" for d, _ in trace)


async def test_random_faults_never_deliver_a_wrong_value() -> None:
    async with Dlt645BusSim(_meters(), fault_rate=0.3, rng=random.Random(7)) as bus:
        poller = _poller(bus.url, timeout_s=0.1, interval_s=0.01)
        async with aclosing(poller.events()) as events:
            got = await collect_until(
                events, lambda seen: sum(isinstance(e, MeterReading) for e in seen) >= 12, 20
            )
    expected = {"m1": 180.5, "m2": 2000.0, "m3": 35.3}
    assert all(e.power_w == expected[e.meter_id] for e in got if isinstance(e, MeterReading))
    c = poller.counters
    assert set(bus.faults) <= {"garbage", "split", "corrupt", "drop"} and bus.faults
    assert c["bad_checksum"] == bus.faults.get("corrupt", 0)
    assert c["timeouts"] >= 1 or not bus.faults.get("drop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_bus_faults_every_meter_once_then_reads_when_it_appears() -> None:
    port = _free_port()
    poller = _poller(f"socket://127.0.0.1:{port}", backoff_initial_s=0.05, backoff_max_s=0.1)
    async with aclosing(poller.events()) as events:
        down = await collect_until(events, lambda seen: len(seen) >= 3)
        assert _faults(down) == [(m, "port_unavailable", True) for m in ("m1", "m2", "m3")]
        async with Dlt645BusSim(_meters(), tcp=True, port=port):
            up = await collect_until(events, lambda seen: len(_readings(seen, "m3")) >= 1)
    assert _faults(up) == [(m, "port_unavailable", False) for m in ("m1", "m2", "m3")]
    assert poller.counters["reopen"] >= 1


@pytest.mark.parametrize(
    "meters",
    [
        pytest.param([], id="no-meters"),
        pytest.param([Dlt645MeterSpec("a", "12345")], id="short-address"),
        pytest.param([Dlt645MeterSpec("a", "AAAAAAAAAAAA")], id="broadcast-address"),
        pytest.param([Dlt645MeterSpec("a", A1), Dlt645MeterSpec("a", A2)], id="duplicate-id"),
        pytest.param([Dlt645MeterSpec("a", A1), Dlt645MeterSpec("b", A1)], id="duplicate-address"),
    ],
)
def test_bad_configuration(meters: list[Dlt645MeterSpec]) -> None:
    with pytest.raises(DriverConfigError):
        Dlt645Poller(url="/dev/null", meters=meters)
