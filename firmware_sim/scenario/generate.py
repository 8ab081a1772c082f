"""Put a compound together and stream its events to disk, with the truth labels.

Every flat is one stream (its swipes, its meter, its charging sensor if it has one), every
common-area sensor is another; each stream produces one day at a time in time order and
``heapq.merge`` interleaves them, so memory holds about one day of one flat per stream, not the
two million lines. Labels are collected while the streams run and written at the end.
"""

from __future__ import annotations

import heapq
import json
import random
import time as _time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from contract.site import Site
from firmware_sim.scenario._rng import chance, log_uniform, rng_for, weighted
from firmware_sim.scenario.ebike import (
    Battery,
    ChargeSession,
    PlugIn,
    make_battery,
    new_session,
    random_battery,
)
from firmware_sim.scenario.households import (
    CHILD,
    COMMUTER,
    COUPLE,
    ELDERLY,
    FAMILY,
    FLAT_SHARE,
    GROUP_RENTAL,
    LARGE_FAMILY,
    RIDER,
    SHOP,
    SINGLE,
    VACANT,
    CardMint,
    DayPlan,
    Household,
    is_group_rental_density,
    make_household,
    plan_day,
)
from firmware_sim.scenario.intervals import Interval, covered, overlaps
from firmware_sim.scenario.layout import Building, Unit, build_layout
from firmware_sim.scenario.loads import (
    EXCURSION,
    OVERLOAD,
    Act,
    Equipment,
    MeterSim,
    Weather,
    make_equipment,
    make_weather,
    residential_day,
    shop_day,
    voltage_shape,
)
from firmware_sim.scenario.outages import OutagePlan, in_gap, plan_outages
from firmware_sim.scenario.sensors import MIN_LABELLED_S, SensorSim
from firmware_sim.scenario.timebase import DAY, HOUR, MINUTE, Clock

GENERATOR = "firmware_sim.scenario/1"
SITE_TZ = "Asia/Shanghai"

EBIKE_CHARGING = "ebike_charging"
EBIKE_SUSPECTED = "ebike_charging_suspected"
OVERLOAD_KIND = "overload"
DATA_SILENCE = "data_silence"
KINDS = (EBIKE_CHARGING, EBIKE_SUSPECTED, OVERLOAD_KIND, DATA_SILENCE)


@dataclass(frozen=True, slots=True)
class ScenarioParams:
    seed: int
    flats: int = 120
    days: int = 14
    buildings: int = 4
    meter_interval_s: int = 60
    start: date = date(2026, 3, 1)

    def __post_init__(self) -> None:
        if self.flats < 1 or self.days < 1 or self.buildings < 1:
            raise ValueError("flats, days and buildings must be at least 1")
        if self.flats < self.buildings:
            raise ValueError("need at least one flat per building")
        if not 10 <= self.meter_interval_s <= 60:
            raise ValueError("meter interval must be 10-60 s")

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "flats": self.flats,
            "days": self.days,
            "buildings": self.buildings,
            "meter_interval_s": self.meter_interval_s,
            "start": self.start.isoformat(),
        }


@dataclass(slots=True)
class Summary:
    out_dir: Path
    flats: int
    events: int
    bytes: int
    labels: Counter[str]
    group_rentals: int
    seconds: float
    meter_clamped: int = 0

    def line(self) -> str:
        kinds = ", ".join(f"{k} {self.labels.get(k, 0)}" for k in KINDS)
        return (
            f"scenario -> {self.out_dir}: {self.flats} flats ({self.group_rentals} group rentals), "
            f"{self.events:,} events ({self.bytes / 1e6:.0f} MB) in {self.seconds:.1f}s; "
            f"labelled episodes: {kinds}"
        )


Stream = Iterator[tuple[int, int, str]]


# -- who lives where ---------------------------------------------------------------------------


