"""What draws power in a flat, and the flat's meter.

A flat's load is the sum of *activations*: an appliance drawing ``p`` watts (at power factor
``pf``) from ``start`` to ``end``, with a few per cent of jitter, or following a curve (an e-bike
charger, an inverter air conditioner). Each day, :func:`day_acts` turns the household's day plan
(who is at home and awake, see :mod:`households`) and the weather into activations:

* always: standby (router, set-top boxes: 10-60 W), fridges cycling (80-150 W, 30-40 % duty,
  20-40 min cycles), an aquarium in a few flats, a storage water heater keeping warm;
* when people are home: lights after sunset, TV, PCs (a steady 100-300 W for hours, switched off
  abruptly: the classic e-bike confounder), phone and laptop chargers, cooking (induction
  1.2-2.2 kW, rice cooker 500-800 W and its keep-warm, kettle 1.5-2 kW for 3-5 min, microwave),
  showers reheating the water heater (2-3 kW), hair dryers, washing machines;
* on cold March days: space heaters (1-2 kW, hours, thermostat cycling or steady), inverter air
  conditioners in heating mode, electric blankets (a high setting that steps down: a taper-like
  confounder); on humid days: dehumidifiers (a 200-350 W compressor cycling for hours).

Group rentals get the same per person, so more devices at once and longer evening peaks.
Shops and offices draw a high daytime load with few people. Overloads are planned episodes of
several heavy loads at once; outside them a flat's current stays under its breaker rating
(residents who trip a breaker learn not to run everything at once), except for planned
excursions shorter than 2 minutes.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field

from firmware_sim.scenario._rng import chance
from firmware_sim.scenario.ebike import Curve
from firmware_sim.scenario.households import (
    CHILD,
    FLAT_SHARE,
    FLEXIBLE,
    GROUP_RENTAL,
    HOMEBODY,
    RETIREE,
    SHOP,
    VACANT,
    DayPlan,
    Household,
)
from firmware_sim.scenario.intervals import Interval, clip, containing, normalise, random_point
from firmware_sim.scenario.timebase import DAY, HOUR, MINUTE

NORMAL = 0
OVERLOAD = 1
"""Part of a planned overload episode: never clamped to the breaker rating."""
EXCURSION = 2
"""A short burst sized at sampling time to push the current just above the rating."""

CLAMP_SHARE = 0.96
"""Outside planned episodes the current is kept under this share of the breaker rating."""


class Act:
    """One appliance drawing power over ``[start, end)``."""

    __slots__ = ("curve", "disc", "end", "jit", "kind", "p", "sf", "start")

    def __init__(
        self,
        start: int,
        end: int,
        p: float,
        pf: float = 1.0,
        jit: float = 0.02,
        *,
        disc: bool = False,
        curve: Curve | None = None,
        kind: int = NORMAL,
    ) -> None:
        self.start = start
        self.end = end
        self.p = p
        self.sf = 1.0 / pf
        self.jit = jit
        self.disc = disc
        self.curve = curve
        self.kind = kind


class StepCurve(Curve):
    """Piecewise-constant power (an inverter air conditioner, an electric blanket)."""

    __slots__ = ("levels", "times")

    def __init__(self, steps: list[tuple[int, float]]) -> None:
        self.times = [t for t, _ in steps]
        self.levels = [p for _, p in steps]

    def power(self, t: int, r: float) -> float:
        i = bisect_right(self.times, t) - 1
        return self.levels[max(i, 0)] * (0.96 + 0.08 * r)


@dataclass(slots=True)
class Cycler:
    """A thermostat-driven compressor or heater cycling on and off all day."""

    watts: float
    period_s: float
    duty: float
    pf: float
    next_on: int = 0

    def acts_until(self, rng: random.Random, until: int) -> list[Act]:
        out: list[Act] = []
        while self.next_on < until:
            period = self.period_s * rng.uniform(0.85, 1.15)
            on = int(period * self.duty * rng.uniform(0.9, 1.1))
            out.append(Act(self.next_on, self.next_on + on, self.watts, self.pf, 0.03))
            self.next_on += int(period)
        return out


@dataclass(slots=True)
class Equipment:
    base_w: float
    cyclers: list[Cycler] = field(default_factory=list)
    water_heater_w: float | None = None
    wh_next_maint: int = 0
    wh_left_on_when_away: bool = True
    induction_w: float | None = None
    rice_w: float | None = None
    kettle_w: float | None = None
    microwave_w: float | None = None
    hood_w: float | None = None
    tv_w: float | None = None
    tv_daytime: bool = False
    room_light_w: float = 20.0
    living_light_w: float = 40.0
    heater_w: float | None = None
    heater_prop: float = 0.0
    ac_w: float | None = None
    ac_prop: float = 0.0
    blanket_w: float | None = None
    dehumid_w: float | None = None
    dehumid_prop: float = 0.0
    washer: bool = True
    washer_heats: bool = False
    washes_per_day: float = 0.5
    evening_kettle_p: float = 0.3


@dataclass(frozen=True, slots=True)
class Weather:
    """Daily mean temperature (°C) and humidity (0-1) of the compound (March, Yangtze delta)."""

    temp_c: tuple[float, ...]
    humid: tuple[float, ...]

    def cold(self, day: int) -> float:
        return min(1.0, max(0.0, (16.0 - self.temp_c[day]) / 9.0))


def make_weather(rng: random.Random, days: int) -> Weather:
    temps: list[float] = []
    humid: list[float] = []
    t = rng.uniform(7.0, 12.0)
    for d in range(days + 1):
        t = 0.7 * t + 0.3 * (9.5 + d * 0.2) + rng.gauss(0, 1.8)
        temps.append(round(t, 1))
        humid.append(min(1.0, max(0.0, rng.gauss(0.55, 0.25))))
    return Weather(tuple(temps), tuple(humid))


def _fridge(rng: random.Random, lo: float = 80.0, hi: float = 150.0) -> Cycler:
    return Cycler(
        rng.uniform(lo, hi),
        rng.uniform(20, 40) * MINUTE,
        rng.uniform(0.3, 0.4),
        rng.uniform(0.75, 0.9),
        rng.randrange(40 * MINUTE),
    )


def make_equipment(rng: random.Random, hh: Household) -> Equipment:
    kind = hh.kind
    if kind == VACANT:
        eq = Equipment(base_w=rng.uniform(0.5, 12.0), washer=False)
        if chance(rng, 0.15):
            eq.cyclers.append(_fridge(rng))
        return eq
    if kind == SHOP:
        spec = hh.shop
        assert spec is not None
        eq = Equipment(base_w=rng.uniform(30.0, 120.0), washer=False)
        for _ in range(spec.display_fridges):
            eq.cyclers.append(
                Cycler(
                    rng.uniform(150.0, 400.0),
                    rng.uniform(15, 30) * MINUTE,
                    rng.uniform(0.45, 0.6),
                    0.85,
                    rng.randrange(30 * MINUTE),
                )
            )
        if chance(rng, 0.6):
            eq.cyclers.append(_fridge(rng))
        eq.kettle_w = rng.uniform(1500.0, 2000.0)
        eq.microwave_w = rng.uniform(800.0, 1200.0) if chance(rng, 0.5) else None
        return eq
    tenants = kind in (GROUP_RENTAL, FLAT_SHARE)
    n = len(hh.persons)
    eq = Equipment(base_w=rng.uniform(10.0, 60.0) + (n * rng.uniform(2, 6) if tenants else 0.0))
    eq.cyclers.append(_fridge(rng))
    if chance(rng, 0.1):
        eq.cyclers.append(_fridge(rng, 60.0, 110.0))
    if tenants:
        for _ in range(sum(chance(rng, 0.25) for _ in range(n))):
            eq.cyclers.append(_fridge(rng, 55.0, 90.0))
    if chance(rng, 0.07):  # aquarium: pump on the base load, heater cycling
        eq.base_w += rng.uniform(8.0, 20.0)
        eq.cyclers.append(
            Cycler(
                rng.uniform(50.0, 100.0),
                rng.uniform(20, 40) * MINUTE,
                rng.uniform(0.3, 0.6),
                1.0,
                rng.randrange(30 * MINUTE),
            )
        )
    if chance(rng, 0.6 if not tenants else 0.8):
        eq.water_heater_w = rng.uniform(2000.0, 3000.0)
        eq.wh_next_maint = rng.randrange(6 * HOUR)
        eq.wh_left_on_when_away = chance(rng, 0.6)
    eq.induction_w = rng.uniform(1200.0, 2200.0) if chance(rng, 0.65) else None
    eq.rice_w = rng.uniform(500.0, 800.0) if chance(rng, 0.85) else None
    eq.kettle_w = rng.uniform(1500.0, 2000.0) if chance(rng, 0.8) else None
    eq.microwave_w = rng.uniform(800.0, 1200.0) if chance(rng, 0.5) else None
    eq.hood_w = rng.uniform(100.0, 200.0) if chance(rng, 0.7) else None
    eq.tv_w = rng.uniform(60.0, 200.0) if chance(rng, 0.85 if not tenants else 0.3) else None
    eq.tv_daytime = any(p.role in (RETIREE, HOMEBODY) for p in hh.persons)
    eq.room_light_w = rng.uniform(8.0, 40.0)
    eq.living_light_w = rng.uniform(20.0, 90.0)
    if chance(rng, 0.4):
        eq.heater_w = rng.choice([1000.0, 1200.0, 1600.0, 2000.0, 2200.0]) * rng.uniform(0.95, 1.03)
        eq.heater_prop = rng.uniform(0.3, 0.9)
    if chance(rng, 0.75):
        eq.ac_w = rng.uniform(1200.0, 2000.0)
        eq.ac_prop = rng.uniform(0.1, 0.5)
    eq.blanket_w = rng.uniform(60.0, 150.0) if chance(rng, 0.3) else None
    if chance(rng, 0.15):
        eq.dehumid_w = rng.uniform(200.0, 350.0)
        eq.dehumid_prop = rng.uniform(0.3, 0.9)
    eq.washer = chance(rng, 0.95)
    eq.washer_heats = chance(rng, 0.3)
    eq.washes_per_day = rng.uniform(0.8, 2.0) if kind == GROUP_RENTAL else rng.uniform(0.2, 0.8)
    eq.evening_kettle_p = rng.uniform(0.1, 0.6)
    return eq


# -- daily activations -------------------------------------------------------------------------


def _h(d0: int, hours: float) -> int:
    return d0 + int(hours * HOUR)


def _m(rng: random.Random, lo: float, hi: float) -> int:
    return int(rng.uniform(lo, hi) * MINUTE)


class _Acts:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.items: list[Act] = []

    def add(
        self,
        a: int,
        b: int,
        p: float,
        pf: float = 1.0,
        jit: float = 0.02,
        *,
        disc: bool = False,
        curve: Curve | None = None,
    ) -> None:
        if b > a and (p > 0 or curve is not None):
            self.items.append(Act(a, b, p, pf, jit, disc=disc, curve=curve))

    def cycling(
        self,
        a: int,
        b: int,
        p: float,
        on: tuple[float, float],
        off: tuple[float, float],
        *,
        pf: float = 1.0,
        disc: bool = False,
        off_w: float = 0.0,
    ) -> None:
        rng = self.rng
        t = a
        while t < b:
            e = min(b, t + _m(rng, *on))
            self.add(t, e, p, pf, 0.02, disc=disc)
            t2 = min(b, e + _m(rng, *off))
            if off_w:
                self.add(e, t2, off_w, 0.8, 0.05)
            t = t2


def _session_in(
    rng: random.Random, ivs: list[Interval], lo: int, hi: int, dur: int
) -> Interval | None:
    """A session starting at a random time of ``ivs`` in [lo, hi), cut at the interval's end."""
    s = random_point(rng, ivs, lo, hi)
    if s is None:
        return None
    iv = containing(ivs, s)
    assert iv is not None
    return (s, min(iv[1], s + dur))


