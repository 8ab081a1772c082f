"""Build the configured drivers (the factory of style habit 3: the agent picks real ones)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

from contract.messages import DeviceInfo
from drivers.base import Driver
from drivers.ble_charging import BleakAdvertSource, BleChargingSensors, FeedAdvertSource
from drivers.modbus_meter import MeterSpec, ModbusTcpMeterPoller
from drivers.serial_card import SerialCardReader
from edge_agent.config import AgentConfig


def build_drivers(config: AgentConfig) -> Iterator[Driver]:
    for bus in config.modbus_tcp:
        yield ModbusTcpMeterPoller(
            host=bus.host,
            port=bus.port,
            meters=[MeterSpec(m.meter_id, m.slave, m.profile) for m in bus.meters],
            interval_s=bus.interval_s,
            timeout_s=bus.timeout_s,
        )
    for reader in config.serial_readers:
        yield SerialCardReader(url=reader.url, reader_id=reader.reader_id, baudrate=reader.baudrate)
    ble = config.ble
    if ble is not None and ble.sensors:
        if ble.source == "bleak":
            source: BleakAdvertSource | FeedAdvertSource = BleakAdvertSource(adapter=ble.adapter)
        else:
            feed = urlparse(ble.source)
            source = FeedAdvertSource(feed.hostname or "127.0.0.1", feed.port or 0)
        yield BleChargingSensors(
            sensors={s.mac.upper(): s.sensor_id for s in ble.sensors}, source=source
        )


def describe_devices(config: AgentConfig) -> list[DeviceInfo]:
    """What the birth message announces: every configured device and where it is."""
    site = config.site
    meter_unit = {m.meter_id: m.unit_id for m in site.meters}
    sensor_place = {s.sensor_id: s for s in site.sensors}
    devices: list[DeviceInfo] = []
    for bus in config.modbus_tcp:
        devices.extend(
            DeviceInfo(
                device_id=m.meter_id,
                kind="meter",
                driver=f"modbus-tcp:{m.profile}",
                unit_id=meter_unit.get(m.meter_id),
            )
            for m in bus.meters
        )
    devices.extend(
        DeviceInfo(device_id=r.reader_id, kind="card_reader", driver="serial")
        for r in config.serial_readers
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
