"""Config sections for serial frame formats, Wiegand readers and DL/T 645 buses, and the factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.base import DriverConfigError
from drivers.dlt645 import Dlt645Poller
from drivers.serial_card import SerialCardReader
from drivers.wiegand import gpiod_available
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.drivers import build_drivers, describe_devices

BASE = """
gateway_id = "gw-1"
state_dir = "{state}"
site_key = "0123456789abcdef0123"

[site]
site_id = "s1"
units = [{{unit_id = "1-101", building = "1"}}]
"""

SERIAL = """
[[serial_readers]]
reader_id = "b1-entrance"
url = "/dev/ttyUSB0"
frame_format = "em4100"
"""

WIEGAND = """
[[wiegand_readers]]
reader_id = "b1-gate"
d0 = 17
d1 = 27
idle_ms = 40
formats = ["h10301", "w34"]
w34_uid = true
"""

DLT645 = """
[[dlt645]]
url = "socket://127.0.0.1:7001"
interval_s = 15

[[dlt645.meters]]
meter_id = "m-1-101"
address = "000000123456"

[[dlt645.meters]]
meter_id = "m-1-102"
address = "000000000002"
"""


def _load(tmp_path: Path, *sections: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(BASE.format(state=tmp_path) + "".join(sections))
    return load_config(path)


def test_sections_parse_with_their_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, SERIAL, WIEGAND, DLT645)
    assert cfg.serial_readers[0].frame_format == "em4100"
    wiegand = cfg.wiegand_readers[0]
    assert (wiegand.chip, wiegand.d0, wiegand.d1, wiegand.idle_ms) == ("/dev/gpiochip0", 17, 27, 40)
    assert wiegand.formats == ["h10301", "w34"] and wiegand.w34_uid
    bus = cfg.dlt645[0]
    assert (bus.baudrate, bus.parity, bus.timeout_s, bus.interval_s) == (2400, "E", 1.0, 15)
    assert [m.address for m in bus.meters] == ["000000123456", "000000000002"]
    assert _load(tmp_path).serial_readers == []  # all optional


def test_the_factory_builds_serial_readers_and_dlt645_pollers(tmp_path: Path) -> None:
    drivers = list(build_drivers(_load(tmp_path, SERIAL, DLT645)))
    assert [type(d) for d in drivers] == [SerialCardReader, Dlt645Poller]
    assert "bad_checksum" in drivers[0].counters.snapshot()  # the em4100 codec
    assert set(drivers[1].device_status()) == {"m-1-101", "m-1-102"}


@pytest.mark.skipif(gpiod_available(), reason="gpiod is installed here")
def test_a_wiegand_reader_without_gpiod_is_a_config_error_that_says_what_to_install(
    tmp_path: Path,
) -> None:
    with pytest.raises(DriverConfigError, match="python3-libgpiod"):
        list(build_drivers(_load(tmp_path, WIEGAND)))


def test_birth_message_lists_the_new_devices(tmp_path: Path) -> None:
    devices = {d.device_id: d for d in describe_devices(_load(tmp_path, SERIAL, WIEGAND, DLT645))}
    assert (devices["b1-entrance"].kind, devices["b1-entrance"].driver) == ("card_reader", "serial")
    assert (devices["b1-gate"].kind, devices["b1-gate"].driver) == ("card_reader", "wiegand")
    assert (devices["m-1-101"].kind, devices["m-1-101"].driver) == ("meter", "dlt645")
    assert "m-1-102" in devices


@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param(SERIAL.replace("em4100", "ascii"), "frame_format", id="bad-frame-format"),
        pytest.param(WIEGAND.replace("d1 = 27", "d1 = 17"), "different", id="same-gpio-lines"),
        pytest.param(WIEGAND.replace('"w34"]', '"h10302"]'), "formats", id="unknown-format"),
        pytest.param(DLT645.replace('"000000000002"', '"12345"'), "address", id="short-address"),
        pytest.param(
            DLT645.replace('"000000000002"', '"000000123456"'), "same address", id="duplicate"
        ),
        pytest.param(
            DLT645.replace('url = "socket', 'parity = "X"\nurl = "socket'), "parity", id="parity"
        ),
    ],
)
def test_bad_sections_name_the_field(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, section)