def _cook(acts: _Acts, eq: Equipment, t: int, *, small: bool = False) -> None:
    rng = acts.rng
    total = 0
    if eq.rice_w and chance(rng, 0.75 if not small else 0.4):
        a = t - _m(rng, 5, 30)
        b = a + _m(rng, 25, 40)
        acts.add(a, b, eq.rice_w, 0.99, 0.03)
        if chance(rng, 0.7):
            acts.add(b, b + _m(rng, 30, 180), rng.uniform(30.0, 60.0), 0.95, 0.1)
    if eq.induction_w:
        x = t
        for _ in range(rng.choice([1, 2, 2, 3] if not small else [1, 1, 2])):
            d = _m(rng, 5, 20)
            acts.add(x, x + d, eq.induction_w * rng.uniform(0.6, 1.0), 0.95, 0.08)
            x += d + _m(rng, 0.5, 6)
        total = x - t
    else:
        total = _m(rng, 15, 45)  # a gas stove: only the hood shows
    if eq.hood_w:
        acts.add(t, t + total, eq.hood_w, 0.9, 0.03)
    if eq.microwave_w and chance(rng, 0.2):
        x = t + _m(rng, 0, 30)
        acts.add(x, x + _m(rng, 1, 4), eq.microwave_w, 0.95, 0.02)


