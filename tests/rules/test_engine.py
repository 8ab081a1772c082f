"""The rule engine: routing, ignored events, determinism, and invariants over random input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.alerts import AlertChange, AlertEpisode, AlertKind, Change, Severity
from contract.events import (
    CardSwipe,
    ChargingSensorReading,
    DeviceFault,
    MeterReading,
    RuleInput,
    Tick,
)
from contract.site import RulesConfig
from rules.base import DeviceInput
from rules.engine import RuleEngine, default_rules
from tests.rules.builders import (
    DAY,
    FLAT,
    NIGHT,
    SCOPE,
    SHED,
    SITE,
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


def test_unknown_devices_are_ignored_and_counted() -> None:
    eng = engine()
    events: list[RuleInput] = [
        on(DAY, "ble-unknown", power=200.0),
        MeterReading(ts=DAY, meter_id="m-unknown", power_w=1.0),
        CardSwipe(ts=DAY, reader_id="r-unknown", card="c"),
        on(DAY, SHED),  # known, charging allowed: not "ignored"
        MeterReading(ts=DAY, meter_id="m-3-301", power_w=1.0),
        CardSwipe(ts=DAY, reader_id="b3-entrance", card="c"),
        tick(DAY + s(3600)),
    ]
    assert feed(eng, events) == []
    assert eng.ignored == 3
    assert eng.finish() == []


def test_event_of_an_unknown_type_is_ignored() -> None:
    eng = engine()
    fault = DeviceFault(ts=DAY, device_id=FLAT, fault="timeout")
    assert eng.process(fault) == []  # type: ignore[arg-type]
    assert eng.ignored == 1


def test_unknown_device_still_lets_time_pass() -> None:
    eng = engine()
    feed(eng, [on(DAY, STAIR)])
    changes = eng.process(on(DAY + s(121), "ble-unknown"))
    assert [(c.change, c.episode.raised_at) for c in changes] == [(Change.RAISED, DAY + s(120))]
    assert eng.ignored == 1


def sample_input() -> list[RuleInput]:
    return [
        on(DAY, FLAT, power=140.0),
        on(DAY + s(5), STAIR, power=90.0),
        MeterReading(ts=DAY + s(30), meter_id="m-3-301", power_w=300.0),
        tick(DAY + s(130)),
        off(DAY + s(400), FLAT),
        on(DAY + s(700), STAIR, power=120.0),
        tick(DAY + s(900)),
        on(NIGHT, FLAT, power=150.0),
        tick(NIGHT + s(200)),
    ]


def test_same_input_twice_gives_the_same_output() -> None:
    def run() -> tuple[list[AlertChange], list[AlertEpisode]]:
        eng = engine()
        return feed(eng, sample_input()), eng.finish()

    first, second = run(), run()
    assert first == second
    changes, open_at_end = first
    assert [(c.change, c.episode.subject.sensor_id) for c in changes] == [
        (Change.RAISED, FLAT),
        (Change.RAISED, STAIR),
        (Change.CLEARED, FLAT),
        (Change.UPDATED, STAIR),  # peak 90 W -> 120 W
        (Change.CLEARED, STAIR),  # silent since DAY + 700 s
        (Change.RAISED, FLAT),
    ]
    assert [ep.id for ep in open_at_end] == [changes[5].episode.id]


def test_episode_id_depends_on_scope_not_on_the_inputs_utc_offset() -> None:
    eng = engine()
    feed(eng, [on(DAY.astimezone(timezone(timedelta(hours=-5)))), tick(DAY + s(120))])
    in_utc = RuleEngine(SITE, RulesConfig(), scope=SCOPE)
    feed(in_utc, [on(DAY.astimezone(UTC)), tick((DAY + s(120)).astimezone(UTC))])
    other_scope = engine(scope="another-site")
    feed(other_scope, [on(DAY), tick(DAY + s(120))])
    expected = episode(
        sensor=FLAT,
        severity=Severity.MEDIUM,
        raised_at=DAY + s(120),
        evidence=evidence(sensor=FLAT, since=DAY, until=DAY + s(120), reports=1, last=DAY),
    )
    assert eng.open_episodes() == [expected]
    assert in_utc.open_episodes() == [expected]
    assert [ep.raised_at.isoformat() for ep in in_utc.open_episodes()] == [
        "2026-03-01T14:02:00+08:00"
    ]
    assert other_scope.open_episodes()[0].id != expected.id


def test_finish_and_open_episodes_are_sorted_by_raised_at_kind_subject() -> None:
    eng = engine()
    feed(eng, [on(DAY, STAIR), on(DAY, FLAT), tick(DAY + s(500))])
    keys = [(ep.raised_at, ep.subject.key()) for ep in eng.finish()]
    assert keys == sorted(keys)
    assert [ep.subject.sensor_id for ep in eng.finish()] == [STAIR, FLAT]  # "building=3" first
    assert [ep.id for ep in eng.open_episodes()] == [ep.id for ep in eng.finish()]


@dataclass
class RecordingRule:
    """A stand-in rule: shows what the engine routes to a rule and when it ticks it."""

    kinds: frozenset[AlertKind] = frozenset({AlertKind.OVERLOAD})
    inputs: frozenset[type[DeviceInput]] = frozenset({MeterReading})
    next_due: datetime | None = None
    seen: list[RuleInput] = field(default_factory=list)

    def process(self, event: RuleInput) -> list[AlertChange]:
        self.seen.append(event)
        if self.next_due is not None and event.ts >= self.next_due:
            self.next_due = None
        return []

    def open_episodes(self) -> list[AlertEpisode]:
        return []

    def finish(self) -> list[AlertEpisode]:
        return []


def test_events_are_routed_by_type_and_time_reaches_rules_only_when_due() -> None:
    meter_rule = RecordingRule(next_due=DAY + s(60))
    eng = RuleEngine(SITE, RulesConfig(), rules=[meter_rule])
    reading = MeterReading(ts=DAY + s(10), meter_id="m-3-301", power_w=5.0)
    events: list[RuleInput] = [
        on(DAY, FLAT),  # not routed, not due: the rule sees nothing
        reading,
        on(DAY + s(30), FLAT),
        on(DAY + s(61), FLAT),  # due: the rule gets a Tick at this time
        on(DAY + s(62), FLAT),
        tick(DAY + s(63)),
    ]
    feed(eng, events)
    assert meter_rule.seen == [reading, Tick(DAY + s(61)), tick(DAY + s(63))]


def test_two_rules_for_one_kind_are_refused() -> None:
    rules = [*default_rules(SITE, RulesConfig()), *default_rules(SITE, RulesConfig())]
    with pytest.raises(ValueError, match="ebike_charging"):
        RuleEngine(SITE, RulesConfig(), rules=rules)


def test_late_report_is_applied_at_the_latest_time() -> None:
    eng = engine()
    feed(eng, [on(DAY, STAIR), tick(DAY + s(200))])
    changes = feed(eng, [off(DAY + s(150), STAIR), tick(DAY + s(260))])  # really at 200
    assert [(c.change, c.episode.cleared_at) for c in changes] == [(Change.CLEARED, DAY + s(200))]


# -- invariants over random interleavings ----------------------------------------------------

SENSORS = [FLAT, STAIR, SHED, "ble-corridor", "ble-unknown"]

step = st.tuples(
    st.sampled_from(["on", "off", "tick"]),
    st.sampled_from(SENSORS),
    st.one_of(
        st.integers(0, 90),
        st.floats(0, 200, allow_nan=False),
        st.sampled_from([0.0, 59.9, 60.0, 119.9, 120.0, 900.0, 3600.0]),
    ),
    st.one_of(st.none(), st.floats(0, 400, allow_nan=False)),
)
configs = st.builds(
    lambda m, c, stale: config(min_duration_s=m, clear_after_s=c, stale_after_s=stale),
    st.sampled_from([0.0, 30.0, 120.0]),
    st.sampled_from([0.0, 60.0]),
    st.sampled_from([1.0, 100.0, 900.0]),
)
starts = st.sampled_from([DAY, NIGHT, DAY.replace(hour=21, minute=58), DAY.replace(hour=5)])


def build(start: datetime, steps: list[tuple[str, str, float, float | None]]) -> list[RuleInput]:
    events: list[RuleInput] = []
    t = start
    for what, sensor, gap, power in steps:
        t += s(gap)
        if what == "tick":
            events.append(Tick(t))
        else:
            events.append(ChargingSensorReading(t, sensor, what == "on", power))
    return events


def check_invariants(eng: RuleEngine, events: Sequence[RuleInput]) -> list[AlertEpisode]:
    """Feed ``events``; check the episode lifecycle; return every episode's final state."""
    open_: dict[str, AlertEpisode] = {}
    ended: list[AlertEpisode] = []
    ids: set[str] = set()
    for event in events:
        for change in eng.process(event):
            ep = change.episode
            sensor = ep.subject.sensor_id
            assert sensor is not None
            assert ep.raised_at <= event.ts  # detected at or after the threshold
            if change.change is Change.RAISED:
                assert sensor not in open_, "two open episodes for one sensor"
                assert ep.id not in ids
                assert ep.cleared_at is None
                ids.add(ep.id)
                open_[sensor] = ep
            elif change.change is Change.UPDATED:
                assert open_[sensor].id == ep.id
                assert ep.cleared_at is None
                assert list(Severity).index(ep.severity) >= list(Severity).index(
                    open_[sensor].severity
                )
                open_[sensor] = ep
            else:
                assert open_.pop(sensor).id == ep.id
                assert ep.cleared_at is not None
                assert ep.cleared_at >= ep.raised_at
                assert ep.cleared_at <= event.ts
                ended.append(ep)
    assert eng.open_episodes() == sorted(
        open_.values(), key=lambda e: (e.raised_at, e.subject.key())
    )
    at_end = eng.finish()
    assert {ep.id for ep in at_end} == {ep.id for ep in open_.values()}
    assert all(ep.cleared_at is None for ep in at_end)
    assert all(ep.subject.sensor_id in (FLAT, STAIR, "ble-corridor") for ep in ended + at_end)
    return sorted(ended + at_end, key=lambda e: (e.raised_at, e.subject.key()))


