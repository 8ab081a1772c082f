"""Database tables of the fleet manager (SQLAlchemy 2, typed).

Every table written by ingest has a natural key minted at the edge (message id, alert id, or
gateway/meter/timestamp), so a message the broker delivers twice is recognised and stored once.
The schema itself is created by the Alembic migrations in ``fleet/migrations``; keep the two in
step (``tests/fleet/test_fleet_db.py`` compares them).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleet.db import UTCDateTime

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

ID_LEN = 64  # the contract's limit for ids minted at the edge


# Deterministic constraint names: later migrations (and SQLite batch mode) must name them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}  # noqa: RUF012


class AlertState(StrEnum):
    OPEN = "open"
    CLEARED = "cleared"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]


class Gateway(Base):
    """One edge gateway's latest known state, built from its birth, death and other messages."""

    __tablename__ = "gateways"

    gateway_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    site_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    agent_version: Mapped[str | None] = mapped_column(sa.String(64))
    session: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    online: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[datetime | None]
    last_birth_at: Mapped[datetime | None]
    last_death_at: Mapped[datetime | None]
    death_reason: Mapped[str | None] = mapped_column(sa.String(32))
    first_seen: Mapped[datetime]


class MeterReading(Base):
    __tablename__ = "meter_readings"
    __table_args__ = (sa.UniqueConstraint("gateway_id", "meter_id", "ts"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE")
    )
    message_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    meter_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    unit_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    ts: Mapped[datetime]
    power_w: Mapped[float]
    voltage_v: Mapped[float | None]
    current_a: Mapped[float | None]
    energy_kwh: Mapped[float | None]
    power_factor: Mapped[float | None]


class CardSwipe(Base):
    """A swipe: ``card`` is the pseudonym minted on the gateway, never a card number."""

    __tablename__ = "card_swipes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(ID_LEN), unique=True)
    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE")
    )
    reader_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    card: Mapped[str] = mapped_column(sa.String(64))
    unit_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    event_ts: Mapped[datetime]
    received_at: Mapped[datetime]


class ChargingEvent(Base):
    __tablename__ = "charging_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(ID_LEN), unique=True)
    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE")
    )
    sensor_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    unit_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    location: Mapped[str | None] = mapped_column(sa.String(64))
    charging: Mapped[bool]
    power_w: Mapped[float | None]
    event_ts: Mapped[datetime]
    received_at: Mapped[datetime]


class Alert(Base):
    """An alert episode as raised at the edge, keyed by the edge's ``alert_id``.

    ``source_ts`` and ``last_message_id`` are the envelope ``ts`` / ``id`` of the message that
    last changed the row: a re-delivered or older message is recognised and ignored.
    """

    __tablename__ = "alerts"

    alert_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    category: Mapped[str] = mapped_column(sa.String(16))
    severity: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    unit_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    building: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    sensor_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    meter_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    reader_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"), index=True
    )
    raised_at: Mapped[datetime] = mapped_column(index=True)
    cleared_at: Mapped[datetime | None]
    evidence: Mapped[dict[str, Any]]
    first_received_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    source_ts: Mapped[datetime]
    last_message_id: Mapped[str] = mapped_column(sa.String(ID_LEN))


class ForwardDelivery(Base):
    """The durable webhook outbox: one row per (alert, receiver URL)."""

    __tablename__ = "forward_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("alert_id", "url"),
        sa.Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    alert_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("alerts.alert_id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(sa.String(2048))
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
