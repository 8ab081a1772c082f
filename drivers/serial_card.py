"""Serial card readers: bare decimal / hex lines, EM4100 ASCII frames, Wiegand bits as text.

The codecs (pure: bytes in, frames out) and the adapter (:class:`SerialCardReader`, over
``serial_asyncio_fast``) live here. The reader's ``frame_format`` picks the codec:

``decimal`` (the default, unchanged)
    Optional spaces, the card number as 4-24 decimal digits (hex digits are passed through,
    upper-cased, as before), optional spaces, then CR, LF or CR LF.
``hex``
    The same line with an even number (4-24) of hex digits (whole bytes), upper-cased.
``em4100``
    ``STX(0x02)``, 10 hex digits (the 5 data bytes: version/customer byte + 32-bit ID), 2 hex
    digits of checksum (XOR of the 5 data bytes), then CR LF and ``ETX(0x03)``. Readers differ in
    the CR/LF part, so all four variants are accepted: ``CR LF ETX``, ``CR ETX``, ``LF ETX`` and
    a bare ``ETX`` (RDM6300-style); hex digits in either case. CR/LF between frames are
    skipped silently. The card number is the 10 data hex digits, upper-cased (e.g.
    ``0F0012D687``). A frame whose checksum is wrong is reported as ``bad_checksum`` and never
    delivered.
``wiegand``
    Wiegand-to-RS232/485 converters that print the raw bits: one line of 4-64 ``0``/``1``
    characters (first bit sent first), ended by CR, LF or CR LF; the bit count is the line's
    length. The bits are decoded by :func:`drivers.wiegand.decode_bits` (H10301, W34, Corporate
    1000, H10304, with parity); a parity error is reported as ``bad_parity``, a length of no
    configured format as :class:`~drivers.wiegand.RawWiegand` (counted, never a card).

Long RS-485 runs deliver garbage, partial lines and noise: whatever is not a frame is reported
as :class:`Malformed` (``garbage``) and skipped, and decoding resynchronises at the next line or
STX; a line longer than ``max_len`` is reported once as ``overlong`` and everything up to its
end is dropped.

Card numbers are personal data: :class:`CardLine` and :class:`~drivers.events.CardRead` keep the
number out of their reprs, and nothing here logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, get_args

import serial
from serial_asyncio_fast import open_serial_connection

from contract.events import DeviceFault
from drivers.base import Backoff, DeviceState, DriverConfigError, DriverCounters, utc_now
from drivers.events import CardRead
from drivers.framing import StreamDecoder
from drivers.wiegand import (
    ALL_FORMATS,
    FormatName,
    RawWiegand,
    WiegandCard,
    WiegandError,
    decode_bits,
)

__all__ = [
    "DEFAULT_MAX_LEN",
    "DEFAULT_MIN_LEN",
    "FRAME_FORMATS",
    "CardLine",
    "CardLineDecoder",
    "CardRead",
    "Em4100Decoder",
    "FrameDecoder",
    "FrameFormat",
    "Malformed",
    "RawWiegand",
    "SerialCardReader",
    "decode",
    "decode_em4100",
    "decode_hex_line",
    "decode_wiegand_line",
    "encode",
    "encode_em4100",
    "encode_hex_line",
    "encode_wiegand_line",
    "make_decoder",
]

log = logging.getLogger(__name__)

DEFAULT_MIN_LEN = 4
DEFAULT_MAX_LEN = 24
_TERMINATORS = b"\r\n"
_BLANKS = b" \t"
_DEC = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BITS = frozenset(b"01")
STX, ETX, CR, LF = 0x02, 0x03, 0x0D, 0x0A
WIEGAND_MIN_BITS = 4
WIEGAND_MAX_BITS = 64

FrameFormat = Literal["decimal", "hex", "em4100", "wiegand"]
FRAME_FORMATS: tuple[FrameFormat, ...] = get_args(FrameFormat)

FAULT_PORT = "port_unavailable"


# -- the codec ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardLine:
    """One card number as the reader sent it (decimal digits, or upper-case hex digits).

    Frames decoded from Wiegand bits also carry the facility and card parts.
    """

    number: str = field(repr=False)
    facility: int | None = field(default=None, repr=False)
    card: int | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Malformed:
    """Bytes that are not a card frame.

    ``reason`` is ``"garbage"`` (a complete line that is not a card number, bytes outside a
    frame), ``"overlong"`` (a line longer than allowed), ``"bad_checksum"`` (an EM4100 frame whose
    checksum is wrong) or ``"bad_parity"`` (Wiegand bits whose parity is wrong). ``complete`` is
    False for an overlong line whose end has not
    arrived yet: the caller must drop bytes up to the next terminator (see
    :class:`CardLineDecoder`).
    """

    reason: Literal["garbage", "overlong", "bad_checksum", "bad_parity"]
    complete: bool = True


def _terminator_end(buf: bytes, i: int) -> int:
    """Index after the terminator at ``i`` (a CR directly followed by LF counts as one)."""
    if buf[i] == 0x0D and i + 1 < len(buf) and buf[i + 1] == 0x0A:
        return i + 2
    return i + 1


def _find_terminator(buf: bytes) -> int:
    """Index of the first CR or LF in ``buf``, or -1."""
    cr, lf = buf.find(b"\r"), buf.find(b"\n")
    if cr < 0 or lf < 0:
        return max(cr, lf)
    return min(cr, lf)


LineResult = CardLine | Malformed | RawWiegand
LineClassifier = Callable[[bytes], LineResult]


def _decode_line(
    buf: bytes, max_len: int, classify: LineClassifier
) -> tuple[LineResult | None, int]:
    """Split off the first line of ``buf`` and classify its text (blanks stripped)."""
    if not buf:
        return None, 0
    if buf[0] in _TERMINATORS:
        used = 1
        while used < len(buf) and buf[used] in _TERMINATORS:
            used += 1
        return None, used
    end = _find_terminator(buf)
    if end < 0:
        if len(buf) > max_len:
            return Malformed("overlong", complete=False), len(buf)
        return None, 0
    used = _terminator_end(buf, end)
    if end > max_len:
        return Malformed("overlong"), used
    return classify(buf[:end].strip(_BLANKS)), used


def _decimal_classifier(min_len: int) -> LineClassifier:
    def classify(text: bytes) -> LineResult:
        if len(text) < min_len or not set(text) <= _HEX:
            return Malformed("garbage")
        number = text.decode("ascii")
        return CardLine(number if set(text) <= _DEC else number.upper())

    return classify


def _hex_classifier(min_len: int) -> LineClassifier:
    def classify(text: bytes) -> LineResult:
        if len(text) < min_len or len(text) % 2 or not set(text) <= _HEX:
            return Malformed("garbage")
        return CardLine(text.decode("ascii").upper())

    return classify


def _wiegand_classifier(formats: Sequence[FormatName], w34_uid: bool) -> LineClassifier:
    def classify(text: bytes) -> LineResult:
        if not WIEGAND_MIN_BITS <= len(text) <= WIEGAND_MAX_BITS or not set(text) <= _BITS:
            return Malformed("garbage")
        frame = decode_bits(int(text, 2), len(text), formats=formats, w34_uid=w34_uid)
        if isinstance(frame, WiegandCard):
            return CardLine(frame.number, frame.facility, frame.card)
        if isinstance(frame, WiegandError):
            return Malformed("bad_parity")
        return frame

    return classify


def decode(
    buf: bytes, *, min_len: int = DEFAULT_MIN_LEN, max_len: int = DEFAULT_MAX_LEN
) -> tuple[CardLine | Malformed | None, int]:
    """Decode the first ``decimal`` line of ``buf``.

    Returns ``(result, used)``:

    - ``(None, 0)``: need more bytes (nothing consumed);
    - ``(None, n)``: ``n`` bytes of empty lines (bare terminators) skipped;
    - ``(CardLine, n)``: a card line, ``n`` bytes including its terminator;
    - ``(Malformed, n)``: ``n`` bytes that are not a card line, skipped.

    ``max_len`` counts the line's bytes before the terminator, blanks included.
    """
    result, used = _decode_line(buf, max_len, _decimal_classifier(min_len))
    assert not isinstance(result, RawWiegand)
    return result, used


def decode_hex_line(
    buf: bytes, *, min_len: int = DEFAULT_MIN_LEN, max_len: int = DEFAULT_MAX_LEN
) -> tuple[CardLine | Malformed | None, int]:
    """Like :func:`decode` for a ``hex`` line: an even number of hex digits, upper-cased."""
    result, used = _decode_line(buf, max_len, _hex_classifier(min_len))
    assert not isinstance(result, RawWiegand)
    return result, used


def decode_wiegand_line(
    buf: bytes,
    *,
    formats: Sequence[FormatName] = ALL_FORMATS,
    w34_uid: bool = False,
    max_len: int = WIEGAND_MAX_BITS + 8,
) -> tuple[LineResult | None, int]:
    """Like :func:`decode` for a ``wiegand`` line of ``0``/``1`` characters.

    A card comes back as :class:`CardLine` (with facility and card), a parity error as
    ``Malformed("bad_parity")``, a length of no configured format as :class:`RawWiegand`.
    """
    return _decode_line(buf, max_len, _wiegand_classifier(formats, w34_uid))


def encode(frame: CardLine) -> bytes:
    """The line a reader sends for ``frame``."""
    return frame.number.encode("ascii") + b"\r\n"


def encode_hex_line(number: str) -> bytes:
    """The ``hex`` line for ``number`` (an even number of hex digits)."""
    if len(number) % 2 or not set(number.encode("ascii")) <= _HEX:
        raise ValueError("a hex card number is an even number of hex digits")
    return number.upper().encode("ascii") + b"\r\n"


def encode_wiegand_line(bits: int, count: int) -> bytes:
    """The ``wiegand`` line for a frame of ``count`` bits."""
    if not WIEGAND_MIN_BITS <= count <= WIEGAND_MAX_BITS or not 0 <= bits < (1 << count):
        raise ValueError("a Wiegand line holds 4-64 bits")
    return format(bits, f"0{count}b").encode("ascii") + b"\r\n"


def em4100_checksum(data: bytes) -> int:
    """XOR of the data bytes."""
    cs = 0
    for b in data:
        cs ^= b
    return cs


def encode_em4100(number: str, *, terminator: bytes = b"\r\n") -> bytes:
    """The EM4100 ASCII frame for the 10-hex-digit ``number``.

    ``terminator`` is what the reader puts before ETX: ``b"\r\n"``, ``b"\r"``, ``b"\n"`` or
    ``b""``.
    """
    if terminator not in (b"\r\n", b"\r", b"\n", b""):
        raise ValueError("terminator must be CR LF, CR, LF or nothing")
    data = bytes.fromhex(number)
    if len(data) != 5:
        raise ValueError("an EM4100 card number is 10 hex digits")
    digits = number.upper().encode("ascii") + b"%02X" % em4100_checksum(data)
    return bytes([STX]) + digits + terminator + bytes([ETX])


_EM4100_DIGITS = 12  # 10 data + 2 checksum


def decode_em4100(buf: bytes) -> tuple[CardLine | Malformed | None, int]:
    """Decode the first EM4100 frame of ``buf``.

    Returns ``(None, 0)`` for "need more bytes", ``(None, n)`` for CR/LF between frames,
    ``(CardLine, n)`` for a frame, ``(Malformed("garbage"), n)`` for bytes that are not a frame
    (decoding resumes at the next STX) and ``(Malformed("bad_checksum"), n)`` for a whole frame
    whose checksum is wrong.
    """
    if not buf:
        return None, 0
    if buf[0] != STX:
        stx = buf.find(bytes([STX]))
        skip = len(buf) if stx < 0 else stx
        if not buf[:skip].strip(_TERMINATORS):
            return None, skip  # line ends after ETX: some readers send them, not garbage
        return Malformed("garbage"), skip
    i = 1
    while i < len(buf) and i <= _EM4100_DIGITS:
        if buf[i] not in _HEX:
            return Malformed("garbage"), i  # resume at this byte (it may be the next STX)
        i += 1
    j = 1 + _EM4100_DIGITS
    for optional in (CR, LF):
        if j >= len(buf):
            return None, 0
        if buf[j] == optional:
            j += 1
    if j >= len(buf):
        return None, 0
    if buf[j] != ETX:
        return Malformed("garbage"), j
    used = j + 1
    digits = buf[1 : 1 + _EM4100_DIGITS].decode("ascii")
    data = bytes.fromhex(digits[:10])
    if em4100_checksum(data) != int(digits[10:], 16):
        return Malformed("bad_checksum"), used
    return CardLine(digits[:10].upper()), used


class FrameDecoder(Protocol):
    """A sans-IO stream decoder: feed bytes as they arrive, get the frames they complete."""

    def feed(self, data: bytes) -> list[LineResult]: ...


class CardLineDecoder:
    """Sans-IO stream decoder over a line codec: feed bytes, get frames, keep the rest.

    Holds the partial line between reads and the "dropping the rest of an overlong line" state.
    ``frame_format`` is ``decimal`` (the default, :func:`decode`), ``hex`` or ``wiegand``.
    """

    def __init__(
        self,
        *,
        min_len: int = DEFAULT_MIN_LEN,
        max_len: int | None = None,
        frame_format: Literal["decimal", "hex", "wiegand"] = "decimal",
        wiegand_formats: Sequence[FormatName] = ALL_FORMATS,
        w34_uid: bool = False,
    ) -> None:
        self._buf = b""
        self._dropping = False
        if frame_format == "wiegand":
            self._classify = _wiegand_classifier(tuple(wiegand_formats), w34_uid)
            self._max_len = WIEGAND_MAX_BITS + 8 if max_len is None else max_len
        else:
            make = _hex_classifier if frame_format == "hex" else _decimal_classifier
            self._classify = make(min_len)
            self._max_len = DEFAULT_MAX_LEN if max_len is None else max_len

    def feed(self, data: bytes) -> list[LineResult]:
        buf = self._buf + data
        out: list[LineResult] = []
        while buf:
            if self._dropping:
                end = _find_terminator(buf)
                if end < 0:
                    buf = b""
                    break
                buf = buf[_terminator_end(buf, end) :]
                self._dropping = False
                continue
            result, used = _decode_line(buf, self._max_len, self._classify)
            if used == 0:
                break
            buf = buf[used:]
            if isinstance(result, Malformed) and not result.complete:
                self._dropping = True
                out.append(Malformed("overlong"))
            elif result is not None:
                out.append(result)
        self._buf = buf
        return out


class Em4100Decoder(StreamDecoder[LineResult]):
    """Sans-IO stream decoder over :func:`decode_em4100` (frames are at most 16 bytes, so the
    buffer never holds more than one partial frame). A run of garbage is reported once, so the
    ``garbage`` counter counts resynchronisations, not read boundaries.
    """

    def __init__(self) -> None:
        super().__init__(decode_em4100, _is_garbage)


def _is_garbage(item: LineResult) -> bool:
    return isinstance(item, Malformed) and item.reason == "garbage"


def make_decoder(
    frame_format: FrameFormat,
    *,
    wiegand_formats: Sequence[FormatName] = ALL_FORMATS,
    w34_uid: bool = False,
) -> FrameDecoder:
    """The stream decoder for ``frame_format``."""
    if frame_format == "em4100":
        return Em4100Decoder()
    if frame_format not in FRAME_FORMATS:
        raise DriverConfigError(
            f"frame_format must be one of {', '.join(FRAME_FORMATS)}, got {frame_format!r}"
        )
    return CardLineDecoder(
        frame_format=frame_format, wiegand_formats=wiegand_formats, w34_uid=w34_uid
    )


# -- the adapter --------------------------------------------------------------------------------


class SerialCardReader:
    """Read card lines from a serial port (or ``socket://host:port``); yield :class:`CardRead`.

    ``url`` is anything pyserial's ``serial_for_url`` opens: ``/dev/ttyUSB0`` (better a stable
    ``/dev/serial/by-id/...`` link), a pty slave such as ``/dev/pts/5``, or
    ``socket://127.0.0.1:7000``. A device port is opened exclusively (``flock``), so a second
    process cannot open the same reader and split its frames. When the port cannot be opened or
    disappears, the reader yields ``DeviceFault(fault="port_unavailable")`` once, re-opens with
    jittered exponential backoff, and yields the fault's end when the port is back.

    ``frame_format`` picks the codec (see the module docstring); ``wiegand_formats`` and
    ``w34_uid`` apply to the ``wiegand`` format.

    Counters: ``frames_ok``, ``garbage``, ``overlong``, ``reopen``; with ``em4100`` also
    ``bad_checksum``; with ``wiegand`` also ``bad_parity`` and ``raw_wiegand`` (frames of a
    length no configured format has: counted, never delivered as cards).
    """

    def __init__(
        self,
        *,
        url: str,
        reader_id: str,
        baudrate: int = 9600,
        frame_format: FrameFormat = "decimal",
        wiegand_formats: Sequence[FormatName] = ALL_FORMATS,
        w34_uid: bool = False,
        clock: Callable[[], datetime] = utc_now,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        name: str | None = None,
    ) -> None:
        if frame_format not in FRAME_FORMATS:
            raise DriverConfigError(
                f"frame_format must be one of {', '.join(FRAME_FORMATS)}, got {frame_format!r}"
            )
        self.name = name or f"serial:{reader_id}"
        names = ["frames_ok", "garbage", "overlong", "reopen"]
        if frame_format == "em4100":
            names.append("bad_checksum")
        elif frame_format == "wiegand":
            names += ["bad_parity", "raw_wiegand"]
        self.counters = DriverCounters(names)
        self._frame_format: FrameFormat = frame_format
        self._wiegand_formats = tuple(wiegand_formats)
        self._w34_uid = w34_uid
        self._url = url
        self._reader_id = reader_id
        self._baudrate = baudrate
        self._clock = clock
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._open = False
        self._fault: str | None = None
        self._last_seen: datetime | None = None

    @property
    def reader_id(self) -> str:
        return self._reader_id

    def device_status(self) -> dict[str, DeviceState]:
        return {
            self._reader_id: DeviceState(
                online=self._open and self._fault is None,
                last_seen=self._last_seen,
                fault=self._fault,
            )
        }

    async def events(self) -> AsyncGenerator[CardRead | DeviceFault, None]:
        first = True
        while True:
            if not first:
                self.counters.inc("reopen")
                await asyncio.sleep(self._backoff.next())
            first = False
            try:
                reader, writer = await open_serial_connection(
                    loop=asyncio.get_running_loop(),
                    url=self._url,
                    baudrate=self._baudrate,
                    exclusive=True,  # two processes reading one port would split its frames
                )
            except (OSError, serial.SerialException) as exc:
                if self._fault is None:
                    yield self._set_fault(f"cannot open {self._url}: {exc}")
                continue
            self._open = True
            self._backoff.reset()
            if self._fault is not None:
                log.info("%s: port %s open again", self.name, self._url)
                fault, self._fault = self._fault, None
                yield DeviceFault(self._clock(), self._reader_id, fault, "reopened", active=False)
            decoder = make_decoder(
                self._frame_format, wiegand_formats=self._wiegand_formats, w34_uid=self._w34_uid
            )
            try:
                while data := await reader.read(1024):
                    for item in decoder.feed(data):
                        if isinstance(item, CardLine):
                            self.counters.inc("frames_ok")
                            ts = self._clock()
                            self._last_seen = ts
                            yield CardRead(
                                ts, self._reader_id, item.number, item.facility, item.card
                            )
                        elif isinstance(item, RawWiegand):
                            self.counters.inc("raw_wiegand")
                            log.debug("%s: a %d-bit Wiegand frame", self.name, item.count)
                        else:
                            self.counters.inc(item.reason)
                            log.debug("%s: skipped a %s frame", self.name, item.reason)
                detail = "end of stream"
            except (OSError, serial.SerialException) as exc:
                detail = f"read failed: {exc}"
            finally:
                self._open = False
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await writer.wait_closed()
            yield self._set_fault(f"lost {self._url}: {detail}")

    def _set_fault(self, detail: str) -> DeviceFault:
        log.warning("%s: %s", self.name, detail)
        self._fault = FAULT_PORT
        return DeviceFault(self._clock(), self._reader_id, FAULT_PORT, detail, active=True)