@settings(max_examples=300, deadline=None)
@given(rules_config=configs, start=starts, steps=st.lists(step, max_size=60))
def test_random_interleavings_keep_the_episode_lifecycle(
    rules_config: RulesConfig, start: datetime, steps: list[tuple[str, str, float, float | None]]
) -> None:
    events = build(start, steps)
    episodes = check_invariants(RuleEngine(SITE, rules_config, scope=SCOPE), events)
    # Determinism, and ticks change only when a change is seen, never what the episodes are.
    assert check_invariants(RuleEngine(SITE, rules_config, scope=SCOPE), events) == episodes
    reports_only = [e for e in events if not isinstance(e, Tick)]
    if reports_only and reports_only[-1].ts == events[-1].ts:
        without_ticks = check_invariants(RuleEngine(SITE, rules_config, scope=SCOPE), reports_only)
        assert without_ticks == episodes


# -- time reaching idle rules: the engine's per-route memo ------------------------------------


@dataclass
class DueRule:
    """A stand-in rule with deadlines: records every event it is given. Each event it processes
    fires the deadlines due by then and, with ``again_s``, sets a new one that much later (as a
    real rule does when a reading starts a sustain timer)."""

    kinds: frozenset[AlertKind]
    inputs: frozenset[type[DeviceInput]]
    dues: list[datetime]
    again_s: int | None = None
    seen: list[tuple[str, datetime]] = field(default_factory=list)

    @property
    def next_due(self) -> datetime | None:
        return min(self.dues) if self.dues else None

    def process(self, event: RuleInput) -> list[AlertChange]:
        self.seen.append((type(event).__name__, event.ts))
        self.dues = next_dues(self.dues, event.ts, self.again_s)
        return []

    def open_episodes(self) -> list[AlertEpisode]:
        return []

    def finish(self) -> list[AlertEpisode]:
        return []


