"""BLE charging sensors: BTHome adverts in bleak's own types, from a script and from the feed.

There is no radio here. Adverts enter at bleak's boundary (the detection callback, with
``BLEDevice`` / ``AdvertisementData`` objects): from a scripted source, or from the simulator's
TCP advert feed through :class:`FeedAdvertSource`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from contract.events import ChargingSensorReading
from drivers.ble_charging import (
    BTHOME_UUID,
    AdvertCallback,
    BadFeedLine,
    BleChargingSensors,
    FeedAdvertSource,
    advert_from_json,
)
from firmware_sim.ble_feed import BleFeedServer
from firmware_sim.bthome import service_data
from tests.drivers.helpers import StepClock, collect_until, consuming, wait_for

MAC_A = "A4:C1:38:AA:00:01"
MAC_B = "A4:C1:38:AA:00:02"
MAC_STRANGER = "11:22:33:44:55:66"
SENSORS = {MAC_A: "ble-a4c138aa0001", MAC_B: "ble-a4c138aa0002"}


def _advert(
    mac: str, data: bytes | None, *, uuid: str = BTHOME_UUID
) -> tuple[BLEDevice, AdvertisementData]:
    sd = {} if data is None else {uuid: data}
    return BLEDevice(mac, "BTHome", None), AdvertisementData(
        local_name="BTHome",
        manufacturer_data={},
        service_data=sd,
        service_uuids=[],
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )


class ScriptedSource:
    """Stands in for the radio: delivers scripted adverts to the callback once entered."""

    def __init__(self, adverts: list[tuple[BLEDevice, AdvertisementData]]) -> None:
        self.adverts = adverts

    @asynccontextmanager
    async def scan(self, callback: AdvertCallback) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        for device, advert in self.adverts:
            loop.call_soon(callback, device, advert)
        yield


# -- the feed line format (pure) -------------------------------------------------------------


def test_feed_line_becomes_bleak_objects() -> None:
    line = json.dumps(
        {
            "mac": "a4:c1:38:aa:00:01",
            "rssi": -61,
            "local_name": "BTHome 0001",
            "service_data": {BTHOME_UUID.upper(): "4000050b824600"},
        }
    )
    device, advert = advert_from_json(line)
    assert isinstance(device, BLEDevice) and isinstance(advert, AdvertisementData)
    assert (device.address, device.name) == (MAC_A, "BTHome 0001")
    assert advert == AdvertisementData(
        local_name="BTHome 0001",
        manufacturer_data={},
        service_data={BTHOME_UUID: bytes.fromhex("4000050b824600")},
        service_uuids=[BTHOME_UUID],
        tx_power=None,
        rssi=-61,
        platform_data=(),
    )


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[1, 2]", id="not-object"),
        pytest.param(b'{"rssi": -60}', id="no-mac"),
        pytest.param(b'{"mac": "A4:C1:38:AA:00"}', id="short-mac"),
        pytest.param(b'{"mac": "A4:C1:38:AA:00:01", "rssi": "loud"}', id="rssi-not-int"),
        pytest.param(b'{"mac": "A4:C1:38:AA:00:01", "service_data": {"x": "zz"}}', id="bad-hex"),
        pytest.param(b'{"mac": "A4:C1:38:AA:00:01", "service_data": []}', id="sd-not-object"),
        pytest.param(b'{"mac": "A4:C1:38:AA:00:01", "local_name": 5}', id="name-not-str"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_malformed_feed_lines(line: bytes) -> None:
    with pytest.raises(BadFeedLine):
        advert_from_json(line)


# -- the driver over scripted adverts -----------------------------------------------------------


async def test_charging_power_unknown_macs_duplicates_and_junk() -> None:
    clock = StepClock(step_s=0.5)
    on = service_data(packet_id=1, battery_pct=90, power_w=182.5, charging=True)
    adverts = [
        _advert(MAC_A, on),
        _advert(MAC_A, on),  # the same packet again: collapsed
        _advert(MAC_STRANGER, on),  # not ours: ignored
        _advert(MAC_B, None),  # no service data
        _advert(MAC_B, b"\x40\x00\x07", uuid="0000181a-0000-1000-8000-00805f9b34fb"),  # not BTHome
        _advert(MAC_B, service_data(packet_id=7, battery_pct=50)),  # no charging object
        _advert(MAC_B, b"\x40\x0b\x01"),  # truncated power object
        _advert(MAC_A.lower(), service_data(packet_id=2, power_w=0.0, charging=False)),
        _advert(MAC_B, service_data(packet_id=9, charging=True)),  # charging, no power object
    ]
    driver = BleChargingSensors(sensors=SENSORS, source=ScriptedSource(adverts), clock=clock)
    async with aclosing(driver.events()) as events:
        got = await collect_until(events, lambda seen: len(seen) >= 3)
    assert got == [
        ChargingSensorReading(got[0].ts, "ble-a4c138aa0001", True, 182.5),
        ChargingSensorReading(got[1].ts, "ble-a4c138aa0001", False, 0.0),
        ChargingSensorReading(got[2].ts, "ble-a4c138aa0002", True, None),
    ]
    assert driver.counters.snapshot() == {
        "adverts": 9,
        "readings": 3,
        "unknown_mac": 1,
        "unparseable": 4,
        "duplicates": 1,
        "decrypt_failed": 0,
        "replayed": 0,
        "dropped": 0,
        "scanner_restarts": 0,
    }
    status = driver.device_status()
    assert status["ble-a4c138aa0001"].online and status["ble-a4c138aa0002"].online


async def test_same_packet_after_the_dedupe_window_counts_again() -> None:
    clock = StepClock(step_s=10.0)  # every advert 10 s after the previous one
    on = service_data(packet_id=1, power_w=150.0, charging=True)
    driver = BleChargingSensors(
        sensors=SENSORS, source=ScriptedSource([_advert(MAC_A, on)] * 2), clock=clock
    )
    async with aclosing(driver.events()) as events:
        got = await collect_until(events, lambda seen: len(seen) >= 2)
    assert [(r.charging, r.power_w) for r in got] == [(True, 150.0), (True, 150.0)]


async def test_sensor_silent_for_long_is_offline() -> None:
    clock = StepClock(step_s=400.0)
    driver = BleChargingSensors(sensors=SENSORS, source=ScriptedSource([]), clock=clock)
    assert not driver.device_status()["ble-a4c138aa0001"].online


# -- through the simulator's advert feed --------------------------------------------------------


def _last_from(sensor_id: str, charging: bool, power_w: float | None = None):  # type: ignore[no-untyped-def]
    def done(seen: list[ChargingSensorReading]) -> bool:
        return any(
            r.sensor_id == sensor_id
            and r.charging is charging
            and (power_w is None or r.power_w == pytest.approx(power_w))
            for r in seen
        )

    return done


async def test_feed_charging_on_and_off_arrives_with_power() -> None:
    async with BleFeedServer(interval_s=0.2, seed=3) as feed:
        a = feed.add_sensor(MAC_A)
        feed.add_sensor(MAC_B)
        stranger = feed.add_sensor(MAC_STRANGER)
        source = FeedAdvertSource("127.0.0.1", feed.port)
        driver = BleChargingSensors(sensors=SENSORS, source=source)
        async with consuming(driver.events()) as c:
            await wait_for(lambda: feed.client_count == 1, what="feed client")
            a.set(True, 181.3)
            stranger.set(True, 99.0)
            on = await c.until(_last_from(SENSORS[MAC_A], True, 181.3))
            a.set(False, 0.0)
            off = await c.until(_last_from(SENSORS[MAC_A], False, 0.0))
            duplicates = driver.counters["duplicates"]
            a.advertise(repeat=3)  # one packet heard three times
            await wait_for(lambda: driver.counters["duplicates"] >= duplicates + 2)
            # the sensors re-advertise every interval: the idle one is heard too
            idle = await c.until(lambda seen: any(r.sensor_id == SENSORS[MAC_B] for r in seen))
    assert driver.counters["adverts"] == source.counters["lines"]
    charging = [r for r in on if r.sensor_id == SENSORS[MAC_A] and r.charging]
    assert charging[0].power_w == pytest.approx(181.3)
    assert [r.power_w for r in off if r.sensor_id == SENSORS[MAC_A] and not r.charging][-1] == 0.0
    assert {r.sensor_id for r in idle} == set(SENSORS.values())
    assert not [r for r in idle if r.sensor_id == SENSORS[MAC_B] and r.charging]
    assert driver.counters["unknown_mac"] >= 1


async def test_feed_drop_reconnects_and_bad_lines_are_skipped() -> None:
    async with BleFeedServer(interval_s=0.1, seed=4) as feed:
        a = feed.add_sensor(MAC_A)
        source = FeedAdvertSource("127.0.0.1", feed.port, backoff_initial_s=0.05)
        driver = BleChargingSensors(sensors=SENSORS, source=source)
        async with consuming(driver.events()) as c:
            await wait_for(lambda: feed.client_count == 1, what="feed client")
            feed.broadcast(b"this is not json\n")
            feed.broadcast({"mac": MAC_A, "service_data": {BTHOME_UUID: "not hex"}})
            a.set(True, 120.0)
            await c.until(_last_from(SENSORS[MAC_A], True, 120.0))
            await feed.drop_clients()
            await wait_for(lambda: source.counters["reconnects"] >= 1, what="reconnect")
            await wait_for(lambda: feed.client_count == 1, what="feed client back")
            a.set(True, 130.0)
            got = await c.until(_last_from(SENSORS[MAC_A], True, 130.0))
    assert got[-1] == ChargingSensorReading(got[-1].ts, "ble-a4c138aa0001", True, 130.0)
    assert source.counters["bad_lines"] == 2
