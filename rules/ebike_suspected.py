"""The ``ebike_charging_suspected`` rule: a flat's meter carries an e-bike charging signature.

Why, and where the defaults come from: charging e-bikes or their batteries inside residential
buildings is forbidden in Shanghai (上海市非机动车安全管理条例, amended 2024), and the fire that
follows is the classic night-time killer; most flats have no charging sensor, but every flat has a
meter. An e-bike charger draws a constant-current (CC) plateau of about 60-300 W (more for illegal
60 V+ packs; GB 17761-2018 caps packs at 48 V nominal) for 1-6 h, then a constant-voltage (CV)
taper over 0.5-3 h down to a few watts; cheap chargers have no PFC and a power factor of about
0.5-0.7 (domain.md). At one reading per 10-60 s only level, duration, taper shape and (when the
meter reports voltage and current) the power factor are visible; the confounders are a PC or TV
(a plateau that ends abruptly, PFC-corrected above 75 W by GB 17625.1), a fridge (cycles), a
washing machine (fluctuates), heaters, cookers and kettles (kW, resistive, short). Thresholds come
from :class:`contract.site.EbikeChargingSuspectedConfig`.

Signals (per meter, O(1) per reading)
    A meter whose first reading carries ``voltage_v`` and ``current_a`` is watched on its
    *non-active* load ``voltage_v * current_a - power_w`` (VA): resistive heaters, kettles and
    cookers add none, PFC-corrected electronics little, a charger much (a 160 W charger at
    PF 0.6 adds about 107 VA). Every meter is also watched on its real power. Readings are
    reduced to ``bin_s`` (5 min) bins: the minimum of each signal, whether the bin is *clean*
    (no reading rose above the one before by more than ``quiet_w`` / ``quiet_va``: steady, or
    a ramp down) and *quiet* (its readings within that band plus ``quiet_fraction``, judged on
    at most one reading per 50 s: the spread of n readings of a rippling current grows with n,
    and a meter polled every 10 s must not look busier than one polled every minute), and the
    largest fall of real power into a new low (counted from below the previous bin's minimum,
    so a fridge switching off on top of a taper does not count). The *lower envelope* is the
    lowest bin minimum of the trailing ``envelope_s`` (30 min), steady or not (the minimum of a
    bin in which something switched on is still below everything that ran through it, so a busy
    flat's envelope keeps following its continuous loads): a kettle, a cooker, a fridge cycle
    or a washing machine does not lift it; a load that runs without a break for longer than the
    window (a charger, a PC) does. A reading only updates its bin; the work below happens once
    per bin, and the envelope is kept incrementally.

Recognition by the non-active plateau (meters with voltage and current)
    The non-active envelope is decomposed into loads: a rise of ``min_step_va``..``max_step_va``
    (50-450 VA) is a new charger candidate, unless the simultaneous real-power step gives it a
    power factor above ``max_pf`` (0.78: fridges, fans, electronics, a shop opening), or it is
    below both 90 W and 60 VA (a laptop adapter or a phone: CC-CV too, no PFC below 75 W, but
    an e-bike charger draws 100 W or more at the wall). A real-power step larger than one
    charger draws (over 1.5 x ``max_step_w``) means a heater or a cooker switched on in the same
    window; resistive loads add no non-active power, so the candidate stands, and its power
    factor is measured on the real-power envelope once that load is off (the envelope above
    the step's base): before that it is not recognised, and it needs twice ``min_quiet_bins``.
    Small rises in quick succession (at most
    two bins apart) add up to one step: a charger's soft start, or a step the envelope shows
    over two bins. A drop
    within ``match_tolerance`` (30 %) of a load's level is that load switched off; other drops
    are gradual and taper the candidates; small rises are kept apart. Loads may not add up to
    more than the envelope above the standby floor (otherwise some are gone unseen: dropped).
    A candidate that has held for ``plateau_hold_s`` (10 min) after it showed in the envelope
    (so about 40 minutes of charging), still at half its step or more, with at least
    ``min_quiet_bins`` (5) quiet bins while it was on (a charger draws a steady current; the
    clean bins of the window in which it showed count), is recognised. A step below 80 VA may
    be a laptop and a phone (35-90 W at PF 0.6 is 23-60 VA each, and a laptop charges for
    1.5 h at most): it must hold 70 minutes (an e-bike pack's CC phase is 1-6 h; a small
    lead-acid pack's 2 h or more). A plateau longer than
    ``max_plateau_s`` (10 h) is another continuous load. Several candidates are tracked at
    once (at most 8): the chargers of a group rental's evening each show as a step on top of
    the others, and each is recognised on its own plateau. When the envelope declines while
    several are on their plateau, the decline is given to the earliest first (which battery
    reaches its taper first cannot be told from the sum).

Recognition by the taper (every meter)
    A *run* is a sequence of bins over which the real-power envelope keeps falling (small rises
    up to ``taper_rise_fraction`` of the fall so far are tolerated; a pause of ``taper_pause_s``
    ends it). An appliance switching off (one reading-to-reading fall carrying the bin's fall,
    at least ``min_step_w``) restarts it. A run is recognised as a CV taper when it has fallen
    ``min_step_w``..``max_step_w`` (60-500 W) over at least ``min_taper_s`` (10 min) and three
    bins, no bin carrying more than ``taper_max_drop_fraction`` (60 %) of it, at least
    ``taper_ramp_fraction`` (50 %) of it as a ramp rather than switch-offs, and the envelope
    history shows the plateau before it (held near the top for ``min_plateau_s``, 1 h: an e-bike
    pack's CC phase is 1-6 h, a laptop's under an hour) and
    a single step up of most of the fall before that (within ``max_plateau_s``). On a meter
    with current, the run must also lose at most ``taper_non_active_fraction`` (12 %) of its
    fall in non-active power (active PFC, PF 0.9 or more, loses at most 11 %), or 30-80 % of
    it (``_LOW_PF_X``: a charger without PFC, PF 0.55-0.77, whose non-active step was too small
    for the plateau, taken only while no other session of the meter is open or tapering);
    lamps, fans and motors fall in between. A taper is not reported when a session reported
    before explains it (see ``_already``): one whose plateau began within ``_SAME_SESSION_S``
    (45 min) of this one's, or one whose episode was open when the run began, unless that one
    is still on its non-active plateau (then the taper is another charger's).

Recognition by the switch-on edge (meters with voltage and current)
    The envelope's steps are coarse: a charger plugged in while a washing machine or a cooker
    runs, or minutes after another charger, may show as a step too small for a charger or not
    at all. The readings themselves show each switch-on: a rise of the non-active load of
    30 VA or more between two readings, steady on both sides (two readings each: a washing
    machine's fluctuation is not steady). A confirmed fall within 30 % of an edge's rise
    switches that edge off. A step the envelope shows claims the edges of its window, closest
    to its size first, until they add up to 70 % of it (``_CLAIM_SHARE``; the others stay
    free: chargers plugged in minutes apart may show as one step). An edge that no switch-off
    has matched for ``_EDGE_HOLD_S`` (70 minutes), that no step claims (or whose step was
    dropped as not a charger), whose real-power rise is a charger's (``min_step_w`` .. 1.5 x
    ``max_step_w``, and not below both 90 W and 60 VA: a laptop or a phone), whose power
    factor is a charger's without PFC (at most 0.73; fridges are 0.75 or more), over at least
    ``min_quiet_bins`` quiet bins since, and whose load never fell below 60 % of its rise
    above the reading before it (the lowest reading of every whole bin since), is recognised
    as a charger (``recognised_by`` = "switch_on_edge"); from then on it is one of the
    tracked loads and ends as they do.

Raising and clearing
    The episode is raised at the end of the bin in which the signature was recognised (that is
    ``raised_at``: on the plateau, or during the taper, always before the session's end). It
    clears at the end of the session: the charger is down to ``tail_fraction`` (15 %) of its
    step or to ``tail_va`` (``ended_by`` = "tail"); what is left switches off at
    once ("switched_off"); the taper exceeds ``max_taper_s`` (4 h, "timeout"); a load rises on
    top of a taper being followed ("other_load"); or the meter has sent nothing for
    ``stale_after_s`` (1 h, "silence", ``cleared_at`` = start of its last bin with a reading +
    ``stale_after_s``). ``cleared_at`` is otherwise the end of the bin that showed it. One
    session is one episode and a new one needs a new step and plateau, so an alert cannot flap.
    Each session has its own episode: batteries charged together in one flat (a group rental
    charges four or five an evening) give as many episodes, open at the same time (the fleet
    files them under the flat's one open case). Episode ids are made of kind, subject and
    raise time, so a session recognised in the same bin as another of the same meter is raised
    at the meter's next bin.

Time
    Bins are aligned on multiples of ``bin_s`` in POSIX time and close at the meter's first
    reading in a later bin, so every change depends on the meter's readings only, never on
    ticks; the only deadline is the silence of a meter with an open episode, reached at its
    exact instant and detected at the first event or ``Tick`` at or after it. A reading older
    than the latest time seen is applied at that time (``late``). Memory per meter is bounded
    by ``max_plateau_s`` of 5-minute envelope values and at most 8 tracked loads.

Severity and updates
    ``high`` when any instant from the estimated start to the raise falls in night hours
    (22:00-06:00 site time: people asleep) or the step is at least ``high_step_w`` (300 W: a pack
    beyond GB 17761); ``medium`` otherwise. Each medium episode whose session runs into the
    night is escalated to ``high`` (UPDATED, at the first bin closed in night hours); nothing else
    re-publishes.

Evidence
    ``step_w`` (the charger's real-power step; None when other loads switched in the same
    window), ``step_non_active_va`` (its non-active step, non-active meters), ``signal``
    ("non_active_va" or "power_w"), ``baseline`` (the envelope before the step), ``start`` (ISO,
    estimated: a window before the step showed), ``plateau_minutes``, ``taper_start`` (ISO or
    None), ``taper_minutes``, ``level_left`` (what is left of the step), ``power_factor`` (of the
    step, when known), ``recognised_by`` ("non_active_plateau", "switch_on_edge" or "taper"),
    ``night`` and ``ended_by`` (None while open).

Subject
    ``unit_id`` and ``meter_id``. Times in episodes and evidence are in the site's timezone.
"""

