"""``python -m firmware_sim.scenario`` and the bench script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.scenario.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_main_writes_the_files_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "--seed",
            "3",
            "--out",
            str(tmp_path),
            "--flats",
            "6",
            "--days",
            "1",
            "--buildings",
            "1",
            "--meter-interval-s",
            "30",
            "--start",
            "2026-03-09",
        ]
    )
    line = capsys.readouterr().out.strip()
    assert "6 flats" in line and "events" in line and "ebike_charging" in line
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["start"] == "2026-03-09T00:00:00+08:00"
    assert truth["params"]["meter_interval_s"] == 30
    assert {"site.json", "events.jsonl", "truth.json"} <= {p.name for p in tmp_path.iterdir()}


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--seed", "3", "--out", str(tmp_path), "--meter-interval-s", "5"])
    assert exc.value.code == 2
    assert "10-60" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "firmware_sim.scenario",
            "--seed",
            "1",
            "--out",
            str(tmp_path),
            "--flats",
            "4",
            "--days",
            "1",
            "--buildings",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 flats" in proc.stdout


def test_bench_script_scores_a_small_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("score_rules", ROOT / "bench" / "score_rules.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = [
        "--seeds",
        "1",
        "--workdir",
        str(tmp_path),
        "--flats",
        "8",
        "--days",
        "2",
        "--buildings",
        "2",
        "--json",
    ]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "| ebike_charging |" in out and "events/s" in out
    results = json.loads(out[out.index("{\n") :])
    assert results["pooled"]["ebike_charging"]["truth"] >= 1
    # A second run reuses the scenario.
    generated = next(tmp_path.iterdir()) / "events.jsonl"
    mtime = generated.stat().st_mtime_ns
    assert bench.main(args) == 0
    assert generated.stat().st_mtime_ns == mtime
