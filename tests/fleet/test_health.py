"""Gateway and device health through the real broker, database and API: the grace period after
the fleet manager restarts, the inactivity timeout, devices of an offline gateway shown as
unknown, device faults of a live gateway shown per device, and health notifications recorded
for the property company only.

In CI the broker is shared, so assertions look at this test's gateways only.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from contract.messages import DeviceInfo, DeviceStatus, Heartbeat
from fleet.db import make_engine, utcnow
from tests.conftest import BrokerEndpoint
from tests.fleet.health_helpers import login_as, place_gateway, seed_site
from tests.fleet.helpers import (
    T0,
    birth,
    death,
    envelope,
    eventually,
    fleet_client,
    gateway_id,
    heartbeat_rows,
    login,
    make_settings,
    publish,
    wire,
)


def live_heartbeat(gw: str, seq: int, devices: dict[str, DeviceStatus] | None = None) -> Heartbeat:
    return Heartbeat(
        **{**envelope(gw, seq=seq), "ts": utcnow()},
        uptime_s=float(seq),
        agent_version="0.1.0-test",
        devices=devices or {},
    )


async def gateway(client: httpx.AsyncClient, headers: dict[str, str], gw: str) -> dict[str, Any]:
    r = await client.get(f"/api/gateways/{gw}", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def notifications(
    client: httpx.AsyncClient, headers: dict[str, str], gw: str
) -> list[dict[str, Any]]:
    r = await client.get("/api/health/notifications?limit=500", headers=headers)
    assert r.status_code == 200, r.text
    return [n for n in r.json()["items"] if n["gateway_id"] == gw]


async def test_after_a_restart_silence_counts_only_after_the_grace_period(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    alive, dead = gateway_id(), gateway_id()
    settings = make_settings(
        mqtt_broker, database_url, gateway_offline_after_s=2.0, health_grace_s=6.0
    )
    async with fleet_client(settings) as client:
        headers = await login(client)
        await publish(mqtt_broker, wire(birth(alive)), wire(birth(dead)))

        async def both_online() -> bool:
            for g in (alive, dead):
                r = await client.get(f"/api/gateways/{g}", headers=headers)
                if r.status_code != 200 or not r.json()["online"]:
                    return False
            return True

        await eventually(both_online, "both births")
    # The fleet manager was down for an hour; both gateways' last messages are that old.
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE gateways SET last_seen = :t WHERE gateway_id IN (:a, :b)"),
                {"t": utcnow() - timedelta(hours=1), "a": alive, "b": dead},
            )
    finally:
        engine.dispose()

    async with fleet_client(settings) as client:
        headers = await login(client)
        started = time.monotonic()
        seen_offline: set[str] = set()
        seq = 10
        # The live gateway's next heartbeat comes 3 s after the restart, later than the
        # offline timeout: without the grace period it would be marked offline first. (Its
        # heartbeats then come well within the 2 s timeout, even on a busy machine.)
        await asyncio.sleep(3.0)
        while time.monotonic() - started < 12.0:
            seq += 1
            await publish(mqtt_broker, wire(live_heartbeat(alive, seq)))
            for g in (alive, dead):
                if not (await gateway(client, headers, g))["online"]:
                    seen_offline.add(g)
            if time.monotonic() - started < 5.0:
                assert seen_offline == set(), "nothing may time out during the grace period"
            await asyncio.sleep(0.3)
        assert seen_offline == {dead}
        g = await gateway(client, headers, dead)
        assert (g["online"], g["offline_reason"], g["death_reason"]) == (False, "timeout", None)
        notes = await notifications(client, headers, dead)
        assert [(n["kind"], n["detail"], n["audience"]) for n in notes] == [
            ("gateway_offline", "timeout", "property")
        ]
        assert await notifications(client, headers, alive) == []


async def test_devices_of_an_offline_gateway_are_unknown_and_notifications_go_to_property(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    site = seed_site(database_url)
    gw = gateway_id()
    place_gateway(database_url, gw, site.entrance_a)
    b = birth(gw).model_copy(
        update={
            "devices": [
                DeviceInfo(device_id="m-201", kind="meter", driver="modbus", unit_id="1-201"),
                DeviceInfo(device_id="ble-1", kind="charging_sensor", driver="ble", location="bike_shed"),
            ]
        }
    )  # fmt: skip
    beat = live_heartbeat(
        gw,
        2,
        {
            "m-201": DeviceStatus(online=True),
            "ble-1": DeviceStatus(online=False, fault="no adverts for 600 s"),
        },
    )
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        admin = await login(client)
        prop = await login_as(client, "property_a")
        await publish(mqtt_broker, wire(b), wire(beat))

        async def devices() -> list[dict[str, Any]] | None:
            r = await client.get(f"/api/gateways/{gw}/devices", headers=prop)
            assert r.status_code == 200, r.text
            items = r.json()
            return items if len(items) == 2 and items[0]["reported_at"] else None

        items = await eventually(devices, "the heartbeat's device states")
        assert [(d["device_id"], d["kind"], d["state"]) for d in items] == [
            ("ble-1", "charging_sensor", "offline"),
            ("m-201", "meter", "ok"),
        ]
        notes = await notifications(client, prop, gw)
        assert [(n["kind"], n["device_id"], n["audience"]) for n in notes] == [
            ("device_offline", "ble-1", "property")
        ]
        assert "ble-1" in notes[0]["text"] and "离线" in notes[0]["text"]

        # The gateway dies: one notification for it, its devices become unknown, and no
        # device is raised as a fault on its own.
        await publish(mqtt_broker, wire(death(gw, seq=3, reason="connection_lost")))

        async def offline() -> dict[str, Any] | None:
            g = await gateway(client, prop, gw)
            return g if not g["online"] else None

        g = await eventually(offline, "the last will")
        assert (g["offline_reason"], g["death_reason"], g["compound_id"]) == (
            "death", "connection_lost", site.compound_a,
        )  # fmt: skip
        r = await client.get(f"/api/gateways/{gw}/devices", headers=prop)
        assert [d["state"] for d in r.json()] == ["unknown", "unknown"]
        notes = await notifications(client, prop, gw)
        assert sorted((n["kind"], n["device_id"]) for n in notes) == [
            ("device_offline", "ble-1"),
            ("gateway_offline", None),
        ]

        # Who may see what.
        officer = await login_as(client, "officer_a")
        other = await login_as(client, "property_b")
        installer = await login_as(client, "installer_a")
        assert (await client.get("/api/health/notifications", headers=officer)).status_code == 403
        assert (await client.get("/api/gateways", headers=officer)).status_code == 403
        assert (await client.get(f"/api/gateways/{gw}", headers=other)).status_code == 403
        assert (await client.get(f"/api/gateways/{gw}/devices", headers=other)).status_code == 403
        r = await client.get(f"/api/gateways?compound_id={site.compound_a}", headers=other)
        assert r.status_code == 403
        r = await client.get("/api/gateways", headers=other)
        assert [i["gateway_id"] for i in r.json()["items"]] == []
        assert await notifications(client, other, gw) == []
        r = await client.get(
            f"/api/gateways?compound_id={site.compound_a}&online=false", headers=installer
        )
        assert [i["gateway_id"] for i in r.json()["items"]] == [gw]
        r = await client.get(
            f"/api/gateways?compound_id={site.compound_a}&online=true", headers=installer
        )
        assert r.json()["items"] == []
        assert (await client.get("/api/health/notifications")).status_code == 401
        r = await client.get("/api/health/notifications?lang=en", headers=admin)
        assert any(n["text"] == f"Gateway {gw} is offline" for n in r.json()["items"])

    # The database itself refuses a health notification for anyone but the property company.
    engine = make_engine(database_url)
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO health_notifications (key, kind, audience, gateway_id, "
                    "created_at) VALUES ('x', 'device_offline', 'street_office', :gw, :t)"
                ),
                {"gw": gw, "t": T0},
            )
    finally:
        engine.dispose()


async def test_a_fault_reported_by_a_live_gateway_is_shown_on_that_device_only(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        ok = {"m-1": DeviceStatus(online=True), "m-2": DeviceStatus(online=True)}
        faulty = {
            "m-1": DeviceStatus(online=True),
            "m-2": DeviceStatus(online=True, fault="CRC errors 12/min"),
        }
        await publish(
            mqtt_broker,
            wire(birth(gw)),
            wire(live_heartbeat(gw, 3, ok)),
            wire(live_heartbeat(gw, 4, faulty)),
        )

        async def states() -> dict[str, str] | None:
            r = await client.get(f"/api/gateways/{gw}/devices", headers=headers)
            if r.status_code == 404:
                return None
            got = {d["device_id"]: d["state"] for d in r.json()}
            return got if got.get("m-2") == "fault" else None

        assert await eventually(states, "the fault") == {"m-1": "ok", "m-2": "fault"}
        notes = await notifications(client, headers, gw)
        assert [(n["kind"], n["device_id"], n["detail"]) for n in notes] == [
            ("device_fault", "m-2", "CRC errors 12/min")
        ]
        # An older heartbeat arriving late (another worker, a redelivery) changes nothing.
        late = live_heartbeat(gw, 2, ok).model_copy(update={"ts": T0})
        await publish(mqtt_broker, wire(late), wire(live_heartbeat(gw, 5, faulty)))

        async def seq5() -> bool:
            return (await gateway(client, headers, gw))["last_seq"] == 5

        await eventually(seq5, "the last heartbeat")
        r = await client.get(f"/api/gateways/{gw}/devices", headers=headers)
        assert {d["device_id"]: d["state"] for d in r.json()} == {"m-1": "ok", "m-2": "fault"}
        assert len(await notifications(client, headers, gw)) == 1


async def test_a_partial_heartbeat_updates_the_devices_it_lists_and_counts_them_all(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    # A gateway with too many devices for one message sends them in turn (docs/protocol.md).
    gw = gateway_id()
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        everyone = {f"m-{i}": DeviceStatus(online=True) for i in range(1, 5)}
        first = {"m-1": DeviceStatus(online=True), "m-2": DeviceStatus(online=True)}
        second = {
            "m-3": DeviceStatus(online=True),
            "m-4": DeviceStatus(online=False, fault="timeout"),
        }
        totals = {"devices_total": 40, "devices_online": 39, "devices_faulty": 1}
        beats = [
            live_heartbeat(gw, 3, everyone),
            live_heartbeat(gw, 4, first).model_copy(update={**totals, "devices_partial": True}),
            live_heartbeat(gw, 5, second).model_copy(update={**totals, "devices_partial": True}),
        ]
        await publish(mqtt_broker, wire(birth(gw)), *(wire(b) for b in beats))

        async def states() -> dict[str, str] | None:
            r = await client.get(f"/api/gateways/{gw}/devices", headers=headers)
            if r.status_code == 404:
                return None
            got = {d["device_id"]: d["state"] for d in r.json()}
            return got if got.get("m-4") == "offline" else None

        # m-1 and m-2 keep what the last heartbeat that listed them said
        assert await eventually(states, "the partial heartbeats") == {
            "m-1": "ok",
            "m-2": "ok",
            "m-3": "ok",
            "m-4": "offline",
        }
    rows = heartbeat_rows(database_url, gw)
    counts = [(r.devices_total, r.devices_online, r.devices_faulty) for r in rows]
    assert counts == [(4, 4, 0), (40, 39, 1), (40, 39, 1)]
