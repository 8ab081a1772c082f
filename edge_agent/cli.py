"""``edge-agent``: the gateway's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from edge_agent.config import ConfigError, load_config
from edge_agent.scan_cli import add_scan_parser

log = logging.getLogger(__name__)


async def _run(config_path: Path) -> int:
    from edge_agent.agent import Agent  # noqa: PLC0415 - keep `--help` fast

    config = load_config(config_path)
    agent = Agent(config)
    task = asyncio.create_task(agent.run(), name="agent")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.info("agent stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="edge-agent", description="Edge gateway agent")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent with a TOML config")
    run.add_argument("--config", type=Path, required=True)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, required=True)
    rp = sub.add_parser("replay", help="run the rules over recorded data (spec/replay.md)")
    rp.add_argument("--site", type=Path, required=True, help="site.json")
    rp.add_argument("--input", type=Path, required=True, help="events.jsonl")
    rp.add_argument("--output", type=Path, required=True, help="alerts.jsonl to write")
    rp.add_argument("--config", type=Path, help="agent config TOML whose [rules] table to use")
    add_scan_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs an ERROR with a frame dump on every timeout; the meter driver reports the
    # fault once when it starts and once when it ends, which is what an installer needs.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # bthome-ble warns on every advert it cannot decrypt; the BLE driver counts those
    # (decrypt_failed) and reports a device fault once.
    logging.getLogger("bthome_ble").setLevel(logging.ERROR)
    try:
        if args.command == "scan":
            from edge_agent.scan_cli import run_scan  # noqa: PLC0415

            sys.exit(run_scan(args))
        if args.command == "replay":
            from edge_agent.replay import run_replay  # noqa: PLC0415

            sys.exit(run_replay(args.site, args.input, args.output, args.config))
        if args.command == "check-config":
            cfg = load_config(args.config)
            print(f"{args.config}: ok (gateway {cfg.gateway_id})")
            sys.exit(0)
        sys.exit(asyncio.run(_run(args.config)))
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
