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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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


class Role(StrEnum):
    """What a user may do; where is their scope (a set of compounds, all for an admin)."""

    ADMIN = "admin"  # everything, everywhere; manages users, keys and the site register
    INSTALLER = "installer"  # 安装人员: buildings, flats, gateways and devices of their compounds
    PROPERTY = "property"  # 物业: health, flats and card registrations of their compounds
    OFFICER = "officer"  # 平安办: hazard alerts of their street office's compounds


# Many-to-many: the compounds a user (any role but admin) works in. An officer additionally
# sees every compound of ``users.street_office_id``.
user_compounds = sa.Table(
    "user_compounds",
    Base.metadata,
    sa.Column("user_id", BigIntPK, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "compound_id",
        BigIntPK,
        sa.ForeignKey("compounds.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]
    role: Mapped[str] = mapped_column(sa.String(16), default=Role.ADMIN, server_default="admin")
    display_name: Mapped[str | None] = mapped_column(sa.String(64))
    street_office_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("street_offices.id", ondelete="SET NULL")
    )
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    compounds: Mapped[list[Compound]] = relationship(secondary=user_compounds)


class ApiKey(Base):
    """A key for a machine client, acting as its owner (same role, same compounds).

    Only a SHA-256 of the secret part is kept (the secret is 256 random bits, so a fast hash is
    enough); ``prefix`` finds the row. The full key is shown once, when created.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(64))
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One change: who (user name kept as text, so the entry outlives the user), when, what.

    ``compound_id`` (no foreign key, for the same reason) decides who may read the entry;
    ``summary`` holds the changed fields before and after, never a secret.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(sa.String(64))
    actor_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    via: Mapped[str] = mapped_column(sa.String(32))
    action: Mapped[str] = mapped_column(sa.String(16))
    entity: Mapped[str] = mapped_column(sa.String(32))
    entity_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    compound_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
    summary: Mapped[dict[str, Any]]

    # The timeline of an alert or a flat reads its entries by entity.
    __table_args__ = (sa.Index("ix_audit_log_entity", "entity", "entity_id"),)


class District(Base):
    """区: the top of the site register."""

    __tablename__ = "districts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)


class StreetOffice(Base):
    """街道 / 平安办: an officer's scope is the compounds of their street office."""

    __tablename__ = "street_offices"
    __table_args__ = (sa.UniqueConstraint("district_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    district_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("districts.id", ondelete="RESTRICT")
    )
    name: Mapped[str] = mapped_column(sa.String(64))


class Compound(Base):
    """小区: the unit of scope for every user but admins."""

    __tablename__ = "compounds"
    __table_args__ = (sa.UniqueConstraint("street_office_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    street_office_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("street_offices.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(64))
    code: Mapped[str | None] = mapped_column(sa.String(ID_LEN), unique=True)
    address: Mapped[str | None] = mapped_column(sa.String(200))


class Building(Base):
    __tablename__ = "buildings"
    __table_args__ = (sa.UniqueConstraint("compound_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    compound_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("compounds.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(ID_LEN))
    floors: Mapped[int | None]


class Entrance(Base):
    """单元 / 门洞: where a gateway and its card reader usually sit."""

    __tablename__ = "entrances"
    __table_args__ = (sa.UniqueConstraint("building_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    building_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("buildings.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(ID_LEN))


class Flat(Base):
    """一户: ``unit_id`` is the id the edge uses for it (e.g. ``1-201``), unique per building."""

    __tablename__ = "flats"
    __table_args__ = (sa.UniqueConstraint("building_id", "unit_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    building_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("buildings.id", ondelete="CASCADE"), index=True
    )
    entrance_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("entrances.id", ondelete="SET NULL")
    )
    unit_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    floor: Mapped[int | None]
    area_m2: Mapped[float | None]
    rooms: Mapped[int | None]
    registered_occupants: Mapped[int | None]
    rated_current_a: Mapped[float | None]


class DeviceKind(StrEnum):
    METER = "meter"
    CARD_READER = "card_reader"
    CHARGING_SENSOR = "charging_sensor"


class Device(Base):
    """A meter, card reader or charging sensor behind a gateway, mapped to a flat or a place.

    ``device_id`` is the id in the agent's config (``meter_id``, ``reader_id``, ``sensor_id``),
    unique within a compound; ``params`` holds the transport details (Modbus address/slave, BLE
    MAC, serial port, ...); ``location`` names a shared place (stairwell, corridor, lobby,
    bike_shed) for a device that serves no single flat.
    """

    __tablename__ = "devices"
    __table_args__ = (sa.UniqueConstraint("compound_id", "device_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    compound_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("compounds.id", ondelete="CASCADE"), index=True
    )
    gateway_id: Mapped[str | None] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(sa.String(32))
    device_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    flat_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("flats.id", ondelete="SET NULL"), index=True
    )
    location: Mapped[str | None] = mapped_column(sa.String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)


class CardRegistration(Base):
    """A resident's card registered to a flat, by its pseudonym (HMAC at the edge), never the
    card number."""

    __tablename__ = "card_registrations"
    __table_args__ = (sa.UniqueConstraint("flat_id", "card"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    flat_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("flats.id", ondelete="CASCADE"), index=True
    )
    card: Mapped[str] = mapped_column(sa.String(64), index=True)
    holder_label: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]


class Gateway(Base):
    """One edge gateway's latest known state, built from its birth, death and other messages."""

    __tablename__ = "gateways"

    gateway_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    site_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    entrance_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("entrances.id", ondelete="SET NULL"), index=True
    )
    agent_version: Mapped[str | None] = mapped_column(sa.String(64))
    session: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    online: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[datetime | None]
    last_birth_at: Mapped[datetime | None]
    last_death_at: Mapped[datetime | None]
    death_reason: Mapped[str | None] = mapped_column(sa.String(32))
    first_seen: Mapped[datetime]
    # Health and sequence tracking (issue 6, migration 0004; see fleet/health.py).
    death_session: Mapped[int | None] = mapped_column(sa.BigInteger)
    offline_reason: Mapped[str | None] = mapped_column(sa.String(16))  # death / timeout
    offline_since: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    seq_gaps: Mapped[int] = mapped_column(sa.BigInteger, default=0)


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

    # The swipes-per-day chart and the flat page read one flat's swipes over a period.
    __table_args__ = (
        sa.Index("ix_card_swipes_gateway_unit_ts", "gateway_id", "unit_id", "event_ts"),
    )


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
    # Lifecycle (fleet/lifecycle.py). ``state`` above is the edge's view of the latest episode
    # (open/cleared); ``status`` is the case the street office works on. Several edge episodes
    # on one subject and kind attach to the one case that is not closed (alert_episodes).
    status: Mapped[str] = mapped_column(sa.String(16), default="new", server_default="new")
    subject_key: Mapped[str] = mapped_column(sa.String(255))
    flat_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("flats.id", ondelete="SET NULL"), index=True
    )
    compound_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("compounds.id", ondelete="SET NULL"), index=True
    )
    recurring: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    episodes: Mapped[int] = mapped_column(default=1, server_default="1")
    assignee: Mapped[str | None] = mapped_column(sa.String(64))
    due_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    rechecks: Mapped[int] = mapped_column(default=0, server_default="0")
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    acknowledged_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    rectifying_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None] = mapped_column(index=True)
    escalated_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
    notify_seq: Mapped[int] = mapped_column(default=0, server_default="0")

    __table_args__ = (
        # At most one case that is not closed per (subject, kind), whatever races ingest has.
        sa.Index(
            "uq_alerts_open_subject_kind",
            "subject_key",
            "kind",
            unique=True,
            postgresql_where=sa.text("status <> 'closed'"),
            sqlite_where=sa.text("status <> 'closed'"),
        ),
        sa.Index(None, "status"),
    )


class AlertEpisodeRow(Base):
    """One edge episode (its edge-minted id) and the case it is attached to."""

    __tablename__ = "alert_episodes"

    episode_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    alert_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("alerts.alert_id", ondelete="CASCADE"), index=True
    )
    gateway_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    severity: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16))
    raised_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None]
    source_ts: Mapped[datetime]
    last_message_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    first_received_at: Mapped[datetime]


