"""BTHome v2 advert service data, as a charging sensor's firmware builds it.

Independent of ``drivers`` on purpose: the simulator speaks the protocol from its specification
(https://bthome.io/format/), so a bug in the driver's reading of it is not mirrored here.

Service data UUID 0xFCD2; first byte device information (bit 0 encrypted, bit 2 trigger-based,
bits 5-7 version = 2), then object id / value pairs in ascending object id order, little-endian.

Encrypted adverts (:func:`encrypt`): the objects are encrypted with AES-CCM under the sensor's
16-byte bindkey with a 4-byte MIC; nonce = MAC (6 bytes, as written) + ``D2 FC`` + device-info
byte + counter (4 bytes, little-endian); service data = device-info byte (bit 0 set) +
ciphertext + counter + MIC.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

BTHOME_UUID16 = 0xFCD2
BTHOME_SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"

DEVICE_INFO_V2 = 0x40  # version 2, not encrypted, sent at a regular interval
DEVICE_INFO_ENCRYPTED = 0x01
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


def encrypt(plain: bytes, *, mac: str, bindkey: bytes, counter: int) -> bytes:
    """Encrypted service data for the plaintext service data ``plain`` (from
    :func:`service_data`), as a sensor with ``bindkey`` sends it with AES-CCM counter
    ``counter``."""
    if len(bindkey) != 16:
        raise ValueError("a BTHome bindkey is 16 bytes")
    if not 0 <= counter <= 0xFFFFFFFF:
        raise ValueError("the counter is 4 bytes")
    info = plain[0] | DEVICE_INFO_ENCRYPTED
    count = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + count
    sealed = AESCCM(bindkey, tag_length=4).encrypt(nonce, plain[1:], None)
    return bytes([info]) + sealed[:-4] + count + sealed[-4:]
