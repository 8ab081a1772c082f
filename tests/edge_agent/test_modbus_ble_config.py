"""Agent config for Modbus buses and BLE sensors, and the drivers the factory builds from it."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from drivers.ble_charging import BleChargingSensors
from drivers.modbus_meter import ModbusMeterPoller
from edge_agent.config import ConfigError, ModbusBusConfig, parse_config
from edge_agent.drivers import build_drivers, describe_devices

BASE = """
gateway_id = "gw-1"
state_dir = "/tmp/gw-1"
site_key = "0123456789abcdef0123"

[site]
site_id = "s1"
units = [{unit_id = "1-101", building = "1"}]
"""

DEMO = """
[[modbus_tcp]]
host = "127.0.0.1"
port = 1502
interval_s = 2.0
timeout_s = 0.5
meters = [{meter_id = "m-1-101", slave = 1}, {meter_id = "m-1-102", slave = 2}]
"""

FULL = """
[[modbus]]
transport = "rtu"
url = "/dev/ttyUSB0"
baudrate = 2400
parity = "E"
interval_s = 15.0

[[modbus.meters]]
meter_id = "m-1-101"
slave = 1
profile = "sdm120"

[[modbus.meters]]
meter_id = "m-1-102"
slave = 2
profile = "generic"
function_code = 4
timeout_s = 0.5
registers = [
  { field = "power_w", address = 12, data_type = "int32", word_order = "little", scale = 0.1 },
  { field = "voltage_v", address = 0, data_type = "uint16", scale = 0.1 },
]

[[modbus]]
transport = "rtu-over-tcp"
host = "10.0.0.6"
port = 4196
meters = [{meter_id = "m-1-201", slave = 7, profile = "sdm630", interval_s = 30.0}]

[[modbus]]
host = "10.0.0.5"
meters = [{meter_id = "m-1-202", slave = 1, function_code = 4}]

