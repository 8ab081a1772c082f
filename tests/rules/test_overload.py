"""The ``overload`` rule, from small hand-made meter sequences, through the engine."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest

from contract.alerts import AlertChange, AlertEpisode, AlertKind, Change, Severity, Subject
from contract.alerts import episode_id as contract_episode_id
from contract.events import MeterReading, RuleInput, Tick
from contract.site import MeterPlacement, OverloadConfig, RulesConfig, Site, Unit
from rules.engine import RuleEngine
from rules.overload import OverloadRule
from tests.rules.builders import SCOPE, TZ, feed

DAY = datetime(2026, 3, 2, 19, 0, tzinfo=TZ)  # a Monday evening
METER = "m-3-301"
SUBJECT = Subject(unit_id="3-301", meter_id=METER)

SITE = Site(
    site_id=SCOPE,
    units=[
        Unit(unit_id="3-301", building="3", rated_current_a=40),
        Unit(unit_id="3-302", building="3"),  # no rating
    ],
    meters=[
        MeterPlacement(meter_id=METER, unit_id="3-301"),
        MeterPlacement(meter_id="m-3-302", unit_id="3-302"),
    ],
)


def config(**overload: float | None) -> RulesConfig:
    return RulesConfig(overload=OverloadConfig.model_validate(overload))


def engine(cfg: RulesConfig | None = None) -> RuleEngine:
    rules = cfg or RulesConfig()
    return RuleEngine(
        SITE, rules, scope=SCOPE, rules=[OverloadRule(SITE, rules.overload, scope=SCOPE)]
    )


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def reading(t: datetime, amps: float | None, *, meter: str = METER, **kw: float) -> MeterReading:
    power = kw.pop("power_w", (amps or 0.0) * 230.0)
    return MeterReading(ts=t, meter_id=meter, power_w=power, current_a=amps, **kw)


def series(start: datetime, seconds: float, amps: float, every: float = 10) -> list[RuleInput]:
    """Readings at ``amps`` every ``every`` s over ``[start, start + seconds)``."""
    n = round(seconds / every)
    return [reading(start + s(i * every), amps) for i in range(n)]


def evidence(
    since: datetime,
    until: datetime,
    *,
    peak: float,
    mean: float,
    last: datetime,
    ended_by: str | None = None,
    source: str = "measured current_a",
) -> dict[str, object]:
    return {
        "rated_current_a": 40.0,
        "rated_source": "unit",
        "peak_current_a": peak,
        "mean_current_a": mean,
        "minutes_over": round((until - since).total_seconds() / 60, 1),
        "over_since": since.isoformat(),
        "peak_power_w": round(peak * 230.0, 1),
        "current_source": source,
        "last_reading_at": last.isoformat(),
        "ended_by": ended_by,
    }


def episode(
    raised_at: datetime,
    severity: Severity,
    ev: dict[str, object],
    cleared_at: datetime | None = None,
) -> AlertEpisode:
    return AlertEpisode(
        kind=AlertKind.OVERLOAD,
        severity=severity,
        subject=SUBJECT,
        raised_at=raised_at,
        evidence=ev,  # type: ignore[arg-type]
        cleared_at=cleared_at,
        id=contract_episode_id(AlertKind.OVERLOAD, SUBJECT, raised_at, SCOPE),
    )


def changes_of(events: Iterable[RuleInput], cfg: RulesConfig | None = None) -> list[AlertChange]:
    return feed(engine(cfg), events)


# -- the sustain threshold -------------------------------------------------------------------


def test_overload_of_4_59_raises_nothing() -> None:
    events = [*series(DAY, 299, 45.0, every=1), reading(DAY + s(299), 20.0), Tick(DAY + s(900))]
    assert changes_of(events) == []


def test_overload_of_5_00_raises_at_the_threshold() -> None:
    events = [*series(DAY, 300, 45.0), reading(DAY + s(300), 45.0)]
    assert changes_of(events) == [
        AlertChange(
            Change.RAISED,
            episode(
                DAY + s(300),
                Severity.MEDIUM,
                evidence(DAY, DAY + s(300), peak=45.0, mean=45.0, last=DAY + s(290)),
            ),
        )
    ]


def test_reading_below_the_rating_at_exactly_5_00_still_raises() -> None:
    # The last reading above the rating is believed until the next one: over for the full 5 min.
    events = [*series(DAY, 300, 45.0), reading(DAY + s(300), 10.0)]
    changes = changes_of(events)
    assert [(c.change, c.episode.raised_at) for c in changes] == [(Change.RAISED, DAY + s(300))]


def test_a_short_excursion_and_a_dip_do_not_make_an_episode() -> None:
    # 2 min over, 10 s at the rating (not above it), 4 min over: never 5 min in a row.
    events = [
        *series(DAY, 120, 45.0),
        reading(DAY + s(120), 40.0),
        *series(DAY + s(130), 240, 45.0),
        reading(DAY + s(370), 10.0),
        Tick(DAY + s(3600)),
    ]
    assert changes_of(events) == []


def test_a_tick_raises_without_a_new_reading_and_silence_drops_a_run() -> None:
    eng = engine()
    assert feed(eng, series(DAY, 100, 45.0)) == []
    assert feed(eng, [Tick(DAY + s(300))]) == []  # last reading at 90 s, believed until 270 s
    eng = engine()
    assert feed(eng, series(DAY, 140, 45.0)) == []  # last reading at 130 s, believed until 310 s
    assert [c.change for c in eng.process(Tick(DAY + s(300)))] == [Change.RAISED]
    eng = engine()
    feed(eng, series(DAY, 300, 45.0))
    assert [c.change for c in eng.process(Tick(DAY + s(300)))] == [Change.RAISED]


# -- hysteresis and clearing -----------------------------------------------------------------


def test_clears_after_3_minutes_below_95_percent_with_cleared_at_the_first_low_reading() -> None:
    over = series(DAY, 600, 45.0)
    low = series(DAY + s(600), 200, 30.0)
    changes = changes_of([*over, *low])
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    cleared = changes[-1].episode
    assert cleared.cleared_at == DAY + s(600)
    assert cleared.evidence["ended_by"] == "below_rating"
    assert cleared.evidence["minutes_over"] == 10.0
    assert cleared.id == changes[0].episode.id


def test_a_dip_shorter_than_the_hysteresis_keeps_the_episode_open() -> None:
    events = [
        *series(DAY, 600, 45.0),
        *series(DAY + s(600), 170, 30.0),  # below 95 % for 2:50 only
        *series(DAY + s(770), 600, 45.0),
        *series(DAY + s(1370), 190, 30.0),
    ]
    changes = changes_of(events)
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    assert changes[-1].episode.cleared_at == DAY + s(1370)


def test_current_between_95_and_100_percent_neither_raises_nor_clears() -> None:
    events = [*series(DAY, 600, 45.0), *series(DAY + s(600), 1200, 39.0)]
    eng = engine()
    changes = feed(eng, events)
    assert [c.change for c in changes] == [Change.RAISED]
    assert len(eng.open_episodes()) == 1


def test_a_gap_in_the_readings_does_not_split_an_episode() -> None:
    # 14 minutes without readings in the middle of an overload (a meter missing polls).
    events = [*series(DAY, 600, 45.0), *series(DAY + s(1440), 600, 45.0), Tick(DAY + s(2100))]
    eng = engine()
    assert [c.change for c in feed(eng, events)] == [Change.RAISED]
    assert len(eng.open_episodes()) == 1


def test_a_silent_meter_clears_an_open_episode_at_last_reading_plus_stale() -> None:
    eng = engine()
    feed(eng, series(DAY, 600, 45.0))
    changes = feed(eng, [Tick(DAY + s(4000))])
    assert [c.change for c in changes] == [Change.CLEARED]
    assert changes[0].episode.cleared_at == DAY + s(590 + 1800)
    assert changes[0].episode.evidence["ended_by"] == "silence"


# -- severity and updates --------------------------------------------------------------------


def test_severity_high_from_1_45_times_the_rating_and_update_on_a_higher_peak() -> None:
    events = [
        *series(DAY, 400, 45.0),
        *series(DAY + s(400), 60, 50.0),
        *series(DAY + s(460), 60, 60.0),
    ]
    changes = changes_of(events)
    assert [(c.change, c.episode.severity) for c in changes] == [
        (Change.RAISED, Severity.MEDIUM),
        (Change.UPDATED, Severity.MEDIUM),  # peak 45 -> 50 A (+11 %)
        (Change.UPDATED, Severity.HIGH),  # 60 A >= 1.45 x 40 A
    ]
    assert changes[-1].episode.evidence["peak_current_a"] == 60.0


def test_a_small_rise_in_peak_is_not_republished() -> None:
    events = [*series(DAY, 400, 45.0), *series(DAY + s(400), 600, 47.0)]
    assert [c.change for c in changes_of(events)] == [Change.RAISED]


def test_an_overload_lasting_an_hour_escalates_at_the_hour() -> None:
    changes = changes_of(series(DAY, 3700, 42.0, every=30))
    assert [(c.change, c.episode.severity) for c in changes] == [
        (Change.RAISED, Severity.MEDIUM),
        (Change.UPDATED, Severity.HIGH),
    ]
    assert changes[1].episode.evidence["minutes_over"] == 60.0


# -- current and rating ----------------------------------------------------------------------


def test_missing_current_is_derived_from_power_and_voltage_and_said_so() -> None:
    events: list[RuleInput] = [
        MeterReading(ts=DAY + s(i * 10), meter_id=METER, power_w=10_350.0, voltage_v=230.0)
        for i in range(31)
    ]
    (raised,) = changes_of(events)
    assert raised.episode.evidence["peak_current_a"] == 45.0
    assert raised.episode.evidence["current_source"] == "derived from power_w / voltage_v"


def test_missing_voltage_falls_back_to_220_v_nominal() -> None:
    events: list[RuleInput] = [
        MeterReading(ts=DAY + s(i * 10), meter_id=METER, power_w=9_900.0) for i in range(31)
    ]
    (raised,) = changes_of(events)
    assert raised.episode.evidence["peak_current_a"] == 45.0
    assert raised.episode.evidence["current_source"] == "derived from power_w / 220 V nominal"


def test_a_flat_without_rating_is_skipped_unless_a_default_is_configured() -> None:
    events = [reading(DAY + s(i * 10), 45.0, meter="m-3-302") for i in range(40)]
    assert changes_of(events) == []
    changes = changes_of(events, config(default_rated_current_a=32))
    assert [c.change for c in changes] == [Change.RAISED]
    assert changes[0].episode.subject == Subject(unit_id="3-302", meter_id="m-3-302")
    assert changes[0].episode.evidence["rated_source"] == "default"


@pytest.mark.parametrize("sustain", [0.0, 60.0])
def test_configured_sustain(sustain: float) -> None:
    changes = changes_of(series(DAY, 120, 45.0), config(sustain_s=sustain))
    assert [(c.change, c.episode.raised_at) for c in changes] == [(Change.RAISED, DAY + s(sustain))]


def test_finish_reports_the_open_episode_up_to_the_latest_time() -> None:
    eng = engine()
    feed(eng, series(DAY, 900, 45.0))
    (ep,) = eng.finish()
    assert ep.cleared_at is None
    assert ep.evidence["minutes_over"] == round(890 / 60, 1)
    assert eng.open_episodes()[0].id == ep.id
