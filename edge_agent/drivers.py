"""Build the configured drivers (the factory of style habit 3: the agent picks real ones).

Each driver module is imported only when the config asks for a driver of its kind: pymodbus
only with a Modbus bus, the BLE stack (bleak and the project's BTHome decoder;
``cryptography`` only for a sensor with a bindkey) only with BLE sensors, pyserial only with
serial readers or DL/T 645 lines. On a gateway that has no such device the agent never loads
them (an operator sees it as resident memory; tests/edge_agent/test_lazy_imports.py checks
it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pydantic import BaseModel, SecretStr

from contract.messages import DeviceInfo
from drivers.base import Driver
from edge_agent.config import (
    AgentConfig,
    BleConfig,
    Dlt645BusConfig,
    ModbusBusConfig,
    ModbusMeterConfig,
    SerialReaderConfig,
    WiegandReaderConfig,
)

if TYPE_CHECKING:
    from drivers.modbus_bus import LinkSpec
    from drivers.modbus_meter import MeterSpec, ModbusMeterPoller


# The driver modules below are imported where a driver of their kind is built (see the module
# docstring); ruff's PLC0415 is silenced for each of those imports on purpose.


def _link_spec(bus: ModbusBusConfig) -> LinkSpec:
    from drivers.modbus_bus import RtuOverTcp, RtuSerialPort, TcpEndpoint  # noqa: PLC0415

    if bus.transport == "rtu":
        assert bus.url is not None  # the config's validator checked it
        return RtuSerialPort(bus.url, bus.baudrate, bus.parity, bus.stopbits)
    assert bus.host is not None
    if bus.transport == "rtu-over-tcp":
        assert bus.port is not None
        return RtuOverTcp(bus.host, bus.port)
    return TcpEndpoint(bus.host, bus.port or 502)


def _meter_spec(m: ModbusMeterConfig) -> MeterSpec:
    from drivers.modbus_meter import MeterSpec, RegisterSpec, generic_profile  # noqa: PLC0415

    if m.profile == "generic":
        registers: dict[str, RegisterSpec] = {
            r.field: RegisterSpec(r.address, r.data_type, r.word_order, r.scale)
            for r in m.registers
        }
        return MeterSpec(
            m.meter_id,
            m.slave,
            generic_profile(registers, m.function_code or 3, name=f"generic:{m.meter_id}"),
            interval_s=m.interval_s,
            timeout_s=m.timeout_s,
        )
    return MeterSpec(m.meter_id, m.slave, m.profile, m.function_code, m.interval_s, m.timeout_s)


def build_modbus(bus: ModbusBusConfig, name: str | None = None) -> ModbusMeterPoller:
    """One poller per bus (one serialised transaction queue per port or connection)."""
    from drivers.modbus_bus import ModbusLink  # noqa: PLC0415
    from drivers.modbus_meter import ModbusMeterPoller  # noqa: PLC0415

    return ModbusMeterPoller(
        name=name,
        link=ModbusLink(_link_spec(bus)),
        meters=[_meter_spec(m) for m in bus.meters],
        interval_s=bus.interval_s,
        timeout_s=bus.timeout_s,
        max_quarantine_s=bus.max_quarantine_s,
    )


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """One driver the config asks for: a stable ``name``, the ``key`` of its config section (two
    specs with the same name and key build the same driver) and how to build it."""

    name: str
    key: str
    build: Callable[[], Driver]


def _modbus_name(bus: ModbusBusConfig) -> str:
    spec = _link_spec(bus)
    return f"modbus-{spec.kind}:{spec.describe()}"  # the name ModbusLink gives itself


def _ble_driver(ble: BleConfig, name: str) -> Driver:
    from drivers.ble_charging import (  # noqa: PLC0415
        BleakAdvertSource,
        BleChargingSensors,
        FeedAdvertSource,
    )

    if ble.source == "bleak":
        source: BleakAdvertSource | FeedAdvertSource = BleakAdvertSource(adapter=ble.adapter)
    else:
        feed = urlparse(ble.source)
        source = FeedAdvertSource(feed.hostname or "127.0.0.1", feed.port or 0)
    bindkeys = {s.mac.upper(): key for s in ble.sensors if (key := s.bindkey_bytes())}
    return BleChargingSensors(
        sensors={s.mac.upper(): s.sensor_id for s in ble.sensors},
        source=source,
        bindkeys=bindkeys,
        watchdog_s=ble.watchdog_s or None,
        offline_after_s=ble.offline_after_s,
        name=name,
    )


def _serial_reader(r: SerialReaderConfig, name: str) -> Driver:
    from drivers.serial_card import SerialCardReader  # noqa: PLC0415

    return SerialCardReader(
        url=r.url,
        reader_id=r.reader_id,
        baudrate=r.baudrate,
        frame_format=r.frame_format,
        w34_uid=r.w34_uid,
        name=name,
    )


def _wiegand_reader(w: WiegandReaderConfig, name: str) -> Driver:
    from drivers.wiegand import WiegandReader  # noqa: PLC0415

    return WiegandReader(
        chip=w.chip,
        d0=w.d0,
        d1=w.d1,
        reader_id=w.reader_id,
        idle_ms=w.idle_ms,
        formats=w.formats,
        w34_uid=w.w34_uid,
        name=name,
    )


def _dlt645_poller(d: Dlt645BusConfig, name: str) -> Driver:
    from drivers.dlt645 import Dlt645MeterSpec, Dlt645Poller  # noqa: PLC0415

    return Dlt645Poller(
        url=d.url,
        baudrate=d.baudrate,
        parity=d.parity,
        meters=[Dlt645MeterSpec(m.meter_id, m.address) for m in d.meters],
        interval_s=d.interval_s,
        timeout_s=d.timeout_s,
        name=name,
    )


def _key(section: BaseModel) -> str:
    # Secrets (BLE bindkeys) take part in the comparison but never leave this process.
    dumped = section.model_dump(mode="python")
    return json.dumps(dumped, sort_keys=True, default=_secret_default)


def _secret_default(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def driver_specs(config: AgentConfig) -> dict[str, DriverSpec]:
    """Every driver of ``config`` by name (names are stable across config changes)."""
    specs: dict[str, DriverSpec] = {}

    def add(name: str, section: BaseModel, build: Callable[[str], Driver]) -> None:
        unique, n = name, 1
        while unique in specs:
            n += 1
            unique = f"{name}#{n}"
        specs[unique] = DriverSpec(unique, _key(section), functools.partial(build, unique))

    for bus in [*config.modbus_tcp, *config.modbus]:
        add(_modbus_name(bus), bus, functools.partial(build_modbus, bus))
    for reader in config.serial_readers:
        add(f"serial:{reader.reader_id}", reader, functools.partial(_serial_reader, reader))
    for wiegand in config.wiegand_readers:
        add(f"wiegand:{wiegand.reader_id}", wiegand, functools.partial(_wiegand_reader, wiegand))
    for dlt in config.dlt645:
        add(f"dlt645:{dlt.url}", dlt, functools.partial(_dlt645_poller, dlt))
    ble = config.ble
    if ble is not None and ble.sensors:
        add("ble-charging", ble, functools.partial(_ble_driver, ble))
    return specs


def build_drivers(config: AgentConfig) -> Iterator[Driver]:
    for spec in driver_specs(config).values():
        yield spec.build()


def describe_devices(config: AgentConfig) -> list[DeviceInfo]:
    """What the birth message announces: every configured device and where it is."""
    site = config.site
    meter_unit = {m.meter_id: m.unit_id for m in site.meters}
    sensor_place = {s.sensor_id: s for s in site.sensors}
    devices: list[DeviceInfo] = []
    for bus in [*config.modbus_tcp, *config.modbus]:
        devices.extend(
            DeviceInfo(
                device_id=m.meter_id,
                kind="meter",
                driver=f"modbus-{bus.transport}:{m.profile}",
                unit_id=meter_unit.get(m.meter_id),
            )
            for m in bus.meters
        )
    devices.extend(
        DeviceInfo(device_id=r.reader_id, kind="card_reader", driver="serial")
        for r in config.serial_readers
    )
    devices.extend(
        DeviceInfo(device_id=w.reader_id, kind="card_reader", driver="wiegand")
        for w in config.wiegand_readers
    )
    for dlt in config.dlt645:
        devices.extend(
            DeviceInfo(
                device_id=m.meter_id,
                kind="meter",
                driver="dlt645",
                unit_id=meter_unit.get(m.meter_id),
            )
            for m in dlt.meters
        )
    if config.ble is not None:
        for s in config.ble.sensors:
            place = sensor_place.get(s.sensor_id)
            devices.append(
                DeviceInfo(
                    device_id=s.sensor_id,
                    kind="charging_sensor",
                    driver="bthome",
                    unit_id=place.unit_id if place else None,
                    location=place.location.value if place else None,
                )
            )
    return devices
