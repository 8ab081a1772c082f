"""Wiegand card readers on two GPIO lines (D0, D1): a pure edge decoder and a gpiod adapter.

The protocol (docs: domain.md, "Wiegand"): both lines idle high; a reader sends a 0 as a low
pulse on D0 and a 1 as a low pulse on D1, pulses 20-100 µs wide, 200 µs-20 ms apart. There is no
end marker: a frame ends when the lines have been idle for ``idle_ms`` (25 ms by default; 25-50 ms
is safe).

Three layers, as everywhere in ``drivers``:

- :func:`decode_bits` / :func:`encode_bits`: a frame of ``count`` bits (first bit sent = most
  significant) to a card, with the parity checks of the known formats (:data:`FORMATS`);
- :class:`WiegandDecoder`: a sans-IO state machine fed timestamped edges (:class:`Edge`) and
  "now" times; it has no clock. It checks pulse widths and gaps, ends frames on the idle
  timeout and turns them into :class:`WiegandCard`, :class:`RawWiegand` (a length no configured
  format has, e.g. an 8-bit keypad code) or :class:`WiegandError` (parity, noise, timing);
- :class:`WiegandReader`: the async adapter. Its real edge source is libgpiod v2 (the ``gpiod``
  Python bindings, kernel timestamps on CLOCK_MONOTONIC, both edges of both lines), imported
  only when the reader starts so that the agent runs where gpiod is absent. GPIO has no
  software peer: tests inject an edge source (an async iterable of edges).

Card numbers (the convention, also used by the serial ``wiegand`` line format): ``number`` is
the decimal value of the data bits between the parity bits, i.e. facility (or company) code
followed by card number, ``facility * 2**card_bits + card``, zero-padded to 10 digits, the way
readers and card prints show it (H10301: ``facility * 65536 + card``, the 10-digit number
printed on EM cards next to ``fff,ccccc``). W34 gives the same 32-bit value whether it is read
as 16+16 or as a Chinese reader's full 32-bit UID (``w34_uid=True`` only changes the facility/card
split: facility ``None``, card = the UID). :class:`WiegandCard` keeps ``facility`` and ``card``.
Card numbers are personal data: they stay out of reprs and logs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from contract.events import DeviceFault
from drivers.base import (
    Backoff,
    DeviceState,
    DriverConfigError,
    DriverCounters,
    cancel_and_wait,
    utc_now,
)
from drivers.events import CardRead

__all__ = [
    "ALL_FORMATS",
    "FORMATS",
    "Edge",
    "EdgeLike",
    "GpiodEdgeSource",
    "ParitySpec",
    "RawWiegand",
    "WiegandCard",
    "WiegandDecoder",
    "WiegandError",
    "WiegandFormat",
    "WiegandReader",
    "WiegandTiming",
    "decode_bits",
    "encode_bits",
]

log = logging.getLogger(__name__)

FormatName = Literal["h10301", "w34", "c1k35", "h10304"]
ALL_FORMATS: tuple[FormatName, ...] = ("h10301", "w34", "c1k35", "h10304")
NUMBER_WIDTH = 10
"""Card numbers are zero-padded to this many digits (longer values stay longer)."""
MAX_BITS = 128
"""A frame longer than this is reported as ``overlong`` noise."""

FAULT_GPIO = "gpio_unavailable"


# -- bit frames ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParitySpec:
    """One parity bit: its position (1 = first bit sent) and the positions it covers."""

    position: int
    kind: Literal["even", "odd"]
    covers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WiegandFormat:
    """A bit layout. Positions count from 1 (the first bit on the wire)."""

    name: FormatName
    length: int
    facility: tuple[int, int]  # (first position, width); width 0: no facility field
    card: tuple[int, int]
    parity: tuple[ParitySpec, ...]  # in the order an encoder computes them


def _span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


FORMATS: dict[FormatName, WiegandFormat] = {
    # HID H10301 (26-bit): P1 even over 2-13, facility 2-9 (8 bits), card 10-25 (16 bits),
    # P26 odd over 14-25.
    "h10301": WiegandFormat(
        "h10301",
        26,
        (2, 8),
        (10, 16),
        (ParitySpec(1, "even", _span(2, 13)), ParitySpec(26, "odd", _span(14, 25))),
    ),
    # 34-bit (HID H10306 layout, also the Chinese "W34"): P1 even over 2-17, facility 2-17
    # (16 bits), card 18-33 (16 bits), P34 odd over 18-33.
    "w34": WiegandFormat(
        "w34",
        34,
        (2, 16),
        (18, 16),
        (ParitySpec(1, "even", _span(2, 17)), ParitySpec(34, "odd", _span(18, 33))),
    ),
    # HID Corporate 1000 35-bit (company 3-14, card 15-34). Parity layout as in HID's format
    # description and in the Proxmark3 client (client/src/wiegand_formats.c, Pack_C1k35s, masks
    # 0xB6DB6DB6 / 0x6DB6DB6C over the low 32 bits):
    #   P2  even over 3,4, 6,7, 9,10, ... 33,34  (positions 3..34 not = 2 mod 3)
    #   P35 odd  over 2,3, 5,6, 8,9, ... 32,33   (positions 2..33 not = 1 mod 3; includes P2)
    #   P1  odd  over 2..35                      (every other bit, parity bits included)
    "c1k35": WiegandFormat(
        "c1k35",
        35,
        (3, 12),
        (15, 20),
        (
            ParitySpec(2, "even", tuple(p for p in range(3, 35) if p % 3 != 2)),
            ParitySpec(35, "odd", tuple(p for p in range(2, 34) if p % 3 != 1)),
            ParitySpec(1, "odd", _span(2, 35)),
        ),
    ),
    # HID H10304 (37-bit): P1 even over 2-19, facility 2-17 (16 bits), card 18-36 (19 bits),
    # P37 odd over 19-36 (Proxmark3 Pack_H10304: the two ranges overlap at bit 19).
    "h10304": WiegandFormat(
        "h10304",
        37,
        (2, 16),
        (18, 19),
        (ParitySpec(1, "even", _span(2, 19)), ParitySpec(37, "odd", _span(19, 36))),
    ),
}


def _mask(positions: Sequence[int], count: int) -> int:
    return sum(1 << (count - p) for p in positions)


def _field(bits: int, count: int, first: int, width: int) -> int:
    if width == 0:
        return 0
    return (bits >> (count - (first + width - 1))) & ((1 << width) - 1)


def _parity_ok(bits: int, count: int, spec: ParitySpec) -> bool:
    ones = (bits & _mask((*spec.covers, spec.position), count)).bit_count()
    return ones % 2 == (0 if spec.kind == "even" else 1)


@dataclass(frozen=True, slots=True)
class WiegandCard:
    """A frame of a known format whose parity bits check out."""

    format: FormatName
    facility: int | None = field(repr=False)
    card: int = field(repr=False)
    value: int = field(repr=False)
    """The data bits between the parity bits (facility then card) as one number."""
    bits: int = field(default=0, repr=False, compare=False)
    """The whole frame as received (parity bits included), first bit most significant."""

    @property
    def number(self) -> str:
        """The card number as readers print it (see the module docstring)."""
        return f"{self.value:0{NUMBER_WIDTH}d}"


@dataclass(frozen=True, slots=True)
class RawWiegand:
    """A frame whose length no configured format has: counted, never taken for a card."""

    bits: int = field(repr=False)
    count: int


@dataclass(frozen=True, slots=True)
class WiegandError:
    """A frame that was dropped: ``parity`` (a format's length, parity wrong), ``noise`` (edges
    too close together, both lines low at once, an edge out of place), ``timing`` (a pulse too
    long, a line stuck low, time going backwards) or ``overlong`` (more than MAX_BITS bits)."""

    reason: Literal["parity", "noise", "timing", "overlong"]
    count: int


WiegandFrame = WiegandCard | RawWiegand | WiegandError


def decode_bits(
    bits: int,
    count: int,
    *,
    formats: Sequence[FormatName] = ALL_FORMATS,
    w34_uid: bool = False,
) -> WiegandFrame:
    """Decode one frame of ``count`` bits (the first bit sent is the most significant)."""
    if count > MAX_BITS:
        return WiegandError("overlong", count)
    bits &= (1 << count) - 1
    for name in formats:
        fmt = FORMATS[name]
        if fmt.length != count:
            continue
        if not all(_parity_ok(bits, count, p) for p in fmt.parity):
            return WiegandError("parity", count)
        facility = _field(bits, count, *fmt.facility)
        card = _field(bits, count, *fmt.card)
        value = (facility << fmt.card[1]) | card
        if name == "w34" and w34_uid:
            return WiegandCard(name, None, value, value, bits)
        return WiegandCard(name, facility if fmt.facility[1] else None, card, value, bits)
    return RawWiegand(bits, count)


def encode_bits(name: FormatName, facility: int, card: int) -> tuple[int, int]:
    """The ``(bits, count)`` a reader sends for ``facility``/``card`` in format ``name``."""
    fmt = FORMATS[name]
    (f_first, f_width), (c_first, c_width) = fmt.facility, fmt.card
    if not 0 <= facility < (1 << f_width) or not 0 <= card < (1 << c_width):
        raise ValueError(f"{name}: facility or card number out of range")
    count = fmt.length
    bits = (facility << (count - (f_first + f_width - 1))) | (
        card << (count - (c_first + c_width - 1))
    )
    for p in fmt.parity:
        if not _parity_ok(bits, count, p):
            bits |= 1 << (count - p.position)
    return bits, count


# -- the edge decoder ---------------------------------------------------------------------------


class EdgeLike(Protocol):
    """What the decoder reads from an edge (:class:`Edge` or any object with these fields)."""

    @property
    def t_ns(self) -> int: ...

    @property
    def line(self) -> int: ...

    @property
    def falling(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Edge:
    """One edge on D0 (``line=0``) or D1 (``line=1``) at ``t_ns`` (kernel timestamp, ns).

    A falling edge starts a pulse (the line is pulled low), a rising edge ends it.
    """

    t_ns: int
    line: Literal[0, 1]
    falling: bool = True


@dataclass(frozen=True, slots=True)
class WiegandTiming:
    """Sanity limits (domain.md: pulses 20-100 µs, gaps 200 µs-20 ms).

    ``edges="both"`` (the gpiod source) checks pulse widths from falling to rising edge;
    ``edges="falling"`` is for sources that report falling edges only: then only the time from
    one falling edge to the next is checked (at least ``min_pulse_ns + min_gap_ns``).
    """

    min_pulse_ns: int = 20_000
    max_pulse_ns: int = 100_000
    min_gap_ns: int = 200_000
    edges: Literal["both", "falling"] = "both"


class WiegandDecoder:
    """Sans-IO Wiegand frame decoder: ``feed(edge)`` and ``tick(now_ns)`` return finished frames.

    A frame ends when no edge came for ``idle_ns`` (25 ms by default). Frames with a timing
    fault are dropped whole and reported once as :class:`WiegandError`. The decoder has no
    clock: the adapter calls :meth:`tick` with :attr:`deadline_ns` once the lines have been quiet
    that long.
    """

    def __init__(
        self,
        *,
        idle_ns: int = 25_000_000,
        timing: WiegandTiming | None = None,
        formats: Sequence[FormatName] = ALL_FORMATS,
        w34_uid: bool = False,
    ) -> None:
        if idle_ns <= 0:
            raise ValueError("idle_ns must be positive")
        unknown = set(formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown Wiegand formats: {sorted(unknown)}")
        self._idle = idle_ns
        self._timing = timing or WiegandTiming()
        self._formats = tuple(formats)
        self._w34_uid = w34_uid
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._bits = 0
        self._count = 0
        self._bad: Literal["noise", "timing", "overlong"] | None = None
        self._last_t = 0
        self._last_fall: int | None = None
        self._last_rise: int | None = None
        self._low: list[int | None] = [None, None]

    @property
    def deadline_ns(self) -> int | None:
        """When the frame in progress ends if no edge comes (None: no frame in progress)."""
        return self._last_t + self._idle if self._active else None

    def tick(self, now_ns: int) -> list[WiegandFrame]:
        """Say that it is ``now_ns``: ends the frame in progress if it has been idle long enough."""
        if self._active and now_ns - self._last_t >= self._idle:
            return self._finish()
        return []

    def feed(self, edge: EdgeLike) -> list[WiegandFrame]:
        """Take one edge; returns the previous frame if this edge comes after the idle time."""
        out: list[WiegandFrame] = []
        t = edge.t_ns
        if self._active and t - self._last_t >= self._idle:
            out = self._finish()
        line = 1 if edge.line else 0
        if edge.falling:
            self._falling(line, t)
        elif self._timing.edges == "both":
            self._rising(line, t)
        return out

    def _mark(self, reason: Literal["noise", "timing", "overlong"]) -> None:
        if self._bad is None:
            self._bad = reason

    def _touch(self, t: int) -> None:
        if not self._active:
            self._active = True
            self._last_t = t
            return
        if t < self._last_t:
            self._mark("timing")  # time going backwards: not a trustworthy source
        self._last_t = max(self._last_t, t)

    def _falling(self, line: int, t: int) -> None:
        timing = self._timing
        self._touch(t)
        if timing.edges == "both":
            if self._low[1 - line] is not None or self._low[line] is not None:
                self._mark("noise")  # both lines low, or a pulse that never ended
            elif self._last_rise is not None and t - self._last_rise < timing.min_gap_ns:
                self._mark("noise")
        if (
            self._last_fall is not None
            and t - self._last_fall < timing.min_pulse_ns + timing.min_gap_ns
        ):
            self._mark("noise")
        self._last_fall = t
        if timing.edges == "both":
            self._low[line] = t
        self._count += 1
        if self._count > MAX_BITS:
            self._mark("overlong")
        elif self._bad is None:
            self._bits = (self._bits << 1) | line

    def _rising(self, line: int, t: int) -> None:
        started = self._low[line]
        if started is None:
            if self._active:
                self._touch(t)
                self._mark("noise")  # a pulse end without its start
            return  # a line settling at start-up: not a frame
        self._touch(t)
        self._low[line] = None
        self._last_rise = t
        width = t - started
        if width < self._timing.min_pulse_ns:
            self._mark("noise")
        elif width > self._timing.max_pulse_ns:
            self._mark("timing")

    def _finish(self) -> list[WiegandFrame]:
        bad, count, bits = self._bad, self._count, self._bits
        stuck = any(low is not None for low in self._low)
        self._reset()
        if bad is not None:
            return [WiegandError(bad, count)]
        if stuck:
            return [WiegandError("timing", count)]  # a line still low after the idle time
        if count == 0:
            return []
        return [decode_bits(bits, count, formats=self._formats, w34_uid=self._w34_uid)]


# -- the adapter --------------------------------------------------------------------------------


class GpiodEdgeSource:
    """Edges of two lines from libgpiod v2 (``gpiod`` Python bindings >= 2).

    Requests both lines as inputs with pull-ups, edge detection on both edges and kernel
    timestamps on CLOCK_MONOTONIC; the request's file descriptor is watched by the event loop.
    ``gpiod`` is imported when iteration starts, never at import time.
    """

    def __init__(
        self, *, chip: str, d0: int, d1: int, consumer: str = "edge-agent-wiegand"
    ) -> None:
        self._chip = chip
        self._d0 = d0
        self._d1 = d1
        self._consumer = consumer

    def __aiter__(self) -> AsyncIterator[Edge]:
        return self._edges()

    async def _edges(self) -> AsyncGenerator[Edge, None]:  # pragma: no cover - needs a GPIO chip
        import gpiod  # type: ignore[import-not-found]  # noqa: PLC0415 - optional, lazy
        from gpiod.line import (  # type: ignore[import-not-found]  # noqa: PLC0415
            Bias,
            Clock,
            Direction,
        )
        from gpiod.line import Edge as GpiodEdge  # noqa: PLC0415

        settings = gpiod.LineSettings(
            direction=Direction.INPUT,
            edge_detection=GpiodEdge.BOTH,
            bias=Bias.PULL_UP,
            event_clock=Clock.MONOTONIC,
        )
        request = gpiod.request_lines(
            self._chip,
            consumer=self._consumer,
            config={(self._d0, self._d1): settings},
            event_buffer_size=1024,
        )
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(request.fd, ready.set)
        falling_type = gpiod.EdgeEvent.Type.FALLING_EDGE
        try:
            while True:
                await ready.wait()
                ready.clear()
                for ev in request.read_edge_events():
                    line: Literal[0, 1] = 0 if ev.line_offset == self._d0 else 1
                    yield Edge(ev.timestamp_ns, line, ev.event_type is falling_type)
        finally:
            loop.remove_reader(request.fd)
            request.release()


def gpiod_available() -> bool:
    return importlib.util.find_spec("gpiod") is not None


class WiegandReader:
    """Read a Wiegand reader's D0/D1 lines; yield :class:`~drivers.events.CardRead`.

    ``edge_source`` is any async iterable of edges (tests inject one); by default the lines
    ``d0``/``d1`` of ``chip`` are read through libgpiod. Without ``gpiod`` installed and without
    an ``edge_source`` the constructor raises :class:`DriverConfigError`. When the source fails
    or ends, the reader yields ``DeviceFault(fault="gpio_unavailable")`` once, restarts it with
    jittered backoff, and yields the fault's end when edges flow again.

    Counters: ``frames_ok`` (cards), ``parity_errors``, ``noise`` (frames dropped for edges too
    close together, both lines low, ...), ``bad_timing`` (pulse too long, line stuck low),
    ``overlong``, ``raw_frames`` (lengths no configured format has: keypads, unknown formats;
    never taken for a card), ``restarts``.
    """

    def __init__(
        self,
        *,
        chip: str = "/dev/gpiochip0",
        d0: int,
        d1: int,
        reader_id: str,
        idle_ms: float = 25.0,
        formats: Sequence[FormatName] = ALL_FORMATS,
        w34_uid: bool = False,
        timing: WiegandTiming | None = None,
        edge_source: AsyncIterable[EdgeLike] | None = None,
        clock: Callable[[], datetime] = utc_now,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        name: str | None = None,
    ) -> None:
        if d0 == d1 or d0 < 0 or d1 < 0:
            raise DriverConfigError("d0 and d1 must be two different GPIO line offsets")
        if not 5 <= idle_ms <= 1000:
            raise DriverConfigError("idle_ms must be 5..1000 (25-50 ms is safe)")
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise DriverConfigError(
                f"Wiegand formats must be some of {', '.join(ALL_FORMATS)}, got {list(formats)}"
            )
        if edge_source is None:
            if not gpiod_available():
                raise DriverConfigError(
                    f"Wiegand reader {reader_id!r} needs libgpiod's Python bindings: "
                    "install python3-libgpiod / gpiod>=2 on the gateway"
                )
            edge_source = GpiodEdgeSource(chip=chip, d0=d0, d1=d1)
        self.name = name or f"wiegand:{reader_id}"
        self.counters = DriverCounters(
            (
                "frames_ok",
                "parity_errors",
                "noise",
                "bad_timing",
                "overlong",
                "raw_frames",
                "restarts",
            )
        )
        self._reader_id = reader_id
        self._source = edge_source
        self._idle_ns = int(idle_ms * 1_000_000)
        self._formats = tuple(formats)
        self._w34_uid = w34_uid
        self._timing = timing
        self._clock = clock
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._running = False
        self._fault: str | None = None
        self._last_seen: datetime | None = None

    @property
    def reader_id(self) -> str:
        return self._reader_id

    def device_status(self) -> dict[str, DeviceState]:
        return {
            self._reader_id: DeviceState(
                online=self._running and self._fault is None,
                last_seen=self._last_seen,
                fault=self._fault,
            )
        }

    async def events(self) -> AsyncGenerator[CardRead | DeviceFault, None]:
        loop = asyncio.get_running_loop()
        idle_s = self._idle_ns / 1e9
        first = True
        while True:
            if not first:
                self.counters.inc("restarts")
                await asyncio.sleep(self._backoff.next())
            first = False
            queue: asyncio.Queue[EdgeLike | BaseException | None] = asyncio.Queue()
            pump = asyncio.create_task(self._pump(queue), name=f"{self.name}:edges")
            decoder = WiegandDecoder(
                idle_ns=self._idle_ns,
                timing=self._timing,
                formats=self._formats,
                w34_uid=self._w34_uid,
            )
            self._running = True
            last_rx = loop.time()
            try:
                while True:
                    deadline = decoder.deadline_ns
                    if deadline is None:
                        item = await queue.get()
                    else:
                        try:
                            async with asyncio.timeout(max(0.0, last_rx + idle_s - loop.time())):
                                item = await queue.get()
                        except TimeoutError:
                            for event in self._frames(decoder.tick(deadline)):
                                yield event
                            continue
                    if item is None or isinstance(item, BaseException):
                        detail = "edge source ended" if item is None else f"edge source: {item}"
                        break
                    last_rx = loop.time()
                    if self._fault is not None:
                        fault, self._fault = self._fault, None
                        log.info("%s: edges flow again", self.name)
                        yield DeviceFault(
                            self._clock(), self._reader_id, fault, "edges again", active=False
                        )
                    self._backoff.reset()
                    for event in self._frames(decoder.feed(item)):
                        yield event
            finally:
                self._running = False
                await cancel_and_wait(pump)
            if self._fault is None:
                log.warning("%s: %s", self.name, detail)
                self._fault = FAULT_GPIO
                yield DeviceFault(self._clock(), self._reader_id, FAULT_GPIO, detail, active=True)

    async def _pump(self, queue: asyncio.Queue[EdgeLike | BaseException | None]) -> None:
        """Move edges from the source to ``queue`` (so that waiting with a timeout never cancels
        the source's own iterator), then ``None`` at its end or the exception it raised."""
        try:
            async for edge in self._source:
                queue.put_nowait(edge)
        except Exception as exc:  # the layer boundary: any source failure becomes a fault
            queue.put_nowait(exc)
            return
        queue.put_nowait(None)

    def _frames(self, frames: list[WiegandFrame]) -> list[CardRead]:
        out: list[CardRead] = []
        for frame in frames:
            if isinstance(frame, WiegandCard):
                self.counters.inc("frames_ok")
                ts = self._clock()
                self._last_seen = ts
                out.append(CardRead(ts, self._reader_id, frame.number, frame.facility, frame.card))
            elif isinstance(frame, RawWiegand):
                self.counters.inc("raw_frames")
                log.debug("%s: a %d-bit frame of no configured format", self.name, frame.count)
            else:
                counter = {
                    "parity": "parity_errors",
                    "noise": "noise",
                    "timing": "bad_timing",
                    "overlong": "overlong",
                }[frame.reason]
                self.counters.inc(counter)
                log.debug("%s: dropped a %d-bit frame (%s)", self.name, frame.count, frame.reason)
        return out
