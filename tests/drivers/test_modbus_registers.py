"""Register maps, read plans and decoding of every meter profile and the generic map (pure)."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.base import DriverConfigError
from drivers.modbus_bus import (
    BadAnswer,
    ExceptionAnswer,
    NoAnswer,
    RtuOverTcp,
    RtuSerialPort,
    TcpEndpoint,
    parse_link_url,
    registers_from_response,
)
from drivers.modbus_meter import (
    PROFILES,
    REGISTERS,
    MeterDecoder,
    MeterProfile,
    MeterValues,
    ReadBlock,
    RegisterSpec,
    decode_float32,
    decode_registers,
    decode_value,
    encode_float32,
    encode_value,
    generic_profile,
    plan_reads,
)


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


# -- the maps are the datasheets ----------------------------------------------------------------


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
    assert PROFILES["ddsu666"].function_code == 0x03


def test_sdm120_map_is_the_datasheet() -> None:
    p = PROFILES["sdm120"]
    assert p.function_code == 0x04
    assert {n: s.address for n, s in p.registers.items()} == {
        "voltage_v": 0x0000,
        "current_a": 0x0006,
        "power_w": 0x000C,
        "power_factor": 0x001E,
        "frequency_hz": 0x0046,
        "energy_kwh": 0x0048,
        "total_energy_kwh": 0x0156,
    }
    assert p.registers["power_w"].scale == 1.0  # watts on the wire


def test_sdm630_map_is_the_datasheet() -> None:
    p = PROFILES["sdm630"]
    assert p.function_code == 0x04
    addresses = {n: s.address for n, s in p.registers.items()}
    assert [addresses[f"voltage{s}_v"] for s in ("", "_l2", "_l3")] == [0x0000, 0x0002, 0x0004]
    assert [addresses[f"current_l{i}_a"] for i in (1, 2, 3)] == [0x0006, 0x0008, 0x000A]
    assert [addresses[f"power_l{i}_w"] for i in (1, 2, 3)] == [0x000C, 0x000E, 0x0010]
    assert (addresses["power_w"], addresses["power_factor"]) == (0x0034, 0x003E)
    assert (addresses["frequency_hz"], addresses["energy_kwh"]) == (0x0046, 0x0048)
    assert p.phase_currents == ("current_l1_a", "current_l2_a", "current_l3_a")


@pytest.mark.parametrize(
    ("profile", "blocks"),
    [
        pytest.param("ddsu666", [(0x2000, 16), (0x4000, 2)], id="ddsu666"),
        # 0x000E..0x001D (16 registers) is too wide a gap to bridge; 0x0156 is not polled
        pytest.param("sdm120", [(0x0000, 14), (0x001E, 2), (0x0046, 4)], id="sdm120"),
        # phase voltages L2/L3 and phase powers are not polled; 0x0036..0x003D is bridged
        pytest.param("sdm630", [(0x0000, 12), (0x0034, 22)], id="sdm630"),
    ],
)
def test_read_plan_of_each_profile(profile: str, blocks: list[tuple[int, int]]) -> None:
    assert [(b.address, b.count) for b in MeterDecoder(PROFILES[profile]).blocks] == blocks


def test_plan_respects_max_gap_and_max_count() -> None:
    regs = {"a": RegisterSpec(0), "b": RegisterSpec(20), "c": RegisterSpec(22)}
    assert plan_reads(regs, max_gap=8) == (ReadBlock(0, 2), ReadBlock(20, 4))
    assert plan_reads(regs, max_gap=100) == (ReadBlock(0, 24),)
    assert plan_reads(regs, max_gap=100, max_count=10) == (ReadBlock(0, 2), ReadBlock(20, 4))
    assert plan_reads({}) == ()
    wide = {f"r{i}": RegisterSpec(i * 2) for i in range(100)}  # 200 contiguous registers
    assert plan_reads(wide) == (ReadBlock(0, 124), ReadBlock(124, 76))


# -- values: round trips per data type and word order -------------------------------------------

# (value, data type, registers high word first) — the last two columns are the wire
VALUES = [
    pytest.param(230.0, "float32", [0x4366, 0x0000], id="f32-230V"),
    pytest.param(1.5, "float32", [0x3FC0, 0x0000], id="f32-1.5kW"),
    pytest.param(0.0, "float32", [0x0000, 0x0000], id="f32-zero"),
    pytest.param(-1.0, "float32", [0xBF80, 0x0000], id="f32-negative"),
    pytest.param(50.0, "float32", [0x4248, 0x0000], id="f32-50Hz"),
    pytest.param(1234.5, "float32", [0x449A, 0x5000], id="f32-1234.5kWh"),
    pytest.param(2301.0, "uint16", [0x08FD], id="u16"),
    pytest.param(65535.0, "uint16", [0xFFFF], id="u16-max"),
    pytest.param(-2.0, "int16", [0xFFFE], id="i16-negative"),
    pytest.param(32767.0, "int16", [0x7FFF], id="i16-max"),
    pytest.param(123456789.0, "uint32", [0x075B, 0xCD15], id="u32"),
    pytest.param(4294967295.0, "uint32", [0xFFFF, 0xFFFF], id="u32-max"),
    pytest.param(-100000.0, "int32", [0xFFFE, 0x7960], id="i32-negative"),
]


@pytest.mark.parametrize(("value", "data_type", "words"), VALUES)
def test_value_round_trip_both_word_orders(value: float, data_type: str, words: list[int]) -> None:
    assert encode_value(value, data_type) == words  # type: ignore[arg-type]
    assert decode_value(words, data_type) == value  # type: ignore[arg-type]
    assert encode_value(value, data_type, "little") == words[::-1]  # type: ignore[arg-type]
    assert decode_value(words[::-1], data_type, "little") == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("words", "data_type", "message"),
    [
        pytest.param([0x4366], "float32", "two 16-bit registers", id="f32-one-word"),
        pytest.param([0x4366, 0, 0], "float32", "two 16-bit registers", id="f32-three-words"),
        pytest.param([0x10000, 0], "float32", "two 16-bit registers", id="not-16-bit"),
        pytest.param([-1, 0], "float32", "two 16-bit registers", id="negative-word"),
        pytest.param([1, 2], "int16", "one 16-bit register", id="i16-two-words"),
        pytest.param([], "uint32", "two 16-bit registers", id="u32-empty"),
    ],
)
def test_decode_value_needs_the_right_words(words: list[int], data_type: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_value(words, data_type)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "data_type"),
    [
        pytest.param(70000, "uint16", id="u16-overflow"),
        pytest.param(-1, "uint32", id="u32-negative"),
        pytest.param(1e40, "float32", id="f32-overflow"),
    ],
)
def test_encode_value_refuses_what_does_not_fit(value: float, data_type: str) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(value, data_type)  # type: ignore[arg-type]


def test_float32_helpers_are_the_value_codec() -> None:
    assert encode_float32(230.0) == [0x4366, 0x0000]
    assert decode_float32([0x0000, 0x4366], "little") == 230.0
    with pytest.raises(ValueError, match="two 16-bit registers"):
        decode_float32([0x4366])


# -- decoding whole meters (MeterDecoder) -------------------------------------------------------


def _blocks(decoder: MeterDecoder, values: Mapping[int, float]) -> list[list[int]]:
    """The register blocks of ``decoder``'s plan holding float32 ``values`` (address -> value)."""
    out = []
    for b in decoder.blocks:
        regs = [0] * b.count
        for address, value in values.items():
            off = address - b.address
            if 0 <= off < b.count:
                regs[off : off + 2] = encode_float32(value)
        out.append(regs)
    return out


