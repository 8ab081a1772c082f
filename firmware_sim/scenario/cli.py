"""``firmware-sim scenario``: write a labelled building scenario (site, events, truth).

    python -m firmware_sim.scenario --seed 7 --out /tmp/scn7

writes ``site.json`` and ``events.jsonl`` in the replay format (``shared/spec/replay.md``) and
``truth.json`` (``docs/scenarios.md``), then prints a one-line summary. The same seed and
arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from firmware_sim.scenario.generate import ScenarioParams, generate


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The scenario arguments (on a new parser, or added to a subcommand's parser)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="firmware-sim scenario", description=(__doc__ or "").splitlines()[0]
        )
    parser.add_argument("--seed", type=int, required=True, help="seed of everything")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--flats", type=int, default=120, help="number of flats (default 120)")
    parser.add_argument("--days", type=int, default=14, help="length in days (default 14)")
    parser.add_argument("--buildings", type=int, default=4, help="number of buildings (default 4)")
    parser.add_argument(
        "--meter-interval-s", type=int, default=60, help="meter poll interval, 10-60 s (default 60)"
    )
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=date(2026, 3, 1),
        help="first day, YYYY-MM-DD (default 2026-03-01)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        params = ScenarioParams(
            seed=args.seed,
            flats=args.flats,
            days=args.days,
            buildings=args.buildings,
            meter_interval_s=args.meter_interval_s,
            start=args.start,
        )
    except ValueError as exc:
        print(f"firmware-sim scenario: {exc}", file=sys.stderr)
        return 2
    summary = generate(params, args.out)
    print(summary.line())
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: parse ``argv`` (default: the command line), generate, exit."""
    args = build_parser().parse_args(argv)
    code = run(args)
    if code:
        raise SystemExit(code)
