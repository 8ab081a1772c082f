"""``edge-agent``: the gateway's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from edge_agent.config import ConfigError
from edge_agent.desired import load_effective_config

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


async def _run(config_path: Path) -> int:
    from edge_agent.agent import Agent  # noqa: PLC0415 - keep `--help` fast

    effective = load_effective_config(config_path)
    agent = Agent(effective.config, base=effective.base, config_path=config_path)
    task = asyncio.create_task(agent.run(), name="agent")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.info("agent stopped")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from edge_agent.agent import agent_version  # noqa: PLC0415
    from edge_agent.enroll import EnrollError, default_owner, enroll  # noqa: PLC0415

    try:
        result = enroll(
            args.server,
            args.token,
            config_path=args.config,
            state_dir=args.state_dir,
            force=args.force,
            owner=args.owner or default_owner(),
            agent_version=agent_version(),
        )
    except EnrollError as exc:
        print(f"edge-agent enroll: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
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
    en = sub.add_parser("enroll", help="exchange a one-time code for this gateway's identity")
    en.add_argument("--server", required=True, help="the fleet manager, e.g. https://fleet.example")
    en.add_argument("--token", required=True, help="the one-time enrollment code")
    en.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    en.add_argument("--state-dir", type=Path, help="default: the config's or /var/lib/edge-agent")
    en.add_argument("--force", action="store_true", help="re-enroll an enrolled gateway")
    en.add_argument("--owner", help="give the files to this user (default: edge-agent as root)")
    doc = sub.add_parser("doctor", help="check config, disk, clock, broker and every device")
    doc.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    doc.add_argument("--device-timeout", type=float, default=10.0, help="seconds per device")
    doc.add_argument("--lang", choices=["zh", "en"], help="default: zh (en when LANG=en*)")
    argv = sys.argv[1:] if argv is None else argv
    if "scan" in argv:
        # the scan tools import every driver stack (pymodbus, BLE, pyserial): only for `scan`
        from edge_agent.scan_cli import add_scan_parser  # noqa: PLC0415

        add_scan_parser(sub)
    else:
        sub.add_parser("scan", help="installer tools: find devices and write config")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs an ERROR with a frame dump on every timeout; the meter driver reports the
    # fault once when it starts and once when it ends, which is what an installer needs.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        if args.command == "scan":
            from edge_agent.scan_cli import run_scan  # noqa: PLC0415

            sys.exit(run_scan(args))
        if args.command == "replay":
            from edge_agent.replay import run_replay  # noqa: PLC0415

            sys.exit(run_replay(args.site, args.input, args.output, args.config))
        if args.command == "check-config":
            eff = load_effective_config(args.config)
            desired = f", desired config version {eff.desired.version}" if eff.desired else ""
            print(f"{args.config}: ok (gateway {eff.config.gateway_id}{desired})")
            sys.exit(0)
        if args.command == "enroll":
            sys.exit(_enroll(args))
        if args.command == "doctor":
            from edge_agent.doctor import default_lang, doctor  # noqa: PLC0415

            # the table says what failed; the drivers' own warnings would only repeat it
            logging.getLogger().setLevel(max(logging.ERROR, logging.getLogger().level))
            sys.exit(
                doctor(
                    args.config,
                    lang=args.lang or default_lang(),
                    device_timeout_s=args.device_timeout,
                )
            )
        sys.exit(asyncio.run(_run(args.config)))
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
