"""The pages show a user only their own compounds' gateways and alerts, as the API does.

HTTP level, with the real app, broker and database (the browser journey is in
test_journeys.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import fleet_client, make_settings
from tests.fleet.sites_helpers import PASSWORD, seeded


async def _page_login(client: httpx.AsyncClient, username: str) -> None:
    client.cookies.clear()
    r = await client.post("/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 303, r.text


@pytest.mark.parametrize("role", ["installer", "property", "officer"])
async def test_pages_show_only_the_users_compounds(
    mqtt_broker: BrokerEndpoint, database_url: str, role: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        await _page_login(client, f"{role}_a")
        home = await client.get("/")
        assert home.status_code == 200
        assert seed.b.gateway not in home.text
        assert seed.b.alert not in home.text
        if role == "officer":  # alerts, not device health (as GET /api/gateways: 403)
            assert seed.a.gateway not in home.text
        else:
            assert seed.a.gateway in home.text
        assert f"/alerts/{seed.a.alert}" in home.text

        own = await client.get(f"/alerts/{seed.a.alert}")
        assert own.status_code == 200
        assert seed.a.gateway in own.text
        other = await client.get(f"/alerts/{seed.b.alert}")
        assert other.status_code == 403
        assert seed.b.gateway not in other.text
        assert (await client.get("/alerts/no-such-alert")).status_code == 404

        # The admin sees both compounds.
        client.cookies.clear()
        r = await client.post("/login", data={"username": "admin", "password": "test-admin-pass"})
        assert r.status_code == 303
        home = await client.get("/")
        for seen in (seed.a.gateway, seed.b.gateway, seed.a.alert, seed.b.alert):
            assert seen in home.text
