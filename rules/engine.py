"""The rule engine: routes typed events to the hazard rules and collects alert changes.

The same engine object serves the live agent (device events plus periodic ``Tick`` events from
its clock) and ``edge-agent replay`` (events read from a file, no ticks needed): rules never read
a clock, so the two produce the same episodes from the same events; ticks only make changes
visible sooner.

Routing, per event, in O(1):

- a ``Tick`` goes to every rule;
- a device event whose id (``sensor_id``, ``meter_id``, ``reader_id``) is not in the site is
  counted in :attr:`RuleEngine.ignored` and goes to no rule (its timestamp still lets time pass,
  see below); a sensor that is known but needs no rule (a ``bike_shed`` sensor) is not
  "ignored": the rule itself skips it;
- a known device event goes to the rules whose ``inputs`` contain its type;
- every other rule whose ``next_due`` is at or before the event's timestamp gets a ``Tick`` at
  that timestamp first, so time passes for all rules whichever device spoke (in replay, a meter
  reading at 21:05 lets a charging episode due at 21:04 be raised).

Within one ``process`` call, the changes of each rule are in time order; rules ticked for the
passage of time come before the rules the event was routed to.

Cost: each event's time is converted to POSIX seconds once (:class:`rules.common.Timebase`,
shared with the rules :func:`default_rules` builds), and each rule's ``next_due`` datetime is
converted once per value it takes, so the per-event work is float comparisons, not aware-datetime
comparisons (which call ``utcoffset`` on both sides when the events' tzinfo objects differ, as
they do for every line replay parses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime

from contract.alerts import AlertChange, AlertEpisode, AlertKind
from contract.events import CardSwipe, ChargingSensorReading, MeterReading, RuleInput, Tick
from contract.site import RulesConfig, Site
from rules.base import DeviceInput, Rule, episode_order
from rules.common import Timebase
from rules.data_silence import DataSilenceRule
from rules.ebike_charging import EbikeChargingRule
from rules.ebike_suspected import EbikeChargingSuspectedRule
from rules.group_rental import GroupRentalRule
from rules.overload import OverloadRule


def default_rules(
    site: Site, config: RulesConfig, *, scope: str = "", timebase: Timebase | None = None
) -> list[Rule]:
    """The rules the agent and replay run, one per alert kind.

    ``timebase`` is shared by the rules (and the engine) so an event's time is converted once.
    """
    tb = timebase or Timebase()
    return [
        EbikeChargingRule(site, config.ebike_charging, scope=scope),
        GroupRentalRule(site, config.suspected_group_rental, scope=scope, timebase=tb),
        EbikeChargingSuspectedRule(site, config.ebike_charging_suspected, scope=scope, timebase=tb),
        OverloadRule(site, config.overload, scope=scope, timebase=tb),
        DataSilenceRule(site, config.data_silence, scope=scope, timebase=tb),
    ]


_Process = Callable[[RuleInput], Sequence[AlertChange]]


class _Slot:
    """A rule and the memo of its ``next_due`` as seconds (converted once per value)."""

    __slots__ = ("due", "due_t", "rule")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.due: datetime | None = None
        self.due_t = 0.0


class RuleEngine:
    """Routes each event to the rules that need it.

    ``scope`` goes into every episode id (e.g. the site or gateway id), so two sites never share
    an id. ``rules`` replaces :func:`default_rules` (for tests or a subset of kinds).
    """

    def __init__(
        self,
        site: Site,
        config: RulesConfig,
        *,
        scope: str = "",
        rules: Sequence[Rule] | None = None,
    ) -> None:
        self._tb = Timebase()
        self._rules: tuple[Rule, ...] = tuple(
            default_rules(site, config, scope=scope, timebase=self._tb) if rules is None else rules
        )
        seen: set[AlertKind] = set()
        for rule in self._rules:
            if seen & rule.kinds:
                raise ValueError(f"alert kinds raised by two rules: {sorted(seen & rule.kinds)}")
            seen |= rule.kinds
        self._sensor_ids = frozenset(s.sensor_id for s in site.sensors)
        self._meter_ids = frozenset(m.meter_id for m in site.meters)
        self._reader_ids = frozenset(r.reader_id for r in site.readers)
        device_types: tuple[type[DeviceInput], ...] = (
            CardSwipe,
            MeterReading,
            ChargingSensorReading,
        )
        slots = {id(r): _Slot(r) for r in self._rules}
        self._all_slots = tuple(slots[id(r)] for r in self._rules)
        # Per event type: the bound ``process`` of the rules it goes to (bound once, not per
        # event), and the rules that only need time to pass.
        routes: dict[type[DeviceInput], tuple[tuple[_Process, ...], tuple[_Slot, ...]]] = {}
        for cls in device_types:
            routes[cls] = (
                tuple(r.process for r in self._rules if cls in r.inputs),
                tuple(slots[id(r)] for r in self._rules if cls not in r.inputs),
            )
        unknown: tuple[tuple[_Process, ...], tuple[_Slot, ...]] = ((), self._all_slots)
        self._unknown = unknown
        # Known device id -> (rules it goes to, rules that only need time to pass): one lookup.
        self._meter_routes = dict.fromkeys(self._meter_ids, routes[MeterReading])
        self._reader_routes = dict.fromkeys(self._reader_ids, routes[CardSwipe])
        self._sensor_routes = dict.fromkeys(self._sensor_ids, routes[ChargingSensorReading])
        self._now: datetime | None = None
        self._now_t = -math.inf
        self.ignored = 0
        """Device events for ids the site does not know (and events of unknown types)."""

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def now(self) -> datetime | None:
        """The latest event time seen (None before the first event)."""
        return self._now

    def process(self, event: RuleInput) -> list[AlertChange]:
        """Apply one event; return the alert changes it caused, oldest first per rule."""
        ts = event.ts
        tb = self._tb
        if ts is tb.ts:
            t = tb.t
        else:  # Timebase.seconds, inlined: this runs for every event
            t = tb.t = ts.timestamp()
            tb.ts = ts
        if t > self._now_t:
            self._now = ts
            self._now_t = t
        if type(event) is MeterReading:
            route = self._meter_routes.get(event.meter_id)
        elif type(event) is CardSwipe:
            route = self._reader_routes.get(event.reader_id)
        elif type(event) is ChargingSensorReading:
            route = self._sensor_routes.get(event.sensor_id)
        elif type(event) is Tick:
            out: list[AlertChange] = []
            for rule in self._rules:
                out += rule.process(event)
            return out
        else:
            self.ignored += 1
            return []
        if route is None:
            self.ignored += 1
            route = self._unknown
        targets, others = route
        out = []
        tick: Tick | None = None
        for slot in others:
            due = slot.rule.next_due
            if due is None:
                continue
            if due is not slot.due:
                slot.due = due
                slot.due_t = due.timestamp()
            if slot.due_t <= t:
                if tick is None:
                    tick = Tick(ts)
                out += slot.rule.process(tick)
        for process in targets:
            out += process(event)
        return out

    def open_episodes(self) -> list[AlertEpisode]:
        """The open episodes as last published, sorted by raised_at, kind, subject."""
        episodes = [ep for rule in self._rules for ep in rule.open_episodes()]
        episodes.sort(key=episode_order)
        return episodes

    def finish(self) -> list[AlertEpisode]:
        """The episodes still open at the end of input (``cleared_at`` None), evidence brought up
        to the latest event time, sorted by raised_at, kind, subject. Closes nothing; calling it
        twice gives the same answer.
        """
        if self._now is not None:
            tick = Tick(self._now)
            for rule in self._rules:
                # Every deadline at or before the latest event time has already fired (each event
                # ticks the rules that are due), so this only brings the rules' time forward.
                rule.process(tick)
        episodes = [ep for rule in self._rules for ep in rule.finish()]
        episodes.sort(key=episode_order)
        return episodes