class ForwardChannel(Base):
    """A receiver of forwarded alerts: a webhook, a WeCom or DingTalk group robot, or email.

    ``street_office_id`` NULL means every alert (district-wide receivers, and the URLs of
    ``FLEET_WEBHOOK_URLS``, which are kept here with ``source = 'env'``). ``config`` holds the
    kind's settings, secrets included; the API never returns them.
    """

    __tablename__ = "forward_channels"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    street_office_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("street_offices.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(16))
    config: Mapped[dict[str, Any]]
    quiet_start: Mapped[str | None] = mapped_column(sa.String(5))
    quiet_end: Mapped[str | None] = mapped_column(sa.String(5))
    events: Mapped[list[str] | None] = mapped_column(JSONType)
    send_reports: Mapped[bool] = mapped_column(default=False)
    enabled: Mapped[bool] = mapped_column(default=True)
    source: Mapped[str] = mapped_column(sa.String(16), default="api")
    created_at: Mapped[datetime]


class Notification(Base):
    """Something worth telling the receivers (an alert raised, updated, cleared, escalated, a
    lifecycle step, a report), with the payload frozen when it happened. ``key`` is the
    idempotency key receivers see."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(128), unique=True)
    alert_id: Mapped[str | None] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("alerts.alert_id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(sa.String(24))
    severity: Mapped[str] = mapped_column(sa.String(16))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class AlertPhoto(Base):
    """Photo evidence attached to a lifecycle step or comment; the bytes live in the database
    so that every API process of a stateless deployment can serve them."""

    __tablename__ = "alert_photos"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    alert_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("alerts.alert_id", ondelete="CASCADE"), index=True
    )
    audit_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    filename: Mapped[str] = mapped_column(sa.String(200))
    content_type: Mapped[str] = mapped_column(sa.String(32))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    uploaded_by: Mapped[str] = mapped_column(sa.String(64))
    uploaded_at: Mapped[datetime]


class Sublandlord(Base):
    """二房东: one person or firm who lets several flats (seed 001)."""

    __tablename__ = "sublandlords"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    street_office_id: Mapped[int | None] = mapped_column(
        BigIntPK, sa.ForeignKey("street_offices.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(64))
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    notes: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(sa.String(64))


class SublandlordFlat(Base):
    __tablename__ = "sublandlord_flats"

    sublandlord_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("sublandlords.id", ondelete="CASCADE"), primary_key=True
    )
    flat_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("flats.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    linked_at: Mapped[datetime]


class FlatMark(Base):
    """What officers record about a flat that no sensor tells: let or not (出租房屋)."""

    __tablename__ = "flat_marks"

    flat_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("flats.id", ondelete="CASCADE"), primary_key=True
    )
    rented: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(64))


class ForwardDelivery(Base):
    """The durable forwarding outbox: one row per (notification, channel).

    ``order_key`` (the alert's subject) keeps deliveries to one channel about one flat in
    order: a row is only sent when no older row with the same channel and key is pending.
    """

    __tablename__ = "forward_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("notification_id", "channel_id"),
        sa.Index(None, "status", "next_attempt_at"),
        sa.Index(None, "channel_id", "order_key", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("notifications.id", ondelete="CASCADE")
    )
    channel_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("forward_channels.id", ondelete="CASCADE")
    )
    alert_id: Mapped[str | None] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("alerts.alert_id", ondelete="CASCADE"), index=True
    )
    order_key: Mapped[str] = mapped_column(sa.String(255))
    url: Mapped[str] = mapped_column(sa.String(2048))
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


# --- Provisioning and desired config (fleet/provisioning.py, fleet/desired.py) ---------------


class EnrollmentCode(Base):
    """A one-time enrollment code for a gateway: only its SHA-256 is kept.

    A code is usable while ``used_at`` and ``revoked_at`` are null and ``expires_at`` is in
    the future; it is claimed by one conditional UPDATE, so two requests racing with the same
    code cannot both win (``fleet.provisioning.claim_code``).
    """

    __tablename__ = "enrollment_codes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(sa.String(64))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_from: Mapped[str | None] = mapped_column(sa.String(64))
    revoked_at: Mapped[datetime | None]


class BrokerAccount(Base):
    """A gateway's MQTT identity. With dynsec the broker alone holds the password (salted
    PBKDF2 inside Mosquitto); with the embedded broker ``password_hash`` is what it checks."""

    __tablename__ = "broker_accounts"

    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN),
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    )
    username: Mapped[str] = mapped_column(sa.String(128), unique=True)
    mode: Mapped[str] = mapped_column(sa.String(16))
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SiteKey(Base):
    """The card-pseudonym key of a compound, wrapped (AES-GCM) under a key derived from
    ``FLEET_SECRET_KEY``: a copy of the database alone does not reveal it."""

    __tablename__ = "site_keys"

    compound_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("compounds.id", ondelete="CASCADE"), primary_key=True
    )
    wrapped_key: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]


class CompoundRules(Base):
    """Rule thresholds of one compound: a partial ``contract.site.RulesConfig`` over the
    documented defaults."""

    __tablename__ = "compound_rules"

    compound_id: Mapped[int] = mapped_column(
        BigIntPK, sa.ForeignKey("compounds.id", ondelete="CASCADE"), primary_key=True
    )
    rules: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(64))


class DesiredConfigRow(Base):
    """The config a gateway should run. ``version`` grows only when ``hash`` changes;
    ``published_version`` says which version the broker holds retained."""

    __tablename__ = "desired_configs"

    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN),
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    )
    version: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))
    config: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(sa.String(16))  # "site" or "override"
    problems: Mapped[dict[str, Any]]
    issued_at: Mapped[datetime]
    published_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    published_at: Mapped[datetime | None]


class GatewayConfigState(Base):
    """What the gateway last reported about its config (``up/config_state``)."""

    __tablename__ = "gateway_config_states"

    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN),
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    )
    status: Mapped[str] = mapped_column(sa.String(16))
    version: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(128))
    applied_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    applied_hash: Mapped[str | None] = mapped_column(sa.String(128))
    reason: Mapped[str | None] = mapped_column(sa.String(2000))
    last_rejected_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_rejection_reason: Mapped[str | None] = mapped_column(sa.String(2000))
    last_rejected_at: Mapped[datetime | None]
    reported_at: Mapped[datetime]
    source_ts: Mapped[datetime]
    message_id: Mapped[str] = mapped_column(sa.String(ID_LEN))


class GatewayReplacement(Base):
    """A broken gateway replaced by a new one: its credentials revoked, devices and history
    moved (``moved`` counts the rows)."""

    __tablename__ = "gateway_replacements"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    old_gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"), index=True
    )
    new_gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(sa.String(64))
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    moved: Mapped[dict[str, Any]]


class GatewaySession(Base):
    """Sequence tracking for one agent session: ``max_seq`` and how many distinct messages of
    the session arrived (a birth also accounts for the last will registered just before it).
    ``max_seq - received`` messages are missing, for now: a late backlog message fills its gap.
    """

    __tablename__ = "gateway_sessions"

    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN),
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    )
    session: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    max_seq: Mapped[int] = mapped_column(sa.BigInteger)
    received: Mapped[int] = mapped_column(sa.BigInteger)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]


class UplinkMessage(Base):
    """Every uplink message id ingest has applied: the idempotency key for all kinds, and what
    makes sequence counts exact under redelivery. Pruned after FLEET_DEDUPE_RETENTION_DAYS."""

    __tablename__ = "uplink_messages"

    message_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    session: Mapped[int] = mapped_column(sa.BigInteger)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    received_at: Mapped[datetime] = mapped_column(index=True)


class DeviceHealth(Base):
    """A device behind a gateway as its gateway last described it (birth and heartbeats)."""

    __tablename__ = "device_health"

    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN),
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    )
    device_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    kind: Mapped[str | None] = mapped_column(sa.String(32))
    unit_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    location: Mapped[str | None] = mapped_column(sa.String(64))
    online: Mapped[bool | None]
    fault: Mapped[str | None] = mapped_column(sa.String(200))
    device_last_seen: Mapped[datetime | None]
    reported_at: Mapped[datetime | None]  # ts of the heartbeat that said so
    counters: Mapped[dict[str, Any]]


class GatewayHeartbeat(Base):
    """One heartbeat of a gateway, kept for the gateway page's charts (outbox depth, load,
    memory) and pruned after ``FLEET_HEARTBEAT_RETENTION_DAYS``. Keyed by gateway and the
    heartbeat's own ``ts``, so a redelivered heartbeat is stored once."""

    __tablename__ = "gateway_heartbeats"

    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN),
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    )
    ts: Mapped[datetime] = mapped_column(primary_key=True, index=True)
    session: Mapped[int] = mapped_column(sa.BigInteger)
    outbox_depth: Mapped[int] = mapped_column(sa.BigInteger)
    outbox_oldest_age_s: Mapped[float | None]
    load_1m: Mapped[float | None]
    mem_available_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    mem_rss_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    disk_free_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    cpu_temp_c: Mapped[float | None]
    devices_total: Mapped[int]
    devices_online: Mapped[int]
    devices_faulty: Mapped[int]
    config_version: Mapped[int | None] = mapped_column(sa.BigInteger)


class HealthNotification(Base):
    """A health event for the property company (物业): a gateway or device went offline or
    reported a fault. ``audience`` is always 'property' (a check constraint): health events are
    never sent to the street office. ``key`` makes recording one idempotent."""

    __tablename__ = "health_notifications"
    __table_args__ = (sa.CheckConstraint("audience = 'property'", name="audience_property"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    audience: Mapped[str] = mapped_column(sa.String(16))
    gateway_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"), index=True
    )
    device_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    detail: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(index=True)


class IngestWorker(Base):
    """One running ingest worker's counters, written every few seconds so that any API process
    can render ``GET /metrics`` for all of them."""

    __tablename__ = "ingest_workers"

    worker_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    stats: Mapped[dict[str, Any]]
