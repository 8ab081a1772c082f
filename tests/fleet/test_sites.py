"""The site register through the API: the hierarchy's rules, and alerts following the mapping."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from fleet.models import Gateway
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    alert,
    birth,
    eventually,
    fleet_client,
    gateway_id,
    make_settings,
    publish,
    wire,
)
from tests.fleet.sites_helpers import engine_sessions, seeded


async def test_register_a_compound_from_district_to_device(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        admin, installer = seed.auth("admin"), seed.auth("installer", "a")
        r = await client.post(
            "/api/buildings",
            headers=installer,
            json={"compound_id": seed.a.compound, "name": "2号楼", "floors": 18},
        )
        assert r.status_code == 201
        building = r.json()["id"]
        r = await client.post(
            "/api/buildings",
            headers=installer,
            json={"compound_id": seed.a.compound, "name": "2号楼"},
        )
        assert r.status_code == 409  # one name per compound
        r = await client.post(
            "/api/entrances", headers=installer, json={"building_id": building, "name": "1单元"}
        )
        entrance = r.json()["id"]
        r = await client.post(
            "/api/flats",
            headers=installer,
            json={"building_id": building, "entrance_id": seed.a.entrance, "unit_id": "2-101"},
        )
        assert r.status_code == 422 and "another building" in r.text
        r = await client.post(
            "/api/flats",
            headers=installer,
            json={
                "building_id": building,
                "entrance_id": entrance,
                "unit_id": "2-101",
                "floor": 1,
                "area_m2": 89.5,
                "rooms": 3,
                "registered_occupants": 2,
                "rated_current_a": 40,
            },
        )
        assert r.status_code == 201, r.text
        flat = r.json()
        assert flat["area_m2"] == 89.5 and flat["rated_current_a"] == 40.0
        for bad in (
            {"area_m2": -1},
            {"rooms": 0},
            {"unit_id": "a\x00b"},
            {"unit_id": "x" * 65},
            {"area_m2": "NaN"},
        ):
            r = await client.patch(f"/api/flats/{flat['id']}", headers=installer, json=bad)
            assert r.status_code == 422, bad
        # Devices: a flat of another compound, or another compound's gateway, cannot be used.
        r = await client.post(
            "/api/devices",
            headers=installer,
            json={
                "compound_id": seed.a.compound,
                "kind": "meter",
                "device_id": "m-2-101",
                "flat_id": seed.b.flat,
            },
        )
        assert r.status_code == 422 and "another compound" in r.text
        r = await client.post(
            "/api/devices",
            headers=installer,
            json={
                "compound_id": seed.a.compound,
                "kind": "meter",
                "device_id": "m-2-101",
                "gateway_id": seed.b.gateway,
            },
        )
        assert r.status_code == 422 and "not mapped" in r.text
        r = await client.post(
            "/api/devices",
            headers=installer,
            json={
                "compound_id": seed.a.compound,
                "kind": "meter",
                "device_id": "m-2-101",
                "gateway_id": seed.a.gateway,
                "flat_id": flat["id"],
                "params": {"slave": 3, "protocol": "modbus", "baud": 9600},
            },
        )
        assert r.status_code == 201, r.text
        r = await client.get(
            "/api/devices", headers=installer, params={"gateway_id": seed.a.gateway}
        )
        assert {d["device_id"] for d in r.json()["items"]} == {"m-201", "m-2-101"}
        # Property companies edit flats but not devices; officers neither.
        r = await client.patch(
            f"/api/flats/{flat['id']}",
            headers=seed.auth("property", "a"),
            json={"registered_occupants": 4},
        )
        assert r.json()["registered_occupants"] == 4
        r = await client.patch(
            f"/api/devices/{seed.a.device}", headers=seed.auth("property", "a"), json={"params": {}}
        )
        assert r.status_code == 403
        # Deleting a street office that still has compounds is refused, not cascaded.
        r = await client.delete(f"/api/street-offices/{seed.a.street_office}", headers=admin)
        assert r.status_code == 409
        assert (
            await client.get(f"/api/compounds/{seed.a.compound}", headers=admin)
        ).status_code == 200


async def test_alerts_follow_the_gateway_mapping(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        gw, alert_id = gateway_id(), uuid.uuid4().hex
        await publish(mqtt_broker, wire(birth(gw)), wire(alert(gw, alert_id)))
        admin, officer = seed.auth("admin"), seed.auth("officer", "a")

        async def stored() -> bool:
            return (await client.get(f"/api/alerts/{alert_id}", headers=admin)).status_code == 200

        await eventually(stored, "the alert of an unmapped gateway")
        # Not mapped to any entrance: admins only.
        assert (await client.get(f"/api/alerts/{alert_id}", headers=officer)).status_code == 403
        r = await client.get("/api/alerts", headers=officer)
        assert alert_id not in {a["alert_id"] for a in r.json()["items"]}
        # Mapped into compound A: compound A's officer sees it, compound B's does not.
        with engine_sessions(database_url) as sessions, sessions() as session:
            session.execute(
                sa.update(Gateway)
                .where(Gateway.gateway_id == gw)
                .values(entrance_id=seed.a.entrance)
            )
            session.commit()
        assert (await client.get(f"/api/alerts/{alert_id}", headers=officer)).status_code == 200
        r = await client.get("/api/alerts", headers=officer)
        assert alert_id in {a["alert_id"] for a in r.json()["items"]}
        assert (
            await client.get(f"/api/alerts/{alert_id}", headers=seed.auth("officer", "b"))
        ).status_code == 403
