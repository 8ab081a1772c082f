"""Replay throughput and memory against the input's length.

    python bench/replay_memory.py [--seed 201] [--days 1 10] [--flats 120] [--workdir DIR]

Generates the same building (same seed, same flats) for each number of days, runs
``edge-agent replay`` on it in a fresh subprocess, and reports input lines, wall time,
events per second and the replay process's peak resident memory (ru_maxrss of the child).
Memory must not grow with the number of days: replay streams its input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firmware_sim.scenario.generate import ScenarioParams, generate  # noqa: E402


def run_one(scenario: Path) -> tuple[int, float, float]:
    """(lines, seconds, peak RSS in MiB) of one replay subprocess."""
    lines = sum(1 for _ in (scenario / "events.jsonl").open("rb"))
    pid = os.fork()
    if pid == 0:  # child: exec the replay so its ru_maxrss is its own
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execv(
            sys.executable,
            [sys.executable, "-m", "edge_agent", "replay",
             "--site", str(scenario / "site.json"), "--input", str(scenario / "events.jsonl"),
             "--output", str(scenario / "alerts.jsonl")],
        )  # fmt: skip
    started = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"replay failed on {scenario}")
    return lines, seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=201)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--flats", type=int, default=120)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="replay-bench-"))
    print(f"# replay memory and throughput, seed {args.seed}, {args.flats} flats, {date.today()}")
    print("| days | input lines | seconds | events/s | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for days in args.days:
        out = workdir / f"seed-{args.seed}-d{days}"
        if not (out / "events.jsonl").exists():
            generate(ScenarioParams(seed=args.seed, flats=args.flats, days=days), out)
        lines, seconds, rss = run_one(out)
        print(f"| {days} | {lines:,} | {seconds:.1f} | {lines / seconds:,.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
