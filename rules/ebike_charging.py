"""The ``ebike_charging`` rule: a charging sensor reports charging where charging is forbidden.

Why it is a hazard, and where the defaults come from: parking or charging e-bikes in lobbies,
corridors, stairwells and exits is forbidden by 高层民用建筑消防安全管理规定 (2021) art. 37;
charging e-bikes or their batteries inside residential buildings is forbidden by
上海市非机动车安全管理条例 (amended 2024). So every sensor location except ``bike_shed`` (the
place where charging is provided) is a forbidden place, and the escape routes (stairwell,
corridor, lobby) are the worst: a battery fire there blocks the way out. Night-time charging is
the classic fatal case (people asleep), hence night hours raise the severity. Thresholds come
from :class:`contract.site.EbikeChargingConfig` (defaults: sustain 120 s, clear hysteresis 60 s,
silence 3600 s, resume within 6 h, night 22:00-06:00 site local time).

Semantics, per sensor (the spec in ``spec/replay.md`` plus the choices where it is silent):

Time
    Time comes only from event timestamps. A sensor's last report is assumed to hold until the
    next report, for at most ``stale_after_s``. Every threshold is evaluated at the exact instant
    it is reached (e.g. ``raised_at`` = first charging report + ``min_duration_s``) and detected at
    the first event or :class:`~contract.events.Tick` at or after that instant, from any device:
    how often ticks come changes only *when* a change is reported, never its content. Deadlines
    at or before an event's timestamp fire before the event is applied. A report older than the
    latest time the rule has seen is applied at that latest time (time never goes backwards) and
    counted in ``late``.

Raising
    A run starts at the first charging report (``charging_since``). Any not-charging report before
    the raise ends the run (the sustain must be uninterrupted; hysteresis applies only to an open
    episode). If the sensor stays silent for ``stale_after_s`` before the threshold, the run is
    dropped. When ``charging_since + min_duration_s`` is reached (and is not after the run went
    stale), the episode is raised with that instant as ``raised_at``. Sensors in a ``bike_shed``
    never raise.

Severity
    ``high`` in an escape route (stairwell, corridor, lobby), or when charging was observed (or
    assumed, see Time) during night hours between ``charging_since`` and ``raised_at``; ``medium``
    otherwise. A ``medium`` episode still open at the next night start with charging ongoing (no
    clear pending) is escalated to ``high`` (UPDATED); a charging report at or after that night
    start escalates too (covers a pending clear that was then cancelled). Severity never
    de-escalates (no flapping at 06:00). Night is ``night_start_hour <= h < night_end_hour``,
    wrapping past midnight when start > end; start == end means no night hours.

Clearing
    A not-charging report while an episode is open starts a pending clear; a charging report
    before ``clear_after_s`` has passed cancels it (the same episode continues, nothing is
    emitted). When the not-charging has held ``clear_after_s``, the episode clears with
    ``cleared_at`` = the first not-charging report of that run, ``ended_by`` = "not_charging".
    If the sensor sends nothing for ``stale_after_s`` while an episode is open, the episode is
    *held*: a BLE sensor drops out for minutes to hours (interference, the bike's frame) while
    the charger stays plugged in, and one charging session must stay one episode. A charging
    report within ``resume_within_s`` of the last report continues the same episode (nothing
    is emitted). A not-charging report, or no report until ``resume_within_s`` after the last
    one, clears it with ``cleared_at`` = last report + ``stale_after_s`` (the instant the last
    report stopped being believed; always >= ``raised_at``), ``ended_by`` = "silence"; a
    charging report after that is a new run. With ``resume_within_s`` <= ``stale_after_s``
    the silence clears at once. A new charging report after a clear starts a new run (a new
    episode needs a full sustain again).

Updates
    UPDATED is emitted only when the severity escalates or the peak power changes materially:
    power reported for the first time, or a peak at least 10 % above the last published peak.
    Reports alone (more counts, longer duration) do not emit.

Evidence
    ``peak_power_w`` (max power in charging reports of the run, None if none carried power),
    ``charging_since`` (ISO time of the first charging report), ``duration_s`` (from
    ``charging_since`` to the state's time: the raise instant, the update, ``cleared_at``, or the
    latest time seen for :meth:`EbikeChargingRule.finish`), ``location`` ("unit", "stairwell",
    ...), ``reports`` (charging reports in the run), ``last_report_at`` (ISO time of the sensor's
    latest report of any kind) and ``ended_by`` (None while open, "not_charging" or "silence").

Subject and ids
    ``sensor_id`` plus ``unit_id`` for a sensor in a unit; ``sensor_id`` plus ``building`` for
    other locations (the sensor's building, or its unit's building when only ``unit_id`` is
    given). All times in episodes and evidence are expressed in the site's timezone, so the
    episode id (:func:`contract.alerts.episode_id`, which hashes ``raised_at.isoformat()``) does
    not depend on the offset the input happened to use.
"""