from __future__ import annotations

from collections import deque
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
from contract.site import EbikeChargingSuspectedConfig, Site
from rules.base import NO_CHANGES
from rules.common import Deadlines, SiteCalendar, Timebase, make_episode, r1, r2, restate, site_zone

KIND = AlertKind.EBIKE_CHARGING_SUSPECTED

ENDED_BY_TAIL = "tail"
ENDED_BY_OFF = "switched_off"
ENDED_BY_TIMEOUT = "timeout"
ENDED_BY_SILENCE = "silence"
ENDED_BY_LOAD = "other_load"

RECOGNISED_BY_TAPER = "taper"
RECOGNISED_BY_PLATEAU = "non_active_plateau"
RECOGNISED_BY_EDGE = "switch_on_edge"

SIGNAL_NON_ACTIVE = "non_active_va"
SIGNAL_POWER = "power_w"

_INF = float("inf")
_MAX_LOADS = 8
# A step below both is a laptop adapter or a phone charger, not an e-bike charger (see _step)
_SMALL_W = 90.0
_SMALL_VA = 60.0
_RISE_GAP = 2  # bins between small rises that still add up to one step
_MIN_TAPER_BINS = 3
# A step below this non-active size may be a laptop or two (plus phones): 35-90 W at PF 0.6 is
# 23-60 VA each, and a laptop charges for 1.5 h at most; such a step must have shown in the
# envelope for at least _SMALL_HOLD_S (so about 100 minutes of charging: an e-bike pack's CC
# phase is 1-6 h, a small lead-acid pack's 2 h or more).
_SMALL_HOLD_VA = 80.0
_SMALL_HOLD_S = 4200.0
# A step whose power factor had to wait (see _pf_settled) needs this many times min_quiet_bins.
_DEFER_QUIET = 2
_MAX_STEP_SHARE = 1.5  # a real-power step above this share of max_step_w is not one charger
_STEP_SHARE = 0.7  # a bin's fall is a switch-off when one reading-to-reading fall is this much
_FLOOR_CREEP = 0.02  # of the step scale per hour: the standby floor follows a slow rise
_UNKNOWN = 0
_SAME_SESSION_S = 2700.0  # two sessions whose plateaus began this close are one (see _already)
# The non-active fall of a low-power-factor charger's taper, as shares of its real-power fall:
# S - P = P (1/pf - 1) is 0.30-0.82 P for PF 0.55-0.77 (PFC chargers: 0.02-0.11 P)
_LOW_PF_X = (0.3, 0.8)
# Switch-on edges between consecutive readings (meters with current, see _edge): a change of
# the non-active load of at least _EDGE_VA between two readings, with the two readings before
# it within _EDGE_NOISE_VA or _EDGE_HOLD of the change of each other (steady before) and the
# two after it within _EDGE_AFTER of it (steady after: not a washing machine's fluctuation).
_EDGE_VA = 30.0
_EDGE_HOLD = 0.25
_EDGE_NOISE_VA = 8.0
_EDGE_AFTER = 0.4
_EDGE_MATCH = 0.3  # a fall within this share of an edge's rise switched that edge's load off
_MAX_EDGES = 24
_CLAIM_SHARE = 0.7  # a step claims edges up to this share of it (see _claim)
_EDGE_HOLD_S = 4200.0  # an edge no switch-off matched for this long may be a charger
_EDGE_MAX_PF = 0.73  # ... if its power factor is a charger's without PFC (fridges: 0.75+)
_EDGE_SUPPORT = 0.6  # ... and its load never fell below this share of it (see _edge_charger)
# A bin's quietness is judged on its readings at most one per this many seconds: the spread of
# n readings of a rippling current grows with n, so a 10 s meter would otherwise show fewer quiet
# bins than a 60 s one for the same charger.
_QUIET_SAMPLE_S = 50.0
_NON_ACTIVE = 1  # the meter reports voltage and current: work on S - P
_POWER = 2  # it does not: work on P


