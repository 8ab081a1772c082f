"""Same seed and arguments, same bytes; another seed, another compound."""

from __future__ import annotations

from pathlib import Path

from firmware_sim.scenario.generate import ScenarioParams, generate

FILES = ("site.json", "events.jsonl", "truth.json")


def _bytes(params: ScenarioParams, out: Path) -> dict[str, bytes]:
    generate(params, out)
    return {name: (out / name).read_bytes() for name in FILES}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    params = ScenarioParams(seed=42, flats=12, days=2, buildings=2)
    first = _bytes(params, tmp_path / "a")
    second = _bytes(params, tmp_path / "b")
    assert first == second


def test_different_seed_gives_different_files(tmp_path: Path) -> None:
    a = _bytes(ScenarioParams(seed=42, flats=12, days=2, buildings=2), tmp_path / "a")
    b = _bytes(ScenarioParams(seed=43, flats=12, days=2, buildings=2), tmp_path / "b")
    for name in FILES:
        assert a[name] != b[name], name


def test_summary_counts_what_was_written(tmp_path: Path) -> None:
    summary = generate(ScenarioParams(seed=1, flats=6, days=1, buildings=1), tmp_path)
    lines = (tmp_path / "events.jsonl").read_bytes().count(b"\n")
    assert summary.events == lines
    assert summary.flats == 6
    assert "6 flats" in summary.line()