DDSU = {0x2000: 229.8, 0x2002: 0.71, 0x2004: 0.1523, 0x2006: 0.02, 0x200A: 0.93, 0x200E: 50.0}
SDM120 = {0x0000: 231.5, 0x0006: 2.4, 0x000C: 520.0, 0x001E: 0.91, 0x0046: 49.98, 0x0048: 812.25}
SDM630 = {
    0x0000: 230.1, 0x0002: 229.4, 0x0004: 231.0,
    0x0006: 3.5, 0x0008: 7.25, 0x000A: 1.0,
    0x0034: 2450.0, 0x003E: 0.88, 0x0046: 50.01, 0x0048: 15234.5,
}  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "values", "expected"),
    [
        pytest.param(
            "ddsu666",
            {**DDSU, 0x4000: 1234.5},
            MeterValues(
                power_w=_f32(0.1523) * 1000.0,
                voltage_v=_f32(229.8),
                current_a=_f32(0.71),
                energy_kwh=1234.5,
                power_factor=_f32(0.93),
                frequency_hz=50.0,
            ),
            id="ddsu666",
        ),
        pytest.param(
            "sdm120",
            SDM120,
            MeterValues(
                power_w=520.0,
                voltage_v=231.5,
                current_a=_f32(2.4),
                energy_kwh=812.25,
                power_factor=_f32(0.91),
                frequency_hz=_f32(49.98),
            ),
            id="sdm120",
        ),
        pytest.param(
            "sdm630",
            SDM630,
            MeterValues(
                power_w=2450.0,
                voltage_v=_f32(230.1),
                current_a=7.25,  # the most loaded phase
                energy_kwh=15234.5,
                power_factor=_f32(0.88),
                frequency_hz=_f32(50.01),
            ),
            id="sdm630-highest-phase-current",
        ),
        pytest.param(
            "sdm630",
            {**SDM630, 0x0008: math.nan},
            MeterValues(
                power_w=2450.0,
                voltage_v=_f32(230.1),
                current_a=3.5,  # L2 is not available: the highest of the others
                energy_kwh=15234.5,
                power_factor=_f32(0.88),
                frequency_hz=_f32(50.01),
            ),
            id="sdm630-phase-nan",
        ),
        pytest.param(
            "ddsu666",
            {**DDSU, 0x2000: math.nan, 0x2002: math.inf, 0x200A: 1.7, 0x4000: 1.0},
            MeterValues(
                power_w=_f32(0.1523) * 1000.0,
                voltage_v=None,  # NaN: not available
                current_a=None,  # infinity
                energy_kwh=1.0,
                power_factor=None,  # outside -1..1
                frequency_hz=50.0,
            ),
            id="ddsu666-nan-inf-implausible",
        ),
    ],
)
def test_decode_profiles(profile: str, values: dict[int, float], expected: MeterValues) -> None:
    decoder = MeterDecoder(PROFILES[profile])
    assert decoder.decode(_blocks(decoder, values)) == expected


