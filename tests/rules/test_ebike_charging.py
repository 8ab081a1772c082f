"""The ``ebike_charging`` rule, from small hand-made event sequences, through the engine."""

from __future__ import annotations

from datetime import datetime

import pytest

from contract.alerts import AlertChange, Change, Severity
from contract.events import MeterReading, RuleInput
from tests.rules.builders import (
    CORRIDOR,
    DAY,
    EVENING,
    FLAT,
    NIGHT,
    SHED,
    STAIR,
    config,
    engine,
    episode,
    evidence,
    feed,
    off,
    on,
    s,
    tick,
)


def raised(
    sensor: str,
    severity: Severity,
    since: datetime,
    reports: int,
    last: datetime,
    peak: float | None = None,
    sustain: float = 120,
) -> AlertChange:
    at = since + s(sustain)
    return AlertChange(
        Change.RAISED,
        episode(
            sensor=sensor,
            severity=severity,
            raised_at=at,
            evidence=evidence(
                sensor=sensor, since=since, until=at, reports=reports, last=last, peak=peak
            ),
        ),
    )


# -- the sustain threshold -------------------------------------------------------------------


def test_charging_for_119_9_s_does_not_raise() -> None:
    eng = engine()
    assert feed(eng, [on(DAY), on(DAY + s(60)), on(DAY + s(119.9)), tick(DAY + s(119.9))]) == []
    assert eng.open_episodes() == []


def test_charging_for_120_s_raises_at_the_threshold() -> None:
    eng = engine()
    changes = feed(eng, [on(DAY), on(DAY + s(60)), on(DAY + s(119.9)), tick(DAY + s(120))])
    assert changes == [raised(FLAT, Severity.MEDIUM, DAY, reports=3, last=DAY + s(119.9))]


def test_report_exactly_at_the_threshold_raises_before_it_is_counted() -> None:
    # Deadlines at or before an event's time fire before the event is applied.
    eng = engine()
    changes = feed(eng, [on(DAY), on(DAY + s(120))])
    assert changes == [raised(FLAT, Severity.MEDIUM, DAY, reports=1, last=DAY)]


def test_tick_raises_without_a_new_report() -> None:
    eng = engine()
    assert feed(eng, [on(DAY, power=180.0)]) == []
    assert eng.process(tick(DAY + s(150))) == [
        raised(FLAT, Severity.MEDIUM, DAY, reports=1, last=DAY, peak=180.0)
    ]


def test_any_device_event_lets_time_pass() -> None:
    # Replay has no ticks: a meter reading after the threshold raises the episode.
    eng = engine()
    feed(eng, [on(DAY)])
    assert eng.process(MeterReading(ts=DAY + s(130), meter_id="m-3-301", power_w=90.0)) == [
        raised(FLAT, Severity.MEDIUM, DAY, reports=1, last=DAY)
    ]


def test_not_charging_before_the_threshold_restarts_the_sustain() -> None:
    eng = engine()
    events: list[RuleInput] = [
        on(DAY),
        on(DAY + s(100)),
        off(DAY + s(110)),
        on(DAY + s(115)),
        tick(DAY + s(200)),
    ]
    assert feed(eng, events) == []
    assert eng.process(tick(DAY + s(235))) == [
        raised(FLAT, Severity.MEDIUM, DAY + s(115), reports=1, last=DAY + s(115))
    ]


def test_configured_sustain() -> None:
    eng = engine(config(min_duration_s=300))
    assert feed(eng, [on(DAY), tick(DAY + s(299))]) == []
    assert eng.process(tick(DAY + s(300))) == [
        raised(FLAT, Severity.MEDIUM, DAY, reports=1, last=DAY, sustain=300)
    ]


# -- where and when: subject and severity ----------------------------------------------------


def test_bike_shed_never_raises() -> None:
    eng = engine()
    events: list[RuleInput] = [on(NIGHT + s(60 * i), SHED, power=250.0) for i in range(240)]
    assert feed(eng, [*events, tick(NIGHT + s(86_400))]) == []
    assert eng.finish() == []
    assert eng.ignored == 0


def test_stairwell_is_high_by_day() -> None:
    eng = engine()
    changes = feed(eng, [on(DAY, STAIR, power=150.0), tick(DAY + s(120))])
    assert changes == [raised(STAIR, Severity.HIGH, DAY, reports=1, last=DAY, peak=150.0)]


def test_corridor_placed_by_unit_gets_the_units_building() -> None:
    eng = engine()
    changes = feed(eng, [on(DAY, CORRIDOR), tick(DAY + s(120))])
    assert changes == [raised(CORRIDOR, Severity.HIGH, DAY, reports=1, last=DAY)]