def next_dues(dues: list[datetime], at: datetime, again_s: int | None) -> list[datetime]:
    left = [d for d in dues if d > at]
    return left if again_s is None else [*left, at + s(again_s)]


def expected_seen(rule: DueRule, events: Sequence[RuleInput]) -> list[tuple[str, datetime]]:
    """The routing rule of the engine's docstring, one event at a time, without memos."""
    seen: list[tuple[str, datetime]] = []
    dues = list(rule.dues)
    for event in events:
        known = not isinstance(event, MeterReading) or event.meter_id != "m-unknown"
        if isinstance(event, Tick) or (known and type(event) in rule.inputs):
            seen.append((type(event).__name__, event.ts))
        elif dues and min(dues) <= event.ts:
            seen.append(("Tick", event.ts))
        else:
            continue
        dues = next_dues(dues, event.ts, rule.again_s)
    return seen


def make_event(kind: str, at: datetime) -> RuleInput:
    if kind == "meter":
        return MeterReading(ts=at, meter_id="m-3-301", power_w=100.0)
    if kind == "swipe":
        return CardSwipe(ts=at, reader_id="b3-entrance", card="c")
    if kind == "sensor":
        return on(at, FLAT)
    if kind == "unknown":
        return MeterReading(ts=at, meter_id="m-unknown", power_w=1.0)
    return Tick(at)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["meter", "meter", "meter", "swipe", "sensor", "unknown", "tick"]),
            st.sampled_from([0, 0, 1, 5, 30, 61]),
        ),
        max_size=80,
    ),
    dues=st.lists(st.lists(st.integers(0, 1500), max_size=6), min_size=3, max_size=3),
    again=st.lists(st.one_of(st.none(), st.integers(0, 90)), min_size=3, max_size=3),
    explicit_seconds=st.booleans(),
)
def test_every_idle_rule_is_ticked_at_the_first_event_after_its_deadline(
    steps: list[tuple[str, int]],
    dues: list[list[int]],
    again: list[int | None],
    explicit_seconds: bool,
) -> None:
    inputs: list[frozenset[type[DeviceInput]]] = [
        frozenset({MeterReading}),
        frozenset({CardSwipe}),
        frozenset({ChargingSensorReading}),
    ]
    kinds = [AlertKind.OVERLOAD, AlertKind.SUSPECTED_GROUP_RENTAL, AlertKind.EBIKE_CHARGING]
    rules = [
        DueRule(frozenset({kind}), ins, [DAY + s(d) for d in due], again_s)
        for kind, ins, due, again_s in zip(kinds, inputs, dues, again, strict=True)
    ]
    events: list[RuleInput] = []
    at = DAY
    for kind, gap in steps:
        at += s(gap)
        events.append(make_event(kind, at))
    wanted = [expected_seen(r, events) for r in rules]
    eng = RuleEngine(SITE, RulesConfig(), rules=rules)
    for event in events:
        eng.process(event, event.ts.timestamp() if explicit_seconds else None)
    assert [r.seen for r in rules] == wanted


def test_seconds_given_by_the_caller_change_nothing() -> None:
    events = sample_input()
    plain, given_seconds = engine(), engine()
    changes = feed(plain, events)
    assert [c for e in events for c in given_seconds.process(e, e.ts.timestamp())] == changes
    assert given_seconds.finish() == plain.finish()