class _Run:
    """A run of bins over which the real-power envelope keeps falling (a possible CV taper)."""

    __slots__ = ("bins", "drop", "last", "level0", "load", "max_drop", "ramp", "rise", "t0", "x0")

    def __init__(self, t0: float, level0: float) -> None:
        self.t0 = t0  # the bin before the decline
        self.level0 = level0
        self.drop = 0.0  # total decline so far
        self.max_drop = 0.0  # largest decline within one bin
        self.rise = 0.0  # small rises tolerated within the run
        self.bins = 0  # bins that declined
        self.ramp = 0.0  # decline in bins where no single reading-to-reading fall carried it
        self.last = t0  # the latest bin that declined
        self.load: _Load | None = None  # set once the run is recognised as a taper
        self.x0 = 0.0  # the non-active envelope at the run's start (meters with current)

    def reset(self, t0: float, level0: float, x0: float) -> None:
        self.t0 = self.last = t0
        self.level0 = level0
        self.x0 = x0
        self.drop = self.max_drop = self.rise = self.ramp = 0.0
        self.bins = 0
        self.load = None


class _Edge:
    """A switch-on edge of the non-active load between two readings, not yet switched off."""

    __slots__ = ("base", "done", "load", "low", "p", "quiet", "t", "x")

    def __init__(self, t: float, x: float, p: float, base: float) -> None:
        self.t = t  # the reading after the rise
        self.x = x  # the rise of the non-active load (VA)
        self.p = p  # the rise of real power (W)
        self.base = base  # the non-active load of the reading before the rise
        self.low = _INF  # the lowest non-active load of the whole bins since the rise
        self.quiet = 0  # quiet bins since the rise
        self.load: _Load | None = None  # the load that explains it (see _claim)
        self.done = False  # reported, or can no longer be a charger (see _edge_sessions)


class _Load:
    """A load the state machine tracks on the envelope: a charger candidate or another load."""

    __slots__ = (
        "base",
        "base_p",
        "charger",
        "cleared",
        "created",
        "episode",
        "high",
        "level",
        "peak",
        "pf",
        "quiet",
        "recognised",
        "recognised_by",
        "reported",
        "signal",
        "start",
        "step_w",
        "taper_start",
    )

    def __init__(self, level: float, start: float, created: float, base: float) -> None:
        self.level = level  # in the meter's signal (W or VA)
        self.peak = level
        self.start = start  # estimated switch-on (the envelope shows a step a window late)
        self.created = created  # when the envelope showed the step
        self.base = base
        self.step_w: float | None = None  # the step in real power, when known
        self.base_p: float | None = None  # the real-power envelope under the step, when its
        # own real-power step was hidden by another load switched on with it (see _step)
        self.pf: float | None = None  # power factor of the step, when known
        self.charger = True
        self.taper_start: float | None = None  # None while on the plateau
        self.recognised = False
        self.recognised_by = ""
        self.reported = False  # an episode was raised for this session
        self.episode: AlertEpisode | None = None  # the session's open episode
        self.cleared = _INF  # when its episode cleared
        self.high = False  # its severity is high
        self.quiet = 0  # quiet bins (nothing switching or fluctuating) seen while it was on
        self.signal = _NON_ACTIVE  # what level, peak and base are measured in (VA or W)


class _Meter:
    __slots__ = (
        "bin_end",
        "bin_last",
        "bin_min",
        "bin_pjump",
        "bin_plast",
        "bin_pmin",
        "bin_qmax",
        "bin_qmin",
        "bin_qt",
        "bin_rose",
        "creep",
        "edges",
        "env",
        "env_p",
        "env_pt",
        "env_t",
        "excess",
        "floor",
        "hist",
        "index",
        "last",
        "last_bin",
        "loads",
        "mode",
        "open",
        "p2",
        "prev_env",
        "prev_p",
        "prev_t",
        "quiet_abs",
        "reported",
        "ring",
        "rise",
        "rise_p",
        "rise_t",
        "run",
        "scheduled",
        "subject",
        "t1",
        "t2",
        "t3",
        "was_quiet",
        "x2",
        "x3",
    )

    def __init__(self, index: int, subject: Subject) -> None:
        self.index = index
        self.subject = subject
        self.mode = _UNKNOWN
        self.quiet_abs = 0.0  # the quiet threshold of the meter's signal (W or VA)
        self.creep = 0.0  # how fast the standby floor creeps up (signal units per second)
        self.bin_end = -_INF  # the first reading opens a bin
        self.bin_min = _INF  # minimum of the signal in the bin
        self.bin_pmin = _INF  # minimum real power in the bin
        self.bin_plast = 0.0  # latest real power in the bin
        self.bin_pjump = 0.0  # largest fall of real power into a new low (see process)
        self.bin_last = 0.0  # the bin's latest value
        self.bin_rose = False  # a value in the bin rose above the one before
        # the spread of the bin's readings taken at most one per _QUIET_SAMPLE_S (see _close_bin)
        self.bin_qmin = _INF
        self.bin_qmax = -_INF
        self.bin_qt = -_INF
        self.last_bin = -_INF  # end of the latest closed bin
        self.last = 0.0
        # (bin end, minimum of the signal, real power there, clean): the envelope window
        self.ring: deque[tuple[float, float, float, bool]] = deque()
        self.prev_env: float | None = None
        self.env = self.env_p = _INF  # the lower envelopes of the signal and of real power
        self.env_t = self.env_pt = 0.0  # end of the bins holding them
        self.hist: deque[tuple[float, float]] = deque()  # (bin end, real-power envelope)
        self.run = _Run(0.0, 0.0)
        self.prev_p = 0.0
        self.prev_t = 0.0
        self.loads: list[_Load] = []
        self.excess = 0.0  # small rises not attributed to a load
        self.rise = self.rise_p = 0.0  # small rises of the envelope in quick succession
        self.rise_t = -_INF  # the latest of them
        self.floor = _INF  # standby level: the lowest envelope, creeping up slowly
        self.open: list[_Load] = []  # the sessions with an open episode, in the order raised
        self.scheduled: float | None = None
        self.reported: deque[_Load] = deque()  # recent sessions with an episode
        # the readings before the bin's latest (non-active load, real power; 2 the one before
        # it), the times of the three latest, and the switch-on edges not yet switched off
        self.x2 = self.x3 = 0.0
        self.p2 = 0.0
        self.t1 = self.t2 = self.t3 = -_INF
        self.was_quiet = False  # the latest closed bin was quiet
        self.edges: deque[_Edge] = deque()


