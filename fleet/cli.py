"""``fleet-manager``: serve, migrate, run the embedded broker, or run the whole demo.

Configuration comes from ``FLEET_*`` environment variables (see :mod:`fleet.settings`); a few
flags override them for convenience. A configuration error is reported in one line that names
the variable, with exit status 2, rather than as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from fleet.settings import Settings

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def _configure_logging(level: str | None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("FLEET_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _config_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{f'FLEET_{where.upper()}: ' if where else ''}{message}")
    return "; ".join(lines)


def _settings(overrides: dict[str, Any]) -> Settings:
    from fleet.settings import Settings  # noqa: PLC0415 - keep `--help` fast

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        print(f"fleet-manager: configuration error: {_config_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


async def _serve_until_signalled(settings: Settings) -> None:
    from fleet.app import serve  # noqa: PLC0415

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(settings)


def _cmd_serve(args: argparse.Namespace) -> None:
    from fleet.app import StartupError  # noqa: PLC0415

    settings = _settings(
        {
            "http_host": args.host,
            "http_port": args.port,
            "database_url": args.database_url,
            "mqtt_url": args.mqtt_url,
        }
    )
    _configure_logging(args.log_level)
    try:
        asyncio.run(_serve_until_signalled(settings))
    except StartupError as exc:
        log.error("%s", exc)  # noqa: TRY400 - uvicorn has already logged the traceback
        sys.exit(EXIT_STARTUP)


def _cmd_migrate(args: argparse.Namespace) -> None:
    from fleet.db import migrate  # noqa: PLC0415
    from fleet.settings import DatabaseSettings  # noqa: PLC0415

    _configure_logging(args.log_level)
    url = args.database_url or DatabaseSettings().database_url
    migrate(url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-manager",
        description="Fleet manager for group-rental and e-bike fire-hazard gateways.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API, web pages, MQTT ingest and forwarder")
    serve.add_argument("--host", help="listen address (FLEET_HTTP_HOST)")
    serve.add_argument("--port", type=int, help="listen port (FLEET_HTTP_PORT)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (FLEET_DATABASE_URL)")
    serve.add_argument("--mqtt-url", help="mqtt://user:pass@host:port (FLEET_MQTT_URL)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (FLEET_LOG_LEVEL)")

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    migrate.add_argument("--database-url", help="SQLAlchemy URL (FLEET_DATABASE_URL)")
    migrate.add_argument("--log-level")

    # These two own their arguments; everything after the subcommand is passed on.
    sub.add_parser("broker", help="run the embedded MQTT broker (amqtt)", add_help=False)
    sub.add_parser("demo", help="run the whole system on this machine", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] in ("broker", "demo"):
        if args_list[0] == "broker":
            from fleet.broker import main as broker_main  # noqa: PLC0415

            broker_main(args_list[1:])
        else:
            from fleet.demo import main as demo_main  # noqa: PLC0415

            demo_main(args_list[1:])
        return
    args = _parser().parse_args(args_list)
    if args.command == "serve":
        _cmd_serve(args)
    elif args.command == "migrate":
        _cmd_migrate(args)


if __name__ == "__main__":
    main()
