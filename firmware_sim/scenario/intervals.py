"""Half-open time intervals ``(start, end)`` in scenario seconds, kept sorted and disjoint."""

from __future__ import annotations

import random
from collections.abc import Iterable

Interval = tuple[int, int]


def normalise(ivs: Iterable[Interval]) -> list[Interval]:
    """Sorted, merged, non-empty."""
    out: list[Interval] = []
    for a, b in sorted(ivs):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def complement(ivs: list[Interval], lo: int, hi: int) -> list[Interval]:
    """``[lo, hi)`` minus the (normalised) intervals."""
    out: list[Interval] = []
    t = lo
    for a, b in ivs:
        if b <= t:
            continue
        if a >= hi:
            break
        if a > t:
            out.append((t, a))
        t = max(t, b)
    if t < hi:
        out.append((t, hi))
    return out


def intersect(x: list[Interval], y: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(x) and j < len(y):
        a = max(x[i][0], y[j][0])
        b = min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(ivs: list[Interval], lo: int, hi: int) -> list[Interval]:
    return intersect(ivs, [(lo, hi)])


def overlaps(ivs: Iterable[Interval], a: int, b: int) -> bool:
    return any(x < b and a < y for x, y in ivs)


def covered(ivs: Iterable[Interval], a: int, b: int) -> int:
    """Seconds of ``[a, b)`` covered by the intervals (which may overlap each other)."""
    return sum(max(0, min(b, y) - max(a, x)) for x, y in normalise(ivs))


def contains(ivs: Iterable[Interval], t: int) -> bool:
    return any(x <= t < y for x, y in ivs)


def total(ivs: Iterable[Interval]) -> int:
    return sum(b - a for a, b in ivs)


def random_point(rng: random.Random, ivs: list[Interval], lo: int, hi: int) -> int | None:
    """A uniformly random second of ``ivs`` within ``[lo, hi)``, or None if there is none."""
    parts = clip(ivs, lo, hi)
    length = total(parts)
    if length <= 0:
        return None
    x = rng.randrange(length)
    for a, b in parts:
        if x < b - a:
            return a + x
        x -= b - a
    return None  # pragma: no cover


def containing(ivs: list[Interval], t: int) -> Interval | None:
    for a, b in ivs:
        if a <= t < b:
            return (a, b)
    return None
