"""Ingest at scale: per-gateway sequence tracking, gaps, inactivity.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Adds to ``gateways`` what health needs (the session its death ended, why and since when it is
offline, its last heartbeat, the sequence gaps of its current session), and the tables
``gateway_sessions`` (sequence tracking per session), ``uplink_messages`` (every applied message
id: the idempotency key of all uplink kinds), ``device_health`` (devices as their gateway
describes them), ``health_notifications`` (for the property company only) and
``ingest_workers`` (per-worker counters for ``GET /metrics``).

Written out in full (no imports from ``fleet.models``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
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
    with op.batch_alter_table("gateways") as batch:
        batch.add_column(sa.Column("death_session", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("offline_reason", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("offline_since", _TS, nullable=True))
        batch.add_column(sa.Column("last_heartbeat_at", _TS, nullable=True))
        batch.add_column(
            sa.Column("seq_gaps", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
    op.create_table(
        "gateway_sessions",
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=False),
        sa.Column("max_seq", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("first_received_at", _TS, nullable=False),
        sa.Column("last_received_at", _TS, nullable=False),
        _gateway_fk("gateway_sessions"),
        sa.PrimaryKeyConstraint("gateway_id", "session", name=op.f("pk_gateway_sessions")),
    )
    op.create_table(
        "uplink_messages",
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_uplink_messages")),
    )
    op.create_index(
        op.f("ix_uplink_messages_received_at"), "uplink_messages", ["received_at"], unique=False
    )
    op.create_table(
        "device_health",
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("device_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("unit_id", _ID, nullable=True),
        sa.Column("location", sa.String(length=64), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=True),
        sa.Column("fault", sa.String(length=200), nullable=True),
        sa.Column("device_last_seen", _TS, nullable=True),
        sa.Column("reported_at", _TS, nullable=True),
        sa.Column("counters", _JSON, nullable=False),
        _gateway_fk("device_health"),
        sa.PrimaryKeyConstraint("gateway_id", "device_id", name=op.f("pk_device_health")),
    )
    op.create_table(
        "health_notifications",
        sa.Column("id", _PK, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("device_id", _ID, nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint(
            "audience = 'property'", name=op.f("ck_health_notifications_audience_property")
        ),
        _gateway_fk("health_notifications"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_notifications")),
        sa.UniqueConstraint("key", name=op.f("uq_health_notifications_key")),
    )
    op.create_index(
        op.f("ix_health_notifications_gateway_id"),
        "health_notifications",
        ["gateway_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_health_notifications_created_at"),
        "health_notifications",
        ["created_at"],
        unique=False,
    )
    op.create_table(
        "ingest_workers",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("stats", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_ingest_workers")),
    )


def downgrade() -> None:
    for table in (
        "ingest_workers",
        "health_notifications",
        "device_health",
        "uplink_messages",
        "gateway_sessions",
    ):
        op.drop_table(table)  # their indexes go with them
    with op.batch_alter_table("gateways") as batch:
        for column in (
            "seq_gaps",
            "last_heartbeat_at",
            "offline_since",
            "offline_reason",
            "death_session",
        ):
            batch.drop_column(column)
