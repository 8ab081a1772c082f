"""A Wiegand reader's D0/D1 edges, as the kernel would timestamp them, with faults on purpose.

GPIO has no software peer (design.md): the simulator produces the timestamped edges a libgpiod
request would deliver, and the Wiegand driver takes them through its injected edge source.

Independent of ``drivers`` on purpose: the bit layouts come from the format descriptions
(H10301 26-bit, 34-bit, Corporate 1000 35-bit, H10304 37-bit) and are written out here again,
so a mistake in the driver's tables is not copied into its test peer.

- :func:`pack` gives the ``(bits, count)`` a reader sends for a facility and card number;
- :func:`frame_edges` turns bits into edges (a falling and a rising edge per bit, pulse ~50 µs,
  bit period ~1-2 ms, with jitter), with faults: a missing bit, a flipped parity bit, a noise
  glitch on the other line, a pulse held too long;
- :class:`WiegandEdgeSim` is an async iterable of edges: ``await sim.swipe(...)`` queues one
  frame, an async ``for`` over the simulator yields its edges (optionally paced in real time).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

FormatName = Literal["h10301", "w34", "c1k35", "h10304"]
Fault = Literal["missing_bit", "parity", "glitch", "long_pulse"]

# name: (length, facility first position, facility width, card first position, card width)
_LAYOUT: dict[str, tuple[int, int, int, int, int]] = {
    "h10301": (26, 2, 8, 10, 16),
    "w34": (34, 2, 16, 18, 16),
    "c1k35": (35, 3, 12, 15, 20),
    "h10304": (37, 2, 16, 18, 19),
}


@dataclass(frozen=True, slots=True)
class SimEdge:
    """One edge: ``line`` 0 is D0, 1 is D1; ``falling`` starts a pulse, rising ends it."""

    t_ns: int
    line: int
    falling: bool


def _bit(bits: list[int], position: int) -> int:
    return bits[position - 1]


def _set_parity(bits: list[int], position: int, covers: range | list[int], odd: bool) -> None:
    ones = sum(_bit(bits, p) for p in covers)
    bits[position - 1] = (ones + (1 if odd else 0)) % 2


def pack(fmt: FormatName, facility: int, card: int) -> tuple[int, int]:
    """The ``(bits, count)`` of one frame; the first bit sent is the most significant."""
    count, f_first, f_width, c_first, c_width = _LAYOUT[fmt]
    if not 0 <= facility < 1 << f_width or not 0 <= card < 1 << c_width:
        raise ValueError(f"{fmt}: facility or card out of range")
    bits = [0] * count
    for i in range(f_width):
        bits[f_first - 1 + i] = (facility >> (f_width - 1 - i)) & 1
    for i in range(c_width):
        bits[c_first - 1 + i] = (card >> (c_width - 1 - i)) & 1
    if fmt == "c1k35":
        # Corporate 1000: bit 2 even over 3,4,6,7,...,33,34; bit 35 odd over 2,3,5,6,...,32,33;
        # bit 1 odd over bits 2-35.
        _set_parity(bits, 2, [p for p in range(3, 35) if p % 3 != 2], odd=False)
        _set_parity(bits, 35, [p for p in range(2, 34) if p % 3 != 1], odd=True)
        _set_parity(bits, 1, range(2, 36), odd=True)
    else:
        half = {"h10301": 13, "w34": 17, "h10304": 19}[fmt]
        second = half + 1 if fmt != "h10304" else 19  # H10304's halves overlap at bit 19
        _set_parity(bits, 1, range(2, half + 1), odd=False)
        _set_parity(bits, count, range(second, count), odd=True)
    return int("".join(map(str, bits)), 2), count


def split_number(fmt: FormatName, number: int) -> tuple[int, int]:
    """Facility and card of the combined number ``facility * 2**card_bits + card``."""
    c_width = _LAYOUT[fmt][4]
    return number >> c_width, number & ((1 << c_width) - 1)


def flip_parity(bits: int, count: int) -> int:
    """The frame with its last bit (a parity bit in every format here) inverted."""
    return bits ^ 1


def frame_edges(
    bits: int,
    count: int,
    *,
    t0_ns: int,
    rng: random.Random | None = None,
    pulse_us: float = 50.0,
    period_us: float = 1000.0,
    jitter_us: float = 5.0,
    fault: Fault | None = None,
) -> list[SimEdge]:
    """Edges of one frame starting at ``t0_ns``.

    Faults: ``missing_bit`` leaves out one bit in the middle (the receiver sees ``count - 1``
    bits), ``parity`` inverts the last bit, ``glitch`` adds a 3 µs spike on the other line in
    the middle of a gap (noise), ``long_pulse`` holds one pulse low for 400 µs.
    """
    rng = rng or random.Random(0)
    if fault == "parity":
        bits = flip_parity(bits, count)
    seq = [(bits >> (count - 1 - i)) & 1 for i in range(count)]
    middle = count // 2
    if fault == "missing_bit":
        del seq[middle]
    edges: list[SimEdge] = []
    t = t0_ns
    for i, line in enumerate(seq):
        width = pulse_us + rng.uniform(-jitter_us, jitter_us)
        if fault == "long_pulse" and i == middle:
            width = 400.0
        edges.append(SimEdge(t, line, True))
        edges.append(SimEdge(t + int(width * 1000), line, False))
        if fault == "glitch" and i == middle:
            spike = t + int(period_us * 1000 / 2)
            edges.append(SimEdge(spike, 1 - line, True))
            edges.append(SimEdge(spike + 3_000, 1 - line, False))
        t += int((period_us + rng.uniform(-jitter_us, jitter_us)) * 1000)
    return edges


class WiegandEdgeSim:
    """An edge source for the Wiegand driver: ``async for edge in sim`` (once per driver run).

    ``swipe`` queues one frame whose timestamps follow on from the previous frame (at least
    ``gap_ms`` later, and no earlier than ``time.monotonic_ns()``: the clock gpiod uses). With
    ``realtime=True`` the edges are paced as their timestamps say; otherwise a frame's edges are
    delivered at once, as a burst from the kernel's event buffer would be.
    """

    def __init__(
        self,
        *,
        realtime: bool = False,
        rng: random.Random | None = None,
        gap_ms: float = 100.0,
        period_us: float = 1000.0,
    ) -> None:
        self._queue: asyncio.Queue[SimEdge | None] = asyncio.Queue()
        self._rng = rng or random.Random(0)
        self._realtime = realtime
        self._gap_ns = int(gap_ms * 1_000_000)
        self._period_us = period_us
        self._next_t = 0
        self.frames = 0

    async def swipe(
        self,
        *,
        facility: int | None = None,
        card: int | None = None,
        number: int | None = None,
        fmt: FormatName = "h10301",
        fault: Fault | None = None,
    ) -> None:
        """Queue a card: give ``facility`` and ``card``, or the combined ``number``."""
        if number is not None:
            facility, card = split_number(fmt, number)
        if facility is None or card is None:
            raise ValueError("give facility and card, or number")
        bits, count = pack(fmt, facility, card)
        await self.send_bits(bits, count, fault=fault)

    async def send_bits(self, bits: int, count: int, *, fault: Fault | None = None) -> None:
        """Queue any frame (e.g. an 8-bit keypad code, or a format the driver does not know)."""
        t0 = max(time.monotonic_ns(), self._next_t)
        edges = frame_edges(
            bits, count, t0_ns=t0, rng=self._rng, period_us=self._period_us, fault=fault
        )
        self._next_t = edges[-1].t_ns + self._gap_ns
        self.frames += 1
        for edge in edges:
            self._queue.put_nowait(edge)
        await asyncio.sleep(0)

    async def send_edges(self, edges: list[SimEdge]) -> None:
        """Queue raw edges (noise on an idle line, a line stuck low, ...)."""
        for edge in edges:
            self._queue.put_nowait(edge)
            self._next_t = max(self._next_t, edge.t_ns + self._gap_ns)
        await asyncio.sleep(0)

    def close(self) -> None:
        """End the stream (the driver sees its source end: a GPIO fault)."""
        self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[SimEdge]:
        return self._edges()

    async def _edges(self) -> AsyncIterator[SimEdge]:
        while True:
            edge = await self._queue.get()
            if edge is None:
                return
            if self._realtime:
                delay = (edge.t_ns - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            yield edge
