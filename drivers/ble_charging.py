"""BLE e-bike charging sensors that advertise BTHome v2.

The sensors are passive advertisers: each advert carries BTHome service data (UUID 0xFCD2) with
a packet id (object 0x00), power (0x0B, W) and "battery charging" (0x16, binary). Parsing,
decryption (AES-CCM with a per-device bindkey) and replay protection are the ``bthome-ble``
package's; this module maps its result to :class:`contract.events.ChargingSensorReading`.

Adverts arrive through an :class:`AdvertSource`, which calls a callback with bleak's own
``BLEDevice`` and ``AdvertisementData`` (the signature of bleak's ``detection_callback``):

- :class:`BleakAdvertSource` scans the radio with ``bleak.BleakScanner``;
- :class:`FeedAdvertSource` reads JSON advert lines from a TCP feed (the simulator's, since
  there is no radio in tests and demos) and builds the same bleak objects from them, so the
  parsing path is the production one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak
from sensor_state_data import DeviceKey, SensorUpdate

from contract.events import ChargingSensorReading
from drivers.base import Backoff, DeviceState, DriverCounters, DriverError, cancel_and_wait, utc_now

log = logging.getLogger(__name__)

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
_CHARGING_KEY = DeviceKey(key="battery_charging", device_id=None)
_POWER_KEY = DeviceKey(key="power", device_id=None)
_MAC = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")

AdvertCallback = Callable[[BLEDevice, AdvertisementData], None]
_K = TypeVar("_K")


class AdvertSource(Protocol):
    """Where adverts come from. ``scan(callback)`` is an async context manager; while it is
    entered, ``callback`` is called (in the event loop) for every advert received."""

    def scan(self, callback: AdvertCallback) -> AbstractAsyncContextManager[None]: ...


# -- sources ------------------------------------------------------------------------------------


class BleakAdvertSource:
    """The radio, through ``bleak.BleakScanner``.

    Scans passively where the platform allows it (BlueZ with an advertisement-monitor pattern on
    the BTHome UUID; not macOS), otherwise actively.
    """

    def __init__(self, adapter: str | None = None) -> None:
        self._adapter = adapter

    @asynccontextmanager
    async def scan(self, callback: AdvertCallback) -> AsyncIterator[None]:
        bluez: BlueZScannerArgs = {}
        if self._adapter:
            bluez["adapter"] = self._adapter
        passive_bluez: BlueZScannerArgs = {
            **bluez,
            "or_patterns": [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")],
        }
        scanner: BleakScanner | None = None
        if sys.platform != "darwin":
            scanner = BleakScanner(callback, scanning_mode="passive", bluez=passive_bluez)
            try:
                await scanner.start()
            except BleakError as exc:  # e.g. BlueZ without the advertisement monitor API
                log.warning("passive BLE scanning unavailable (%s); scanning actively", exc)
                scanner = None
        if scanner is None:
            scanner = BleakScanner(callback, scanning_mode="active", bluez=bluez)
            await scanner.start()
        try:
            yield
        finally:
            await scanner.stop()


class BadFeedLine(DriverError, ValueError):  # noqa: N818 - reads better at the raise site
    """A feed line that is not an advert."""


def advert_from_json(line: bytes | str) -> tuple[BLEDevice, AdvertisementData]:
    """Build bleak's objects from one feed line. Raises :class:`BadFeedLine` (a ValueError).

    Line format: ``{"mac": "A4:C1:38:AA:00:01", "rssi": -60, "local_name": "...",
    "service_data": {"<uuid>": "<hex>"}, "manufacturer_data": {"<id>": "<hex>"}}`` (only ``mac``
    is required).
    """
    try:
        obj: Any = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadFeedLine(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadFeedLine("not a JSON object")
    mac = obj.get("mac")
    if not isinstance(mac, str) or not _MAC.match(mac.upper()):
        raise BadFeedLine("mac: not a MAC address")
    rssi = obj.get("rssi", -127)
    local_name = obj.get("local_name")
    if not isinstance(rssi, int) or isinstance(rssi, bool):
        raise BadFeedLine("rssi: not an integer")
    if local_name is not None and not isinstance(local_name, str):
        raise BadFeedLine("local_name: not a string")
    service_data = _hex_map(obj.get("service_data", {}), "service_data", str.lower)
    manufacturer_data = _hex_map(obj.get("manufacturer_data", {}), "manufacturer_data", int)
    device = BLEDevice(mac.upper(), local_name, None)
    advert = AdvertisementData(
        local_name=local_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=list(service_data),
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )
    return device, advert


def _hex_map(raw: object, what: str, key: Callable[[str], _K]) -> dict[_K, bytes]:
    if not isinstance(raw, dict):
        raise BadFeedLine(f"{what}: not an object")
    try:
        return {key(str(k)): bytes.fromhex(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise BadFeedLine(f"{what}: {exc}") from None


class FeedAdvertSource:
    """Adverts from a TCP feed of JSON lines (see :func:`advert_from_json`).

    Reconnects with jittered exponential backoff when the feed drops. Counters: ``lines``,
    ``bad_lines``, ``reconnects``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self.counters = DriverCounters(("lines", "bad_lines", "reconnects"))

    @asynccontextmanager
    async def scan(self, callback: AdvertCallback) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run(callback), name=f"ble-feed:{self._host}:{self._port}")
        try:
            yield
        finally:
            await cancel_and_wait(task)

    async def _run(self, callback: AdvertCallback) -> None:
        first = True
        while True:
            if not first:
                self.counters.inc("reconnects")
                await asyncio.sleep(self._backoff.next())
            first = False
            try:
                reader, writer = await asyncio.open_connection(self._host, self._port)
            except OSError as exc:
                log.warning("BLE feed %s:%s: cannot connect: %s", self._host, self._port, exc)
                continue
            self._backoff.reset()
            try:
                await self._read(reader, callback)
                log.warning("BLE feed %s:%s closed", self._host, self._port)
            except OSError as exc:
                log.warning("BLE feed %s:%s lost: %s", self._host, self._port, exc)
            finally:
                writer.close()
                try:
                    async with asyncio.timeout(2):
                        await writer.wait_closed()
                except (OSError, TimeoutError):
                    pass

    async def _read(self, reader: asyncio.StreamReader, callback: AdvertCallback) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the stream limit: dropped
                self.counters.inc("bad_lines")
                continue
            if not line:
                return
            if not line.strip():
                continue
            self.counters.inc("lines")
            try:
                device, advert = advert_from_json(line)
            except ValueError as exc:
                self.counters.inc("bad_lines")
                log.debug("BLE feed: bad line: %s", exc)
                continue
            callback(device, advert)