def test_values_become_a_meter_reading() -> None:
    ts = datetime(2026, 3, 1, tzinfo=UTC)
    v = MeterValues(power_w=100.0, voltage_v=230.0, current_a=0.5, frequency_hz=50.0)
    r = v.reading(ts, "m-1")
    assert (r.ts, r.meter_id, r.power_w, r.voltage_v, r.current_a) == (ts, "m-1", 100.0, 230.0, 0.5)
    assert (r.energy_kwh, r.power_factor) == (None, None)


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        pytest.param([[0] * 16], "expected 2 replies, got 1", id="missing-block"),
        pytest.param([[0] * 15, [0, 0]], "asked for 16 registers at 0x2000, got 15", id="short"),
        pytest.param([[0] * 16, [0, 0, 0]], "asked for 2 registers at 0x4000, got 3", id="long"),
        pytest.param([[0x10000] + [0] * 15, [0, 0]], "outside 0..65535", id="not-16-bit"),
        pytest.param(
            [[0] * 4 + [0x7FC0, 0] + [0] * 10, [0, 0]],
            "power register holds no number",
            id="nan-power",
        ),
        pytest.param(
            [[0] * 4 + [0x7F80, 0] + [0] * 10, [0, 0]],
            "power register holds no number",
            id="inf-power",
        ),
    ],
)
def test_malformed_replies_are_bad_answers(replies: list[list[int]], message: str) -> None:
    with pytest.raises(BadAnswer, match=message):
        MeterDecoder(PROFILES["ddsu666"]).decode(replies)


# -- the generic map ----------------------------------------------------------------------------

GENERIC = {
    "power_w": RegisterSpec(100, "int32", "little", scale=0.1),
    "voltage_v": RegisterSpec(102, "uint16", scale=0.1),
    "current_a": RegisterSpec(103, "int16", scale=0.01),
    "energy_kwh": RegisterSpec(110, "uint32", "big", scale=0.01),
    "power_factor": RegisterSpec(104, "int16", scale=0.001),
}


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        pytest.param(
            # power -1523 (0.1 W) little-endian words; 230.4 V; -1.25 A; PF 0.930; 12345.67 kWh
            {100: [0xFA0D, 0xFFFF], 102: [2304], 103: [0xFF83], 104: [930], 110: [0x0012, 0xD687]},
            MeterValues(
                power_w=-152.3,
                voltage_v=230.4,
                current_a=-1.25,
                energy_kwh=12345.67,
                power_factor=0.93,
            ),
            id="all-types",
        ),
        pytest.param(
            {100: [0x0000, 0x0001], 102: [0], 103: [0], 104: [0xFFFF], 110: [0, 0]},
            MeterValues(
                power_w=6553.6, voltage_v=0.0, current_a=0.0, energy_kwh=0.0, power_factor=-0.001
            ),
            id="word-order-little",
        ),
    ],
)
def test_generic_map_decoding(words: dict[int, list[int]], expected: MeterValues) -> None:
    decoder = MeterDecoder(generic_profile(GENERIC, 4))
    assert [(b.address, b.count) for b in decoder.blocks] == [(100, 12)]
    regs = [0] * 12
    for address, w in words.items():
        regs[address - 100 : address - 100 + len(w)] = w
    got = decoder.decode([regs])
    assert got.power_w == pytest.approx(expected.power_w)
    assert got == MeterValues(
        power_w=got.power_w,
        voltage_v=pytest.approx(expected.voltage_v),  # type: ignore[arg-type]
        current_a=pytest.approx(expected.current_a),  # type: ignore[arg-type]
        energy_kwh=pytest.approx(expected.energy_kwh),  # type: ignore[arg-type]
        power_factor=pytest.approx(expected.power_factor),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: generic_profile({"voltage_v": RegisterSpec(0)}), "power_w", id="no-power"
        ),
        pytest.param(
            lambda: generic_profile({"power_w": RegisterSpec(0), "watts": RegisterSpec(2)}),
            "unknown fields",
            id="unknown-field",
        ),
        pytest.param(lambda: generic_profile({"power_w": RegisterSpec(0)}, 6), "3 or 4", id="fc"),
        pytest.param(lambda: RegisterSpec(70000), "address", id="address"),
        pytest.param(lambda: RegisterSpec(0, "float64"), "data type", id="data-type"),  # type: ignore[arg-type]
        pytest.param(lambda: RegisterSpec(0, word_order="middle"), "word order", id="word-order"),  # type: ignore[arg-type]
        pytest.param(lambda: RegisterSpec(0, scale=0.0), "scale", id="zero-scale"),
        pytest.param(
            lambda: MeterProfile("x", {"power_w": RegisterSpec(0)}, phase_currents=("i1",)),
            "unknown fields",
            id="phase-field",
        ),
    ],
)
def test_bad_maps_are_refused(build: object, message: str) -> None:
    with pytest.raises(DriverConfigError, match=message):
        build()  # type: ignore[operator]


