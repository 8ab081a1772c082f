"""Replay memory and throughput against the input's length.

    python bench/replay_memory.py [--seed 201] [--days 1 10 14] [--flats 120] [--repeat 3]
                                  [--workdir DIR]

Generates the same building (same seed, same flats) for each number of days, runs
``edge-agent replay`` on it in a fresh subprocess ``--repeat`` times, and reports the medians of:
input lines, wall time of the whole process (start-up included), events per second over that
wall time, the replay's own events per second (its summary line: parsing and rules, without
interpreter start-up), the child's CPU time, and its peak resident memory (``ru_maxrss``).

Measuring peak RSS honestly: on Linux a child's ``ru_maxrss`` also counts the memory of the
process it was forked from (the pages it shared until ``exec``; with ``vfork`` the parent's own
high-water mark). This script therefore generates scenarios in a subprocess and imports nothing
big itself, and prints its own peak RSS so it can be seen to stay below the children's figures.
(An earlier version generated in-process and forked from there: its "peak RSS" grew with the
scenario the parent had just generated, not with the replay.)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parents[1]


def ensure_scenario(workdir: Path, seed: int, flats: int, days: int) -> Path:
    out = workdir / f"seed-{seed}-f{flats}-d{days}"
    if not (out / "events.jsonl").exists():
        subprocess.run(
            [sys.executable, "-m", "firmware_sim", "scenario", "--seed", str(seed),
             "--flats", str(flats), "--days", str(days), "--out", str(out)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return out


_RATE = re.compile(r"\(([\d,]+) events/s\)")


def run_one(scenario: Path) -> tuple[float, float, float, float]:
    """(wall seconds, replay's own events/s, CPU seconds, peak RSS in MiB) of one replay."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "replay",
             "--site", str(scenario / "site.json"), "--input", str(scenario / "events.jsonl"),
             "--output", str(scenario / "alerts.jsonl")],
            cwd=ROOT, stdout=out, stderr=err,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage
        seconds = perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        summary, errors = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"replay failed on {scenario}: {errors[-500:]}")
    match = _RATE.search(summary)
    own_rate = float(match.group(1).replace(",", "")) if match else float("nan")
    return seconds, own_rate, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=201)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 10, 14])
    parser.add_argument("--flats", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "replay-bench"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for days in args.days:
        scenario = ensure_scenario(args.workdir, args.seed, args.flats, days)
        with (scenario / "events.jsonl").open("rb") as f:
            lines = sum(1 for _ in f)
        runs = [run_one(scenario) for _ in range(args.repeat)]
        rows.append((days, lines, *(statistics.median(col) for col in zip(*runs, strict=True))))
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"# replay memory and throughput: seed {args.seed}, {args.flats} flats, "
        f"median of {args.repeat}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
        f"this script's own peak RSS {own_peak:.0f} MiB"
    )
    print(
        "| days | input lines | wall s | events/s (wall) | events/s (replay's own) "
        "| CPU s | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for days, lines, wall, own, cpu, rss in rows:
        print(
            f"| {days} | {lines:,} | {wall:.1f} | {lines / wall:,.0f} | {own:,.0f} "
            f"| {cpu:.1f} | {rss:.1f} |"
        )


if __name__ == "__main__":
    main()
