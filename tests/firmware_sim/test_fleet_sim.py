"""``firmware_sim.fleet`` against the real fleet manager: 50 simulated gateways come online,
then some are killed by dropping their TCP connection (the broker publishes their will) and some
go half-open (they stop sending anything, and only the fleet manager's inactivity timeout can
tell); each is shown offline for the right reason and the others stay online."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from firmware_sim.fleet import SimulatedFleet
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import eventually, fleet_client, login, make_settings

N = 50


async def all_gateways(
    client: httpx.AsyncClient, headers: dict[str, str], prefix: str, *, page: int = 20
) -> dict[str, dict[str, Any]]:
    """Every gateway of this test, read page by page with the keyset cursor (pages in order,
    never overlapping, even while other gateways appear on a shared broker)."""
    seen: dict[str, dict[str, Any]] = {}
    after = ""
    while True:
        r = await client.get(
            "/api/gateways", params={"limit": page, "after": after}, headers=headers
        )
        assert r.status_code == 200, r.text
        body = r.json()
        ids = [g["gateway_id"] for g in body["items"]]
        assert ids == sorted(ids) and all(i > after for i in ids)
        assert len(ids) <= page
        seen.update({g["gateway_id"]: g for g in body["items"]})
        if body["next_after"] is None:
            break
        assert body["next_after"] == ids[-1]
        after = body["next_after"]
    return {k: v for k, v in seen.items() if k.startswith(prefix)}


async def test_killed_and_half_open_gateways_go_offline_and_the_rest_stay_online(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    prefix = f"simt-{uuid.uuid4().hex[:6]}"
    settings = make_settings(
        mqtt_broker, database_url, gateway_offline_after_s=4.0, health_grace_s=1.0
    )
    async with (
        fleet_client(settings) as client,
        SimulatedFleet(
            gateways=N,
            broker_url=mqtt_broker.url,
            interval_s=1.0,
            telemetry_every_s=0,  # heartbeats only: the embedded broker is slow on a busy box
            keepalive_s=120,
            prefix=prefix,
        ) as sim,
    ):
        headers = await login(client)
        await sim.wait_connected(timeout=60)

        async def all_online() -> dict[str, dict[str, Any]] | None:
            gws = await all_gateways(client, headers, prefix)
            return gws if len(gws) == N and all(g["online"] for g in gws.values()) else None

        gws = await eventually(all_online, f"{N} simulated gateways online", timeout=60)
        assert {g["agent_version"] for g in gws.values()} == {"sim-fleet-1"}

        async def devices_ok() -> bool:
            # The birth lists the devices (state unknown); the first heartbeat reports them.
            r = await client.get(f"/api/gateways/{prefix}-00000/devices", headers=headers)
            return {d["device_id"]: d["state"] for d in r.json()} == {"ble-1": "ok", "m-1": "ok"}

        await eventually(devices_ok, "the first heartbeat's device states")

        names = sorted(sim.gateways)
        dropped, silent, healthy = names[:5], names[5:10], names[10:]
        sim.kill(dropped, "drop")
        sim.kill(silent, "silent")

        async def both_kinds_offline() -> dict[str, dict[str, Any]] | None:
            gws = await all_gateways(client, headers, prefix)
            down = {k for k, g in gws.items() if not g["online"]}
            return gws if down >= set(dropped + silent) else None

        gws = await eventually(both_kinds_offline, "the killed gateways offline", timeout=60)
        for name in dropped:
            assert (gws[name]["offline_reason"], gws[name]["death_reason"]) == (
                "death", "connection_lost",
            ), name  # fmt: skip
        for name in silent:
            # The broker has not noticed (keepalive 120 s): silence did.
            assert (gws[name]["offline_reason"], gws[name]["death_reason"]) == (
                "timeout", None,
            ), name  # fmt: skip
        # Everyone else kept heartbeating and never went offline.
        await asyncio.sleep(1.0)
        gws = await all_gateways(client, headers, prefix)
        down = {
            n: (gws[n]["offline_reason"], gws[n]["death_reason"])
            for n in healthy
            if not gws[n]["online"]
        }
        assert down == {}
        r = await client.get(f"/api/gateways/{silent[0]}/devices", headers=headers)
        assert {d["state"] for d in r.json()} == {"unknown"}

        r = await client.get("/api/health/notifications?limit=500", headers=headers)
        offline_notes = sorted(
            n["gateway_id"]
            for n in r.json()["items"]
            if n["gateway_id"].startswith(prefix) and n["kind"] == "gateway_offline"
        )
        assert offline_notes == sorted(dropped + silent)  # one each, none for the others
        r = await client.get("/api/gateways?online=false&limit=1000", headers=headers)
        assert {
            g["gateway_id"] for g in r.json()["items"] if g["gateway_id"].startswith(prefix)
        } == set(dropped + silent)
