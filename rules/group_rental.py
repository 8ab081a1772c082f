"""The ``suspected_group_rental`` rule: a flat lived in by more people than the law allows.

Why, and where the defaults come from (domain.md's regulation table): a let flat may house at
most 2 persons per room, families excepted, and must give each person at least 5 m² of living
area (上海市居住房屋租赁管理办法, 2014 amendment; Suzhou and Hangzhou use 4 m² of usable area);
10 or more residents in one unit is a group rental by count (seed 002, Changzhou 2019). Seed 000
asks for exactly this: entrance card swipe frequency as the base data of an algorithm that raises
suspected-group-rental warnings for offline verification (线上预警、线下核查、联合整治). The rule
fuses that occupancy estimate with the flat's load curve, because electricity alone confuses group
rentals with shops and large families (about 55 % precision at State Grid Jiangsu). Thresholds
come from :class:`contract.site.GroupRentalConfig`.

What it computes, once a day at local midnight, over the last ``window_days`` (7) local days:

Occupants
    A card registered to the flat (``site.cards``) counts when it was used on at least
    ``min_active_days`` (3) days of the window. A card's rate is its swipes per active day; the
    building's norm is the median rate of its counted cards. A card whose rate is at least
    ``shared_card_ratio`` (2.5) times that norm is a *shared card* and stands for
    ``round(rate / norm)`` persons (at least 2, at most ``max_persons_per_card``); every other
    counted card stands for one. ``estimated_occupants`` is the sum. Children and others without
    a card are not seen, so the estimate errs low.

    Paired entries: the reader records entries only, so one person cannot enter twice without
    having gone out in between. A swipe that comes ``paired_entry_min_s`` (2 min) to
    ``paired_entry_max_s`` (30 min) after the same card's previous swipe is a *paired entry*:
    two people on one card coming home at the same hour, or a one-person errand out and back
    (the lower bound leaves out a re-swipe at a reader that did not beep, seconds later). A card
    used two people's worth -- at least ``paired_card_ratio`` (2) times the norm, where one busy
    person (a retiree's outings, a courier's lunch at home) also lands -- is shared too when it
    made a paired entry on at least ``paired_min_days`` (2) days of the window and at least
    ``paired_min_share`` (8 %) of its swipes are paired entries: a busy person's many entries
    are spread over the day (a burst of errands is one afternoon), a card that two people carry
    keeps entering minutes apart, day after day. Tuning seeds: a shared card used by two
    or three people swipes 1.5-2.5 times a typical card, as busy single cards do, but over
    14 days about half of the shared cards of 1.6-2.5 x the norm had 10 % or more paired
    entries against 1 in 70 single cards.

Signals (``signals`` lists them; each counts once, however many limits it covers)
    ``density``: the estimate above ``max_persons_per_room`` (2) per room, or below
    ``min_area_per_person_m2`` (5 m²) each, or at ``max_residents`` (10) or more, where rooms /
    area are known (``density_limits`` says which). ``swipes``: the flat's swipes per day (its
    registered cards) at least ``swipes_min_ratio`` (1.5) times the median of the building's
    occupied flats and above median + ``swipes_mad_k`` (1) x MAD x 1.4826 (a robust z-score).
    ``shared_cards``: at least one shared card. ``load``: the flat's daily energy and its evening
    peak-to-valley spread (mean power 18-23 h minus mean power 2-5 h) both at least
    ``load_ratio`` (1.3) times the median of similar flats (same building, same number of rooms
    when at least 5 such flats have data, else the whole building). ``hidden_tenants``: that
    load at least ``hidden_load_ratio`` (2) times similar flats' in a building where at least
    ``hidden_min_unregistered`` (2) unregistered cards are in daily use.
    ``over_registration``: the estimate at least ``over_registration_margin`` (2) above the
    flat's ``registered_occupants`` (people live there whom the household registration does
    not list: seed 002's 治安 hazard of unregistered tenants). Registration lags behind (a new
    partner, a grown child), so this signal needs the same corroboration as the others.

Days without reader data
    A local day on which no reader of the building recorded any swipe (a dead reader, a
    gateway down, a power cut) says nothing about who lives there: the building's card windows
    skip it, so the window is the building's last ``window_days`` days *with* reader data
    (``window_days`` in the evidence is how many there are). Swipes per day are per such day.
    A flat does not clear because its building's reader died (``data_silence`` reports the
    reader); the load figures keep their calendar days.

Families
    When the flat's ``registered_occupants`` is known and the estimate does not exceed it by
    more than ``family_margin`` (0), the occupancy is the registered household's: families are
    exempt from the density limits however large, and the flat is not flagged whatever its
    usage (``explained_by_registration`` in the evidence) -- unless ``hidden_tenants`` holds
    with a load beyond what the registration accounts for (``registered_explains_load`` in
    the evidence): ``explained_load_per_person`` (1.25) times that of similar flats per
    registered occupant, at most ``explained_load_ratio`` (3). Three times the energy and the
    evening spread is what three households make, not one family; a registered couple
    accounts for up to 2.5 times a similar flat's (similar flats house couples and small
    families; a household's energy grows less than its size -- one fridge, one water heater --
    so the allowance is generous). Tuning seeds: of the flats explained by their registration
    while hidden_tenants held, no family or flat-share went above 1.13 x similar flats' load
    per registered person; several group rentals registered for 1 or 2 reached 1.4-2.5.

Unregistered cards
    A card not in ``site.cards`` used on at least ``unregistered_min_days`` (3) days at a
    reader is an unregistered card in daily use. Nothing in the data ties it to a flat: tying it
    through the load that rises after its swipes needs look-ahead over every meter of the
    building and was found unreliable on labelled data (neighbours come home at the same hours),
    so the rule keeps it as building-level corroboration: ``unregistered_cards`` in the evidence
    is the count for the flat's building, and it counts only through ``hidden_tenants``.

Raising, updates, clearing
    A flat is suspected when at least ``min_signals`` (2) signals agree, it is not explained by
    its registration, and either ``density`` is among them or the usage is strong: swipes at
    least ``strong_swipes_ratio`` (2.5) times the building's median, the load at least
    ``strong_load_ratio`` (1.8) times similar flats', a shared card, or hidden tenants (a
    flat-share within the legal limits also swipes and cooks more than a couple). No
    evaluation happens before ``warmup_days`` (5) complete local days have been seen (a first
    day that starts after 06:00 local time is partial and not counted). The episode is raised
    at the ``raise_after_days``-th (2nd) consecutive evaluation that suspects the flat,
    ``raised_at`` = that evaluation's time (the local midnight ending the last day of the
    window). Severity: ``low`` for one signal (only with ``min_signals`` = 1), ``medium`` for
    two, ``high`` for three or more; it never de-escalates within an episode. An open episode
    is re-published (UPDATED) only when the severity rises or the occupant estimate moves by
    ``occupants_update_step`` (2) or more from the last published figure. It clears after
    ``clear_after_days`` (3) consecutive evaluations that do not suspect it, ``cleared_at`` =
    the first of them, ``ended_by`` = "signals_gone". The 7-day window and these two
    hysteresis counts are the rule's minimum episode length: a flat cannot flap from one day
    to the next.

Evidence
    ``estimated_occupants``, ``registered_occupants``, ``rooms``, ``floor_area_m2``,
    ``persons_per_room``, ``area_per_person_m2``, ``density_limits``,
    ``explained_by_registration``, ``active_cards``, ``swipes_per_day``,
    ``building_norm_swipes_per_day`` (median), ``building_mad_swipes_per_day``,
    ``card_norm_swipes_per_day`` (median swipes of one card on a day it is used),
    ``shared_cards``, ``paired_entries`` (the counted cards' paired entries in the window),
    ``unregistered_cards`` (building), ``evening_peak_w``, ``valley_w``,
    ``daily_kwh``, ``daily_kwh_peer_median``, ``load_vs_peers`` (the smaller of the two load
    ratios against similar flats), ``evening_spread_peer_median_w``, ``signals``
    (comma-separated names), ``signal_count``, ``window_days``, ``evaluated_at`` (ISO) and
    ``ended_by``. Figures that cannot be computed (no meter, unknown rooms) are None.

Time and cost
    Days are local days of the site's timezone. A swipe costs a dictionary lookup, two counter
    increments and a comparison with the card's previous swipe. The load is sampled every
    ``_SAMPLE_S`` (5 min, on the minute grid) from each meter's latest reading in the
    :class:`rules.common.MeterLog` (a reading older than one sample period is not used): the
    engine keeps that log, so this rule is not called for meter readings at all, only when a
    sample or a day's end is due (a rule built without a log keeps its own and records the
    readings it is given). Memory is bounded by the site (two rings of ``window_days`` counters
    per card -- swipes and paired entries -- and one per flat) plus the unregistered cards seen
    in the window (cards with no use in the window are forgotten).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from statistics import median

from contract.alerts import (
    AlertChange,
    AlertEpisode,
    AlertKind,
    Change,
    EvidenceValue,
    Severity,
    Subject,
)
from contract.events import CardSwipe, MeterReading, RuleInput
from contract.site import GroupRentalConfig, Site, Unit
from rules.base import NO_CHANGES
from rules.common import (
    SEVERITY_RANK,
    MeterEntry,
    MeterLog,
    SiteCalendar,
    Timebase,
    make_episode,
    r1,
    r2,
    restate,
    site_zone,
)

KIND = AlertKind.SUSPECTED_GROUP_RENTAL
ENDED_BY_GONE = "signals_gone"

_SAMPLE_S = 300.0
_BEFORE_START = datetime.min.replace(tzinfo=UTC)
_MIN_DAY_SAMPLES = 144  # half a day of 5-minute samples makes a day's load figures usable
_PARTIAL_FIRST_DAY_S = 6 * 3600.0
_MIN_PEERS = 5
_MAD_SCALE = 1.4826

_CardUse = tuple[float, int, int, int]
"""A counted card in the window: swipes per active day, swipes, paired entries, days with one."""

SIG_DENSITY = "density"
SIG_SWIPES = "swipes"
SIG_SHARED = "shared_cards"
SIG_LOAD = "load"
SIG_HIDDEN = "hidden_tenants"
SIG_OVER_REGISTRATION = "over_registration"


class _Card:
    __slots__ = ("days", "flat", "last", "paired", "paired_today", "today")

    def __init__(self, flat: _Flat | None, window: int) -> None:
        self.flat = flat
        self.today = 0
        self.days: deque[int] = deque(maxlen=window)
        self.last = -math.inf  # time of the card's latest swipe (seconds)
        self.paired_today = 0  # swipes today that came minutes after the card's previous one
        self.paired: deque[int] = deque(maxlen=window)


class _Meter:
    """5-minute samples of one flat's power for the current day, and per-day figures."""

    __slots__ = ("days", "entry", "ev_n", "ev_sum", "n", "total", "va_n", "va_sum")

    def __init__(self, window: int, entry: MeterEntry) -> None:
        self.entry = entry  # the meter's latest reading (the meter log)
        self.n = 0
        self.total = 0.0
        self.ev_n = 0
        self.ev_sum = 0.0
        self.va_n = 0
        self.va_sum = 0.0
        # per day: (mean power W, evening mean W, valley mean W), None when too few samples
        self.days: deque[tuple[float, float | None, float | None] | None] = deque(maxlen=window)


