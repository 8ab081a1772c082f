"""Database plumbing: engines for SQLite and PostgreSQL, and schema migrations.

The fleet manager runs on PostgreSQL in production and on a SQLite file as the embedded default,
so everything here smooths over the two: timestamps always come back timezone-aware in UTC, and
SQLite gets WAL, enforced foreign keys and ``BEGIN IMMEDIATE`` transactions (ingest, the
forwarder and the API write from different threads; a deferred transaction that later tries to
write fails at once with "database is locked" instead of waiting its turn).

Access is synchronous SQLAlchemy: the async parts (ingest, forwarder) hop to a worker thread for
each short transaction and FastAPI runs plain ``def`` endpoints in its threadpool.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number: serialises concurrent ``migrate`` calls from several PostgreSQL clients.
_MIGRATION_LOCK_ID = 0x_F1EE7_0001


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL keeps the zone (``timestamptz``); SQLite keeps none, so values are normalised to
    UTC on the way in and tagged UTC on the way out. Naive values are refused: they are bugs.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" hook below own transactions instead of pysqlite's implicit ones.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(database_url: str, **kwargs: Any) -> sa.Engine:
    """An engine for ``database_url`` with the per-dialect settings described above."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connect_args = {"timeout": 30.0}  # seconds to wait for another writer
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: sa.Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: workers hand plain values to async code.
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic configured from code: the scripts ship inside the package, no alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision`` (a no-op when current).

    On SQLite, foreign keys are switched off for the migration's connection: SQLite's batch
    "ALTER" rebuilds a table by copying it and dropping the original, and with foreign keys on,
    dropping ``gateways`` would cascade to every row that refers to it. ``PRAGMA
    foreign_key_check`` then verifies the result before the migration commits.
    """
    engine = make_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # Must run outside a transaction (it is a no-op inside one).
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Transaction-scoped: released at commit, so two API processes starting at
                    # once migrate one after the other instead of racing on CREATE TABLE.
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                    )
                command.upgrade(alembic_config(conn), revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(
                            f"migration left {len(broken)} rows with dangling foreign keys "
                            f"(first: {tuple(broken[0])}); nothing was changed"
                        )
    finally:
        engine.dispose()
    log.info("database schema is at the newest revision")
