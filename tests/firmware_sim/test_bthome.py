"""The simulator's BTHome v2 encoder, checked byte by byte and against bthome-ble's parser."""

from __future__ import annotations

import time

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak

from firmware_sim.bthome import BTHOME_SERVICE_UUID, service_data


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
