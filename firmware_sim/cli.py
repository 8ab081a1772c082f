"""``firmware-sim``: run device simulators from the command line.

``firmware-sim building --flats 4 --seed 7 --charging-after 5 --endpoints-file building.json``
runs a simulated building until SIGINT or SIGTERM. Once every device is up it writes the
endpoints JSON (written to a temporary file and renamed, so a reader never sees half a file),
prints one readiness line, and removes the file again when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from firmware_sim.building import SimulatedBuilding
from firmware_sim.scenario import cli as scenario_cli

log = logging.getLogger("firmware_sim")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either nothing or the whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="firmware-sim", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    parser.epilog = "device simulators on their own: firmware-sim dlt645|card-reader|modbus --help"
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("building", help="run a simulated building until SIGINT/SIGTERM")
    b.add_argument("--flats", type=int, default=4, help="number of flats (2 per floor)")
    b.add_argument("--seed", type=int, default=0, help="seed of everything about the building")
    b.add_argument(
        "--charging-after",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when the e-bike in flat 1-201 starts charging",
    )
    b.add_argument("--charging-unit", default=None, help="flat that charges (default 1-201)")
    b.add_argument("--host", default="127.0.0.1", help="address the servers listen on")
    b.add_argument("--advert-interval", type=float, default=1.0, metavar="SECONDS")
    b.add_argument("--no-swipes", action="store_true", help="no random card swipes")
    b.add_argument(
        "--endpoints-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the endpoints JSON once ready (default: print it)",
    )
    f = sub.add_parser(
        "fleet", help="run many lightweight simulated gateways (MQTT only) until SIGINT/SIGTERM"
    )
    f.add_argument("--gateways", type=int, default=100, help="how many (default 100)")
    f.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    f.add_argument("--interval", type=float, default=30.0, metavar="S", help="heartbeat period")
    f.add_argument(
        "--telemetry-every", type=float, default=None, metavar="S",
        help="meter telemetry period (default: the heartbeat period; 0: none)",
    )  # fmt: skip
    f.add_argument("--keepalive", type=int, default=60, metavar="S", help="MQTT keepalive")
    f.add_argument("--prefix", default="sim-gw", help="gateway ids are PREFIX-00000, ...")
    f.add_argument("--kill-after", type=float, default=None, metavar="S")
    f.add_argument("--kill-count", type=int, default=1)
    f.add_argument(
        "--kill-mode", choices=("drop", "silent"), default="drop",
        help="drop: close TCP without DISCONNECT (the will fires); silent: stop sending "
        "anything, pings too, socket left open (half-open)",
    )  # fmt: skip
    scenario_cli.build_parser(
        sub.add_parser(
            "scenario",
            help="write a labelled building (site.json, events.jsonl, truth.json) for replay",
        )
    )
    return parser


async def _run_building(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    path: Path | None = args.endpoints_file
    try:
        async with SimulatedBuilding(
            flats=args.flats,
            seed=args.seed,
            charging_after_s=args.charging_after,
            charging_unit=args.charging_unit,
            host=args.host,
            advert_interval_s=args.advert_interval,
            swipe_every_s=None if args.no_swipes else (2.0, 6.0),
        ) as building:
            endpoints: dict[str, Any] = building.endpoints()
            text = json.dumps(endpoints, indent=2, ensure_ascii=False) + "\n"
            if path is None:
                sys.stdout.write(text)
                print("firmware-sim: building ready", flush=True)
            else:
                write_atomic(path, text)
                print(f"firmware-sim: building ready, endpoints in {path}", flush=True)
            await stop.wait()
            log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


async def _run_fleet(args: argparse.Namespace) -> int:
    from firmware_sim.fleet import run_fleet  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_fleet(
            gateways=args.gateways,
            broker_url=args.broker,
            interval_s=args.interval,
            telemetry_every_s=args.telemetry_every,
            keepalive_s=args.keepalive,
            prefix=args.prefix,
            kill_after_s=args.kill_after,
            kill_count=args.kill_count,
            kill_mode=args.kill_mode,
            stop=stop,
        )
    except ValueError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a bad argument, no traceback wanted
        return 2


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Device simulators with their own argument parsers: ``firmware-sim dlt645 --help`` etc.
_DEVICE_COMMANDS = {
    "dlt645": "firmware_sim.dlt645_meter:run_dlt645_cli",
    "card-reader": "firmware_sim.card_reader:run_card_reader_cli",
    "modbus": "firmware_sim.modbus_meters:run_modbus_cli",
}


def _device_command(argv: Sequence[str]) -> int | None:
    if not argv or argv[0] not in _DEVICE_COMMANDS:
        return None
    module_name, _, func_name = _DEVICE_COMMANDS[argv[0]].partition(":")
    run: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(list(argv[1:]))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    device = _device_command(argv)
    if device is not None:
        return device
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "scenario":
        return scenario_cli.run(args)
    if args.command == "fleet":
        return asyncio.run(_run_fleet(args))
    if args.command != "building":
        return 2
    path: Path | None = args.endpoints_file
    if path is not None:
        path.unlink(missing_ok=True)  # never let a reader see a previous run's endpoints
    try:
        return asyncio.run(_run_building(args))
    except ValueError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a bad argument, no traceback wanted
        return 2
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
