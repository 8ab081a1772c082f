"""Site model (district to flat, devices), roles and scopes, API keys, audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Written out in full (no imports from ``fleet.models``), like 0001. Users that exist already
become admins: before this revision the only user was the admin.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=64)
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    ref_table = target.partition(".")[0]
    return sa.ForeignKeyConstraint(
        [column], [target], name=op.f(f"fk_{table}_{column}_{ref_table}"), ondelete=ondelete
    )


def _index(table: str, column: str) -> None:
    op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "districts",
        sa.Column("id", _PK, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_districts")),
        sa.UniqueConstraint("name", name=op.f("uq_districts_name")),
    )
    op.create_table(
        "street_offices",
        sa.Column("id", _PK, nullable=False),
        sa.Column("district_id", _PK, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        _fk("street_offices", "district_id", "districts.id", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_street_offices")),
        sa.UniqueConstraint("district_id", "name", name=op.f("uq_street_offices_district_id_name")),
    )
    op.create_table(
        "compounds",
        sa.Column("id", _PK, nullable=False),
        sa.Column("street_office_id", _PK, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("code", _ID, nullable=True),
        sa.Column("address", sa.String(length=200), nullable=True),
        _fk("compounds", "street_office_id", "street_offices.id", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compounds")),
        sa.UniqueConstraint("code", name=op.f("uq_compounds_code")),
        sa.UniqueConstraint(
            "street_office_id", "name", name=op.f("uq_compounds_street_office_id_name")
        ),
    )
    _index("compounds", "street_office_id")
    op.create_table(
        "buildings",
        sa.Column("id", _PK, nullable=False),
        sa.Column("compound_id", _PK, nullable=False),
        sa.Column("name", _ID, nullable=False),
        sa.Column("floors", sa.Integer(), nullable=True),
        _fk("buildings", "compound_id", "compounds.id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_buildings")),
        sa.UniqueConstraint("compound_id", "name", name=op.f("uq_buildings_compound_id_name")),
    )
    _index("buildings", "compound_id")
    op.create_table(
        "entrances",
        sa.Column("id", _PK, nullable=False),
        sa.Column("building_id", _PK, nullable=False),
        sa.Column("name", _ID, nullable=False),
        _fk("entrances", "building_id", "buildings.id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entrances")),
        sa.UniqueConstraint("building_id", "name", name=op.f("uq_entrances_building_id_name")),
    )
    _index("entrances", "building_id")
    op.create_table(
        "flats",
        sa.Column("id", _PK, nullable=False),
        sa.Column("building_id", _PK, nullable=False),
        sa.Column("entrance_id", _PK, nullable=True),
        sa.Column("unit_id", _ID, nullable=False),
        sa.Column("floor", sa.Integer(), nullable=True),
        sa.Column("area_m2", sa.Double(), nullable=True),
        sa.Column("rooms", sa.Integer(), nullable=True),
        sa.Column("registered_occupants", sa.Integer(), nullable=True),
        sa.Column("rated_current_a", sa.Double(), nullable=True),
        _fk("flats", "building_id", "buildings.id", "CASCADE"),
        _fk("flats", "entrance_id", "entrances.id", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flats")),
        sa.UniqueConstraint("building_id", "unit_id", name=op.f("uq_flats_building_id_unit_id")),
    )
    _index("flats", "building_id")
    op.create_table(
        "devices",
        sa.Column("id", _PK, nullable=False),
        sa.Column("compound_id", _PK, nullable=False),
        sa.Column("gateway_id", _ID, nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("device_id", _ID, nullable=False),
        sa.Column("flat_id", _PK, nullable=True),
        sa.Column("location", sa.String(length=32), nullable=True),
        sa.Column("params", _JSON, nullable=False),
        _fk("devices", "compound_id", "compounds.id", "CASCADE"),
        _fk("devices", "gateway_id", "gateways.gateway_id", "SET NULL"),
        _fk("devices", "flat_id", "flats.id", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint(
            "compound_id", "device_id", name=op.f("uq_devices_compound_id_device_id")
        ),
    )
    for column in ("compound_id", "gateway_id", "flat_id"):
        _index("devices", column)
    op.create_table(
        "card_registrations",
        sa.Column("id", _PK, nullable=False),
        sa.Column("flat_id", _PK, nullable=False),
        sa.Column("card", sa.String(length=64), nullable=False),
        sa.Column("holder_label", sa.String(length=64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        _fk("card_registrations", "flat_id", "flats.id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_registrations")),
        sa.UniqueConstraint("flat_id", "card", name=op.f("uq_card_registrations_flat_id_card")),
    )
    _index("card_registrations", "flat_id")
    _index("card_registrations", "card")
    op.create_table(
        "api_keys",
        sa.Column("id", _PK, nullable=False),
        sa.Column("user_id", _PK, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        _fk("api_keys", "user_id", "users.id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    _index("api_keys", "user_id")
    op.create_table(
        "audit_log",
        sa.Column("id", _PK, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("via", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", _ID, nullable=True),
        sa.Column("compound_id", sa.BigInteger(), nullable=True),
        sa.Column("summary", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    _index("audit_log", "at")
    _index("audit_log", "compound_id")
    op.create_table(
        "user_compounds",
        sa.Column("user_id", _PK, nullable=False),
        sa.Column("compound_id", _PK, nullable=False),
        _fk("user_compounds", "user_id", "users.id", "CASCADE"),
        _fk("user_compounds", "compound_id", "compounds.id", "CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "compound_id", name=op.f("pk_user_compounds")),
    )
    _index("user_compounds", "compound_id")
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("role", sa.String(length=16), server_default="admin", nullable=False)
        )
        batch.add_column(sa.Column("display_name", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("street_office_id", _PK, nullable=True))
        batch.add_column(
            sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch.create_foreign_key(
            op.f("fk_users_street_office_id_street_offices"),
            "street_offices",
            ["street_office_id"],
            ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("gateways") as batch:
        batch.add_column(sa.Column("entrance_id", _PK, nullable=True))
        batch.create_foreign_key(
            op.f("fk_gateways_entrance_id_entrances"),
            "entrances",
            ["entrance_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_gateways_entrance_id"), ["entrance_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gateways") as batch:
        batch.drop_index(op.f("ix_gateways_entrance_id"))
        batch.drop_constraint(op.f("fk_gateways_entrance_id_entrances"), type_="foreignkey")
        batch.drop_column("entrance_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("fk_users_street_office_id_street_offices"), type_="foreignkey")
        for column in ("active", "street_office_id", "display_name", "role"):
            batch.drop_column(column)
    for table in (
        "user_compounds",
        "audit_log",
        "api_keys",
        "card_registrations",
        "devices",
        "flats",
        "entrances",
        "buildings",
        "compounds",
        "street_offices",
        "districts",
    ):
        op.drop_table(table)  # their indexes go with them
