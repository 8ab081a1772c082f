"""The ``data_silence`` rule, from small hand-made sequences, through the engine."""

from __future__ import annotations

from datetime import datetime, timedelta

from contract.alerts import AlertChange, AlertEpisode, AlertKind, Change, Severity, Subject
from contract.alerts import episode_id as contract_episode_id
from contract.events import (
    CardSwipe,
    ChargingSensorReading,
    MeterReading,
    RuleInput,
    Tick,
)
from contract.site import (
    DataSilenceConfig,
    Location,
    MeterPlacement,
    ReaderPlacement,
    RulesConfig,
    SensorPlacement,
    Site,
    Unit,
)
from rules.data_silence import DataSilenceRule
from rules.engine import RuleEngine
from tests.rules.builders import SCOPE, TZ, feed

START = datetime(2026, 3, 1, 0, 0, tzinfo=TZ)
DAYS5 = timedelta(days=5)
H = timedelta(hours=1)

SITE = Site(
    site_id=SCOPE,
    units=[Unit(unit_id="3-301", building="3"), Unit(unit_id="5-101", building="5")],
    meters=[MeterPlacement(meter_id="m-3-301", unit_id="3-301")],
    sensors=[
        SensorPlacement(sensor_id="ble-flat", location=Location.UNIT, unit_id="3-301"),
        SensorPlacement(sensor_id="ble-stair", location=Location.STAIRWELL, building="3"),
    ],
    readers=[
        ReaderPlacement(reader_id="b3-north", building="3"),
        ReaderPlacement(reader_id="b3-south", building="3"),
        ReaderPlacement(reader_id="b5-entrance", building="5"),
    ],
)
METER = Subject(unit_id="3-301", meter_id="m-3-301")
NORTH = Subject(building="3", reader_id="b3-north")
SOUTH = Subject(building="3", reader_id="b3-south")


def config(**silence: float) -> RulesConfig:
    return RulesConfig(data_silence=DataSilenceConfig.model_validate(silence))


def engine(cfg: RulesConfig | None = None) -> RuleEngine:
    rules = cfg or RulesConfig()
    rule = DataSilenceRule(SITE, rules.data_silence, scope=SCOPE)
    return RuleEngine(SITE, rules, scope=SCOPE, rules=[rule])


def meter(t: datetime) -> MeterReading:
    return MeterReading(ts=t, meter_id="m-3-301", power_w=100.0)


def swipe(t: datetime, reader: str, card: str = "c1") -> CardSwipe:
    return CardSwipe(ts=t, reader_id=reader, card=card)


def alive(t0: datetime, t1: datetime, *, skip: tuple[str, ...] = ()) -> list[RuleInput]:
    """Every device of the site reporting once an hour in ``[t0, t1)``, except ``skip``."""
    events: list[RuleInput] = []
    t = t0
    while t < t1:
        if "m-3-301" not in skip:
            events.append(meter(t))
        for s in ("ble-flat", "ble-stair"):
            if s not in skip:
                events.append(ChargingSensorReading(ts=t, sensor_id=s, charging=False))
        for r in ("b3-north", "b3-south", "b5-entrance"):
            if r not in skip:
                events.append(swipe(t, r))
        t += H
    return events


def episode(
    subject: Subject,
    raised_at: datetime,
    severity: Severity,
    evidence: dict[str, object],
    cleared_at: datetime | None = None,
) -> AlertEpisode:
    return AlertEpisode(
        kind=AlertKind.DATA_SILENCE,
        severity=severity,
        subject=subject,
        raised_at=raised_at,
        evidence=evidence,  # type: ignore[arg-type]
        cleared_at=cleared_at,
        id=contract_episode_id(AlertKind.DATA_SILENCE, subject, raised_at, SCOPE),
    )


