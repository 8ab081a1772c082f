"""Modbus RTU frames and the reply hunt behind line noise (pure), byte by byte."""

from __future__ import annotations

import pytest
from pymodbus.framer.rtu import FramerRTU

from drivers.modbus_rtu import (
    FoundReply,
    crc16,
    decode_read_reply,
    encode_exception_reply,
    encode_read_reply,
    encode_read_request,
    find_reply,
)

# Captured frames (the first two are the Modbus specification's and a classic meter read).
REQUEST_SPEC = bytes.fromhex("1103006b00037687")  # slave 0x11, read 3 holding from 0x006B
REQUEST_10 = bytes.fromhex("01030000000ac5cd")
REPLY_230V = bytes.fromhex("010304436600000fa8")  # slave 1: 0x4366 0x0000 (230.0 V)
EXCEPTION_2 = bytes.fromhex("018302c0f1")  # slave 1: illegal data address


def test_crc_matches_the_specification_and_pymodbus() -> None:
    assert crc16(bytes.fromhex("1103006b0003")) == bytes.fromhex("7687")
    assert crc16(bytes.fromhex("01030000000a")) == bytes.fromhex("c5cd")
    for frame in (REQUEST_SPEC, REQUEST_10, REPLY_230V, EXCEPTION_2):
        assert FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))


def test_encoders_give_the_captured_frames() -> None:
    assert encode_read_request(0x11, 3, 0x006B, 3) == REQUEST_SPEC
    assert encode_read_request(1, 3, 0, 10) == REQUEST_10
    assert encode_read_reply(1, 3, [0x4366, 0x0000]) == REPLY_230V
    assert encode_exception_reply(1, 3, 2) == EXCEPTION_2


@pytest.mark.parametrize(
    ("frame", "decoded"),
    [
        pytest.param(REPLY_230V, (1, 3, (0x4366, 0)), id="reply"),
        pytest.param(EXCEPTION_2, (1, 0x83, 2), id="exception"),
        pytest.param(encode_read_reply(247, 4, [1] * 125), (247, 4, (1,) * 125), id="max-reply"),
    ],
)
def test_decode_round_trip(frame: bytes, decoded: tuple[int, int, object]) -> None:
    assert decode_read_reply(frame) == decoded


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(REPLY_230V[:-1] + b"\x00", id="bad-crc"),
        pytest.param(REPLY_230V[:4], id="short"),
        pytest.param(
            encode_exception_reply(1, 3, 2)[:-2] + b"\x00" + crc16(b"\x01\x83\x02\x00"),
            id="long-exception",
        ),
    ],
)
def test_decode_refuses_bad_frames(frame: bytes) -> None:
    with pytest.raises(ValueError):
        decode_read_reply(frame)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((1, 6, 0, 1), "function code", id="fc"),
        pytest.param((256, 3, 0, 1), "slave", id="slave"),
        pytest.param((1, 3, 0, 126), "count", id="too-many"),
        pytest.param((1, 3, 0x10000, 1), "address", id="address"),
    ],
)
def test_request_encoder_refuses(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_read_request(*args)


# -- find_reply ---------------------------------------------------------------------------------


def test_a_clean_reply_is_found_whole() -> None:
    assert find_reply(REPLY_230V, 1, 3) == FoundReply(REPLY_230V, 0)
    assert find_reply(EXCEPTION_2, 1, 3) == FoundReply(EXCEPTION_2, 0)


@pytest.mark.parametrize("frame", [REPLY_230V, EXCEPTION_2], ids=["reply", "exception"])
def test_every_strict_prefix_is_incomplete(frame: bytes) -> None:
    for n in range(len(frame)):
        assert find_reply(frame[:n], 1, 3) is None, n


@pytest.mark.parametrize(
    ("buf", "found"),
    [
        pytest.param(b"\x00" + REPLY_230V, FoundReply(REPLY_230V, 1), id="zero-before"),
        pytest.param(b"\xff\xff" + REPLY_230V, FoundReply(REPLY_230V, 2), id="ff-before"),
        pytest.param(b"\x01\x03\x04" + REPLY_230V, FoundReply(REPLY_230V, 3), id="false-start"),
        pytest.param(REPLY_230V + b"\x00\x17", FoundReply(REPLY_230V, 0), id="garbage-after"),
        pytest.param(b"\x00" + EXCEPTION_2 + b"\xff", FoundReply(EXCEPTION_2, 1), id="exception"),
        pytest.param(
            encode_read_reply(2, 3, [1, 2]) + REPLY_230V,
            FoundReply(REPLY_230V, 9),
            id="late-reply-of-another-slave-first",
        ),
    ],
)
def test_replies_behind_noise_are_found(buf: bytes, found: FoundReply) -> None:
    assert find_reply(buf, 1, 3) == found


@pytest.mark.parametrize(
    ("buf", "slave", "fc"),
    [
        pytest.param(REPLY_230V[:5] + b"\x5a" + REPLY_230V[6:], 1, 3, id="corrupted"),
        pytest.param(REPLY_230V, 2, 3, id="other-slave"),
        pytest.param(REPLY_230V, 1, 4, id="other-function"),
        pytest.param(bytes.fromhex("0103034366000f"), 1, 3, id="odd-byte-count"),
        pytest.param(b"\x00\xff" * 20, 1, 3, id="only-noise"),
        pytest.param(b"", 1, 3, id="empty"),
    ],
)
def test_no_reply_without_a_valid_frame_for_the_request(buf: bytes, slave: int, fc: int) -> None:
    assert find_reply(buf, slave, fc) is None