def _laptop_curve(rng: random.Random, a: int, b: int, watts: float) -> StepCurve:
    cc_end = a + int((b - a) * rng.uniform(0.5, 0.8))
    steps = [(a, watts)]
    t = cc_end
    level = watts
    while t < b and level > 4.0:
        steps.append((t, level))
        level *= 0.8
        t += _m(rng, 3, 6)
    steps.append((t, rng.uniform(1.0, 4.0)))
    return StepCurve(steps)


def _heater_session(acts: _Acts, a: int, b: int, watts: float) -> None:
    rng = acts.rng
    if chance(rng, 0.35):
        acts.add(a, b, watts * rng.choice([0.5, 1.0]), 1.0, 0.01, disc=True)
    else:
        acts.cycling(a, b, watts, (8, 25), (4, 20), disc=True)


def residential_day(
    rng: random.Random,
    hh: Household,
    eq: Equipment,
    plan: DayPlan,
    day: int,
    *,
    weather: Weather,
    weekend: bool,
) -> list[Act]:
    d0 = day * DAY
    d1 = d0 + DAY
    acts = _Acts(rng)
    persons = hh.persons
    aw = plan.awake_home
    anyone = normalise([iv for ivs in aw for iv in ivs])
    cold = weather.cold(day)
    tenants = hh.kind in (GROUP_RENTAL, FLAT_SHARE)
    sunset = _h(d0, 17.8 + rng.uniform(-0.5, 0.4))
    sunrise = _h(d0, 6.2)

    # Lights.
    for i in range(len(persons)):
        if not tenants and not chance(rng, 0.6):
            continue
        for a, b in aw[i]:
            if b > sunset:
                acts.add(
                    max(a, sunset + _m(rng, 0, 25)), b + _m(rng, 0, 10), eq.room_light_w, 0.9, 0.01
                )
            if a < sunrise:
                acts.add(a, min(b, sunrise + _m(rng, 0, 30)), eq.room_light_w, 0.9, 0.01)
    for a, b in anyone:
        if b > sunset:
            acts.add(
                max(a, sunset + _m(rng, 0, 15)),
                b,
                eq.living_light_w * (0.5 if tenants else 1.0),
                0.9,
                0.01,
            )

    # TV.
    if eq.tv_w:
        for a, b in clip(anyone, _h(d0, 18.3), d1 + HOUR):
            if b - a > 30 * MINUTE and chance(rng, 0.75):
                s = a + _m(rng, 0, min(60.0, (b - a) / 180))
                acts.add(s, min(b, s + int(rng.uniform(1.0, 4.0) * HOUR)), eq.tv_w, 0.9, 0.08)
        if eq.tv_daytime:
            for lo, hi in ((9.0, 11.5), (14.0, 17.5)):
                if chance(rng, 0.5):
                    iv = _session_in(
                        rng, anyone, _h(d0, lo), _h(d0, hi), int(rng.uniform(0.7, 3.0) * HOUR)
                    )
                    if iv:
                        acts.add(iv[0], iv[1], eq.tv_w, 0.9, 0.08)

    # Personal devices: PCs (steady for hours, off abruptly), phones and laptops.
    for i, p in enumerate(persons):
        if p.role == CHILD:
            continue
        if p.pc_w:
            for lo, hi, pday in (
                (17.0, 27.0, 0.65),
                (9.0, 17.0, 0.5 if p.role == FLEXIBLE else 0.1),
            ):
                if not chance(rng, pday):
                    continue
                dur = rng.uniform(2.0, 7.0) if p.gamer else rng.uniform(0.5, 3.0)
                iv = _session_in(rng, aw[i], _h(d0, lo), _h(d0, hi), int(dur * HOUR))
                if iv:
                    end = iv[1]
                    if chance(rng, 0.05):  # left on all night
                        end = iv[0] + int(rng.uniform(7.0, 12.0) * HOUR)
                    acts.add(
                        iv[0], end, p.pc_w * rng.uniform(0.9, 1.1), 0.95, 0.12 if p.gamer else 0.05
                    )
        iv = _session_in(rng, aw[i], _h(d0, 18.0), _h(d0, 25.0), int(rng.uniform(1.0, 3.0) * HOUR))
        if iv:
            acts.add(iv[0], iv[1], rng.uniform(5.0, 20.0), 0.6, 0.1)  # phones
        if p.laptop_w and chance(rng, 0.5):
            # A laptop charging is CC-CV too, at a tenth of an e-bike's power: plateau, taper.
            iv = _session_in(
                rng, aw[i], _h(d0, 8.0), _h(d0, 24.0), int(rng.uniform(0.5, 1.5) * HOUR)
            )
            if iv:
                acts.add(
                    iv[0], iv[1], 1.0, 0.6, 0.0, curve=_laptop_curve(rng, iv[0], iv[1], p.laptop_w)
                )

    # Cooking.
    if not tenants:
        t = random_point(rng, anyone, _h(d0, 6.0), _h(d0, 8.8))
        if t is not None:
            if eq.kettle_w and chance(rng, 0.55):
                acts.add(t, t + _m(rng, 3, 5), eq.kettle_w, 1.0, 0.01, disc=True)
            if eq.microwave_w and chance(rng, 0.3):
                x = t + _m(rng, 4, 15)
                acts.add(x, x + _m(rng, 1, 4), eq.microwave_w, 0.95, 0.02)
        home_cook = not plan.away and (
            weekend or any(p.role in (RETIREE, HOMEBODY) for p in persons)
        )
        if home_cook and chance(rng, 0.75):
            t = random_point(rng, anyone, _h(d0, 11.0), _h(d0, 12.4))
            if t is not None:
                _cook(acts, eq, t, small=True)
        if chance(rng, 0.9 if len(persons) > 2 else 0.65):
            t = random_point(rng, anyone, _h(d0, 17.0), _h(d0, 19.8))
            if t is not None:
                _cook(acts, eq, t)
                if weekend and chance(rng, 0.2):  # guests for dinner (they rang, no swipe)
                    _cook(acts, eq, t + _m(rng, 20, 50), small=True)
                    acts.add(t, t + int(rng.uniform(2.0, 4.0) * HOUR), eq.living_light_w, 0.9, 0.01)
    else:
        for i, p in enumerate(persons):
            if chance(rng, p.cooks_own):
                t = random_point(rng, aw[i], _h(d0, 17.5), _h(d0, 24.5))
                if t is not None:
                    _cook(acts, eq, t, small=True)
            if eq.kettle_w and chance(rng, 0.3):
                t = random_point(rng, aw[i], _h(d0, 20.0), _h(d0, 25.0))
                if t is not None:
                    acts.add(t, t + _m(rng, 3, 5), eq.kettle_w, 1.0, 0.01, disc=True)
    if eq.kettle_w and chance(rng, eq.evening_kettle_p):
        t = random_point(rng, anyone, _h(d0, 19.0), _h(d0, 22.5))
        if t is not None:
            acts.add(t, t + _m(rng, 3, 5), eq.kettle_w, 1.0, 0.01, disc=True)

    # Showers: the storage water heater reheats; some people dry their hair.
    if eq.water_heater_w:
        reheat: list[Interval] = []
        for i, p in enumerate(persons):
            for lo, hi, pr in ((19.3, 25.5, 0.4 if p.role == CHILD else 0.7), (6.0, 8.5, 0.15)):
                if not chance(rng, pr):
                    continue
                t = random_point(rng, aw[i], _h(d0, lo), _h(d0, hi))
                if t is None:
                    continue
                s = t + _m(rng, 2, 8)
                reheat.append((s, s + _m(rng, 15, 35)))
                if p.hair_dryer and chance(rng, 0.35):
                    x = t + _m(rng, 15, 25)
                    acts.add(
                        x, x + _m(rng, 3, 8), rng.uniform(1200.0, 2000.0), 1.0, 0.03, disc=True
                    )
        for a, b in normalise(reheat):
            acts.add(a, b, eq.water_heater_w, 1.0, 0.01, disc=True)
        while eq.wh_next_maint < d1:
            m = eq.wh_next_maint
            if not plan.away or eq.wh_left_on_when_away:
                acts.add(m, m + _m(rng, 5, 12), eq.water_heater_w, 1.0, 0.01, disc=True)
            eq.wh_next_maint = m + int(rng.uniform(3.0, 7.0) * HOUR)

    # Heating on cold days.
    if eq.heater_w and chance(rng, eq.heater_prop * cold):
        iv = _session_in(rng, anyone, _h(d0, 18.3), _h(d0, 23.0), int(rng.uniform(1.5, 5.0) * HOUR))
        if iv:
            _heater_session(acts, iv[0], iv[1], eq.heater_w)
        if chance(rng, 0.3):
            iv = _session_in(rng, anyone, _h(d0, 6.2), _h(d0, 8.0), _m(rng, 30, 90))
            if iv:
                _heater_session(acts, iv[0], iv[1], eq.heater_w)
        if eq.tv_daytime and chance(rng, 0.5):
            iv = _session_in(
                rng, anyone, _h(d0, 9.0), _h(d0, 16.0), int(rng.uniform(1.0, 4.0) * HOUR)
            )
            if iv:
                _heater_session(acts, iv[0], iv[1], eq.heater_w)
    for i, p in enumerate(persons):
        if p.heater_w and chance(rng, 0.7 * cold):
            iv = _session_in(
                rng, aw[i], _h(d0, 19.0), _h(d0, 25.0), int(rng.uniform(1.5, 5.0) * HOUR)
            )
            if iv:
                _heater_session(acts, iv[0], iv[1], p.heater_w)
    if eq.ac_w and chance(rng, eq.ac_prop * cold):
        iv = _session_in(rng, anyone, _h(d0, 18.5), _h(d0, 22.5), int(rng.uniform(1.0, 4.0) * HOUR))
        if iv:
            steps = [(iv[0], rng.uniform(1200.0, eq.ac_w))]
            t = iv[0] + _m(rng, 8, 25)
            level = rng.uniform(400.0, 800.0)
            while t < iv[1]:
                steps.append((t, level))
                level = min(950.0, max(280.0, level + rng.gauss(0, 90)))
                t += _m(rng, 3, 8)
            acts.add(iv[0], iv[1], 1.0, 0.95, 0.0, disc=True, curve=StepCurve(steps))
    if eq.blanket_w and chance(rng, 0.85 * cold) and anyone:
        bed = max(b for _, b in anyone)
        if bed > _h(d0, 20.5):
            s = bed - _m(rng, 20, 60)
            high_end = s + _m(rng, 30, 90)
            acts.add(s, min(high_end, bed + _m(rng, 0, 20)), eq.blanket_w, 1.0, 0.02)
            if chance(rng, 0.45) and high_end < bed + 30 * MINUTE:
                acts.cycling(
                    max(high_end, bed),
                    bed + int(rng.uniform(5.0, 8.0) * HOUR),
                    eq.blanket_w * rng.uniform(0.6, 1.0),
                    (2, 6),
                    (4, 10),
                )
    if eq.dehumid_w and chance(rng, eq.dehumid_prop * weather.humid[day]):
        s = _h(d0, rng.uniform(8.0, 21.0))
        acts.cycling(
            s,
            s + int(rng.uniform(2.0, 8.0) * HOUR),
            eq.dehumid_w,
            (20, 45),
            (5, 15),
            pf=0.85,
            off_w=rng.uniform(25.0, 40.0),
        )

    # Washing machine.
    if eq.washer:
        for _ in range(sum(chance(rng, eq.washes_per_day / 3) for _ in range(3))):
            t = random_point(rng, anyone, _h(d0, 7.5), _h(d0, 22.0))
            if t is None:
                continue
            if eq.washer_heats and chance(rng, 0.5):
                d = _m(rng, 10, 15)
                acts.add(t, t + d, rng.uniform(1800.0, 2100.0), 1.0, 0.01, disc=True)
                t += d
            d = _m(rng, 30, 45)
            acts.add(t, t + d, rng.uniform(150.0, 350.0), 0.7, 0.3)
            t += d
            d = _m(rng, 12, 18)
            acts.add(t, t + d, rng.uniform(80.0, 150.0), 0.7, 0.3)
            t += d
            acts.add(t, t + _m(rng, 8, 12), rng.uniform(300.0, 500.0), 0.8, 0.15)
    return acts.items


