"""A street office's receiver is down (connection refused), then answers 500s, then accepts:
after recovery every notification arrives exactly once per idempotency key, in order per flat,
signed. Alerts come in over MQTT through the real ingest; the channel is created through the
API by the office's officer."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from contract.alerts import AlertKind, Change, Severity
from fleet.db import make_engine, make_sessionmaker
from fleet.models import Entrance, Flat, ForwardDelivery, Gateway, Notification
from tests.conftest import BrokerEndpoint, free_port
from tests.fleet.helpers import T0, alert, eventually, fleet_client, make_settings, publish, wire
from tests.fleet.test_lifecycle import as_user, seed_site
from tests.support.webhook import webhook_receiver

SECRET = "street-office-a-hook-secret"
FLATS = ["1-201", "1-202", "2-301", "2-302", "3-401"]


def _flats_seeded(database_url: str, site_gateway: str) -> None:
    """Register the extra flats in the gateway's building (seed_site made 1-201)."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s, s.begin():
            entrance = s.scalar(
                sa.select(Entrance)
                .join(Gateway, Gateway.entrance_id == Entrance.id)
                .where(Gateway.gateway_id == site_gateway)
            )
            assert entrance is not None
            for unit in FLATS[1:]:
                s.add(Flat(building_id=entrance.building_id, entrance_id=entrance.id, unit_id=unit))
    finally:
        engine.dispose()


def _deliveries(database_url: str) -> list[tuple[str, str, int, str | None, int]]:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            rows = s.execute(
                sa.select(
                    Notification.key,
                    ForwardDelivery.status,
                    ForwardDelivery.attempts,
                    ForwardDelivery.last_error,
                    Notification.id,
                )
                .join(Notification, Notification.id == ForwardDelivery.notification_id)
                .order_by(Notification.id)
            ).all()
            return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        engine.dispose()


async def test_receiver_down_then_failing_then_back_gets_everything_once_in_order(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        _flats_seeded(database_url, site.gateway)
        officer = await as_user(client, "officer_a")
        r = await client.post(
            "/api/channels",
            headers=officer,
            json={
                "name": "平安办接收",
                "kind": "webhook",
                "street_office_id": site.street_office_id,
                "url": url,
                "secret": SECRET,
            },
        )
        assert r.status_code == 201, r.text
        assert "secret" not in r.json() and r.json()["has_secret"] is True
        # Another office's officer may not add channels for office A.
        other = await as_user(client, "officer_b")
        r = await client.post(
            "/api/channels",
            headers=other,
            json={
                "name": "x",
                "kind": "webhook",
                "street_office_id": site.street_office_id,
                "url": url,
            },
        )
        assert r.status_code == 403

        expected_alerts: dict[str, list[str]] = {}
        messages = []
        for i, unit in enumerate(FLATS):
            charging, overload = uuid.uuid4().hex, uuid.uuid4().hex
            at = T0 + timedelta(minutes=i)
            messages += [
                alert(site.gateway, charging, unit_id=unit, ts=at),
                alert(
                    site.gateway,
                    charging,
                    unit_id=unit,
                    change=Change.UPDATED,
                    severity=Severity.HIGH,
                    ts=at + timedelta(minutes=1),
                ),
                alert(
                    site.gateway,
                    overload,
                    unit_id=unit,
                    kind=AlertKind.OVERLOAD,
                    ts=at + timedelta(minutes=2),
                ),
                alert(
                    site.gateway,
                    charging,
                    unit_id=unit,
                    change=Change.CLEARED,
                    severity=Severity.HIGH,
                    ts=at + timedelta(hours=2),
                    cleared_at=at + timedelta(hours=2),
                ),
            ]
            expected_alerts[charging] = ["raised", "severity", "cleared"]
            expected_alerts[overload] = ["raised"]
        await publish(mqtt_broker, *(wire(m) for m in messages))

        async def failing() -> bool:
            rows = _deliveries(database_url)
            # Only the head of each flat's queue is tried; the rest wait behind it.
            return len(rows) == 20 and sum(1 for _, _, a, _, _ in rows if a >= 3) == len(FLATS)

        await eventually(failing, "deliveries failing against a receiver that is down", 30)
        rows = _deliveries(database_url)
        assert all(status == "pending" for _, status, _, _, _ in rows)
        assert any(error and "ConnectError" in error for _, _, _, error, _ in rows)

        with webhook_receiver(port) as hook:
            hook.script = [500] * 8  # back, but failing for a while

            async def all_delivered() -> bool:
                return all(s == "delivered" for _, s, _, _, _ in _deliveries(database_url))

            await eventually(all_delivered, "every delivery after recovery", 60)
            received = list(hook.received)
            assert hook.script == []

        # Exactly once per idempotency key, signed with the channel's secret.
        keys = [r.headers["idempotency-key"] for r in received]
        assert len(keys) == len(set(keys)) == 20
        for r in received:
            mac = hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
            assert r.headers["x-signature"] == f"sha256={mac}"
        # Per alert: raised, severity, cleared. Per flat: in the order they happened.
        by_alert: dict[str, list[str]] = {}
        by_flat: dict[str, list[str]] = {}
        for r in received:
            body: dict[str, Any] = r.json()
            by_alert.setdefault(body["alert_id"], []).append(body["event"])
            by_flat.setdefault(body["unit_id"], []).append(r.headers["idempotency-key"])
        assert by_alert == expected_alerts
        order = {key: nid for key, _, _, _, nid in _deliveries(database_url)}
        for unit, flat_keys in by_flat.items():
            assert flat_keys == sorted(flat_keys, key=order.__getitem__), unit
        # The delivery status is visible on the alert.
        first = next(iter(expected_alerts))
        r = await client.get(f"/api/alerts/{first}/case", headers=officer)
        deliveries = r.json()["deliveries"]
        assert [(d["event"], d["status"]) for d in deliveries] == [
            ("raised", "delivered"),
            ("severity", "delivered"),
            ("cleared", "delivered"),
        ]
        assert deliveries[0]["attempts"] >= 2
        assert all(d["channel"] == "平安办接收" for d in deliveries)


async def test_channels_api_hides_secrets(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        officer = await as_user(client, "officer_a")
        r = await client.post(
            "/api/channels",
            headers=officer,
            json={
                "name": "钉钉群",
                "kind": "dingtalk",
                "street_office_id": site.street_office_id,
                "url": "https://oapi.dingtalk.com/robot/send?access_token=SECRET-TOKEN",
                "secret": "SECabc",
                "quiet_start": "22:00",
                "quiet_end": "07:00",
            },
        )
        assert r.status_code == 201, r.text
        listed = (await client.get("/api/channels", headers=officer)).json()
        text = str(listed)
        assert "SECRET-TOKEN" not in text and "SECabc" not in text
        assert listed[-1]["target"] == "https://oapi.dingtalk.com/robot/send"
        prop = await as_user(client, "property_a")
        assert (await client.get("/api/channels", headers=prop)).status_code == 403
        r = await client.post(
            "/api/channels",
            headers=officer,
            json={"name": "bad", "kind": "webhook", "street_office_id": site.street_office_id},
        )
        assert r.status_code == 422
