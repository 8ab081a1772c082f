"""Byte-level tests of the DL/T 645-2007 codec (tables, prefixes, malformed cases, resync, fuzz)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dlt645 import (
    DATA_IDS,
    DI_CURRENT_A,
    DI_ENERGY,
    DI_FREQUENCY,
    DI_POWER,
    DI_POWER_FACTOR,
    DI_VOLTAGE_A,
    AddressReply,
    Dlt645Decoder,
    ErrorReply,
    Frame,
    Malformed,
    OtherFrame,
    ReadAddressRequest,
    ReadReply,
    ReadRequest,
    decode,
    decode_value,
    encode,
    encode_read,
    encode_read_address,
    encode_value,
)

A = "000000123456"
DOMAIN_EXAMPLE = bytes.fromhex("68 56 34 12 00 00 00 68 11 04 33 34 34 35 51 16")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# (wire bytes, frame); every one is a whole frame: used == len(wire)
VALID = [
    pytest.param(DOMAIN_EXAMPLE, ReadRequest(A, DI_VOLTAGE_A), id="domain-md-read-voltage"),
    pytest.param(
        h("fe fe fe fe") + DOMAIN_EXAMPLE, ReadRequest(A, DI_VOLTAGE_A), id="four-wake-up-bytes"
    ),
    pytest.param(h("fe") + DOMAIN_EXAMPLE, ReadRequest(A, DI_VOLTAGE_A), id="one-wake-up-byte"),
    pytest.param(h("68 aa aa aa aa aa aa 68 13 00 df 16"), ReadAddressRequest(), id="read-address"),
    pytest.param(
        h("fe fe fe fe 68 56 34 12 00 00 00 68 91 06 33 34 34 35 34 55 5c 16"),
        ReadReply(A, DI_VOLTAGE_A, 220.1),
        id="voltage-220.1V",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 07 33 33 36 35 78 56 b4 57 16"),
        ReadReply(A, DI_POWER, -1.2345),
        id="power-negative-kW",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 07 33 34 35 35 56 84 33 e2 16"),
        ReadReply(A, DI_CURRENT_A, 5.123),
        id="current-5.123A",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 08 33 33 33 33 ab 89 67 45 b1 16"),
        ReadReply(A, DI_ENERGY, 123456.78),
        id="energy-kWh",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 06 33 33 39 35 33 b8 c2 16"),
        ReadReply(A, DI_POWER_FACTOR, -0.5),
        id="power-factor-negative",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 06 35 33 b3 35 33 83 09 16"),
        ReadReply(A, DI_FREQUENCY, 50.0),
        id="frequency-50Hz",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 b1 06 33 34 34 35 cc 55 14 16"),
        ReadReply(A, DI_VOLTAGE_A, 229.9, follow_up=True),
        id="reply-with-follow-up-0xB1",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 d1 01 35 73 16"), ErrorReply(A, 0x02), id="error-no-such-data"
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 93 06 89 67 45 33 33 33 d3 16"),
        AddressReply(A),
        id="address-reply",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 06 34 37 33 37 45 67 84 16"),
        OtherFrame(A, 0x91, h("01 04 00 04 12 34")),
        id="reply-unknown-di",
    ),
    pytest.param(
        h("68 99 99 99 99 99 99 68 08 06 33 33 45 57 36 59 05 16"),
        OtherFrame("999999999999", 0x08, h("00 00 12 24 03 26")),
        id="broadcast-time-sync",
    ),
]

# (wire bytes, result, bytes used)
MALFORMED = [
    pytest.param(h("00 11 22 68"), Malformed("garbage"), 3, id="noise-before-a-start"),
    pytest.param(h("fe fe fe fe fe") + DOMAIN_EXAMPLE, Malformed("garbage"), 1, id="five-fe"),
    pytest.param(h("12 34 56"), Malformed("garbage"), 3, id="no-start-byte"),
    pytest.param(h("13 fe fe"), Malformed("garbage"), 1, id="noise-then-wake-up-kept"),
    pytest.param(
        h("68 56 34 12 00 00 00 99 11 04 33 34 34 35 51 16"),
        Malformed("garbage"),
        1,
        id="second-start-missing",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 11 c9") + bytes(203),
        Malformed("garbage"),
        1,
        id="length-over-200",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 11 04 33 34 34 35 51 17"),
        Malformed("garbage"),
        1,
        id="bad-end-byte",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 11 04 33 34 34 35 52 16"),
        Malformed("bad_checksum"),
        16,
        id="bad-checksum",
    ),
    pytest.param(
        h("fe fe 68 56 34 12 00 00 00 68 11 04 33 34 34 36 51 16"),
        Malformed("bad_checksum"),
        18,
        id="flipped-data-bit",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 06 33 34 34 35 3f 55 67 16"),
        Malformed("bad_data"),
        18,
        id="value-not-bcd",
    ),
    pytest.param(
        h("68 56 34 12 00 00 00 68 91 05 33 34 34 35 34 06 16"),
        Malformed("bad_data"),
        17,
        id="value-too-short",
    ),
]


@pytest.mark.parametrize(("wire", "frame"), VALID)
def test_valid_frames_decode(wire: bytes, frame: Frame) -> None:
    assert decode(wire) == (frame, len(wire))


@pytest.mark.parametrize(("wire", "frame"), VALID)
def test_round_trip(wire: bytes, frame: Frame) -> None:
    preamble = len(wire) - len(wire.lstrip(b"\xfe"))
    assert encode(frame, preamble=preamble) == wire


@pytest.mark.parametrize(("wire", "frame"), VALID)
def test_every_strict_prefix_is_incomplete(wire: bytes, frame: Frame) -> None:
    for i in range(len(wire)):
        assert decode(wire[:i]) == (None, 0), wire[:i].hex(" ")


@pytest.mark.parametrize(("wire", "result", "used"), MALFORMED)
def test_malformed_input_is_named_and_skipped(wire: bytes, result: Malformed, used: int) -> None:
    assert decode(wire) == (result, used)


def test_the_domain_example_is_what_encode_read_sends() -> None:
    assert encode_read("000000123456", 0x02010100) == DOMAIN_EXAMPLE
    assert encode_read("000000123456", 0x02010100, preamble=4) == b"\xfe" * 4 + DOMAIN_EXAMPLE
    assert encode_read_address() == h("68 aa aa aa aa aa aa 68 13 00 df 16")


def test_decoder_resyncs_after_garbage_and_joins_split_frames() -> None:
    reply = encode(ReadReply(A, DI_POWER, 0.1805), preamble=2)
    corrupt = bytearray(DOMAIN_EXAMPLE)
    corrupt[-2] ^= 0xFF
    wire = h("00 68 16 ff 68") + reply + bytes(corrupt) + h("fe fe fe fe fe") + DOMAIN_EXAMPLE
    whole = Dlt645Decoder().feed(wire)
    decoder = Dlt645Decoder()
    one_by_one = [item for i in range(len(wire)) for item in decoder.feed(wire[i : i + 1])]
    assert (
        whole
        == one_by_one
        == [
            Malformed("garbage"),  # 00 68 16 ff 68: one run of garbage, reported once
            ReadReply(A, DI_POWER, 0.1805),
            Malformed("bad_checksum"),
            Malformed("garbage"),  # the fifth FE
            ReadRequest(A, DI_VOLTAGE_A),
        ]
    )


@pytest.mark.parametrize(
    ("di", "value"),
    [
        (DI_ENERGY, 0.0),
        (DI_ENERGY, 999999.99),
        (DI_VOLTAGE_A, 0.1),
        (DI_VOLTAGE_A, 999.9),
        (DI_CURRENT_A, -799.999),
        (DI_POWER, 79.9999),
        (DI_POWER, -0.0001),
        (DI_POWER_FACTOR, 1.0),
        (DI_POWER_FACTOR, -0.0),
        (DI_FREQUENCY, 49.98),
    ],
)
def test_values_round_trip(di: int, value: float) -> None:
    spec = DATA_IDS[di]
    assert decode_value(spec, encode_value(spec, value)) == value


@pytest.mark.parametrize(
    ("di", "value"),
    [
        pytest.param(DI_ENERGY, 1_000_000.0, id="energy-too-big"),
        pytest.param(DI_VOLTAGE_A, -1.0, id="unsigned-negative"),
        pytest.param(DI_CURRENT_A, 800.0, id="signed-top-bit-taken"),
        pytest.param(DI_POWER, float("nan"), id="nan"),
    ],
)
def test_values_that_do_not_fit_are_refused(di: int, value: float) -> None:
    with pytest.raises(ValueError):
        encode_value(DATA_IDS[di], value)


def test_negative_zero_keeps_its_sign_bit() -> None:
    spec = DATA_IDS[DI_POWER]
    assert encode_value(spec, -0.0) == h("00 00 80")
    assert str(decode_value(spec, h("00 00 80"))) == "-0.0"


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_read("12345", DI_POWER)
    with pytest.raises(ValueError):
        encode(ReadRequest(A, DI_POWER), preamble=5)


# -- fuzz ---------------------------------------------------------------------------------------


def _reencodes_into(frame: Frame, buf: bytes) -> bool:
    return encode(frame) in buf


@settings(max_examples=10_000, deadline=None)
@given(st.binary(max_size=160))
def test_random_bytes_never_raise_and_frames_are_genuine(buf: bytes) -> None:
    rest = buf
    while rest:
        item, used = decode(rest)
        assert 0 <= used <= len(rest)
        if used == 0:
            assert item is None
            break
        if item is not None and not isinstance(item, Malformed):
            assert _reencodes_into(item, rest[:used])
        rest = rest[used:]


_FRAMES = st.one_of(
    st.builds(
        ReadReply,
        st.just(A),
        st.sampled_from([DI_VOLTAGE_A, DI_ENERGY]),
        st.integers(0, 9999).map(lambda n: n / 10),
    ),
    st.builds(
        ReadReply,
        st.just("000000000002"),
        st.just(DI_POWER),
        st.integers(-799_999, 799_999).map(lambda n: n / 10_000),
        st.booleans(),
    ),
    st.builds(
        ReadRequest,
        st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}"),
        st.sampled_from(sorted(DATA_IDS)),
    ),
    st.builds(ErrorReply, st.just(A), st.integers(0, 255)),
)


@settings(max_examples=1_000, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=12), _FRAMES, st.integers(0, 4)), max_size=4),
    st.integers(1, 40),
)
def test_frames_among_garbage_are_found_and_nothing_invalid_is_delivered(
    parts: list[tuple[bytes, Frame, int]], chunk: int
) -> None:
    wire = b"".join(noise + encode(frame, preamble=pre) for noise, frame, pre in parts)
    decoder = Dlt645Decoder()
    got = [item for i in range(0, len(wire), chunk) for item in decoder.feed(wire[i : i + chunk])]
    frames = [f for f in got if not isinstance(f, Malformed)]
    for frame in frames:
        assert encode(frame) in wire
    # garbage may hide a frame only by swallowing its start; frames after clean noise survive
    if all(not noise for noise, _, _ in parts):
        assert frames == [frame for _, frame, _ in parts]
