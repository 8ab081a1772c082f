"""Random input into every pure Modbus decoder: nothing but the documented errors escapes, and
nothing that is not a finite, plausible number is delivered.

One hypothesis test feeds each example to all of them (the reply hunt on the RTU line, every
profile's register decoder, a generic map's and the low-level block decoder), so each decoder
sees 10,000 random inputs at the cost of one test's overhead.
"""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus_bus import BadAnswer
from drivers.modbus_meter import (
    PROFILES,
    MeterDecoder,
    MeterValues,
    RegisterSpec,
    decode_registers,
    generic_profile,
)
from drivers.modbus_rtu import crc16, decode_read_reply, find_reply

DECODERS = [MeterDecoder(p) for p in PROFILES.values()] + [
    MeterDecoder(
        generic_profile(
            {
                "power_w": RegisterSpec(10, "int32", "little", scale=0.1),
                "voltage_v": RegisterSpec(12, "uint16", scale=0.1),
                "current_a": RegisterSpec(13, "int16", scale=0.01),
                "energy_kwh": RegisterSpec(40, "uint32", scale=0.01),
                "power_factor": RegisterSpec(14, "float32", "little"),
            },
            4,
        )
    )
]
FIELDS = ("power_w", "voltage_v", "current_a", "energy_kwh", "power_factor", "frequency_hz")
SHAPES = ("exact", "exact", "short", "long", "bad-word", "few-replies")


def _words(raw: bytes) -> list[int]:
    return list(struct.unpack(f">{len(raw) // 2}H", raw[: len(raw) // 2 * 2]))


def _check_values(values: MeterValues) -> None:
    for name in FIELDS:
        v = getattr(values, name)
        assert v is None or (isinstance(v, float) and math.isfinite(v)), (name, v)
    assert values.power_factor is None or -1.0 <= values.power_factor <= 1.0
    assert values.voltage_v is None or 0.0 <= values.voltage_v <= 1000.0
    assert values.frequency_hz is None or 0.0 <= values.frequency_hz <= 100.0


def _registers(decoder: MeterDecoder, raw: bytes, shape: str) -> list[list[int]]:
    words = _words(raw)
    replies: list[list[int]] = []
    for b in decoder.blocks:
        block, words = words[: b.count], words[b.count :]
        replies.append(block + [0] * (b.count - len(block)))
    if shape == "short":
        replies[-1] = replies[-1][:-1]
    elif shape == "long":
        replies[0] = [*replies[0], 7]
    elif shape == "bad-word":
        replies[0][0] += 0x10000
    elif shape == "few-replies":
        replies = replies[:-1]
    return replies


def _hunt(raw: bytes, slave: int, fc: int) -> None:
    hidden = raw[:1] == b"\x01"  # then a real reply hides behind up to 6 bytes of noise
    data = raw
    if hidden:
        frame = bytes([slave, fc, 2]) + raw[1:3].ljust(2, b"\x00")
        data = raw[3 : 3 + raw[0] % 7] + frame + crc16(frame) + raw[3:]
    found = find_reply(data, slave, fc)
    if found is None:
        assert not hidden
        return
    assert data[found.skipped : found.skipped + len(found.frame)] == found.frame
    got_slave, got_fc, payload = decode_read_reply(found.frame)
    assert got_slave == slave and got_fc in (fc, fc | 0x80)
    if got_fc == fc:
        assert isinstance(payload, tuple) and all(0 <= r <= 0xFFFF for r in payload)


@settings(max_examples=10_000, deadline=None)
@given(raw=st.binary(max_size=200), pick=st.integers(0, 2**16 - 1))
def test_modbus_decoders_on_random_input(raw: bytes, pick: int) -> None:
    # the RTU reply hunt, on random bytes
    _hunt(raw, slave=pick % 247 + 1, fc=3 + pick % 2)

    # a register decoder, on random registers in right and wrong shapes
    decoder = DECODERS[pick % len(DECODERS)]
    shape = SHAPES[(pick >> 8) % len(SHAPES)]
    replies = _registers(decoder, raw, shape)
    try:
        values: MeterValues | None = decoder.decode(replies)
    except BadAnswer:
        values = None
    if values is not None:  # (an exact shape may still lack a usable power value)
        assert shape == "exact"
        _check_values(values)

    # the low-level block decoder
    try:
        loose = decode_registers(0x2000 - (pick % 5), replies[0] if replies else [])
    except ValueError:
        assert shape == "bad-word"
    else:
        assert all(isinstance(v, float) and math.isfinite(v) for v in loose.values())
