"""``edge-agent replay`` as a street office would run it: files in, alerts file out."""

from __future__ import annotations

import gc
import io
import json
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from types import BuiltinFunctionType, CodeType, FunctionType, MethodType, ModuleType
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.alerts import AlertEpisode, AlertKind, EvidenceValue, Severity, Subject
from contract.events import MeterReading
from contract.site import RulesConfig
from edge_agent.replay import (
    AlertSpool,
    InputStats,
    episode_line,
    load_site,
    read_events,
    replay_stream,
    run_replay,
)
from firmware_sim.scenario.generate import ScenarioParams, generate
from rules.engine import RuleEngine

CST = timezone(timedelta(hours=8))
SITE = {
    "site_id": "sgxc-07",
    "timezone": "Asia/Shanghai",
    "units": [
        {"unit_id": "3-301", "building": "3", "floor_area_m2": 62.5, "rooms": 2,
         "registered_occupants": 3, "rated_current_a": 40},
    ],
    "cards": [{"card": "3104992211", "unit_id": "3-301"}],
    "meters": [{"meter_id": "m-3-301", "unit_id": "3-301"}],
    "sensors": [
        {"sensor_id": "ble-a4c138aa01", "location": "unit", "unit_id": "3-301"},
        {"sensor_id": "ble-a4c138bb02", "location": "stairwell", "building": "3"},
        {"sensor_id": "ble-shed", "location": "bike_shed", "building": "3"},
    ],
    "readers": [{"reader_id": "b3-entrance", "building": "3"}],
}  # fmt: skip


def _charging(sensor: str, start: datetime, minutes: int, power: float) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for s in range(0, minutes * 60, 30):
        lines.append({"type": "charging_sensor", "ts": (start + timedelta(seconds=s)).isoformat(),
                      "sensor_id": sensor, "power_w": power + (s % 90) / 10, "charging": True})  # fmt: skip
    end = start + timedelta(minutes=minutes)
    for s in range(0, 300, 30):
        lines.append({"type": "charging_sensor", "ts": (end + timedelta(seconds=s)).isoformat(),
                      "sensor_id": sensor, "power_w": 0.0, "charging": False})  # fmt: skip
    return lines


def _write(tmp_path: Path, events: list[dict[str, object]]) -> tuple[Path, Path]:
    site = tmp_path / "site.json"
    site.write_text(json.dumps(SITE))
    events_path = tmp_path / "events.jsonl"
    events.sort(key=lambda e: datetime.fromisoformat(str(e["ts"])))
    events_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return site, events_path


def _events() -> list[dict[str, object]]:
    day = datetime(2026, 3, 1, 14, 0, tzinfo=CST)
    night = datetime(2026, 3, 1, 23, 0, tzinfo=CST)
    ev = _charging("ble-a4c138aa01", day, 30, 180.0)
    ev += _charging("ble-a4c138bb02", night, 20, 150.0)
    ev += _charging("ble-shed", night, 60, 200.0)
    ev.append({"type": "card_swipe", "ts": day.isoformat(), "reader_id": "b3-entrance",
               "card": "3104992211"})  # fmt: skip
    ev.append({"type": "meter_reading", "ts": day.isoformat(), "meter_id": "m-3-301",
               "power_w": 152.3})  # fmt: skip
    ev.append({"type": "door_forced_open", "ts": day.isoformat(), "reader_id": "b3-entrance"})
    return ev


def test_replay_writes_sorted_episodes_with_evidence(tmp_path: Path) -> None:
    site, events = _write(tmp_path, _events())
    out = tmp_path / "alerts.jsonl"
    stdout = io.StringIO()
    assert run_replay(site, events, out, None, out=stdout, err=io.StringIO()) == 0
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["kind"], a.get("unit_id"), a.get("building"), a["sensor_id"], a["severity"])
            for a in alerts] == [
        ("ebike_charging", "3-301", None, "ble-a4c138aa01", "medium"),
        ("ebike_charging", None, "3", "ble-a4c138bb02", "high"),
    ]  # fmt: skip
    first = alerts[0]
    assert list(first)[:3] == ["kind", "category", "severity"]
    assert first["category"] == "消防"
    assert first["raised_at"] == "2026-03-01T14:02:00+08:00"
    assert first["cleared_at"] == "2026-03-01T14:30:00+08:00"
    assert first["evidence"]["peak_power_w"] == pytest.approx(186.0)
    assert "ebike_charging 2" in stdout.getvalue()
    assert "door_forced_open x1" in stdout.getvalue()


