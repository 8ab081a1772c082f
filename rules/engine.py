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
shared with the rules :func:`default_rules` builds), or not at all when the caller passes the
seconds (replay reads them from the text); each rule's ``next_due`` is read again (and
converted to seconds) only after the rule has processed something, so the per-event work is a
few float comparisons, not aware-datetime comparisons (which call ``utcoffset`` on both sides
when the events' tzinfo objects differ, as they do for every line replay parses). While the
events keep one route (a run of meter readings, nine events in ten), even those comparisons
are skipped: the earliest deadline of the route's idle rules is memoised, and only the route's
own rules have processed anything since. Every meter reading is recorded in a
:class:`rules.common.MeterLog` shared with the rules, so the rules that need only each meter's
latest state are not called for every reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime

from contract.alerts import AlertChange, AlertEpisode, AlertKind
from contract.events import CardSwipe, ChargingSensorReading, MeterReading, RuleInput, Tick
from contract.site import RulesConfig, Site
from rules.base import DeviceInput, Rule, episode_order
from rules.common import MeterEntry, MeterLog, Timebase
from rules.data_silence import DataSilenceRule
from rules.ebike_charging import EbikeChargingRule
from rules.ebike_suspected import EbikeChargingSuspectedRule
from rules.group_rental import GroupRentalRule
from rules.overload import OverloadRule


def default_rules(
    site: Site,
    config: RulesConfig,
    *,
    scope: str = "",
    timebase: Timebase | None = None,
    meter_log: MeterLog | None = None,
) -> list[Rule]:
    """The rules the agent and replay run, one per alert kind.

    ``timebase`` is shared by the rules (and the engine) so an event's time is converted once;
    ``meter_log``, kept by the engine, lets the rules that need only each meter's latest reading
    skip the others (without one, those rules take meter readings themselves).
    """
    tb = timebase or Timebase()
    return [
        EbikeChargingRule(site, config.ebike_charging, scope=scope),
        GroupRentalRule(
            site, config.suspected_group_rental, scope=scope, timebase=tb, meter_log=meter_log
        ),
        EbikeChargingSuspectedRule(site, config.ebike_charging_suspected, scope=scope, timebase=tb),
        OverloadRule(site, config.overload, scope=scope, timebase=tb),
        DataSilenceRule(site, config.data_silence, scope=scope, timebase=tb, meter_log=meter_log),
    ]


_Process = Callable[[RuleInput], Sequence[AlertChange]]


class _Slot:
    """A rule, its bound ``process``, and the memo of its ``next_due`` in seconds (read again
    only after the rule has processed something: nothing else changes it)."""

    __slots__ = ("due_t", "process", "rule", "stale")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.process: _Process = rule.process
        self.due_t = math.inf
        self.stale = True

    def refresh(self) -> None:
        due = self.rule.next_due
        self.due_t = math.inf if due is None else due.timestamp()
        self.stale = False


class _Route:
    """Where one kind of device event goes: ``targets`` get the event, ``others`` only need
    time to pass. ``quiet_t`` is the earliest ``due_t`` of ``others`` as of the last event that
    took this route (see :meth:`RuleEngine.process`)."""

    __slots__ = ("others", "quiet_t", "targets")

    def __init__(self, targets: tuple[_Slot, ...], others: tuple[_Slot, ...]) -> None:
        self.targets = targets
        self.others = others
        self.quiet_t = -math.inf


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
        self._meter_log = MeterLog(m.meter_id for m in site.meters)
        self._rules: tuple[Rule, ...] = tuple(
            default_rules(site, config, scope=scope, timebase=self._tb, meter_log=self._meter_log)
            if rules is None
            else rules
        )
        seen: set[AlertKind] = set()
        for rule in self._rules:
            if seen & rule.kinds:
                raise ValueError(f"alert kinds raised by two rules: {sorted(seen & rule.kinds)}")
            seen |= rule.kinds
        self._slots = tuple(_Slot(r) for r in self._rules)
        device_types: tuple[type[DeviceInput], ...] = (
            CardSwipe,
            MeterReading,
            ChargingSensorReading,
        )
        # Per event type: the rules it goes to, and the rules that only need time to pass.
        routes = {
            cls: _Route(
                tuple(s for s in self._slots if cls in s.rule.inputs),
                tuple(s for s in self._slots if cls not in s.rule.inputs),
            )
            for cls in device_types
        }
        self._unknown = _Route((), self._slots)
        # Known device id -> its route (meters: their entry in the meter log, the route is
        # the same for all): one lookup per event.
        self._meter_route = routes[MeterReading]
        self._meter_entries = self._meter_log.entries
        self._reader_routes = dict.fromkeys((r.reader_id for r in site.readers), routes[CardSwipe])
        self._sensor_routes = dict.fromkeys(
            (s.sensor_id for s in site.sensors), routes[ChargingSensorReading]
        )
        self._quiet_route: _Route | None = None
        """The route of the latest event, when its ``quiet_t`` is still valid."""
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

    def process(self, event: RuleInput, t: float | None = None) -> list[AlertChange]:
        """Apply one event; return the alert changes it caused, oldest first per rule.

        ``t`` is the event's time in POSIX seconds when the caller already has it (replay
        parses it from the text); it must equal ``event.ts.timestamp()``.
        """
        ts = event.ts
        tb = self._tb
        if t is not None:
            tb.ts = ts
            tb.t = t
        elif ts is tb.ts:
            t = tb.t
        else:  # Timebase.seconds, inlined: this runs for every event
            t = tb.t = ts.timestamp()
            tb.ts = ts
        if t > self._now_t:
            self._now = ts
            self._now_t = t
        entry: MeterEntry | None = None
        reading: MeterReading | None = None
        if type(event) is MeterReading:
            entry = self._meter_entries.get(event.meter_id)
            if entry is None:
                route = self._unknown
            else:
                route = self._meter_route
                reading = event
        elif type(event) is CardSwipe:
            route = self._reader_routes.get(event.reader_id, self._unknown)
        elif type(event) is ChargingSensorReading:
            route = self._sensor_routes.get(event.sensor_id, self._unknown)
        elif type(event) is Tick:
            out: list[AlertChange] = []
            for slot in self._slots:
                out += slot.process(event)
                slot.stale = True
            self._quiet_route = None
            return out
        else:
            self.ignored += 1
            return []
        if route is self._unknown:
            self.ignored += 1
        out = []
        # The rules that only need time to pass: skipped as a whole while the event is earlier
        # than all their deadlines. The memo holds while the events keep the same route: only
        # this route's targets process them, and those are not among its others.
        if route is not self._quiet_route or t >= route.quiet_t:
            tick: Tick | None = None
            quiet = math.inf
            for slot in route.others:
                if slot.stale:
                    slot.refresh()
                if slot.due_t <= t:
                    if tick is None:
                        tick = Tick(ts)
                    changes = slot.process(tick)
                    if changes:
                        out += changes
                    slot.refresh()
                quiet = min(quiet, slot.due_t)
            route.quiet_t = quiet
            self._quiet_route = route
        if entry is not None:
            if t >= entry.t:  # MeterLog.record, inlined
                entry.t = t
                entry.reading = reading
            if entry.watcher is not None:
                watcher, entry.watcher = entry.watcher, None
                out += watcher(event)
                for slot in self._slots:  # rare: a silent meter spoke again
                    slot.stale = True
                self._quiet_route = None
        for slot in route.targets:
            changes = slot.process(event)
            slot.stale = True
            if changes:
                out += changes
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
            for slot in self._slots:
                slot.stale = True
            self._quiet_route = None
        episodes = [ep for rule in self._rules for ep in rule.finish()]
        episodes.sort(key=episode_order)
        return episodes
