"""BTHome v2 advert service data, as a charging sensor's firmware builds it.

Independent of ``drivers`` on purpose: the simulator speaks the protocol from its specification
(https://bthome.io/format/), so a bug in the driver's reading of it is not mirrored here.

Service data UUID 0xFCD2; first byte device information (bit 0 encrypted, bit 2 trigger-based,
bits 5-7 version = 2), then object id / value pairs in ascending object id order, little-endian.
"""

from __future__ import annotations

BTHOME_UUID16 = 0xFCD2
BTHOME_SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"

DEVICE_INFO_V2 = 0x40  # version 2, not encrypted, sent at a regular interval
DEVICE_INFO_TRIGGER = 0x04

OBJ_PACKET_ID = 0x00  # uint8
OBJ_BATTERY = 0x01  # uint8, %
OBJ_POWER = 0x0B  # uint24, 0.01 W
OBJ_BATTERY_CHARGING = 0x16  # uint8, 0/1

_UINT24_MAX = 0xFFFFFF


def service_data(
    *,
    packet_id: int | None = None,
    battery_pct: int | None = None,
    power_w: float | None = None,
    charging: bool | None = None,
    trigger_based: bool = False,
) -> bytes:
    """The BTHome v2 service data bytes (unencrypted) for the given measurements."""
    out = bytearray([DEVICE_INFO_V2 | (DEVICE_INFO_TRIGGER if trigger_based else 0)])
    if packet_id is not None:
        out += bytes([OBJ_PACKET_ID, packet_id & 0xFF])
    if battery_pct is not None:
        out += bytes([OBJ_BATTERY, max(0, min(100, battery_pct))])
    if power_w is not None:
        raw = max(0, min(_UINT24_MAX, round(power_w * 100)))
        out += bytes([OBJ_POWER]) + raw.to_bytes(3, "little")
    if charging is not None:
        out += bytes([OBJ_BATTERY_CHARGING, 1 if charging else 0])
    return bytes(out)
