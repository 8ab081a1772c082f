"""Serial card readers that send each card as a bare decimal (or hex) line.

The codec (pure: bytes in, frames out) and the adapter (:class:`SerialCardReader`, over
``serial_asyncio_fast``) live here.

Wire format: optional spaces, the card number as 4-24 decimal digits (or hex digits), optional
spaces, then CR, LF or CR LF. Long RS-485 runs deliver garbage, partial lines and noise: a line
that is not a card number is reported as :class:`Malformed` (``garbage``) and skipped; a line
longer than ``max_len`` is reported once as ``overlong`` and everything up to its end is dropped.

Card numbers are personal data: :class:`CardLine` and :class:`~drivers.events.CardRead` keep the
number out of their reprs, and nothing here logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import serial
from serial_asyncio_fast import open_serial_connection

from contract.events import DeviceFault
from drivers.base import Backoff, DeviceState, DriverCounters, utc_now
from drivers.events import CardRead

__all__ = [
    "DEFAULT_MAX_LEN",
    "DEFAULT_MIN_LEN",
    "CardLine",
    "CardLineDecoder",
    "CardRead",
    "Malformed",
    "SerialCardReader",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)

DEFAULT_MIN_LEN = 4
DEFAULT_MAX_LEN = 24
_TERMINATORS = b"\r\n"
_BLANKS = b" \t"
_DEC = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")

FAULT_PORT = "port_unavailable"


# -- the codec ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardLine:
    """One card number as the reader sent it (decimal digits, or upper-case hex digits)."""

    number: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Malformed:
    """Bytes that are not a card line.

    ``reason`` is ``"garbage"`` (a complete line that is not a card number) or ``"overlong"``
    (a line longer than allowed). ``complete`` is False for an overlong line whose end has not
    arrived yet: the caller must drop bytes up to the next terminator (see
    :class:`CardLineDecoder`).
    """

    reason: Literal["garbage", "overlong"]
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


def decode(
    buf: bytes, *, min_len: int = DEFAULT_MIN_LEN, max_len: int = DEFAULT_MAX_LEN
) -> tuple[CardLine | Malformed | None, int]:
    """Decode the first line of ``buf``.

    Returns ``(result, used)``:

    - ``(None, 0)``: need more bytes (nothing consumed);
    - ``(None, n)``: ``n`` bytes of empty lines (bare terminators) skipped;
    - ``(CardLine, n)``: a card line, ``n`` bytes including its terminator;
    - ``(Malformed, n)``: ``n`` bytes that are not a card line, skipped.

    ``max_len`` counts the line's bytes before the terminator, blanks included.
    """
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
    text = buf[:end].strip(_BLANKS)
    if len(text) < min_len or not set(text) <= _HEX:
        return Malformed("garbage"), used
    number = text.decode("ascii")
    return CardLine(number if set(text) <= _DEC else number.upper()), used


def encode(frame: CardLine) -> bytes:
    """The line a reader sends for ``frame``."""
    return frame.number.encode("ascii") + b"\r\n"


class CardLineDecoder:
    """Sans-IO stream decoder over :func:`decode`: feed bytes, get frames, keep the rest.

    Holds the partial line between reads and the "dropping the rest of an overlong line" state.
    """

    def __init__(self, *, min_len: int = DEFAULT_MIN_LEN, max_len: int = DEFAULT_MAX_LEN) -> None:
        self._buf = b""
        self._min_len = min_len
        self._max_len = max_len
        self._dropping = False

    def feed(self, data: bytes) -> list[CardLine | Malformed]:
        buf = self._buf + data
        out: list[CardLine | Malformed] = []
        while buf:
            if self._dropping:
                end = _find_terminator(buf)
                if end < 0:
                    buf = b""
                    break
                buf = buf[_terminator_end(buf, end) :]
                self._dropping = False
                continue
            result, used = decode(buf, min_len=self._min_len, max_len=self._max_len)
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


# -- the adapter --------------------------------------------------------------------------------


class SerialCardReader:
    """Read card lines from a serial port (or ``socket://host:port``); yield :class:`CardRead`.

    ``url`` is anything pyserial's ``serial_for_url`` opens: ``/dev/ttyUSB0`` (better a stable
    ``/dev/serial/by-id/...`` link), a pty slave such as ``/dev/pts/5``, or
    ``socket://127.0.0.1:7000``. A device port is opened exclusively (``flock``), so a second
    process cannot open the same reader and split its frames. When the port cannot be opened or
    disappears, the reader yields ``DeviceFault(fault="port_unavailable")`` once, re-opens with
    jittered exponential backoff, and yields the fault's end when the port is back.

    Counters: ``frames_ok``, ``garbage``, ``overlong``, ``reopen``.
    """

    def __init__(
        self,
        *,
        url: str,
        reader_id: str,
        baudrate: int = 9600,
        clock: Callable[[], datetime] = utc_now,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        name: str | None = None,
    ) -> None:
        self.name = name or f"serial:{reader_id}"
        self.counters = DriverCounters(("frames_ok", "garbage", "overlong", "reopen"))
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
            decoder = CardLineDecoder()
            try:
                while data := await reader.read(1024):
                    for item in decoder.feed(data):
                        if isinstance(item, CardLine):
                            self.counters.inc("frames_ok")
                            ts = self._clock()
                            self._last_seen = ts
                            yield CardRead(ts, self._reader_id, item.number)
                        else:
                            self.counters.inc(item.reason)
                            log.debug("%s: skipped a %s line", self.name, item.reason)
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
