"""``edge-agent scan ...``: the installer's tools, rendered for a terminal.

Each scan prints what it finds as it goes (a progress bar for long scans), the hints that
explain an empty or garbled result, and a config snippet to paste into the gateway's agent
config (or write with ``--snippet FILE``). Card numbers are shown masked.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from drivers.serial_card import FRAME_FORMATS
from edge_agent import scan_ble, scan_modbus, scan_serial


def _ranges(text: str) -> list[int]:
    """``1-10,15,20-22`` -> [1..10, 15, 20, 21, 22]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _bar(stream: IO[str], label: str) -> Callable[[float, float], None]:
    def show(done: float, total: float) -> None:
        if not stream.isatty():
            return
        share = min(1.0, done / total) if total else 1.0
        stream.write(f"\r{label} [{'#' * int(share * 30):<30}] {share:4.0%}")
        stream.flush()
        if share >= 1.0:
            stream.write("\n")

    return show


def add_scan_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scan = sub.add_parser("scan", help="installer tools: find devices and write config")
    kinds = scan.add_subparsers(dest="scan_kind", required=True)

    m = kinds.add_parser("modbus", help="find which Modbus addresses answer, guess the meter")
    m.add_argument("--port", required=True, help="/dev/ttyUSB0, socket://host:port or tcp://")
    m.add_argument("--baud", type=int, default=9600)
    m.add_argument("--parity", choices=["N", "E", "O"], default="N")
    m.add_argument("--ids", default="1-247", help="addresses, e.g. 1-32,100")
    m.add_argument("--timeout", type=float, default=0.3)

    d = kinds.add_parser("dlt645", help="read the address of a DL/T 645 meter")
    d.add_argument("--port", required=True)
    d.add_argument("--baud", type=int, default=2400)
    d.add_argument("--probe", action="append", default=[], help="also try this 12-digit address")

    b = kinds.add_parser("ble", help="list BTHome charging sensors in range")
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--source", default="bleak", help="'bleak' (the radio) or feed://host:port")
    b.add_argument("--adapter", default=None)

    s = kinds.add_parser("serial", help="show decoded card frames live")
    s.add_argument("--port", required=True)
    s.add_argument("--baud", type=int, default=9600)
    s.add_argument("--format", choices=list(FRAME_FORMATS), default="decimal")
    s.add_argument("--seconds", type=float, default=30.0)

    for p in (m, d, b, s):
        p.add_argument("--snippet", type=Path, help="also write the config snippet to FILE")


async def _scan(args: argparse.Namespace, out: IO[str], err: IO[str]) -> str:
    if args.scan_kind == "modbus":
        ids = _ranges(args.ids)
        result = await scan_modbus.scan_modbus(
            args.port, args.baud, ids, args.timeout,
            _bar(err, f"scanning {len(ids)} addresses"), parity=args.parity,
        )  # fmt: skip
        for meter in result.meters:
            out.write(f"slave {meter.slave}: {meter.profile or 'unknown profile'} {meter.detail}\n")
        for hint in result.hints():
            out.write(f"hint: {hint}\n")
        return result.as_config_snippet()
    if args.scan_kind == "dlt645":
        addresses = await scan_serial.scan_dlt645(args.port, args.baud, probe=args.probe)
        for a in addresses:
            out.write(f"meter address {a}\n")
        if not addresses:
            out.write(
                "hint: no meter answered: check A/B, 2400 baud even parity, and that only one "
                "meter is on the bus for the broadcast read (or pass --probe ADDRESS)\n"
            )
        return scan_serial.dlt645_config_snippet(args.port, addresses, baudrate=args.baud)
    if args.scan_kind == "ble":
        from drivers.ble_charging import BleakAdvertSource, FeedAdvertSource  # noqa: PLC0415

        if args.source == "bleak":
            source: BleakAdvertSource | FeedAdvertSource = BleakAdvertSource(adapter=args.adapter)
        else:
            feed = urlparse(args.source)
            source = FeedAdvertSource(feed.hostname or "127.0.0.1", feed.port or 0)
        ble = await scan_ble.scan_ble(
            args.seconds, source, progress=_bar(err, f"listening {args.seconds:.0f}s")
        )
        for sensor in ble.sensors:
            out.write(
                f"{sensor.mac} {sensor.sensor_id} rssi {sensor.rssi} dBm "
                f"(best {sensor.best_rssi}){' encrypted' if sensor.encrypted else ''} "
                f"{dict(sensor.values)}\n"
            )
        for hint in ble.hints:
            out.write(f"hint: {hint}\n")
        return ble.as_config_snippet(source=args.source)
    def show(frame: scan_serial.ScannedFrame) -> None:
        out.write(frame.text + "\n")

    result_serial = await scan_serial.scan_serial(
        args.port, args.baud, args.format, args.seconds, show
    )
    for hint in result_serial.hints:
        out.write(f"hint: {hint}\n")
    return scan_serial.as_config_snippet(result_serial)


def run_scan(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    try:
        snippet = asyncio.run(_scan(args, out, err))
    except (scan_modbus.ScanError, scan_serial.ScanError) as exc:
        err.write(f"edge-agent scan: {exc}\n")
        return 2
    out.write("\n# paste into the agent config:\n" + snippet + "\n")
    if args.snippet is not None:
        args.snippet.write_text(snippet + "\n")
        out.write(f"# written to {args.snippet}\n")
    return 0