def test_silence_of_exactly_5_days_raises_at_last_data_plus_5_days() -> None:
    last = START + 10 * H
    eng = engine()
    events = [*alive(START, last + H), *alive(last + H, last + DAYS5 + H, skip=("m-3-301",))]
    changes = [c for c in feed(eng, events) if c.episode.subject == METER]
    assert changes == [
        AlertChange(
            Change.RAISED,
            episode(
                METER,
                last + DAYS5,
                Severity.HIGH,
                {
                    "device": "meter",
                    "reason": "no_data",
                    "last_data_at": last.isoformat(),
                    "silent_since": last.isoformat(),
                    "never_reported": False,
                    "silent_hours": 120.0,
                    "threshold_hours": 120.0,
                    "peer_swipes": None,
                    "ended_by": None,
                },
            ),
        )
    ]


def test_silence_just_short_of_5_days_raises_nothing() -> None:
    last = START + 10 * H
    events: list[RuleInput] = [
        meter(last),
        Tick(last + DAYS5 - timedelta(seconds=1)),
        meter(last + DAYS5 - timedelta(seconds=1)),
        Tick(last + DAYS5 + H),
    ]
    assert [c for c in feed(engine(), events) if c.episode.subject == METER] == []


def test_data_resuming_clears_at_the_first_new_data() -> None:
    eng = engine()
    back = START + DAYS5 + 3 * H
    changes = feed(eng, [meter(START), Tick(back - H), meter(back), meter(back + H)])
    mine = [c for c in changes if c.episode.subject == METER]
    assert [(c.change, c.episode.raised_at, c.episode.cleared_at) for c in mine] == [
        (Change.RAISED, START + DAYS5, None),
        (Change.CLEARED, START + DAYS5, back),
    ]
    assert mine[1].episode.evidence["ended_by"] == "data_resumed"
    assert mine[1].episode.evidence["silent_hours"] == 123.0
    assert eng.open_episodes() == [] or all(ep.subject != METER for ep in eng.open_episodes())


def test_a_device_that_never_reported_counts_from_the_start_of_the_input() -> None:
    # The first event comes from a device the site does not know: it still starts the clock.
    first = MeterReading(ts=START, meter_id="m-unknown", power_w=1.0)
    eng = engine()
    changes = feed(eng, [first, Tick(START + DAYS5)])
    raised = {c.episode.subject.key(): c for c in changes}
    assert set(raised) == {
        METER.key(),
        NORTH.key(),
        SOUTH.key(),
        Subject(building="5", reader_id="b5-entrance").key(),
        Subject(unit_id="3-301", sensor_id="ble-flat").key(),
        Subject(building="3", sensor_id="ble-stair").key(),
    }
    ev = raised[METER.key()].episode.evidence
    assert ev["never_reported"] is True
    assert ev["last_data_at"] is None
    assert ev["silent_since"] == START.isoformat()
    assert all(c.episode.raised_at == START + DAYS5 for c in changes)


def test_reader_silent_a_day_while_its_peer_is_busy() -> None:
    last = START + 8 * H
    events: list[RuleInput] = [swipe(last, "b3-south")]
    events += [swipe(last + i * 10 * timedelta(minutes=1), "b3-north") for i in range(1, 200)]
    changes = [c for c in feed(engine(), events) if c.episode.subject == SOUTH]
    assert [(c.change, c.episode.raised_at, c.episode.severity) for c in changes] == [
        (Change.RAISED, last + 24 * H, Severity.MEDIUM)
    ]
    ev = changes[0].episode.evidence
    assert ev["reason"] == "peer_busy"
    assert ev["threshold_hours"] == 24.0
    assert ev["peer_swipes"] == 143  # north swipes in the 24 h (every 10 min)