from __future__ import annotations

import heapq
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contract.alerts import (
    AlertChange,
    AlertEpisode,
    AlertKind,
    Change,
    EvidenceValue,
    Severity,
    Subject,
    episode_id,
)
from contract.events import ChargingSensorReading, RuleInput
from contract.site import EbikeChargingConfig, Location, SensorPlacement, Site

KIND = AlertKind.EBIKE_CHARGING
ESCAPE_ROUTES = frozenset({Location.STAIRWELL, Location.CORRIDOR, Location.LOBBY})

ENDED_BY_NOT_CHARGING = "not_charging"
ENDED_BY_SILENCE = "silence"

# What a sensor's next deadline does (see EbikeChargingRule._next).
_RAISE = 0
_DROP_RUN = 1
_CLEAR = 2
_STALE = 3
_NIGHT = 4
_GIVE_UP = 5  # held silent for resume_within_s: clear


class _Sensor:
    """Mutable state of one sensor in a forbidden place (one object per sensor, reused)."""

    __slots__ = (
        "clear_since",
        "episode",
        "index",
        "last_ts",
        "location",
        "night_at",
        "peak",
        "published_peak",
        "reports",
        "scheduled",
        "silent_at",
        "since",
        "subject",
    )

    def __init__(self, index: int, subject: Subject, location: Location) -> None:
        self.index = index
        self.subject = subject
        self.location = location
        self.last_ts: datetime | None = None  # latest report of any kind
        self.since: datetime | None = None  # first charging report of the current run
        self.reports = 0  # charging reports in the current run
        self.peak: float | None = None  # max power of the current run
        self.episode: AlertEpisode | None = None  # last published state while open
        self.published_peak: float | None = None
        self.clear_since: datetime | None = None  # first not-charging report, episode open
        self.night_at: datetime | None = None  # medium episode: next night start
        self.silent_at: datetime | None = None  # held open since the sensor went silent
        self.scheduled: datetime | None = None  # earliest heap entry of this sensor


