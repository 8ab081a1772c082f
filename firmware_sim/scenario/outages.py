"""When devices send nothing: long silences (labelled) and everyday short gaps (not labelled).

Labelled (``data_silence``, seed 001: 5日内无数据上传的点位及时跟进上门核查):

* a few meters, a reader and a sensor that stop for at least 5 days (5.2-8 days, or never come
  back: ``end`` null);
* a reader of a two-door building that dies for 28-72 h while the other door's reader keeps
  reporting swipes (at least 24 h: a dead reader is obvious when its neighbour is busy).

Not labelled: missed polls, RS-485 or BLE dropouts of minutes to 4 hours, gateway reboots that
silence a whole building for a few minutes. No unlabelled gap reaches 6 hours, so there is no
ambiguous middle between "normal" and "silent".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from firmware_sim.scenario._rng import chance, log_uniform
from firmware_sim.scenario.intervals import Interval, normalise, overlaps
from firmware_sim.scenario.layout import Building
from firmware_sim.scenario.timebase import DAY, HOUR, MINUTE

LONG_MIN_S = int(5.2 * DAY)
SHORT_MAX_S = int(5.5 * HOUR)
PEER_MIN_S = 28 * HOUR
PEER_MAX_S = 72 * HOUR


@dataclass(slots=True)
class Silence:
    field: str
    """``meter_id``, ``reader_id`` or ``sensor_id``."""
    device: str
    start: int
    end: int | None
    note: str


@dataclass(slots=True)
class OutagePlan:
    gaps: dict[str, list[Interval]] = field(default_factory=dict)
    """Device id -> sorted, disjoint intervals in which it sends nothing."""
    long: dict[str, list[Interval]] = field(default_factory=dict)
    """Device id -> its labelled silences (subset of ``gaps``)."""
    silences: list[Silence] = field(default_factory=list)

    def of(self, device: str) -> list[Interval]:
        return self.gaps.get(device, [])

    def long_of(self, device: str) -> list[Interval]:
        return self.long.get(device, [])


def _poisson(rng: random.Random, lam: float) -> int:
    limit = math.exp(-lam)
    k = 0
    p = rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def plan_outages(
    rng: random.Random,
    *,
    days: int,
    buildings: list[Building],
    meters: list[tuple[str, str]],
    sensors: list[tuple[str, str]],
    protected: frozenset[str],
) -> OutagePlan:
    """``meters`` and ``sensors`` are (device id, building); ``protected`` never go silent long."""
    end = days * DAY
    raw: dict[str, list[Interval]] = {}
    longs: dict[str, list[tuple[Interval, str, str]]] = {}
    readers = [(r, b.name) for b in buildings for r in b.readers]

    def add_long(field_name: str, device: str, a: int, b: int, note: str) -> None:
        raw.setdefault(device, []).append((a, b))
        longs.setdefault(device, []).append(((a, b), field_name, note))

    def long_gap(field_name: str, device: str) -> None:
        start = int(rng.uniform(0.3, days - 5.5) * DAY)
        room = end - start
        if chance(rng, 0.5) and room > int(5.5 * DAY):
            length = int(rng.uniform(5.2, min(8.0, room / DAY - 0.25)) * DAY)
            add_long(field_name, device, start, start + length, "stopped sending, came back")
        else:
            add_long(field_name, device, start, end, "stopped sending, never came back")

    # A dead reader next to a working one.
    pairs = [b for b in buildings if len(b.readers) == 2]
    span = end - 4 * HOUR
    peer_buildings: set[str] = set()
    if pairs and span >= PEER_MIN_S + 4 * HOUR:
        n = 1 + (1 if len(pairs) > 1 and days >= 10 and chance(rng, 0.4) else 0)
        for bld in rng.sample(pairs, n):
            peer_buildings.add(bld.name)
            reader = rng.choice(bld.readers)
            length = int(rng.uniform(PEER_MIN_S, min(PEER_MAX_S, span - 2 * HOUR)))
            start = int(rng.uniform(2 * HOUR, end - length - 2 * HOUR))
            add_long(
                "reader_id",
                reader,
                start,
                start + length,
                "reader dead while the building's other reader kept working",
            )

    if days >= 6:
        candidates = [m for m, _ in meters if m not in protected]
        k = max(1, round(len(meters) * rng.uniform(0.01, 0.025)))
        for m in rng.sample(candidates, min(k, len(candidates))):
            long_gap("meter_id", m)
        spare = [r for r, bname in readers if bname not in peer_buildings]
        if spare and chance(rng, 0.6):
            long_gap("reader_id", rng.choice(spare))
        cands = [s for s, _ in sensors if s not in protected]
        if cands and chance(rng, 0.8):
            long_gap("sensor_id", rng.choice(cands))

    # Everyday gaps.
    def short(device: str, rate_per_week: float, lo_min: float, hi_min: float) -> None:
        for _ in range(_poisson(rng, rate_per_week * days / 7)):
            length = int(log_uniform(rng, lo_min, hi_min) * MINUTE)
            a = rng.randrange(0, max(1, end - length))
            raw.setdefault(device, []).append((a, a + length))

    for m, _ in meters:
        short(m, 1.5, 3, 240)
    for r, _ in readers:
        short(r, 1.0, 5, 180)
    for s, _ in sensors:
        short(s, 1.5, 5, 240)
    for bld in buildings:  # gateway reboots: the whole building is quiet for a few minutes
        devices = list(bld.readers) + [m for m, bn in meters if bn == bld.name]
        devices += [s for s, bn in sensors if bn == bld.name]
        for _ in range(_poisson(rng, days / 10)):
            length = int(rng.uniform(2, 25) * MINUTE)
            a = rng.randrange(0, max(1, end - length))
            for dev in devices:
                raw.setdefault(dev, []).append((a, a + length))

    plan = OutagePlan()
    for device in sorted(raw):
        merged = normalise(raw[device])
        lg = [iv for iv, _, _ in longs.get(device, [])]
        fixed: list[Interval] = []
        for a, b in merged:
            stop = b
            if not overlaps(lg, a, b) and b - a > SHORT_MAX_S:
                stop = a + SHORT_MAX_S  # two dropouts back to back: keep it short of 6 h
            fixed.append((a, min(stop, end)))
        plan.gaps[device] = fixed
        for (la, lb), field_name, note in longs.get(device, []):
            ga, gb = next(iv for iv in fixed if iv[0] <= la < iv[1] or (iv[0] < lb and la < iv[1]))
            plan.long.setdefault(device, []).append((ga, gb))
            plan.silences.append(Silence(field_name, device, ga, None if gb >= end else gb, note))
    plan.silences.sort(key=lambda s: (s.start, s.device))
    return plan


def in_gap(gaps: list[Interval], t: int) -> bool:
    """Whether ``t`` falls in one of the sorted, disjoint ``gaps`` (binary search)."""
    lo, hi = 0, len(gaps)
    while lo < hi:
        mid = (lo + hi) // 2
        if gaps[mid][1] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(gaps) and gaps[lo][0] <= t