def shop_day(
    rng: random.Random,
    hh: Household,
    eq: Equipment,
    plan: DayPlan,
    day: int,
    *,
    weather: Weather,
    weekday: int,
) -> list[Act]:
    spec = hh.shop
    assert spec is not None
    d0 = day * DAY
    acts = _Acts(rng)
    if weekday not in spec.closed_weekdays:
        a = _h(d0, spec.open_h)
        b = _h(d0, spec.close_h)
        acts.add(a - _m(rng, 0, 15), b + _m(rng, 0, 15), spec.lights_w, 0.9, 0.02)
        if weather.cold(day) > 0.2 or chance(rng, 0.3):
            acts.cycling(
                a + _m(rng, 0, 30),
                b,
                spec.hvac_w * rng.uniform(0.6, 1.0),
                (15, 40),
                (5, 20),
                pf=0.95,
                disc=True,
            )
        for _ in range(spec.pcs):
            acts.add(a + _m(rng, 0, 40), b - _m(rng, 0, 40), rng.uniform(60.0, 200.0), 0.9, 0.1)
        if eq.kettle_w:
            for _ in range(rng.randint(1, 3)):
                t = _h(d0, rng.uniform(spec.open_h, spec.close_h))
                acts.add(t, t + _m(rng, 3, 5), eq.kettle_w, 1.0, 0.01, disc=True)
        if eq.microwave_w and chance(rng, 0.6):
            t = _h(d0, rng.uniform(11.5, 12.8))
            acts.add(t, t + _m(rng, 1, 4), eq.microwave_w, 0.95, 0.02)
    # Someone living in the back room.
    for i, p in enumerate(hh.persons):
        if p.role != FLEXIBLE:
            continue
        for lo, hi in clip(plan.awake_home[i], _h(d0, 18.0), _h(d0, 25.0)):
            acts.add(lo, hi, rng.uniform(20.0, 60.0), 0.9, 0.02)
            if chance(rng, 0.6):
                acts.add(lo + _m(rng, 5, 40), hi, rng.uniform(60.0, 150.0), 0.9, 0.08)
    return acts.items


