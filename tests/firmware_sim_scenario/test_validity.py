"""The files follow the replay format (shared/spec/replay.md) and replay accepts them."""

from __future__ import annotations

import io
import itertools
import json
from datetime import datetime, timedelta

from contract.site import Site
from edge_agent.replay import run_replay

from .helpers import Loaded

KNOWN = {"card_swipe", "meter_reading", "charging_sensor"}


def test_site_validates(small: Loaded) -> None:
    site = Site.model_validate(small.site)
    assert site.timezone == "Asia/Shanghai"
    assert len(site.units) == 12
    assert {
        len([r for r in site.readers if r.building == b]) for b in {u.building for u in site.units}
    } <= {1, 2}
    assert all(32 <= (u.rated_current_a or 0) <= 63 for u in site.units)


def test_every_line_is_a_valid_event_in_time_order(small: Loaded) -> None:
    site = small.site
    readers = {r["reader_id"] for r in site["readers"]}
    meters = {m["meter_id"] for m in site["meters"]}
    sensors = {s["sensor_id"] for s in site["sensors"]}
    last: datetime | None = None
    counts: dict[str, int] = {}
    with (small.path / "events.jsonl").open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            e = json.loads(line)
            assert isinstance(e, dict), number
            kind = e["type"]
            assert isinstance(kind, str)
            counts[kind] = counts.get(kind, 0) + 1
            t = datetime.fromisoformat(e["ts"])
            assert t.utcoffset() == timedelta(hours=8), number
            assert last is None or t >= last, f"line {number} goes back in time"
            last = t
            if kind == "card_swipe":
                assert e["reader_id"] in readers
                assert isinstance(e["card"], str) and e["card"].isdigit()
            elif kind == "meter_reading":
                assert e["meter_id"] in meters
                assert isinstance(e["power_w"], float) and e["power_w"] >= 0
                for name in ("voltage_v", "current_a", "energy_kwh"):
                    assert name not in e or isinstance(e[name], float)
            elif kind == "charging_sensor":
                assert e["sensor_id"] in sensors
                assert isinstance(e["charging"], bool)
                assert "power_w" not in e or isinstance(e["power_w"], float)
    assert set(counts) > KNOWN, "a few lines of other types exercise forward compatibility"
    assert counts["meter_reading"] > 12 * 2 * 1440 * 0.9


def test_cards_are_registered_or_deliberately_unregistered(medium: Loaded) -> None:
    registered = {c["card"] for c in medium.site["cards"]}
    seen = {card for _, _, card in medium.swipes}
    unregistered = seen - registered
    deliberate = sum(h["unregistered_cards"] for h in medium.truth["households"].values())
    assert len(unregistered) <= deliberate
    assert unregistered, "some tenants use copied cards"


def test_meter_readings_come_at_a_fixed_interval_per_meter(medium: Loaded) -> None:
    for meter_id, readings in medium.meters.items():
        steps = {round(b.t - a.t) % 60 for a, b in itertools.pairwise(readings)}
        assert steps == {0}, meter_id  # gaps are whole missed polls


def test_replay_accepts_the_scenario(small: Loaded) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_replay(
        small.path / "site.json",
        small.path / "events.jsonl",
        small.path / "alerts.jsonl",
        None,
        out=out,
        err=err,
    )
    assert code == 0, err.getvalue()
    assert "skipped events of unknown type" in out.getvalue()