class _Flat:
    __slots__ = (
        "building",
        "cards",
        "days",
        "episode",
        "evidence",
        "fail_since",
        "fails",
        "index",
        "meter",
        "published_est",
        "streak",
        "subject",
        "today",
        "unit",
    )

    def __init__(self, index: int, unit: Unit, window: int) -> None:
        self.index = index
        self.unit = unit
        self.building = unit.building
        self.subject = Subject(unit_id=unit.unit_id)
        self.cards: list[_Card] = []
        self.today = 0  # swipes of the flat's registered cards today
        self.days: deque[int] = deque(maxlen=window)
        self.meter: _Meter | None = None
        self.episode: AlertEpisode | None = None
        self.evidence: dict[str, EvidenceValue] | None = None  # latest evaluation while open
        self.published_est = 0
        self.fails = 0
        self.fail_since: float | None = None
        self.streak = 0  # consecutive evaluations that found the flat suspected (no episode)


class _Figures:
    """One flat's figures at an evaluation."""

    __slots__ = (
        "active_cards",
        "daily_kwh",
        "est",
        "evening",
        "paired",
        "shared",
        "spread",
        "swipes_per_day",
        "valley",
    )

    def __init__(self) -> None:
        self.est = 0
        self.active_cards = 0
        self.shared = 0
        self.paired = 0
        self.swipes_per_day = 0.0
        self.daily_kwh: float | None = None
        self.evening: float | None = None
        self.valley: float | None = None
        self.spread: float | None = None


