"""The DDSU666 register map, the read plan and the register decoding (pure)."""

from __future__ import annotations

import math
import struct

import pytest

from drivers.modbus_meter import (
    REGISTERS,
    ReadBlock,
    RegisterSpec,
    decode_float32,
    decode_registers,
    encode_float32,
    plan_reads,
)


def test_ddsu666_map_is_the_datasheet() -> None:
    assert {name: spec.address for name, spec in REGISTERS.items()} == {
        "voltage_v": 0x2000,
        "current_a": 0x2002,
        "power_w": 0x2004,
        "power_factor": 0x200A,
        "frequency_hz": 0x200E,
        "energy_kwh": 0x4000,
    }
    assert all(s.count == 2 and s.data_type == "float32" for s in REGISTERS.values())
    assert all(s.word_order == "big" for s in REGISTERS.values())
    assert REGISTERS["power_w"].scale == 1000.0  # kW on the wire, W in the event


def test_reads_are_coalesced_into_two_blocks() -> None:
    assert plan_reads(REGISTERS) == (ReadBlock(0x2000, 16), ReadBlock(0x4000, 2))


def test_plan_respects_max_gap_and_max_count() -> None:
    regs = {"a": RegisterSpec(0), "b": RegisterSpec(20), "c": RegisterSpec(22)}
    assert plan_reads(regs, max_gap=8) == (ReadBlock(0, 2), ReadBlock(20, 4))
    assert plan_reads(regs, max_gap=100) == (ReadBlock(0, 24),)
    assert plan_reads(regs, max_gap=100, max_count=10) == (ReadBlock(0, 2), ReadBlock(20, 4))
    assert plan_reads({}) == ()


# (value, registers high word first) — IEEE 754 single precision
FLOATS = [
    pytest.param(230.0, [0x4366, 0x0000], id="230V"),
    pytest.param(1.5, [0x3FC0, 0x0000], id="1.5kW"),
    pytest.param(0.0, [0x0000, 0x0000], id="zero"),
    pytest.param(-1.0, [0xBF80, 0x0000], id="negative"),
    pytest.param(50.0, [0x4248, 0x0000], id="50Hz"),
    pytest.param(1234.5, [0x449A, 0x5000], id="1234.5kWh"),
]


@pytest.mark.parametrize(("value", "words"), FLOATS)
def test_float32_words(value: float, words: list[int]) -> None:
    assert encode_float32(value) == words
    assert decode_float32(words) == value
    assert encode_float32(value, "little") == words[::-1]
    assert decode_float32(words[::-1], "little") == value


@pytest.mark.parametrize(
    "words",
    [
        pytest.param([0x4366], id="one-word"),
        pytest.param([0x4366, 0, 0], id="three-words"),
        pytest.param([0x10000, 0], id="not-16-bit"),
        pytest.param([-1, 0], id="negative-word"),
    ],
)
def test_float32_needs_two_16_bit_words(words: list[int]) -> None:
    with pytest.raises(ValueError, match="two 16-bit registers"):
        decode_float32(words)


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def _low_block(
    *, volts: float, amps: float, kw: float, pf: float, hz: float, fill: float = 0.0
) -> list[int]:
    regs = [0] * 16
    for addr, value in {
        0x2000: volts,
        0x2002: amps,
        0x2004: kw,
        0x2006: fill,
        0x200A: pf,
        0x200E: hz,
    }.items():
        regs[addr - 0x2000 : addr - 0x2000 + 2] = encode_float32(value)
    return regs


def test_decode_low_block_round_trip() -> None:
    regs = _low_block(volts=229.8, amps=0.71, kw=0.1523, pf=0.93, hz=50.0)
    assert decode_registers(0x2000, regs) == {
        "voltage_v": _f32(229.8),
        "current_a": _f32(0.71),
        "power_w": _f32(0.1523) * 1000.0,
        "power_factor": _f32(0.93),
        "frequency_hz": 50.0,
    }
    assert decode_registers(0x2000, regs)["power_w"] == pytest.approx(152.3, abs=1e-3)


def test_decode_energy_block() -> None:
    assert decode_registers(0x4000, encode_float32(1234.5)) == {"energy_kwh": 1234.5}


def test_fields_outside_the_block_are_left_out() -> None:
    regs = _low_block(volts=230.0, amps=1.0, kw=0.2, pf=0.9, hz=50.0)
    assert decode_registers(0x2000, regs[:6]) == {
        "voltage_v": 230.0,
        "current_a": 1.0,
        "power_w": _f32(0.2) * 1000.0,
    }
    assert decode_registers(0x2002, regs[2:4]) == {"current_a": 1.0}
    assert decode_registers(0x3000, regs) == {}


def test_not_a_number_values_are_left_out() -> None:
    regs = _low_block(volts=math.nan, amps=math.inf, kw=0.5, pf=0.9, hz=50.0)
    assert decode_registers(0x2000, regs) == {
        "power_w": 500.0,
        "power_factor": _f32(0.9),
        "frequency_hz": 50.0,
    }


def test_word_order_is_per_register() -> None:
    specs = {"x": RegisterSpec(0, word_order="little", scale=2.0)}
    assert decode_registers(0, encode_float32(1.5, "little"), specs) == {"x": 3.0}
