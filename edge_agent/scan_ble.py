"""Installer tool: which BTHome sensors can the gateway hear, how well, and what do they say.

:func:`scan_ble` listens for ``seconds`` through an advert source (the radio through bleak, or
the simulator's feed) and lists every device that sends BTHome v2 service data, strongest
first: its RSSI (last and best), how many adverts arrived, whether it encrypts, and its last
values (decoded with :mod:`drivers.bthome`; encrypted sensors only when their bindkey is
given). The result renders as the agent's ``[ble]`` TOML
(:meth:`BleScanResult.as_config_snippet`); bindkeys are never printed, the snippet leaves a
placeholder to paste them into.

Placement rule of thumb (docs/devices/ble-sensors.md): a sensor heard at -85 dBm or weaker, or
only a few times in a minute, will drop out; move the gateway or the sensor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from drivers.ble_charging import BTHOME_UUID, AdvertSource
from drivers.bthome import BtHomeCipher, BtHomeError, decode, parse_bthome_header

__all__ = ["WEAK_RSSI_DBM", "BleScanResult", "FoundSensor", "as_config_snippet", "scan_ble"]

WEAK_RSSI_DBM = -85
"""Sensors heard only this weakly (or weaker) will drop out now and then."""

Progress = Callable[[float, float], None]
"""``progress(elapsed_s, total_s)``, a few times a second."""


@dataclass(frozen=True, slots=True)
class FoundSensor:
    mac: str
    name: str | None
    rssi: int
    """The last advert's RSSI (dBm)."""
    best_rssi: int
    adverts: int
    encrypted: bool
    values: Mapping[str, float | int | bool | str]
    """Last values by BTHome name (power, battery, battery_charging, ...; raw bytes as hex,
    timestamps left out); empty when the
    sensor encrypts and its key was not given."""
    decrypted: bool | None = None
    """Encrypted sensors whose key was given: did it decrypt? None otherwise."""

    @property
    def sensor_id(self) -> str:
        return "ble-" + self.mac.replace(":", "").lower()

    @property
    def weak(self) -> bool:
        return self.best_rssi <= WEAK_RSSI_DBM


@dataclass(frozen=True, slots=True)
class BleScanResult:
    seconds: float
    sensors: tuple[FoundSensor, ...]
    other_devices: int = 0
    """Devices heard that do not send BTHome."""
    adverts: int = 0
    hints: tuple[str, ...] = field(default=())

    def as_config_snippet(self, *, source: str = "bleak") -> str:
        return as_config_snippet(self, source=source)


@dataclass(slots=True)
class _Heard:
    mac: str
    name: str | None
    rssi: int
    best_rssi: int
    cipher: BtHomeCipher | None
    adverts: int = 0
    encrypted: bool = False
    decrypted: bool | None = None
    values: dict[str, float | int | bool | str] = field(default_factory=dict)


async def scan_ble(
    seconds: float,
    source: AdvertSource,
    *,
    bindkeys: Mapping[str, bytes] | None = None,
    progress: Progress | None = None,
) -> BleScanResult:
    """Listen for ``seconds`` and list the BTHome sensors heard (see the module doc)."""
    keys = {mac.upper(): key for mac, key in (bindkeys or {}).items()}
    heard: dict[str, _Heard] = {}
    others: set[str] = set()
    total = 0

    def on_advert(device: BLEDevice, advert: AdvertisementData) -> None:
        nonlocal total
        total += 1
        mac = device.address.upper()
        data = advert.service_data.get(BTHOME_UUID)
        header = parse_bthome_header(data) if data else None
        if header is None:
            if mac not in heard:
                others.add(mac)
            return
        others.discard(mac)
        h = heard.get(mac)
        if h is None:
            key = keys.get(mac)
            cipher = BtHomeCipher(key) if key is not None else None
            h = heard[mac] = _Heard(mac, device.name, advert.rssi, advert.rssi, cipher)
        h.adverts += 1
        h.rssi, h.best_rssi = advert.rssi, max(h.best_rssi, advert.rssi)
        h.name = advert.local_name or h.name
        h.encrypted = header.encrypted
        if header.encrypted and h.cipher is None:
            return
        try:
            packet = decode(data or b"", mac=device.address, cipher=h.cipher)
        except BtHomeError as exc:  # a bad advert is just not shown
            if header.encrypted and exc.reason == "mic_failed":
                h.decrypted = False
            return
        if header.encrypted:
            h.decrypted = True
        for m in packet.measurements:
            if isinstance(m.value, bytes):
                h.values[m.key] = m.value.hex()
            elif isinstance(m.value, int | float | str):  # bool is an int
                h.values[m.key] = m.value

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with source.scan(on_advert):
        while (elapsed := loop.time() - started) < seconds:
            if progress is not None:
                progress(elapsed, seconds)
            await asyncio.sleep(min(0.25, seconds - elapsed))
    if progress is not None:
        progress(seconds, seconds)

    sensors = tuple(
        sorted(
            (
                FoundSensor(
                    h.mac,
                    h.name,
                    h.rssi,
                    h.best_rssi,
                    h.adverts,
                    h.encrypted,
                    dict(h.values),
                    h.decrypted,
                )
                for h in heard.values()
            ),
            key=lambda s: (-s.best_rssi, s.mac),
        )
    )
    hints = []
    if not sensors:
        hints.append(
            "No BTHome sensor heard: is the sensor powered and in range, BLE enabled on the "
            "gateway (bluetoothctl show), and the scan long enough for its advert interval?"
        )
    weak = [s.mac for s in sensors if s.weak]
    if weak:
        hints.append(f"Weak signal (<= {WEAK_RSSI_DBM} dBm) from {weak}: move gateway or sensor.")
    locked = [s.mac for s in sensors if s.encrypted and s.decrypted is not True]
    if locked:
        hints.append(
            f"Encrypted sensors {locked}: give their bindkeys (wrong key: decrypt_failed)."
        )
    return BleScanResult(seconds, sensors, len(others), total, tuple(hints))


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _describe(values: Mapping[str, float | int | bool | str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items()))


def as_config_snippet(result: BleScanResult, *, source: str = "bleak") -> str:
    """The agent's ``[ble]`` TOML for the sensors found (ids ``ble-<mac>``; encrypted sensors
    get a commented ``bindkey`` line to fill in)."""
    lines = [
        f"# BLE scan, {result.seconds:g} s: {len(result.sensors)} BTHome sensor(s)",
        "[ble]",
        f"source = {_toml(source)}",
        "watchdog_s = 120.0",
    ]
    for s in result.sensors:
        lines += [
            "",
            "[[ble.sensors]]",
            f"sensor_id = {_toml(s.sensor_id)}",
            f"mac = {_toml(s.mac)}",
            f"# RSSI {s.rssi} dBm (best {s.best_rssi}), {s.adverts} adverts"
            + (" - WEAK, will drop out" if s.weak else ""),
        ]
        if s.values:
            lines.append(f"# last values: {_describe(s.values)}")
        if s.encrypted:
            lines.append('# bindkey = "<32 hex digits: the key from the sensor\'s app>"')
    return "\n".join(lines) + "\n"
