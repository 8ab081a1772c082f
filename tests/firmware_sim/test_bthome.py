"""The simulator's BTHome v2 encoder and encryption, checked byte by byte and against
bthome-ble (its parser and its reference encoder)."""

from __future__ import annotations

import contextlib
import io
import time

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bthome_ble import BTHomeBluetoothDeviceData
from bthome_ble.bthome_v2_encryption import encrypt_payload
from habluetooth import BluetoothServiceInfoBleak
from sensor_state_data import DeviceKey

from firmware_sim.ble_feed import BleFeedServer
from firmware_sim.bthome import BTHOME_SERVICE_UUID, encrypt, service_data


@pytest.mark.parametrize(
    ("kwargs", "wire"),
    [
        pytest.param({}, "40", id="device-info-only"),
        pytest.param({"packet_id": 5}, "400005", id="packet-id"),
        pytest.param({"packet_id": 261}, "400005", id="packet-id-wraps"),
        pytest.param({"battery_pct": 90}, "40015a", id="battery"),
        pytest.param({"power_w": 180.5}, "400b824600", id="power-0.01W"),
        pytest.param({"power_w": 1e9}, "400bffffff", id="power-clamped"),
        pytest.param({"charging": True}, "401601", id="charging"),
        pytest.param({"charging": False}, "401600", id="not-charging"),
        pytest.param(
            {"packet_id": 5, "battery_pct": 90, "power_w": 180.5, "charging": True},
            "400005015a0b8246001601",
            id="all-in-id-order",
        ),
        pytest.param({"charging": True, "trigger_based": True}, "441601", id="trigger-based"),
    ],
)
def test_service_data_bytes(kwargs: dict[str, object], wire: str) -> None:
    assert service_data(**kwargs).hex() == wire  # type: ignore[arg-type]


def test_bthome_ble_reads_what_the_simulator_writes() -> None:
    data = service_data(packet_id=9, battery_pct=77, power_w=181.25, charging=True)
    device = BLEDevice("A4:C1:38:AA:00:03", "sim", None)
    advert = AdvertisementData("sim", {}, {BTHOME_SERVICE_UUID: data}, [], None, -60, ())
    info = BluetoothServiceInfoBleak.from_scan("test", device, advert, time.monotonic(), False)
    update = BTHomeBluetoothDeviceData().update(info)
    values = {k.key: v.native_value for k, v in update.entity_values.items()}
    binary = {k.key: v.native_value for k, v in update.binary_entity_values.items()}
    assert values["packet_id"] == 9
    assert values["battery"] == 77
    assert values["power"] == pytest.approx(181.25)
    assert binary == {"battery_charging": True}


# -- encrypted adverts --------------------------------------------------------------------------

SPEC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def test_encryption_matches_the_bthome_reference_vector() -> None:
    """The example of the BTHome v2 specification (temperature 25.06 °C, humidity 50.55 %):
    MAC 54:48:E6:8F:80:A5, counter 0x00112233; bthome-ble ships the reference encoder."""
    plain = bytes.fromhex("40") + bytes.fromhex("02ca0903bf13")
    wire = encrypt(plain, mac="54:48:E6:8F:80:A5", bindkey=SPEC_KEY, counter=0x00112233)
    assert wire.hex() == "41e445f3c9962b332211006c7c4519"
    with contextlib.redirect_stdout(io.StringIO()):  # the reference encoder prints
        reference = encrypt_payload(
            plain[1:],
            bytes.fromhex("5448E68F80A5"),
            b"\xd2\xfc",
            b"\x41",
            (0x00112233).to_bytes(4, "little"),
            SPEC_KEY,
        )
    assert reference == b"\xd2\xfc" + wire


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"bindkey": b"short", "counter": 1}, "16 bytes", id="short-key"),
        pytest.param({"bindkey": SPEC_KEY, "counter": 2**32}, "4 bytes", id="counter-too-big"),
    ],
)
def test_encrypt_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encrypt(b"\x40\x16\x01", mac="A4:C1:38:AA:00:03", **kwargs)  # type: ignore[arg-type]


def test_bthome_ble_decrypts_what_the_simulator_encrypts() -> None:
    plain = service_data(packet_id=9, power_w=181.25, charging=True)
    data = encrypt(plain, mac="A4:C1:38:AA:00:03", bindkey=SPEC_KEY, counter=77)
    device = BLEDevice("A4:C1:38:AA:00:03", "sim", None)
    advert = AdvertisementData("sim", {}, {BTHOME_SERVICE_UUID: data}, [], None, -60, ())
    info = BluetoothServiceInfoBleak.from_scan("test", device, advert, time.monotonic(), False)
    parser = BTHomeBluetoothDeviceData(SPEC_KEY)
    update = parser.update(info)
    assert parser.encryption_counter == 77 and not parser.decryption_failed
    assert {k.key: v.native_value for k, v in update.binary_entity_values.items()} == {
        "battery_charging": True
    }
    assert update.entity_values[DeviceKey("power")].native_value == pytest.approx(181.25)


async def test_simulated_sensor_faults() -> None:
    async with BleFeedServer(interval_s=60, seed=1) as feed:
        sensor = feed.add_sensor("A4:C1:38:AA:00:09", bindkey=SPEC_KEY)
        counters = []
        for _ in range(4):
            sensor.advertise()
            counters.append(sensor.counter)
        assert counters == list(range(counters[0], counters[0] + 4))  # one step per packet
        assert sensor.advert(next_packet=False) == sensor.sent[-1]  # deterministic encryption
        sensor.replay(back=2)
        sensor.advertise_with_key(bytes(16))
        sensor.advertise_garbage()
        assert sensor.adverts == 7
        feed.set_silent(True)
        feed.broadcast({"mac": "A4:C1:38:AA:00:09"})  # dropped: nobody hears it
        assert feed.silent
