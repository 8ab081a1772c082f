"""BTHome v2 service data to typed values: the project's own decoder (pure: no IO, no clock).

BTHome v2 (https://bthome.io/format/) is the service data of UUID 0xFCD2:

- byte 0, the device information: bit 0 encrypted, bit 1 the sensor's MAC follows (6 bytes,
  least significant byte first), bit 2 trigger-based (the sensor sends on change, not at a
  regular interval), bits 5-7 the version (2);
- then objects, each an object id byte and its value, little-endian. The id fixes the length,
  sign and factor of the value (:data:`OBJECT_TYPES`); text (0x53) and raw (0x54) objects carry
  a length byte first, a command event (0x3B) a byte whose low 5 bits count its argument bytes.
  Packet id (0x00) numbers the packets; 0xF0-0xF2 describe the device (type id, firmware).
- encrypted (bit 0): the objects are AES-CCM ciphertext under the sensor's 16-byte bindkey,
  followed by a 4-byte counter (little-endian) and a 4-byte MIC. The nonce is the MAC (6 bytes,
  most significant first), ``D2 FC``, the device-information byte and the counter.

Why our own and not bthome-ble: importing bthome-ble loads habluetooth's scanners and manager,
the D-Bus libraries and ``cryptography``, about 13 MiB resident on a gateway whose whole budget
is 60 MB (docs/benchmarks.md, "Agent memory"). This module imports nothing beyond the standard
library; ``cryptography`` is imported only when a :class:`BtHomeCipher` is made, that is when a
sensor has a bindkey. tests/drivers/test_bthome_differential.py checks it against bthome-ble
(a development dependency) on generated payloads.

What is refused (:class:`BtHomeError`, ``reason`` plus a sentence): not version 2, a payload
cut short (an object without all its bytes), an object id this table does not know (its length
is unknown, so nothing after it can be read), text that is not UTF-8, several packet ids, an
encrypted payload without a key or whose MIC does not verify. There are no partial results: a
payload is decoded whole or refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported for real only by BtHomeCipher (a sensor with a bindkey)
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

__all__ = [
    "BUTTON_EVENTS",
    "COMMAND_EVENTS",
    "DIMMER_EVENTS",
    "OBJECT_TYPES",
    "BtHomeCipher",
    "BtHomeError",
    "BtHomeEvent",
    "BtHomeHeader",
    "BtHomePacket",
    "Measurement",
    "ObjectType",
    "decode",
    "parse_bthome_header",
]

VERSION = 2
_ENCRYPTED, _MAC_INCLUDED, _TRIGGER = 0x01, 0x02, 0x04
_COUNTER_AND_MIC = 8
_MIN_CIPHERTEXT = 2  # the smallest object: an id and one byte
_NONCE_UUID = b"\xd2\xfc"

Kind = Literal["packet_id", "sensor", "binary", "event", "device"]
Encoding = Literal["uint", "sint", "text", "raw", "timestamp", "command", "firmware"]


@dataclass(frozen=True, slots=True)
class ObjectType:
    """What one object id means: its name, how many value bytes follow (None: a length byte
    says), how to read them and the factor of the unit."""

    object_id: int
    kind: Kind
    name: str
    size: int | None
    encoding: Encoding = "uint"
    factor: float = 1.0
    unit: str | None = None

    @property
    def decimals(self) -> int:
        """Decimal places the factor gives (0.01 -> 2, 0.35 -> 2, 1 -> 0)."""
        text = f"{self.factor:.10f}".rstrip("0")
        return len(text.split(".")[1]) if "." in text else 0


def _table() -> dict[int, ObjectType]:
    t: dict[int, ObjectType] = {}

    def num(oid: int, name: str, size: int, factor: float = 1.0, unit: str | None = None, *,
            signed: bool = False) -> None:  # fmt: skip
        t[oid] = ObjectType(oid, "sensor", name, size, "sint" if signed else "uint", factor, unit)

    t[0x00] = ObjectType(0x00, "packet_id", "packet_id", 1)
    num(0x01, "battery", 1, unit="%")
    num(0x02, "temperature", 2, 0.01, "°C", signed=True)
    num(0x03, "humidity", 2, 0.01, "%")
    num(0x04, "pressure", 3, 0.01, "mbar")
    num(0x05, "illuminance", 3, 0.01, "lx")
    num(0x06, "mass", 2, 0.01, "kg")
    num(0x07, "mass", 2, 0.01, "lb")
    num(0x08, "dew_point", 2, 0.01, "°C", signed=True)
    num(0x09, "count", 1)
    num(0x0A, "energy", 3, 0.001, "kWh")
    num(0x0B, "power", 3, 0.01, "W")
    num(0x0C, "voltage", 2, 0.001, "V")
    num(0x0D, "pm25", 2, unit="µg/m³")
    num(0x0E, "pm10", 2, unit="µg/m³")
    binaries = {
        0x0F: "generic", 0x10: "power", 0x11: "opening", 0x15: "battery",
        0x16: "battery_charging", 0x17: "carbon_monoxide", 0x18: "cold", 0x19: "connectivity",
        0x1A: "door", 0x1B: "garage_door", 0x1C: "gas", 0x1D: "heat", 0x1E: "light",
        0x1F: "lock", 0x20: "moisture", 0x21: "motion", 0x22: "moving", 0x23: "occupancy",
        0x24: "plug", 0x25: "presence", 0x26: "problem", 0x27: "running", 0x28: "safety",
        0x29: "smoke", 0x2A: "sound", 0x2B: "tamper", 0x2C: "vibration", 0x2D: "window",
    }  # fmt: skip
    for oid, name in binaries.items():
        t[oid] = ObjectType(oid, "binary", name, 1)
    num(0x12, "carbon_dioxide", 2, unit="ppm")
    num(0x13, "volatile_organic_compounds", 2, unit="µg/m³")
    num(0x14, "moisture", 2, 0.01, "%")
    num(0x2E, "humidity", 1, unit="%")
    num(0x2F, "moisture", 1, unit="%")
    t[0x3A] = ObjectType(0x3A, "event", "button", 1)
    t[0x3B] = ObjectType(0x3B, "event", "command", None, "command")
    t[0x3C] = ObjectType(0x3C, "event", "dimmer", 2)
    num(0x3D, "count", 2)
    num(0x3E, "count", 4)
    num(0x3F, "rotation", 2, 0.1, "°", signed=True)
    num(0x40, "distance", 2, unit="mm")
    num(0x41, "distance", 2, 0.1, "m")
    num(0x42, "duration", 3, 0.001, "s")
    num(0x43, "current", 2, 0.001, "A")
    num(0x44, "speed", 2, 0.01, "m/s")
    num(0x45, "temperature", 2, 0.1, "°C", signed=True)
    num(0x46, "uv_index", 1, 0.1)
    num(0x47, "volume", 2, 0.1, "L")
    num(0x48, "volume", 2, unit="mL")
    num(0x49, "volume_flow_rate", 2, 0.001, "m³/h")
    num(0x4A, "voltage", 2, 0.1, "V")
    num(0x4B, "gas", 3, 0.001, "m³")
    num(0x4C, "gas", 4, 0.001, "m³")
    num(0x4D, "energy", 4, 0.001, "kWh")
    num(0x4E, "volume", 4, 0.001, "L")
    num(0x4F, "water", 4, 0.001, "L")
    t[0x50] = ObjectType(0x50, "sensor", "timestamp", 4, "timestamp")
    num(0x51, "acceleration", 2, 0.001, "m/s²")
    num(0x52, "gyroscope", 2, 0.001, "°/s")
    t[0x53] = ObjectType(0x53, "sensor", "text", None, "text")
    t[0x54] = ObjectType(0x54, "sensor", "raw", None, "raw")
    num(0x55, "volume_storage", 4, 0.001, "L")
    num(0x56, "conductivity", 2, unit="µS/cm")
    num(0x57, "temperature", 1, unit="°C", signed=True)
    num(0x58, "temperature", 1, 0.35, "°C", signed=True)
    num(0x59, "count", 1, signed=True)
    num(0x5A, "count", 2, signed=True)
    num(0x5B, "count", 4, signed=True)
    num(0x5C, "power", 4, 0.01, "W", signed=True)
    num(0x5D, "current", 2, 0.001, "A", signed=True)
    num(0x5E, "direction", 2, 0.01, "°")
    num(0x5F, "precipitation", 2, 0.1, "mm")
    num(0x60, "channel", 1)
    num(0x61, "rotational_speed", 2, unit="rpm")
    num(0x62, "speed", 4, 0.000001, "m/s", signed=True)
    num(0x63, "acceleration", 4, 0.000001, "m/s²", signed=True)
    num(0x64, "light_level", 1)
    num(0x65, "settings_revision", 1)
    t[0xF0] = ObjectType(0xF0, "device", "device_type_id", 2)
    t[0xF1] = ObjectType(0xF1, "device", "firmware_version", 4, "firmware")
    t[0xF2] = ObjectType(0xF2, "device", "firmware_version", 3, "firmware")
    return dict(sorted(t.items()))


OBJECT_TYPES: Mapping[int, ObjectType] = _table()
"""Every BTHome v2 object id this decoder reads, by id."""

BUTTON_EVENTS: Mapping[int, str] = {
    0x01: "press", 0x02: "double_press", 0x03: "triple_press", 0x04: "long_press",
    0x05: "long_double_press", 0x06: "long_triple_press", 0x80: "hold_press",
    0x81: "hold_release",
}  # fmt: skip
"""Button event codes (0x00: no event)."""
DIMMER_EVENTS: Mapping[int, str] = {0x01: "rotate_left", 0x02: "rotate_right"}
"""Dimmer event codes (0x00: no event); the second byte is the number of steps."""
COMMAND_EVENTS: Mapping[int, str] = {
    0x00: "off", 0x01: "on", 0x02: "toggle", 0x03: "step_up", 0x04: "step_down",
}  # fmt: skip
"""Command opcodes; the bytes after the opcode are its arguments."""

ErrorReason = Literal[
    "not_bthome_v2", "truncated", "unknown_object", "bad_value", "no_key", "mic_failed"
]


class BtHomeError(ValueError):
    """Service data this decoder refuses; ``reason`` classifies it, the message explains."""

    def __init__(self, reason: ErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: ErrorReason = reason


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
    if not data or data[0] >> 5 != VERSION:
        return None
    info = data[0]
    encrypted, mac_included = bool(info & _ENCRYPTED), bool(info & _MAC_INCLUDED)
    if mac_included and len(data) < 7:
        return None
    body = data[7:] if mac_included else data[1:]
    counter = None
    if encrypted:
        if len(body) < _MIN_CIPHERTEXT + _COUNTER_AND_MIC:
            return None
        counter = int.from_bytes(body[-8:-4], "little")
    return BtHomeHeader(info, encrypted, bool(info & _TRIGGER), mac_included, counter)


Value = int | float | bool | str | bytes | datetime


@dataclass(frozen=True, slots=True)
class Measurement:
    """One sensor or binary-sensor object."""

    object_id: int
    key: str
    """The name, with ``_1``, ``_2``, ... when the packet holds several objects of the same
    name and unit (two temperatures: ``temperature_1``, ``temperature_2``)."""
    value: Value
    """int or float (scaled by the factor, rounded to its decimals) for numbers, bool for
    binary sensors, str for text, bytes for raw, an aware UTC datetime for timestamps."""
    unit: str | None = None

    @property
    def binary(self) -> bool:
        return OBJECT_TYPES[self.object_id].kind == "binary"


@dataclass(frozen=True, slots=True)
class BtHomeEvent:
    """A button, dimmer or command event object."""

    object_id: int
    key: str
    """``button``, ``dimmer`` or ``command`` (with ``_1``, ... as for measurements)."""
    code: int
    event: str | None
    """The event's name (``press``, ``rotate_left``, ``on``, ...); None for code 0 of a button
    or dimmer (no event) and for codes the format does not define."""
    steps: int | None = None
    """Dimmer only: how many steps it was turned."""
    args: bytes | None = None
    """Command only: the argument bytes after the opcode."""


@dataclass(frozen=True, slots=True)
class BtHomePacket:
    """One decoded BTHome v2 service data."""

    header: BtHomeHeader
    mac: str | None
    """The MAC the service data carries itself (bit 1), as ``AA:BB:CC:DD:EE:FF``."""
    packet_id: int | None
    measurements: tuple[Measurement, ...]
    events: tuple[BtHomeEvent, ...]
    device_type_id: int | None = None
    firmware_version: str | None = None

    def measurements_of(self, *object_ids: int) -> list[Measurement]:
        """The measurements of the given object ids, in packet order."""
        return [m for m in self.measurements if m.object_id in object_ids]


class BtHomeCipher:
    """AES-CCM for one sensor's bindkey. Importing ``cryptography`` happens here, so a gateway
    whose sensors all send in clear never loads it."""

    def __init__(self, bindkey: bytes) -> None:
        if len(bindkey) != 16:
            raise ValueError("a BTHome bindkey is 16 bytes (32 hex digits)")
        from cryptography.hazmat.primitives.ciphers.aead import AESCCM  # noqa: PLC0415

        self._aes: AESCCM = AESCCM(bindkey, tag_length=4)

    def decrypt(self, nonce: bytes, ciphertext: bytes, mic: bytes) -> bytes | None:
        """The plaintext, or None when the MIC does not verify."""
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - loaded with AESCCM

        try:
            return self._aes.decrypt(nonce, ciphertext + mic, None)
        except InvalidTag:
            return None


def _mac_bytes(mac: str | None) -> bytes | None:
    if mac is None:
        return None
    try:
        raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError:
        return None
    return raw if len(raw) == 6 else None


def decode(
    data: bytes, *, mac: str | None = None, cipher: BtHomeCipher | None = None
) -> BtHomePacket:
    """Decode BTHome v2 service data (the bytes of UUID 0xFCD2).

    ``mac`` is the advertiser's address (``AA:BB:...``), needed for the nonce of an encrypted
    packet that does not carry its MAC; ``cipher`` the sensor's key. Raises :class:`BtHomeError`.
    """
    header = parse_bthome_header(data)
    if header is None:
        if not data:
            raise BtHomeError("not_bthome_v2", "empty service data")
        if data[0] >> 5 != VERSION:
            raise BtHomeError(
                "not_bthome_v2", f"version {data[0] >> 5} in the device-information byte, not 2"
            )
        raise BtHomeError("truncated", "shorter than its device-information flags require")
    included = data[1:7][::-1] if header.mac_included else None
    body = data[7:] if header.mac_included else data[1:]
    if header.encrypted:
        if cipher is None:
            raise BtHomeError("no_key", "encrypted service data but no bindkey")
        mac_raw = included if included is not None else _mac_bytes(mac)
        if mac_raw is None:
            raise BtHomeError("no_key", "encrypted service data but the sensor's MAC is unknown")
        nonce = mac_raw + _NONCE_UUID + bytes([header.device_info]) + body[-8:-4]
        plain = cipher.decrypt(nonce, body[:-8], body[-4:])
        if plain is None:
            raise BtHomeError("mic_failed", "the MIC does not verify (wrong bindkey or forged)")
        body = plain
    mac_text = ":".join(f"{b:02X}" for b in included) if included is not None else None
    return _objects(header, mac_text, body)


def _objects(header: BtHomeHeader, mac: str | None, body: bytes) -> BtHomePacket:
    found: list[tuple[ObjectType, bytes]] = []
    pos = 0
    while pos < len(body):
        oid = body[pos]
        otype = OBJECT_TYPES.get(oid)
        if otype is None:
            raise BtHomeError(
                "unknown_object",
                f"unknown object id 0x{oid:02X} at byte {pos}: its length is unknown, so the "
                "rest cannot be read",
            )
        start = pos + 1
        if otype.size is not None:
            size = otype.size
        else:
            if start >= len(body):
                raise BtHomeError(
                    "truncated",
                    f"cut short: object 0x{oid:02X} at byte {pos} lacks its length byte",
                )
            size = body[start] if otype.encoding != "command" else 1 + (body[start] & 0x1F)
            start += 1
        end = start + size
        if end > len(body):
            raise BtHomeError(
                "truncated",
                f"cut short: object 0x{oid:02X} at byte {pos} needs {size} bytes, "
                f"{len(body) - start} left",
            )
        found.append((otype, body[start:end]))
        pos = end

    groups = Counter((o.kind, o.name, o.unit) for o, _ in found if o.kind in _KEYED)
    seen: Counter[tuple[str, str, str | None]] = Counter()
    packet_id: int | None = None
    device_type: int | None = None
    firmware: str | None = None
    measurements: list[Measurement] = []
    events: list[BtHomeEvent] = []
    for otype, raw in found:
        group = (otype.kind, otype.name, otype.unit)
        key = otype.name
        if groups[group] > 1:
            seen[group] += 1
            key = f"{otype.name}_{seen[group]}"
        match otype.kind:
            case "packet_id":
                if packet_id is not None:
                    raise BtHomeError("bad_value", "several packet ids in one packet")
                packet_id = raw[0]
            case "device":
                if otype.encoding == "firmware":
                    firmware = ".".join(str(b) for b in reversed(raw))
                else:
                    device_type = int.from_bytes(raw, "little")
            case "event":
                events.append(_event(otype, key, raw))
            case "binary":
                measurements.append(Measurement(otype.object_id, key, raw[0] != 0))
            case "sensor":
                measurements.append(
                    Measurement(otype.object_id, key, _value(otype, raw), otype.unit)
                )
    return BtHomePacket(
        header, mac, packet_id, tuple(measurements), tuple(events), device_type, firmware
    )


_KEYED = frozenset({"sensor", "binary", "event"})


def _value(otype: ObjectType, raw: bytes) -> Value:
    match otype.encoding:
        case "text":
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BtHomeError(
                    "bad_value", f"text object 0x{otype.object_id:02X} is not UTF-8"
                ) from None
        case "raw":
            return raw
        case "timestamp":
            return datetime.fromtimestamp(int.from_bytes(raw, "little"), tz=UTC)
    number = int.from_bytes(raw, "little", signed=otype.encoding == "sint")
    if otype.factor == 1:
        return number
    return round(number * otype.factor, otype.decimals)


def _event(otype: ObjectType, key: str, raw: bytes) -> BtHomeEvent:
    code = raw[0]
    if otype.name == "button":
        return BtHomeEvent(otype.object_id, key, code, BUTTON_EVENTS.get(code))
    if otype.name == "dimmer":
        return BtHomeEvent(otype.object_id, key, code, DIMMER_EVENTS.get(code), steps=raw[1])
    return BtHomeEvent(otype.object_id, key, code, COMMAND_EVENTS.get(code), args=raw[1:])
