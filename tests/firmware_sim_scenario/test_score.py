"""The scorer: hand-built alerts and truth with known precision and recall."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from firmware_sim.scenario.score import (
    KindScore,
    breakdown_table,
    markdown_table,
    match_episodes,
    parse_seeds,
    pooled,
    score,
    suspected_breakdown,
)

START = "2026-03-01T00:00:00+08:00"
END = "2026-03-15T00:00:00+08:00"


def _t(day: int, hour: int, minute: int = 0) -> str:
    return f"2026-03-{day:02d}T{hour:02d}:{minute:02d}:00+08:00"


def _truth(episodes: list[dict[str, Any]], group: list[str] | None = None) -> dict[str, Any]:
    return {"start": START, "end": END, "group_rental_units": group or [], "episodes": episodes}


def _alert(kind: str, raised: str, cleared: str | None, **subject: str) -> dict[str, Any]:
    return {"kind": kind, "raised_at": raised, "cleared_at": cleared, **subject}


def _ep(kind: str, start: str, end: str | None, **subject: str) -> dict[str, Any]:
    return {"kind": kind, "start": start, "end": end, **subject}


def test_group_rental_is_scored_per_flat() -> None:
    alerts = [
        _alert("suspected_group_rental", _t(3, 0), None, unit_id="1-101"),
        _alert("suspected_group_rental", _t(9, 0), _t(10, 0), unit_id="1-101"),  # same flat again
        _alert("suspected_group_rental", _t(3, 0), None, unit_id="1-102"),  # a false alarm
    ]
    s = score(alerts, _truth([], group=["1-101", "2-201", "2-202"]))["suspected_group_rental"]
    assert (s.alerts, s.truth, s.matched) == (2, 3, 1)
    assert s.precision == 0.5
    assert s.recall == pytest.approx(1 / 3)


def test_episodes_match_on_subject_and_overlap() -> None:
    truth = _truth(
        [
            _ep("ebike_charging", _t(1, 20), _t(2, 2), sensor_id="s1", unit_id="1-101"),
            _ep("ebike_charging", _t(2, 20), _t(3, 1), sensor_id="s1", unit_id="1-101"),
            _ep("ebike_charging", _t(1, 20), _t(2, 1), sensor_id="s2", building="1"),
        ]
    )
    alerts = [
        _alert("ebike_charging", _t(1, 20, 2), _t(2, 2), sensor_id="s1", unit_id="1-101"),  # hit
        _alert(
            "ebike_charging", _t(5, 20), _t(5, 23), sensor_id="s1", unit_id="1-101"
        ),  # no overlap
        _alert(
            "ebike_charging", _t(1, 20, 2), _t(2, 1), sensor_id="s3", building="1"
        ),  # wrong sensor
    ]
    s = score(alerts, truth)["ebike_charging"]
    assert (s.alerts, s.truth, s.matched) == (3, 3, 1)
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == pytest.approx(1 / 3)


def test_each_alert_and_episode_is_matched_once() -> None:
    truth = _truth(
        [
            _ep(
                "ebike_charging_suspected", _t(1, 19), _t(2, 1), unit_id="1-101", meter_id="m-1-101"
            ),
            _ep(
                "ebike_charging_suspected", _t(1, 21), _t(2, 3), unit_id="1-101", meter_id="m-1-101"
            ),
        ]
    )
    # One long alert over two overlapping sessions: matches one of them.
    one = [_alert("ebike_charging_suspected", _t(1, 19, 30), _t(2, 3), unit_id="1-101")]
    s = score(one, truth)["ebike_charging_suspected"]
    assert (s.alerts, s.truth, s.matched) == (1, 2, 1)
    # Two alerts for the same session (a flapping rule): only one counts.
    flapping = [
        _alert("ebike_charging_suspected", _t(1, 19, 30), _t(1, 19, 40), unit_id="1-101"),
        _alert("ebike_charging_suspected", _t(1, 19, 50), _t(1, 20, 30), unit_id="1-101"),
        _alert("ebike_charging_suspected", _t(1, 20, 40), _t(1, 20, 50), unit_id="1-101"),
    ]
    s = score(flapping, _truth(truth["episodes"][:1]))["ebike_charging_suspected"]
    assert (s.alerts, s.truth, s.matched) == (3, 1, 1)
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == 1.0


def test_greedy_matching_by_time() -> None:
    alerts = [("2026-03-01T10:00", "2026-03-01T12:00"), ("2026-03-01T11:00", "2026-03-01T11:30")]
    truth = [("2026-03-01T11:15", "2026-03-01T11:20"), ("2026-03-01T09:00", "2026-03-01T10:30")]

    def conv(xs: list[tuple[str, str]]) -> list[tuple[datetime, datetime]]:
        return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in xs]

    # The first alert takes the earliest-starting episode it overlaps (09:00), the second the other.
    assert match_episodes(conv(alerts), conv(truth)) == [(0, 1), (1, 0)]


def test_open_ends_run_to_the_scenario_end() -> None:
    truth = _truth([_ep("data_silence", _t(3, 12), None, meter_id="m-1-101")])
    late = [_alert("data_silence", _t(8, 12), None, meter_id="m-1-101")]
    assert score(late, truth)["data_silence"].matched == 1
    other_device = [_alert("data_silence", _t(8, 12), None, reader_id="b1-entrance")]
    s = score(other_device, truth)["data_silence"]
    assert (s.alerts, s.truth, s.matched) == (1, 1, 0)


def test_overload_matches_on_unit() -> None:
    truth = _truth([_ep("overload", _t(2, 19), _t(2, 20), unit_id="1-101", meter_id="m-1-101")])
    alerts = [_alert("overload", _t(2, 19, 6), _t(2, 19, 58), unit_id="1-101", meter_id="m-x")]
    assert score(alerts, truth)["overload"].matched == 1


def test_no_alerts_and_no_truth() -> None:
    s = score([], _truth([]))
    assert set(s) == {
        "suspected_group_rental",
        "ebike_charging",
        "ebike_charging_suspected",
        "overload",
        "data_silence",
    }
    for k in s.values():
        assert k.precision is None and k.recall is None


def test_pooled_sums_counts() -> None:
    a = {"overload": KindScore("overload", 2, 4, 1)}
    b = {"overload": KindScore("overload", 2, 0, 2)}
    p = pooled([a, b])["overload"]
    assert (p.alerts, p.truth, p.matched) == (4, 4, 3)
    assert p.precision == 0.75
    assert "| overload | 4 | 4 | 3 | 0.75 | 0.75 |" in markdown_table(pooled([a, b]))


def test_parse_seeds() -> None:
    assert parse_seeds("101-105") == [101, 102, 103, 104, 105]
    assert parse_seeds("1,3, 5-6,3") == [1, 3, 5, 6]
    with pytest.raises(ValueError, match="empty"):
        parse_seeds("5-3")
    with pytest.raises(ValueError):
        parse_seeds("")


def test_suspected_breakdown_says_which_sessions_were_found() -> None:
    def at(day: int, h: int, m: int = 0) -> str:
        return f"2026-03-0{day}T{h:02d}:{m:02d}:00+08:00"

    def session(start: str, end: str, pf: float | None, early: bool = False) -> dict[str, Any]:
        e: dict[str, Any] = {
            "kind": "ebike_charging_suspected",
            "unit_id": "1-101",
            "meter_id": "m-1-101",
            "start": start,
            "end": end,
            "unplugged_early": early,
        }
        if pf is not None:
            e["power_factor"] = pf
        return e

    truth = {
        "end": at(4, 0),
        "episodes": [
            session(at(1, 19), at(1, 23), 0.6),
            session(at(1, 19, 10), at(1, 22), 0.95),  # a PFC charger next to the first
            session(at(2, 20), at(2, 21), 0.62, early=True),
            session(at(3, 20), at(3, 23), None),  # an older scenario without the field
        ],
    }
    alerts = [
        {
            "kind": "ebike_charging_suspected",
            "unit_id": "1-101",
            "raised_at": at(1, 19, 50),
            "cleared_at": at(1, 23),
        },
        {
            "kind": "ebike_charging_suspected",
            "unit_id": "1-101",
            "raised_at": at(2, 20, 40),
            "cleared_at": at(2, 21),
        },
        {"kind": "overload", "unit_id": "1-101", "raised_at": at(3, 21)},  # not this kind
    ]
    rows = suspected_breakdown(alerts, truth)
    assert rows == {
        "all": (2, 4),
        "charger with PFC": (0, 1),
        "charger without PFC": (2, 2),
        "power factor not labelled": (0, 1),
        "unplugged early": (1, 1),
        "overlaps another session of the flat": (1, 2),
        "alone in the flat": (1, 2),
        # the PFC charger next to the first is missed under the first one's alert
        "under an alert of the flat": (2, 3),
        "no alert of the flat over it": (0, 1),
    }
    table = breakdown_table(rows)
    assert "| charger with PFC | 0 | 1 | 0.00 |" in table
    assert "| all | 2 | 4 | 0.50 |" in table
