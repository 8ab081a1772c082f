"""Heartbeat history for the gateway page; indexes for the pages at scale.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

Adds ``gateway_heartbeats``: one row per heartbeat (outbox depth and age, load, memory, disk,
CPU temperature, device counts, config version), keyed by gateway and the heartbeat's ``ts``,
with an index on ``ts`` for pruning. Two indexes for the pages at scale: ``audit_log (entity,
entity_id)`` (timelines) and ``card_swipes (gateway_id, unit_id, event_ts)`` (a flat's swipes).

Written out in full (no imports from ``fleet.models``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=64)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_heartbeats",
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=False),
        sa.Column("outbox_depth", sa.BigInteger(), nullable=False),
        sa.Column("outbox_oldest_age_s", sa.Double(), nullable=True),
        sa.Column("load_1m", sa.Double(), nullable=True),
        sa.Column("mem_available_bytes", sa.BigInteger(), nullable=True),
        sa.Column("mem_rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("disk_free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("cpu_temp_c", sa.Double(), nullable=True),
        sa.Column("devices_total", sa.Integer(), nullable=False),
        sa.Column("devices_online", sa.Integer(), nullable=False),
        sa.Column("devices_faulty", sa.Integer(), nullable=False),
        sa.Column("config_version", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["gateways.gateway_id"],
            name=op.f("fk_gateway_heartbeats_gateway_id_gateways"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("gateway_id", "ts", name=op.f("pk_gateway_heartbeats")),
    )
    op.create_index(op.f("ix_gateway_heartbeats_ts"), "gateway_heartbeats", ["ts"], unique=False)
    op.create_index("ix_audit_log_entity", "audit_log", ["entity", "entity_id"], unique=False)
    op.create_index(
        "ix_card_swipes_gateway_unit_ts",
        "card_swipes",
        ["gateway_id", "unit_id", "event_ts"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_card_swipes_gateway_unit_ts", table_name="card_swipes")
    op.drop_index("ix_audit_log_entity", table_name="audit_log")
    op.drop_table("gateway_heartbeats")  # its index goes with it