# -- the driver ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _SensorState:
    sensor_id: str
    parser: BTHomeBluetoothDeviceData
    last_seen: datetime | None = None
    last_payload: bytes | None = None
    last_accepted: datetime | None = None
    # The parser returns cumulative values: a value object it did not replace is not new.
    last_charging: object = field(default=None)
    last_power: object = field(default=None)


class BleChargingSensors:
    """Charging sensors (BTHome v2) heard through ``source``; yields ChargingSensorReading.

    ``sensors`` maps upper-case MAC addresses to sensor ids; adverts from other devices are
    counted (``unknown_mac``) and ignored. ``bindkeys`` maps MACs to 16-byte BTHome keys for
    encrypted sensors. An advert repeated with the same packet (same service data) within
    ``dedupe_window_s`` is collapsed (``duplicates``); adverts that are not BTHome, fail to
    decrypt, replay an old packet or carry no charging state are counted (``unparseable``).

    Other counters: ``adverts`` (all received), ``readings`` (yielded), ``dropped`` (the
    consumer fell more than ``queue_size`` readings behind).
    """

    def __init__(
        self,
        *,
        sensors: Mapping[str, str],
        source: AdvertSource,
        clock: Callable[[], datetime] = utc_now,
        bindkeys: Mapping[str, bytes] | None = None,
        dedupe_window_s: float = 4.0,
        offline_after_s: float = 300.0,
        queue_size: int = 1000,
        name: str = "ble-charging",
    ) -> None:
        self.name = name
        self.counters = DriverCounters(
            ("adverts", "readings", "unknown_mac", "unparseable", "duplicates", "dropped")
        )
        self._source = source
        self._clock = clock
        self._dedupe_window_s = dedupe_window_s
        self._offline_after_s = offline_after_s
        self._queue_size = queue_size
        self._queue: asyncio.Queue[ChargingSensorReading] | None = None
        keys = {mac.upper(): key for mac, key in (bindkeys or {}).items()}
        self._sensors: dict[str, _SensorState] = {
            mac.upper(): _SensorState(sensor_id, BTHomeBluetoothDeviceData(keys.get(mac.upper())))
            for mac, sensor_id in sensors.items()
        }

    def device_status(self) -> dict[str, DeviceState]:
        now = self._clock()
        return {
            st.sensor_id: DeviceState(
                online=st.last_seen is not None
                and (now - st.last_seen).total_seconds() < self._offline_after_s,
                last_seen=st.last_seen,
                fault=None,
            )
            for st in self._sensors.values()
        }

    async def events(self) -> AsyncGenerator[ChargingSensorReading, None]:
        queue: asyncio.Queue[ChargingSensorReading] = asyncio.Queue(self._queue_size)
        self._queue = queue
        try:
            async with self._source.scan(self._on_advert):
                while True:
                    yield await queue.get()
        finally:
            self._queue = None

    def _on_advert(self, device: BLEDevice, advert: AdvertisementData) -> None:
        self.counters.inc("adverts")
        st = self._sensors.get(device.address.upper())
        if st is None:
            self.counters.inc("unknown_mac")
            return
        reading = self._parse(st, device, advert)
        if reading is None or self._queue is None:
            return
        try:
            self._queue.put_nowait(reading)
        except asyncio.QueueFull:
            self.counters.inc("dropped")
            return
        self.counters.inc("readings")

    def _parse(
        self, st: _SensorState, device: BLEDevice, advert: AdvertisementData
    ) -> ChargingSensorReading | None:
        ts = self._clock()
        payload = advert.service_data.get(BTHOME_UUID)
        if not payload:
            self.counters.inc("unparseable")
            return None
        if (
            payload == st.last_payload
            and st.last_accepted is not None
            and (ts - st.last_accepted).total_seconds() < self._dedupe_window_s
        ):
            st.last_seen = ts
            self.counters.inc("duplicates")
            return None
        info = BluetoothServiceInfoBleak.from_scan(
            source=self.name,
            device=device,
            advertisement_data=advert,
            monotonic_time=ts.timestamp(),
            connectable=False,
        )
        try:
            update: SensorUpdate = st.parser.update(info)
        except Exception:  # a third-party parser fed hostile bytes: a bad advert, not a crash
            log.debug("%s: parser failed on an advert from %s", self.name, st.sensor_id)
            self.counters.inc("unparseable")
            return None
        charging = update.binary_entity_values.get(_CHARGING_KEY)
        if charging is None or charging is st.last_charging or charging.native_value is None:
            self.counters.inc("unparseable")
            return None
        power = update.entity_values.get(_POWER_KEY)
        power_w: float | None = None
        if (
            power is not None
            and power is not st.last_power
            and isinstance(power.native_value, int | float)
        ):
            power_w = float(power.native_value)
        st.last_charging, st.last_power = charging, power
        st.last_payload, st.last_accepted, st.last_seen = payload, ts, ts
        return ChargingSensorReading(ts, st.sensor_id, bool(charging.native_value), power_w)


__all__ = [
    "BTHOME_UUID",
    "AdvertCallback",
    "AdvertSource",
    "BadFeedLine",
    "BleChargingSensors",
    "BleakAdvertSource",
    "FeedAdvertSource",
    "advert_from_json",
]
