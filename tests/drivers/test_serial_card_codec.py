"""Byte-level tests of the bare-line card codec (tables, prefixes, malformed cases, fuzz)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.serial_card import (
    DEFAULT_MAX_LEN,
    CardLine,
    CardLineDecoder,
    CardRead,
    Malformed,
    decode,
    encode,
)
from tests.drivers.helpers import StepClock

# (wire bytes, expected frame, bytes used)
VALID = [
    pytest.param(b"3104992211\r\n", CardLine("3104992211"), 12, id="decimal-crlf"),
    pytest.param(b"3104992211\n", CardLine("3104992211"), 11, id="decimal-lf"),
    pytest.param(b"3104992211\r", CardLine("3104992211"), 11, id="decimal-cr"),
    pytest.param(b"0012345678\r\n", CardLine("0012345678"), 12, id="leading-zeros-kept"),
    pytest.param(b"  3104992211 \t\r\n", CardLine("3104992211"), 16, id="blanks-stripped"),
    pytest.param(b"04a1b2c3d4\r\n", CardLine("04A1B2C3D4"), 12, id="hex-upper-cased"),
    pytest.param(b"1234\r\n", CardLine("1234"), 6, id="shortest"),
    pytest.param(b"1" * DEFAULT_MAX_LEN + b"\r\n", CardLine("1" * 24), 26, id="longest"),
    pytest.param(b"3104992211\r\n8888", CardLine("3104992211"), 12, id="next-line-left"),
    pytest.param(b"3104992211\n\r", CardLine("3104992211"), 11, id="lf-cr-is-two-ends"),
]

MALFORMED = [
    pytest.param(b"hello world\r\n", Malformed("garbage"), 13, id="letters"),
    pytest.param(b"123\r\n", Malformed("garbage"), 5, id="too-short"),
    pytest.param(b"\x00\xff\x13\x88\r\n", Malformed("garbage"), 6, id="binary-noise"),
    pytest.param(b"3104-992211\r\n", Malformed("garbage"), 13, id="embedded-dash"),
    pytest.param(b"3104 992211\r\n", Malformed("garbage"), 13, id="embedded-space"),
    pytest.param(b"\x023104992211\x03\r\n", Malformed("garbage"), 14, id="stx-etx-framing"),
    pytest.param(b"   \r\n", Malformed("garbage"), 5, id="blanks-only"),
    pytest.param(b"1" * 25 + b"\r\n", Malformed("overlong"), 27, id="overlong-complete"),
    pytest.param(b"9" * 40, Malformed("overlong", complete=False), 40, id="overlong-no-end-yet"),
]


@pytest.mark.parametrize(("wire", "frame", "used"), VALID)
def test_valid_lines_decode(wire: bytes, frame: CardLine, used: int) -> None:
    assert decode(wire) == (frame, used)


@pytest.mark.parametrize(("wire", "frame", "used"), VALID)
def test_every_strict_prefix_before_the_terminator_is_incomplete(
    wire: bytes, frame: CardLine, used: int
) -> None:
    line_end = re.search(rb"[\r\n]", wire)
    assert line_end is not None
    for i in range(line_end.start() + 1):
        assert decode(wire[:i]) == (None, 0), wire[:i]


@pytest.mark.parametrize(("wire", "result", "used"), MALFORMED)
def test_malformed_lines_are_reported_and_consumed(
    wire: bytes, result: Malformed, used: int
) -> None:
    assert decode(wire) == (result, used)


@pytest.mark.parametrize(
    "number", ["3104992211", "0000000001", "04A1B2C3D4", "1234", "9" * DEFAULT_MAX_LEN]
)
def test_round_trip(number: str) -> None:
    wire = encode(CardLine(number))
    assert decode(wire) == (CardLine(number), len(wire))


def test_bare_terminators_are_skipped() -> None:
    assert decode(b"\r\n\r\n\n") == (None, 5)
    assert decode(b"\r\n3104992211\r\n") == (None, 2)
    assert decode(b"") == (None, 0)


def test_decoder_resyncs_after_garbage() -> None:
    decoder = CardLineDecoder()
    out = decoder.feed(b"\x00\x17junk\r\n3104992211\r\n\r\n0004471283\n")
    assert out == [Malformed("garbage"), CardLine("3104992211"), CardLine("0004471283")]


def test_decoder_drops_the_rest_of_an_overlong_line_that_arrives_later() -> None:
    decoder = CardLineDecoder()
    assert decoder.feed(b"1" * 30) == [Malformed("overlong")]
    assert decoder.feed(b"1" * 30) == []  # still the same line: reported once
    # the line's tail must not be mistaken for a card number
    assert decoder.feed(b"23456789\r\n3104992211\r\n") == [CardLine("3104992211")]


def test_decoder_byte_at_a_time_equals_whole() -> None:
    wire = b"noise\r\n3104992211\r\n" + b"7" * 30 + b"\r\n04a1b2c3d4\r12345\n"
    whole = CardLineDecoder().feed(wire)
    decoder = CardLineDecoder()
    one_by_one = [item for i in range(len(wire)) for item in decoder.feed(wire[i : i + 1])]
    assert (
        one_by_one
        == whole
        == [
            Malformed("garbage"),
            CardLine("3104992211"),
            Malformed("overlong"),
            CardLine("04A1B2C3D4"),
            CardLine("12345"),
        ]
    )


def test_card_numbers_stay_out_of_reprs() -> None:
    assert "3104992211" not in repr(CardLine("3104992211"))
    read = CardRead(StepClock()(), "b1-entrance", "3104992211")
    assert "3104992211" not in repr(read)
    assert "b1-entrance" in repr(read)


_CARD = re.compile(r"^([0-9]{4,24}|[0-9A-F]{4,24})$")


@given(st.binary(max_size=200))
def test_random_bytes_never_raise(buf: bytes) -> None:
    result, used = decode(buf)
    assert 0 <= used <= len(buf)
    if used == 0:
        assert result is None
    if isinstance(result, CardLine):
        assert _CARD.match(result.number)


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_random_chunks_never_raise_and_frames_are_card_numbers(chunks: list[bytes]) -> None:
    decoder = CardLineDecoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, CardLine | Malformed)
            if isinstance(item, CardLine):
                assert _CARD.match(item.number)


@given(
    st.lists(st.from_regex(r"[0-9]{4,20}", fullmatch=True), min_size=1, max_size=5),
    st.binary(max_size=30).filter(lambda b: not any(c in b for c in b"\r\n")),
)
def test_valid_lines_survive_garbage_before_them(numbers: list[str], noise: bytes) -> None:
    wire = noise + b"\r\n" + b"".join(n.encode() + b"\r\n" for n in numbers)
    frames = [f for f in CardLineDecoder().feed(wire) if isinstance(f, CardLine)]
    assert [f.number for f in frames][-len(numbers) :] == numbers
