"""BLE e-bike charging sensors that advertise BTHome v2.

The sensors are passive advertisers: each advert carries BTHome service data (UUID 0xFCD2) with
a packet id (object 0x00), power (0x0B, W) and "battery charging" (0x16, binary), in clear or
encrypted (AES-CCM with a per-sensor 16-byte bindkey, 4-byte MIC, nonce = MAC + ``D2 FC`` +
device-info byte + 4-byte counter). Parsing and decryption are the ``bthome-ble`` package's;
:class:`SensorDecoder` adds what a gateway needs on top (duplicates collapsed, a counter that
goes backwards rejected as a replay, every rejection classified) and maps the result to
:class:`contract.events.ChargingSensorReading`. :class:`BleChargingSensors` is the driver, with
a watchdog that restarts a scanner that went deaf.

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
import math
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak
from sensor_state_data import DeviceKey, SensorUpdate

from contract.events import ChargingSensorReading, DeviceFault
from drivers.base import (
    Backoff,
    DeviceState,
    DriverConfigError,
    DriverCounters,
    DriverError,
    cancel_and_wait,
    utc_now,
)

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


# -- the BTHome decoder of one sensor (synchronous, no IO) -------------------------------------


@dataclass(frozen=True, slots=True)
class BtHomeHeader:
    """What the first byte and the framing of BTHome v2 service data say."""

    device_info: int
    encrypted: bool
    trigger_based: bool
    mac_included: bool
    counter: int | None
    """The AES-CCM counter of an encrypted advert (4 bytes before the MIC, little-endian)."""


def parse_bthome_header(data: bytes) -> BtHomeHeader | None:
    """The header of BTHome v2 service data, or None if it is not BTHome v2 (wrong version
    bits, too short to hold what its flags promise)."""
    if not data or data[0] >> 5 != 2:
        return None
    info = data[0]
    encrypted, mac_included = bool(info & 0x01), bool(info & 0x02)
    body = data[7:] if mac_included else data[1:]
    if mac_included and len(data) < 7:
        return None
    counter = None
    if encrypted:
        if len(body) < _MIN_CIPHERTEXT + 8:  # ciphertext, 4-byte counter, 4-byte MIC
            return None
        counter = int.from_bytes(body[-8:-4], "little")
    return BtHomeHeader(info, encrypted, bool(info & 0x04), mac_included, counter)


_MIN_CIPHERTEXT = 2  # bthome-ble's minimum for a v2 payload


RejectReason = Literal["unparseable", "duplicate", "decrypt_failed", "replayed"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An advert that delivers nothing, and why (``reason`` is also the counter's name)."""

    reason: RejectReason
    detail: str


class SensorDecoder:
    """One sensor's adverts -> readings: dedupe, decryption, replay protection, mapping.

    Synchronous and free of IO (the driver and the installer's scan share it). bthome-ble parses
    and decrypts; this class decides what the outcome means:

    - the same service data again within ``dedupe_window_s``: ``duplicate`` (a BLE device
      repeats each packet a few times);
    - a sensor with a bindkey sending plaintext, a sensor without one sending ciphertext, or a
      MIC that does not verify (wrong key, forged packet): ``decrypt_failed``;
    - an encrypted advert whose counter is not above the last accepted one: ``replayed``.
      bthome-ble lets a counter below 100 restart silently; here a counter may restart only
      after the sensor was silent for ``counter_restart_after_s`` (a battery change), so a
      recorded early packet cannot be replayed at any time;
    - anything else without a new "battery charging" state: ``unparseable``.
    """

    def __init__(
        self,
        sensor_id: str,
        *,
        bindkey: bytes | None = None,
        dedupe_window_s: float = 4.0,
        counter_restart_after_s: float = 3600.0,
        source_name: str = "ble",
    ) -> None:
        if bindkey is not None and len(bindkey) != 16:
            raise DriverConfigError(f"sensor {sensor_id!r}: a bindkey is 16 bytes (32 hex digits)")
        self.sensor_id = sensor_id
        self.encrypted = bindkey is not None
        self._parser = BTHomeBluetoothDeviceData(bindkey)
        self._dedupe_window_s = dedupe_window_s
        self._restart_after_s = counter_restart_after_s
        self._source = source_name
        self.last_seen: datetime | None = None
        self.last_counter: int | None = None
        self._last_payload: bytes | None = None
        self._last_accepted: datetime | None = None
        # The parser's values are cumulative: a value object it did not replace is not new.
        self._last_charging: object = None
        self._last_power: object = None

    def feed(
        self, device: BLEDevice, advert: AdvertisementData, ts: datetime
    ) -> ChargingSensorReading | Rejected:
        payload = advert.service_data.get(BTHOME_UUID)
        if not payload:
            return Rejected("unparseable", "no BTHome service data")
        self.last_seen = ts
        if (
            payload == self._last_payload
            and self._last_accepted is not None
            and (ts - self._last_accepted).total_seconds() < self._dedupe_window_s
        ):
            return Rejected("duplicate", "the same packet again")
        header = parse_bthome_header(payload)
        if header is None:
            return Rejected("unparseable", "not BTHome v2 service data")
        if self.encrypted and not header.encrypted:
            return Rejected("decrypt_failed", "plaintext advert from a sensor with a bindkey")
        if header.encrypted and not self.encrypted:
            return Rejected("decrypt_failed", "encrypted advert but no bindkey is configured")
        counter = header.counter
        if counter is not None and self.last_counter is not None and counter <= self.last_counter:
            silent_s = (
                (ts - self._last_accepted).total_seconds() if self._last_accepted else math.inf
            )
            if silent_s < self._restart_after_s:
                return Rejected(
                    "replayed", f"counter {counter} is not above the last one ({self.last_counter})"
                )
            self._parser.reset_encryption_counter()  # a restarted sensor (battery change)
        info = BluetoothServiceInfoBleak.from_scan(
            source=self._source,
            device=device,
            advertisement_data=advert,
            monotonic_time=ts.timestamp(),
            connectable=False,
        )
        try:
            update: SensorUpdate = self._parser.update(info)
        except Exception:  # a third-party parser fed hostile bytes: a bad advert, not a crash
            return Rejected("unparseable", "the BTHome parser refused the advert")
        if counter is not None:
            if self._parser.decryption_failed or self._parser.encryption_counter != counter:
                return Rejected("decrypt_failed", "the MIC does not verify: wrong bindkey?")
            self.last_counter = counter
        charging = update.binary_entity_values.get(_CHARGING_KEY)
        if charging is None or charging is self._last_charging or charging.native_value is None:
            return Rejected("unparseable", "no battery-charging state in the advert")
        power = update.entity_values.get(_POWER_KEY)
        power_w: float | None = None
        if (
            power is not None
            and power is not self._last_power
            and isinstance(power.native_value, int | float)
            and math.isfinite(power.native_value)
            and power.native_value >= 0  # a charger draws; a signed 0x5C object may say < 0
        ):
            power_w = float(power.native_value)
        self._last_charging, self._last_power = charging, power
        self._last_payload, self._last_accepted = payload, ts
        return ChargingSensorReading(ts, self.sensor_id, bool(charging.native_value), power_w)