# -- decode_registers (the low-level helper) ----------------------------------------------------


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


# -- replies and exception codes (registers_from_response) --------------------------------------


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        pytest.param(
            ExceptionResponse(3, 1), ExceptionAnswer, "exception code 1", id="illegal-function"
        ),
        pytest.param(
            ExceptionResponse(3, 2), ExceptionAnswer, "exception code 2", id="illegal-address"
        ),
        pytest.param(
            ExceptionResponse(4, 4), ExceptionAnswer, "exception code 4", id="device-failure"
        ),
        pytest.param(ExceptionResponse(3, 6), ExceptionAnswer, "exception code 6", id="busy"),
        pytest.param(ExceptionResponse(3, 0x0A), NoAnswer, "gateway", id="gateway-path"),
        pytest.param(ExceptionResponse(4, 0x0B), NoAnswer, "gateway", id="gateway-no-response"),
        pytest.param(
            ReadHoldingRegistersResponse(registers=[1, 2, 3]),
            BadAnswer,
            "asked for 2 registers, got 3",
            id="wrong-count",
        ),
        pytest.param(ReadInputRegistersResponse(registers=[]), BadAnswer, "got 0", id="empty"),
    ],
)
def test_replies_that_are_errors(response: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        registers_from_response(response, 2)  # type: ignore[arg-type]


def test_exception_answer_carries_its_code() -> None:
    with pytest.raises(ExceptionAnswer) as info:
        registers_from_response(ExceptionResponse(3, 2), 2)
    assert info.value.code == 2 and info.value.fault == "modbus_exception"


def test_good_reply_gives_its_registers() -> None:
    assert registers_from_response(ReadInputRegistersResponse(registers=[1, 0xFFFF]), 2) == [
        1,
        0xFFFF,
    ]


# -- link URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "spec"),
    [
        pytest.param("tcp://10.0.0.5:1502", TcpEndpoint("10.0.0.5", 1502), id="tcp"),
        pytest.param("tcp://10.0.0.5", TcpEndpoint("10.0.0.5", 502), id="tcp-default-port"),
        pytest.param("socket://10.0.0.6:4196", RtuOverTcp("10.0.0.6", 4196), id="socket"),
        pytest.param("/dev/ttyUSB0", RtuSerialPort("/dev/ttyUSB0", 9600), id="serial"),
    ],
)
def test_link_urls(url: str, spec: object) -> None:
    assert parse_link_url(url) == spec


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("socket://10.0.0.6", id="socket-no-port"),
        pytest.param("tcp://:502", id="no-host"),
        pytest.param("tcp://h:99999", id="bad-port"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_link_urls(url: str) -> None:
    with pytest.raises(DriverConfigError):
        parse_link_url(url)


def test_serial_character_time() -> None:
    assert RtuSerialPort("/dev/x", 9600).char_time_s() == pytest.approx(10 / 9600)
    assert RtuSerialPort("/dev/x", 2400, "E").char_time_s() == pytest.approx(11 / 2400)