def _assign_kinds(rng: random.Random, units: list[Unit]) -> dict[str, str]:
    n = len(units)
    kinds: dict[str, str] = {}
    free = list(units)

    def take(
        count: int, weight: dict[int, float], kind: str, pool: list[Unit] | None = None
    ) -> None:
        for _ in range(count):
            cands = [u for u in (pool if pool is not None else free) if u.unit_id not in kinds]
            opts = [(u, weight.get(u.rooms, 1.0)) for u in cands if weight.get(u.rooms, 1.0) > 0]
            if not opts:
                return
            u = weighted(rng, opts)
            kinds[u.unit_id] = kind

    ground = [u for u in units if u.floor == 1]
    small = n < 10
    take(
        min(len(ground), 0 if small else max(1, round(n * rng.uniform(0.015, 0.035)))),
        {},
        SHOP,
        ground,
    )
    take(
        max(1, round(n * rng.uniform(0.10, 0.15))), {1: 0.25, 2: 1.0, 3: 1.6, 4: 1.6}, GROUP_RENTAL
    )
    take(
        0 if small else max(1, round(n * rng.uniform(0.03, 0.06))),
        {1: 0.0, 2: 0.4, 3: 1.0, 4: 1.2},
        LARGE_FAMILY,
    )
    take(0 if small else max(1, round(n * rng.uniform(0.03, 0.06))), {}, VACANT)
    take(round(n * rng.uniform(0.03, 0.07)), {1: 0.0, 2: 1.0, 3: 1.2, 4: 1.0}, FLAT_SHARE)
    for u in units:
        if u.unit_id in kinds:
            continue
        if u.rooms == 1:
            kinds[u.unit_id] = weighted(rng, [(SINGLE, 0.5), (COUPLE, 0.3), (ELDERLY, 0.2)])
        else:
            kinds[u.unit_id] = weighted(
                rng, [(FAMILY, 0.45), (COUPLE, 0.2), (SINGLE, 0.1), (ELDERLY, 0.25)]
            )
    return kinds


def _batteries(rng: random.Random, hh: Household) -> list[Battery]:
    persons = hh.persons
    adults = [i for i, p in enumerate(persons) if p.role != CHILD]
    if not adults:
        return []
    out: list[Battery] = []
    if hh.kind == GROUP_RENTAL:
        if not chance(rng, 0.75):
            return []
        for i, p in enumerate(persons):
            # Many riders swap batteries at a cabinet (换电柜) instead of charging at home.
            if p.role == RIDER and chance(rng, 0.6):
                for _ in range(1 if chance(rng, 0.8) else 2):
                    out.append(make_battery(rng, i, rider=True, illegal_p=0.3))
            elif chance(rng, 0.15):
                out.append(make_battery(rng, i, rider=False, illegal_p=0.12))
        if not out:
            out.append(make_battery(rng, rng.choice(adults), rider=False, illegal_p=0.12))
        rng.shuffle(out)
        return out[: rng.randint(2, 5)]
    p_charge = {
        FAMILY: 0.22,
        LARGE_FAMILY: 0.3,
        COUPLE: 0.2,
        SINGLE: 0.2,
        FLAT_SHARE: 0.3,
        ELDERLY: 0.1,
        SHOP: 0.15,
    }.get(hh.kind, 0.0)
    if not chance(rng, p_charge):
        return []
    commuters = [i for i in adults if persons[i].role == COMMUTER] or adults
    for _ in range(1 if chance(rng, 0.75) else 2):
        owner = rng.choice(commuters)
        out.append(make_battery(rng, owner, rider=persons[owner].role == RIDER, illegal_p=0.08))
    return out


# -- one flat ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Overload:
    start: int
    end: int
    watts: float
    trip_s: int
    note: str