# -- the driver ---------------------------------------------------------------------------------

SCANNER_ID = "ble-scanner"
"""The pseudo-device the scanner's own faults are reported on."""
FAULT_NO_ADVERTS = "no_adverts"
"""The scanner heard nothing for ``watchdog_s`` while sensors are expected: restarted."""
FAULT_SCANNER_ERROR = "scanner_error"
"""Scanning could not start (adapter gone, BlueZ error): retried with backoff."""

Event = ChargingSensorReading | DeviceFault


@dataclass(slots=True, eq=False)
class _Sensor:
    decoder: SensorDecoder
    fault: str | None = None


class BleChargingSensors:
    """Charging sensors (BTHome v2) heard through ``source``; yields readings and faults.

    ``sensors`` maps MAC addresses to sensor ids; adverts from other devices are counted
    (``unknown_mac``) and ignored. ``bindkeys`` maps MACs to 16-byte BTHome keys of encrypted
    sensors. Each advert goes through the sensor's :class:`SensorDecoder`; what it rejects is
    counted by reason (``duplicates``, ``unparseable``, ``decrypt_failed``, ``replayed``) and is
    never delivered. A decryption failure or a replay is also a device fault
    (``DeviceFault(sensor_id, "decrypt_failed" | "replayed", active=True)``, once per episode,
    ``active=False`` at the next good reading).

    Watchdog: when no advert at all arrives for ``watchdog_s`` (default 120 s; None: off), the
    scan is stopped and started again (``scanner_restarts``, a warning, and
    ``DeviceFault("ble-scanner", "no_adverts")`` once per episode, cleared by the next advert).
    A scan that fails to start is retried with jittered backoff (``scanner_retry_s``: first and
    longest delay; ``DeviceFault("ble-scanner", "scanner_error")``). The agent is never
    restarted for either.

    Other counters: ``adverts`` (all received), ``readings`` (yielded), ``dropped`` (the
    consumer fell more than ``queue_size`` events behind).
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
        watchdog_s: float | None = 120.0,
        counter_restart_after_s: float = 3600.0,
        scanner_retry_s: tuple[float, float] = (1.0, 60.0),
        queue_size: int = 1000,
        name: str = "ble-charging",
    ) -> None:
        if watchdog_s is not None and watchdog_s <= 0:
            raise DriverConfigError("watchdog_s must be positive (or None: no watchdog)")
        self.name = name
        self.counters = DriverCounters(
            (
                "adverts",
                "readings",
                "unknown_mac",
                "unparseable",
                "duplicates",
                "decrypt_failed",
                "replayed",
                "dropped",
                "scanner_restarts",
            )
        )
        self._source = source
        self._clock = clock
        self._offline_after_s = offline_after_s
        self._watchdog_s = watchdog_s
        self._scanner_retry_s = scanner_retry_s
        self._queue_size = queue_size
        self._queue: asyncio.Queue[Event] | None = None
        self._last_advert = 0.0
        self._scanner_fault: str | None = None
        keys = {mac.upper(): key for mac, key in (bindkeys or {}).items()}
        unknown = sorted(set(keys) - {m.upper() for m in sensors})
        if unknown:
            raise DriverConfigError(f"bindkeys for MACs that are not sensors: {unknown}")
        self._sensors: dict[str, _Sensor] = {
            mac.upper(): _Sensor(
                SensorDecoder(
                    sensor_id,
                    bindkey=keys.get(mac.upper()),
                    dedupe_window_s=dedupe_window_s,
                    counter_restart_after_s=counter_restart_after_s,
                    source_name=name,
                )
            )
            for mac, sensor_id in sensors.items()
        }

    def device_status(self) -> dict[str, DeviceState]:
        now = self._clock()
        out = {}
        for st in self._sensors.values():
            seen = st.decoder.last_seen
            out[st.decoder.sensor_id] = DeviceState(
                online=seen is not None and (now - seen).total_seconds() < self._offline_after_s,
                last_seen=seen,
                fault=st.fault,
            )
        return out

    async def events(self) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._queue = queue
        backoff = Backoff(*self._scanner_retry_s)
        watchdog = self._watchdog_s if self._sensors else None
        try:
            while True:
                self._last_advert = loop.time()
                try:
                    async with self._source.scan(self._on_advert):
                        while True:
                            if watchdog is None:
                                event = await queue.get()
                            else:
                                remaining = self._last_advert + watchdog - loop.time()
                                if remaining <= 0:
                                    break
                                try:
                                    async with asyncio.timeout(remaining):
                                        event = await queue.get()
                                except TimeoutError:
                                    continue
                            yield event
                except (BleakError, OSError, DriverError) as exc:
                    self.counters.inc("scanner_restarts")
                    delay = backoff.next()
                    log.warning(
                        "%s: scanning failed (%s); retrying in %.1fs", self.name, exc, delay
                    )
                    for event in self._scanner_failed(FAULT_SCANNER_ERROR, str(exc)):
                        yield event
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                self.counters.inc("scanner_restarts")
                log.warning(
                    "%s: no advert for %gs while %d sensors are expected; restarting the scan",
                    self.name,
                    watchdog,
                    len(self._sensors),
                )
                detail = f"no advert for {watchdog:g}s; scanner restarted"
                for event in self._scanner_failed(FAULT_NO_ADVERTS, detail):
                    yield event
        finally:
            self._queue = None

    def _scanner_failed(self, fault: str, detail: str) -> list[Event]:
        if self._scanner_fault == fault:
            return []
        ts = self._clock()
        out: list[Event] = []
        if self._scanner_fault is not None:
            out.append(DeviceFault(ts, SCANNER_ID, self._scanner_fault, "superseded", active=False))
        self._scanner_fault = fault
        out.append(DeviceFault(ts, SCANNER_ID, fault, detail, active=True))
        return out

    def _put(self, event: Event) -> bool:
        if self._queue is None:
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.counters.inc("dropped")
            return False
        return True

    def _on_advert(self, device: BLEDevice, advert: AdvertisementData) -> None:
        self.counters.inc("adverts")
        queue = self._queue
        if queue is None:
            return
        self._last_advert = asyncio.get_running_loop().time()
        if self._scanner_fault is not None:
            fault, self._scanner_fault = self._scanner_fault, None
            log.info("%s: adverts arrive again", self.name)
            self._put(DeviceFault(self._clock(), SCANNER_ID, fault, "recovered", active=False))
        st = self._sensors.get(device.address.upper())
        if st is None:
            self.counters.inc("unknown_mac")
            return
        ts = self._clock()
        outcome = st.decoder.feed(device, advert, ts)
        sensor_id = st.decoder.sensor_id
        if isinstance(outcome, Rejected):
            self.counters.inc("duplicates" if outcome.reason == "duplicate" else outcome.reason)
            if outcome.reason in ("decrypt_failed", "replayed") and st.fault != outcome.reason:
                if st.fault is not None:
                    self._put(DeviceFault(ts, sensor_id, st.fault, "superseded", active=False))
                log.warning(
                    "%s: sensor %s: %s (%s)", self.name, sensor_id, outcome.reason, outcome.detail
                )
                st.fault = outcome.reason
                self._put(DeviceFault(ts, sensor_id, outcome.reason, outcome.detail, active=True))
            return
        if st.fault is not None:
            log.info("%s: sensor %s reads again", self.name, sensor_id)
            self._put(DeviceFault(ts, sensor_id, st.fault, "recovered", active=False))
            st.fault = None
        if self._put(outcome):
            self.counters.inc("readings")


__all__ = [
    "BTHOME_UUID",
    "FAULT_NO_ADVERTS",
    "FAULT_SCANNER_ERROR",
    "SCANNER_ID",
    "AdvertCallback",
    "AdvertSource",
    "BadFeedLine",
    "BleChargingSensors",
    "BleakAdvertSource",
    "BtHomeHeader",
    "FeedAdvertSource",
    "Rejected",
    "SensorDecoder",
    "advert_from_json",
    "parse_bthome_header",
]
