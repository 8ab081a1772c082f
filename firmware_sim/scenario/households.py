"""Who lives in each flat, which cards they carry, and when they come and go.

A household is a list of people. Each person has a role (commuter, retiree, child, night-shift
worker, delivery rider, ...) with personal habits drawn once (usual departure and return hours,
how often they tailgate instead of swiping, whether they come home for lunch), and a card or
none. Every day each person gets outings ``(leave, return)``; a return through the building's
entrance is an entry, and an entry is a swipe unless the person tailgates (10-40 % of entries,
per person) or has no card. Families go out together at weekends (one swipe for the group).
Households travel for days (no swipes, only the fridge on the meter).

Group rentals (群租) are modelled as unrelated tenants on mixed shifts, with one of several card
set-ups seen in the field: every tenant's card registered by the landlord, a few cards shared by
all tenants, copied (unregistered) cards, or a mix. Their registered occupant count is what was
reported to the police: usually low, often missing.

Whether a flat is a group rental follows the regulations in ``shared/domain.md``: unrelated
tenants with more than 2 persons per room, under 5 m² per person, or 10 or more residents.
Families are never group rentals, however crowded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from firmware_sim.scenario._rng import chance, clamp, gauss_clamped, weighted
from firmware_sim.scenario.intervals import Interval, complement, intersect, normalise
from firmware_sim.scenario.layout import Unit
from firmware_sim.scenario.timebase import DAY, HOUR, MINUTE, Clock

# Household kinds (truth.json ``households[*].type``).
FAMILY = "family"
COUPLE = "couple"
SINGLE = "single"
ELDERLY = "elderly"
LARGE_FAMILY = "large_family"
FLAT_SHARE = "flat_share"
GROUP_RENTAL = "group_rental"
SHOP = "shop"
VACANT = "vacant"

# Person roles.
COMMUTER = "commuter"
HOMEBODY = "homebody"
RETIREE = "retiree"
CHILD = "child"
TEEN = "teen"
NIGHT_SHIFT = "night_shift"
RIDER = "rider"
SHIFT_WORKER = "shift_worker"
FLEXIBLE = "flexible"
SHOP_STAFF = "shop_staff"

ADULT_ROLES = frozenset({COMMUTER, HOMEBODY, RETIREE, NIGHT_SHIFT, RIDER, SHIFT_WORKER, FLEXIBLE})


def is_group_rental_density(occupants: int, rooms: int, area_m2: float) -> bool:
    """Above the legal density: > 2 persons per room, < 5 m² per person, or 10+ residents."""
    return occupants > 2 * rooms or area_m2 / occupants < 5.0 or occupants >= 10


@dataclass(slots=True)
class Card:
    number: str
    registered: bool
    users: int = 0


@dataclass(slots=True)
class Person:
    role: str
    card: Card | None
    tailgate: float
    leave_h: float
    return_h: float
    wake_h: float
    bed_h: float
    work_days: tuple[bool, ...]
    p_lunch_home: float = 0.05
    p_evening_out: float = 0.2
    p_late: float = 0.1
    p_stay_home: float = 0.3
    shift_phase: int = 0
    errand_rate: float = 0.0
    """Short trips out and back a day: rubbish, a parcel, the shop downstairs."""
    late_night_p: float = 0.02
    """Chance of coming home after midnight."""
    grandparent: bool = False
    trips: list[Interval] = field(default_factory=list)
    busy_until: int = 0
    outs: list[Interval] = field(default_factory=list)
    """Outings planned so far that end after the current day's start."""
    # Devices that belong to this person (watts, or None).
    pc_w: float | None = None
    laptop_w: float | None = None
    gamer: bool = False
    heater_w: float | None = None
    cooks_own: float = 0.0
    hair_dryer: bool = False


@dataclass(slots=True)
class ShopSpec:
    office: bool
    open_h: float
    close_h: float
    closed_weekdays: tuple[int, ...]
    display_fridges: int
    lights_w: float
    hvac_w: float
    pcs: int