def test_flat_by_day_is_medium() -> None:
    eng = engine()
    changes = feed(eng, [on(DAY, power=120.0), on(DAY + s(60), power=121.0), tick(DAY + s(120))])
    assert changes == [raised(FLAT, Severity.MEDIUM, DAY, reports=2, last=DAY + s(60), peak=121.0)]


def test_flat_at_night_is_high() -> None:
    eng = engine()
    changes = feed(eng, [on(NIGHT, power=180.0), tick(NIGHT + s(120))])
    assert changes == [raised(FLAT, Severity.HIGH, NIGHT, reports=1, last=NIGHT, peak=180.0)]


def test_flat_charging_into_the_night_start_is_high() -> None:
    start = datetime(2026, 3, 1, 21, 59, tzinfo=DAY.tzinfo)
    eng = engine()
    changes = feed(eng, [on(start), tick(start + s(120))])
    assert changes == [raised(FLAT, Severity.HIGH, start, reports=1, last=start)]


def test_flat_before_the_night_end_is_high_after_it_medium() -> None:
    early = datetime(2026, 3, 2, 5, 57, tzinfo=DAY.tzinfo)  # raised 05:59
    morning = datetime(2026, 3, 2, 6, 0, tzinfo=DAY.tzinfo)  # raised 06:02
    assert feed(engine(), [on(early), tick(early + s(120))]) == [
        raised(FLAT, Severity.HIGH, early, reports=1, last=early)
    ]
    assert feed(engine(), [on(morning), tick(morning + s(120))]) == [
        raised(FLAT, Severity.MEDIUM, morning, reports=1, last=morning)
    ]


def test_configured_night_hours() -> None:
    eng = engine(config(night_start_hour=13, night_end_hour=15))
    changes = feed(eng, [on(DAY), tick(DAY + s(120))])  # 14:00 is night here
    assert changes == [raised(FLAT, Severity.HIGH, DAY, reports=1, last=DAY)]


def test_medium_episode_escalates_once_at_the_night_start() -> None:
    eng = engine()
    reports = [on(EVENING + s(300 * i), power=150.0) for i in range(15)]  # 21:00 .. 22:10
    changes = feed(eng, [*reports, tick(EVENING + s(4500))])
    ten_pm = EVENING + s(3600)
    assert changes == [
        raised(FLAT, Severity.MEDIUM, EVENING, reports=1, last=EVENING, peak=150.0),
        AlertChange(
            Change.UPDATED,
            episode(
                sensor=FLAT,
                severity=Severity.HIGH,
                raised_at=EVENING + s(120),
                evidence=evidence(
                    sensor=FLAT,
                    since=EVENING,
                    until=ten_pm,
                    reports=12,  # 21:00 .. 21:55
                    last=EVENING + s(3300),
                    peak=150.0,
                ),
            ),
        ),
    ]


# -- updates ---------------------------------------------------------------------------------


def test_update_only_when_peak_power_rises_materially() -> None:
    eng = engine()
    events: list[RuleInput] = [
        on(DAY, power=100.0),
        tick(DAY + s(120)),
        on(DAY + s(130), power=105.0),  # +5 %: not material
        on(DAY + s(140), power=109.0),
        on(DAY + s(150), power=112.0),  # +12 % over the published 100 W
        on(DAY + s(160), power=90.0),
    ]
    changes = feed(eng, events)
    first = raised(FLAT, Severity.MEDIUM, DAY, reports=1, last=DAY, peak=100.0)
    assert changes == [
        first,
        AlertChange(
            Change.UPDATED,
            episode(
                sensor=FLAT,
                severity=Severity.MEDIUM,
                raised_at=DAY + s(120),
                evidence=evidence(
                    sensor=FLAT,
                    since=DAY,
                    until=DAY + s(150),
                    reports=4,
                    last=DAY + s(150),
                    peak=112.0,
                ),
            ),
        ),
    ]
    assert eng.open_episodes() == [changes[-1].episode]


def test_first_power_figure_is_an_update() -> None:
    eng = engine()
    changes = feed(eng, [on(DAY), tick(DAY + s(120)), on(DAY + s(125), power=160.0)])
    assert changes[1] == AlertChange(
        Change.UPDATED,
        episode(
            sensor=FLAT,
            severity=Severity.MEDIUM,
            raised_at=DAY + s(120),
            evidence=evidence(
                sensor=FLAT, since=DAY, until=DAY + s(125), reports=2, last=DAY + s(125), peak=160.0
            ),
        ),
    )
    assert len(changes) == 2


# -- clearing --------------------------------------------------------------------------------


