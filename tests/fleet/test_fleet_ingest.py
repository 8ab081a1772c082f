"""MQTT ingest against a real broker and database: what the API shows after gateways publish.

In CI the broker is a shared Mosquitto, so the manager under test may also hear other tests'
gateways: assertions look at this test's gateway, or at counter deltas that only this test's
messages can cause. Messages one client publishes reach ingest in order, so once the last one
has taken effect, all earlier ones have been processed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from contract.topics import Up, up
from fleet.db import make_engine
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    alert,
    birth,
    death,
    eventually,
    fleet_client,
    gateway_id,
    heartbeat,
    login,
    make_settings,
    publish,
    swipe,
    telemetry,
    wire,
)

REPO = Path(__file__).resolve().parents[2]


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/health")
    return dict(r.json()["ingest"])


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


async def find_gateway(
    client: httpx.AsyncClient, headers: dict[str, str], gw: str
) -> dict[str, Any] | None:
    r = await client.get("/api/gateways", headers=headers)
    assert r.status_code == 200, r.text
    return next((g for g in r.json()["items"] if g["gateway_id"] == gw), None)


async def test_malformed_payloads_are_counted_by_reason_and_ingest_goes_on(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    alert_id = uuid.uuid4().hex
    valid = json.loads(wire(alert(gw, alert_id))[1])
    topic = up(gw, Up.ALERT)
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        before = await stats(client)
        await publish(
            mqtt_broker,
            (topic, b"{not json"),
            (topic, json.dumps({**valid, "v": 99}).encode()),
            (topic, json.dumps({k: v for k, v in valid.items() if k != "severity"}).encode()),
            (topic, os.urandom(1024 * 1024)),
            (topic, json.dumps({**valid, "gw": "someone-else"}).encode()),
            (f"edge/v1/{gw}/up/firmware", json.dumps(valid).encode()),
            wire(alert(gw, alert_id)),
        )

        async def stored() -> dict[str, Any] | None:
            r = await client.get(f"/api/alerts/{alert_id}", headers=headers)
            return dict(r.json()) if r.status_code == 200 else None

        stored_alert = await eventually(stored, "the valid alert after the garbage")
        assert stored_alert["gateway_id"] == gw
        assert stored_alert["kind"] == "ebike_charging"
        after = await stats(client)
        assert delta(before["rejected"], after["rejected"]) == {
            "bad_topic": 1,
            "invalid": 1,
            "not_json": 1,
            "too_large": 1,
            "topic_mismatch": 1,
            "unknown_version": 1,
        }
        assert delta(before["accepted"], after["accepted"])["alert"] >= 1
        assert after["failed"] == {}
        # The same counters are behind login at /api/ingest/stats.
        assert (await client.get("/api/ingest/stats")).status_code == 401
        r = await client.get("/api/ingest/stats", headers=headers)
        assert r.json()["rejected_total"] - before["rejected_total"] == 6


GATEWAY_SCRIPT = """
import asyncio, sys
from datetime import UTC, datetime
import aiomqtt
from contract.messages import Birth, Death, encode, new_message_id
from contract.topics import Up, up

async def main(host: str, port: int, gw: str) -> None:
    now = datetime.now(UTC)
    env = {"gw": gw, "session": 7, "ts": now}
    will = Death(id=new_message_id(), seq=0, reason="connection_lost", **env)
    birth = Birth(id=new_message_id(), seq=1, agent_version="9.9", started_at=now,
                  site_id="s1", **env)
    async with aiomqtt.Client(
        host, port, keepalive=5, will=aiomqtt.Will(up(gw, Up.DEATH), encode(will), qos=1)
    ) as client:
        await client.publish(up(gw, Up.BIRTH), encode(birth), qos=1)
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


