"""Byte-level tests of the serial card frame formats: EM4100, hex lines, Wiegand bit lines.

(The ``decimal`` line codec has its own tests in test_serial_card_codec.py.)
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DriverConfigError
from drivers.serial_card import (
    FRAME_FORMATS,
    CardLine,
    CardLineDecoder,
    Em4100Decoder,
    Malformed,
    RawWiegand,
    SerialCardReader,
    decode,
    decode_em4100,
    decode_hex_line,
    decode_wiegand_line,
    encode_em4100,
    encode_hex_line,
    encode_wiegand_line,
    make_decoder,
)
from drivers.wiegand import ALL_FORMATS, FORMATS, encode_bits

STX, ETX = b"\x02", b"\x03"

# -- EM4100 -------------------------------------------------------------------------------------

# 0F 00 12 D6 87 -> checksum 0F^00^12^D6^87 = 0x4C
EM_VALID = [
    pytest.param(STX + b"0F0012D6874C\r\n" + ETX, CardLine("0F0012D687"), id="cr-lf-etx"),
    pytest.param(STX + b"0F0012D6874C\r" + ETX, CardLine("0F0012D687"), id="cr-etx"),
    pytest.param(STX + b"0F0012D6874C\n" + ETX, CardLine("0F0012D687"), id="lf-etx"),
    pytest.param(STX + b"0F0012D6874C" + ETX, CardLine("0F0012D687"), id="bare-etx-rdm6300"),
    pytest.param(STX + b"0f0012d6874c\r\n" + ETX, CardLine("0F0012D687"), id="lower-case"),
    pytest.param(STX + b"000000000000\r\n" + ETX, CardLine("0000000000"), id="all-zero"),
    pytest.param(STX + b"FFFFFFFFFFFF\r\n" + ETX, CardLine("FFFFFFFFFF"), id="all-ones-xor-ff"),
]

EM_MALFORMED = [
    pytest.param(STX + b"0F0012D6874D\r\n" + ETX, Malformed("bad_checksum"), 16, id="bad-checksum"),
    pytest.param(STX + b"0F0012D6874C" + ETX, None, None, id="placeholder-valid"),
    pytest.param(STX + b"0F0012G6874C\r\n" + ETX, Malformed("garbage"), 7, id="non-hex-digit"),
    pytest.param(STX + b"0F0012D6874C\r\n\x04", Malformed("garbage"), 15, id="no-etx"),
    pytest.param(STX + b"0F0012D6874C\n\r" + ETX, Malformed("garbage"), 14, id="lf-cr-order"),
    pytest.param(STX + b"0F0012D687" + STX, Malformed("garbage"), 11, id="new-stx-inside"),
    pytest.param(b"\x00\xffnoise" + STX, Malformed("garbage"), 7, id="noise-before-stx"),
    pytest.param(b"\x13\x88\x99", Malformed("garbage"), 3, id="noise-no-stx"),
]
EM_MALFORMED = [p for p in EM_MALFORMED if p.id != "placeholder-valid"]


@pytest.mark.parametrize(("wire", "frame"), EM_VALID)
def test_em4100_frames_decode(wire: bytes, frame: CardLine) -> None:
    assert decode_em4100(wire) == (frame, len(wire))
    assert decode_em4100(wire + b"garbage") == (frame, len(wire))


@pytest.mark.parametrize(("wire", "frame"), EM_VALID)
def test_em4100_every_strict_prefix_is_incomplete(wire: bytes, frame: CardLine) -> None:
    for i in range(len(wire)):
        assert decode_em4100(wire[:i]) == (None, 0), wire[:i]


@pytest.mark.parametrize(("wire", "result", "used"), EM_MALFORMED)
def test_em4100_malformed_frames(wire: bytes, result: Malformed, used: int) -> None:
    assert decode_em4100(wire) == (result, used)


@pytest.mark.parametrize("terminator", [b"\r\n", b"\r", b"\n", b""])
@pytest.mark.parametrize("number", ["0F0012D687", "0000000001", "FFFFFFFFFF", "1A2B3C4D5E"])
def test_em4100_round_trip(number: str, terminator: bytes) -> None:
    wire = encode_em4100(number, terminator=terminator)
    assert decode_em4100(wire) == (CardLine(number), len(wire))


def test_em4100_line_ends_between_frames_are_not_garbage() -> None:
    assert decode_em4100(b"\r\n\r\n") == (None, 4)
    frame = encode_em4100("0F0012D687")
    assert Em4100Decoder().feed(b"\r\n" + frame + b"\r\n" + frame) == [CardLine("0F0012D687")] * 2


def test_em4100_decoder_resyncs_after_garbage_and_byte_at_a_time_equals_whole() -> None:
    good = encode_em4100("0F0012D687")
    bad = encode_em4100("1A2B3C4D5E")[:-5] + b"00\r\n\x03"  # checksum 00 is wrong
    wire = b"\x00\xff" + good[:7] + good + bad + b"zz" + encode_em4100("1A2B3C4D5E", terminator=b"")
    whole = Em4100Decoder().feed(wire)
    decoder = Em4100Decoder()
    one_by_one = [x for i in range(len(wire)) for x in decoder.feed(wire[i : i + 1])]
    assert (
        whole
        == one_by_one
        == [
            Malformed("garbage"),  # 00 ff, then a frame cut short by the next STX: one run
            CardLine("0F0012D687"),
            Malformed("bad_checksum"),
            Malformed("garbage"),  # zz
            CardLine("1A2B3C4D5E"),
        ]
    )


def test_em4100_encoder_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_em4100("0F0012D6")
    with pytest.raises(ValueError):
        encode_em4100("0F0012D687", terminator=b"\n\r")


# -- hex lines ----------------------------------------------------------------------------------

HEX_VALID = [
    pytest.param(b"04A1B2C3D4\r\n", CardLine("04A1B2C3D4"), id="crlf"),
    pytest.param(b"04a1b2c3d4\n", CardLine("04A1B2C3D4"), id="lower-lf"),
    pytest.param(b" 12345678 \r", CardLine("12345678"), id="digits-are-hex-too"),
    pytest.param(b"ABCD\r\n", CardLine("ABCD"), id="shortest"),
]
HEX_MALFORMED = [
    pytest.param(b"04A1B2C3D\r\n", Malformed("garbage"), 11, id="odd-digit-count"),
    pytest.param(b"04A1B2C3DX\r\n", Malformed("garbage"), 12, id="not-hex"),
    pytest.param(b"AB\r\n", Malformed("garbage"), 4, id="too-short"),
    pytest.param(b"AB" * 13 + b"\r\n", Malformed("overlong"), 28, id="overlong"),
]


@pytest.mark.parametrize(("wire", "frame"), HEX_VALID)
def test_hex_lines_decode(wire: bytes, frame: CardLine) -> None:
    assert decode_hex_line(wire) == (frame, len(wire))


@pytest.mark.parametrize(("wire", "frame"), HEX_VALID)
def test_hex_line_prefixes_are_incomplete(wire: bytes, frame: CardLine) -> None:
    end = re.search(rb"[\r\n]", wire)
    assert end is not None
    for i in range(end.start() + 1):
        assert decode_hex_line(wire[:i]) == (None, 0)


@pytest.mark.parametrize(("wire", "result", "used"), HEX_MALFORMED)
def test_hex_lines_malformed(wire: bytes, result: Malformed, used: int) -> None:
    assert decode_hex_line(wire) == (result, used)


@pytest.mark.parametrize("number", ["04A1B2C3D4", "0000", "DEADBEEF00112233"])
def test_hex_round_trip(number: str) -> None:
    wire = encode_hex_line(number)
    assert decode_hex_line(wire) == (CardLine(number), len(wire))


def test_hex_decoder_resyncs() -> None:
    decoder = CardLineDecoder(frame_format="hex")
    assert decoder.feed(b"\x00junk\r\n04A1B2C3D4\r\n" + b"A" * 30 + b"\r\nBEEF\n") == [
        Malformed("garbage"),
        CardLine("04A1B2C3D4"),
        Malformed("overlong"),
        CardLine("BEEF"),
    ]


# -- Wiegand bit lines --------------------------------------------------------------------------

H10301_1_1 = b"10000000100000000000000010"  # facility 1, card 1 (the textbook example)


def _line(fmt: str, facility: int, card: int) -> bytes:
    bits, count = encode_bits(fmt, facility, card)  # type: ignore[arg-type]
    return encode_wiegand_line(bits, count)


WG_VALID = [
    pytest.param(H10301_1_1 + b"\r\n", CardLine("0000065537", 1, 1), id="h10301-fc1-card1"),
    pytest.param(
        _line("h10301", 18, 54919), CardLine("0001234567", 18, 54919), id="h10301-018-54919"
    ),
    pytest.param(
        _line("w34", 0x1234, 0x5678),
        CardLine(f"{0x12345678:010d}", 0x1234, 0x5678),
        id="w34",
    ),
    pytest.param(
        _line("c1k35", 4000, 1_000_000),
        CardLine(f"{(4000 << 20) | 1_000_000:010d}", 4000, 1_000_000),
        id="corporate-1000",
    ),
    pytest.param(
        _line("h10304", 65000, 500_000),
        CardLine(f"{(65000 << 19) | 500_000:010d}", 65000, 500_000),
        id="h10304",
    ),
]


def _flip(line: bytes, i: int) -> bytes:
    text = bytearray(line)
    text[i] = ord("1") if text[i] == ord("0") else ord("0")
    return bytes(text)


WG_MALFORMED = [
    pytest.param(_flip(H10301_1_1, 0) + b"\r\n", Malformed("bad_parity"), 28, id="bad-parity"),
    pytest.param(_flip(H10301_1_1, 25) + b"\r\n", Malformed("bad_parity"), 28, id="bad-parity-odd"),
    pytest.param(
        _flip(H10301_1_1, 5) + b"\r\n", Malformed("bad_parity"), 28, id="data-bit-flipped"
    ),
    pytest.param(b"1000000010000000000000002\r\n", Malformed("garbage"), 27, id="not-bits"),
    pytest.param(b"101\r\n", Malformed("garbage"), 5, id="too-few-bits"),
    pytest.param(b"1" * 80 + b"\r\n", Malformed("overlong"), 82, id="overlong"),
    pytest.param(b"10110100\r\n", RawWiegand(0b10110100, 8), 10, id="8-bit-keypad-raw"),
    pytest.param(H10301_1_1[:-1] + b"\r\n", RawWiegand(0, 25), 27, id="25-bits-raw"),
]


@pytest.mark.parametrize(("wire", "frame"), WG_VALID)
def test_wiegand_lines_decode(wire: bytes, frame: CardLine) -> None:
    assert decode_wiegand_line(wire) == (frame, len(wire))


@pytest.mark.parametrize(("wire", "frame"), WG_VALID)
def test_wiegand_line_prefixes_are_incomplete(wire: bytes, frame: CardLine) -> None:
    for i in range(len(wire.rstrip(b"\r\n")) + 1):
        assert decode_wiegand_line(wire[:i]) == (None, 0)


@pytest.mark.parametrize(("wire", "result", "used"), WG_MALFORMED)
def test_wiegand_lines_malformed(wire: bytes, result: Malformed | RawWiegand, used: int) -> None:
    got, got_used = decode_wiegand_line(wire)
    assert got_used == used
    if isinstance(result, RawWiegand):
        assert isinstance(got, RawWiegand) and got.count == result.count
        assert got.bits == int(wire.rstrip(b"\r\n"), 2)
    else:
        assert got == result


def test_wiegand_line_formats_can_be_restricted_and_w34_read_as_uid() -> None:
    line = _line("w34", 0x1234, 0x5678)
    assert decode_wiegand_line(line, formats=("h10301",))[0] == RawWiegand(int(line.strip(), 2), 34)
    assert decode_wiegand_line(line, w34_uid=True) == (
        CardLine(f"{0x12345678:010d}", None, 0x12345678),
        len(line),
    )


def test_wiegand_line_decoder_resyncs() -> None:
    decoder = make_decoder("wiegand")
    wire = b"\x00noise\r\n" + _flip(H10301_1_1, 3) + b"\r\n" + H10301_1_1 + b"\n10110100\n"
    out = decoder.feed(wire)
    assert out[:3] == [Malformed("garbage"), Malformed("bad_parity"), CardLine("0000065537", 1, 1)]
    assert isinstance(out[3], RawWiegand) and out[3].count == 8


def test_unknown_frame_format_is_a_config_error() -> None:
    with pytest.raises(DriverConfigError, match="frame_format"):
        make_decoder("ascii")  # type: ignore[arg-type]
    with pytest.raises(DriverConfigError, match="frame_format"):
        SerialCardReader(url="/dev/null", reader_id="r", frame_format="bcd")  # type: ignore[arg-type]


# -- fuzz: 10,000 random byte strings into every decoder ----------------------------------------

_DEC_CARD = re.compile(r"^([0-9]{4,24}|[0-9A-F]{4,24})$")


Decoded = CardLine | Malformed | RawWiegand


def _drain(
    decode_one: Callable[[bytes], tuple[Decoded | None, int]], buf: bytes
) -> list[tuple[Decoded, bytes]]:
    out: list[tuple[Decoded, bytes]] = []
    rest = buf
    while rest:
        item, used = decode_one(rest)
        assert 0 <= used <= len(rest)
        if used == 0:
            assert item is None
            break
        if item is not None:
            out.append((item, rest[:used]))
        rest = rest[used:]
    return out


# Random bytes, and random bytes squeezed onto the characters the codecs care about (so that
# near-frames are common): a translation is much cheaper for hypothesis than building lists.
_BIAS = bytes(b"\x02\x03\r\n01Af9 \xff"[i % 11] for i in range(256))
_FUZZ_BYTES = st.binary(max_size=120) | st.binary(max_size=120).map(lambda b: b.translate(_BIAS))


def _check_em4100(buf: bytes) -> None:
    for item, raw in _drain(decode_em4100, buf):
        if isinstance(item, CardLine):
            framed = [
                encode_em4100(item.number, terminator=t) for t in (b"\r\n", b"\r", b"\n", b"")
            ]
            assert raw.upper() in framed  # checksum included: it re-encodes to what came


def _check_decimal(buf: bytes) -> None:
    for item, raw in _drain(decode, buf):
        if isinstance(item, CardLine):
            assert _DEC_CARD.match(item.number)
            assert item.number.encode() in raw.upper()


def _check_hex(buf: bytes) -> None:
    for item, raw in _drain(decode_hex_line, buf):
        if isinstance(item, CardLine):
            assert len(item.number) % 2 == 0
            assert item.number.encode() in raw.upper()


def _check_wiegand(buf: bytes) -> None:
    for item, raw in _drain(decode_wiegand_line, buf):
        if isinstance(item, CardLine):
            assert item.facility is not None and item.card is not None
            lines = [
                _line(f, item.facility, item.card).rstrip(b"\r\n")
                for f in ALL_FORMATS
                if item.facility < 1 << FORMATS[f].facility[1]
                and item.card < 1 << FORMATS[f].card[1]
            ]
            assert any(line in raw for line in lines)  # parity checked: it re-encodes


@settings(max_examples=10_000, deadline=None)
@given(_FUZZ_BYTES)
def test_every_serial_decoder_takes_random_bytes(buf: bytes) -> None:
    """10,000 random byte strings, each fed to every serial decoder (one hypothesis run keeps
    the suite fast): no exception escapes, every delivered card re-encodes to the input."""
    _check_em4100(buf)
    _check_decimal(buf)
    _check_hex(buf)
    _check_wiegand(buf)
    for fmt in FRAME_FORMATS:
        decoder = make_decoder(fmt)
        half = len(buf) // 2
        decoder.feed(buf[:half])
        decoder.feed(buf[half:])


@settings(max_examples=1_000, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=10), st.integers(0, (1 << 40) - 1), st.sampled_from([b"\r\n", b""])
        ),
        max_size=5,
    ),
    st.integers(1, 20),
)
def test_em4100_frames_survive_garbage_and_any_chunking(
    parts: list[tuple[bytes, int, bytes]], chunk: int
) -> None:
    wire = b"".join(noise + encode_em4100(f"{n:010X}", terminator=t) for noise, n, t in parts)
    decoder = Em4100Decoder()
    got = [x for i in range(0, len(wire), chunk) for x in decoder.feed(wire[i : i + chunk])]
    cards = [x.number for x in got if isinstance(x, CardLine)]
    for number in cards:
        assert number.encode() in wire.upper()
    if all(b"\x02" not in noise for noise, _, _ in parts):
        assert cards == [f"{n:010X}" for _, n, _ in parts]