class _Norms:
    """The building's figures a flat is judged against at one evaluation."""

    __slots__ = ("card", "days", "kwh", "mad", "spread", "swipes", "unregistered")

    def __init__(
        self,
        *,
        swipes: float,
        mad: float,
        card: float | None,
        unregistered: int,
        kwh: float | None,
        spread: float | None,
        days: int,
    ) -> None:
        self.swipes = swipes
        self.mad = mad
        self.card = card
        self.unregistered = unregistered
        self.kwh = kwh
        self.spread = spread
        self.days = days


class GroupRentalRule:
    """Suspected group rental per flat from card swipes, corroborated by the load curve.

    Defaults follow 上海市居住房屋租赁管理办法 (2 persons per room, 5 m² per person) and seed
    002 (10 residents); see the module docstring for the exact semantics.
    """

    kinds: frozenset[AlertKind] = frozenset({KIND})

    def __init__(
        self,
        site: Site,
        config: GroupRentalConfig,
        *,
        scope: str = "",
        timebase: Timebase | None = None,
        meter_log: MeterLog | None = None,
    ) -> None:
        tz = site_zone(site)
        self._cal = SiteCalendar(tz)
        self._scope = scope
        self._tb = timebase or Timebase()
        self._cfg = config
        self._pair_min_s = config.paired_entry_min_s
        self._pair_max_s = config.paired_entry_max_s
        window = config.window_days
        self._window = window
        self._flats: list[_Flat] = []
        flat_of: dict[str, _Flat] = {}
        for unit in site.units:
            flat = _Flat(len(self._flats), unit, window)
            self._flats.append(flat)
            flat_of[unit.unit_id] = flat
        self._cards: dict[str, _Card] = {}
        for reg in site.cards:
            flat = flat_of[reg.unit_id]
            card = _Card(flat, window)
            flat.cards.append(card)
            self._cards[reg.card] = card
        # The load is sampled every 5 minutes from each meter's latest reading: from the engine's
        # meter log (then no reading is routed here), or from the rule's own log (then every
        # reading is, and only recorded).
        self._own_log = meter_log is None
        self._log = MeterLog(m.meter_id for m in site.meters) if meter_log is None else meter_log
        self.inputs: frozenset[type[CardSwipe | MeterReading]] = (
            frozenset({CardSwipe, MeterReading}) if self._own_log else frozenset({CardSwipe})
        )
        self._meters: list[_Meter] = []
        for m in site.meters:
            meter = _Meter(window, self._log.entries[m.meter_id])
            flat_of[m.unit_id].meter = meter
            self._meters.append(meter)
        self._reader_building = {r.reader_id: r.building for r in site.readers}
        self._live: set[str] = set()  # buildings whose readers recorded a swipe today
        self._loose: dict[str, dict[str, _Card]] = {r.building: {} for r in site.readers}
        self._buildings: dict[str, list[_Flat]] = {}
        for flat in self._flats:
            self._buildings.setdefault(flat.building, []).append(flat)
        self._day_start = 0.0
        self._day_end = -math.inf  # before the first event
        self._next_sample = math.inf
        self._due = math.inf  # the earlier of the two
        self._due_dt: datetime | None = None
        self._partial = False
        self._days_seen = 0
        self._now = -math.inf

    # -- the Rule interface --------------------------------------------------------------------

    @property
    def next_due(self) -> datetime | None:
        if self._day_end == -math.inf:
            return _BEFORE_START  # asks for the first event of any kind: day one starts there
        return self._due_dt

    def process(self, event: RuleInput) -> Sequence[AlertChange]:
        ts = event.ts
        tb = self._tb
        t = tb.t if ts is tb.ts else tb.seconds(ts)
        now = self._now
        out: list[AlertChange] | None = None
        if t > now:
            self._now = now = t
            if now >= self._due:
                out = []
                self._advance(now, out)
            elif self._day_end == -math.inf:
                self._begin(now)
        if type(event) is MeterReading:  # only without the engine's meter log
            self._log.record(event, now)
        elif type(event) is CardSwipe:
            self._swipe(event, now)
        return out or NO_CHANGES

    def open_episodes(self) -> list[AlertEpisode]:
        return [f.episode for f in self._flats if f.episode is not None]

    def finish(self) -> list[AlertEpisode]:
        return [
            restate(f.episode, evidence=f.evidence or f.episode.evidence)
            for f in self._flats
            if f.episode is not None
        ]

    # -- events --------------------------------------------------------------------------------

    def _sample_all(self, at: float) -> bool:
        """Add each meter's latest reading (if not older than a sample period) to the day."""
        cfg = self._cfg
        hour = int((at - self._day_start) // 3600.0)
        evening = cfg.evening_start_hour <= hour < cfg.evening_end_hour
        valley = cfg.valley_start_hour <= hour < cfg.valley_end_hour
        fresh = False
        for meter in self._meters:
            entry = meter.entry
            reading = entry.reading
            if reading is None or at - entry.t > _SAMPLE_S:
                continue
            fresh = True
            power = reading.power_w
            meter.n += 1
            meter.total += power
            if evening:
                meter.ev_n += 1
                meter.ev_sum += power
            elif valley:
                meter.va_n += 1
                meter.va_sum += power
        return fresh

    def _swipe(self, event: CardSwipe, now: float) -> None:
        card = self._cards.get(event.card)
        building = self._reader_building.get(event.reader_id)
        if card is not None:
            card.today += 1
            # An entry minutes after the card's previous one: a second person on the card (one
            # person must have gone out and come back in that time; a re-swipe at a reader that
            # did not beep comes seconds later and is below the lower bound).
            if self._pair_min_s <= now - card.last <= self._pair_max_s:
                card.paired_today += 1
            card.last = now
            flat = card.flat
            assert flat is not None
            flat.today += 1
            self._live.add(flat.building if building is None else building)
            return
        loose_cards = self._loose.get(building or "")
        if loose_cards is None:
            return
        self._live.add(building or "")
        loose = loose_cards.get(event.card)
        if loose is None:
            loose = loose_cards[event.card] = _Card(None, self._window)
        loose.today += 1

    # -- days ----------------------------------------------------------------------------------

    def _begin(self, now: float) -> None:
        cal = self._cal
        self._day_start = cal.day_start(now)
        self._partial = now - self._day_start > _PARTIAL_FIRST_DAY_S
        self._day_end = cal.next_day_start(now)
        self._next_sample = (now // _SAMPLE_S + 1.0) * _SAMPLE_S
        self._set_due()

    def _set_due(self) -> None:
        due = min(self._day_end, self._next_sample)
        if due != self._due:
            self._due = due
            self._due_dt = self._cal.dt(due)

    def _advance(self, now: float, out: list[AlertChange]) -> None:
        """Take the samples and close the days due at or before ``now``, in time order (a day
        closes before the sample taken at its midnight)."""
        while True:
            day_end, sample = self._day_end, self._next_sample
            if day_end <= sample:
                if day_end > now:
                    break
                self._roll(out)
            else:
                if sample > now:
                    break
                if self._sample_all(sample):
                    self._next_sample = sample + _SAMPLE_S
                else:  # every meter silent: skip to the sample due at (or before) now
                    self._next_sample = max(
                        sample + _SAMPLE_S, (min(now, day_end) // _SAMPLE_S) * _SAMPLE_S
                    )
        self._set_due()

    def _roll(self, out: list[AlertChange]) -> None:
        """Close the local day that ends at ``_day_end`` and evaluate."""
        day_end = self._day_end
        self._close_day(keep=not self._partial)
        if not self._partial:
            self._days_seen += 1
            if self._days_seen >= self._cfg.warmup_days:
                self._evaluate(day_end, out)
        self._partial = False
        self._day_start = day_end
        self._day_end = self._cal.next_day_start(day_end)

    def _close_day(self, *, keep: bool) -> None:
        # A day on which a building's readers recorded no swipe at all (a dead reader, a
        # gateway down) is no evidence about its flats: its card windows skip that day.
        live = self._live
        for card in self._cards.values():
            if keep and card.flat is not None and card.flat.building in live:
                card.days.append(card.today)
                card.paired.append(card.paired_today)
            card.today = 0
            card.paired_today = 0
        for flat in self._flats:
            if keep and flat.building in live:
                flat.days.append(flat.today)
            flat.today = 0
        for meter in self._meters:
            if keep:
                meter.days.append(
                    (
                        meter.total / meter.n,
                        meter.ev_sum / meter.ev_n if meter.ev_n else None,
                        meter.va_sum / meter.va_n if meter.va_n else None,
                    )
                    if meter.n >= _MIN_DAY_SAMPLES
                    else None
                )
            meter.n = meter.ev_n = meter.va_n = 0
            meter.total = meter.ev_sum = meter.va_sum = 0.0
        for building, loose_cards in self._loose.items():
            for card_id in list(loose_cards):
                card = loose_cards[card_id]
                if keep and building in live:
                    card.days.append(card.today)
                card.today = 0
                if not any(card.days):
                    del loose_cards[card_id]
        live.clear()

    # -- evaluation ----------------------------------------------------------------------------

    def _evaluate(self, at: float, out: list[AlertChange]) -> None:
        cfg = self._cfg
        # The card window of a building: its last ``window_days`` days with reader data.
        live_days = {b: max(len(f.days) for f in flats) for b, flats in self._buildings.items()}
        # Per-card rates (swipes on the days a card is used), for the norm of one person, with
        # each counted card's swipes and paired entries in the window.
        rates: dict[int, list[_CardUse]] = {}
        site_rates: list[float] = []
        for flat in self._flats:
            min_active = max(1, min(cfg.min_active_days, live_days[flat.building]))
            flat_rates = rates.setdefault(flat.index, [])
            for card in flat.cards:
                active = sum(1 for d in card.days if d)
                if active >= min_active:
                    swipes = sum(card.days)
                    paired_days = sum(1 for p in card.paired if p)
                    flat_rates.append((swipes / active, swipes, sum(card.paired), paired_days))
                    site_rates.append(swipes / active)
        site_card_norm = median(site_rates) if site_rates else None
        for building, flats in sorted(self._buildings.items()):
            b_rates = [use[0] for f in flats for use in rates[f.index]]
            card_norm = median(b_rates) if len(b_rates) >= _MIN_PEERS else site_card_norm
            n_days = live_days[building]
            figures = [self._figures(f, rates[f.index], card_norm, n_days) for f in flats]
            occupied = [x.swipes_per_day for x in figures if x.active_cards]
            norm = median(occupied) if occupied else 0.0
            mad = median(abs(x - norm) for x in occupied) if occupied else 0.0
            unregistered = sum(
                1
                for card in self._loose.get(building, {}).values()
                if sum(1 for d in card.days if d) >= cfg.unregistered_min_days
            )
            for flat, fig in zip(flats, figures, strict=True):
                peers = [
                    x
                    for f, x in zip(flats, figures, strict=True)
                    if f.unit.rooms == flat.unit.rooms and x.daily_kwh is not None
                ]
                if len(peers) < _MIN_PEERS:
                    peers = [x for x in figures if x.daily_kwh is not None]
                kwh_med = (
                    median(x.daily_kwh for x in peers if x.daily_kwh is not None) if peers else None
                )
                spreads = [x.spread for x in peers if x.spread is not None]
                spread_med = median(spreads) if spreads else None
                norms = _Norms(
                    swipes=norm,
                    mad=mad,
                    card=card_norm,
                    unregistered=unregistered,
                    kwh=kwh_med,
                    spread=spread_med,
                    days=n_days,
                )
                self._judge(flat, fig, at, out, norms=norms)

    def _figures(
        self, flat: _Flat, card_rates: list[_CardUse], card_norm: float | None, n_days: int
    ) -> _Figures:
        cfg = self._cfg
        fig = _Figures()
        fig.active_cards = len(card_rates)
        est = 0
        for rate, swipes, paired, paired_days in card_rates:
            fig.paired += paired
            if card_norm and (
                rate >= cfg.shared_card_ratio * card_norm
                or (
                    rate >= cfg.paired_card_ratio * card_norm
                    and paired_days >= cfg.paired_min_days
                    and paired >= cfg.paired_min_share * swipes
                )
            ):
                fig.shared += 1
                est += min(cfg.max_persons_per_card, max(2, round(rate / card_norm)))
            else:
                est += 1
        fig.est = est
        fig.swipes_per_day = sum(flat.days) / n_days if n_days else 0.0
        meter = flat.meter
        if meter is not None:
            days = [d for d in meter.days if d is not None]
            if days:
                fig.daily_kwh = sum(d[0] for d in days) / len(days) * 24.0 / 1000.0
                evenings = [d[1] for d in days if d[1] is not None]
                valleys = [d[2] for d in days if d[2] is not None]
                if evenings:
                    fig.evening = sum(evenings) / len(evenings)
                if valleys:
                    fig.valley = sum(valleys) / len(valleys)
                if fig.evening is not None and fig.valley is not None:
                    fig.spread = fig.evening - fig.valley
        return fig

    def _judge(
        self,
        flat: _Flat,
        fig: _Figures,
        at: float,
        out: list[AlertChange],
        *,
        norms: _Norms,
    ) -> None:
        cfg = self._cfg
        flagged, n_signals, evidence = self._assess(flat, fig, at, norms)
        est = fig.est
        ep = flat.episode
        if ep is None:
            flat.streak = flat.streak + 1 if flagged else 0
            if flat.streak >= cfg.raise_after_days:
                self._raise(flat, at, evidence=evidence, est=est, n_signals=n_signals, out=out)
            return
        if flagged:
            flat.fails = 0
            flat.fail_since = None
            flat.evidence = evidence
            severity = _severity(n_signals)
            if SEVERITY_RANK[severity] <= SEVERITY_RANK[ep.severity]:
                severity = ep.severity
            if severity is not ep.severity or abs(est - flat.published_est) >= (
                cfg.occupants_update_step
            ):
                new = restate(ep, severity=severity, evidence=evidence)
                flat.episode = new
                flat.published_est = est
                out.append(AlertChange(Change.UPDATED, new))
            return
        flat.fails += 1
        if flat.fail_since is None:
            flat.fail_since = at
        if flat.fails < cfg.clear_after_days:
            flat.evidence = evidence
            return
        evidence["ended_by"] = ENDED_BY_GONE
        cleared = restate(ep, evidence=evidence, cleared_at=self._cal.dt(flat.fail_since))
        out.append(AlertChange(Change.CLEARED, cleared))
        flat.episode = None
        flat.evidence = None
        flat.fails = 0
        flat.fail_since = None
        flat.streak = 0

    def _assess(
        self, flat: _Flat, fig: _Figures, at: float, norms: _Norms
    ) -> tuple[bool, int, dict[str, EvidenceValue]]:
        """Whether the flat is suspected now, how many signals agree, and the evidence."""
        cfg = self._cfg
        unit = flat.unit
        est = fig.est
        rooms, area, registered = unit.rooms, unit.floor_area_m2, unit.registered_occupants
        explained = registered is not None and est <= registered + cfg.family_margin
        limits: list[str] = []
        if est:
            if rooms is not None and est > cfg.max_persons_per_room * rooms:
                limits.append("rooms")
            if area is not None and area / est < cfg.min_area_per_person_m2:
                limits.append("area")
            if est >= cfg.max_residents:
                limits.append("count")
        signals: list[str] = []
        if limits:
            signals.append(SIG_DENSITY)
        if registered is not None and est >= registered + cfg.over_registration_margin:
            signals.append(SIG_OVER_REGISTRATION)
        norm, mad = norms.swipes, norms.mad
        x = fig.swipes_per_day
        if (
            norm > 0
            and x >= cfg.swipes_min_ratio * norm
            and x >= norm + cfg.swipes_mad_k * max(_MAD_SCALE * mad, 0.1 * norm)
        ):
            signals.append(SIG_SWIPES)
        if fig.shared:
            signals.append(SIG_SHARED)
        kwh_ratio = spread_ratio = None
        if fig.daily_kwh is not None and norms.kwh:
            kwh_ratio = fig.daily_kwh / norms.kwh
        if fig.spread is not None and norms.spread:
            spread_ratio = fig.spread / norms.spread
        load = min(kwh_ratio or 0.0, spread_ratio or 0.0)
        if load >= cfg.load_ratio:
            signals.append(SIG_LOAD)
        hidden = load >= cfg.hidden_load_ratio and norms.unregistered >= cfg.hidden_min_unregistered
        if hidden:
            signals.append(SIG_HIDDEN)
        # Without density (the legal criterion) the usage must be strong: a flat-share within
        # the limits also swipes and cooks more than a couple.
        strong = bool(limits) or (
            hidden
            or fig.shared > 0
            or load >= cfg.strong_load_ratio
            or (norm > 0 and x >= cfg.strong_swipes_ratio * norm and SIG_SWIPES in signals)
        )
        # The load the registered household accounts for: explained_load_per_person times
        # similar flats' per registered person, at most explained_load_ratio.
        explains = cfg.explained_load_ratio
        if registered is not None:
            explains = min(explains, cfg.explained_load_per_person * registered)
        if explained and hidden and load >= explains:
            explained = False  # the registered household does not explain this load
        flagged = not explained and strong and len(signals) >= cfg.min_signals
        evidence: dict[str, EvidenceValue] = {
            "estimated_occupants": est,
            "registered_occupants": registered,
            "rooms": rooms,
            "floor_area_m2": area,
            "persons_per_room": r2(est / rooms) if rooms else None,
            "area_per_person_m2": r1(area / est) if area is not None and est else None,
            "density_limits": ",".join(limits),
            "explained_by_registration": explained,
            "registered_explains_load": r2(explains) if registered is not None else None,
            "active_cards": fig.active_cards,
            "swipes_per_day": r1(x),
            "building_norm_swipes_per_day": r1(norm),
            "building_mad_swipes_per_day": r1(mad),
            "card_norm_swipes_per_day": r1(norms.card) if norms.card is not None else None,
            "shared_cards": fig.shared,
            "paired_entries": fig.paired,
            "unregistered_cards": norms.unregistered,
            "evening_peak_w": r1(fig.evening) if fig.evening is not None else None,
            "valley_w": r1(fig.valley) if fig.valley is not None else None,
            "daily_kwh": r2(fig.daily_kwh) if fig.daily_kwh is not None else None,
            "daily_kwh_peer_median": r2(norms.kwh) if norms.kwh is not None else None,
            "load_vs_peers": r2(load)
            if kwh_ratio is not None and spread_ratio is not None
            else None,
            "evening_spread_peer_median_w": r1(norms.spread) if norms.spread is not None else None,
            "signals": ",".join(signals),
            "signal_count": len(signals),
            "window_days": norms.days,
            "evaluated_at": self._cal.iso(at),
            "ended_by": None,
        }
        return flagged, len(signals), evidence

    def _raise(
        self,
        flat: _Flat,
        at: float,
        *,
        evidence: dict[str, EvidenceValue],
        est: int,
        n_signals: int,
        out: list[AlertChange],
    ) -> None:
        ep = make_episode(
            KIND,
            _severity(n_signals),
            flat.subject,
            raised_at=self._cal.dt(at),
            evidence=evidence,
            scope=self._scope,
        )
        flat.episode = ep
        flat.evidence = evidence
        flat.published_est = est
        flat.fails = 0
        flat.fail_since = None
        out.append(AlertChange(Change.RAISED, ep))


def _severity(n_signals: int) -> Severity:
    if n_signals >= 3:
        return Severity.HIGH
    if n_signals == 2:
        return Severity.MEDIUM
    return Severity.LOW