async def test_killed_gateway_goes_offline_through_its_last_will(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GATEWAY_SCRIPT, mqtt_broker.host, str(mqtt_broker.port), gw,
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"ready"

            async def online() -> dict[str, Any] | None:
                g = await find_gateway(client, headers, gw)
                return g if g is not None and g["online"] else None

            g = await eventually(online, "the gateway's birth")
            assert (g["session"], g["agent_version"], g["site_id"]) == (7, "9.9", "s1")
            assert g["death_reason"] is None
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

        async def offline() -> dict[str, Any] | None:
            g = await find_gateway(client, headers, gw)
            return g if g is not None and not g["online"] else None

        g = await eventually(offline, "the gateway to show offline after SIGKILL")
        assert g["death_reason"] == "connection_lost"
        assert g["last_death_at"] is not None


async def test_death_of_an_older_session_does_not_take_a_newer_one_offline(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        # Session 2 starts; session 1's last will arrives late (the broker noticed its dead
        # connection only after the agent had restarted).
        await publish(
            mqtt_broker,
            wire(birth(gw, session=2)),
            wire(death(gw, session=1, reason="connection_lost")),
            wire(heartbeat(gw, session=2, seq=5)),
        )

        async def heartbeat_seen() -> dict[str, Any] | None:
            g = await find_gateway(client, headers, gw)
            return g if g is not None and g["last_seq"] == 5 else None

        g = await eventually(heartbeat_seen, "the heartbeat after the stale death")
        assert (g["online"], g["session"], g["death_reason"]) == (True, 2, None)

        # Its own session's clean stop does take it offline.
        await publish(mqtt_broker, wire(death(gw, session=2, seq=6, reason="clean_stop")))

        async def offline() -> dict[str, Any] | None:
            g = await find_gateway(client, headers, gw)
            return g if g is not None and not g["online"] else None

        g = await eventually(offline, "the clean stop")
        assert g["death_reason"] == "clean_stop"


async def test_silent_gateway_counts_offline_without_a_death(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    settings = make_settings(mqtt_broker, database_url, gateway_offline_after_s=2.0)
    async with fleet_client(settings) as client:
        headers = await login(client)
        await publish(mqtt_broker, wire(birth(gw)))

        async def online() -> dict[str, Any] | None:
            g = await find_gateway(client, headers, gw)
            return g if g is not None and g["online"] else None

        await eventually(online, "the birth")

        async def offline() -> dict[str, Any] | None:
            g = await find_gateway(client, headers, gw)
            return g if g is not None and not g["online"] else None

        g = await eventually(offline, "silence to count as offline", timeout=10)
        assert g["death_reason"] is None


async def test_resent_readings_and_swipes_are_stored_once(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    readings = telemetry(gw, "m-201", count=3)
    card = swipe(gw)
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        # The edge outbox re-sends after a lost PUBACK: same ids, same samples.
        await publish(
            mqtt_broker,
            wire(readings),
            wire(card),
            wire(readings),
            wire(card),
            wire(heartbeat(gw, seq=99)),
        )

        async def all_processed() -> dict[str, Any] | None:
            g = await find_gateway(client, headers, gw)
            return g if g is not None and g["last_seq"] == 99 else None

        await eventually(all_processed, "the messages to be ingested")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            n_readings = conn.execute(
                sa.text("SELECT count(*) FROM meter_readings WHERE gateway_id = :gw"), {"gw": gw}
            ).scalar_one()
            cards = conn.execute(
                sa.text("SELECT card FROM card_swipes WHERE gateway_id = :gw"), {"gw": gw}
            ).all()
    finally:
        engine.dispose()
    assert n_readings == 3
    assert [row.card for row in cards] == [card.card]


async def test_database_error_is_counted_and_ingest_continues(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    alert_id = uuid.uuid4().hex
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        # Break one table underneath the running manager.
        engine = make_engine(database_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE card_swipes"))
        finally:
            engine.dispose()
        await publish(mqtt_broker, wire(swipe(gw)), wire(alert(gw, alert_id)))

        async def stored() -> bool:
            r = await client.get(f"/api/alerts/{alert_id}", headers=headers)
            return r.status_code == 200

        await eventually(stored, "the alert after the failed swipe")
        counters = await stats(client)
        assert counters["failed"]["database"] >= 1
        assert "internal" not in counters["failed"]