def test_readers_both_quiet_at_night_raise_nothing() -> None:
    # With a 6 h threshold, a night without swipes at either entrance is not a dead reader.
    cfg = config(reader_silence_s=6 * 3600)
    evening = START + 22 * H
    events: list[RuleInput] = [swipe(evening, "b3-south"), swipe(evening, "b3-north")]
    events += [Tick(evening + i * H) for i in range(1, 9)]
    events += [swipe(evening + 9 * H, "b3-north"), swipe(evening + 9 * H, "b3-south")]
    assert [c for c in feed(engine(cfg), events) if c.episode.subject.reader_id] == []


def test_a_waiting_reader_is_raised_at_the_peer_swipe_that_makes_it_busy() -> None:
    cfg = config(reader_silence_s=6 * 3600)
    t0 = START + 20 * H
    events: list[RuleInput] = [swipe(t0, "b3-south"), swipe(t0, "b3-north"), Tick(t0 + 7 * H)]
    busy = [swipe(t0 + 8 * H + i * timedelta(minutes=1), "b3-north") for i in range(10)]
    changes = [c for c in feed(engine(cfg), [*events, *busy]) if c.episode.subject == SOUTH]
    # North's swipe at t0 came after south's last one: it is the first of the 10.
    assert [(c.change, c.episode.raised_at) for c in changes] == [
        (Change.RAISED, t0 + 8 * H + 8 * timedelta(minutes=1))
    ]


def test_a_peer_busy_episode_escalates_at_5_days_and_clears_when_the_reader_swipes() -> None:
    last = START + 8 * H
    events: list[RuleInput] = [swipe(last, "b3-south")]
    t = last
    while t < last + DAYS5 + 2 * H:
        t += timedelta(minutes=30)
        events.append(swipe(t, "b3-north"))
    back = t + timedelta(minutes=1)
    events.append(swipe(back, "b3-south"))
    changes = [c for c in feed(engine(), events) if c.episode.subject == SOUTH]
    assert [(c.change, c.episode.severity) for c in changes] == [
        (Change.RAISED, Severity.MEDIUM),
        (Change.UPDATED, Severity.HIGH),
        (Change.CLEARED, Severity.HIGH),
    ]
    assert changes[1].episode.evidence["reason"] == "no_data"
    assert changes[2].episode.cleared_at == back
    assert len({c.episode.id for c in changes}) == 1


def test_a_lone_reader_has_no_peer_rule() -> None:
    events: list[RuleInput] = [swipe(START, "b5-entrance"), swipe(START, "b3-north")]
    events += [swipe(START + i * H, "b3-north") for i in range(1, 50)]
    assert [c for c in feed(engine(), events) if c.episode.subject.reader_id == "b5-entrance"] == []


def test_ticks_change_only_when_a_change_is_seen() -> None:
    events: list[RuleInput] = [meter(START), swipe(START, "b3-north"), swipe(START, "b3-south")]
    later = [meter(START + DAYS5 + 5 * H)]
    with_ticks = feed(engine(), [*events, *(Tick(START + i * H) for i in range(1, 125)), *later])
    without = feed(engine(), [*events, *later])
    assert [c.episode for c in with_ticks] == [c.episode for c in without]


def test_the_default_engine_with_its_meter_log_gives_the_same_episodes() -> None:
    # The engine records meter readings in its log; the rule sees a meter's reading only once
    # it has asked for it (the meter is silent). Same input, same episodes as the rule alone.
    last = START + 10 * H
    back = last + DAYS5 + 3 * H
    stream: list[RuleInput] = [
        *alive(START, last + H),
        *alive(last + H, back, skip=("m-3-301",)),
        meter(back),
        *alive(back + H, back + 5 * H),
    ]
    standalone = feed(engine(), stream)
    default = RuleEngine(SITE, RulesConfig(), scope=SCOPE)
    assert [c for c in feed(default, stream) if c.episode.kind is AlertKind.DATA_SILENCE] == (
        standalone
    )
    mine = [c for c in standalone if c.episode.subject == METER]
    assert [(c.change, c.episode.cleared_at) for c in mine] == [
        (Change.RAISED, None),
        (Change.CLEARED, back),
    ]
