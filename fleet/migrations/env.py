"""Alembic environment for the fleet manager, configured from code (see ``fleet.db.migrate``).

A caller hands in an open connection through ``config.attributes["connection"]``; developers
who run Alembic by hand (``alembic -x url=...``) get an engine built from that URL instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from fleet.db import make_engine
from fleet.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database: pass a connection in config.attributes or -x url=...")
    return url


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given: sa.Connection | None = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = make_engine(_url(), poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                _run(conn)
        finally:
            engine.dispose()
