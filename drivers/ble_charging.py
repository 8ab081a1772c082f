"""BLE e-bike charging sensors that advertise BTHome v2.

The sensors are passive advertisers: each advert carries BTHome service data (UUID 0xFCD2) with
a packet id (object 0x00), power (0x0B, W) and "battery charging" (0x16, binary), in clear or
encrypted (AES-CCM with a per-sensor 16-byte bindkey, 4-byte MIC, nonce = MAC + ``D2 FC`` +
device-info byte + 4-byte counter). Parsing and decryption are :mod:`drivers.bthome`'s (the
project's own BTHome v2 decoder; bthome-ble's import graph alone is 13 MiB of the gateway's
60 MB); :class:`SensorDecoder` adds what a gateway needs on top (duplicates collapsed, a
counter that goes backwards rejected as a replay, every rejection classified) and maps the
result to :class:`contract.events.ChargingSensorReading`. :class:`BleChargingSensors` is the
driver, with a watchdog that restarts a scanner that went deaf.

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
from drivers.bthome import (
    BtHomeCipher,
    BtHomeError,
    BtHomeHeader,
    BtHomePacket,
    decode,
    parse_bthome_header,
)

log = logging.getLogger(__name__)

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
_CHARGING = 0x16  # binary "battery charging"
_POWERS = (0x0B, 0x5C)  # power: unsigned 3 bytes, signed 4 bytes (0.01 W)
_PACKET_ID_WINDOW = 64  # a packet id up to 63 ahead (mod 256) is newer, see SensorDecoder
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


RejectReason = Literal["unparseable", "duplicate", "decrypt_failed", "replayed"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An advert that delivers nothing, and why (``reason`` is also the counter's name)."""

    reason: RejectReason
    detail: str


class SensorDecoder:
    """One sensor's adverts -> readings: dedupe, decryption, replay protection, mapping.

    Synchronous and free of IO (the driver and the installer's scan share it).
    :func:`drivers.bthome.decode` parses and decrypts; this class decides what the outcome
    means:

    - the same service data again within ``dedupe_window_s``, or a packet id (object 0x00) that
      is not newer than the last accepted one within that window (a repeat heard late):
      ``duplicate`` (a BLE device repeats each packet a few times);
    - a sensor with a bindkey sending plaintext, a sensor without one sending ciphertext, or a
      MIC that does not verify (wrong key, forged packet): ``decrypt_failed``;
    - an encrypted advert whose counter is not above the last accepted one: ``replayed``. A
      counter may restart only after the sensor was silent for ``counter_restart_after_s`` (a
      battery change), so a recorded early packet cannot be replayed at any time;
    - anything the decoder refuses (cut short, an unknown object id, ...) or without exactly one
      "battery charging" state: ``unparseable``.
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
        self._cipher = BtHomeCipher(bindkey) if bindkey is not None else None
        self._dedupe_window_s = dedupe_window_s
        self._restart_after_s = counter_restart_after_s
        self._source = source_name
        self.last_seen: datetime | None = None
        self.last_counter: int | None = None
        self._last_payload: bytes | None = None
        self._last_accepted: datetime | None = None
        self._last_packet_id: int | None = None

    def feed(
        self, device: BLEDevice, advert: AdvertisementData, ts: datetime
    ) -> ChargingSensorReading | Rejected:
        payload = advert.service_data.get(BTHOME_UUID)
        if not payload:
            return Rejected("unparseable", "no BTHome service data")
        self.last_seen = ts
        since_accepted = (
            (ts - self._last_accepted).total_seconds() if self._last_accepted else math.inf
        )
        if payload == self._last_payload and since_accepted < self._dedupe_window_s:
            return Rejected("duplicate", "the same packet again")
        header = parse_bthome_header(payload)
        if header is None:
            return Rejected("unparseable", "not BTHome v2 service data")
        if self.encrypted and not header.encrypted:
            return Rejected("decrypt_failed", "plaintext advert from a sensor with a bindkey")
        if header.encrypted and not self.encrypted:
            return Rejected("decrypt_failed", "encrypted advert but no bindkey is configured")
        counter = header.counter
        if (
            counter is not None
            and self.last_counter is not None
            and counter <= self.last_counter
            and since_accepted < self._restart_after_s
        ):
            return Rejected(
                "replayed", f"counter {counter} is not above the last one ({self.last_counter})"
            )
        try:
            packet = decode(payload, mac=device.address, cipher=self._cipher)
        except BtHomeError as exc:
            if exc.reason == "mic_failed":
                return Rejected("decrypt_failed", "the MIC does not verify: wrong bindkey?")
            if exc.reason == "no_key":
                return Rejected("decrypt_failed", str(exc))
            return Rejected("unparseable", str(exc))
        if counter is not None:
            self.last_counter = counter  # authentic (the MIC verified), even if not a reading
        if self._stale_packet_id(packet, since_accepted):
            return Rejected(
                "duplicate",
                f"packet id {packet.packet_id} is not newer than the last one "
                f"({self._last_packet_id})",
            )
        charging = packet.measurements_of(_CHARGING)
        if len(charging) != 1:
            detail = "no battery-charging state in the advert"
            if charging:
                detail = f"{len(charging)} battery-charging states in one advert"
            return Rejected("unparseable", detail)
        power = packet.measurements_of(*_POWERS)
        power_w: float | None = None
        if len(power) == 1:
            value = power[0].value
            if (
                isinstance(value, int | float)
                and math.isfinite(value)
                and value >= 0  # a charger draws; a signed 0x5C object may say < 0
            ):
                power_w = float(value)
        self._last_payload, self._last_accepted = payload, ts
        self._last_packet_id = packet.packet_id
        return ChargingSensorReading(ts, self.sensor_id, bool(charging[0].value), power_w)

    def _stale_packet_id(self, packet: BtHomePacket, since_accepted: float) -> bool:
        """A packet id at most as new as the last accepted one (ids wrap at 256; one up to 63
        ahead counts as newer), heard within the dedupe window: a late repeat."""
        last, new = self._last_packet_id, packet.packet_id
        if last is None or new is None or since_accepted >= self._dedupe_window_s:
            return False
        return not 0 < (new - last) % 256 < _PACKET_ID_WINDOW


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
