"""Revision 0005 on a database with data: alerts become cases, pending webhook deliveries keep
their status and attempts under an ``env`` channel, and the revision downgrades and upgrades."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from fleet.db import alembic_config, make_engine


def test_0005_carries_alerts_and_pending_deliveries_over(database_url: str) -> None:
    engine = make_engine(database_url)
    now = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004")
        with engine.begin() as c:
            c.execute(
                sa.text(
                    "INSERT INTO gateways (gateway_id, online, first_seen) VALUES ('g1', false, :n)"
                ),
                {"n": now},
            )
            for alert_id in ("a1", "a2"):
                c.execute(
                    sa.text(
                        "INSERT INTO alerts (alert_id, kind, category, severity, state, gateway_id,"
                        " raised_at, evidence, first_received_at, updated_at, source_ts,"
                        " last_message_id) VALUES (:a, 'overload', '消防', 'high', 'open', 'g1',"
                        " :n, '{}', :n, :n, :n, 'm1')"
                    ),
                    {"a": alert_id, "n": now},
                )
            c.execute(
                sa.text(
                    "INSERT INTO forward_deliveries (alert_id, url, status, attempts,"
                    " next_attempt_at, last_error, created_at) VALUES"
                    " ('a1', 'http://hook/a', 'pending', 2, :n, 'HTTP 500', :n),"
                    " ('a2', 'http://hook/a', 'delivered', 1, :n, NULL, :n)"
                ),
                {"n": now},
            )
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as c:
            rows = c.execute(
                sa.text(
                    "SELECT n.key, d.status, d.attempts, d.last_error, ch.kind, ch.source,"
                    " ch.street_office_id FROM forward_deliveries d"
                    " JOIN notifications n ON n.id = d.notification_id"
                    " JOIN forward_channels ch ON ch.id = d.channel_id ORDER BY n.key"
                )
            ).all()
            assert [tuple(r) for r in rows] == [
                ("a1", "pending", 2, "HTTP 500", "webhook", "env", None),
                ("a2", "delivered", 1, None, "webhook", "env", None),
            ]
            cases = c.execute(
                sa.text("SELECT alert_id, status, subject_key, notify_seq FROM alerts ORDER BY 1")
            ).all()
            assert [tuple(r) for r in cases] == [
                ("a1", "new", "alert:a1", 1),
                ("a2", "new", "alert:a2", 1),
            ]
            episodes = c.execute(sa.text("SELECT episode_id, alert_id FROM alert_episodes")).all()
            assert sorted(tuple(r) for r in episodes) == [("a1", "a1"), ("a2", "a2")]
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004")
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()