@dataclass(slots=True)
class FlatSim:
    seed: int
    clock: Clock
    weather: Weather
    hh: Household
    eq: Equipment
    batteries: list[Battery]
    meter: MeterSim
    readers: tuple[str, ...]
    reader_gaps: dict[str, list[Interval]]
    sensor: SensorSim | None
    sensor_long_gaps: list[Interval]
    meter_long_gaps: list[Interval]
    overloads: list[Overload] = field(default_factory=list)
    excursions: list[tuple[int, int, float]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unit_id(self) -> str:
        return self.hh.unit.unit_id

    def stream(self, index: int) -> Stream:
        rng_plan = rng_for(self.seed, "plan", self.unit_id)
        rng_load = rng_for(self.seed, "load", self.unit_id)
        rng_ebike = rng_for(self.seed, "ebike", self.unit_id)
        pending: list[tuple[int, int, str]] = []
        clock = self.clock
        tod = clock.tod
        swipe_head = '{"type": "card_swipe", "ts": "'
        for day in range(clock.days):
            d0 = day * DAY
            d1 = d0 + DAY
            date_s = clock.date_prefix(day)
            plan = plan_day(rng_plan, self.hh, day, clock)
            acts = self._acts(rng_load, plan, day)
            acts += self._charging(rng_ebike, plan, day)
            for ov in self.overloads:
                if d0 <= ov.start < d1:
                    acts.append(Act(ov.start, ov.end, ov.watts, 1.0, 0.015, kind=OVERLOAD))
                    if ov.trip_s:
                        self.meter.trips.append((ov.end, ov.end + ov.trip_s))
            for t, dur, ratio in self.excursions:
                if d0 <= t < d1:
                    acts.append(Act(t, t + dur, ratio, kind=EXCURSION))
            for cyc in self.eq.cyclers:
                acts += cyc.acts_until(rng_load, d1 + HOUR)
            self.meter.push(acts)
            out: list[tuple[int, str]] = self.meter.readings(d0, d1, date_s, tod)
            for t, door, card in plan.swipes:
                heapq.heappush(pending, (t, door, card))
            while pending and pending[0][0] < d1:
                t, door, card = heapq.heappop(pending)
                reader = self._reader(t, door)
                if reader is None or t >= clock.end_s:
                    continue
                tail = f'", "reader_id": "{reader}", "card": "{card}"}}'
                out.append((t, swipe_head + date_s + tod[t - d0] + tail))
            if self.sensor is not None:
                out += self.sensor.events_until(d0, d1, date_s, tod)
            out.sort()
            for t, line in out:
                yield t, index, line

    def _reader(self, t: int, door: int) -> str | None:
        readers = self.readers
        first = readers[door % len(readers)]
        if not in_gap(self.reader_gaps.get(first, []), t):
            return first
        for r in readers:
            if r != first and not in_gap(self.reader_gaps.get(r, []), t):
                return r  # that door's reader is dead: people use the other door
        return None

    def _acts(self, rng: random.Random, plan: DayPlan, day: int) -> list[Act]:
        hh = self.hh
        if hh.kind == VACANT:
            return []
        if hh.kind == SHOP:
            weekday = self.clock.weekday(day)
            return shop_day(rng, hh, self.eq, plan, day, weather=self.weather, weekday=weekday)
        weekend = self.clock.is_weekend(day)
        return residential_day(rng, hh, self.eq, plan, day, weather=self.weather, weekend=weekend)

    def _charging(self, rng: random.Random, plan: DayPlan, day: int) -> list[Act]:
        d0 = day * DAY
        d1 = d0 + DAY
        acts: list[Act] = []
        for bat in self.batteries:
            if bat.next_due >= day + 1:
                continue
            home = plan.home[bat.owner]
            arrivals = [a for a, b in home if d0 + 6 * HOUR <= a < d1 and b - a >= 20 * MINUTE]
            evening = [a for a in arrivals if a >= d0 + 16 * HOUR]
            daytime = [a for a in arrivals if a < d0 + 16 * HOUR]
            starts: list[int] = []
            if bat.twice_daily:
                if daytime and chance(rng, 0.7):
                    starts.append(daytime[-1])
                if evening:
                    starts.append(evening[-1])
            elif evening and chance(rng, 0.85):
                starts.append(evening[-1])
            elif daytime:
                starts.append(daytime[-1])
            if not arrivals:
                home_eve = [
                    (max(a, d0 + int(18.5 * HOUR)), min(b, d0 + int(23.5 * HOUR))) for a, b in home
                ]
                home_eve = [(a, b) for a, b in home_eve if b - a > 30 * MINUTE]
                if home_eve and chance(rng, 0.8):
                    a, b = rng.choice(home_eve)
                    starts.append(rng.randrange(a, b))
            if bat.forced_first and day == 0 and not starts:
                starts.append(d0 + int(rng.uniform(19.0, 22.5) * HOUR))
            made = 0
            for arrival in starts:
                start = arrival + int(log_uniform(rng, 2, 45) * MINUTE)
                if start < bat.busy_until + 10 * MINUTE or start >= self.clock.end_s:
                    continue
                person = self.hh.persons[bat.owner]
                leaves = [a for a, _ in person.outs if a > start]
                hold = min(leaves) if leaves and bat.twice_daily else None
                session = new_session(rng, bat, start, hold_until=hold)
                bat.busy_until = session.unplug
                acts.append(Act(session.start, session.unplug, 1.0, session.pf, 0.0, curve=session))
                self._label_session(session, bat)
                made += 1
            if made:
                bat.next_due = day + bat.interval_days * rng.uniform(0.8, 1.25)
                if bat.twice_daily and made == 1 and chance(rng, 0.5):
                    bat.next_due = min(bat.next_due, day + 0.99)
        # A charger plugged in and straight out again (not a session).
        if self.sensor is not None and chance(rng, 0.03):
            t = d0 + int(rng.uniform(8.0, 22.0) * HOUR)
            plug = PlugIn(t, t + rng.randint(15, 50), rng.uniform(80.0, 300.0))
            if self.sensor.add(plug):
                acts.append(Act(plug.start, plug.end, 1.0, 0.6, 0.0, curve=plug))
        return acts

    def _label_session(self, s: ChargeSession, bat: Battery) -> None:
        end_s = self.clock.end_s
        if s.start >= end_s:
            return
        end: int | None = s.end if s.end < end_s else None
        length = min(s.end, end_s) - s.start
        if covered(self.meter_long_gaps, s.start, s.start + length) <= length / 2:
            self.labels.append(
                {
                    "kind": EBIKE_SUSPECTED,
                    "unit_id": self.unit_id,
                    "meter_id": self.meter.meter_id,
                    "start": s.start,
                    "end": end,
                    "chemistry": s.chemistry,
                    "power_w": round(s.plateau_w),
                    "battery": bat.describe(),
                    "unplugged_early": s.unplugged_early,
                    "power_factor": round(s.pf, 2),
                }
            )
        if bat.on_sensor and self.sensor is not None and self.sensor.add(s):
            visible = length - covered(self.sensor.gaps, s.start, s.start + length)
            if (
                length >= MIN_LABELLED_S
                and visible >= MIN_LABELLED_S
                and (covered(self.sensor_long_gaps, s.start, s.start + length) <= length / 2)
            ):
                self.labels.append(
                    {
                        "kind": EBIKE_CHARGING,
                        "sensor_id": self.sensor.sensor_id,
                        "unit_id": self.unit_id,
                        "start": s.start,
                        "end": end,
                        "location": "unit",
                        "power_w": round(s.plateau_w),
                    }
                )

    def plan_overloads(self, rng: random.Random) -> None:
        hh = self.hh
        unit = hh.unit
        clock = self.clock
        rated = unit.rated_current_a
        n = len(hh.persons)
        if hh.kind == GROUP_RENTAL:
            p, count = (
                (0.35 if rated * 240 * 1.35 <= (n + 3) * 2000 else 0.0),
                rng.choice([1, 1, 2]),
            )
        elif hh.kind in (FAMILY, LARGE_FAMILY, COUPLE, ELDERLY, SHOP) and rated <= 32:
            p, count = 0.07, 1
        else:
            p, count = 0.0, 0
        if chance(rng, p):
            for _ in range(count):
                for _attempt in range(20):
                    day = rng.randrange(clock.days)
                    morning = chance(rng, 0.25)
                    hour = rng.uniform(6.3, 7.8) if morning else rng.uniform(18.3, 22.0)
                    start = day * DAY + int(hour * HOUR)
                    dur = int(rng.uniform(7.0, 90.0) * MINUTE)
                    end = start + dur
                    busy = [(o.start - 2 * HOUR, o.end + 2 * HOUR) for o in self.overloads]
                    if end >= clock.end_s or overlaps(
                        self.meter_long_gaps, start - HOUR, end + HOUR
                    ):
                        continue
                    if overlaps(hh.trips, start - DAY, end + DAY) or overlaps(busy, start, end):
                        continue
                    ratio = rng.uniform(1.06, 1.35)
                    watts = rated * ratio * 242.0
                    heaters = max(1, round((watts - 4000) / 1800))
                    trip = int(rng.uniform(3, 30) * MINUTE) if chance(rng, 0.25) else 0
                    note = f"{heaters} heaters + water heater + cooking ({watts / 1000:.1f} kW)"
                    self.overloads.append(Overload(start, end, watts, trip, note))
                    self.labels.append(
                        {
                            "kind": OVERLOAD_KIND,
                            "unit_id": unit.unit_id,
                            "meter_id": self.meter.meter_id,
                            "start": start,
                            "end": end,
                            "rated_current_a": rated,
                            "current_a": round(watts / 230.0, 1),
                            "note": note + ("; breaker tripped" if trip else ""),
                        }
                    )
                    break
        # Short harmless excursions (kettle + microwave + hair dryer on top of the rest).
        if hh.kind != VACANT and rated <= 40 and chance(rng, 0.25):
            for _ in range(rng.randint(1, 3)):
                day = rng.randrange(clock.days)
                t = day * DAY + int(rng.uniform(6.5, 22.5) * HOUR)
                busy = [(o.start - HOUR, o.end + o.trip_s + HOUR) for o in self.overloads]
                if not overlaps(busy, t, t + 120):
                    self.excursions.append((t, rng.randint(20, 95), rng.uniform(1.03, 1.3)))
        self.overloads.sort(key=lambda o: o.start)
        self.excursions.sort()


# -- common-area charging sensors --------------------------------------------------------------


@dataclass(slots=True)
class CommonSensor:
    sim: SensorSim
    location: str
    building: str
    labels: list[dict[str, Any]] = field(default_factory=list)

    def plan(self, rng: random.Random, clock: Clock, long_gaps: list[Interval]) -> None:
        shed = self.location == "bike_shed"
        rate = (
            rng.uniform(1.0, 2.5) if shed else (0.0 if chance(rng, 0.25) else rng.uniform(0.1, 0.7))
        )
        for day in range(clock.days):
            d0 = day * DAY
            n = sum(chance(rng, rate / 3) for _ in range(3)) if shed else int(chance(rng, rate))
            times = sorted(d0 + int(rng.uniform(7.0, 23.0) * HOUR) for _ in range(n))
            if not shed and n:
                times = [
                    d0
                    + int(
                        (rng.uniform(18.0, 23.8) if chance(rng, 0.7) else rng.uniform(8.0, 17.0))
                        * HOUR
                    )
                ]
            for t in times:
                bat = random_battery(rng)
                s = new_session(rng, bat, t)
                if not self.sim.add(s) or shed or s.start >= clock.end_s:
                    continue
                length = min(s.end, clock.end_s) - s.start
                visible = length - covered(self.sim.gaps, s.start, s.start + length)
                if (
                    visible >= MIN_LABELLED_S
                    and covered(long_gaps, s.start, s.start + length) <= length / 2
                ):
                    self.labels.append(
                        {
                            "kind": EBIKE_CHARGING,
                            "sensor_id": self.sim.sensor_id,
                            "building": self.building,
                            "start": s.start,
                            "end": s.end if s.end < clock.end_s else None,
                            "location": self.location,
                            "power_w": round(s.plateau_w),
                        }
                    )
            if chance(rng, 0.06):
                t = d0 + int(rng.uniform(7.0, 23.0) * HOUR)
                self.sim.add(PlugIn(t, t + rng.randint(15, 50), rng.uniform(80.0, 300.0)))

    def stream(self, index: int, clock: Clock) -> Stream:
        for day in range(clock.days):
            d0 = day * DAY
            for t, line in self.sim.events_until(d0, d0 + DAY, clock.date_prefix(day), clock.tod):
                yield t, index, line


# -- unknown event types -----------------------------------------------------------------------


def _unknown_events(
    rng: random.Random, clock: Clock, buildings: list[Building], plan: OutagePlan, meters: list[str]
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    n = max(3, len(meters) // 4 * clock.days // 7)
    for _ in range(n):
        t = rng.randrange(clock.end_s)
        kind = weighted(rng, [("door_alarm", 0.4), ("meter_event", 0.3), ("gateway_status", 0.3)])
        obj: dict[str, Any]
        if kind == "door_alarm":
            reader = rng.choice([r for b in buildings for r in b.readers])
            if in_gap(plan.of(reader), t):
                continue
            obj = {
                "type": kind,
                "ts": clock.iso(t),
                "reader_id": reader,
                "alarm": rng.choice(["held_open", "forced_open", "tamper"]),
            }
        elif kind == "meter_event":
            meter = rng.choice(meters)
            if in_gap(plan.of(meter), t):
                continue
            obj = {
                "type": kind,
                "ts": clock.iso(t),
                "meter_id": meter,
                "event": rng.choice(["cover_opened", "power_restored", "clock_adjusted"]),
            }
        else:
            b = rng.choice(buildings)
            obj = {
                "type": kind,
                "ts": clock.iso(t),
                "gateway_id": f"gw-b{b.name}",
                "uptime_s": rng.randrange(60, 30 * DAY),
                "cpu_temp_c": round(rng.uniform(38, 71), 1),
            }
        out.append((t, json.dumps(obj, ensure_ascii=False)))
    out.sort()
    return out


def _list_stream(items: list[tuple[int, str]], index: int) -> Stream:
    for t, line in items:
        yield t, index, line


# -- the whole compound ------------------------------------------------------------------------


def _sensor_id(rng: random.Random, used: set[str]) -> str:
    while True:
        sid = (
            "ble-"
            + rng.choice(["a4c138", "38e3b4", "7cd9f4", "c0e2d1", "5c0272"])
            + f"{rng.randrange(1 << 24):06x}"
        )
        if sid not in used:
            used.add(sid)
            return sid


def generate(params: ScenarioParams, out_dir: Path) -> Summary:
    """Write ``site.json``, ``events.jsonl`` and ``truth.json`` into ``out_dir``."""
    started = _time.perf_counter()
    seed = params.seed
    clock = Clock(params.start, params.days)
    buildings = build_layout(rng_for(seed, "layout"), params.flats, params.buildings)
    units = [u for b in buildings for u in b.units]
    kinds = _assign_kinds(rng_for(seed, "kinds"), units)
    mint = CardMint(rng_for(seed, "cards"))
    households = [
        make_household(rng_for(seed, "household", u.unit_id), u, kinds[u.unit_id], mint, clock)
        for u in units
    ]
    weather = make_weather(rng_for(seed, "weather"), params.days)
    equipment = [
        make_equipment(rng_for(seed, "equipment", hh.unit.unit_id), hh) for hh in households
    ]
    batteries = [_batteries(rng_for(seed, "batteries", hh.unit.unit_id), hh) for hh in households]

    # Charging sensors: some flats, common areas, the bike shed.
    srng = rng_for(seed, "sensors")
    used_ids: set[str] = set()
    charging = [i for i, b in enumerate(batteries) if b and households[i].kind != VACANT]
    if not charging:
        cands = [
            i for i, hh in enumerate(households) if hh.kind not in (VACANT, SHOP) and hh.persons
        ]
        i = srng.choice(cands)
        owner = srng.randrange(len(households[i].persons))
        batteries[i] = [make_battery(srng, owner, rider=False, illegal_p=0.0)]
        charging = [i]
    forced = srng.choice(charging)
    hh_f = households[forced]
    hh_f.trips.clear()
    for p in hh_f.persons:
        p.trips.clear()
    batteries[forced][0].forced_first = True
    batteries[forced][0].next_due = 0.0
    batteries[forced][0].on_sensor = True
    n_unit_sensors = max(1, round(len(units) * srng.uniform(0.06, 0.12)))
    others = [i for i, hh in enumerate(households) if i != forced and hh.kind != VACANT]
    sensor_flats = sorted({forced, *srng.sample(others, min(len(others), n_unit_sensors - 1))})
    for i in sensor_flats:
        if batteries[i]:
            batteries[i][0].on_sensor = True
    unit_sensor_id = {i: _sensor_id(srng, used_ids) for i in sensor_flats}
    common: list[tuple[str, str, str]] = []  # (sensor id, location, building)
    for b in buildings:
        for _ in range(weighted(srng, [(0, 0.15), (1, 0.6), (2, 0.25)])):
            loc = weighted(srng, [("stairwell", 0.5), ("corridor", 0.25), ("lobby", 0.25)])
            common.append((_sensor_id(srng, used_ids), loc, b.name))
    if not common:
        common.append((_sensor_id(srng, used_ids), "stairwell", srng.choice(buildings).name))
    for _ in range(1 if chance(srng, 0.7) else 2):
        common.append((_sensor_id(srng, used_ids), "bike_shed", srng.choice(buildings).name))

    meters = [(f"m-{u.unit_id}", u.building) for u in units]
    sensors_b = [(unit_sensor_id[i], households[i].unit.building) for i in sensor_flats]
    sensors_b += [(sid, bname) for sid, _, bname in common]
    protected = frozenset({f"m-{hh_f.unit.unit_id}", unit_sensor_id[forced]})
    outages = plan_outages(
        rng_for(seed, "outages"),
        days=params.days,
        buildings=buildings,
        meters=meters,
        sensors=sensors_b,
        protected=protected,
    )
    reader_gaps = {r: outages.of(r) for b in buildings for r in b.readers}

    # Per-building grid voltage.
    vrng = rng_for(seed, "voltage")
    vshape = [voltage_shape(m) for m in range(1440)]
    vparams = {b.name: (vrng.uniform(224.0, 233.0), vrng.uniform(2.0, 5.0)) for b in buildings}
    readers_of = {b.name: b.readers for b in buildings}

    flats: list[FlatSim] = []
    for i, hh in enumerate(households):
        u = hh.unit
        mrng = rng_for(seed, "meter", u.unit_id)
        meter_id = f"m-{u.unit_id}"
        interval = params.meter_interval_s
        v_base, v_amp = vparams[u.building]
        meter = MeterSim(
            meter_id=meter_id,
            rated_a=u.rated_current_a,
            base_w=equipment[i].base_w,
            interval=interval,
            phase=mrng.randrange(interval),
            v_base=v_base + mrng.uniform(-1.5, 1.5),
            v_amp=v_amp,
            r_line=mrng.uniform(0.03, 0.12),
            energy0=round(log_uniform(mrng, 300.0, 25000.0), 2),
            fields=weighted(
                mrng,
                [(MeterSim.FULL, 0.9), (MeterSim.NO_CURRENT, 0.06), (MeterSim.POWER_ENERGY, 0.04)],
            ),
            gaps=outages.of(meter_id),
            p_miss=mrng.uniform(0.001, 0.01),
            rng=mrng,
            vshape=vshape,
        )
        sensor = None
        if i in unit_sensor_id:
            sid = unit_sensor_id[i]
            sensor = SensorSim(sid, rng_for(seed, "sensor", sid), outages.of(sid))
        flat = FlatSim(
            seed=seed,
            clock=clock,
            weather=weather,
            hh=hh,
            eq=equipment[i],
            batteries=batteries[i],
            meter=meter,
            readers=readers_of[u.building],
            reader_gaps=reader_gaps,
            sensor=sensor,
            sensor_long_gaps=outages.long_of(sensor.sensor_id) if sensor else [],
            meter_long_gaps=outages.long_of(meter_id),
        )
        flat.plan_overloads(rng_for(seed, "overload", u.unit_id))
        flats.append(flat)

    commons: list[CommonSensor] = []
    for sid, loc, bname in common:
        cs = CommonSensor(SensorSim(sid, rng_for(seed, "sensor", sid), outages.of(sid)), loc, bname)
        cs.plan(rng_for(seed, "common-sessions", sid), clock, outages.long_of(sid))
        commons.append(cs)

    site = _site_json(households, buildings, sensor_flats, unit_sensor_id, common)
    Site.model_validate(site)
    unknown = _unknown_events(
        rng_for(seed, "unknown"), clock, buildings, outages, [m for m, _ in meters]
    )

    # Stream everything to disk.
    out_dir.mkdir(parents=True, exist_ok=True)
    streams: list[Stream] = [f.stream(k) for k, f in enumerate(flats)]
    streams += [cs.stream(len(flats) + k, clock) for k, cs in enumerate(commons)]
    streams.append(_list_stream(unknown, len(streams)))
    events = 0
    size = 0
    with (out_dir / "events.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        buf: list[str] = []
        for _t, _k, line in heapq.merge(*streams):
            buf.append(line)
            if len(buf) >= 20_000:
                chunk = "\n".join(buf) + "\n"
                f.write(chunk)
                size += len(chunk)
                events += len(buf)
                buf.clear()
        if buf:
            chunk = "\n".join(buf) + "\n"
            f.write(chunk)
            size += len(chunk)
            events += len(buf)
    (out_dir / "site.json").write_text(
        json.dumps(site, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )

    truth = _truth(
        params,
        clock,
        households=households,
        batteries=batteries,
        flats=flats,
        commons=commons,
        outages=outages,
    )
    (out_dir / "truth.json").write_text(
        json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    labels: Counter[str] = Counter(e["kind"] for e in truth["episodes"])
    return Summary(
        out_dir=out_dir,
        flats=len(units),
        events=events,
        bytes=size,
        labels=labels,
        group_rentals=len(truth["group_rental_units"]),
        seconds=_time.perf_counter() - started,
        meter_clamped=sum(f.meter.stats.clamped for f in flats),
    )


def _site_json(
    households: list[Household],
    buildings: list[Building],
    sensor_flats: list[int],
    unit_sensor_id: dict[int, str],
    common: list[tuple[str, str, str]],
) -> dict[str, Any]:
    units_j: list[dict[str, Any]] = []
    cards_j: list[dict[str, str]] = []
    for hh in households:
        u = hh.unit
        entry: dict[str, Any] = {
            "unit_id": u.unit_id,
            "building": u.building,
            "floor_area_m2": u.area_m2,
        }
        if hh.listed_rooms is not None:
            entry["rooms"] = hh.listed_rooms
        if hh.registered_occupants is not None:
            entry["registered_occupants"] = hh.registered_occupants
        entry["rated_current_a"] = u.rated_current_a
        units_j.append(entry)
        numbers = sorted(
            [c.number for c in hh.cards if c.registered] + [c.number for c in hh.stale_cards]
        )
        cards_j += [{"card": n, "unit_id": u.unit_id} for n in numbers]
    sensors_j: list[dict[str, str]] = [
        {"sensor_id": unit_sensor_id[i], "location": "unit", "unit_id": households[i].unit.unit_id}
        for i in sensor_flats
    ]
    sensors_j += [{"sensor_id": sid, "location": loc, "building": b} for sid, loc, b in common]
    sensors_j.sort(key=lambda s: s["sensor_id"])
    return {
        "site_id": "sim-compound",
        "timezone": SITE_TZ,
        "units": units_j,
        "cards": cards_j,
        "meters": [
            {"meter_id": f"m-{hh.unit.unit_id}", "unit_id": hh.unit.unit_id} for hh in households
        ],
        "sensors": sensors_j,
        "readers": [{"reader_id": r, "building": b.name} for b in buildings for r in b.readers],
    }


_SUBJECT_ORDER = ("sensor_id", "unit_id", "building", "meter_id", "reader_id")


def _truth(
    params: ScenarioParams,
    clock: Clock,
    *,
    households: list[Household],
    batteries: list[list[Battery]],
    flats: list[FlatSim],
    commons: list[CommonSensor],
    outages: OutagePlan,
) -> dict[str, Any]:
    episodes: list[dict[str, Any]] = []
    for f in flats:
        episodes += f.labels
    for cs in commons:
        episodes += cs.labels
    for s in outages.silences:
        episodes.append(
            {
                "kind": DATA_SILENCE,
                s.field: s.device,
                "start": s.start,
                "end": s.end,
                "note": s.note,
            }
        )

    def key(e: dict[str, Any]) -> tuple[int, str, str]:
        subject = "|".join(str(e.get(k, "")) for k in _SUBJECT_ORDER)
        return (e["start"], e["kind"], subject)

    episodes.sort(key=key)
    out_eps: list[dict[str, Any]] = []
    for episode in episodes:
        e = dict(episode)
        e["start"] = clock.iso(e["start"])
        e["end"] = clock.iso_or_none(e["end"])
        out_eps.append(e)
    house: dict[str, dict[str, Any]] = {}
    for hh, bats in zip(households, batteries, strict=True):
        u = hh.unit
        if hh.kind == GROUP_RENTAL:
            assert is_group_rental_density(hh.occupants, u.rooms, u.area_m2), u.unit_id
        house[u.unit_id] = {
            "type": hh.kind,
            "occupants": hh.occupants,
            "cards": len(hh.cards),
            "note": hh.note,
            "registered_cards": sum(c.registered for c in hh.cards),
            "unregistered_cards": sum(not c.registered for c in hh.cards),
            "shared_cards": sum(c.users > 1 for c in hh.cards),
            "rooms": u.rooms,
            "floor_area_m2": u.area_m2,
            "ebike_batteries": len(bats),
        }
    return {
        "seed": params.seed,
        "start": clock.iso(0),
        "end": clock.iso(clock.end_s),
        "generator": GENERATOR,
        "params": params.as_json(),
        "group_rental_units": sorted(
            hh.unit.unit_id for hh in households if hh.kind == GROUP_RENTAL
        ),
        "households": house,
        "episodes": out_eps,
    }
