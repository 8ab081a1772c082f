"""Helpers the rules share: event time as seconds, site-local calendar, deadlines, episodes.

Time in the rules is POSIX seconds (``float``), computed once per event: comparing two aware
datetimes whose ``tzinfo`` objects differ (every line replay parses has its own) costs a
``utcoffset`` call on each side, and a rule that is handed ~200,000 events a second cannot afford
that on every comparison. :class:`Timebase` memoises the conversion of the event being processed,
so the engine and every rule it feeds pay it once. Datetimes (in the site's timezone) appear only
in what rules publish: episode times and evidence.

Nothing here reads a clock: the only time is the one events and ``Tick`` carry.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, time, timedelta
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contract.alerts import (
    AlertChange,
    AlertEpisode,
    AlertKind,
    EvidenceValue,
    Severity,
    Subject,
    episode_id,
)
from contract.events import MeterReading, RuleInput
from contract.site import Site

SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2}


class Timebase:
    """The latest event time converted to POSIX seconds, memoised by identity.

    One instance is shared by the engine and the rules it builds (see
    :func:`rules.engine.default_rules`): the engine converts each event's ``ts`` once, the rules
    find it here. A rule built on its own gets its own instance and converts for itself; the
    results are the same, only slower. Pure: the value is a function of the datetime alone.
    """

    __slots__ = ("t", "ts")

    def __init__(self) -> None:
        self.ts: datetime | None = None
        self.t = 0.0

    def seconds(self, ts: datetime) -> float:
        if ts is not self.ts:
            self.t = ts.timestamp()
            self.ts = ts
        return self.t


class MeterEntry:
    """The latest reading of one meter, and who wants to see its next one."""

    __slots__ = ("reading", "t", "watcher")

    def __init__(self) -> None:
        self.t = -math.inf  # time of the latest reading (seconds)
        self.reading: MeterReading | None = None
        self.watcher: Callable[[RuleInput], Sequence[AlertChange]] | None = None
        """A rule's ``process``, to be given the meter's next reading (then it is reset)."""


class MeterLog:
    """The latest reading of every meter of the site.

    Meter readings are nine events in ten, and some rules need only the latest state of each
    meter, not every reading (``data_silence``: when a meter last spoke; ``suspected_group_rental``:
    a sample every 5 minutes). The engine records each reading here once and calls those rules
    only when their own deadlines are due, or when one of them has asked (``watcher``) to see a
    meter's next reading. A rule built without a log keeps its own and takes meter readings as
    an ordinary input, with the same results.
    """

    __slots__ = ("entries",)

    def __init__(self, meter_ids: Iterable[str]) -> None:
        self.entries = {m: MeterEntry() for m in meter_ids}

    def record(self, event: MeterReading, t: float) -> MeterEntry | None:
        entry = self.entries.get(event.meter_id)
        if entry is not None and t >= entry.t:
            entry.t = t
            entry.reading = event
        return entry


def site_zone(site: Site) -> ZoneInfo:
    try:
        return ZoneInfo(site.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"site timezone {site.timezone!r} is not a known zone") from exc


class SiteCalendar:
    """Local-time questions about POSIX seconds, in the site's timezone (DST-aware)."""

    __slots__ = ("tz",)

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz

    def dt(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def iso(self, t: float | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, self.tz).isoformat()

    def hour(self, t: float) -> int:
        return datetime.fromtimestamp(t, self.tz).hour

    def day_start(self, t: float) -> float:
        """The local midnight at or before ``t``."""
        local = datetime.fromtimestamp(t, self.tz)
        return datetime.combine(local.date(), time(0), tzinfo=self.tz).timestamp()

    def next_day_start(self, t: float) -> float:
        """The first local midnight strictly after ``t``."""
        local = datetime.fromtimestamp(t, self.tz)
        nxt = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=self.tz)
        return nxt.timestamp()

    def next_hour(self, t: float, hour: int) -> float:
        """The first instant strictly after ``t`` at ``hour``:00 local time."""
        local = datetime.fromtimestamp(t, self.tz)
        candidate = datetime.combine(local.date(), time(hour), tzinfo=self.tz)
        if candidate.timestamp() <= t:
            candidate = datetime.combine(local.date() + timedelta(days=1), time(hour), self.tz)
        return candidate.timestamp()

    def in_hours(self, t: float, start: int, end: int) -> bool:
        """Whether ``t`` falls in ``start <= hour < end`` (wrapping past midnight when
        ``start > end``; ``start == end`` is an empty range)."""
        h = self.hour(t)
        if start < end:
            return start <= h < end
        if start > end:
            return h >= start or h < end
        return False

    def hours_between(self, a: float, b: float, start: int, end: int) -> bool:
        """Whether any instant of ``[a, b]`` falls in the hours ``[start, end)``."""
        if self.in_hours(a, start, end):
            return True
        if start == end:
            return False
        return self.next_hour(a, start) <= b