def test_short_not_charging_blip_does_not_split_the_episode() -> None:
    eng = engine()
    events: list[RuleInput] = [
        on(DAY, power=150.0),
        on(DAY + s(100), power=150.0),
        tick(DAY + s(120)),
        off(DAY + s(200)),
        off(DAY + s(230)),
        on(DAY + s(259.9), power=150.0),  # 59.9 s of not-charging: the clear is cancelled
        tick(DAY + s(400)),
        on(DAY + s(600), power=150.0),
    ]
    changes = feed(eng, events)
    assert changes == [raised(FLAT, Severity.MEDIUM, DAY, reports=2, last=DAY + s(100), peak=150.0)]
    assert eng.finish() == [
        episode(
            sensor=FLAT,
            severity=Severity.MEDIUM,
            raised_at=DAY + s(120),
            evidence=evidence(
                sensor=FLAT, since=DAY, until=DAY + s(600), reports=4, last=DAY + s(600), peak=150.0
            ),
        )
    ]


def test_clears_after_a_real_stop_at_the_first_not_charging_report() -> None:
    eng = engine()
    events: list[RuleInput] = [
        on(DAY, power=150.0),
        on(DAY + s(60), power=152.0),
        tick(DAY + s(120)),
        on(DAY + s(180), power=151.0),
        off(DAY + s(200)),
        off(DAY + s(230)),
        tick(DAY + s(259.9)),  # not yet: 59.9 s
        tick(DAY + s(275)),
    ]
    changes = feed(eng, events)
    assert changes == [
        raised(FLAT, Severity.MEDIUM, DAY, reports=2, last=DAY + s(60), peak=152.0),
        AlertChange(
            Change.CLEARED,
            episode(
                sensor=FLAT,
                severity=Severity.MEDIUM,
                raised_at=DAY + s(120),
                cleared_at=DAY + s(200),
                evidence=evidence(
                    sensor=FLAT,
                    since=DAY,
                    until=DAY + s(200),
                    reports=3,
                    last=DAY + s(230),
                    peak=152.0,
                    ended_by="not_charging",
                ),
            ),
        ),
    ]
    assert eng.open_episodes() == []
    assert eng.finish() == []


def test_charging_after_a_clear_is_a_new_episode_after_a_full_sustain() -> None:
    eng = engine()
    events: list[RuleInput] = [on(DAY), tick(DAY + s(120)), off(DAY + s(130)), tick(DAY + s(190))]
    first = feed(eng, events)
    assert [c.change for c in first] == [Change.RAISED, Change.CLEARED]
    again = DAY + s(200)
    assert feed(eng, [on(again), tick(again + s(119))]) == []
    assert eng.process(tick(again + s(120))) == [
        raised(FLAT, Severity.MEDIUM, again, reports=1, last=again)
    ]
    assert first[0].episode.id != eng.open_episodes()[0].id


def test_silent_sensor_clears_at_last_report_plus_stale_after() -> None:
    eng = engine(config(stale_after_s=900, resume_within_s=900))  # no hold: clears at once
    changes = feed(eng, [on(DAY, STAIR, power=170.0), on(DAY + s(300), STAIR), tick(DAY + s(5000))])
    stale_at = DAY + s(300 + 900)
    assert changes == [
        raised(STAIR, Severity.HIGH, DAY, reports=1, last=DAY, peak=170.0),
        AlertChange(
            Change.CLEARED,
            episode(
                sensor=STAIR,
                severity=Severity.HIGH,
                raised_at=DAY + s(120),
                cleared_at=stale_at,
                evidence=evidence(
                    sensor=STAIR,
                    since=DAY,
                    until=stale_at,
                    reports=2,
                    last=DAY + s(300),
                    peak=170.0,
                    ended_by="silence",
                ),
            ),
        ),
    ]


# -- a dropout in the middle of a session (resume_within_s) ------------------------------------


def cleared_by_silence(
    sensor: str, since: datetime, stale_at: datetime, reports: int, last: datetime
) -> AlertChange:
    return AlertChange(
        Change.CLEARED,
        episode(
            sensor=sensor,
            severity=Severity.HIGH,
            raised_at=since + s(120),
            cleared_at=stale_at,
            evidence=evidence(
                sensor=sensor,
                since=since,
                until=stale_at,
                reports=reports,
                last=last,
                ended_by="silence",
            ),
        ),
    )


def test_charging_after_a_dropout_continues_the_same_episode() -> None:
    # A BLE sensor silent for 2 h in the middle of a charge: one session, one episode.
    eng = engine(config(stale_after_s=900, resume_within_s=6 * 3600))
    back = DAY + s(300 + 2 * 3600)
    changes = feed(
        eng,
        [on(DAY, STAIR), on(DAY + s(300), STAIR), tick(DAY + s(3600)), on(back, STAIR)],
    )
    assert changes == [raised(STAIR, Severity.HIGH, DAY, reports=1, last=DAY)]
    ep = eng.open_episodes()[0]
    # ... and it clears as usual when charging stops.
    done = feed(eng, [off(back + s(600), STAIR), tick(back + s(700))])
    assert [c.change for c in done] == [Change.CLEARED]
    assert done[0].episode.id == ep.id
    assert done[0].episode.cleared_at == back + s(600)
    assert done[0].episode.evidence["reports"] == 3
    assert done[0].episode.evidence["ended_by"] == "not_charging"


