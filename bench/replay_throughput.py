"""Where replay's time goes: parsing against rules, per event, in-process.

    python bench/replay_throughput.py [--seed 201] [--days 10] [--flats 120] [--repeat 3]
                                      [--workdir DIR]

Runs, ``--repeat`` times on one generated building: the parser alone (``read_events``), then the
whole replay (``replay_stream``: parsing, the rule engine, and each finished episode serialised
into the spool). Reports medians, in wall time and in this process's CPU time (steadier on a
shared machine: other work stretches wall time, less so CPU time). The rules' share is the
difference. Interpreter start-up is not included: ``bench/replay_memory.py`` measures the
whole command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter, process_time
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contract.site import RulesConfig  # noqa: E402
from edge_agent.replay import AlertSpool, InputStats, load_site, read_events, replay_stream  # noqa: E402


def ensure_scenario(workdir: Path, seed: int, flats: int, days: int) -> Path:
    out = workdir / f"seed-{seed}-f{flats}-d{days}"
    if not (out / "events.jsonl").exists():
        subprocess.run(
            [sys.executable, "-m", "firmware_sim", "scenario", "--seed", str(seed),
             "--flats", str(flats), "--days", str(days), "--out", str(out)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return out


def timed(run: Callable[[], int]) -> tuple[int, float, float]:
    """(events, wall seconds, CPU seconds) of one call."""
    wall, cpu = perf_counter(), process_time()
    events = run()
    return events, perf_counter() - wall, process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=201)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--flats", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "replay-bench"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scenario = ensure_scenario(args.workdir, args.seed, args.flats, args.days)
    site = load_site(scenario / "site.json")
    events_path = scenario / "events.jsonl"

    def parse_only() -> int:
        stats = InputStats()
        with events_path.open("rb") as f:
            for _ in read_events(f, stats):
                pass
        return stats.events

    def whole() -> int:
        with AlertSpool(ZoneInfo(site.timezone)) as spool, events_path.open("rb") as f:
            return replay_stream(site, RulesConfig(), f, spool.add).stats.events

    parse_runs, whole_runs = [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.repeat):
        parse_runs.append(timed(parse_only))
        whole_runs.append(timed(whole))
    events = whole_runs[0][0]
    p_wall = statistics.median(r[1] for r in parse_runs)
    p_cpu = statistics.median(r[2] for r in parse_runs)
    w_wall = statistics.median(r[1] for r in whole_runs)
    w_cpu = statistics.median(r[2] for r in whole_runs)
    print(
        f"# replay throughput: seed {args.seed}, {args.flats} flats, {args.days} days, "
        f"{events:,} events, median of {args.repeat}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print("| clock | parse µs/event | rules µs/event | total µs/event | events/s |")
    print("|---|---:|---:|---:|---:|")
    for name, parse_s, whole_s in (("wall", p_wall, w_wall), ("CPU", p_cpu, w_cpu)):
        per = 1e6 / events
        print(
            f"| {name} | {parse_s * per:.2f} | {(whole_s - parse_s) * per:.2f} "
            f"| {whole_s * per:.2f} | {events / whole_s:,.0f} |"
        )


if __name__ == "__main__":
    main()
