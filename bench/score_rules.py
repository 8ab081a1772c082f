"""Score the edge rules on generated scenarios.

    python bench/score_rules.py --seeds 101-105 [--workdir DIR] [--config FILE] [--json]

For each seed: generate the scenario (reused when ``DIR/seed-.../truth.json`` was written by the
same generator with the same parameters), run ``edge-agent replay`` on it as a subprocess, and
score its alerts against ``truth.json`` (rules in ``firmware_sim/scenario/score.py`` and
``docs/scenarios.md``). Prints a markdown table per seed and pooled over the seeds, and the
replay's throughput (input lines / wall time of the replay subprocess).

Seeds 1-20 are for tuning; 101-105 are held out and used only for the reported figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firmware_sim.scenario.generate import GENERATOR, ScenarioParams, generate  # noqa: E402
from firmware_sim.scenario.score import (  # noqa: E402
    KindScore,
    breakdown_table,
    load_jsonl,
    markdown_table,
    parse_seeds,
    pooled,
    score,
    suspected_breakdown,
)


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def ensure_scenario(params: ScenarioParams, workdir: Path, *, regenerate: bool) -> Path:
    name = (
        f"seed-{params.seed}-f{params.flats}-d{params.days}-b{params.buildings}"
        f"-i{params.meter_interval_s}-{params.start.isoformat()}"
    )
    out = workdir / name
    truth = out / "truth.json"
    if not regenerate and truth.exists() and (out / "events.jsonl").exists():
        try:
            meta = json.loads(truth.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            meta = {}
        if meta.get("generator") == GENERATOR and meta.get("params") == params.as_json():
            return out
    print(f"generating seed {params.seed} -> {out}", file=sys.stderr)
    summary = generate(params, out)
    print(summary.line(), file=sys.stderr)
    return out


def run_replay(scenario: Path, config: Path | None) -> tuple[Path, float]:
    alerts = scenario / "alerts.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "replay",
        "--site",
        str(scenario / "site.json"),
        "--input",
        str(scenario / "events.jsonl"),
        "--output",
        str(alerts),
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"edge-agent replay failed on {scenario} (exit {proc.returncode})")
    return alerts, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", required=True, help="e.g. 101-105 or 1,2,5-7")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "qunzu-bench")
    parser.add_argument("--config", type=Path, default=None, help="agent config TOML ([rules])")
    parser.add_argument("--json", action="store_true", help="also print machine-readable results")
    parser.add_argument("--flats", type=int, default=120)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--buildings", type=int, default=4)
    parser.add_argument("--meter-interval-s", type=int, default=60)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 3, 1))
    parser.add_argument("--regenerate", action="store_true", help="ignore cached scenarios")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print ebike_charging_suspected recall by kind of session (PFC, unplugged "
        "early, overlapping another session), pooled over the seeds",
    )
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    args.workdir.mkdir(parents=True, exist_ok=True)

    per_seed: list[dict[str, KindScore]] = []
    breakdown: dict[str, tuple[int, int]] = {}
    results: list[dict[str, Any]] = []
    total_lines = 0
    total_seconds = 0.0
    for seed in seeds:
        params = ScenarioParams(
            seed=seed,
            flats=args.flats,
            days=args.days,
            buildings=args.buildings,
            meter_interval_s=args.meter_interval_s,
            start=args.start,
        )
        scenario = ensure_scenario(params, args.workdir, regenerate=args.regenerate)
        lines = _count_lines(scenario / "events.jsonl")
        alerts_path, seconds = run_replay(scenario, args.config)
        truth = json.loads((scenario / "truth.json").read_text(encoding="utf-8"))
        alerts = load_jsonl(alerts_path)
        scores = score(alerts, truth)
        per_seed.append(scores)
        if args.breakdown:
            for group, (found, total) in suspected_breakdown(alerts, truth).items():
                f0, t0 = breakdown.get(group, (0, 0))
                breakdown[group] = (f0 + found, t0 + total)
        total_lines += lines
        total_seconds += seconds
        print(f"\n### seed {seed}\n")
        print(markdown_table(scores))
        print(f"\nreplay: {lines:,} lines in {seconds:.1f}s ({lines / seconds:,.0f} events/s)")
        results.append(
            {
                "seed": seed,
                "scenario": str(scenario),
                "lines": lines,
                "replay_seconds": seconds,
                "events_per_s": lines / seconds,
                "scores": {k: s.as_json() for k, s in scores.items()},
            }
        )
    total = pooled(per_seed)
    print(f"\n### pooled over seeds {args.seeds}\n")
    print(markdown_table(total))
    rate = total_lines / total_seconds if total_seconds else 0.0
    print(f"\nreplay: {total_lines:,} lines in {total_seconds:.1f}s ({rate:,.0f} events/s)")
    if args.breakdown:
        print(f"\n### ebike_charging_suspected sessions found, seeds {args.seeds}\n")
        print(breakdown_table(breakdown))
    if args.json:
        print(
            json.dumps(
                {
                    "seeds": seeds,
                    "per_seed": results,
                    "pooled": {k: s.as_json() for k, s in total.items()},
                    "lines": total_lines,
                    "replay_seconds": total_seconds,
                    "events_per_s": rate,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
