"""Alert lifecycle, forwarding channels, flats risk and sublandlords, reports.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Written out in full (no imports from ``fleet.models``). Existing alerts become cases in state
``new`` with a subject key of their own (``alert:<id>``), so the new partial unique index cannot
reject them; existing webhook deliveries move to one ``env`` channel per URL and one
notification per alert, keeping their status and attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=64)
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_OPEN = sa.text("status <> 'closed'")


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    ref_table, _ = target.split(".")
    return sa.ForeignKeyConstraint(
        [column], [target], name=op.f(f"fk_{table}_{column}_{ref_table}"), ondelete=ondelete
    )


def _index(table: str, *columns: str) -> None:
    op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns), unique=False)


def upgrade() -> None:
    # Read the old outbox first: on SQLite the batch rebuild of ``alerts`` below drops the old
    # table, and with foreign keys on that cascades to the rows referencing it.
    old = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT d.alert_id, d.url, d.status, d.attempts, d.next_attempt_at, d.last_error, "
                "d.delivered_at, d.created_at, a.severity FROM forward_deliveries d "
                "JOIN alerts a ON a.alert_id = d.alert_id ORDER BY d.id"
            ).columns(next_attempt_at=_TS, delivered_at=_TS, created_at=_TS)
        )
        .all()
    )
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="new", nullable=False)
        )
        batch.add_column(
            sa.Column("subject_key", sa.String(length=255), server_default="", nullable=False)
        )
        batch.add_column(sa.Column("flat_id", _PK, nullable=True))
        batch.add_column(sa.Column("compound_id", _PK, nullable=True))
        batch.add_column(
            sa.Column("recurring", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("episodes", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("assignee", sa.String(length=64), nullable=True))
        for column in ("due_at", "deadline_at"):
            batch.add_column(sa.Column(column, _TS, nullable=True))
        batch.add_column(sa.Column("rechecks", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))
        for column in (
            "acknowledged_at",
            "dispatched_at",
            "decided_at",
            "rectifying_at",
            "closed_at",
            "escalated_at",
            "reminded_at",
        ):
            batch.add_column(sa.Column(column, _TS, nullable=True))
        batch.add_column(sa.Column("notify_seq", sa.Integer(), server_default="0", nullable=False))
        batch.create_foreign_key(
            op.f("fk_alerts_flat_id_flats"), "flats", ["flat_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_foreign_key(
            op.f("fk_alerts_compound_id_compounds"),
            "compounds",
            ["compound_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.execute(sa.text("UPDATE alerts SET subject_key = 'alert:' || alert_id"))
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("subject_key", server_default=None)
    _index("alerts", "flat_id")
    _index("alerts", "compound_id")
    _index("alerts", "closed_at")
    _index("alerts", "status")
    op.create_index(
        "uq_alerts_open_subject_kind",
        "alerts",
        ["subject_key", "kind"],
        unique=True,
        postgresql_where=_OPEN,
        sqlite_where=_OPEN,
    )

    op.create_table(
        "alert_episodes",
        sa.Column("episode_id", _ID, nullable=False),
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("gateway_id", _ID, nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("raised_at", _TS, nullable=False),
        sa.Column("cleared_at", _TS, nullable=True),
        sa.Column("source_ts", _TS, nullable=False),
        sa.Column("last_message_id", _ID, nullable=False),
        sa.Column("first_received_at", _TS, nullable=False),
        _fk("alert_episodes", "alert_id", "alerts.alert_id", "CASCADE"),
        sa.PrimaryKeyConstraint("episode_id", name=op.f("pk_alert_episodes")),
    )
    _index("alert_episodes", "alert_id")
    op.execute(
        sa.text(
            "INSERT INTO alert_episodes (episode_id, alert_id, gateway_id, severity, state, "
            "raised_at, cleared_at, source_ts, last_message_id, first_received_at) "
            "SELECT alert_id, alert_id, gateway_id, severity, state, raised_at, cleared_at, "
            "source_ts, last_message_id, first_received_at FROM alerts"
        )
    )

    op.create_table(
        "forward_channels",
        sa.Column("id", _PK, nullable=False),
        sa.Column("street_office_id", _PK, nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("quiet_start", sa.String(length=5), nullable=True),
        sa.Column("quiet_end", sa.String(length=5), nullable=True),
        sa.Column("events", _JSON, nullable=True),
        sa.Column("send_reports", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _fk("forward_channels", "street_office_id", "street_offices.id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forward_channels")),
    )
    _index("forward_channels", "street_office_id")
    op.create_table(
        "notifications",
        sa.Column("id", _PK, nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("alert_id", _ID, nullable=True),
        sa.Column("event", sa.String(length=24), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _fk("notifications", "alert_id", "alerts.alert_id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("key", name=op.f("uq_notifications_key")),
    )
    _index("notifications", "alert_id")
    op.create_table(
        "alert_photos",
        sa.Column("id", _PK, nullable=False),
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("audit_id", sa.BigInteger(), nullable=True),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", _TS, nullable=False),
        _fk("alert_photos", "alert_id", "alerts.alert_id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_photos")),
    )
    _index("alert_photos", "alert_id")
    op.create_table(
        "sublandlords",
        sa.Column("id", _PK, nullable=False),
        sa.Column("street_office_id", _PK, nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("notes", sa.String(length=500), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        _fk("sublandlords", "street_office_id", "street_offices.id", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sublandlords")),
    )
    _index("sublandlords", "street_office_id")
    op.create_table(
        "sublandlord_flats",
        sa.Column("sublandlord_id", _PK, nullable=False),
        sa.Column("flat_id", _PK, nullable=False),
        sa.Column("linked_at", _TS, nullable=False),
        _fk("sublandlord_flats", "sublandlord_id", "sublandlords.id", "CASCADE"),
        _fk("sublandlord_flats", "flat_id", "flats.id", "CASCADE"),
        sa.PrimaryKeyConstraint("sublandlord_id", "flat_id", name=op.f("pk_sublandlord_flats")),
    )
    _index("sublandlord_flats", "flat_id")
    op.create_table(
        "flat_marks",
        sa.Column("flat_id", _PK, nullable=False),
        sa.Column("rented", sa.Boolean(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        _fk("flat_marks", "flat_id", "flats.id", "CASCADE"),
        sa.PrimaryKeyConstraint("flat_id", name=op.f("pk_flat_marks")),
    )

    # The outbox: from (alert, url) rows to (notification, channel) rows (read at the start).
    op.drop_index(
        op.f("ix_forward_deliveries_status_next_attempt_at"), table_name="forward_deliveries"
    )
    op.drop_table("forward_deliveries")
    op.create_table(
        "forward_deliveries",
        sa.Column("id", _PK, nullable=False),
        sa.Column("notification_id", _PK, nullable=False),
        sa.Column("channel_id", _PK, nullable=False),
        sa.Column("alert_id", _ID, nullable=True),
        sa.Column("order_key", sa.String(length=255), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        _fk("forward_deliveries", "notification_id", "notifications.id", "CASCADE"),
        _fk("forward_deliveries", "channel_id", "forward_channels.id", "CASCADE"),
        _fk("forward_deliveries", "alert_id", "alerts.alert_id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forward_deliveries")),
        sa.UniqueConstraint(
            "notification_id",
            "channel_id",
            name=op.f("uq_forward_deliveries_notification_id_channel_id"),
        ),
    )
    _index("forward_deliveries", "status", "next_attempt_at")
    _index("forward_deliveries", "channel_id", "order_key", "status")
    _index("forward_deliveries", "alert_id")
    _move_deliveries(old)


def _move_deliveries(rows: Sequence[sa.Row[tuple[object, ...]]]) -> None:
    if not rows:
        return
    bind = op.get_bind()
    now = datetime.now(UTC)
    meta = sa.MetaData()
    channels = sa.Table("forward_channels", meta, autoload_with=bind)
    notifications = sa.Table("notifications", meta, autoload_with=bind)
    deliveries = sa.Table("forward_deliveries", meta, autoload_with=bind)
    alerts = sa.Table("alerts", meta, autoload_with=bind)
    channel_ids: dict[str, int] = {}
    notification_ids: dict[str, int] = {}
    for row in rows:
        alert_id, url, status, attempts, next_at, error, delivered_at, created_at, severity = tuple(
            row
        )
        assert isinstance(url, str) and isinstance(alert_id, str)
        if url not in channel_ids:
            channel_ids[url] = bind.execute(
                channels.insert()
                .values(
                    name=url[:64],
                    kind="webhook",
                    config={"url": url},
                    send_reports=False,
                    enabled=True,
                    source="env",
                    created_at=now,
                )
                .returning(channels.c.id)
            ).scalar_one()
        if alert_id not in notification_ids:
            notification_ids[alert_id] = bind.execute(
                notifications.insert()
                .values(
                    key=alert_id,
                    alert_id=alert_id,
                    event="raised",
                    severity=severity,
                    payload={"legacy": True},
                    created_at=created_at,
                )
                .returning(notifications.c.id)
            ).scalar_one()
            bind.execute(alerts.update().where(alerts.c.alert_id == alert_id).values(notify_seq=1))
        bind.execute(
            deliveries.insert().values(
                notification_id=notification_ids[alert_id],
                channel_id=channel_ids[url],
                alert_id=alert_id,
                order_key=f"alert:{alert_id}",
                url=url,
                status=status,
                attempts=attempts,
                next_attempt_at=next_at,
                last_error=error,
                delivered_at=delivered_at,
                created_at=created_at,
            )
        )


def downgrade() -> None:
    op.drop_table("forward_deliveries")
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
        _fk("forward_deliveries", "alert_id", "alerts.alert_id", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forward_deliveries")),
        sa.UniqueConstraint("alert_id", "url", name=op.f("uq_forward_deliveries_alert_id_url")),
    )
    _index("forward_deliveries", "status", "next_attempt_at")
    for table in (
        "flat_marks",
        "sublandlord_flats",
        "sublandlords",
        "alert_photos",
        "notifications",
        "forward_channels",
        "alert_episodes",
    ):
        op.drop_table(table)
    op.drop_index("uq_alerts_open_subject_kind", table_name="alerts")
    for column in ("status", "closed_at", "compound_id", "flat_id"):
        op.drop_index(op.f(f"ix_alerts_{column}"), table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("fk_alerts_compound_id_compounds"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_alerts_flat_id_flats"), type_="foreignkey")
        for column in (
            "notify_seq",
            "reminded_at",
            "escalated_at",
            "closed_at",
            "rectifying_at",
            "decided_at",
            "dispatched_at",
            "acknowledged_at",
            "outcome",
            "rechecks",
            "deadline_at",
            "due_at",
            "assignee",
            "episodes",
            "recurring",
            "compound_id",
            "flat_id",
            "subject_key",
            "status",
        ):
            batch.drop_column(column)
