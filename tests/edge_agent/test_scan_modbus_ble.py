"""The installer's scans against the simulators: which Modbus slaves answer and what they are,
which BTHome sensors are heard; and the config snippets they render are valid agent config."""

from __future__ import annotations

import asyncio
import tomllib
from contextlib import aclosing

import pytest

from contract.events import MeterReading
from drivers.ble_charging import FeedAdvertSource
from edge_agent.config import BleConfig, ModbusBusConfig
from edge_agent.drivers import build_modbus
from edge_agent.scan_ble import scan_ble
from edge_agent.scan_modbus import ScanError, scan_modbus
from firmware_sim.ble_feed import BleFeedServer
from firmware_sim.modbus_meters import ModbusMeterSim, Transport, constant_load
from tests.drivers.helpers import collect_until, wait_for

LOADS = {1: constant_load(850.0), 3: constant_load(120.0), 5: constant_load(2400.0)}
PROFILES = {1: "ddsu666", 3: "sdm120", 5: "sdm630"}


@pytest.mark.parametrize("transport", ["rtu-pty", "rtu-tcp", "tcp"])
async def test_scan_finds_each_meter_and_its_profile(transport: Transport) -> None:
    progress: list[tuple[int, int]] = []
    async with ModbusMeterSim(LOADS, profile=PROFILES, transport=transport) as sim:
        result = await scan_modbus(
            sim.url,
            9600,
            ids=range(1, 8),
            timeout_s=0.05,
            progress=lambda d, t: progress.append((d, t)),
        )
        snippet = result.as_config_snippet(interval_s=0.05)
        # the snippet is a working config: build the driver from it and read every meter
        (bus_table,) = tomllib.loads(snippet)["modbus"]
        bus = ModbusBusConfig.model_validate(bus_table)
        poller = build_modbus(bus)
        async with aclosing(poller.events()) as events:
            got = await collect_until(
                events,
                lambda seen: len({e.meter_id for e in seen if isinstance(e, MeterReading)}) == 3,
            )
    assert [(m.slave, m.profile) for m in result.meters] == [
        (1, "ddsu666"),
        (3, "sdm120"),
        (5, "sdm630"),
    ]
    powers = {m.slave: m.values.power_w for m in result.meters if m.values is not None}
    assert powers == {1: pytest.approx(850.0), 3: pytest.approx(120.0), 5: pytest.approx(2400.0)}
    assert result.counters == {"answered": 3, "timeouts": 4, "bad_responses": 0, "unrecognised": 0}
    assert progress == [(i, 7) for i in range(1, 8)]
    assert result.hints() == []
    assert [m.meter_id for m in bus.meters] == ["m-slave-1", "m-slave-3", "m-slave-5"]
    assert {e.meter_id: round(e.power_w) for e in got if isinstance(e, MeterReading)} == {
        "m-slave-1": 850,
        "m-slave-3": 120,
        "m-slave-5": 2400,
    }


async def test_scan_of_a_dead_bus_says_what_to_check() -> None:
    async with ModbusMeterSim(LOADS, profile=PROFILES, transport="rtu-pty") as sim:
        await sim.pause()  # a cut cable, or A and B swapped
        result = await scan_modbus(sim.url, ids=range(1, 4), timeout_s=0.03)
    assert result.meters == () and result.counters["timeouts"] == 3
    (hint,) = result.hints()
    assert "swap A and B" in hint
    assert "# no meter recognised" in result.as_config_snippet()


async def test_scan_with_garbled_replies_says_baud_rate_or_duplicate_address() -> None:
    async with ModbusMeterSim(LOADS, profile=PROFILES, transport="rtu-tcp") as sim:
        sim.line.corrupt_rate = 1.0  # every reply fails its CRC, as at the wrong baud rate
        result = await scan_modbus(sim.url, ids=[1, 2, 3], timeout_s=0.03)
    assert result.garbled == (1, 3) and result.counters["bad_responses"] == 2
    assert any("two meters share an address" in h for h in result.hints())


async def test_scan_of_a_missing_port() -> None:
    with pytest.raises(ScanError, match="is the adapter plugged in"):
        await scan_modbus("/dev/does-not-exist-ttyUSB7", ids=[1])
    with pytest.raises(ScanError, match=r"1\.\.247"):
        await scan_modbus("tcp://127.0.0.1:1", ids=[0])


async def test_ble_scan_lists_sensors_and_renders_config() -> None:
    key = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    async with BleFeedServer(interval_s=0.05, seed=2) as feed:
        plain = feed.add_sensor("A4:C1:38:AA:00:01")
        locked = feed.add_sensor("A4:C1:38:AA:00:02", bindkey=key)
        keyed = feed.add_sensor("A4:C1:38:AA:00:03", bindkey=key)
        plain.set(True, 150.0)
        locked.set(True, 90.0)
        keyed.set(False, 0.0)
        source = FeedAdvertSource("127.0.0.1", feed.port)
        progress: list[float] = []

        async def stranger() -> None:
            await wait_for(lambda: feed.client_count == 1)
            feed.broadcast(
                {
                    "mac": "11:22:33:44:55:66",
                    "service_data": {"0000181a-0000-1000-8000-00805f9b34fb": "00"},
                }
            )

        task = asyncio.create_task(stranger())
        result = await scan_ble(
            0.6,
            source,
            bindkeys={"A4:C1:38:AA:00:03": key},
            progress=lambda e, t: progress.append(e),
        )
        await task
    by_mac = {s.mac: s for s in result.sensors}
    assert set(by_mac) == {"A4:C1:38:AA:00:01", "A4:C1:38:AA:00:02", "A4:C1:38:AA:00:03"}
    assert by_mac["A4:C1:38:AA:00:01"].values["power"] == pytest.approx(150.0)
    assert by_mac["A4:C1:38:AA:00:01"].values["battery_charging"] is True
    assert not by_mac["A4:C1:38:AA:00:01"].encrypted
    assert by_mac["A4:C1:38:AA:00:02"].encrypted and by_mac["A4:C1:38:AA:00:02"].values == {}
    assert by_mac["A4:C1:38:AA:00:03"].decrypted is True
    assert by_mac["A4:C1:38:AA:00:03"].values["battery_charging"] is False
    assert all(s.adverts >= 3 and -95 < s.rssi < -40 for s in result.sensors)
    assert result.other_devices == 1
    assert progress[0] < 0.1 and progress[-1] == 0.6
    assert any("A4:C1:38:AA:00:02" in h and "bindkey" in h for h in result.hints)
    snippet = result.as_config_snippet(source="feed://127.0.0.1:1")
    assert "231d39c1" not in snippet  # keys are never printed
    ble = BleConfig.model_validate(tomllib.loads(snippet)["ble"])
    assert [(s.sensor_id, s.mac) for s in ble.sensors] == [
        (s.sensor_id, s.mac)
        for s in result.sensors  # strongest first
    ]
    assert snippet.count("# bindkey =") == 2
