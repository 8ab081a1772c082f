"""Load a generated scenario into compact per-device series for the tests."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from firmware_sim.scenario.generate import ScenarioParams, Summary, generate


@dataclass
class Reading:
    t: float
    power: float
    voltage: float | None
    current: float | None
    energy: float | None


@dataclass
class Loaded:
    path: Path
    summary: Summary
    site: dict[str, Any]
    truth: dict[str, Any]
    meters: dict[str, list[Reading]] = field(default_factory=lambda: defaultdict(list))
    swipes: list[tuple[float, str, str]] = field(default_factory=list)
    sensors: dict[str, list[tuple[float, bool, float | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    unknown: Counter[str] = field(default_factory=Counter)

    @property
    def start(self) -> float:
        return ts(self.truth["start"])

    @property
    def end(self) -> float:
        return ts(self.truth["end"])

    def episodes(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.truth["episodes"] if e["kind"] == kind]

    def unit(self, unit_id: str) -> dict[str, Any]:
        return next(u for u in self.site["units"] if u["unit_id"] == unit_id)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def build(params: ScenarioParams, out: Path) -> Loaded:
    summary = generate(params, out)
    loaded = Loaded(
        path=out,
        summary=summary,
        site=json.loads((out / "site.json").read_text()),
        truth=json.loads((out / "truth.json").read_text()),
    )
    with (out / "events.jsonl").open() as f:
        for line in f:
            e = json.loads(line)
            kind = e["type"]
            if kind == "meter_reading":
                loaded.meters[e["meter_id"]].append(
                    Reading(
                        ts(e["ts"]),
                        e["power_w"],
                        e.get("voltage_v"),
                        e.get("current_a"),
                        e.get("energy_kwh"),
                    )
                )
            elif kind == "card_swipe":
                loaded.swipes.append((ts(e["ts"]), e["reader_id"], e["card"]))
            elif kind == "charging_sensor":
                loaded.sensors[e["sensor_id"]].append(
                    (ts(e["ts"]), e["charging"], e.get("power_w"))
                )
            else:
                loaded.unknown[kind] += 1
    return loaded