def test_replay_is_deterministic_byte_for_byte(tmp_path: Path) -> None:
    site, events = _write(tmp_path, _events())
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        assert run_replay(site, events, out, None, out=io.StringIO(), err=io.StringIO()) == 0
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0


def test_config_rules_table_sets_thresholds(tmp_path: Path) -> None:
    site, events = _write(tmp_path, _events())
    cfg = tmp_path / "agent.toml"
    cfg.write_text('gateway_id = "x"\n[rules.ebike_charging]\nmin_duration_s = 1800\n')
    out = tmp_path / "alerts.jsonl"
    assert run_replay(site, events, out, cfg, out=io.StringIO(), err=io.StringIO()) == 0
    # Only the 30-minute daytime session lasts long enough for a 30-minute threshold.
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["sensor_id"] for a in alerts] == ["ble-a4c138aa01"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        pytest.param("{not json", "line 3: not valid JSON", id="not-json"),
        pytest.param('{"type": "meter_reading", "ts": "2026-03-01T14:00:00+08:00", '
                     '"meter_id": "m-3-301"}', "line 3, field 'power_w': missing", id="no-power"),
        pytest.param('{"type": "meter_reading", "ts": "2026-03-01T14:00:00+08:00", '
                     '"meter_id": "m-3-301", "power_w": "lots"}', "line 3, field 'power_w'",
                     id="power-not-number"),
        pytest.param('{"type": "card_swipe", "ts": "2026-03-01T14:00:00", "reader_id": "r", '
                     '"card": "1"}', "line 3, field 'ts'", id="naive-ts"),
        pytest.param('{"type": "charging_sensor", "ts": "2026-03-01T14:00:00+08:00", '
                     '"sensor_id": "ble-a4c138aa01", "charging": "yes"}',
                     "line 3, field 'charging'", id="charging-not-bool"),
        pytest.param('{"type": "card_swipe", "ts": "2026-03-01T13:00:00+08:00", '
                     '"reader_id": "r", "card": "1"}', "line 3, field 'ts'", id="out-of-order"),
        pytest.param('{"type": "meter_reading", "ts": "2026-03-01T13:59:59+08:00", '
                     '"meter_id": "m-3-301", "power_w": 1.0}',
                     "line 3, field 'ts': 2026-03-01T13:59:59+08:00 is earlier than the line "
                     "before (2026-03-01T14:00:00+08:00)", id="reading-out-of-order"),
        pytest.param('{"type": "meter_reading", "ts": "2026-03-01T14:00:00+08:00", '
                     '"meter_id": "m-3-301", "power_w": 1.0, "voltage_v": true}',
                     "line 3, field 'voltage_v': not a number", id="voltage-bool"),
        pytest.param('{"type": "meter_reading", "ts": "2026-03-01T14:00:00+08:00", '
                     '"meter_id": "", "power_w": 1.0}', "line 3, field 'meter_id'",
                     id="empty-meter-id"),
        pytest.param('{"type": "meter_reading", "ts": "2026-03-01T14:00:00", '
                     '"meter_id": "m-3-301", "power_w": 1.0}', "line 3, field 'ts': "
                     "'2026-03-01T14:00:00' has no UTC offset", id="reading-naive-ts"),
        pytest.param('{"ts": "2026-03-01T14:00:00+08:00"}', "line 3, field 'type'", id="no-type"),
        pytest.param("[1]", "line 3: not a JSON object", id="array"),
    ],
)  # fmt: skip
def test_bad_input_names_line_and_field_and_writes_nothing(
    tmp_path: Path, bad_line: str, expected: str
) -> None:
    good = _events()
    site, events = _write(tmp_path, good)
    lines = events.read_text().splitlines()
    lines.insert(2, bad_line)
    events.write_text("\n".join(lines) + "\n")
    out = tmp_path / "alerts.jsonl"
    out.write_text("previous result\n")
    err = io.StringIO()
    assert run_replay(site, events, out, None, out=io.StringIO(), err=err) == 2
    assert expected in err.getvalue()
    assert "nothing was written" in err.getvalue()
    assert out.read_text() == "previous result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alerts.jsonl", "events.jsonl", "site.json",
    ]  # fmt: skip


