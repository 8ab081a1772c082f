"""Initial schema: users, gateways, readings, swipes, charging events, alerts, webhook outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Written out in full (no imports from ``fleet.models``) so the migration keeps describing this
revision when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=64)
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _gateway_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["gateway_id"],
        ["gateways.gateway_id"],
        name=op.f(f"fk_{table}_gateway_id_gateways"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("site_id", _ID, nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("session", sa.BigInteger(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen", _TS, nullable=True),
        sa.Column("last_birth_at", _TS, nullable=True),
        sa.Column("last_death_at", _TS, nullable=True),
        sa.Column("death_reason", sa.String(length=32), nullable=True),
        sa.Column("first_seen", _TS, nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("pk_gateways")),
    )
    op.create_table(
        "users",
        sa.Column("id", _PK, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "alerts",
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("unit_id", _ID, nullable=True),
        sa.Column("building", _ID, nullable=True),
        sa.Column("sensor_id", _ID, nullable=True),
        sa.Column("meter_id", _ID, nullable=True),
        sa.Column("reader_id", _ID, nullable=True),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("raised_at", _TS, nullable=False),
        sa.Column("cleared_at", _TS, nullable=True),
        sa.Column("evidence", _JSON, nullable=False),
        sa.Column("first_received_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("source_ts", _TS, nullable=False),
        sa.Column("last_message_id", _ID, nullable=False),
        _gateway_fk("alerts"),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alerts")),
    )
    for column in ("gateway_id", "kind", "raised_at", "state"):
        op.create_index(op.f(f"ix_alerts_{column}"), "alerts", [column], unique=False)
    op.create_table(
        "card_swipes",
        sa.Column("id", _PK, nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("reader_id", _ID, nullable=False),
        sa.Column("card", sa.String(length=64), nullable=False),
        sa.Column("unit_id", _ID, nullable=True),
        sa.Column("event_ts", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        _gateway_fk("card_swipes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_swipes")),
        sa.UniqueConstraint("message_id", name=op.f("uq_card_swipes_message_id")),
    )
    op.create_table(
        "charging_events",
        sa.Column("id", _PK, nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("sensor_id", _ID, nullable=False),
        sa.Column("unit_id", _ID, nullable=True),
        sa.Column("location", sa.String(length=64), nullable=True),
        sa.Column("charging", sa.Boolean(), nullable=False),
        sa.Column("power_w", sa.Double(), nullable=True),
        sa.Column("event_ts", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        _gateway_fk("charging_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charging_events")),
        sa.UniqueConstraint("message_id", name=op.f("uq_charging_events_message_id")),
    )
    op.create_table(
        "meter_readings",
        sa.Column("id", _PK, nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("meter_id", _ID, nullable=False),
        sa.Column("unit_id", _ID, nullable=True),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("power_w", sa.Double(), nullable=False),
        sa.Column("voltage_v", sa.Double(), nullable=True),
        sa.Column("current_a", sa.Double(), nullable=True),
        sa.Column("energy_kwh", sa.Double(), nullable=True),
        sa.Column("power_factor", sa.Double(), nullable=True),
        _gateway_fk("meter_readings"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter_readings")),
        sa.UniqueConstraint(
            "gateway_id", "meter_id", "ts", name=op.f("uq_meter_readings_gateway_id_meter_id_ts")
        ),
    )
    op.create_table(
        "forward_deliveries",
        sa.Column("id", _PK, nullable=False),
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alerts.alert_id"],
            name=op.f("fk_forward_deliveries_alert_id_alerts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forward_deliveries")),
        sa.UniqueConstraint("alert_id", "url", name=op.f("uq_forward_deliveries_alert_id_url")),
    )
    op.create_index(
        op.f("ix_forward_deliveries_status_next_attempt_at"),
        "forward_deliveries",
        ["status", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_forward_deliveries_status_next_attempt_at"), table_name="forward_deliveries"
    )
    op.drop_table("forward_deliveries")
    op.drop_table("meter_readings")
    op.drop_table("charging_events")
    op.drop_table("card_swipes")
    for column in ("state", "raised_at", "kind", "gateway_id"):
        op.drop_index(op.f(f"ix_alerts_{column}"), table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("users")
    op.drop_table("gateways")
