"""Provisioning: enrollment codes, per-gateway broker credentials, desired configs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Written out in full (no imports from ``fleet.models``), like 0001 and 0002.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=64)
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    ref_table = target.partition(".")[0]
    return sa.ForeignKeyConstraint(
        [column], [target], name=op.f(f"fk_{table}_{column}_{ref_table}"), ondelete="CASCADE"
    )


def _gateway_pk(table: str) -> list[Any]:
    return [
        sa.Column("gateway_id", _ID, nullable=False),
        _fk(table, "gateway_id", "gateways.gateway_id"),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f(f"pk_{table}")),
    ]


def upgrade() -> None:
    op.create_table(
        "enrollment_codes",
        sa.Column("id", _PK, nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("used_from", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        _fk("enrollment_codes", "gateway_id", "gateways.gateway_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_enrollment_codes_code_hash")),
    )
    op.create_index(
        op.f("ix_enrollment_codes_gateway_id"), "enrollment_codes", ["gateway_id"], unique=False
    )
    op.create_table(
        "broker_accounts",
        *_gateway_pk("broker_accounts"),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.UniqueConstraint("username", name=op.f("uq_broker_accounts_username")),
    )
    op.create_table(
        "site_keys",
        sa.Column("compound_id", _PK, nullable=False),
        sa.Column("wrapped_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _fk("site_keys", "compound_id", "compounds.id"),
        sa.PrimaryKeyConstraint("compound_id", name=op.f("pk_site_keys")),
    )
    op.create_table(
        "compound_rules",
        sa.Column("compound_id", _PK, nullable=False),
        sa.Column("rules", _JSON, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        _fk("compound_rules", "compound_id", "compounds.id"),
        sa.PrimaryKeyConstraint("compound_id", name=op.f("pk_compound_rules")),
    )
    op.create_table(
        "desired_configs",
        *_gateway_pk("desired_configs"),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("problems", _JSON, nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("published_version", sa.BigInteger(), nullable=True),
        sa.Column("published_at", _TS, nullable=True),
    )
    op.create_table(
        "gateway_config_states",
        *_gateway_pk("gateway_config_states"),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=128), nullable=False),
        sa.Column("applied_version", sa.BigInteger(), nullable=True),
        sa.Column("applied_hash", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("last_rejected_version", sa.BigInteger(), nullable=True),
        sa.Column("last_rejection_reason", sa.String(length=2000), nullable=True),
        sa.Column("last_rejected_at", _TS, nullable=True),
        sa.Column("reported_at", _TS, nullable=False),
        sa.Column("source_ts", _TS, nullable=False),
        sa.Column("message_id", _ID, nullable=False),
    )
    op.create_table(
        "gateway_replacements",
        sa.Column("id", _PK, nullable=False),
        sa.Column("old_gateway_id", _ID, nullable=False),
        sa.Column("new_gateway_id", _ID, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("moved", _JSON, nullable=False),
        _fk("gateway_replacements", "old_gateway_id", "gateways.gateway_id"),
        _fk("gateway_replacements", "new_gateway_id", "gateways.gateway_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_replacements")),
    )
    for column in ("old_gateway_id", "new_gateway_id"):
        op.create_index(
            op.f(f"ix_gateway_replacements_{column}"),
            "gateway_replacements",
            [column],
            unique=False,
        )


def downgrade() -> None:
    for column in ("new_gateway_id", "old_gateway_id"):
        op.drop_index(op.f(f"ix_gateway_replacements_{column}"), table_name="gateway_replacements")
    op.drop_table("gateway_replacements")
    op.drop_table("gateway_config_states")
    op.drop_table("desired_configs")
    op.drop_table("compound_rules")
    op.drop_table("site_keys")
    op.drop_table("broker_accounts")
    op.drop_index(op.f("ix_enrollment_codes_gateway_id"), table_name="enrollment_codes")
    op.drop_table("enrollment_codes")
