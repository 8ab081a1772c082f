"""The ``overload`` rule: a flat's current above its rated current for a sustained time.

Why it is a hazard, and where the defaults come from: a flat's main breaker is typically rated
32-63 A; current above the rating for minutes on end means too many high-power appliances at
once or private wiring (私拉乱接 / 大功率电器, seed 002's fire hazards), and the wiring heats. A
breaker built to IEC 60898-1 / GB/T 10963.1 may carry 1.13 times its rating for an hour but must
trip within the hour at 1.45 times (the conventional tripping current): a flat that sustains
1.45 times its rating, or stays over it for an hour, has a breaker that is bypassed or oversized,
hence severity high. Thresholds come from :class:`contract.site.OverloadConfig` (defaults:
sustain 5 min, clear below 95 % of the rating for 3 min, readings believed for 3 min).

Semantics, per meter (the spec in ``spec/replay.md`` plus the choices where it is silent):

Current
    ``current_a`` when the reading has it ("measured"). Otherwise it is derived from the power:
    ``power_w / (voltage_v * power_factor)``, with ``voltage_v`` replaced by the nominal 220 V
    (``nominal_voltage_v``) when the reading has no voltage and ``power_factor`` by 1 when it has
    none (so a derived current never overstates). ``current_source`` in the evidence says which.

Rating
    The flat's ``rated_current_a``; a flat without one uses ``default_rated_current_a``, and when
    that is None (the default) the flat is skipped: guessing a 40 A breaker in a flat wired for
    63 A would raise false alarms, and one wired for 20 A would be missed either way.
    ``rated_source`` says "unit" or "default".

Time
    As in the ``ebike_charging`` rule: time comes only from events; a reading is assumed to hold
    until the next one, for at most ``stale_after_s``; thresholds are evaluated at the exact
    instant they are reached and detected at the first event or ``Tick`` at or after it (from
    any device), deadlines at or before an event's time fire before the event is applied, and a
    reading older than the latest time seen is applied at that latest time (``late``).

Raising
    A run starts at the first reading above the rating (``over_since``). Any reading at or below
    the rating before the raise ends the run (the overload must be continuous), and so does
    ``stale_after_s`` without a reading. At ``over_since + sustain_s`` the episode is raised with
    that instant as ``raised_at``: with 10 s readings, a run whose first reading at or below the
    rating comes 4:59 after ``over_since`` raises nothing, one that comes at 5:00 raises (the
    reading before it is believed until then).

Clearing (hysteresis)
    A reading below ``clear_ratio`` times the rating (95 %) while an episode is open starts a
    pending clear; a reading at or above that level before ``clear_after_s`` has passed cancels
    it. When below-95 % has held ``clear_after_s``, the episode clears with ``cleared_at`` = the
    first reading of that run, ``ended_by`` = "below_rating". An open episode survives a gap in
    the readings shorter than ``episode_stale_s`` (30 min: meters miss polls, and a gap does not
    end an overload); a meter silent that long clears it at last reading + ``episode_stale_s``
    (``ended_by`` = "silence"). Together the sustain and the hysteresis are the minimum episode
    length and the minimum gap: nothing shorter than 5 min becomes an episode, and a dip shorter
    than 3 min does not split one, so an alert cannot flap.

Severity and updates
    ``high`` when the peak reaches ``high_ratio`` (1.45) times the rating or the overload has
    lasted ``high_after_s`` (1 h), ``medium`` otherwise; escalation is published as UPDATED (at
    the reading that crosses 1.45, or at ``over_since + 1 h``), and severity never de-escalates.
    UPDATED is also published when the peak current rises by ``peak_update_ratio`` (10 %) over
    the last published peak; nothing else re-publishes.

Evidence
    ``rated_current_a``, ``rated_source``, ``peak_current_a`` (max current of the episode's
    readings), ``mean_current_a`` (mean current of the readings from ``over_since`` until a clear
    starts), ``minutes_over`` (from ``over_since`` to the state's time: the raise, the update,
    the first reading below 95 %, or the latest time seen), ``over_since`` (ISO),
    ``peak_power_w``, ``current_source``, ``last_reading_at`` (ISO) and ``ended_by`` (None while
    open, "below_rating" or "silence").

Subject
    ``unit_id`` and ``meter_id``. Times in episodes and evidence are in the site's timezone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from contract.alerts import (
    AlertChange,
    AlertEpisode,
    AlertKind,
    Change,
    EvidenceValue,
    Severity,
    Subject,
)
from contract.events import MeterReading, RuleInput
from contract.site import OverloadConfig, Site
from rules.base import NO_CHANGES
from rules.common import (
    Deadlines,
    SiteCalendar,
    Timebase,
    make_episode,
    r1,
    r2,
    restate,
    site_zone,
)

KIND = AlertKind.OVERLOAD

ENDED_BY_BELOW = "below_rating"
ENDED_BY_SILENCE = "silence"

_MEASURED = 1
_FROM_VOLTAGE = 2
_FROM_NOMINAL = 4

_RAISE = 0
_DROP_RUN = 1
_CLEAR = 2
_STALE = 3
_ESCALATE = 4


class _Meter:
    """Mutable state of one rated meter (one object per meter, reused)."""

    __slots__ = (
        "clear_since",
        "episode",
        "high",
        "index",
        "last",
        "n",
        "peak",
        "peak_power",
        "published_peak",
        "rated",
        "rated_source",
        "scheduled",
        "since",
        "sources",
        "subject",
        "total",
    )

    def __init__(self, index: int, subject: Subject, rated: float, rated_source: str) -> None:
        self.index = index
        self.subject = subject
        self.rated = rated
        self.rated_source = rated_source
        self.last = 0.0  # latest reading (seconds)
        self.since: float | None = None  # first reading of the over run (open episode: kept)
        self.peak = 0.0
        self.peak_power = 0.0
        self.total = 0.0  # sum of currents from since until a clear starts
        self.n = 0
        self.sources = 0
        self.episode: AlertEpisode | None = None
        self.published_peak = 0.0
        self.clear_since: float | None = None
        self.high = False
        self.scheduled: float | None = None


class OverloadRule:
    """Current above the flat's rated current for ``sustain_s`` (default 5 min).

    See the module docstring for the semantics; the breaker figures behind the severity are
    IEC 60898-1 / GB/T 10963.1 (conventional tripping current 1.45 In within 1 h).
    """

    kinds: frozenset[AlertKind] = frozenset({KIND})
    inputs: frozenset[type[MeterReading]] = frozenset({MeterReading})

    def __init__(
        self,
        site: Site,
        config: OverloadConfig,
        *,
        scope: str = "",
        timebase: Timebase | None = None,
    ) -> None:
        tz = site_zone(site)
        self._cal = SiteCalendar(tz)
        self._scope = scope
        self._tb = timebase or Timebase()
        self._sustain = config.sustain_s
        self._clear_ratio = config.clear_ratio
        self._clear_after = config.clear_after_s
        self._stale = config.stale_after_s
        self._episode_stale = config.episode_stale_s
        self._nominal_v = config.nominal_voltage_v
        self._high_ratio = config.high_ratio
        self._high_after = config.high_after_s
        self._peak_ratio = config.peak_update_ratio
        units = {u.unit_id: u for u in site.units}
        self._meters: dict[str, _Meter] = {}
        self._by_index: list[_Meter] = []
        for placement in site.meters:
            unit = units[placement.unit_id]
            rated, source = unit.rated_current_a, "unit"
            if rated is None:
                rated, source = config.default_rated_current_a, "default"
            if rated is None:
                continue  # no rating and no default: the flat is skipped (documented)
            subject = Subject(unit_id=unit.unit_id, meter_id=placement.meter_id)
            st = _Meter(len(self._by_index), subject, rated, source)
            self._meters[placement.meter_id] = st
            self._by_index.append(st)
        self._deadlines = Deadlines(tz)
        self._heap = self._deadlines.heap
        self._now = -math.inf
        self.late = 0
        """Readings older than the latest time seen (applied at that time)."""

    # -- the Rule interface --------------------------------------------------------------------

    @property
    def next_due(self) -> datetime | None:
        return self._deadlines.next_due

    def process(self, event: RuleInput) -> Sequence[AlertChange]:
        if type(event) is MeterReading and not self._heap:
            # The common case, kept cheap: no deadline pending and a reading at or below the
            # rating of a meter with no run. Nothing can change, so time is not even read
            # (finish() is brought up to date by the engine's final Tick).
            st = self._meters.get(event.meter_id)
            if st is None:
                return NO_CHANGES
            current = event.current_a
            if current is not None and current <= st.rated and st.since is None:
                return NO_CHANGES
        ts = event.ts
        tb = self._tb
        t = tb.t if ts is tb.ts else tb.seconds(ts)
        now = self._now
        if t > now:
            self._now = now = t
        out: list[AlertChange] | None = None
        heap = self._heap
        if heap and heap[0][0] <= now:
            out = []
            self._advance(now, out)
        if type(event) is MeterReading:
            st = self._meters.get(event.meter_id)
            if st is not None:
                current = event.current_a
                source = _MEASURED
                if current is None:
                    current, source = self._derive(event)
                if current > st.rated or st.since is not None:
                    if t < now:
                        self.late += 1
                    if out is None:
                        out = []
                    self._reading(st, now, current, power=event.power_w, source=source, out=out)
                    if heap and heap[0][0] <= now:  # zero thresholds: due at once
                        self._advance(now, out)
        return out or NO_CHANGES

    def open_episodes(self) -> list[AlertEpisode]:
        return [st.episode for st in self._by_index if st.episode is not None]

    def finish(self) -> list[AlertEpisode]:
        now = self._now
        if now == -math.inf:
            return []
        return [
            restate(st.episode, evidence=self._evidence(st, now, None))
            for st in self._by_index
            if st.episode is not None
        ]

    # -- readings ------------------------------------------------------------------------------

    def _derive(self, event: MeterReading) -> tuple[float, int]:
        volts = event.voltage_v
        source = _FROM_VOLTAGE
        if volts is None or volts <= 0:
            volts, source = self._nominal_v, _FROM_NOMINAL
        pf = event.power_factor
        if pf is not None and 0 < pf <= 1:
            volts *= pf
        return abs(event.power_w) / volts, source

    def _reading(
        self,
        st: _Meter,
        now: float,
        current: float,
        *,
        power: float,
        source: int,
        out: list[AlertChange],
    ) -> None:
        st.last = now
        rated = st.rated
        if current > rated:
            if st.since is None:  # a new run (no episode can be open without a run)
                st.since = now
                st.peak = current
                st.peak_power = power
                st.total = current
                st.n = 1
                st.sources = source
                self._reschedule(st)
                return
            if st.clear_since is not None:  # over again within the hysteresis: same episode
                st.clear_since = None
                self._reschedule(st)
            self._accumulate(st, current, power, source)
            ep = st.episode
            if ep is None:
                return
            severity = ep.severity
            if not st.high and st.peak >= self._high_ratio * rated:
                st.high = True
                severity = Severity.HIGH
            published = st.published_peak
            peak_moved = st.peak > published and st.peak >= published * self._peak_ratio
            if severity is not ep.severity or peak_moved:
                self._update(st, ep, severity, now, out)
        elif st.episode is None:
            st.since = None  # the overload must be continuous
        elif current >= self._clear_ratio * rated:
            if st.clear_since is not None:  # not below 95 % any more: the clear is cancelled
                st.clear_since = None
                self._reschedule(st)
            self._accumulate(st, current, power, source)
        elif st.clear_since is None:
            st.clear_since = now
            self._reschedule(st)

    @staticmethod
    def _accumulate(st: _Meter, current: float, power: float, source: int) -> None:
        st.total += current
        st.n += 1
        st.sources |= source
        st.peak = max(st.peak, current)
        st.peak_power = max(st.peak_power, power)

    # -- deadlines -----------------------------------------------------------------------------

    def _reschedule(self, st: _Meter) -> None:
        nxt = self._next(st)
        if nxt is not None and (st.scheduled is None or nxt[0] < st.scheduled):
            st.scheduled = nxt[0]
            self._deadlines.push(nxt[0], st.index)

    def _next(self, st: _Meter) -> tuple[float, int] | None:
        since = st.since
        if since is None:
            return None
        if st.episode is None:
            stale_at = st.last + self._stale
            raise_at = since + self._sustain
            if raise_at <= stale_at:
                return raise_at, _RAISE
            return stale_at, _DROP_RUN
        stale_at = st.last + self._episode_stale  # an open episode survives a short gap
        if st.clear_since is not None:
            return min(st.clear_since + self._clear_after, stale_at), _CLEAR
        if not st.high and since + self._high_after < stale_at:
            return since + self._high_after, _ESCALATE
        return stale_at, _STALE

    def _advance(self, now: float, out: list[AlertChange]) -> None:
        self._deadlines.run_due(
            now, self._by_index, self._next, lambda st, at, action: self._fire(st, at, action, out)
        )

    def _fire(self, st: _Meter, at: float, action: int, out: list[AlertChange]) -> None:
        if action == _RAISE:
            self._raise(st, at, out)
        elif action == _DROP_RUN:
            st.since = None
        elif action == _ESCALATE:
            st.high = True
            ep = st.episode
            if ep is not None:
                self._update(st, ep, Severity.HIGH, at, out)
        elif st.clear_since is not None:  # _CLEAR (or silence while a clear is pending)
            self._clear(st, st.clear_since, ENDED_BY_BELOW, out)
        else:  # _STALE
            self._clear(st, at, ENDED_BY_SILENCE, out)

    # -- episodes ------------------------------------------------------------------------------

    def _raise(self, st: _Meter, at: float, out: list[AlertChange]) -> None:
        assert st.since is not None
        st.high = st.peak >= self._high_ratio * st.rated or self._sustain >= self._high_after
        ep = make_episode(
            KIND,
            Severity.HIGH if st.high else Severity.MEDIUM,
            st.subject,
            raised_at=self._cal.dt(at),
            evidence=self._evidence(st, at, None),
            scope=self._scope,
        )
        st.episode = ep
        st.published_peak = st.peak
        out.append(AlertChange(Change.RAISED, ep))

    def _update(
        self, st: _Meter, ep: AlertEpisode, severity: Severity, at: float, out: list[AlertChange]
    ) -> None:
        new = restate(ep, severity=severity, evidence=self._evidence(st, at, None))
        st.episode = new
        st.published_peak = st.peak
        out.append(AlertChange(Change.UPDATED, new))

    def _clear(self, st: _Meter, at: float, ended_by: str, out: list[AlertChange]) -> None:
        ep = st.episode
        assert ep is not None
        cleared = restate(
            ep, evidence=self._evidence(st, at, ended_by), cleared_at=self._cal.dt(at)
        )
        out.append(AlertChange(Change.CLEARED, cleared))
        st.episode = None
        st.since = None
        st.clear_since = None
        st.high = False

    def _evidence(self, st: _Meter, until: float, ended_by: str | None) -> dict[str, EvidenceValue]:
        assert st.since is not None
        end = st.clear_since if st.clear_since is not None else until
        cal = self._cal
        return {
            "rated_current_a": st.rated,
            "rated_source": st.rated_source,
            "peak_current_a": r2(st.peak),
            "mean_current_a": r2(st.total / st.n) if st.n else None,
            "minutes_over": r1(max(0.0, end - st.since) / 60.0),
            "over_since": cal.iso(st.since),
            "peak_power_w": r1(st.peak_power),
            "current_source": _source_text(st.sources, self._nominal_v),
            "last_reading_at": cal.iso(st.last),
            "ended_by": ended_by,
        }


def _source_text(sources: int, nominal: float) -> str:
    parts = []
    if sources & _MEASURED:
        parts.append("measured current_a")
    if sources & _FROM_VOLTAGE:
        parts.append("derived from power_w / voltage_v")
    if sources & _FROM_NOMINAL:
        parts.append(f"derived from power_w / {nominal:g} V nominal")
    return "; ".join(parts)
