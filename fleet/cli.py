"""``fleet-manager``: serve, upgrade the database, add users, import CSV files, run the embedded
broker, or run the whole demo.

Configuration comes from ``FLEET_*`` environment variables (see :mod:`fleet.settings`); a few
flags override them for convenience. A configuration error is reported in one line that names
the variable, with exit status 2, rather than as a traceback.

``user add`` and ``import`` work on the database directly (no server needed) and write the audit
log as actor ``cli``; they refuse to run on a database that ``db upgrade`` has not brought to
the newest schema. Passwords are never taken from the command line (``ps`` shows it to every
user of the machine): they are prompted for, or read from standard input with
``--password-stdin``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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
    if args.workers > 1:
        _serve_processes(args, settings)
        return
    try:
        asyncio.run(_serve_until_signalled(settings))
    except StartupError as exc:
        log.error("%s", exc)  # noqa: TRY400 - uvicorn has already logged the traceback
        sys.exit(EXIT_STARTUP)


def _serve_processes(args: argparse.Namespace, settings: Settings) -> None:
    """``serve --workers N``: uvicorn's process manager runs N API processes, each building its
    app (and, unless FLEET_INGEST_ENABLED=false, its own ingest) from the environment."""
    import uvicorn  # noqa: PLC0415

    for name, value in (
        ("FLEET_HTTP_HOST", args.host),
        ("FLEET_HTTP_PORT", args.port),
        ("FLEET_DATABASE_URL", args.database_url),
        ("FLEET_MQTT_URL", args.mqtt_url),
    ):
        if value is not None:
            os.environ[name] = str(value)
    if settings.ingest_enabled and settings.mqtt_client_id is not None:
        log.warning(
            "FLEET_MQTT_CLIENT_ID with --workers %d: every API process would take the same "
            "client id; run ingest in `fleet-manager ingest` workers (FLEET_INGEST_ENABLED=false)",
            args.workers,
        )
    from fleet.db import migrate  # noqa: PLC0415

    migrate(settings.database_url)  # once, before the workers race to do it
    uvicorn.run(
        "fleet.app:app_from_env",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def _cmd_ingest(args: argparse.Namespace) -> None:
    from fleet.ingest import run_worker  # noqa: PLC0415

    settings = _settings(
        {
            "database_url": args.database_url,
            "mqtt_url": args.mqtt_url,
            "mqtt_client_id": args.client_id,
            "mqtt_shared_group": args.shared_group,
        }
    )
    _configure_logging(args.log_level)

    async def until_signalled() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_worker(settings)

    asyncio.run(until_signalled())


def _fail(message: str, code: int) -> NoReturn:
    print(f"fleet-manager: {message}", file=sys.stderr)
    sys.exit(code)


def _database_url(args: argparse.Namespace) -> str:
    from fleet.settings import DatabaseSettings  # noqa: PLC0415

    if args.database_url:
        return str(args.database_url)
    try:
        return DatabaseSettings().database_url
    except ValidationError as exc:
        _fail(f"configuration error: {_config_error(exc)}", EXIT_CONFIG)


def _timezone() -> str:
    from fleet.settings import RegisterSettings  # noqa: PLC0415

    try:
        return RegisterSettings().display_timezone
    except ValidationError as exc:
        _fail(f"configuration error: {_config_error(exc)}", EXIT_CONFIG)


def _cmd_migrate(args: argparse.Namespace) -> None:
    from fleet.db import migrate  # noqa: PLC0415

    _configure_logging(args.log_level)
    migrate(_database_url(args))


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[Session]:
    """A session on a database whose schema is current (else exit 2: run ``db upgrade``)."""
    import sqlalchemy as sa  # noqa: PLC0415
    from alembic.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from fleet.db import alembic_config, make_engine, make_sessionmaker  # noqa: PLC0415

    engine = make_engine(_database_url(args), poolclass=sa.pool.NullPool)
    try:
        try:
            with engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except sa.exc.SQLAlchemyError as exc:
            _fail(f"cannot open the database: {exc.__class__.__name__}", EXIT_STARTUP)
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        if current != head:
            _fail(
                f"the database schema is at {current or 'nothing'}, not {head}: "
                "run `fleet-manager db upgrade` first",
                EXIT_CONFIG,
            )
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        _fail("no terminal to ask for the password on: use --password-stdin", EXIT_CONFIG)
    password = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != password:
        _fail("the passwords differ", EXIT_CONFIG)
    return password


def _cmd_user_add(args: argparse.Namespace) -> None:
    from fleet.accounts import AccountError, create_user  # noqa: PLC0415
    from fleet.audit import CLI_ACTOR  # noqa: PLC0415
    from fleet.models import Role  # noqa: PLC0415

    _configure_logging(args.log_level or "WARNING")
    password = _read_password(args)
    with _session(args) as session:
        try:
            user = create_user(
                session,
                CLI_ACTOR,
                username=args.username,
                password=password,
                role=Role(args.role),
                compounds=args.compound or [],
                street_office_id=args.street_office,
                display_name=args.display_name,
            )
            session.commit()
        except AccountError as exc:
            session.rollback()
            _fail(str(exc), EXIT_CONFIG)
        if user.role == Role.ADMIN:
            scope = "all compounds"
        else:
            scope = f"compounds {sorted(c.id for c in user.compounds)}"
            if user.street_office_id is not None:
                scope += f" and those of street office {user.street_office_id}"
        print(f"created user {user.username!r} (id {user.id}, role {user.role}, {scope})")


def _print_import_errors(path: Path, errors: list[Any], lang: str) -> None:
    zh = lang == "zh"
    if zh:
        print(f"{path}: 未导入任何数据，共 {len(errors)} 处错误：", file=sys.stderr)
    else:
        print(f"{path}: nothing imported, {len(errors)} error(s):", file=sys.stderr)
    for e in errors:
        where = f"第 {e.row} 行" if zh else f"line {e.row}"
        column = f" [{e.column}]" if e.column else ""
        print(f"  {where}{column}: {e.message_zh if zh else e.message_en}", file=sys.stderr)


def _cmd_import(args: argparse.Namespace) -> None:
    from fleet.audit import CLI_ACTOR  # noqa: PLC0415
    from fleet.desired import collect_touched, refresh_touched  # noqa: PLC0415
    from fleet.importer import ImportKind, ImportRejectedError, import_csv  # noqa: PLC0415

    _configure_logging(args.log_level or "WARNING")
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", EXIT_CONFIG)
    with _session(args) as session:
        try:
            with collect_touched(session) as touched:
                result = import_csv(
                    session,
                    data,
                    actor=CLI_ACTOR,
                    scope=None,
                    kind=ImportKind(args.kind) if args.kind else None,
                    filename=path.name,
                    dry_run=args.dry_run,
                )
        except ImportRejectedError as exc:
            _print_import_errors(path, exc.result.errors, args.lang)
            sys.exit(EXIT_STARTUP)
        # No publisher runs in this process: store the gateways' new desired configs now, and
        # the running fleet manager publishes them on its next round (FLEET_CONFIG_PUBLISH_RETRY_S).
        changed: list[str] = []
        if touched and not args.dry_run:
            with session.begin():
                changed = refresh_touched(session, touched, timezone=_timezone())
    created = ", ".join(f"{k} {v}" for k, v in sorted(result.created.items())) or "none"
    updated = ", ".join(f"{k} {v}" for k, v in sorted(result.updated.items())) or "none"
    verb = "checked (dry run, nothing written)" if args.dry_run else "imported"
    print(
        f"{path}: {verb} {result.rows} rows of {result.kind}; created {created}; updated {updated}"
    )
    if changed:
        print(f"desired config changed for {len(changed)} gateway(s): {', '.join(changed[:10])}")


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
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes (uvicorn workers; default 1). With more than one, run ingest in "
        "`fleet-manager ingest` workers or set FLEET_MQTT_SHARED_GROUP",
    )

    ingest = sub.add_parser(
        "ingest", help="run one MQTT ingest worker and the health monitor (no HTTP)"
    )
    ingest.add_argument("--database-url", help="SQLAlchemy URL (FLEET_DATABASE_URL)")
    ingest.add_argument("--mqtt-url", help="mqtt://user:pass@host:port (FLEET_MQTT_URL)")
    ingest.add_argument(
        "--client-id", help="fixed MQTT client id, unique per worker (FLEET_MQTT_CLIENT_ID)"
    )
    ingest.add_argument(
        "--shared-group", help="MQTT 5 shared subscription group (FLEET_MQTT_SHARED_GROUP)"
    )
    ingest.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (FLEET_LOG_LEVEL)")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="upgrade the schema to the newest revision")
    migrate = sub.add_parser("migrate", help="the same as `db upgrade`")
    for cmd in (upgrade, migrate):
        cmd.add_argument("--database-url", help="SQLAlchemy URL (FLEET_DATABASE_URL)")
        cmd.add_argument("--log-level")

    user = sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser(
        "add",
        help="create a user",
        description="Create a user. The password is prompted for, or read from standard input "
        "with --password-stdin (never given on the command line).",
    )
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=["admin", "installer", "property", "officer"])
    add.add_argument(
        "--compound",
        action="append",
        metavar="ID|CODE|NAME",
        help="a compound the user works in (repeat for several)",
    )
    add.add_argument(
        "--street-office", type=int, metavar="ID", help="also every compound of this street office"
    )
    add.add_argument("--display-name")
    add.add_argument("--password-stdin", action="store_true")
    add.add_argument("--database-url", help="SQLAlchemy URL (FLEET_DATABASE_URL)")
    add.add_argument("--log-level")

    imp = sub.add_parser(
        "import",
        help="import a CSV of compounds, buildings, flats or card registrations",
        description="All or nothing: when any row has an error nothing is written and every "
        "error is listed with its line and column (exit status 1).",
    )
    imp.add_argument("file")
    imp.add_argument(
        "--kind",
        choices=["compounds", "buildings", "flats", "cards"],
        help="what the file holds (default: told by its headers)",
    )
    imp.add_argument("--dry-run", action="store_true", help="check only, write nothing")
    imp.add_argument("--lang", choices=["zh", "en"], default="zh", help="language of the errors")
    imp.add_argument("--database-url", help="SQLAlchemy URL (FLEET_DATABASE_URL)")
    imp.add_argument("--log-level")

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
    elif args.command == "ingest":
        _cmd_ingest(args)
    elif args.command in ("migrate", "db"):
        _cmd_migrate(args)
    elif args.command == "user":
        _cmd_user_add(args)
    elif args.command == "import":
        _cmd_import(args)


if __name__ == "__main__":
    main()
