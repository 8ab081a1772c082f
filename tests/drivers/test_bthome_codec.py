"""drivers/bthome.py byte by byte: hand-written BTHome v2 payloads and what they must decode to
(values worked out from the format description), and what must be refused and why."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from drivers.bthome import (
    OBJECT_TYPES,
    BtHomeCipher,
    BtHomeError,
    BtHomeEvent,
    BtHomeHeader,
    Measurement,
    decode,
)

ROOT = Path(__file__).resolve().parents[2]
# The example of the BTHome v2 specification: temperature 25.06 °C, humidity 50.55 %, sent by
# 54:48:E6:8F:80:A5 with this key and counter 0x00112233.
SPEC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SPEC_MAC = "54:48:E6:8F:80:A5"
SPEC_WIRE = bytes.fromhex("41e445f3c9962b332211006c7c4519")


def values(hex_payload: str) -> list[tuple[str, object]]:
    packet = decode(bytes.fromhex(hex_payload))
    return [(m.key, m.value) for m in packet.measurements]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param("4002ca09", [("temperature", 25.06)], id="0x02-temperature"),
        pytest.param("4002f6ff", [("temperature", -0.1)], id="0x02-negative"),
        pytest.param("4003bf13", [("humidity", 50.55)], id="0x03-humidity"),
        pytest.param("4004138a01", [("pressure", 1008.83)], id="0x04-pressure-3-bytes"),
        pytest.param("400b021b00", [("power", 69.14)], id="0x0b-power"),
        pytest.param("400c020c", [("voltage", 3.074)], id="0x0c-voltage"),
        pytest.param("405c0cfeffff", [("power", -5.0)], id="0x5c-signed-power"),
        pytest.param("4057ea", [("temperature", -22)], id="0x57-sint8"),
        pytest.param("405812", [("temperature", 6.3)], id="0x58-factor-0.35"),
        pytest.param("403e00000001", [("count", 16777216)], id="0x3e-uint32"),
        pytest.param("4062ffffffff", [("speed", -0.000001)], id="0x62-micro"),
        pytest.param("401601", [("battery_charging", True)], id="0x16-binary-on"),
        pytest.param("401600", [("battery_charging", False)], id="0x16-binary-off"),
        pytest.param("40530c48656c6c6f20576f726c6421", [("text", "Hello World!")], id="0x53-text"),
        pytest.param("405403a1b2c3", [("raw", b"\xa1\xb2\xc3")], id="0x54-raw"),
        pytest.param("405300", [("text", "")], id="0x53-empty-text"),
        pytest.param(
            "40505d396164",
            [("timestamp", datetime(2023, 5, 14, 19, 41, 17, tzinfo=UTC))],
            id="0x50-timestamp",
        ),
        pytest.param(
            "4002ca094503 01",
            [("temperature_1", 25.06), ("temperature_2", 25.9)],
            id="two-temperatures-numbered",
        ),
        pytest.param(
            "40100116010b102700",
            [("power", True), ("battery_charging", True), ("power", 100.0)],
            id="binary-and-sensor-power-are-not-the-same-kind",
        ),
        pytest.param("40", [], id="no-objects"),
    ],
)
def test_values(payload: str, expected: list[tuple[str, object]]) -> None:
    assert values(payload.replace(" ", "")) == expected


def test_the_header_packet_id_and_device_objects() -> None:
    packet = decode(bytes.fromhex("4400091601f00100f100010204f2000106"))
    assert packet.header == BtHomeHeader(0x44, False, True, False, None)
    assert packet.packet_id == 9
    assert packet.device_type_id == 1
    assert packet.firmware_version == "6.1.0"  # the last firmware object wins
    assert packet.measurements == (Measurement(0x16, "battery_charging", True),)


def test_the_mac_in_the_payload() -> None:
    packet = decode(bytes.fromhex("42a5808fe648541601"))
    assert packet.mac == SPEC_MAC
    assert packet.header.mac_included


def test_events() -> None:
    packet = decode(bytes.fromhex("403a013a003a803b21010a3c0203"))
    assert packet.events == (
        BtHomeEvent(0x3A, "button_1", 0x01, "press"),
        BtHomeEvent(0x3A, "button_2", 0x00, None),
        BtHomeEvent(0x3A, "button_3", 0x80, "hold_press"),
        # command: the low 5 bits of 0x21 count one argument; the high 3 bits are reserved
        BtHomeEvent(0x3B, "command", 0x01, "on", args=b"\x0a"),
        BtHomeEvent(0x3C, "dimmer", 0x02, "rotate_right", steps=3),
    )


def test_the_specification_example_decrypts() -> None:
    packet = decode(SPEC_WIRE, mac=SPEC_MAC, cipher=BtHomeCipher(SPEC_KEY))
    assert packet.header.counter == 0x00112233 and packet.header.encrypted
    assert [(m.key, m.value) for m in packet.measurements] == [
        ("temperature", 25.06),
        ("humidity", 50.55),
    ]


def test_an_encrypted_payload_with_its_mac_uses_that_mac_for_the_nonce() -> None:
    info, counter = 0x43, (7).to_bytes(4, "little")  # encrypted, MAC included
    nonce = bytes.fromhex("5448e68f80a5") + b"\xd2\xfc" + bytes([info]) + counter
    sealed = AESCCM(SPEC_KEY, tag_length=4).encrypt(nonce, bytes.fromhex("1601"), None)
    wire = bytes([info]) + bytes.fromhex("a5808fe64854") + sealed[:-4] + counter + sealed[-4:]
    # the advertiser's address (a random one, say) is not what the nonce is made of
    packet = decode(wire, mac="00:00:00:00:00:00", cipher=BtHomeCipher(SPEC_KEY))
    assert packet.mac == SPEC_MAC and packet.header.counter == 7
    assert packet.measurements == (Measurement(0x16, "battery_charging", True),)


@pytest.mark.parametrize(
    ("data", "mac", "key", "reason", "message"),
    [
        pytest.param(b"", None, None, "not_bthome_v2", "empty", id="empty"),
        pytest.param(b"\x20\x16\x01", None, None, "not_bthome_v2", "version 1", id="v1"),
        pytest.param(b"\x60\x16\x01", None, None, "not_bthome_v2", "version 3", id="v3"),
        pytest.param(b"\x42\x01\x02", None, None, "truncated", "flags", id="short-mac"),
        pytest.param(
            b"\x40\x0b\x01", None, None, "truncated", "0x0B at byte 0 needs 3", id="cut-value"
        ),
        pytest.param(
            b"\x40\x16\x01\x53", None, None, "truncated", "length byte", id="no-length-byte"
        ),
        pytest.param(
            b"\x40\x53\x05abc", None, None, "truncated", "needs 5 bytes, 3 left", id="cut-text"
        ),
        pytest.param(
            b"\x40\x16\x01\x7f\x01", None, None, "unknown_object", "0x7F at byte 2", id="unknown"
        ),
        pytest.param(b"\x40\x53\x02\xff\xfe", None, None, "bad_value", "UTF-8", id="not-utf8"),
        pytest.param(b"\x40\x00\x01\x00\x02", None, None, "bad_value", "packet ids", id="2-ids"),
        pytest.param(SPEC_WIRE, SPEC_MAC, None, "no_key", "no bindkey", id="no-key"),
        pytest.param(SPEC_WIRE, None, SPEC_KEY, "no_key", "MAC is unknown", id="no-mac"),
        pytest.param(SPEC_WIRE, SPEC_MAC, bytes(16), "mic_failed", "MIC", id="wrong-key"),
        pytest.param(
            SPEC_WIRE[:-1] + b"\x00", SPEC_MAC, SPEC_KEY, "mic_failed", "MIC", id="bad-mic"
        ),
        pytest.param(SPEC_WIRE, "A4:C1:38:AA:00:01", SPEC_KEY, "mic_failed", "MIC", id="other-mac"),
        pytest.param(b"\x41" + bytes(9), SPEC_MAC, SPEC_KEY, "truncated", "flags", id="short-enc"),
    ],
)
def test_refused(
    data: bytes, mac: str | None, key: bytes | None, reason: str, message: str
) -> None:
    cipher = BtHomeCipher(key) if key is not None else None
    with pytest.raises(BtHomeError, match=message) as exc:
        decode(data, mac=mac, cipher=cipher)
    assert exc.value.reason == reason
    assert isinstance(exc.value, ValueError)


def test_a_bindkey_is_16_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        BtHomeCipher(b"short")


def test_the_table_covers_the_format() -> None:
    """Every object id of BTHome v2 from 0x00 to 0x65 except the unassigned 0x30-0x39, and the
    device objects 0xF0-0xF2; each with a length (or a length byte) and a factor."""
    assigned = set(range(0x00, 0x66)) - set(range(0x30, 0x3A)) | {0xF0, 0xF1, 0xF2}
    assert set(OBJECT_TYPES) == assigned
    for oid, otype in OBJECT_TYPES.items():
        assert otype.object_id == oid
        assert otype.size is None or 1 <= otype.size <= 4
        assert otype.factor > 0


def test_decoding_does_not_load_cryptography_without_a_key() -> None:
    code = (
        "import sys, drivers.bthome as b;"
        "b.decode(bytes.fromhex('401601'));"
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"
