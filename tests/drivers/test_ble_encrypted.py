"""Encrypted BTHome v2: the per-sensor decoder (tables and random bytes), and the driver over
the simulator's advert feed with wrong keys, replays, garbage and a feed that goes silent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.events import ChargingSensorReading, DeviceFault
from drivers.base import DriverConfigError
from drivers.ble_charging import (
    BTHOME_UUID,
    SCANNER_ID,
    AdvertCallback,
    BadFeedLine,
    BleChargingSensors,
    BtHomeHeader,
    FeedAdvertSource,
    Rejected,
    SensorDecoder,
    advert_from_json,
    parse_bthome_header,
)
from firmware_sim.ble_feed import BleFeedServer
from firmware_sim.bthome import encrypt, service_data
from tests.drivers.helpers import collect_until, consuming, wait_for

MAC = "A4:C1:38:AA:00:01"
MAC_B = "A4:C1:38:AA:00:02"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
OTHER_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
T0 = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
SENSOR = "ble-a4c138aa0001"

Event = ChargingSensorReading | DeviceFault


def _advert(data: bytes, mac: str = MAC) -> tuple[BLEDevice, AdvertisementData]:
    return BLEDevice(mac, "BTHome", None), AdvertisementData(
        local_name="BTHome",
        manufacturer_data={},
        service_data={BTHOME_UUID: data},
        service_uuids=[BTHOME_UUID],
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )


def _enc(counter: int, *, charging: bool = True, power_w: float = 180.0, key: bytes = KEY) -> bytes:
    plain = service_data(packet_id=counter % 256, power_w=power_w, charging=charging)
    return encrypt(plain, mac=MAC, bindkey=key, counter=counter)


# -- the header ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "header"),
    [
        pytest.param(
            bytes.fromhex("401601"), BtHomeHeader(0x40, False, False, False, None), id="plain"
        ),
        pytest.param(
            bytes.fromhex("441601"), BtHomeHeader(0x44, False, True, False, None), id="trigger"
        ),
        pytest.param(_enc(7), BtHomeHeader(0x41, True, False, False, 7), id="encrypted"),
        pytest.param(
            b"\x42" + bytes(6) + b"\x16\x01",
            BtHomeHeader(0x42, False, False, True, None),
            id="mac-included",
        ),
        pytest.param(b"", None, id="empty"),
        pytest.param(bytes.fromhex("201601"), None, id="version-1"),
        pytest.param(bytes.fromhex("601601"), None, id="version-3"),
        pytest.param(bytes.fromhex("41aabbccdd11223344"), None, id="encrypted-too-short"),
        pytest.param(b"\x42\x01\x02", None, id="mac-included-too-short"),
    ],
)
def test_bthome_header(data: bytes, header: BtHomeHeader | None) -> None:
    assert parse_bthome_header(data) == header


# -- the decoder, advert by advert --------------------------------------------------------------

ON = ChargingSensorReading(T0, SENSOR, True, 180.0)


@pytest.mark.parametrize(
    ("bindkey", "adverts", "outcomes"),
    [
        pytest.param(KEY, [_enc(10)], [ON], id="right-key"),
        pytest.param(
            OTHER_KEY,
            [_enc(10)],
            [Rejected("decrypt_failed", "the MIC does not verify: wrong bindkey?")],
            id="wrong-key",
        ),
        pytest.param(
            KEY,
            [service_data(packet_id=1, power_w=180.0, charging=True)],
            [Rejected("decrypt_failed", "plaintext advert from a sensor with a bindkey")],
            id="plaintext-from-keyed-sensor",
        ),
        pytest.param(
            None,
            [_enc(10)],
            [Rejected("decrypt_failed", "encrypted advert but no bindkey is configured")],
            id="ciphertext-without-key",
        ),
        pytest.param(
            KEY,
            [_enc(10), _enc(11, charging=False), _enc(10)],
            [
                ON,
                ChargingSensorReading(T0, SENSOR, False, 180.0),
                Rejected("replayed", "counter 10 is not above the last one (11)"),
            ],
            id="replayed-older-packet",
        ),
        pytest.param(
            KEY,
            [_enc(10), _enc(10, charging=False)],
            [ON, Rejected("replayed", "counter 10 is not above the last one (10)")],
            id="same-counter-other-content",
        ),
        pytest.param(
            KEY,
            [_enc(10), _enc(10)],
            [ON, Rejected("duplicate", "the same packet again")],
            id="repeated-packet-is-a-duplicate",
        ),
        pytest.param(
            KEY,
            [_enc(10), _enc(12, key=OTHER_KEY), _enc(13, charging=False)],
            [
                ON,
                Rejected("decrypt_failed", "the MIC does not verify: wrong bindkey?"),
                ChargingSensorReading(T0, SENSOR, False, 180.0),
            ],
            id="forged-packet-between-good-ones",
        ),
        pytest.param(
            KEY,
            [_enc(10)[:-1] + bytes([_enc(10)[-1] ^ 1])],
            [Rejected("decrypt_failed", "the MIC does not verify: wrong bindkey?")],
            id="flipped-mic-bit",
        ),
        pytest.param(
            None,
            [bytes.fromhex("4016015c0cfeffff")],  # object 0x5C: signed power, -5.00 W
            [ChargingSensorReading(T0, SENSOR, True, None)],
            id="negative-power-is-not-available",
        ),
        pytest.param(
            None,
            [b"\x40\x0b\x01", b"\x20\x01\x02", b"\xff" * 8],
            [
                Rejected("unparseable", "cut short: object 0x0B at byte 0 needs 3 bytes, 1 left"),
                Rejected("unparseable", "not BTHome v2 service data"),
                Rejected("unparseable", "not BTHome v2 service data"),
            ],
            id="garbage",
        ),
    ],
)
def test_decoder_outcomes(
    bindkey: bytes | None, adverts: list[bytes], outcomes: list[object]
) -> None:
    decoder = SensorDecoder(SENSOR, bindkey=bindkey)
    got = [decoder.feed(*_advert(a), T0) for a in adverts]
    assert got == outcomes


def test_counter_may_restart_only_after_a_long_silence() -> None:
    decoder = SensorDecoder(SENSOR, bindkey=KEY, counter_restart_after_s=600)
    assert decoder.feed(*_advert(_enc(5000)), T0) == ON
    assert isinstance(
        decoder.feed(*_advert(_enc(3, charging=False)), T0 + timedelta(seconds=60)), Rejected
    )
    later = T0 + timedelta(seconds=900)  # a battery change: the sensor starts counting again
    assert decoder.feed(*_advert(_enc(4, charging=False)), later) == ChargingSensorReading(
        later, SENSOR, False, 180.0
    )
    assert decoder.last_counter == 4


def test_bindkeys_must_be_16_bytes_and_belong_to_sensors() -> None:
    with pytest.raises(DriverConfigError, match="16 bytes"):
        SensorDecoder(SENSOR, bindkey=b"short")
    with pytest.raises(DriverConfigError, match="not sensors"):
        BleChargingSensors(sensors={MAC: SENSOR}, source=_Silent(), bindkeys={MAC_B: KEY})


# -- random bytes: nothing escapes, nothing invalid is delivered --------------------------------


_PLAIN = SensorDecoder("fuzz-plain")
_KEYED = SensorDecoder("fuzz-keyed", bindkey=KEY)


@settings(max_examples=10_000, deadline=None)
@given(raw=st.binary(max_size=40), step=st.integers(0, 10_000))
def test_bthome_path_on_random_bytes(raw: bytes, step: int) -> None:
    """Random service data into both decoders (parser state carried across examples, as on air)
    and random bytes into the feed-line parser."""
    ts = T0 + timedelta(seconds=step)
    device, advert = _advert(raw)
    quiet = logging.getLogger("bthome_ble")  # it warns on every failed decryption
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        _feed_both(device, advert, ts)
    finally:
        quiet.setLevel(level)
    with contextlib.suppress(BadFeedLine):
        advert_from_json(raw)


def _feed_both(device: BLEDevice, advert: AdvertisementData, ts: datetime) -> None:
    plain = _PLAIN.feed(device, advert, ts)
    if isinstance(plain, ChargingSensorReading):
        assert isinstance(plain.charging, bool) and plain.sensor_id == "fuzz-plain"
        assert plain.power_w is None or (math.isfinite(plain.power_w) and plain.power_w >= 0)
    else:
        assert isinstance(plain, Rejected)
    keyed = _KEYED.feed(device, advert, ts)
    assert isinstance(keyed, Rejected)  # random bytes never carry a valid MIC
    assert keyed.reason in ("unparseable", "duplicate", "decrypt_failed", "replayed")


# -- the driver over the feed -------------------------------------------------------------------


class _Silent:
    @asynccontextmanager
    async def scan(self, callback: AdvertCallback) -> AsyncIterator[None]:
        yield


def _readings(seen: list[Event]) -> list[ChargingSensorReading]:
    return [e for e in seen if isinstance(e, ChargingSensorReading)]


def _faults(seen: list[Event], device: str | None = None) -> list[DeviceFault]:
    return [e for e in seen if isinstance(e, DeviceFault) and device in (None, e.device_id)]


async def test_encrypted_sensor_wrong_key_replay_and_garbage_over_the_feed() -> None:
    async with BleFeedServer(interval_s=0.1, seed=5) as feed:
        sensor = feed.add_sensor(MAC, bindkey=KEY)
        source = FeedAdvertSource("127.0.0.1", feed.port)
        driver = BleChargingSensors(
            sensors={MAC: SENSOR, MAC_B: "ble-b"}, bindkeys={MAC: KEY}, source=source
        )
        async with consuming(driver.events()) as c:
            await wait_for(lambda: feed.client_count == 1, what="feed client")
            sensor.set(True, 176.5)
            await c.until(
                lambda seen: any(r.power_w == pytest.approx(176.5) for r in _readings(seen))
            )

            sensor.advertise_with_key(OTHER_KEY)
            await c.until(lambda seen: bool(_faults(seen, SENSOR)))
            await c.until(lambda seen: len(_faults(seen, SENSOR)) >= 2)  # cleared by the next one

            await wait_for(lambda: len(sensor.sent) >= 5, what="a few packets to replay")
            sensor.replay(back=3)
            await c.until(lambda seen: len(_faults(seen, SENSOR)) >= 3)
            await c.until(lambda seen: len(_faults(seen, SENSOR)) >= 4)

            sensor.advertise_garbage(b"\x41\x00\x01")  # "encrypted", too short to be
            sensor.advertise_garbage(b"\xff\xfe\xfd")  # not BTHome v2 at all
            n = driver.counters["readings"]
            await wait_for(lambda: driver.counters["readings"] >= n + 2)
            seen = list(c.seen)
    assert [(f.fault, f.active) for f in _faults(seen, SENSOR)][:4] == [
        ("decrypt_failed", True),
        ("decrypt_failed", False),
        ("replayed", True),
        ("replayed", False),
    ]
    assert _faults(seen, SENSOR)[0].detail == "the MIC does not verify: wrong bindkey?"
    assert driver.counters["decrypt_failed"] == 1
    assert driver.counters["replayed"] == 1
    assert driver.counters["unparseable"] >= 2
    # everything delivered is the sensor's own, decrypted state (idle before set(), then on)
    assert {(r.sensor_id, r.charging, r.power_w) for r in _readings(seen)} <= {
        (SENSOR, False, 0.0),
        (SENSOR, True, 176.5),
    }
    assert driver.device_status()[SENSOR].online


async def test_watchdog_restarts_a_silent_scanner_and_reports_it() -> None:
    async with BleFeedServer(interval_s=0.05, seed=6) as feed:
        feed.add_sensor(MAC)
        source = FeedAdvertSource("127.0.0.1", feed.port, backoff_initial_s=0.02)
        driver = BleChargingSensors(sensors={MAC: SENSOR}, source=source, watchdog_s=0.3)
        async with consuming(driver.events()) as c:
            await c.until(lambda seen: bool(_readings(seen)))
            feed.set_silent(True)
            await c.until(lambda seen: bool(_faults(seen, SCANNER_ID)), timeout=5)
            await wait_for(lambda: driver.counters["scanner_restarts"] >= 2, timeout=5)
            assert feed.connections >= 2  # each restart closed the feed and opened it again
            before = len(_readings(c.seen))
            feed.set_silent(False)
            seen = await c.until(
                lambda seen: len(_faults(seen, SCANNER_ID)) >= 2 and len(_readings(seen)) > before
            )
    faults = _faults(seen, SCANNER_ID)
    assert [(f.fault, f.active) for f in faults] == [("no_adverts", True), ("no_adverts", False)]
    assert faults[0].detail == "no advert for 0.3s; scanner restarted"
    assert driver.counters["scanner_restarts"] >= 2


class _BrokenThenWorking:
    """A radio whose first scans fail to start (adapter busy), then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.started = 0

    @asynccontextmanager
    async def scan(self, callback: AdvertCallback) -> AsyncIterator[None]:
        self.started += 1
        if self.started <= self.failures:
            raise BleakError("org.bluez.Error.InProgress")
        loop = asyncio.get_running_loop()
        loop.call_soon(callback, *_advert(service_data(packet_id=1, charging=True)))
        yield


async def test_scanner_that_fails_to_start_is_retried() -> None:
    source = _BrokenThenWorking(failures=1)
    driver = BleChargingSensors(sensors={MAC: SENSOR}, source=source, scanner_retry_s=(0.05, 1))
    async with aclosing(driver.events()) as events:
        got = await collect_until(events, lambda seen: bool(_readings(seen)), timeout=3)
    assert [(f.device_id, f.fault, f.active) for f in _faults(got)] == [
        (SCANNER_ID, "scanner_error", True),
        (SCANNER_ID, "scanner_error", False),
    ]
    assert driver.counters["scanner_restarts"] == 1


def test_feed_line_with_encrypted_advert_round_trips() -> None:
    line = json.dumps({"mac": MAC, "service_data": {BTHOME_UUID: _enc(9).hex()}})
    device, advert = advert_from_json(line)
    assert SensorDecoder(SENSOR, bindkey=KEY).feed(device, advert, T0) == ON
