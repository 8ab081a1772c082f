"""Alerts from MQTT to the API and on to a real webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from contract.alerts import AlertKind, Change, Severity
from fleet.app import serve
from tests.conftest import BrokerEndpoint, free_port
from tests.fleet.helpers import (
    T0,
    WEBHOOK_SECRET,
    alert,
    eventually,
    fleet_client,
    gateway_id,
    login,
    make_settings,
    publish,
    wire,
)
from tests.support.webhook import Received, webhook_receiver

V1_FIELDS = frozenset(
    {
        "v",
        "alert_id",
        "kind",
        "category",
        "severity",
        "state",
        "title_zh",
        "title_en",
        "unit_id",
        "building",
        "sensor_id",
        "meter_id",
        "reader_id",
        "gateway_id",
        "raised_at",
        "cleared_at",
        "evidence",
        "link",
    }
)


def assert_signed(received: Received, alert_id: str) -> None:
    expected = hmac.new(WEBHOOK_SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.headers["x-signature"] == f"sha256={expected}"
    assert received.headers["idempotency-key"] == alert_id
    assert received.headers["content-type"].startswith("application/json")


async def read_alert(
    client: httpx.AsyncClient, headers: dict[str, str], alert_id: str
) -> dict[str, Any] | None:
    r = await client.get(f"/api/alerts/{alert_id}", headers=headers)
    return dict(r.json()) if r.status_code == 200 else None


async def test_alert_is_stored_once_forwarded_once_and_follows_its_episode(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    alert_id = uuid.uuid4().hex
    raised = alert(gw, alert_id)
    with webhook_receiver() as hook:
        settings = make_settings(mqtt_broker, database_url, webhook_urls=[hook.url])
        async with fleet_client(settings) as client:
            headers = await login(client)
            # The broker (or the edge outbox) delivers the same message twice.
            await publish(mqtt_broker, wire(raised), wire(raised))

            async def forwarded() -> list[Received]:
                return [r for r in hook.received if r.json()["alert_id"] == alert_id]

            received = await eventually(forwarded, "the alert at the webhook")
            assert_signed(received[0], alert_id)
            body = received[0].json()
            # The first webhook version's fields, unchanged (issue 7 added lifecycle fields).
            assert {k: body[k] for k in body if k in V1_FIELDS} == {
                "v": 1,
                "alert_id": alert_id,
                "kind": "ebike_charging",
                "category": "消防",
                "severity": "medium",
                "state": "open",
                "title_zh": "电动自行车违规充电",
                "title_en": "E-bike charging indoors",
                "unit_id": "1-201",
                "building": None,
                "sensor_id": "ble-201",
                "meter_id": None,
                "reader_id": None,
                "gateway_id": gw,
                "raised_at": "2026-03-01T20:00:00+00:00",
                "cleared_at": None,
                "evidence": {"peak_power_w": 182.5, "location": "unit"},
                "link": f"https://fleet.example.test/alerts/{alert_id}",
            }

            # The episode goes on: more evidence and a higher severity, then it clears.
            updated = alert(
                gw,
                alert_id,
                change=Change.UPDATED,
                severity=Severity.HIGH,
                ts=T0 + timedelta(minutes=30),
                evidence={"peak_power_w": 240.0, "duration_s": 1800},
            )
            cleared_at = T0 + timedelta(hours=3)
            cleared = alert(
                gw,
                alert_id,
                change=Change.CLEARED,
                severity=Severity.HIGH,
                ts=cleared_at,
                cleared_at=cleared_at,
                evidence={"peak_power_w": 240.0, "duration_s": 10800},
            )
            # A late re-delivery of the update after the clear must not reopen it.
            await publish(mqtt_broker, wire(updated), wire(cleared), wire(updated))

            async def is_cleared() -> dict[str, Any] | None:
                a = await read_alert(client, headers, alert_id)
                return a if a is not None and a["state"] == "cleared" else None

            await eventually(is_cleared, "the clear")
            # Let the late update (published after the clear) be processed, then look again.
            marker = uuid.uuid4().hex
            await publish(mqtt_broker, wire(alert(gw, marker, kind=AlertKind.OVERLOAD)))
            await eventually(lambda: read_alert(client, headers, marker), "the marker alert")
            final = await read_alert(client, headers, alert_id)
            assert final is not None
            a = final
            assert a["state"] == "cleared"
            assert a["severity"] == "high"
            assert a["cleared_at"] == "2026-03-01T23:00:00Z"
            assert a["evidence"] == {"peak_power_w": 240.0, "duration_s": 10800}
            assert [(d["status"], d["attempts"]) for d in a["deliveries"]] == [("delivered", 1)] * 3

            r = await client.get("/api/alerts", headers=headers, params={"state": "cleared"})
            assert [x["alert_id"] for x in r.json()["items"]] == [alert_id]
            r = await client.get("/api/alerts", headers=headers, params={"kind": "overload"})
            assert [x["alert_id"] for x in r.json()["items"]] == [marker]
            r = await client.get("/api/alerts", headers=headers)
            assert r.json()["total"] == 2
            assert (await client.get("/api/alerts/nope", headers=headers)).status_code == 404
            # The raise once although ingest saw it twice, then the severity rise and the clear
            # (issue 7: updates are forwarded too), each under its own idempotency key.
            events = [(r.json()["event"], r.headers["idempotency-key"]) for r in await forwarded()]
            assert events == [
                ("raised", alert_id),
                ("severity", f"{alert_id}.2"),
                ("cleared", f"{alert_id}.3"),
            ]


async def test_forwarder_retries_after_the_receiver_fails(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    alert_id = uuid.uuid4().hex
    with webhook_receiver() as hook:
        hook.script = [500, 503]
        settings = make_settings(mqtt_broker, database_url, webhook_urls=[hook.url])
        async with fleet_client(settings) as client:
            headers = await login(client)
            await publish(mqtt_broker, wire(alert(gw, alert_id)))

            async def delivered() -> dict[str, Any] | None:
                a = await read_alert(client, headers, alert_id)
                if a is None or not a["deliveries"] or a["deliveries"][0]["status"] != "delivered":
                    return None
                return a

            a = await eventually(delivered, "delivery after two failures")
            delivery = a["deliveries"][0]
            assert delivery["attempts"] == 3
            assert delivery["url"] == hook.url
            assert hook.script == []
            assert len(hook.received) == 1
            assert_signed(hook.received[0], alert_id)


async def test_pending_delivery_survives_a_restart(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    alert_id = uuid.uuid4().hex
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with webhook_receiver() as hook:
        # The receiver is down (answers 500) for longer than the first run lasts.
        hook.script = [500] * 1000
        settings = make_settings(mqtt_broker, database_url, webhook_urls=[hook.url], http_port=port)
        async with httpx.AsyncClient(base_url=base) as client:
            started = asyncio.Event()
            server = asyncio.create_task(serve(settings, started=started))
            await asyncio.wait_for(started.wait(), 30)
            headers = await login(client)
            await eventually(lambda: health_connected(client), "ingest to subscribe")
            await publish(mqtt_broker, wire(alert(gw, alert_id)))

            async def failed_once() -> dict[str, Any] | None:
                a = await read_alert(client, headers, alert_id)
                if a is None or not a["deliveries"] or a["deliveries"][0]["attempts"] < 1:
                    return None
                return a

            a = await eventually(failed_once, "a failed delivery attempt")
            assert a["deliveries"][0]["status"] == "pending"
            assert a["deliveries"][0]["last_error"] == "HTTP 500"
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
            assert hook.received == []
            with pytest.raises(httpx.ConnectError):  # stopped means stopped
                await client.get("/api/health")

        # The receiver recovers; a new process over the same database delivers.
        hook.script = []
        async with httpx.AsyncClient(base_url=base) as client:
            started = asyncio.Event()
            server = asyncio.create_task(serve(settings, started=started))
            try:
                await asyncio.wait_for(started.wait(), 30)

                async def arrived() -> list[Received]:
                    return [r for r in hook.received if r.json()["alert_id"] == alert_id]

                received = await eventually(arrived, "delivery after the restart")
                assert_signed(received[0], alert_id)
                headers = await login(client)
                after = await read_alert(client, headers, alert_id)
                assert after is not None and after["deliveries"][0]["status"] == "delivered"
            finally:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)


async def health_connected(client: httpx.AsyncClient) -> bool:
    r = await client.get("/api/health")
    return bool(r.json()["mqtt_connected"])
