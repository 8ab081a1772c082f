"""The audit log: every change, with who, when and what, readable within one's own compounds."""

from __future__ import annotations

from datetime import datetime, timedelta

from fleet.db import utcnow
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import fleet_client, make_settings
from tests.fleet.sites_helpers import seeded


async def test_every_change_is_audited_and_scoped(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        admin, installer = seed.auth("admin"), seed.auth("installer", "a")
        started = utcnow() - timedelta(seconds=5)
        r = await client.patch(
            f"/api/flats/{seed.a.flat}", headers=installer, json={"rooms": 4, "floor": 2}
        )
        assert r.status_code == 200
        r = await client.post(
            "/api/cards",
            headers=seed.auth("property", "a"),
            json={"flat_id": seed.a.flat, "card": "cd" * 16},
        )
        card = r.json()["id"]
        await client.delete(f"/api/cards/{card}", headers=seed.auth("property", "a"))
        r = await client.post(
            "/api/users",
            headers=admin,
            json={"username": "new-officer", "password": "p4ssw0rd-long", "role": "officer"},
        )
        user_id = r.json()["id"]
        await client.patch(
            f"/api/users/{user_id}", headers=admin, json={"password": "an0ther-long-pw"}
        )
        key = (
            await client.post(f"/api/users/{user_id}/api-keys", headers=admin, json={"name": "k"})
        ).json()

        entries = (await client.get("/api/audit", headers=admin)).json()["items"]
        by = {(e["entity"], e["action"]): e for e in entries}
        flat = by[("flat", "update")]
        assert flat["actor"] == "installer_a" and flat["via"] == "token"
        assert flat["entity_id"] == str(seed.a.flat) and flat["compound_id"] == seed.a.compound
        # Only what changed (rooms), not the unchanged floor.
        assert flat["summary"] == {"before": {"rooms": 3}, "after": {"rooms": 4}}
        assert datetime.fromisoformat(flat["at"]) >= started
        created = by[("card_registration", "create")]["summary"]["after"]
        assert created["card"] == "cdcdcdcd…"  # pseudonyms are shortened in the log
        assert by[("card_registration", "delete")]["actor"] == "property_a"
        password_change = by[("user", "update")]["summary"]
        assert password_change["password"] == "changed"
        text = str(entries)
        for secret in ("p4ssw0rd-long", "an0ther-long-pw", key["key"], "argon2"):
            assert secret not in text
        assert by[("api_key", "create")]["summary"]["after"]["prefix"] == key["prefix"]

        # Others read the entries of their own compounds, never users' or other compounds'.
        mine = (await client.get("/api/audit", headers=seed.auth("officer", "a"))).json()["items"]
        assert mine and {e["compound_id"] for e in mine} == {seed.a.compound}
        theirs = (await client.get("/api/audit", headers=seed.auth("officer", "b"))).json()["items"]
        assert all(e["compound_id"] == seed.b.compound for e in theirs)
        assert not any(e["entity_id"] == str(seed.a.flat) for e in theirs)
        r = await client.get(
            "/api/audit", headers=seed.auth("officer", "b"), params={"compound_id": seed.a.compound}
        )
        assert r.json()["items"] == []

        # A change that fails leaves no entry behind.
        before = (await client.get("/api/audit", headers=admin)).json()["total"]
        r = await client.post(
            "/api/buildings",
            headers=installer,
            json={"compound_id": seed.a.compound, "name": "1号楼"},
        )
        assert r.status_code == 409
        assert (await client.get("/api/audit", headers=admin)).json()["total"] == before
