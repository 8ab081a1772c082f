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


def test_upgrading_a_database_with_data_keeps_every_row(database_url: str) -> None:
    """A fleet manager upgraded in place keeps its gateways, alerts and readings (on SQLite the
    batch table rebuilds must not cascade deletes through foreign keys)."""
    migrate(database_url, "0001")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO gateways (gateway_id, online, first_seen, last_seen) "
                    "VALUES ('gw-old', false, :t, :t)"
                ),
                {"t": "2026-11-01 08:00:00+00:00"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO alerts (alert_id, kind, category, severity, state, unit_id, "
                    "gateway_id, raised_at, evidence, first_received_at, updated_at, source_ts, "
                    "last_message_id) VALUES ('a-1', 'overload', '消防', 'high', 'open', "
                    "'1-201', 'gw-old', :t, '{}', :t, :t, :t, 'm-1')"
                ),
                {"t": "2026-11-01 08:00:00+00:00"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO meter_readings (gateway_id, message_id, meter_id, unit_id, ts, "
                    "power_w) VALUES ('gw-old', 'm-2', 'm1', '1-201', :t, 120.0)"
                ),
                {"t": "2026-11-01 08:00:00+00:00"},
            )
    finally:
        engine.dispose()
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            for table in ("gateways", "alerts", "meter_readings"):
                count = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                assert count == 1, table
    finally:
        engine.dispose()