[ble]
source = "feed://127.0.0.1:9999"
watchdog_s = 60.0
sensors = [
  {sensor_id = "ble-1", mac = "A4:C1:38:AA:00:01", bindkey = "231d39c1d7cc1ab1aee224cd096db932"},
  {sensor_id = "ble-2", mac = "A4:C1:38:AA:00:02"},
]
"""


def _config(extra: str) -> Any:
    return parse_config(tomllib.loads(BASE + extra))


def test_the_demo_format_stays_valid() -> None:
    cfg = _config(DEMO)
    (bus,) = cfg.modbus_tcp
    assert (bus.transport, bus.host, bus.port, bus.timeout_s) == ("tcp", "127.0.0.1", 1502, 0.5)
    assert [m.profile for m in bus.meters] == ["ddsu666", "ddsu666"]
    (driver,) = build_drivers(cfg)
    assert isinstance(driver, ModbusMeterPoller) and driver.name == "modbus-tcp:127.0.0.1:1502"
    assert [d.driver for d in describe_devices(cfg)] == ["modbus-tcp:ddsu666"] * 2


def test_every_transport_profile_and_bindkey() -> None:
    cfg = _config(FULL)
    rtu, socket, tcp = cfg.modbus
    assert (rtu.transport, rtu.url, rtu.baudrate, rtu.parity, rtu.timeout_s) == (
        "rtu",
        "/dev/ttyUSB0",
        2400,
        "E",
        0.3,
    )
    assert (socket.transport, socket.host, socket.port) == ("rtu-over-tcp", "10.0.0.6", 4196)
    assert (tcp.transport, tcp.port) == ("tcp", None)  # 502 when built
    drivers = list(build_drivers(cfg))
    assert [d.name for d in drivers] == [
        "modbus-rtu:/dev/ttyUSB0",
        "modbus-rtu-over-tcp:socket://10.0.0.6:4196",
        "modbus-tcp:10.0.0.5:502",
        "ble-charging",
    ]
    assert isinstance(drivers[-1], BleChargingSensors)
    assert set(drivers[0].device_status()) == {"m-1-101", "m-1-102"}
    assert {d.device_id: d.driver for d in describe_devices(cfg)} == {
        "m-1-101": "modbus-rtu:sdm120",
        "m-1-102": "modbus-rtu:generic",
        "m-1-201": "modbus-rtu-over-tcp:sdm630",
        "m-1-202": "modbus-tcp:ddsu666",
        "ble-1": "bthome",
        "ble-2": "bthome",
    }
    sensor = cfg.ble.sensors[0]
    assert sensor.bindkey_bytes() == bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    assert "231d39c1" not in repr(cfg) and "231d39c1" not in str(cfg.model_dump())
    assert cfg.ble.watchdog_s == 60.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            '[[modbus]]\ntransport = "rtu"\nmeters = [{meter_id = "m", slave = 1}]',
            "needs url",
            id="rtu-without-url",
        ),
        pytest.param(
            '[[modbus]]\ntransport = "rtu-over-tcp"\nhost = "h"\nmeters = [{meter_id = "m", slave = 1}]',
            "needs port",
            id="socket-without-port",
        ),
        pytest.param(
            '[[modbus]]\nhost = "h"\nmeters = [{meter_id = "m", slave = 1, profile = "generic"}]',
            "power_w",
            id="generic-without-power",
        ),
        pytest.param(
            '[[modbus]]\nhost = "h"\nmeters = [{meter_id = "m", slave = 1, registers = [{field = "power_w", address = 0}]}]',
            "registers are for profile 'generic'",
            id="registers-on-a-known-profile",
        ),
        pytest.param(
            '[[modbus]]\nhost = "h"\nmeters = [{meter_id = "a", slave = 1}, {meter_id = "b", slave = 1}]',
            "same slave address",
            id="duplicate-slave",
        ),
        pytest.param(
            '[[modbus]]\nhost = "h"\nmeters = [{meter_id = "a", slave = 1, profile = "sdm999"}]',
            "modbus.0.meters.0.profile",
            id="unknown-profile",
        ),
        pytest.param(
            '[[modbus]]\nhost = "h"\nmeters = [{meter_id = "a", slave = 1, profile = "generic", registers = [{field = "power_w", address = 0, scale = 0}]}]',
            "scale",
            id="zero-scale",
        ),
        pytest.param(
            '[[modbus]]\nhost = "h"\nmeters = [{meter_id = "a", slave = 1, profile = "generic", registers = [{field = "power_w", address = 0}, {field = "voltage_v", address = 1, data_type = "uint16"}]}]',
            "overlap at address 1",
            id="overlapping-registers",
        ),
        pytest.param(
            '[[modbus_tcp]]\ntransport = "rtu"\nhost = "h"\nmeters = [{meter_id = "a", slave = 1}]',
            "modbus_tcp.0.transport",
            id="modbus-tcp-is-tcp",
        ),
        pytest.param(
            '[ble]\nsensors = [{sensor_id = "s", mac = "A4:C1:38:AA:00:01", bindkey = "abc"}]',
            "32 hex digits",
            id="short-bindkey",
        ),
        pytest.param(
            '[ble]\nsensors = [{sensor_id = "s", mac = "A4:C1:38:AA:00:01", bindkey = "zz1d39c1d7cc1ab1aee224cd096db932"}]',
            "32 hex digits",
            id="not-hex-bindkey",
        ),
    ],
)
def test_bad_config_names_the_problem(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(extra)


def test_bindkey_errors_never_echo_the_key() -> None:
    key = "zz1d39c1d7cc1ab1aee224cd096db932"
    with pytest.raises(ConfigError) as info:
        _config(
            f'[ble]\nsensors = [{{sensor_id = "s", mac = "A4:C1:38:AA:00:01", bindkey = "{key}"}}]'
        )
    assert key not in str(info.value)


def test_bus_model_alone() -> None:
    bus = ModbusBusConfig.model_validate(
        {"transport": "rtu", "url": "/dev/ttyAMA0", "meters": [{"meter_id": "m", "slave": 3}]}
    )
    assert (bus.baudrate, bus.parity, bus.stopbits, bus.max_quarantine_s) == (9600, "N", 1, 300.0)
