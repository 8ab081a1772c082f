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
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from contract.alerts import AlertChange, AlertEpisode, AlertKind
from contract.events import CardSwipe, ChargingSensorReading, MeterReading, RuleInput, Tick
from contract.site import RulesConfig, Site
from rules.base import DeviceInput, Rule, episode_order
from rules.ebike_charging import EbikeChargingRule


def default_rules(site: Site, config: RulesConfig, *, scope: str = "") -> list[Rule]:
    """The rules the agent and replay run (more kinds slot in here as they are written)."""
    return [EbikeChargingRule(site, config.ebike_charging, scope=scope)]


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
        self._rules: tuple[Rule, ...] = tuple(
            default_rules(site, config, scope=scope) if rules is None else rules
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
        self._targets: dict[type[DeviceInput], tuple[Rule, ...]] = {}
        self._others: dict[type[DeviceInput], tuple[Rule, ...]] = {}
        for cls in device_types:
            self._targets[cls] = tuple(r for r in self._rules if cls in r.inputs)
            self._others[cls] = tuple(r for r in self._rules if cls not in r.inputs)
        self._now: datetime | None = None
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
        if self._now is None or ts > self._now:
            self._now = ts
        cls: type[DeviceInput]
        if type(event) is ChargingSensorReading:
            cls, known = ChargingSensorReading, event.sensor_id in self._sensor_ids
        elif type(event) is MeterReading:
            cls, known = MeterReading, event.meter_id in self._meter_ids
        elif type(event) is CardSwipe:
            cls, known = CardSwipe, event.reader_id in self._reader_ids
        elif type(event) is Tick:
            out: list[AlertChange] = []
            for rule in self._rules:
                out += rule.process(event)
            return out
        else:
            self.ignored += 1
            return []
        out = []
        if known:
            targets = self._targets[cls]
            others = self._others[cls]
        else:
            self.ignored += 1
            targets = ()
            others = self._rules
        tick: Tick | None = None
        for rule in others:
            due = rule.next_due
            if due is not None and due <= ts:
                if tick is None:
                    tick = Tick(ts)
                out += rule.process(tick)
        for rule in targets:
            out += rule.process(event)
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
