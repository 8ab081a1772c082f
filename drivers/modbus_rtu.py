"""Modbus RTU frames for register reads (pure: no IO, no asyncio, no clock).

pymodbus frames and checks RTU itself. What it does not do is find a reply behind line noise:
its RTU framer drops the whole receive buffer at the first CRC failure, so a stray byte in front
of a reply (a 0x00 or 0xFF is what a badly biased RS-485 line produces at every bus turnaround)
costs the whole reply. :func:`find_reply` hunts through the received bytes for the one reply the
master is waiting for, the bus adapter hands pymodbus only that frame.

Frames (function 0x03 read holding registers, 0x04 read input registers)::

    request    slave fc addr_hi addr_lo count_hi count_lo crc_lo crc_hi          (8 bytes)
    reply      slave fc byte_count data[byte_count] crc_lo crc_hi                (5 + 2n bytes)
    exception  slave fc|0x80 code crc_lo crc_hi                                  (5 bytes)

The CRC is CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

MAX_READ_COUNT = 125
"""At most 125 registers per read (the reply's byte count is one byte: 250 data bytes)."""
EXCEPTION_BIT = 0x80
REQUEST_SIZE = 8
EXCEPTION_SIZE = 5


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """CRC-16/MODBUS of ``data`` as it goes on the wire (two bytes, low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc.to_bytes(2, "little")


def with_crc(frame: bytes) -> bytes:
    return frame + crc16(frame)


def encode_read_request(slave: int, function_code: int, address: int, count: int) -> bytes:
    """A read request frame (function 3 or 4)."""
    if not 0 <= slave <= 255 or function_code not in (3, 4):
        raise ValueError("slave 0..255 and function code 3 or 4")
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_READ_COUNT:
        raise ValueError(f"address 0..65535 and count 1..{MAX_READ_COUNT}")
    return with_crc(struct.pack(">BBHH", slave, function_code, address, count))


def encode_read_reply(slave: int, function_code: int, registers: Sequence[int]) -> bytes:
    """A read reply frame carrying ``registers`` (16-bit values)."""
    if not 1 <= len(registers) <= MAX_READ_COUNT:
        raise ValueError(f"1..{MAX_READ_COUNT} registers")
    n = len(registers)
    return with_crc(struct.pack(f">BBB{n}H", slave, function_code, 2 * n, *registers))


def encode_exception_reply(slave: int, function_code: int, code: int) -> bytes:
    """An exception reply frame (``function_code`` is the request's)."""
    return with_crc(bytes([slave, function_code | EXCEPTION_BIT, code]))


@dataclass(frozen=True, slots=True)
class FoundReply:
    """A complete reply found in a receive buffer."""

    frame: bytes
    """The frame, CRC included."""
    skipped: int
    """Bytes before the frame (line noise)."""


def find_reply(buf: bytes, slave: int, function_code: int) -> FoundReply | None:
    """The first complete, CRC-valid reply from ``slave`` to a ``function_code`` read in ``buf``.

    A reply is a normal read reply (even byte count of 2..250) or an exception reply. Bytes
    before it are skipped as noise; bytes after it are ignored. ``None`` means no complete reply
    yet: more bytes may complete one, or the buffer holds only noise (the caller's timeout
    decides which).
    """
    n = len(buf)
    exc_fc = function_code | EXCEPTION_BIT
    i = buf.find(slave)
    while 0 <= i <= n - EXCEPTION_SIZE:
        fc = buf[i + 1]
        size = 0
        if fc == function_code:
            count = buf[i + 2]
            if 2 <= count <= 2 * MAX_READ_COUNT and count % 2 == 0:
                size = 5 + count
        elif fc == exc_fc:
            size = EXCEPTION_SIZE
        if size and i + size <= n:
            end = i + size - 2
            if crc16(buf[i:end]) == buf[end : end + 2]:
                return FoundReply(buf[i : i + size], i)
        i = buf.find(slave, i + 1)
    return None


def decode_read_reply(frame: bytes) -> tuple[int, int, tuple[int, ...] | int]:
    """``(slave, function_code, registers)`` of a normal reply or ``(slave, fc, code)`` of an
    exception reply (``fc`` with the exception bit). Raises ValueError on a frame that
    :func:`find_reply` would not return."""
    if len(frame) < EXCEPTION_SIZE or crc16(frame[:-2]) != frame[-2:]:
        raise ValueError("short frame or bad CRC")
    slave, fc = frame[0], frame[1]
    if fc & EXCEPTION_BIT:
        if len(frame) != EXCEPTION_SIZE:
            raise ValueError("an exception reply is 5 bytes")
        return slave, fc, frame[2]
    count = frame[2]
    if count % 2 or len(frame) != 5 + count:
        raise ValueError("byte count does not match the frame")
    return slave, fc, struct.unpack(f">{count // 2}H", frame[3:-2])


__all__ = [
    "MAX_READ_COUNT",
    "FoundReply",
    "crc16",
    "decode_read_reply",
    "encode_exception_reply",
    "encode_read_reply",
    "encode_read_request",
    "find_reply",
    "with_crc",
]