class Scheduled(Protocol):
    """A rule's per-device state as :meth:`Deadlines.run_due` sees it."""

    scheduled: float | None


S = TypeVar("S", bound=Scheduled)


class Deadlines:
    """A min-heap of ``(time, index)`` with lazy invalidation, and ``next_due`` as a datetime.

    The owner keeps, per object, the time of its earliest heap entry (``scheduled``) and pushes
    a new entry only when a deadline moves *earlier*; a deadline that moves later costs nothing
    until its old entry pops, when the owner re-files it. ``next_due`` returns the same datetime
    object for as long as the earliest entry is unchanged, so the engine can memoise its
    conversion.
    """

    __slots__ = ("_dt", "_dt_for", "_tz", "heap")

    def __init__(self, tz: ZoneInfo) -> None:
        self.heap: list[tuple[float, int]] = []
        self._tz = tz
        self._dt: datetime | None = None
        self._dt_for = 0.0

    def push(self, at: float, index: int) -> None:
        heapq.heappush(self.heap, (at, index))

    def pop(self) -> tuple[float, int]:
        return heapq.heappop(self.heap)

    def run_due(
        self,
        now: float,
        states: Sequence[S],
        next_action: Callable[[S], tuple[float, int] | None],
        fire: Callable[[S, float, int], None],
    ) -> None:
        """Handle every entry due at or before ``now``, in time order.

        ``next_action(state)`` gives a state's next ``(time, action)``; an action due by the
        popped entry's time is fired, then the state is re-filed at its following deadline.
        Stale entries (the state was re-scheduled since) are skipped.
        """
        heap = self.heap
        while heap and heap[0][0] <= now:
            due, index = heapq.heappop(heap)
            st = states[index]
            if st.scheduled != due:
                continue  # superseded by an earlier entry that was already handled
            nxt = next_action(st)
            if nxt is not None and nxt[0] <= due:
                fire(st, nxt[0], nxt[1])
                nxt = next_action(st)
            if nxt is None:
                st.scheduled = None
            else:
                st.scheduled = nxt[0]
                heapq.heappush(heap, (nxt[0], index))

    @property
    def next_due(self) -> datetime | None:
        heap = self.heap
        if not heap:
            return None
        at = heap[0][0]
        if self._dt is None or at != self._dt_for:
            self._dt = datetime.fromtimestamp(at, self._tz)
            self._dt_for = at
        return self._dt


def make_episode(
    kind: AlertKind,
    severity: Severity,
    subject: Subject,
    *,
    raised_at: datetime,
    evidence: dict[str, EvidenceValue],
    scope: str,
) -> AlertEpisode:
    """A freshly raised episode with its deterministic id."""
    return AlertEpisode(
        kind=kind,
        severity=severity,
        subject=subject,
        raised_at=raised_at,
        evidence=evidence,
        id=episode_id(kind, subject, raised_at, scope),
    )


def restate(
    ep: AlertEpisode,
    *,
    severity: Severity | None = None,
    evidence: dict[str, EvidenceValue] | None = None,
    cleared_at: datetime | None = None,
) -> AlertEpisode:
    """The same episode (same id, subject, raise time) in a later state."""
    return AlertEpisode(
        kind=ep.kind,
        severity=ep.severity if severity is None else severity,
        subject=ep.subject,
        raised_at=ep.raised_at,
        evidence=ep.evidence if evidence is None else evidence,
        cleared_at=cleared_at,
        id=ep.id,
    )


def r1(x: float) -> float:
    """Round a figure for evidence (0.1)."""
    return round(x, 1)


def r2(x: float) -> float:
    """Round a figure for evidence (0.01)."""
    return round(x, 2)