class EbikeChargingSuspectedRule:
    """E-bike charging recognised from a flat's meter readings (CC plateau, then CV taper).

    See the module docstring for the signal processing, the state machine and the semantics.
    """

    kinds: frozenset[AlertKind] = frozenset({KIND})
    inputs: frozenset[type[MeterReading]] = frozenset({MeterReading})

    def __init__(
        self,
        site: Site,
        config: EbikeChargingSuspectedConfig,
        *,
        scope: str = "",
        timebase: Timebase | None = None,
    ) -> None:
        tz = site_zone(site)
        self._cal = SiteCalendar(tz)
        self._scope = scope
        self._tb = timebase or Timebase()
        self._cfg = config
        self._bin = config.bin_s
        self._window = config.envelope_s
        self._show = max(config.envelope_s, config.bin_s)  # a step shows this late
        self._quiet_fraction = config.quiet_fraction
        self._max_gap = config.max_gap_s
        self._horizon = config.max_plateau_s + config.envelope_s
        self._min_step_va = config.min_step_va
        # the standby floor creeps up by this per second (a share of the smallest step per hour)
        self._creep = {
            _POWER: _FLOOR_CREEP * config.min_step_w / 3600.0,
            _NON_ACTIVE: _FLOOR_CREEP * config.min_step_va / 3600.0,
            _UNKNOWN: 0.0,
        }
        self._meters: dict[str, _Meter] = {}
        self._by_index: list[_Meter] = []
        for m in site.meters:
            st = _Meter(len(self._by_index), Subject(unit_id=m.unit_id, meter_id=m.meter_id))
            self._meters[m.meter_id] = st
            self._by_index.append(st)
        self._deadlines = Deadlines(tz)
        self._heap = self._deadlines.heap
        self._now = -_INF
        self.late = 0
        """Readings older than the latest time seen (applied at that time)."""

    # -- the Rule interface --------------------------------------------------------------------

    @property
    def next_due(self) -> datetime | None:
        return self._deadlines.next_due

    def process(self, event: RuleInput) -> Sequence[AlertChange]:
        ts = event.ts
        tb = self._tb
        t = tb.t if ts is tb.ts else tb.seconds(ts)
        now = self._now
        if t > now:
            self._now = now = t
        elif t < now:
            self.late += 1
        out: list[AlertChange] | None = None
        heap = self._heap
        if heap and heap[0][0] <= now:
            out = []
            self._advance(now, out)
        if type(event) is not MeterReading:
            return out or NO_CHANGES
        st = self._meters.get(event.meter_id)
        if st is None:
            return out or NO_CHANGES
        volts = event.voltage_v
        amps = event.current_a
        power = event.power_w
        mode = st.mode
        if mode == _NON_ACTIVE:
            if volts is None or amps is None:
                return out or NO_CHANGES  # a reading without current cannot be placed on the signal
            value = volts * amps - power
            # The switch-on edges (see _edge) look at the three readings before this one: the
            # latest is the bin's (bin_last, bin_plast), the two before it are kept here.
            x1 = st.bin_last
            rise = x1 - st.x2
            if rise >= _EDGE_VA or rise <= -_EDGE_VA:
                self._edge(st, now, value)
            st.x3 = st.x2
            st.x2 = x1
            st.p2 = st.bin_plast
            st.t3 = st.t2
            st.t2 = st.t1
            st.t1 = now
        elif mode == _POWER:
            value = power
        else:
            value = self._set_mode(st, power, volts, amps)
        if now < st.bin_end:
            if power < st.bin_pmin:
                # The fall into a new low, counted from below the envelope: a fridge switching
                # off on top of a taper does not count, a TV switching off does.
                last = st.bin_plast
                fall = (last if last < st.env_p else st.env_p) - power
                if fall > st.bin_pjump:  # noqa: PLR1730 (hot path: cheaper than max())
                    st.bin_pjump = fall
                st.bin_pmin = power
            st.bin_plast = power
            if value < st.bin_min:  # noqa: PLR1730 (hot path: cheaper than min())
                st.bin_min = value
            if now - st.bin_qt >= _QUIET_SAMPLE_S:
                st.bin_qt = now
                if value < st.bin_qmin:  # noqa: PLR1730
                    st.bin_qmin = value
                if value > st.bin_qmax:  # noqa: PLR1730
                    st.bin_qmax = value
            if value > st.bin_last + st.quiet_abs:
                st.bin_rose = True
            st.bin_last = value
            return out or NO_CHANGES
        if out is None:
            out = []
        if st.bin_min < _INF:
            self._close_bin(st, st.bin_end, out)
        st.last = now  # the latest bin with a reading began then (enough for the silence)
        st.bin_end = (now // self._bin + 1.0) * self._bin
        st.bin_min = st.bin_last = value
        st.bin_qmin = st.bin_qmax = value
        st.bin_qt = now
        last = st.bin_plast
        st.bin_pjump = max(0.0, (last if last < st.env_p else st.env_p) - power)
        st.bin_pmin = st.bin_plast = power
        st.bin_rose = False
        return out or NO_CHANGES

    def _edge(self, st: _Meter, now: float, x: float) -> None:
        """A change of the non-active load of at least ``_EDGE_VA`` between the two readings
        before this one (``x`` at ``now``): when the readings on both sides of it are steady, a
        rise is a switch-on edge and a fall switches off the edge it matches best."""
        bin_s = self._bin
        if now - st.t1 > bin_s or st.t1 - st.t2 > bin_s or st.t2 - st.t3 > bin_s:
            return  # readings missing: no edge across the gap
        x1, x2 = st.bin_last, st.x2
        rise = x1 - x2
        noise = max(_EDGE_NOISE_VA, _EDGE_HOLD * abs(rise))
        if abs(x - x1) > _EDGE_AFTER * abs(rise) or abs(x2 - st.x3) > noise:
            return  # not steady before and after: a spike or a fluctuating load
        # the rise that held: the smaller of the two readings after it
        rise = (min(x, x1) if rise > 0 else max(x, x1)) - x2
        if -_EDGE_VA < rise < _EDGE_VA:
            return
        edges = st.edges
        if rise > 0:
            edges.append(_Edge(st.t1, rise, st.bin_plast - st.p2, x2))
            if len(edges) > _MAX_EDGES:
                edges.popleft()
            return
        best = None
        err = _EDGE_MATCH
        for edge in edges:
            e = abs(edge.x + rise) / edge.x
            if e <= err:
                best, err = edge, e
        if best is not None:
            edges.remove(best)
            if best.load is not None and best.load.charger and not best.load.reported:
                # the step's edge was another load's: the step claims another of its window
                self._claim(st, best.load, best.load.created)

    def _set_mode(self, st: _Meter, power: float, volts: float | None, amps: float | None) -> float:
        """The first reading decides the signal: S - P when it carries voltage and current."""
        if volts is None or amps is None:
            st.mode = _POWER
            st.quiet_abs = self._cfg.quiet_w
            st.creep = self._creep[_POWER]
            return power
        st.mode = _NON_ACTIVE
        st.quiet_abs = self._cfg.quiet_va
        st.creep = self._creep[_NON_ACTIVE]
        return volts * amps - power

    def open_episodes(self) -> list[AlertEpisode]:
        return [x.episode for st in self._by_index for x in st.open if x.episode is not None]

    def finish(self) -> list[AlertEpisode]:
        now = self._now
        result: list[AlertEpisode] = []
        for st in self._by_index:
            for load in st.open:
                ep = load.episode
                assert ep is not None
                evidence = self._evidence(st, load, max(now, st.prev_t), None)
                result.append(restate(ep, evidence=evidence))
        return result

    # -- the envelope --------------------------------------------------------------------------

    def _close_bin(self, st: _Meter, end: float, out: list[AlertChange]) -> None:
        low = st.bin_min
        q = st.bin_qmin
        quiet = st.bin_qmax - q <= st.quiet_abs + self._quiet_fraction * (q if q > 0 else 0)
        clean = quiet or not st.bin_rose  # steady, or a ramp down (a taper, a switch-off)
        ring = st.ring
        low_p = st.bin_pmin
        ring.append((end, low, low_p, clean))
        # The envelope is the minimum of every bin in the window, steady or not: the minimum of
        # a bin in which something switched on or fluctuated is still a lower bound of the
        # loads that ran through it, so a busy flat's envelope keeps following its continuous
        # loads. It is kept incrementally: a new bin can only lower it; it is recomputed over
        # the (few) bins of the window only when its minimum leaves.
        if low <= st.env:
            st.env, st.env_t = low, end
        if low_p <= st.env_p:
            st.env_p, st.env_pt = low_p, end
        cutoff = end - self._window
        rescan = False
        while ring[0][0] <= cutoff and len(ring) > 1:
            t_out = ring.popleft()[0]
            if t_out in (st.env_t, st.env_pt):
                rescan = True
        if rescan:
            env = env_p = _INF
            env_t = env_pt = 0.0
            for t_in, lo, lp, _clean in ring:
                if lo <= env:
                    env, env_t = lo, t_in
                if lp <= env_p:
                    env_p, env_pt = lp, t_in
            st.env, st.env_t, st.env_p, st.env_pt = env, env_t, env_p, env_pt
        if end - st.last_bin > self._max_gap:
            st.loads = [x for x in st.loads if x.episode is not None]
            st.edges.clear()
            st.excess = 0.0
            st.prev_env = None
            st.rise = st.rise_p = 0.0
            st.hist.clear()
            ring.clear()
            ring.append((end, low, low_p, clean))
            st.env, st.env_p = low, low_p
            st.env_t = st.env_pt = end
        st.last_bin = end
        st.was_quiet = quiet
        loads = st.loads
        if quiet and loads:
            for load in loads:
                if low >= load.base + 0.5 * load.level:
                    load.quiet += 1
        env, env_p = st.env, st.env_p
        if env == _INF:
            return  # no reading yet
        prev, prev_p, prev_t = st.prev_env, st.prev_p, st.prev_t
        st.prev_env, st.prev_p, st.prev_t = env, env_p, end
        floor = st.floor + st.creep * (end - prev_t)
        if env < floor:  # noqa: PLR1730
            floor = env
        st.floor = floor
        hist = st.hist
        hist.append((end, env_p))
        horizon = end - self._horizon
        while hist[0][0] < horizon:
            hist.popleft()
        run = st.run
        if prev is None:
            run.reset(end, env_p, env)
            return
        delta_p = env_p - prev_p
        if run.drop == 0.0 and run.load is None and delta_p >= 0.0:
            run.t0 = run.last = end  # nothing falling: a taper would start after this bin
            run.level0 = env_p
            run.x0 = env
        else:
            self._taper_run(st, delta_p, env_p, jump=st.bin_pjump, at=end, out=out)
        if st.mode == _NON_ACTIVE:
            delta = env - prev
            if 0.0 < delta < self._min_step_va:
                # A step the envelope shows over more than one bin (a charger's soft start, a
                # step late in a bin): small rises in quick succession add up to one step.
                if end - st.rise_t > _RISE_GAP * self._bin:
                    st.rise = st.rise_p = 0.0
                st.rise += delta
                st.rise_p += delta_p
                st.rise_t = end
                if st.rise >= self._min_step_va:
                    st.excess = max(0.0, st.excess - (st.rise - delta))
                    delta, delta_p = st.rise, st.rise_p
                    prev = env - delta
                    st.rise = st.rise_p = 0.0
            elif delta != 0.0:
                st.rise = st.rise_p = 0.0
            if loads or delta >= self._min_step_va:
                self._step(st, delta, prev, step_w=delta_p, at=end, out=out)
                if delta < 0.0 and st.loads:
                    self._consistent(st, env - floor, end, out)
            elif delta > 0.0:  # no load tracked: small rises and falls only move the excess
                st.excess += delta
            elif delta < 0.0:
                st.excess = max(0.0, st.excess + delta)
            self._edge_sessions(st, end, out)
        if st.open and self._night(end):
            for load in st.open:
                if not load.high:
                    self._escalate(load, end, out)
        for load in st.loads:
            if load.recognised and load.charger and not load.reported:  # deferred (see _raise)
                self._raise(st, load, end, out)
        taper = st.run.load
        if taper is not None and not taper.reported:
            self._raise(st, taper, end, out)

    # -- the taper of the real-power envelope --------------------------------------------------

    def _taper_run(
        self,
        st: _Meter,
        delta: float,
        env_p: float,
        *,
        jump: float,
        at: float,
        out: list[AlertChange],
    ) -> None:
        cfg = self._cfg
        run = st.run
        if delta < 0:
            drop = -delta
            stepped = jump >= _STEP_SHARE * drop and drop >= cfg.quiet_w
            if stepped and drop >= cfg.min_step_w and run.load is None:
                run.reset(at, env_p, st.env)  # an appliance switched off: a taper starts after it
                return
            run.drop += drop
            run.max_drop = max(run.max_drop, drop)
            run.bins += 1
            run.last = at
            if not stepped:
                run.ramp += drop  # a ramp down, not one appliance switched off
        elif delta > 0:
            run.rise += delta
            if run.rise > max(cfg.quiet_w, cfg.taper_rise_fraction * run.drop):
                self._end_run(st, at, ENDED_BY_LOAD, out)
                run.reset(at, env_p, st.env)
                return
        if at - run.last >= cfg.taper_pause_s:  # stopped falling
            self._end_run(st, run.last, ENDED_BY_TAIL, out)
            run.reset(at, env_p, st.env)
            return
        load = run.load
        if load is not None:
            load.level = max(0.0, run.level0 - run.drop - load.base)
            if at - run.t0 > cfg.max_taper_s:
                self._end_run(st, at, ENDED_BY_TIMEOUT, out)
                run.reset(at, env_p, st.env)
            return
        if (
            cfg.min_step_w <= run.drop <= cfg.max_step_w
            and at - run.t0 >= cfg.min_taper_s
            and run.bins >= _MIN_TAPER_BINS
            and run.max_drop <= cfg.taper_max_drop_fraction * run.drop
            and run.ramp >= cfg.taper_ramp_fraction * run.drop
            and self._taper_signal_ok(st, run)
        ):
            found = self._plateau_start(st, run)
            if found is not None and not self._already(st, found[0], run.t0):
                start, base = found
                load = _Load(run.level0 - base, start, at, base)
                load.signal = _POWER
                load.step_w = load.peak
                load.taper_start = run.t0
                load.level = max(0.0, run.level0 - run.drop - base)
                load.recognised = True
                load.recognised_by = RECOGNISED_BY_TAPER
                run.load = load
                self._report(st, load, at, out)

    def _already(self, st: _Meter, start: float, taper_t0: float) -> bool:
        """Whether a session reported earlier explains this taper: one whose plateau began
        within ``_SAME_SESSION_S`` of this one's, or one whose episode was open when the
        taper began."""
        for load in st.reported:
            if abs(load.start - start) <= _SAME_SESSION_S:
                return True
            if load.cleared >= taper_t0 - self._bin and not (
                load.episode is not None
                and load.signal == _NON_ACTIVE
                and load.taper_start is None
                and load.level >= (1.0 - self._cfg.plateau_tolerance) * load.peak
            ):
                return True  # (a session still on its non-active plateau is another charger)
        return False

    def _taper_signal_ok(self, st: _Meter, run: _Run) -> bool:
        """Whether the run's non-active fall is a charger's (meters with current only): small
        beside its real-power fall (PFC), or a low power factor's share of it while no other
        session of the meter is open or tapering (their own fall would be mixed in)."""
        if st.mode != _NON_ACTIVE:
            return True
        x_fall = run.x0 - st.env
        if x_fall <= self._cfg.taper_non_active_fraction * run.drop:
            return True
        if st.open or any(x.charger and x.level > 0 for x in st.loads if x.taper_start is not None):
            return False
        return _LOW_PF_X[0] * run.drop <= x_fall <= _LOW_PF_X[1] * run.drop

    def _plateau_start(self, st: _Meter, run: _Run) -> tuple[float, float] | None:
        """When the plateau before the run began, and the load under it: going back from the
        run's start, the envelope held near the run's top (other loads on top do not matter)
        for at least ``min_plateau_s``, back to a step up of most of the run's fall (within
        ``max_plateau_s``); the session's step is that rise, and its base the run's top less
        the step (a load that was on under the plateau, such as a heater, may have switched
        off since). None when the history does not show a step, a plateau and a taper: a base
        load that faded, or lights going out one by one, have no such step."""
        cfg = self._cfg
        tol = cfg.plateau_tolerance * 2.0 * run.drop
        held = run.level0 - tol
        rise = run.drop - tol
        plateau_from = run.t0 - cfg.min_plateau_s
        earliest = run.t0 - cfg.max_plateau_s
        later = run.level0
        for t, level in reversed(st.hist):
            if t > run.t0:
                continue
            if t < earliest:
                return None
            if t < plateau_from and later - level >= rise:
                return t, max(0.0, run.level0 - (later - level))  # the session began after t
            if level < held:
                return None  # the plateau did not hold
            later = level
        return None

    def _end_run(self, st: _Meter, at: float, ended_by: str, out: list[AlertChange]) -> None:
        load = st.run.load
        if load is None or load.episode is None:
            return
        self._clear(st, load, max(at, load.episode.raised_at.timestamp()), ended_by, out)

    # -- the state machine ---------------------------------------------------------------------

    def _step(
        self,
        st: _Meter,
        delta: float,
        prev: float,
        *,
        step_w: float,
        at: float,
        out: list[AlertChange],
    ) -> None:
        cfg = self._cfg
        if delta >= cfg.min_step_va and len(st.loads) >= _MAX_LOADS:
            self._evict(st)  # loads with an open episode stay
            if len(st.loads) >= _MAX_LOADS:
                st.excess += delta  # eight sessions open at once: no room for a ninth
                delta = 0.0
        if delta >= cfg.min_step_va:
            load = _Load(delta, at - self._show, at, prev)
            load.charger = delta <= cfg.max_step_va
            load.quiet = sum(1 for entry in st.ring if entry[3])
            # The power factor of the step: too high, it is a fridge, a fan, electronics with
            # PFC, or a whole shop opening. A real-power step that fell (a heater switched off in
            # the same window) leaves it unknown.
            if step_w > _MAX_STEP_SHARE * cfg.max_step_w:
                # More real power than one charger draws: a heater or a cooker switched on in
                # the same window hides the step's own. Resistive loads add no non-active
                # power, so the step may still be a charger: its power factor is measured once
                # the real-power envelope has come down (see _pf_settled).
                load.base_p = st.env_p - step_w
            elif step_w > 0:
                load.pf = step_w / (step_w + delta)
                if load.pf > cfg.max_pf:
                    load.charger = False
                load.step_w = step_w
                # Small in both real and non-active power: a laptop adapter or a phone (also
                # CC-CV, without PFC below 75 W), not an e-bike charger (100 W or more at the
                # wall: a 48 V pack at 1.8 A or more).
                if step_w < _SMALL_W and delta < _SMALL_VA:
                    load.charger = False
            self._claim(st, load, at)
            st.loads.append(load)
        elif delta > 0:
            st.excess += delta
        elif delta < 0:
            drop = -delta
            match = self._match(st, drop)
            if match is None:
                self._decline(st, drop, at, out)
            else:
                st.loads.remove(match)
                if match.level > drop:
                    st.excess += match.level - drop
                if match.episode is not None:
                    self._clear(st, match, at, ENDED_BY_OFF, out)
        self._housekeeping(st, at, out)

    @staticmethod
    def _claimed(st: _Meter, edge: _Edge) -> bool:
        """Whether a load explains the edge: one that was reported, or a charger candidate
        still waiting for its plateau."""
        load = edge.load
        return load is not None and (load.reported or (load.charger and load in st.loads))

    def _claim(self, st: _Meter, load: _Load, at: float) -> None:
        """A new step claims unclaimed switch-on edges of its window, closest to its size first,
        until they add up to ``_CLAIM_SHARE`` of it: they are its own, and the edge path (see
        _edge_sessions) does not report them again. The others stay free: chargers plugged in
        minutes apart may show as one step smaller than their sum."""
        lo = at - self._show - (_RISE_GAP + 2) * self._bin
        hi = at - self._window + self._bin
        level = load.level
        free = [e for e in st.edges if lo <= e.t <= hi and not self._claimed(st, e)]
        free.sort(key=lambda e: abs(e.x - level))
        total = 0.0
        for e in free:
            if total >= _CLAIM_SHARE * level:
                break
            e.load = load
            total += e.x

    def _edge_sessions(self, st: _Meter, at: float, out: list[AlertChange]) -> None:
        """Recognition by the switch-on edge: a rise of the non-active load that no switch-off
        has matched for _EDGE_HOLD_S, that is a charger's and held (see _edge_charger), and
        that no step the envelope showed has claimed."""
        cfg = self._cfg
        edges = st.edges
        while edges and at - edges[0].t > cfg.max_plateau_s:
            edges.popleft()
        low = st.ring[-1][1]
        start = at - self._bin
        quiet = st.was_quiet
        for e in edges:
            if e.done:
                continue
            if e.t <= start:
                if low < e.low:  # noqa: PLR1730 (hot path: cheaper than min())
                    e.low = low
                e.quiet += quiet
            if at - e.t < _EDGE_HOLD_S or e.quiet < cfg.min_quiet_bins:
                continue
            if not self._edge_charger(e):
                e.done = True  # for good: its size and power factor stay, its low only falls
                continue
            if self._claimed(st, e):
                continue
            if len(st.loads) >= _MAX_LOADS:
                self._evict(st)
                if len(st.loads) >= _MAX_LOADS:
                    return
            self._edge_load(st, e, at, out)

    def _edge_charger(self, e: _Edge) -> bool:
        """Whether an edge's rise is a charger's that held: its size and power factor, and
        its load never fell below ``_EDGE_SUPPORT`` of it above the level before it (a fridge
        has a higher power factor; a load that idles or went away does not hold)."""
        cfg = self._cfg
        x, p = e.x, e.p
        if not (cfg.min_step_w <= p <= _MAX_STEP_SHARE * cfg.max_step_w) or x > cfg.max_step_va:
            return False
        if p < _SMALL_W and x < _SMALL_VA:
            return False  # a laptop or a phone
        return p / (p + x) <= _EDGE_MAX_PF and e.low - e.base >= _EDGE_SUPPORT * x

    def _edge_load(self, st: _Meter, e: _Edge, at: float, out: list[AlertChange]) -> None:
        """Track and report the charger that switched on at edge ``e``."""
        x, p = e.x, e.p
        load = _Load(x, e.t, at, max(0.0, st.env - x))
        load.step_w = p
        load.pf = p / (p + x)
        e.load = load
        e.done = True
        st.loads.append(load)
        st.excess = max(0.0, st.excess - x)  # the rise the envelope showed is this load
        self._recognise(st, load, at, RECOGNISED_BY_EDGE, out)

    def _consistent(self, st: _Meter, room: float, at: float, out: list[AlertChange]) -> None:
        """Loads cannot add up to more than the envelope above the standby floor: when they do,
        some are gone unseen (or never were): drop other loads first, then unrecognised
        candidates (youngest first), then the session of the open episode."""
        total = sum(load.level for load in st.loads)
        slack = max(self._cfg.min_step_va / 3.0, 0.2 * total)
        if total <= room + slack:
            st.excess = min(st.excess, max(0.0, room - total))
            return
        order = sorted(
            st.loads,
            key=lambda x: (x.episode is not None, x.recognised, x.charger, x.created),
        )
        for load in order:
            if total <= room + slack:
                break
            st.loads.remove(load)
            total -= load.level
            if load.episode is not None:
                self._clear(st, load, at, ENDED_BY_OFF, out)
        st.excess = 0.0

    def _match(self, st: _Meter, drop: float) -> _Load | None:
        """The load that switched off, when a drop matches one's level."""
        tol = self._cfg.match_tolerance
        best: _Load | None = None
        best_err = _INF
        for load in st.loads:
            level = load.level
            if level <= 0:
                continue
            err = abs(level - drop) / level
            if err <= tol and err < best_err:
                best, best_err = load, err
        return best

    def _decline(self, st: _Meter, drop: float, at: float, out: list[AlertChange]) -> None:
        """A gradual drop: tapering candidates first, then small rises, then plateaus."""
        cfg = self._cfg
        cap = cfg.taper_step_fraction
        for load in st.loads:
            if drop <= 0:
                break
            if load.charger and load.taper_start is not None:
                take = min(load.level, drop, cap * load.peak)
                load.level -= take
                drop -= take
        take = min(st.excess, drop)
        st.excess -= take
        drop -= take
        for load in st.loads[:]:
            if drop <= 0:
                break
            if not load.charger or load.taper_start is not None:
                continue
            take = min(load.level, drop, cap * load.peak)
            load.level -= take
            drop -= take
            if load.level < (1.0 - cfg.plateau_tolerance) * load.peak:
                if at - load.start < cfg.min_plateau_s and load.episode is None:
                    st.loads.remove(load)  # fell before its plateau held: not a CC phase
                    continue
                load.taper_start = at - self._bin
        for load in st.loads[:]:
            if load.charger and load.taper_start is not None:
                self._taper(st, load, at, out)

    def _taper(self, st: _Meter, load: _Load, at: float, out: list[AlertChange]) -> None:
        """A candidate tapering in the non-active signal: its session ends at the tail (it is
        recognised by its plateau; tapers are recognised on real power, see _taper_run)."""
        cfg = self._cfg
        if load.level <= max(cfg.tail_va, cfg.tail_fraction * load.peak):
            st.loads.remove(load)
            if load.episode is not None:
                self._clear(st, load, at, ENDED_BY_TAIL, out)

    def _housekeeping(self, st: _Meter, at: float, out: list[AlertChange]) -> None:
        cfg = self._cfg
        for load in st.open[:]:
            if load is not st.run.load and self._outlived(load, at):
                # No charger runs this long: what is left of the step is another load (a PC
                # left on, a second appliance that took its place), so the session ended unseen.
                if load in st.loads:
                    st.loads.remove(load)
                self._clear(st, load, at, ENDED_BY_TIMEOUT, out)
        for load in st.loads[:]:
            if not load.charger:
                continue
            if self._outlived(load, at):  # (its episode, if any, was cleared above)
                if load.taper_start is None:
                    load.charger = False  # a continuous load, not a charger
                else:
                    st.loads.remove(load)
            elif (
                load.taper_start is None
                and st.mode == _NON_ACTIVE
                and not load.recognised
                and at - load.created >= self._hold(load)
                and load.level >= cfg.recognise_fraction * load.peak
                and load.quiet >= cfg.min_quiet_bins
                and self._pf_settled(st, load)
            ):
                self._recognise(st, load, at, RECOGNISED_BY_PLATEAU, out)

    def _outlived(self, load: _Load, at: float) -> bool:
        """Whether a session has run longer than any charger does: its plateau beyond
        ``max_plateau_s`` or its taper beyond ``max_taper_s``."""
        cfg = self._cfg
        if load.taper_start is None:
            return at - load.start > cfg.max_plateau_s
        return at - load.taper_start > cfg.max_taper_s

    def _hold(self, load: _Load) -> float:
        """How long a candidate's plateau must hold after it showed in the envelope. A small
        step (below ``_SMALL_HOLD_VA``) may be a laptop or two (CC-CV too, at most 1.5 h in
        all): it must hold at least ``_SMALL_HOLD_S``; an e-bike pack charges for 2 h or more."""
        if load.peak < _SMALL_HOLD_VA:
            return max(self._cfg.plateau_hold_s, _SMALL_HOLD_S)
        return self._cfg.plateau_hold_s

    def _pf_settled(self, st: _Meter, load: _Load) -> bool:
        """Whether the power factor of a step that came with a large resistive load is known
        by now (that load has switched off: the real-power envelope above the step's base is
        what one charger draws) and low enough for a charger."""
        base_p = load.base_p
        if base_p is None:
            return True
        cfg = self._cfg
        if load.quiet < _DEFER_QUIET * cfg.min_quiet_bins:
            return False
        step_w = st.env_p - base_p
        if step_w > _MAX_STEP_SHARE * cfg.max_step_w:
            return False  # still hidden: wait
        if step_w < cfg.min_step_w:
            load.charger = False  # less than a charger draws: the non-active step is another load
            return False
        load.base_p = None
        load.step_w = step_w
        load.pf = step_w / (step_w + load.peak)
        if load.pf > cfg.max_pf:
            load.charger = False
            return False
        return True

    def _recognise(
        self, st: _Meter, load: _Load, at: float, by: str, out: list[AlertChange]
    ) -> None:
        load.recognised = True
        load.recognised_by = by
        self._report(st, load, at, out)

    def _report(self, st: _Meter, load: _Load, at: float, out: list[AlertChange]) -> None:
        """Raise the episode of a newly recognised session. Each session has its own episode,
        so a second battery charged alongside the first is reported while it charges."""
        if not load.reported:
            self._raise(st, load, at, out)

    @staticmethod
    def _evict(st: _Meter) -> None:
        for load in st.loads:
            if load.episode is None:
                st.loads.remove(load)
                return

    # -- deadlines (silence of a meter with an open episode) -----------------------------------

    def _reschedule(self, st: _Meter) -> None:
        if not st.open:
            return
        at = st.last + self._cfg.stale_after_s
        if st.scheduled is None or at < st.scheduled:
            st.scheduled = at
            self._deadlines.push(at, st.index)

    def _advance(self, now: float, out: list[AlertChange]) -> None:
        deadlines = self._deadlines
        heap = deadlines.heap
        meters = self._by_index
        stale = self._cfg.stale_after_s
        while heap and heap[0][0] <= now:
            due, index = deadlines.pop()
            st = meters[index]
            if st.scheduled != due:
                continue
            st.scheduled = None
            if not st.open:
                continue
            at = st.last + stale
            if at <= due:
                for load in st.open[:]:
                    if load in st.loads:
                        st.loads.remove(load)
                    self._clear(st, load, at, ENDED_BY_SILENCE, out)
            else:
                st.scheduled = at
                deadlines.push(at, index)

    # -- episodes ------------------------------------------------------------------------------

    def _night(self, t: float) -> bool:
        cfg = self._cfg
        return self._cal.in_hours(t, cfg.night_start_hour, cfg.night_end_hour)

    def _raise(self, st: _Meter, load: _Load, at: float, out: list[AlertChange]) -> None:
        """Raise ``load``'s episode; when another session of the meter was raised at the same
        instant (episode ids are made of kind, subject and raise time), it waits for the
        meter's next bin."""
        cfg = self._cfg
        raised = self._cal.dt(at)
        if any(x.episode is not None and x.episode.raised_at == raised for x in st.open):
            return
        high = (
            load.step_w is not None and load.step_w >= cfg.high_step_w
        ) or self._cal.hours_between(load.start, at, cfg.night_start_hour, cfg.night_end_hour)
        load.high = high
        load.reported = True
        ep = make_episode(
            KIND,
            Severity.HIGH if high else Severity.MEDIUM,
            st.subject,
            raised_at=raised,
            evidence=self._evidence(st, load, at, None),
            scope=self._scope,
        )
        load.episode = ep
        st.open.append(load)
        rep = st.reported
        rep.append(load)
        while rep and rep[0].cleared < at - self._horizon:
            rep.popleft()
        out.append(AlertChange(Change.RAISED, ep))
        self._reschedule(st)

    def _escalate(self, load: _Load, at: float, out: list[AlertChange]) -> None:
        ep = load.episode
        assert ep is not None
        load.high = True
        # the meter is only needed for the evidence's figures, which come from the load
        new = restate(ep, severity=Severity.HIGH, evidence=self._evidence(None, load, at, None))
        load.episode = new
        out.append(AlertChange(Change.UPDATED, new))

    def _clear(
        self, st: _Meter, load: _Load, at: float, ended_by: str, out: list[AlertChange]
    ) -> None:
        ep = load.episode
        assert ep is not None
        cleared = restate(
            ep, evidence=self._evidence(st, load, at, ended_by), cleared_at=self._cal.dt(at)
        )
        out.append(AlertChange(Change.CLEARED, cleared))
        load.cleared = at
        load.episode = None
        load.high = False
        st.open.remove(load)

    def _evidence(
        self, st: _Meter | None, load: _Load, until: float, ended_by: str | None
    ) -> dict[str, EvidenceValue]:
        cal = self._cal
        cfg = self._cfg
        taper_start = load.taper_start if load.taper_start is not None else until
        non_active = load.signal == _NON_ACTIVE
        return {
            "step_w": r1(load.step_w) if load.step_w is not None else None,
            "step_non_active_va": r1(load.peak) if non_active else None,
            "signal": SIGNAL_NON_ACTIVE if non_active else SIGNAL_POWER,
            "baseline": r1(load.base),
            "start": cal.iso(load.start),
            "plateau_minutes": r1((taper_start - load.start) / 60.0),
            "taper_start": cal.iso(load.taper_start),
            "taper_minutes": r1(max(0.0, until - taper_start) / 60.0),
            "level_left": r1(load.level),
            "power_factor": r2(min(load.pf, 1.0)) if load.pf is not None else None,
            "recognised_by": load.recognised_by,
            "night": cal.hours_between(load.start, until, cfg.night_start_hour, cfg.night_end_hour),
            "ended_by": ended_by,
        }