def test_bad_site_file_names_the_field(tmp_path: Path) -> None:
    site, events = _write(tmp_path, _events())
    broken = json.loads(site.read_text())
    broken["sensors"][0]["location"] = "roof"
    site.write_text(json.dumps(broken))
    err = io.StringIO()
    assert run_replay(site, events, tmp_path / "o.jsonl", None, out=io.StringIO(), err=err) == 2
    assert "sensors.0.location" in err.getvalue()
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_entry_point(tmp_path: Path) -> None:
    site, events = _write(tmp_path, _events())
    out = tmp_path / "alerts.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "replay", "--site", str(site), "--input",
         str(events), "--output", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "alerts: 2" in proc.stdout
    assert len(out.read_text().splitlines()) == 2


# -- the parser's fast path, streaming and memory --------------------------------------------

OFFSETS = [
    timezone(timedelta(hours=8)),
    UTC,
    timezone(timedelta(hours=-3, minutes=-30)),
    timezone(timedelta(hours=5, minutes=45)),
    ZoneInfo("Europe/Berlin"),  # DST: the offset text changes within the input
]


def _ts_text(at: datetime, form: str) -> str:
    if form == "seconds":
        return at.isoformat(timespec="seconds")
    if form == "micro":
        return at.isoformat(timespec="microseconds")
    if form == "minutes":
        return at.isoformat(timespec="minutes")
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.datetimes(
                min_value=datetime(2026, 3, 28), max_value=datetime(2026, 3, 30)
            ).map(lambda d: d.replace(second=d.second % 3 * 20 if d.minute % 2 else d.second)),
            st.sampled_from(OFFSETS),
            st.sampled_from(["seconds", "seconds", "seconds", "micro", "minutes", "z"]),
            st.sampled_from(["{}", '{"voltage_v": 230, "current_a": 0.5}',
                             '{"energy_kwh": 12.25, "power_factor": 1}']),
        ),
        max_size=40,
    )
)  # fmt: skip
def test_every_reading_carries_its_exact_time_and_fields(
    lines: list[tuple[datetime, tzinfo, str, str]],
) -> None:
    texts = [
        (_ts_text(naive.replace(tzinfo=tz), form), json.loads(fields))
        for naive, tz, form, fields in lines
    ]
    texts.sort(key=lambda x: datetime.fromisoformat(x[0]))  # by instant, as the file must be
    raw = [
        json.dumps(
            {"type": "meter_reading", "ts": ts, "meter_id": "m-1", "power_w": 7, **more}
        ).encode()
        for ts, more in texts
    ]
    stats = InputStats()
    got = list(read_events(raw, stats))
    assert stats.events == len(texts)
    for (event, t), (ts, more) in zip(got, texts, strict=True):
        expected_ts = datetime.fromisoformat(ts)
        expected = MeterReading(
            ts=expected_ts,
            meter_id="m-1",
            power_w=7.0,
            **{k: float(v) for k, v in more.items()},
        )
        assert event == expected
        assert hash(event) == hash(expected)
        assert repr(event) == repr(expected)
        assert event.ts.utcoffset() == expected_ts.utcoffset()
        assert t == expected_ts.timestamp()


def _scenario(tmp_path: Path, days: int) -> Path:
    out = tmp_path / f"scenario-{days}d"
    generate(ScenarioParams(seed=3, flats=6, buildings=2, days=days), out)
    return out


def test_alerts_leave_memory_as_their_episodes_end(tmp_path: Path) -> None:
    """replay_stream hands each episode on when it ends, long before the input does."""
    scenario = _scenario(tmp_path, 3)
    site = load_site(scenario / "site.json")
    lines = (scenario / "events.jsonl").read_bytes().splitlines(keepends=True)
    read = 0

    def counting() -> Iterator[bytes]:
        nonlocal read
        for line in lines:
            read += 1
            yield line

    emitted_at: list[int] = []
    result = replay_stream(site, RulesConfig(), counting(), lambda ep: emitted_at.append(read))
    assert result.episodes == len(emitted_at) > 2
    assert emitted_at[0] < len(lines) / 2  # the first one well before the end of input