@dataclass(slots=True)
class Household:
    unit: Unit
    kind: str
    persons: list[Person]
    cards: list[Card]
    """Distinct cards in use (registered or not)."""
    stale_cards: list[Card]
    """Registered to the flat but never swiped (a former tenant's, a lost card)."""
    registered_occupants: int | None
    listed_rooms: int | None
    note: str
    door_pref: int
    door_p: float
    trips: list[Interval] = field(default_factory=list)
    joint_outing_p: float = 0.0
    shop: ShopSpec | None = None

    @property
    def occupants(self) -> int:
        return len(self.persons)

    @property
    def group_rental(self) -> bool:
        return self.kind == GROUP_RENTAL


@dataclass(slots=True)
class DayPlan:
    day: int
    home: list[list[Interval]]
    """Per person: at home within [day start, day end + 4 h)."""
    awake_home: list[list[Interval]]
    swipes: list[tuple[int, int, str]]
    """(time, door index, card number)."""
    away: bool
    """The whole household is away (travel) for most of the day."""


class CardMint:
    """Unique 10-digit card numbers (32-bit UIDs printed in decimal, as W34 readers send)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def new(self, registered: bool) -> Card:
        while True:
            number = str(self._rng.randrange(1_000_000_000, 4_294_967_295))
            if number not in self._used:
                self._used.add(number)
                return Card(number, registered)


# -- people ------------------------------------------------------------------------------------


def _work_days(rng: random.Random, six_day_p: float = 0.15) -> tuple[bool, ...]:
    if chance(rng, six_day_p):
        off = rng.randrange(7)
        return tuple(d != off for d in range(7))
    if chance(rng, 0.85):
        return (True, True, True, True, True, False, False)
    offs = rng.sample(range(7), 2)
    return tuple(d not in offs for d in range(7))


def make_person(
    rng: random.Random, role: str, card: Card | None, *, tenant: bool = False
) -> Person:
    tail = rng.uniform(0.1, 0.4)
    if role == COMMUTER:
        leave = gauss_clamped(rng, 7.9, 0.5, 6.4, 9.4)
        ret = gauss_clamped(rng, 18.4, 0.8, 16.6, 20.6)
        p = Person(
            role,
            card,
            tail,
            leave,
            ret,
            wake_h=leave - rng.uniform(0.5, 1.2),
            bed_h=rng.uniform(22.3, 24.8) + (0.8 if tenant else 0.0),
            work_days=_work_days(rng, 0.35 if tenant else 0.12),
            p_lunch_home=rng.choice([0.0, 0.0, 0.05, 0.3]),
            p_evening_out=rng.uniform(0.05, 0.4),
            p_late=rng.uniform(0.03, 0.25),
            p_stay_home=rng.uniform(0.15, 0.5),
        )
    elif role in (HOMEBODY, RETIREE):
        p = Person(
            role,
            card,
            tail,
            0.0,
            0.0,
            wake_h=rng.uniform(5.3, 7.3),
            bed_h=rng.uniform(21.0, 23.3),
            work_days=(False,) * 7,
            p_evening_out=rng.uniform(0.1, 0.5),
        )
    elif role == CHILD:
        p = Person(
            role,
            None,
            1.0,
            7.4,
            16.6,
            wake_h=6.7,
            bed_h=rng.uniform(20.5, 21.8),
            work_days=(True,) * 5 + (False,) * 2,
        )
    elif role == TEEN:
        p = Person(
            role,
            card,
            tail,
            gauss_clamped(rng, 6.9, 0.2, 6.4, 7.4),
            gauss_clamped(rng, 18.5, 1.2, 17.0, 21.3),
            wake_h=6.3,
            bed_h=rng.uniform(22.5, 24.0),
            work_days=(True,) * 5 + (False,) * 2,
            p_stay_home=0.4,
        )
    elif role == NIGHT_SHIFT:
        p = Person(
            role,
            card,
            tail,
            rng.uniform(18.6, 21.0),
            rng.uniform(6.6, 8.6),
            wake_h=rng.uniform(13.0, 15.0),
            bed_h=rng.uniform(23.0, 26.0),
            work_days=_work_days(rng, 0.5),
            p_stay_home=0.3,
        )
    elif role == RIDER:
        p = Person(
            role,
            card,
            tail,
            rng.uniform(8.3, 10.6),
            rng.uniform(20.8, 24.9),
            wake_h=rng.uniform(7.3, 9.3),
            bed_h=rng.uniform(24.5, 26.8),
            work_days=_work_days(rng, 0.8),
            p_lunch_home=rng.uniform(0.3, 0.8),
            p_stay_home=0.3,
        )
    elif role == SHIFT_WORKER:
        p = Person(
            role,
            card,
            tail,
            0.0,
            0.0,
            wake_h=0.0,
            bed_h=0.0,
            work_days=_work_days(rng, 0.3),
            shift_phase=rng.randrange(3),
            p_stay_home=0.3,
        )
    elif role == SHOP_STAFF:
        p = Person(role, card, tail, 0.0, 0.0, wake_h=7.0, bed_h=23.0, work_days=(True,) * 7)
    else:  # FLEXIBLE: working from home, between jobs, a student with few classes
        p = Person(
            role,
            card,
            tail,
            0.0,
            0.0,
            wake_h=rng.uniform(7.0, 10.0),
            bed_h=rng.uniform(23.0, 26.5),
            work_days=(False,) * 7,
            p_stay_home=rng.uniform(0.1, 0.5),
        )
    base_errands = {
        COMMUTER: 0.4,
        HOMEBODY: 0.8,
        RETIREE: 0.7,
        FLEXIBLE: 0.9,
        RIDER: 0.4,
        NIGHT_SHIFT: 0.5,
        SHIFT_WORKER: 0.5,
        TEEN: 0.3,
    }.get(role, 0.0)
    p.errand_rate = base_errands * rng.uniform(0.4, 1.8) + (
        rng.uniform(0.0, 0.6) if tenant else 0.0
    )
    p.late_night_p = rng.uniform(0.0, 0.1 if tenant else 0.04) if role != CHILD else 0.0
    # Personal devices.
    adult = role in ADULT_ROLES or role == TEEN
    if adult and chance(rng, 0.55 if tenant else 0.35):
        p.pc_w = rng.uniform(90.0, 300.0)
        p.gamer = chance(rng, 0.3 if tenant else 0.2)
    if adult and chance(rng, 0.45 if tenant else 0.3):
        p.laptop_w = rng.uniform(35.0, 90.0)
    if tenant:
        if chance(rng, 0.35):
            p.heater_w = rng.choice([800.0, 1000.0, 1200.0, 1500.0, 2000.0]) * rng.uniform(
                0.95, 1.03
            )
        p.cooks_own = rng.choice([0.0, 0.2, 0.4, 0.7])
    p.hair_dryer = adult and chance(rng, 0.45)
    return p


# -- households --------------------------------------------------------------------------------


def _registered_count(rng: random.Random, true_n: int) -> int | None:
    r = rng.random()
    if r < 0.14:
        return None
    if r < 0.3:
        return max(0, true_n + rng.choice([-2, -1, -1, 1]))
    return true_n


def _family_card(rng: random.Random, mint: CardMint, p_card: float, p_copied: float) -> Card | None:
    if not chance(rng, p_card):
        return None
    return mint.new(registered=not chance(rng, p_copied))


def make_household(
    rng: random.Random, unit: Unit, kind: str, mint: CardMint, clock: Clock
) -> Household:
    persons: list[Person] = []
    note = ""
    stale: list[Card] = []
    reg_occ: int | None
    listed_rooms: int | None = unit.rooms if chance(rng, 0.94) else None
    shop: ShopSpec | None = None
    p_copied = 0.04  # a copied card from a kiosk, never registered with the property office

    def adult(role: str, p_card: float = 0.93) -> Person:
        return make_person(rng, role, _family_card(rng, mint, p_card, p_copied))

    if kind == SINGLE:
        persons = [
            adult(
                weighted(
                    rng, [(COMMUTER, 0.6), (FLEXIBLE, 0.2), (NIGHT_SHIFT, 0.1), (SHIFT_WORKER, 0.1)]
                )
            )
        ]
        note = f"single {persons[0].role}"
    elif kind == COUPLE:
        persons = [
            adult(COMMUTER),
            adult(weighted(rng, [(COMMUTER, 0.7), (HOMEBODY, 0.15), (SHIFT_WORKER, 0.15)])),
        ]
        note = "couple"
    elif kind == ELDERLY:
        n = rng.choice([1, 2, 2])
        persons = [adult(RETIREE, 0.65) for _ in range(n)]
        note = f"{'retired couple' if n == 2 else 'elderly single'}"
    elif kind in (FAMILY, LARGE_FAMILY):
        persons = [
            adult(COMMUTER),
            adult(weighted(rng, [(COMMUTER, 0.75), (HOMEBODY, 0.15), (SHIFT_WORKER, 0.1)])),
        ]
        if kind == FAMILY:
            kids = rng.choice([1, 1, 2, 2, 3])
            grand = 1 if chance(rng, 0.25) else 0
        else:
            kids = rng.choice([1, 2, 2, 3])
            grand = rng.choice([1, 2, 2])
        n_adult_children = 0
        if kind == LARGE_FAMILY and chance(rng, 0.5):
            n_adult_children = rng.choice([1, 2])
        for _ in range(grand):
            g = adult(RETIREE, 0.55)
            g.grandparent = True
            persons.append(g)
        for _ in range(n_adult_children):
            persons.append(adult(weighted(rng, [(COMMUTER, 0.7), (FLEXIBLE, 0.3)])))
        for _ in range(kids):
            if chance(rng, 0.35):
                persons.append(make_person(rng, TEEN, _family_card(rng, mint, 0.5, p_copied)))
            else:
                persons.append(make_person(rng, CHILD, None))
        if kind == LARGE_FAMILY:
            while len(persons) < 6:
                persons.append(adult(weighted(rng, [(RETIREE, 0.5), (COMMUTER, 0.5)]), 0.6))
        note = (
            f"{'multi-generation ' if grand else ''}family of {len(persons)}: "
            f"{kids} children, {grand} grandparents"
        )
        # A couple sharing one card.
        if chance(rng, 0.15) and persons[0].card and persons[1].card:
            persons[1].card = persons[0].card
            note += ", parents share one card"
    elif kind == FLAT_SHARE:
        n = rng.randint(2, max(2, min(4, 2 * unit.rooms)))
        while n > 2 and unit.area_m2 / n < 8:
            n -= 1
        persons = [
            make_person(
                rng,
                weighted(rng, [(COMMUTER, 0.7), (FLEXIBLE, 0.2), (SHIFT_WORKER, 0.1)]),
                mint.new(registered=chance(rng, 0.85)),
                tenant=True,
            )
            for _ in range(n)
        ]
        note = f"{n} unrelated tenants within the legal density"
    elif kind == GROUP_RENTAL:
        persons, note = _group_rental(rng, unit, mint)
    elif kind == SHOP:
        shop = ShopSpec(
            office=chance(rng, 0.35),
            open_h=rng.uniform(7.5, 9.5),
            close_h=rng.uniform(18.0, 22.0),
            closed_weekdays=(),
            display_fridges=0,
            lights_w=rng.uniform(150.0, 700.0),
            hvac_w=rng.uniform(900.0, 2500.0),
            pcs=1,
        )
        if shop.office:
            shop.close_h = rng.uniform(17.5, 19.0)
            shop.closed_weekdays = (5, 6)
            shop.pcs = rng.randint(3, 8)
        else:
            shop.display_fridges = rng.randint(1, 3)
            shop.closed_weekdays = (rng.randrange(7),) if chance(rng, 0.4) else ()
        staff = rng.randint(1, 3)
        persons = [
            make_person(rng, SHOP_STAFF, mint.new(True) if chance(rng, 0.4) else None)
            for _ in range(staff)
        ]
        lives_in = chance(rng, 0.3)
        if lives_in:
            persons.append(make_person(rng, FLEXIBLE, mint.new(True) if chance(rng, 0.6) else None))
        note = (
            f"{'office' if shop.office else 'shop'} on the ground floor, {staff} staff"
            f"{', one person lives in' if lives_in else ''}"
        )
    elif kind == VACANT:
        persons = []
        note = "vacant for the whole period"
        if chance(rng, 0.5):
            stale = [mint.new(True) for _ in range(rng.randint(1, 3))]
    else:
        raise ValueError(f"unknown household kind {kind!r}")

    # Registered occupants (what the police register says).
    if kind == GROUP_RENTAL:
        reg_occ = None if chance(rng, 0.35) else min(len(persons) - 1, rng.randint(1, 3))
    elif kind == VACANT:
        reg_occ = None if chance(rng, 0.5) else rng.randint(0, 3)
    elif kind == SHOP:
        reg_occ = None if chance(rng, 0.5) else rng.randint(0, 1)
    elif kind == FLAT_SHARE:
        reg_occ = None if chance(rng, 0.3) else rng.randint(1, len(persons))
    else:
        reg_occ = _registered_count(rng, len(persons))

    cards: list[Card] = []
    for p in persons:
        if p.card is not None:
            p.card.users += 1
            if p.card.users == 1:
                cards.append(p.card)
    if kind not in (VACANT, GROUP_RENTAL) and chance(rng, 0.12):
        stale = [mint.new(True) for _ in range(rng.randint(1, 2))]
    elif kind == GROUP_RENTAL and chance(rng, 0.3):  # former tenants' cards, never cancelled
        stale = [mint.new(True) for _ in range(rng.randint(1, 3))]

    hh = Household(
        unit=unit,
        kind=kind,
        persons=persons,
        cards=cards,
        stale_cards=stale,
        registered_occupants=reg_occ,
        listed_rooms=listed_rooms,
        note=note,
        door_pref=0 if chance(rng, 0.7) else 1,
        door_p=rng.uniform(0.65, 0.95),
        joint_outing_p=rng.uniform(0.2, 0.6) if kind in (FAMILY, LARGE_FAMILY, COUPLE) else 0.0,
        shop=shop,
    )
    _plan_trips(rng, hh, clock)
    return hh


def _group_rental(rng: random.Random, unit: Unit, mint: CardMint) -> tuple[list[Person], str]:
    r = unit.rooms
    if chance(rng, 0.3):
        n = 2 * r + (1 if chance(rng, 0.7) else 2)
        sub = "slightly over the limit"
    else:
        n = round(clamp(math.exp(rng.gauss(math.log(9.0), 0.35)), 5, 20))
        sub = "partitioned"
    if not is_group_rental_density(n, r, unit.area_m2):
        n = 2 * r + 1
    roles = [
        weighted(
            rng,
            [
                (COMMUTER, 0.35),
                (NIGHT_SHIFT, 0.15),
                (RIDER, 0.2),
                (SHIFT_WORKER, 0.15),
                (FLEXIBLE, 0.15),
            ],
        )
        for _ in range(n)
    ]
    scheme = weighted(
        rng, [("registered_all", 0.3), ("shared", 0.3), ("unregistered", 0.25), ("mixed", 0.15)]
    )
    cards: list[Card | None] = []
    detail = ""
    if scheme == "registered_all":
        cards = [mint.new(True) for _ in range(n)]
        detail = f"landlord registered {n} cards"
    elif scheme == "unregistered":
        k = max(1, round(n * rng.uniform(0.3, 0.8)))
        cards = [mint.new(i >= k) for i in range(n)]
        rng.shuffle(cards)
        detail = f"{k} unregistered (copied) cards"
    else:
        k = max(1, round(n / rng.uniform(2.0, 4.0)))
        if scheme == "mixed":
            k = max(1, round(n / rng.uniform(3.0, 5.0)))
        shared = [mint.new(True) for _ in range(k)]
        cards = [shared[i % k] for i in range(n)]
        detail = f"{k} shared cards"
        if scheme == "mixed":
            u = rng.randint(1, min(3, n - 1))
            for i in rng.sample(range(n), u):
                cards[i] = mint.new(False)
            detail += f", {u} unregistered"
    # A few tenants with no card at all (always tailgate or use the intercom).
    for i in range(n):
        if chance(rng, 0.08):
            cards[i] = None
    persons = [make_person(rng, roles[i], cards[i], tenant=True) for i in range(n)]
    note = f"{n} tenants in {r} rooms ({sub}), {detail}"
    return persons, note


def _plan_trips(rng: random.Random, hh: Household, clock: Clock) -> None:
    days = clock.days
    if days < 4 or not hh.persons:
        return
    if hh.kind in (FAMILY, COUPLE, SINGLE, ELDERLY, LARGE_FAMILY) and chance(rng, 0.15):
        length = rng.randint(2, min(6, days - 2))
        first = rng.randint(1, days - length - 1)
        leave = first * DAY + int(rng.uniform(7.0, 11.0) * HOUR)
        ret = (first + length) * DAY + int(rng.uniform(14.0, 21.5) * HOUR)
        hh.trips.append((leave, ret))
        hh.note += f"; away {length} days"
        return
    for p in hh.persons:
        if p.role in (COMMUTER, RIDER, FLEXIBLE, SHIFT_WORKER) and chance(rng, 0.07):
            length = rng.randint(1, min(4, days - 2))
            first = rng.randint(1, days - length - 1)
            p.trips.append(
                (
                    first * DAY + int(rng.uniform(6.5, 10.0) * HOUR),
                    (first + length) * DAY + int(rng.uniform(15.0, 22.5) * HOUR),
                )
            )


# -- daily plans -------------------------------------------------------------------------------


def _poisson(rng: random.Random, lam: float) -> int:
    limit = math.exp(-lam)
    k = 0
    p = rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _h(day_start: int, hours: float) -> int:
    return day_start + int(hours * HOUR)


def _free_day(
    rng: random.Random, d0: int, p_stay: float, lo: float = 8.5, hi: float = 21.5
) -> list[Interval]:
    if chance(rng, p_stay):
        return []
    outs: list[Interval] = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        a = rng.uniform(lo, hi - 0.5)
        outs.append((_h(d0, a), _h(d0, min(hi + 1.5, a + rng.uniform(0.3, 4.0)))))
    return normalise(outs)


def _person_outings(
    rng: random.Random, p: Person, hh: Household, day: int, weekday: int
) -> tuple[list[Interval], list[Interval]]:
    """(outings, awake window) of one person for one day; outings may end the next day."""
    d0 = day * DAY
    role = p.role
    outs: list[Interval] = []
    awake = [(_h(d0, p.wake_h + rng.uniform(-0.3, 0.3)), _h(d0, p.bed_h + rng.uniform(-0.4, 0.4)))]
    works = p.work_days[weekday]
    if role == COMMUTER:
        if works and not chance(rng, 0.03):
            leave = _h(d0, p.leave_h + rng.gauss(0, 0.25))
            ret = _h(
                d0,
                p.return_h
                + rng.gauss(0, 0.5)
                + (rng.uniform(1, 3.2) if chance(rng, p.p_late) else 0),
            )
            if chance(rng, p.p_lunch_home):
                la, ll = _h(d0, rng.uniform(11.7, 12.3)), _h(d0, rng.uniform(12.8, 13.4))
                outs += [(leave, la), (ll, ret)]
            else:
                outs.append((leave, ret))
            if chance(rng, p.p_evening_out) and ret < _h(d0, 21.0):
                a = ret + int(rng.uniform(0.4, 1.5) * HOUR)
                outs.append((a, a + int(rng.uniform(0.4, 2.0) * HOUR)))
        else:
            outs = _free_day(rng, d0, p.p_stay_home)
    elif role in (HOMEBODY, RETIREE):
        if chance(rng, 0.75):
            x = rng.uniform(6.3, 9.2)
            outs.append((_h(d0, x), _h(d0, x + rng.uniform(0.4, 1.8))))
        if p.grandparent and weekday < 5 and chance(rng, 0.6):
            x = rng.uniform(15.4, 16.2)
            outs.append((_h(d0, x), _h(d0, x + rng.uniform(0.5, 1.1))))
        elif chance(rng, 0.45):
            x = rng.uniform(13.8, 16.5)
            outs.append((_h(d0, x), _h(d0, x + rng.uniform(0.6, 2.5))))
        if chance(rng, p.p_evening_out):
            x = rng.uniform(18.7, 20.3)
            outs.append((_h(d0, x), _h(d0, x + rng.uniform(0.4, 1.4))))
    elif role == CHILD:
        if works:
            outs.append((_h(d0, rng.uniform(7.1, 7.8)), _h(d0, rng.uniform(15.8, 17.6))))
    elif role == TEEN:
        if works:
            outs.append(
                (_h(d0, p.leave_h + rng.gauss(0, 0.1)), _h(d0, p.return_h + rng.gauss(0, 0.6)))
            )
        else:
            outs = _free_day(rng, d0, p.p_stay_home, 9.5, 21.0)
    elif role == NIGHT_SHIFT:
        if works:
            if chance(rng, 0.3):
                x = rng.uniform(13.5, 16.5)
                outs.append((_h(d0, x), _h(d0, x + rng.uniform(0.4, 1.5))))
            outs.append(
                (_h(d0, p.leave_h + rng.gauss(0, 0.2)), _h(d0, 24 + p.return_h + rng.gauss(0, 0.3)))
            )
            awake = [(_h(d0, p.wake_h + rng.uniform(-0.5, 0.5)), _h(d0, p.leave_h))]
        else:
            outs = _free_day(rng, d0, p.p_stay_home, 11.0, 23.0)
            awake = [(_h(d0, 11.0 + rng.uniform(-1, 1)), _h(d0, p.bed_h))]
    elif role == RIDER:
        if works:
            leave = _h(d0, p.leave_h + rng.gauss(0, 0.3))
            end = _h(d0, p.return_h + rng.gauss(0, 0.5))
            if chance(rng, p.p_lunch_home):
                b = _h(d0, rng.uniform(13.6, 15.2))
                outs += [(leave, b), (b + int(rng.uniform(0.5, 1.6) * HOUR), end)]
            else:
                outs.append((leave, end))
        else:
            outs = _free_day(rng, d0, p.p_stay_home, 10.0, 22.0)
    elif role == SHIFT_WORKER:
        shift = ((day + 7 * p.shift_phase) // 7) % 3
        if works:
            if shift == 0:
                outs.append((_h(d0, rng.uniform(5.1, 5.7)), _h(d0, rng.uniform(14.3, 15.6))))
                awake = [(_h(d0, 4.8), _h(d0, rng.uniform(21.5, 23.0)))]
            elif shift == 1:
                outs.append((_h(d0, rng.uniform(12.9, 13.4)), _h(d0, rng.uniform(22.3, 23.6))))
                awake = [(_h(d0, rng.uniform(8.5, 10.0)), _h(d0, rng.uniform(24.5, 25.8)))]
            else:
                outs.append((_h(d0, rng.uniform(21.1, 21.7)), _h(d0, 24 + rng.uniform(6.3, 7.6))))
                awake = [(_h(d0, rng.uniform(13.0, 15.0)), _h(d0, 21.2))]
        else:
            outs = _free_day(rng, d0, p.p_stay_home, 9.0, 22.0)
            awake = [(_h(d0, rng.uniform(7.5, 9.5)), _h(d0, rng.uniform(22.5, 24.5)))]
    elif role == SHOP_STAFF:
        spec = hh.shop
        if spec is not None:
            if weekday in spec.closed_weekdays:
                outs.append((d0, d0 + DAY))
            else:
                outs.append((d0, _h(d0, spec.open_h - rng.uniform(0.1, 0.4))))
                outs.append((_h(d0, spec.close_h + rng.uniform(0.05, 0.5)), d0 + DAY))
            awake = [(d0, d0 + DAY)]
    else:  # FLEXIBLE
        outs = _free_day(rng, d0, p.p_stay_home, 9.0, 22.5)
    if role == RETIREE and chance(rng, 0.3):  # morning exercise in the park
        x = rng.uniform(5.2, 6.0)
        outs.append((_h(d0, x), _h(d0, x + rng.uniform(0.5, 1.2))))
    if chance(rng, p.late_night_p) and not any(b > _h(d0, 20.0) for _, b in outs):
        outs.append((_h(d0, rng.uniform(20.0, 23.0)), _h(d0, rng.uniform(24.3, 27.5))))
    lo, hi = awake[0][0] + 20 * MINUTE, awake[-1][1] - 20 * MINUTE
    for _ in range(_poisson(rng, p.errand_rate)):
        if hi <= lo:
            break
        a = rng.randrange(lo, hi)
        b = a + int(rng.uniform(3.0, 25.0) * MINUTE)
        if not any(x - 5 * MINUTE < b and a < y + 5 * MINUTE for x, y in outs):
            outs.append((a, b))
    outs = [(a, b) for a, b in normalise(outs) if a >= d0]
    return outs, awake


def plan_day(rng: random.Random, hh: Household, day: int, clock: Clock) -> DayPlan:
    """Outings, presence and swipes of one household for one day."""
    d0 = day * DAY
    d1 = d0 + DAY
    horizon = d1 + 4 * HOUR
    weekday = clock.weekday(day)
    weekend = weekday >= 5
    swipes: list[tuple[int, int, str]] = []
    n = len(hh.persons)
    new_outs: list[list[Interval]] = [[] for _ in range(n)]
    awake: list[list[Interval]] = [[] for _ in range(n)]

    def door() -> int:
        return hh.door_pref if chance(rng, hh.door_p) else 1 - hh.door_pref

    def swipe(t: int, card: Card) -> None:
        swipes.append((t, door(), card.number))
        if chance(rng, 0.03):  # the reader did not beep: swipe again
            swipes.append((t + rng.randint(2, 9), door(), card.number))

    hh_trip = [iv for iv in hh.trips if iv[0] < d1 and iv[1] > d0]
    for i, p in enumerate(hh.persons):
        outs, aw = _person_outings(rng, p, hh, day, weekday)
        trips = hh_trip + [iv for iv in p.trips if iv[0] < d1 and iv[1] > d0]
        blocked = normalise([(a - HOUR, b + HOUR) for a, b in trips] + [(d0, p.busy_until)])
        outs = [(a, b) for a, b in outs if not any(x < b and a < y for x, y in blocked)]
        for a, b in trips:
            if a >= d0:  # the trip starts today: leave for it
                outs.append((a, b))
        new_outs[i] = sorted(outs)
        awake[i] = aw

    # Families and couples go out together at weekends (one swipe for the group on return).
    joint: Interval | None = None
    together: list[int] = []
    if weekend and hh.joint_outing_p and chance(rng, hh.joint_outing_p) and not hh_trip:
        a = _h(d0, rng.uniform(9.0, 17.0))
        b = a + int(rng.uniform(1.5, 6.0) * HOUR)
        together = [
            i
            for i in range(n)
            if not any(x < b and a < y for x, y in new_outs[i]) and hh.persons[i].busy_until <= a
        ]
        if len(together) >= 2:
            joint = (a, b)
            holders = [c for i in together if (c := hh.persons[i].card) is not None]
            for i in together:
                new_outs[i] = sorted([*new_outs[i], joint])
            if holders and not chance(rng, 0.12):
                swipe(b + rng.randint(0, 59), rng.choice(holders))

    home: list[list[Interval]] = []
    awake_home: list[list[Interval]] = []
    for i, p in enumerate(hh.persons):
        for a, b in new_outs[i]:
            grouped = joint is not None and (a, b) == joint and i in together
            # Shop staff come and go through the shop's street door, not the building's.
            through_door = p.role != SHOP_STAFF
            if through_door and not grouped and p.card is not None and not chance(rng, p.tailgate):
                swipe(b + rng.randint(0, 59), p.card)
            p.outs.append((a, b))
            p.busy_until = max(p.busy_until, b)
        # Shop staff come and go through the shop's street door; now and then they use the
        # building's entrance.
        if p.role == SHOP_STAFF and p.card is not None and chance(rng, 0.12):
            swipe(_h(d0, rng.uniform(9.0, 18.0)), p.card)
        p.outs = [iv for iv in normalise(p.outs) if iv[1] > d0]
        h = complement(p.outs, d0, horizon)
        home.append(h)
        awake_home.append(intersect(h, awake[i]))
    away = bool(hh_trip) and all(not h or sum(b - a for a, b in h) < 6 * HOUR for h in home)
    swipes.sort()
    return DayPlan(day, home, awake_home, swipes, away)