class EbikeChargingRule:
    """E-bike charging in a forbidden place, from charging sensors.

    Defaults follow 高层民用建筑消防安全管理规定 (2021) art. 37 (no e-bike parking or charging in
    lobbies, corridors, stairwells, exits) and 上海市非机动车安全管理条例 (amended 2024, no
    charging inside residential buildings); see the module docstring for the exact semantics.
    """

    kinds: frozenset[AlertKind] = frozenset({KIND})
    inputs: frozenset[type[ChargingSensorReading]] = frozenset({ChargingSensorReading})

    def __init__(self, site: Site, config: EbikeChargingConfig, *, scope: str = "") -> None:
        try:
            self._tz = ZoneInfo(site.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"site timezone {site.timezone!r} is not a known zone") from exc
        self._scope = scope
        self._min = timedelta(seconds=config.min_duration_s)
        self._clear_after = timedelta(seconds=config.clear_after_s)
        self._stale = timedelta(seconds=config.stale_after_s)
        self._resume = timedelta(seconds=max(config.resume_within_s, config.stale_after_s))
        self._hold = config.resume_within_s > config.stale_after_s
        self._peak_ratio = config.peak_update_ratio
        self._night_start = config.night_start_hour
        self._night_end = config.night_end_hour
        building_of = {u.unit_id: u.building for u in site.units}
        self._sensors: dict[str, _Sensor] = {}
        self._by_index: list[_Sensor] = []
        for placement in site.sensors:
            if placement.location is Location.BIKE_SHED:
                continue  # charging is allowed there: the rule keeps no state for it
            st = _Sensor(len(self._by_index), _subject(placement, building_of), placement.location)
            self._sensors[placement.sensor_id] = st
            self._by_index.append(st)
        self._heap: list[tuple[datetime, int]] = []
        self._now: datetime | None = None
        self.late = 0
        """Reports older than the latest time seen (applied at that time)."""

    # -- the Rule interface --------------------------------------------------------------------

    @property
    def next_due(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def process(self, event: RuleInput) -> list[AlertChange]:
        ts = event.ts
        now = self._now
        if now is None or ts > now:
            self._now = now = ts
        out: list[AlertChange] = []
        heap = self._heap
        if heap and heap[0][0] <= now:
            self._advance(now, out)
        if type(event) is ChargingSensorReading:
            st = self._sensors.get(event.sensor_id)
            if st is None:
                return out
            if ts < now:
                self.late += 1
            if event.charging:
                self._charging(st, now, event.power_w, out)
            else:
                self._not_charging(st, now, out)
            if heap and heap[0][0] <= now:  # zero thresholds: due at once
                self._advance(now, out)
        return out

    def open_episodes(self) -> list[AlertEpisode]:
        return [st.episode for st in self._by_index if st.episode is not None]

    def finish(self) -> list[AlertEpisode]:
        now = self._now
        result: list[AlertEpisode] = []
        for st in self._by_index:
            ep = st.episode
            if ep is None or now is None:
                continue
            result.append(
                AlertEpisode(
                    kind=KIND,
                    severity=ep.severity,
                    subject=ep.subject,
                    raised_at=ep.raised_at,
                    evidence=self._evidence(st, now, None),
                    id=ep.id,
                )
            )
        return result

    # -- reports -------------------------------------------------------------------------------

    def _charging(
        self, st: _Sensor, now: datetime, power: float | None, out: list[AlertChange]
    ) -> None:
        st.last_ts = now
        if power is not None and (st.peak is None or power > st.peak):
            st.peak = power
        if st.since is None:  # a new run (no episode can be open without a run)
            st.since = now
            st.reports = 1
            self._reschedule(st)
            return
        st.reports += 1
        ep = st.episode
        if ep is None:
            return
        if st.silent_at is not None:  # back from a dropout, still charging: the same session
            st.silent_at = None
            self._reschedule(st)
        if st.clear_since is not None:  # charging again within the hysteresis: keep it open
            st.clear_since = None
            self._reschedule(st)
        severity = ep.severity
        if st.night_at is not None and now >= st.night_at:
            st.night_at = None
            severity = Severity.HIGH
        peak = st.peak
        published = st.published_peak
        peak_moved = peak is not None and (
            published is None or (peak > published and peak >= published * self._peak_ratio)
        )
        if severity is not ep.severity or peak_moved:
            self._update(st, ep, severity, now, out)

    def _not_charging(self, st: _Sensor, now: datetime, out: list[AlertChange]) -> None:
        silent_at = st.silent_at
        st.last_ts = now
        if silent_at is not None:  # back from a dropout, not charging: ended while unseen
            self._clear(st, silent_at, ENDED_BY_SILENCE, out)
        elif st.episode is None:
            st.since = None  # the sustain must be uninterrupted
            st.reports = 0
            st.peak = None
        elif st.clear_since is None:
            st.clear_since = now
            self._reschedule(st)

    # -- deadlines -----------------------------------------------------------------------------

    def _reschedule(self, st: _Sensor) -> None:
        """After a transition that may bring a deadline forward: keep the invariant that the
        heap holds an entry for ``st`` (``st.scheduled``) no later than its next deadline.

        Reports that only push deadlines later (another charging report moves the silence
        timeout) need no heap work: the earlier entry pops, and ``_advance`` re-files it.
        """
        nxt = self._next(st)
        if nxt is not None and (st.scheduled is None or nxt[0] < st.scheduled):
            st.scheduled = nxt[0]
            heapq.heappush(self._heap, (nxt[0], st.index))

    def _next(self, st: _Sensor) -> tuple[datetime, int] | None:
        """The sensor's earliest deadline and what it does, or None."""
        if st.last_ts is None or st.since is None:
            return None
        stale_at = st.last_ts + self._stale
        if st.episode is None:
            raise_at = st.since + self._min
            if raise_at <= stale_at:
                return raise_at, _RAISE
            return stale_at, _DROP_RUN
        if st.silent_at is not None:
            return st.last_ts + self._resume, _GIVE_UP
        if st.clear_since is not None:
            clear_at = st.clear_since + self._clear_after
            if clear_at <= stale_at:
                return clear_at, _CLEAR
        elif st.night_at is not None and st.night_at < stale_at:
            return st.night_at, _NIGHT
        return stale_at, _STALE

    def _advance(self, now: datetime, out: list[AlertChange]) -> None:
        """Fire every deadline at or before ``now``, across sensors, in time order."""
        heap = self._heap
        sensors = self._by_index
        while heap and heap[0][0] <= now:
            due, index = heapq.heappop(heap)
            st = sensors[index]
            if st.scheduled != due:
                continue  # superseded by an earlier entry that was already handled
            nxt = self._next(st)
            if nxt is not None and nxt[0] <= due:
                self._fire(st, nxt[0], nxt[1], out)
                nxt = self._next(st)
            if nxt is None:
                st.scheduled = None
            else:
                st.scheduled = nxt[0]
                heapq.heappush(heap, (nxt[0], index))

    def _fire(self, st: _Sensor, at: datetime, action: int, out: list[AlertChange]) -> None:
        if action == _RAISE:
            self._raise(st, at, out)
        elif action == _DROP_RUN:
            st.since = None
            st.reports = 0
            st.peak = None
        elif action == _NIGHT:
            st.night_at = None
            ep = st.episode
            if ep is not None:
                self._update(st, ep, Severity.HIGH, at, out)
        elif action == _GIVE_UP:
            assert st.silent_at is not None
            self._clear(st, st.silent_at, ENDED_BY_SILENCE, out)
        elif st.clear_since is not None:  # _CLEAR, or _STALE while a clear is pending
            self._clear(st, st.clear_since, ENDED_BY_NOT_CHARGING, out)
        elif self._hold:  # _STALE: hold the episode for a charging report
            st.silent_at = at
        else:  # _STALE
            self._clear(st, at, ENDED_BY_SILENCE, out)

    # -- episodes ------------------------------------------------------------------------------

    def _raise(self, st: _Sensor, at: datetime, out: list[AlertChange]) -> None:
        assert st.since is not None
        if st.location in ESCAPE_ROUTES or self._night_between(st.since, at):
            severity = Severity.HIGH
            st.night_at = None
        else:
            severity = Severity.MEDIUM
            st.night_at = self._next_night_start(at)
        raised_at = at.astimezone(self._tz)
        ep = AlertEpisode(
            kind=KIND,
            severity=severity,
            subject=st.subject,
            raised_at=raised_at,
            evidence=self._evidence(st, at, None),
            id=episode_id(KIND, st.subject, raised_at, self._scope),
        )
        st.episode = ep
        st.published_peak = st.peak
        st.clear_since = None
        out.append(AlertChange(Change.RAISED, ep))

    def _update(
        self,
        st: _Sensor,
        ep: AlertEpisode,
        severity: Severity,
        at: datetime,
        out: list[AlertChange],
    ) -> None:
        new = AlertEpisode(
            kind=KIND,
            severity=severity,
            subject=ep.subject,
            raised_at=ep.raised_at,
            evidence=self._evidence(st, at, None),
            id=ep.id,
        )
        st.episode = new
        st.published_peak = st.peak
        out.append(AlertChange(Change.UPDATED, new))

    def _clear(self, st: _Sensor, at: datetime, ended_by: str, out: list[AlertChange]) -> None:
        ep = st.episode
        assert ep is not None
        out.append(
            AlertChange(
                Change.CLEARED,
                AlertEpisode(
                    kind=KIND,
                    severity=ep.severity,
                    subject=ep.subject,
                    raised_at=ep.raised_at,
                    evidence=self._evidence(st, at, ended_by),
                    cleared_at=at.astimezone(self._tz),
                    id=ep.id,
                ),
            )
        )
        st.episode = None
        st.published_peak = None
        st.since = None
        st.reports = 0
        st.peak = None
        st.clear_since = None
        st.night_at = None
        st.silent_at = None

    def _evidence(
        self, st: _Sensor, until: datetime, ended_by: str | None
    ) -> dict[str, EvidenceValue]:
        assert st.since is not None
        assert st.last_ts is not None
        tz = self._tz
        return {
            "peak_power_w": st.peak,
            "charging_since": st.since.astimezone(tz).isoformat(),
            "duration_s": (until - st.since).total_seconds(),
            "location": st.location.value,
            "reports": st.reports,
            "last_report_at": st.last_ts.astimezone(tz).isoformat(),
            "ended_by": ended_by,
        }

    # -- night hours ---------------------------------------------------------------------------

    def _is_night(self, t: datetime) -> bool:
        start, end = self._night_start, self._night_end
        hour = t.astimezone(self._tz).hour
        if start < end:
            return start <= hour < end
        if start > end:
            return hour >= start or hour < end
        return False

    def _next_night_start(self, t: datetime) -> datetime | None:
        """The first night start strictly after ``t`` (None when there are no night hours)."""
        if self._night_start == self._night_end:
            return None
        local = t.astimezone(self._tz)
        start = time(self._night_start)
        candidate = datetime.combine(local.date(), start, tzinfo=self._tz)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=self._tz)
        return candidate

    def _night_between(self, a: datetime, b: datetime) -> bool:
        """Whether any instant of ``[a, b]`` falls in night hours."""
        if self._is_night(a):
            return True
        nxt = self._next_night_start(a)
        return nxt is not None and nxt <= b


def _subject(placement: SensorPlacement, building_of: dict[str, str]) -> Subject:
    if placement.location is Location.UNIT:
        return Subject(unit_id=placement.unit_id, sensor_id=placement.sensor_id)
    building = placement.building
    if building is None and placement.unit_id is not None:
        building = building_of[placement.unit_id]
    return Subject(building=building, sensor_id=placement.sensor_id)