_NOT_STATE = (type, ModuleType, FunctionType, BuiltinFunctionType, MethodType, CodeType, ZoneInfo)


def _state_size(root: object, *shared: object) -> int:
    """Bytes of every object reachable from ``root`` (classes, functions, zones and ``shared``
    objects excluded): what the rules keep between events."""
    seen = {id(o) for o in shared}
    stack = [root]
    size = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_STATE):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return size


def test_rule_state_stays_flat_in_the_input_length(tmp_path: Path) -> None:
    """The rules' state, sampled at noon of each day of a 24-day replay: once the longest rule
    window (7 days) is full, it no longer grows. (replay_stream is this loop, with each
    finished episode handed to the spool.)"""
    scenario = _scenario(tmp_path, 24)
    site = load_site(scenario / "site.json")
    config = RulesConfig()
    engine = RuleEngine(site, config, scope=site.site_id)
    by_day: dict[str, int] = {}
    with (scenario / "events.jsonl").open("rb") as f:
        for event, t in read_events(f, InputStats()):
            local = event.ts.astimezone(ZoneInfo(site.timezone))
            day = local.date().isoformat()
            if local.hour >= 12 and day not in by_day:
                by_day[day] = _state_size(engine, site, config)
            engine.process(event, t)
    sizes = list(by_day.values())
    assert len(sizes) == 24
    week_two, week_four = statistics.median(sizes[8:12]), statistics.median(sizes[20:24])
    assert week_four / week_two < 1.05, sizes
    assert statistics.median(sizes[:2]) < week_two  # the measure sees the windows filling


def test_spooled_alerts_keep_only_their_sort_keys_in_memory(tmp_path: Path) -> None:
    """An alert costs the spool its sort key (about 0.25 KiB), not the episode and evidence."""
    tz = ZoneInfo("Asia/Shanghai")
    evidence: dict[str, EvidenceValue] = {f"signal_{i}": i * 1.5 for i in range(30)}
    episodes = [
        AlertEpisode(
            kind=AlertKind.OVERLOAD,
            severity=Severity.HIGH,
            subject=Subject(unit_id=f"3-{i % 97}", meter_id=f"m-3-{i % 97}"),
            raised_at=datetime(2026, 3, 1, tzinfo=CST) + timedelta(minutes=(i * 37) % 5000),
            evidence=dict(evidence),
            cleared_at=datetime(2026, 3, 9, tzinfo=CST),
            id=f"id-{i}",
        )
        for i in range(2000)
    ]
    held = _state_size(episodes)  # what keeping the episodes themselves would cost
    tracemalloc.start()
    try:
        with AlertSpool(tz) as spool:
            before = tracemalloc.get_traced_memory()[0]
            for ep in episodes:
                spool.add(ep)
            kept = tracemalloc.get_traced_memory()[0] - before
            out = tmp_path / "alerts.jsonl"
            with out.open("wb") as f:
                spool.write_sorted(f)
    finally:
        tracemalloc.stop()
    assert kept < held / 3, (kept, held)
    assert kept / len(episodes) < 400
    ordered = sorted(episodes, key=lambda ep: (ep.raised_at, ep.subject.key()))
    assert out.read_bytes() == b"".join(episode_line(ep, tz) for ep in ordered)


def test_unknown_types_are_counted_by_name_up_to_a_hundred(tmp_path: Path) -> None:
    extra = [
        {"type": f"vendor_event_{i:03d}", "ts": "2026-03-01T14:00:00+08:00"} for i in range(150)
    ]
    site, events = _write(tmp_path, _events() + extra)
    stdout = io.StringIO()
    assert run_replay(site, events, tmp_path / "a.jsonl", None, out=stdout, err=io.StringIO()) == 0
    summary = stdout.getvalue()
    assert "vendor_event_000 x1" in summary
    assert "(other types) x51" in summary  # door_forced_open and 99 vendor types by name
