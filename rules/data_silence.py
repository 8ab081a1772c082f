"""The ``data_silence`` rule: a meter, reader or sensor of the site that stopped sending.

Why, and where the defaults come from: seed 001 asks that every point with no data uploaded
within 5 days be followed up with a visit (5日内无数据上传的点位及时跟进上门核查); a dark
building is also the installer's and the property company's worst surprise (design.md). A card
reader is held to a shorter standard when it can be compared with a neighbour: a reader silent
for a day while another reader of the same building keeps reporting swipes is broken, unplugged
or bypassed (a propped door), and the swipe counts that the group-rental rule rests on are then
wrong. Thresholds come from :class:`contract.site.DataSilenceConfig` (defaults: 5 days; 24 h
for a reader whose peer reported at least 10 swipes meanwhile, the latest within 12 h).

Semantics, per device listed in the site (meters, readers, sensors; a ``bike_shed`` sensor
too: a dead sensor is dead wherever it is):

Time
    Silence is measured from the device's latest event, or, for a device that has sent nothing
    yet, from the start of the input: the time of the first event the rule is given. The rule
    asks for that first event whatever its kind (its ``next_due`` is the earliest possible time
    until it has started), so the start is the engine's first event time even when that event
    came from a device the site does not list. Deadlines are reached at exact instants and
    detected at the first event or ``Tick`` at or after them, from any device; how often ticks
    come changes only when a change is seen, never what it is. Events older than the latest
    time seen are applied at that time.

Raising
    ``no_data``: at silence start + ``silence_s`` (``raised_at`` is exactly that instant),
    severity ``high`` (a visit is due). ``peer_busy`` (readers only): at silence start +
    ``reader_silence_s``, if another reader of the same building has reported at least
    ``reader_peer_min_swipes`` swipes since the silence started and its latest swipe is no older
    than ``reader_peer_recent_s``; if not yet, the reader waits and is raised at the first peer
    swipe that makes the condition true (that swipe's time is ``raised_at``). Severity
    ``medium``. Two readers both quiet at night raise nothing: neither is busy.

Clearing and updates
    The device's next event clears the episode, ``cleared_at`` = that event's time,
    ``ended_by`` = "data_resumed". A ``peer_busy`` episode still open when the silence reaches
    ``silence_s`` is escalated to ``high`` with reason ``no_data`` (UPDATED); nothing else
    re-publishes. One episode per device at a time: the two reasons never open two alerts for
    one reader. Since a new episode needs a full threshold of silence again, an alert cannot
    flap: the minimum gap between two episodes of a device is the threshold itself.

Evidence
    ``device`` ("meter", "reader", "sensor"), ``reason``, ``last_data_at`` (ISO, None if the
    device never reported), ``silent_since`` (ISO: last data, or the start of the input),
    ``never_reported``, ``silent_hours`` (from ``silent_since`` to the state's time: the raise,
    the update, ``cleared_at``, or the latest time seen), ``threshold_hours`` (the threshold that
    raised it), ``peer_swipes`` (readers: swipes by the building's other readers since the
    silence started; None for other devices) and ``ended_by`` (None while open).

Cost
    Meter readings are nine events in ten: the engine records each in a
    :class:`rules.common.MeterLog` and calls this rule for a meter only when one of its own
    deadlines is due or when it has asked to see the meter's next reading (a meter in an open
    episode); swipes and sensor reports come to it directly. A rule built without a log keeps
    its own and takes every reading (same results).

Subject
    ``meter_id`` + ``unit_id``; ``reader_id`` + ``building``; ``sensor_id`` + ``unit_id`` for a
    sensor in a flat, + ``building`` elsewhere (as in ``ebike_charging``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from contract.alerts import (
    AlertChange,
    AlertEpisode,
    AlertKind,
    Change,
    EvidenceValue,
    Severity,
    Subject,
)
from contract.events import CardSwipe, ChargingSensorReading, MeterReading, RuleInput
from contract.site import DataSilenceConfig, Location, SensorPlacement, Site
from rules.base import NO_CHANGES
from rules.common import (
    Deadlines,
    MeterEntry,
    MeterLog,
    SiteCalendar,
    Timebase,
    make_episode,
    r1,
    restate,
    site_zone,
)

KIND = AlertKind.DATA_SILENCE

REASON_NO_DATA = "no_data"
REASON_PEER_BUSY = "peer_busy"
ENDED_BY_RESUMED = "data_resumed"

METER = "meter"
READER = "reader"
SENSOR = "sensor"

_BEFORE_START = datetime.min.replace(tzinfo=UTC)

_RAISE = 0
_PEER_CHECK = 1
_ESCALATE = 2


class _Building:
    """Swipe bookkeeping of one building with more than one reader."""

    __slots__ = ("pending", "readers", "swipes")

    def __init__(self) -> None:
        self.swipes = 0  # cumulative swipes of all its readers
        self.readers: list[_Device] = []
        self.pending: list[_Device] = []  # past reader_silence_s, waiting for a busy peer


class _Device:
    __slots__ = (
        "base",
        "building",
        "device",
        "entry",
        "episode",
        "index",
        "last",
        "pending",
        "reason",
        "scheduled",
        "subject",
    )

    def __init__(self, index: int, device: str, subject: Subject) -> None:
        self.index = index
        self.device = device
        self.subject = subject
        self.last: float | None = None  # meters: frozen while an episode is open (see _last)
        self.entry: MeterEntry | None = None  # meters: their entry in the meter log
        self.building: _Building | None = None  # readers with a peer in their building
        self.base = 0  # the building's swipe count at this reader's latest swipe
        self.pending = False
        self.episode: AlertEpisode | None = None
        self.reason = ""
        self.scheduled: float | None = None


class DataSilenceRule:
    """Devices with no data for ``silence_s`` (5 days, seed 001), and readers silent for
    ``reader_silence_s`` (24 h) while a reader of the same building is busy.

    See the module docstring for the exact semantics.
    """

    kinds: frozenset[AlertKind] = frozenset({KIND})

    def __init__(
        self,
        site: Site,
        config: DataSilenceConfig,
        *,
        scope: str = "",
        timebase: Timebase | None = None,
        meter_log: MeterLog | None = None,
    ) -> None:
        tz = site_zone(site)
        self._cal = SiteCalendar(tz)
        self._scope = scope
        self._tb = timebase or Timebase()
        self._silence = config.silence_s
        self._reader_silence = config.reader_silence_s
        self._peer_min = config.reader_peer_min_swipes
        self._peer_recent = config.reader_peer_recent_s
        building_of = {u.unit_id: u.building for u in site.units}
        self._by_index: list[_Device] = []
        self._meters: dict[str, _Device] = {}
        self._readers: dict[str, _Device] = {}
        self._sensors: dict[str, _Device] = {}
        # Meters: when the engine keeps a meter log, the rule reads each meter's latest reading
        # there and sees a reading only when it asked to (a silent meter); otherwise it keeps
        # its own log and takes every reading.
        self._own_log = meter_log is None
        self._log = MeterLog(m.meter_id for m in site.meters) if meter_log is None else meter_log
        self.inputs: frozenset[type[CardSwipe | MeterReading | ChargingSensorReading]] = (
            frozenset({CardSwipe, MeterReading, ChargingSensorReading})
            if self._own_log
            else frozenset({CardSwipe, ChargingSensorReading})
        )
        for m in site.meters:
            subject = Subject(unit_id=m.unit_id, meter_id=m.meter_id)
            st = self._add(METER, subject)
            st.entry = self._log.entries[m.meter_id]
            self._meters[m.meter_id] = st
        buildings: dict[str, _Building] = {}
        for r in site.readers:
            st = self._add(READER, Subject(building=r.building, reader_id=r.reader_id))
            self._readers[r.reader_id] = st
            b = buildings.setdefault(r.building, _Building())
            b.readers.append(st)
            st.building = b
        for b in buildings.values():
            if len(b.readers) < 2:  # no peer to compare with
                for st in b.readers:
                    st.building = None
        for s in site.sensors:
            self._sensors[s.sensor_id] = self._add(SENSOR, _sensor_subject(s, building_of))
        self._deadlines = Deadlines(tz)
        self._heap = self._deadlines.heap
        self._start: float | None = None
        self._now = -math.inf

    def _add(self, device: str, subject: Subject) -> _Device:
        st = _Device(len(self._by_index), device, subject)
        self._by_index.append(st)
        return st

    # -- the Rule interface --------------------------------------------------------------------

    @property
    def next_due(self) -> datetime | None:
        if self._start is None:
            return _BEFORE_START  # asks for the first event of any kind: the start of input
        return self._deadlines.next_due

    def process(self, event: RuleInput) -> Sequence[AlertChange]:
        ts = event.ts
        tb = self._tb
        t = tb.t if ts is tb.ts else tb.seconds(ts)
        now = self._now
        if t > now:
            self._now = now = t
            if self._start is None:
                self._begin(now)
        out: list[AlertChange] | None = None
        heap = self._heap
        if heap and heap[0][0] <= now:
            out = []
            self._advance(now, out)
        if type(event) is MeterReading:
            st = self._meters.get(event.meter_id)
            if st is None:
                return out or NO_CHANGES
            if self._own_log:
                self._log.record(event, now)
            if st.episode is not None:
                if out is None:
                    out = []
                self._resume(st, now, out)
            return out or NO_CHANGES
        if type(event) is CardSwipe:
            st = self._readers.get(event.reader_id)
        elif type(event) is ChargingSensorReading:
            st = self._sensors.get(event.sensor_id)
        else:
            return out or NO_CHANGES
        if st is None:
            return out or NO_CHANGES
        if st.episode is None and st.building is None:
            st.last = now  # the silence deadline moves later: its heap entry re-files itself
            return out or NO_CHANGES
        if out is None:
            out = []
        if st.episode is None:
            st.last = now
        else:
            self._resume(st, now, out)
        if st.building is not None:
            self._swipe(st, now, out)
        return out

    def open_episodes(self) -> list[AlertEpisode]:
        return [st.episode for st in self._by_index if st.episode is not None]

    def finish(self) -> list[AlertEpisode]:
        now = self._now
        if self._start is None:
            return []
        return [
            restate(st.episode, evidence=self._evidence(st, now, None))
            for st in self._by_index
            if st.episode is not None
        ]

    # -- events --------------------------------------------------------------------------------

    def _begin(self, start: float) -> None:
        self._start = start
        for st in self._by_index:
            self._reschedule(st)

    def _swipe(self, st: _Device, now: float, out: list[AlertChange]) -> None:
        b = st.building
        assert b is not None
        b.swipes += 1
        st.base = b.swipes
        if st.pending:
            st.pending = False
            b.pending.remove(st)
        for other in b.pending[:]:
            if self._peer_busy(other, now):
                self._raise(other, now, REASON_PEER_BUSY, out)
                self._reschedule(other)

    def _resume(self, st: _Device, now: float, out: list[AlertChange]) -> None:
        ep = st.episode
        assert ep is not None
        cleared = restate(
            ep, evidence=self._evidence(st, now, ENDED_BY_RESUMED), cleared_at=self._cal.dt(now)
        )
        out.append(AlertChange(Change.CLEARED, cleared))
        st.episode = None
        st.reason = ""
        st.last = now
        self._reschedule(st)

    def _peer_busy(self, st: _Device, at: float) -> bool:
        b = st.building
        assert b is not None
        if b.swipes - st.base < self._peer_min:
            return False
        latest = max(
            (p.last for p in b.readers if p is not st and p.last is not None), default=None
        )
        return latest is not None and at - latest <= self._peer_recent

    # -- deadlines -----------------------------------------------------------------------------

    @staticmethod
    def _last(st: _Device) -> float | None:
        """The device's latest data before now (a meter's from the log unless an episode is
        open: then the log may already hold the reading that ends it)."""
        entry = st.entry
        if entry is not None and st.episode is None:
            return entry.t if entry.reading is not None else None
        return st.last

    def _silent_since(self, st: _Device) -> float:
        last = self._last(st)
        if last is not None:
            return last
        assert self._start is not None
        return self._start

    def _reschedule(self, st: _Device) -> None:
        nxt = self._next(st)
        if nxt is not None and (st.scheduled is None or nxt[0] < st.scheduled):
            st.scheduled = nxt[0]
            self._deadlines.push(nxt[0], st.index)

    def _next(self, st: _Device) -> tuple[float, int] | None:
        since = self._silent_since(st)
        if st.episode is None:
            at = since + self._silence
            if st.building is not None and not st.pending:
                peer_at = since + self._reader_silence
                if peer_at < at:
                    return peer_at, _PEER_CHECK
            return at, _RAISE
        if st.reason == REASON_PEER_BUSY:
            return since + self._silence, _ESCALATE
        return None

    def _advance(self, now: float, out: list[AlertChange]) -> None:
        self._deadlines.run_due(
            now, self._by_index, self._next, lambda st, at, action: self._fire(st, at, action, out)
        )

    def _fire(self, st: _Device, at: float, action: int, out: list[AlertChange]) -> None:
        if action == _RAISE:
            self._raise(st, at, REASON_NO_DATA, out)
        elif action == _PEER_CHECK:
            if self._peer_busy(st, at):
                self._raise(st, at, REASON_PEER_BUSY, out)
            else:
                b = st.building
                assert b is not None
                st.pending = True
                b.pending.append(st)
        else:  # _ESCALATE
            ep = st.episode
            assert ep is not None
            st.reason = REASON_NO_DATA
            new = restate(ep, severity=Severity.HIGH, evidence=self._evidence(st, at, None))
            st.episode = new
            out.append(AlertChange(Change.UPDATED, new))

    # -- episodes ------------------------------------------------------------------------------

    def _raise(self, st: _Device, at: float, reason: str, out: list[AlertChange]) -> None:
        if st.pending:
            st.pending = False
            assert st.building is not None
            st.building.pending.remove(st)
        entry = st.entry
        if entry is not None:
            st.last = entry.t if entry.reading is not None else None
            if not self._own_log:
                entry.watcher = self.process  # to be given the meter's next reading
        st.reason = reason
        severity = Severity.HIGH if reason == REASON_NO_DATA else Severity.MEDIUM
        ep = make_episode(
            KIND,
            severity,
            st.subject,
            raised_at=self._cal.dt(at),
            evidence=self._evidence(st, at, None),
            scope=self._scope,
        )
        st.episode = ep
        out.append(AlertChange(Change.RAISED, ep))

    def _evidence(
        self, st: _Device, until: float, ended_by: str | None
    ) -> dict[str, EvidenceValue]:
        since = self._silent_since(st)
        threshold = self._reader_silence if st.reason == REASON_PEER_BUSY else self._silence
        peer_swipes: int | None = None
        if st.building is not None:
            peer_swipes = st.building.swipes - st.base
        cal = self._cal
        return {
            "device": st.device,
            "reason": st.reason,
            "last_data_at": cal.iso(self._last(st)),
            "silent_since": cal.iso(since),
            "never_reported": self._last(st) is None,
            "silent_hours": r1((until - since) / 3600.0),
            "threshold_hours": r1(threshold / 3600.0),
            "peer_swipes": peer_swipes,
            "ended_by": ended_by,
        }


def _sensor_subject(placement: SensorPlacement, building_of: dict[str, str]) -> Subject:
    if placement.location is Location.UNIT:
        return Subject(unit_id=placement.unit_id, sensor_id=placement.sensor_id)
    building = placement.building
    if building is None and placement.unit_id is not None:
        building = building_of[placement.unit_id]
    return Subject(building=building, sensor_id=placement.sensor_id)
