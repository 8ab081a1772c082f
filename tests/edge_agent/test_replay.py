"""``edge-agent replay`` as a street office would run it: files in, alerts file out."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent.replay import run_replay

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
