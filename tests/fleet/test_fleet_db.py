"""Migrations: they build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from fleet.db import alembic_config, make_engine, migrate
from fleet.models import Base


def test_migrations_match_the_models_and_rerun_as_a_no_op(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # a second start must not fail or change anything
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            heads = ScriptDirectory.from_config(alembic_config()).get_heads()
            assert len(heads) == 1  # one line of history, no forks
            assert context.get_current_revision() == heads[0]
            tables = set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert {
        "users",
        "gateways",
        "meter_readings",
        "card_swipes",
        "charging_events",
        "alerts",
        "forward_deliveries",
    } <= tables
