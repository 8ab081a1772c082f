"""The ``suspected_group_rental`` rule on a small hand-made building, through the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from contract.alerts import AlertChange, Change, Severity, Subject
from contract.events import CardSwipe, MeterReading, RuleInput, Tick
from contract.site import (
    CardRegistration,
    GroupRentalConfig,
    MeterPlacement,
    ReaderPlacement,
    RulesConfig,
    Site,
    Unit,
)
from rules.engine import RuleEngine
from rules.group_rental import GroupRentalRule
from tests.rules.builders import SCOPE, TZ, feed

START = datetime(2026, 3, 1, 0, 0, tzinfo=TZ)
DAY = timedelta(days=1)


@dataclass
class Flat:
    """A flat of the test building: its cards, how they are used, and its load profile."""

    unit: str
    rooms: int | None = 2
    area: float | None = 60.0
    registered: int | None = None
    cards: int = 2
    swipes_per_card: int = 1  # per day, on the days the card is used
    swipe_gap_min: int = 100  # minutes between one card's swipes of a day
    quick_days: set[int] = field(default_factory=set)  # days its 2nd swipe comes 10 min after
    burst_day: int | None = None  # a day of errands: 2 more swipes 10 and 20 min after the last
    base_w: float = 80.0  # load outside the evening and the night valley
    evening_w: float = 400.0  # 18-23 h
    valley_w: float = 60.0  # 2-5 h
    away: set[int] = field(default_factory=set)  # days (from 0) nobody swipes

    def card_ids(self) -> list[str]:
        return [f"{self.unit}-c{i}" for i in range(self.cards)]


def neighbours(n: int = 10) -> list[Flat]:
    """Ordinary households: 2 cards, one swipe each a day, ordinary load."""
    return [Flat(unit=f"1-{i + 1:02d}", registered=2) for i in range(n)]


def site(flats: list[Flat]) -> Site:
    return Site(
        site_id=SCOPE,
        units=[
            Unit(
                unit_id=f.unit,
                building="1",
                rooms=f.rooms,
                floor_area_m2=f.area,
                registered_occupants=f.registered,
            )
            for f in flats
        ],
        cards=[CardRegistration(card=c, unit_id=f.unit) for f in flats for c in f.card_ids()],
        meters=[MeterPlacement(meter_id=f"m-{f.unit}", unit_id=f.unit) for f in flats],
        readers=[ReaderPlacement(reader_id="b1", building="1")],
    )


def events(flats: list[Flat], days: int, unregistered: int = 0) -> list[RuleInput]:
    """Swipes (spread over the day) and one meter reading per flat every 5 minutes."""
    out: list[tuple[datetime, int, RuleInput]] = []
    for d in range(days):
        day = START + d * DAY
        for fi, f in enumerate(flats):
            if d in f.away:
                continue
            for ci, card in enumerate(f.card_ids()):
                for k in range(f.swipes_per_card):
                    gap = 10 if d in f.quick_days and k == 1 else f.swipe_gap_min * k
                    t = day + timedelta(hours=7 + ci % 12, minutes=fi + gap)
                    out.append((t, 1, CardSwipe(ts=t, reader_id="b1", card=card)))
                if d == f.burst_day:
                    for j in (1, 2):
                        tb = t + timedelta(minutes=10 * j)
                        out.append((tb, 1, CardSwipe(ts=tb, reader_id="b1", card=card)))
        for u in range(unregistered):
            t = day + timedelta(hours=20, minutes=u)
            out.append((t, 1, CardSwipe(ts=t, reader_id="b1", card=f"stranger-{u}")))
        for step in range(288):
            t = day + timedelta(minutes=5 * step)
            hour = t.hour
            for f in flats:
                if 18 <= hour < 23:
                    power = f.evening_w
                elif 2 <= hour < 5:
                    power = f.valley_w
                else:
                    power = f.base_w
                out.append((t, 0, MeterReading(ts=t, meter_id=f"m-{f.unit}", power_w=power)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]


def run(
    flats: list[Flat], days: int, cfg: GroupRentalConfig | None = None, unregistered: int = 0
) -> tuple[RuleEngine, list[AlertChange]]:
    s = site(flats)
    rules = RulesConfig(suspected_group_rental=cfg or GroupRentalConfig())
    rule = GroupRentalRule(s, rules.suspected_group_rental, scope=SCOPE)
    eng = RuleEngine(s, rules, scope=SCOPE, rules=[rule])
    changes = feed(eng, [*events(flats, days, unregistered), Tick(START + days * DAY)])
    return eng, changes


def rental(unit: str = "1-99", **kw: object) -> Flat:
    """Six tenants with a card each in a two-room flat, cooking and lit every evening."""
    params: dict[str, object] = {"cards": 6, "evening_w": 1200.0, "valley_w": 150.0}
    params.update(kw)
    return Flat(unit=unit, **params)  # type: ignore[arg-type]


def test_a_group_rental_is_raised_after_warm_up_with_its_evidence() -> None:
    eng, changes = run([*neighbours(), rental()], days=8)
    assert [(c.change, c.episode.subject, c.episode.raised_at) for c in changes] == [
        # 5 complete days, then two evaluations in a row: raised at the second, 7 March 00:00.
        (Change.RAISED, Subject(unit_id="1-99"), START + 6 * DAY)
    ]
    ev = changes[0].episode.evidence
    assert ev["estimated_occupants"] == 6
    assert ev["rooms"] == 2
    assert ev["persons_per_room"] == 3.0
    assert ev["area_per_person_m2"] == 10.0
    assert ev["density_limits"] == "rooms"
    assert ev["swipes_per_day"] == 6.0
    assert ev["building_norm_swipes_per_day"] == 2.0
    assert ev["signals"] == "density,swipes,load"
    assert ev["signal_count"] == 3
    assert ev["daily_kwh_peer_median"] is not None
    assert changes[0].episode.severity is Severity.HIGH
    assert [ep.subject.unit_id for ep in eng.open_episodes()] == ["1-99"]


def test_no_alert_during_warm_up() -> None:
    _, changes = run([*neighbours(), rental()], days=6)  # evaluations at day 5 and 6 only
    assert [c.episode.raised_at for c in changes] == [START + 6 * DAY]
    _, changes = run([*neighbours(), rental()], days=5)
    assert changes == []


def test_a_large_registered_family_is_never_flagged() -> None:
    family = rental(unit="1-88", registered=8, cards=6)  # 6 card holders of 8 registered
    _, changes = run([*neighbours(), family], days=10)
    assert changes == []


def test_density_exactly_at_two_per_room_is_not_enough_on_its_own() -> None:
    at_limit = Flat(unit="1-77", cards=4, swipes_per_card=1)  # 4 in 2 rooms: legal
    over = Flat(unit="1-78", cards=5, swipes_per_card=1)  # 5 in 2 rooms
    _, changes = run([*neighbours(), at_limit, over], days=9)
    assert {c.episode.subject.unit_id for c in changes} == {"1-78"}
    ev = changes[0].episode.evidence
    assert ev["signals"] == "density,swipes"
    assert changes[0].episode.severity is Severity.MEDIUM


def test_one_signal_alone_never_raises() -> None:
    # Twice the building's swipes (but no card used 2.5 times more than one person would).
    busy = Flat(unit="1-66", cards=2, swipes_per_card=2)
    shop = Flat(unit="1-67", cards=1, evening_w=3000.0, base_w=2000.0)  # load only
    _, changes = run([*neighbours(), busy, shop], days=10)
    assert changes == []


def test_area_per_person_below_5_m2() -> None:
    small = Flat(unit="1-55", rooms=None, area=18.0, cards=4, swipes_per_card=1)
    _, changes = run([*neighbours(), small], days=9)
    assert [c.episode.subject.unit_id for c in changes] == ["1-55"]
    assert changes[0].episode.evidence["density_limits"] == "area"
    assert changes[0].episode.evidence["area_per_person_m2"] == 4.5


def test_hidden_tenants_with_unregistered_cards_in_the_building() -> None:
    hidden = Flat(unit="1-44", cards=2, evening_w=1600.0, base_w=200.0, valley_w=200.0)
    _, changes = run([*neighbours(), hidden], days=9, unregistered=3)
    assert [c.episode.subject.unit_id for c in changes] == ["1-44"]
    ev = changes[0].episode.evidence
    assert ev["signals"] == "load,hidden_tenants"
    assert ev["unregistered_cards"] == 3
    _, changes = run([*neighbours(), hidden], days=9, unregistered=0)
    assert changes == []


def test_clears_three_evaluations_after_the_signals_are_gone() -> None:
    moved_out = set(range(8, 30))
    flat = rental(away=moved_out, evening_w=400.0, valley_w=60.0)
    eng, changes = run([*neighbours(), flat], days=20)
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    cleared = changes[-1].episode
    assert cleared.evidence["ended_by"] == "signals_gone"
    assert cleared.cleared_at is not None
    assert cleared.raised_at < cleared.cleared_at < START + 20 * DAY
    assert eng.open_episodes() == []


def test_shared_card_counts_as_several_people() -> None:
    shared = Flat(unit="1-33", cards=1, swipes_per_card=6, evening_w=1200.0, valley_w=150.0)
    _, changes = run([*neighbours(), shared], days=9)
    assert [c.episode.subject.unit_id for c in changes] == ["1-33"]
    ev = changes[0].episode.evidence
    assert ev["shared_cards"] == 1
    assert ev["estimated_occupants"] == 4  # capped at max_persons_per_card
    assert "shared_cards" in str(ev["signals"])


def test_same_input_gives_the_same_output() -> None:
    flats = [*neighbours(), rental()]
    assert run(flats, days=9)[1] == run(flats, days=9)[1]


def test_a_flat_share_within_the_limits_is_not_flagged_on_moderate_usage() -> None:
    # 4 tenants in 2 rooms: twice the building's swipes and a busier evening, but legal.
    share = Flat(unit="1-22", cards=4, evening_w=600.0, valley_w=80.0)
    _, changes = run([*neighbours(), share], days=10)
    assert changes == []
    # The same flat with a far busier evening (load >= 1.8 x similar flats) is suspected.
    crowded = Flat(unit="1-22", cards=4, evening_w=1200.0, valley_w=80.0)
    _, changes = run([*neighbours(), crowded], days=10)
    assert [c.episode.evidence["signals"] for c in changes] == ["swipes,load"]


def test_the_default_engine_with_its_meter_log_gives_the_same_episodes() -> None:
    # In the default engine the rule reads the meters from the engine's log and is not called
    # for readings; built on its own it takes them. Same input, same episodes.
    flats = [*neighbours(), rental(), Flat(unit="1-44", cards=2, evening_w=1600.0)]
    s = site(flats)
    stream = [*events(flats, 10, unregistered=3), Tick(START + 10 * DAY)]
    standalone = run(flats, days=10, unregistered=3)[1]
    eng = RuleEngine(s, RulesConfig(), scope=SCOPE)
    assert feed(eng, stream) == standalone
    assert [ep.subject.unit_id for ep in eng.finish()] == ["1-44", "1-99"]


def test_more_card_holders_than_registered_residents_is_a_signal() -> None:
    # 3 card holders in daily use in a two-room flat registered for 1: legal density, but two
    # people live there whom the registration does not list; with strong usage it is raised.
    flat = Flat(unit="1-11", registered=1, cards=3, swipes_per_card=2)
    _, changes = run([*neighbours(), flat], days=9)
    assert [c.episode.subject.unit_id for c in changes] == ["1-11"]
    ev = changes[0].episode.evidence
    assert ev["signals"] == "over_registration,swipes"
    assert ev["estimated_occupants"] == 3
    assert ev["registered_occupants"] == 1


def test_over_registration_by_one_less_than_the_margin_is_not_a_signal() -> None:
    flat = Flat(unit="1-11", registered=2, cards=3, swipes_per_card=2)  # 3 < 2 + 2
    _, changes = run([*neighbours(), flat], days=9)
    assert changes == []
    # The margin is configurable: at 1 the same flat is raised.
    cfg = GroupRentalConfig(over_registration_margin=1)
    _, changes = run([*neighbours(), flat], days=9, cfg=cfg)
    assert [c.episode.evidence["signals"] for c in changes] == ["over_registration,swipes"]


def test_over_registration_alone_with_ordinary_usage_never_raises() -> None:
    # Registration lags behind (a couple registered as one): one card swipe a day each.
    flat = Flat(unit="1-11", registered=1, cards=3, swipes_per_card=1)
    _, changes = run([*neighbours(), flat], days=10)
    assert changes == []


def test_days_without_any_swipe_in_the_building_are_not_evidence() -> None:
    # The building's reader dies on day 8: the group rental stays suspected on the days it
    # worked, instead of clearing because nobody seems to live there any more.
    dead = set(range(8, 20))
    flats = [
        *[Flat(unit=f.unit, registered=2, away=dead) for f in neighbours()],
        rental(away=dead),
    ]
    eng, changes = run(flats, days=20)
    assert [c.change for c in changes] == [Change.RAISED]
    (ep,) = eng.finish()
    assert ep.evidence["estimated_occupants"] == 6
    assert ep.evidence["window_days"] == 7
    # A single flat whose cards stop while the building's other cards go on is different:
    # its people are gone (see test_clears_three_evaluations_after_the_signals_are_gone).


def test_a_registered_household_does_not_explain_three_times_the_load() -> None:
    # Registered for 3, 2 cards in use: the registration covers the cards. But the flat draws
    # over 3 x the energy and evening spread of similar flats while unregistered cards are in
    # daily use in the building: people live there whom neither list shows.
    hidden = Flat(
        unit="1-44", registered=3, cards=2, evening_w=1800.0, base_w=260.0, valley_w=200.0
    )
    _, changes = run([*neighbours(), hidden], days=9, unregistered=3)
    assert [c.episode.subject.unit_id for c in changes] == ["1-44"]
    ev = changes[0].episode.evidence
    assert ev["explained_by_registration"] is False
    assert ev["signals"] == "load,hidden_tenants"
    assert ev["load_vs_peers"] is not None and float(ev["load_vs_peers"]) >= 3.0
    # Without unregistered cards in the building, the registered household explains it.
    _, changes = run([*neighbours(), hidden], days=9, unregistered=0)
    assert changes == []


def test_a_large_registered_family_with_a_busy_evening_is_not_flagged() -> None:
    # 8 registered, 6 card holders, twice the load of a couple's flat: a family, not a rental.
    family = rental(unit="1-88", registered=8, cards=6, evening_w=800.0, valley_w=120.0)
    _, changes = run([*neighbours(), family], days=10, unregistered=3)
    assert changes == []


def test_a_card_whose_entries_come_minutes_apart_counts_as_two_people() -> None:
    # A one-room flat, two cards, each swiped twice a day (twice the building's typical card,
    # below the 2.5 x of a shared card on rate alone), the second swipe 10 minutes after the
    # first: two people come home on each card. 4 people in one room.
    flat = Flat(unit="1-33", rooms=1, area=40.0, cards=2, swipes_per_card=2, swipe_gap_min=10)
    _, changes = run([*neighbours(), flat], days=9)
    assert [c.episode.subject.unit_id for c in changes] == ["1-33"]
    ev = changes[0].episode.evidence
    assert ev["shared_cards"] == 2
    assert ev["estimated_occupants"] == 4
    assert ev["paired_entries"] == 12  # one a day per card; raised on a 6-day window
    assert ev["signals"] == "density,swipes,shared_cards"
    # The same swipes hours apart are one busy person per card: 2 in one room is legal.
    busy = Flat(unit="1-33", rooms=1, area=40.0, cards=2, swipes_per_card=2)
    _, changes = run([*neighbours(), busy], days=9)
    assert changes == []


def test_paired_entries_bounds() -> None:
    # A re-swipe a minute later (the reader did not beep) and a return 40 minutes later are
    # not paired entries.
    for gap in (1, 40):
        flat = Flat(unit="1-33", rooms=1, area=40.0, cards=2, swipes_per_card=2, swipe_gap_min=gap)
        _, changes = run([*neighbours(), flat], days=9)
        assert changes == [], gap
    # The bounds are configurable: with a window up to 45 minutes, 40 minutes is paired.
    cfg = GroupRentalConfig(paired_entry_max_s=2700.0)
    flat = Flat(unit="1-33", rooms=1, area=40.0, cards=2, swipes_per_card=2, swipe_gap_min=40)
    _, changes = run([*neighbours(), flat], days=9, cfg=cfg)
    assert [c.episode.evidence["shared_cards"] for c in changes] == [2]


def test_paired_entries_need_two_peoples_worth_of_swipes() -> None:
    # Twice the typical card is the threshold: at paired_card_ratio 2.5 the same cards are
    # one person each.
    flat = Flat(unit="1-33", rooms=1, area=40.0, cards=2, swipes_per_card=2, swipe_gap_min=10)
    _, changes = run([*neighbours(), flat], days=9, cfg=GroupRentalConfig(paired_card_ratio=2.5))
    assert changes == []
    # Half of the cards' swipes are paired: a share threshold above that leaves them single.
    _, changes = run([*neighbours(), flat], days=9, cfg=GroupRentalConfig(paired_min_share=0.6))
    assert changes == []


def test_a_busy_couple_with_an_occasional_quick_errand_is_not_flagged() -> None:
    # Two retirees in a one-room flat, out and back twice a day each (twice the building's
    # typical card); once in the week one of them pops out and is back 10 minutes later. One
    # day with a paired entry per card (1 of 14 swipes, 7 %) is below paired_min_days (2) and
    # paired_min_share (8 %): still one person per card.
    couple = Flat(
        unit="1-33",
        rooms=1,
        area=40.0,
        registered=None,
        cards=2,
        swipes_per_card=2,
        quick_days={6},
    )
    _, changes = run([*neighbours(), couple], days=10)
    assert changes == []
    # With both thresholds lowered, the errand would make each card two people.
    cfg = GroupRentalConfig(paired_min_days=1, paired_min_share=0.05)
    _, changes = run([*neighbours(), couple], days=10, cfg=cfg)
    assert [c.episode.subject.unit_id for c in changes] == ["1-33"]


def test_a_registered_family_whose_parents_share_a_card_is_not_flagged() -> None:
    # Registered for 5 in two rooms: the parents share one card, the two teenagers another,
    # and each pair comes home minutes apart. 4 people counted, within the registered household.
    family = Flat(
        unit="1-88",
        registered=5,
        cards=2,
        swipes_per_card=2,
        swipe_gap_min=10,
        evening_w=800.0,
        valley_w=120.0,
    )
    _, changes = run([*neighbours(), family], days=10, unregistered=3)
    assert changes == []
    # Registered for 2, the same flat is suspected: 4 people on two cards, 2 more than listed.
    family.registered = 2
    _, changes = run([*neighbours(), family], days=10, unregistered=3)
    assert [c.episode.evidence["estimated_occupants"] for c in changes] == [4]


def test_paired_entry_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="paired_entry_min_s must be below paired_entry_max_s"):
        GroupRentalConfig(paired_entry_min_s=1800.0, paired_entry_max_s=600.0)


def test_a_registered_couple_does_not_explain_two_and_a_half_times_the_load() -> None:
    # Registered for 2, 2 cards in use: the registration covers the cards. The flat draws
    # about 2.6 x the energy and evening spread of similar flats while unregistered cards are
    # in daily use in the building: more than 1.25 x similar flats' per registered person.
    flat = Flat(unit="1-44", registered=2, cards=2, base_w=256.0, evening_w=950.0, valley_w=60.0)
    _, changes = run([*neighbours(), flat], days=9, unregistered=3)
    assert [c.episode.subject.unit_id for c in changes] == ["1-44"]
    ev = changes[0].episode.evidence
    assert ev["explained_by_registration"] is False
    assert ev["registered_explains_load"] == 2.5
    assert ev["signals"] == "load,hidden_tenants"
    assert ev["load_vs_peers"] is not None and 2.5 <= float(ev["load_vs_peers"]) < 3.0
    # About 2.3 x similar flats' is within what a registered couple accounts for.
    lighter = Flat(unit="1-44", registered=2, cards=2, base_w=223.0, evening_w=842.0, valley_w=60.0)
    _, changes = run([*neighbours(), lighter], days=9, unregistered=3)
    assert changes == []


def test_a_large_registered_family_explains_up_to_three_times_the_load() -> None:
    # Registered for 6, 2 card holders (children and grandparents without cards), 2.6 x the
    # load of similar flats: 1.25 x per registered person would be 7.5 x, the cap is 3 x.
    family = Flat(unit="1-44", registered=6, cards=2, base_w=256.0, evening_w=950.0, valley_w=60.0)
    _, changes = run([*neighbours(), family], days=9, unregistered=3)
    assert changes == []


def test_a_burst_of_errands_on_one_afternoon_does_not_make_a_card_shared() -> None:
    # The busy couple again; one afternoon each goes out twice more and is back within 10
    # minutes each time: 2 paired entries of 16 swipes (12 %), but on a single day. Two people
    # on one card come home together day after day: paired_min_days is 2.
    couple = Flat(unit="1-33", rooms=1, area=40.0, cards=2, swipes_per_card=2, burst_day=6)
    _, changes = run([*neighbours(), couple], days=10)
    assert changes == []
    _, changes = run([*neighbours(), couple], days=10, cfg=GroupRentalConfig(paired_min_days=1))
    assert [c.episode.evidence["shared_cards"] for c in changes] == [2]