def test_not_charging_after_a_dropout_clears_at_last_report_plus_stale_after() -> None:
    eng = engine(config(stale_after_s=900, resume_within_s=6 * 3600))
    back = DAY + s(300 + 3600)
    changes = feed(eng, [on(DAY, STAIR), on(DAY + s(300), STAIR), off(back, STAIR)])
    stale_at = DAY + s(300 + 900)
    assert changes == [
        raised(STAIR, Severity.HIGH, DAY, reports=1, last=DAY),
        cleared_by_silence(STAIR, DAY, stale_at, reports=2, last=back),
    ]
    assert eng.open_episodes() == []


@pytest.mark.parametrize(
    ("gap", "episodes"),
    [
        pytest.param(6 * 3600 - 1, 1, id="just-within-resume_within_s"),
        pytest.param(6 * 3600, 2, id="exactly-resume_within_s"),
    ],
)
def test_charging_at_resume_within_s_after_the_last_report_is_a_new_session(
    gap: float, episodes: int
) -> None:
    eng = engine(config(stale_after_s=900, resume_within_s=6 * 3600))
    back = DAY + s(300 + gap)
    changes = feed(
        eng, [on(DAY, STAIR), on(DAY + s(300), STAIR), on(back, STAIR), tick(back + s(120))]
    )
    raises = [c for c in changes if c.change is Change.RAISED]
    assert len(raises) == episodes
    if episodes == 2:  # the first cleared when the hold ran out, at last report + stale_after_s
        assert changes[1] == cleared_by_silence(
            STAIR, DAY, DAY + s(300 + 900), reports=2, last=DAY + s(300)
        )
        assert raises[1].episode.raised_at == back + s(120)


def test_run_that_goes_silent_before_the_threshold_is_dropped() -> None:
    eng = engine(config(min_duration_s=600, stale_after_s=300))
    assert feed(eng, [on(DAY), tick(DAY + s(1000))]) == []  # one report, then silence
    assert eng.finish() == []
    restart = DAY + s(1000)
    reports = [on(restart + s(200 * i)) for i in range(4)]  # never silent for 300 s
    assert feed(eng, reports) == [
        raised(FLAT, Severity.MEDIUM, restart, reports=3, last=restart + s(400), sustain=600)
    ]


def test_open_episode_at_end_of_input_is_returned_by_finish() -> None:
    eng = engine()
    feed(eng, [on(NIGHT, power=180.0), on(NIGHT + s(300), power=181.0), tick(NIGHT + s(400))])
    expected = episode(
        sensor=FLAT,
        severity=Severity.HIGH,
        raised_at=NIGHT + s(120),
        evidence=evidence(
            sensor=FLAT,
            since=NIGHT,
            until=NIGHT + s(400),
            reports=2,
            last=NIGHT + s(300),
            peak=181.0,
        ),
    )
    assert eng.finish() == [expected]
    assert eng.finish() == [expected]  # closes nothing
    assert eng.open_episodes() == [
        episode(
            sensor=FLAT,
            severity=Severity.HIGH,
            raised_at=NIGHT + s(120),
            evidence=evidence(
                sensor=FLAT, since=NIGHT, until=NIGHT + s(120), reports=1, last=NIGHT, peak=180.0
            ),
        )
    ]


@pytest.mark.parametrize(
    ("sustain", "clear"),
    [pytest.param(0, 0, id="zero-thresholds"), pytest.param(0, 60, id="zero-sustain")],
)
def test_zero_thresholds_act_on_the_report_itself(sustain: float, clear: float) -> None:
    eng = engine(config(min_duration_s=sustain, clear_after_s=clear))
    changes = feed(eng, [on(DAY, STAIR), off(DAY + s(10), STAIR), tick(DAY + s(10 + clear))])
    assert changes == [
        raised(STAIR, Severity.HIGH, DAY, reports=1, last=DAY, sustain=sustain),
        AlertChange(
            Change.CLEARED,
            episode(
                sensor=STAIR,
                severity=Severity.HIGH,
                raised_at=DAY,
                cleared_at=DAY + s(10),
                evidence=evidence(
                    sensor=STAIR,
                    since=DAY,
                    until=DAY + s(10),
                    reports=1,
                    last=DAY + s(10),
                    ended_by="not_charging",
                ),
            ),
        ),
    ]