# -- the meter ---------------------------------------------------------------------------------


def voltage_shape(minute_of_day: int) -> float:
    """Relative grid voltage over a day: low at the evening peak, high before dawn."""
    h = minute_of_day / 60.0
    return (
        -math.exp(-(((h - 20.0) / 2.2) ** 2))
        - 0.5 * math.exp(-(((h - 11.5) / 1.8) ** 2))
        + 0.6 * math.exp(-(((h - 3.5) / 3.0) ** 2))
    )


@dataclass(slots=True)
class MeterStats:
    readings: int = 0
    missed: int = 0
    clamped: int = 0
    over_rating: int = 0


class MeterSim:
    """One flat's meter, polled every ``interval`` seconds at a fixed phase."""

    FULL = 0
    NO_CURRENT = 1
    POWER_ENERGY = 2

    def __init__(
        self,
        *,
        meter_id: str,
        rated_a: float,
        base_w: float,
        interval: int,
        phase: int,
        v_base: float,
        v_amp: float,
        r_line: float,
        energy0: float,
        fields: int,
        gaps: list[Interval],
        p_miss: float,
        rng: random.Random,
        vshape: list[float],
    ) -> None:
        self.meter_id = meter_id
        self.rated_a = rated_a
        self.base_w = base_w
        self.interval = interval
        self.phase = phase
        self.v_base = v_base
        self.v_amp = v_amp
        self.r_line = r_line
        self.energy = energy0
        self.fields = fields
        self.gaps = gaps
        self.p_miss = p_miss
        self.rng = rng
        self.vshape = vshape
        self.trips: list[Interval] = []
        """Breaker tripped: the flat draws nothing (the meter sits before the breaker)."""
        self.stats = MeterStats()
        self._pending: list[tuple[int, int, Act]] = []
        self._seq = 0
        self._active: list[Act] = []
        self._gap_i = 0
        self._trip_i = 0
        self._prefix = '{"type": "meter_reading", "ts": "'
        self._mid = f'", "meter_id": "{meter_id}", "power_w": '

    def push(self, acts: list[Act]) -> None:
        for a in acts:
            self._seq += 1
            heapq.heappush(self._pending, (a.start, self._seq, a))

    def readings(self, d0: int, d1: int, date: str, tod: list[str]) -> list[tuple[int, str]]:
        """Readings with ``d0 <= ts < d1`` (one day); ts text = ``date + tod[second of day]``."""
        out: list[tuple[int, str]] = []
        interval = self.interval
        k = -((self.phase - d0) // interval)
        t = self.phase + k * interval
        pending = self._pending
        active = self._active
        rnd = self.rng.random
        limit = self.rated_a * CLAMP_SHARE
        base_p = self.base_w
        base_s = base_p / 0.9
        gaps = self.gaps
        trips = self.trips
        stats = self.stats
        prefix = self._prefix + date
        mid = self._mid
        fields = self.fields
        vshape = self.vshape
        next_end = min((a.end for a in active), default=1 << 62)
        while t < d1:
            while pending and pending[0][0] <= t:
                act = heapq.heappop(pending)[2]
                if act.end > t:
                    active.append(act)
                    next_end = min(next_end, act.end)
            if t >= next_end:
                active = [a for a in active if a.end > t]
                next_end = min((a.end for a in active), default=1 << 62)
            # Power of every active appliance.
            p = base_p * (0.99 + 0.02 * rnd())
            s = base_s
            special = False
            fill: Act | None = None
            for a in active:
                c = a.curve
                pa = a.p * (1.0 + a.jit * (2.0 * rnd() - 1.0)) if c is None else c.power(t, rnd())
                if a.kind:
                    special = True
                    if a.kind == EXCURSION:
                        fill = a
                        continue
                p += pa
                s += pa * a.sf
            sec = t - d0
            v_grid = self.v_base + self.v_amp * vshape[sec // 60] + (rnd() - 0.5) * 0.8
            v = v_grid - self.r_line * s / v_grid
            current = s / v
            if fill is not None:
                target = self.rated_a * fill.p
                extra = max(1500.0, target * v - s)
                p += extra
                s += extra
                v = v_grid - self.r_line * s / v_grid
                current = s / v
            elif current > limit and not special:
                # Residents do not run everything at once: the heaviest switchable loads wait.
                stats.clamped += 1
                for a in sorted((a for a in active if a.disc), key=lambda a: -a.p):
                    if current <= limit:
                        break
                    p -= a.p
                    s -= a.p * a.sf
                    v = v_grid - self.r_line * s / v_grid
                    current = s / v
                if current > limit:
                    f = limit / current
                    p *= f
                    s *= f
                    current = s / v
            while self._trip_i < len(trips) and trips[self._trip_i][1] <= t:
                self._trip_i += 1
            if self._trip_i < len(trips) and trips[self._trip_i][0] <= t:
                p = 0.0
                s = 0.0
                current = 0.0
                v = v_grid
            if current > self.rated_a:
                stats.over_rating += 1
            self.energy += p * interval / 3_600_000.0
            while self._gap_i < len(gaps) and gaps[self._gap_i][1] <= t:
                self._gap_i += 1
            missing = (self._gap_i < len(gaps) and gaps[self._gap_i][0] <= t) or rnd() < self.p_miss
            if missing:
                stats.missed += 1
            else:
                stats.readings += 1
                energy = f'"energy_kwh": {self.energy:.2f}}}'
                if fields == MeterSim.FULL:
                    tail = f'{p:.1f}, "voltage_v": {v:.1f}, "current_a": {current:.2f}, {energy}'
                elif fields == MeterSim.NO_CURRENT:
                    tail = f'{p:.1f}, "voltage_v": {v:.1f}, {energy}'
                else:
                    tail = f"{p:.1f}, {energy}"
                out.append((t, prefix + tod[sec] + mid + tail))
            t += interval
        self._active = active
        return out
