"""Every API route, for every role: who is let in (401 / 403), and scope (403 outside).

``ROUTES`` is the access table of the whole API. ``test_every_route_is_in_the_table`` compares
it with the app's OpenAPI schema, so a route added without an entry here fails the suite.

For each entry and each role, the user working in compound A calls it on compound A's objects:
a role not listed gets 403, a listed role gets one of ``ok``. Without credentials every
non-public route is 401. For ``scoped`` entries, a user with the same (allowed) role working in
compound B gets 403 too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fleet.app import create_app
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import fleet_client, make_settings
from tests.fleet.sites_helpers import ROLES, Seed, seeded

ALL = frozenset(ROLES)
ADMIN = frozenset({"admin"})
SITE_EDIT = frozenset({"admin", "installer", "property"})
DEVICE_EDIT = frozenset({"admin", "installer"})
CARDS = frozenset({"admin", "property"})
OFFICE = frozenset({"admin", "officer"})
OK = frozenset({200})
CREATED = frozenset({201})
DELETED = frozenset({204})


def _name() -> str:
    return uuid.uuid4().hex[:10]


@dataclass(frozen=True)
class Access:
    method: str
    route: str  # as in the OpenAPI schema
    roles: frozenset[str] | None  # None: public, no credentials needed
    url: Callable[[Seed], str] | None = None  # default: the route itself
    json: Callable[[Seed], Any] | None = None
    data: Callable[[Seed], dict[str, str]] | None = None
    files: Callable[[Seed], dict[str, tuple[str, bytes, str]]] | None = None
    scoped: bool = False
    ok: frozenset[int] | None = OK  # None: any answer but 401 and 5xx (another module decides)

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}"


def _buildings_csv(seed: Seed) -> dict[str, tuple[str, bytes, str]]:
    body = f"小区编码,楼栋,层数\nC-A,{_name()},6\n".encode()
    return {"file": ("buildings.csv", body, "text/csv")}


ROUTES: list[Access] = [
    # auth
    Access("POST", "/api/auth/token", None, ok=None),
    Access("GET", "/api/auth/me", ALL),
    # health and ingest counters
    Access("GET", "/api/health", None, ok=frozenset({200, 503})),
    Access("GET", "/api/ingest/stats", ALL),
    Access("GET", "/api/health/notifications", CARDS, ok=None),
    Access("GET", "/metrics", None),
    # alerts (scoped through the gateway's entrance)
    Access("GET", "/api/alerts", ALL),
    Access("GET", "/api/alerts/{alert_id}", ALL, url=lambda s: f"/api/alerts/{s.a.alert}", scoped=True),
    # gateways
    Access("GET", "/api/gateways", SITE_EDIT),
    Access("GET", "/api/gateways/{gateway_id}", SITE_EDIT, url=lambda s: f"/api/gateways/{s.a.gateway}", scoped=True),
    Access("GET", "/api/gateways/{gateway_id}/devices", SITE_EDIT, url=lambda s: f"/api/gateways/{s.a.gateway}/devices", scoped=True),
    # site register
    Access("GET", "/api/districts", ALL),
    Access("POST", "/api/districts", ADMIN, json=lambda s: {"name": _name()}, ok=CREATED),
    Access("PATCH", "/api/districts/{district_id}", ADMIN, url=lambda s: f"/api/districts/{s.new_district()}", json=lambda s: {"name": _name()}),
    Access("DELETE", "/api/districts/{district_id}", ADMIN, url=lambda s: f"/api/districts/{s.new_district()}", ok=DELETED),
    Access("GET", "/api/street-offices", ALL),
    Access("POST", "/api/street-offices", ADMIN, json=lambda s: {"district_id": s.district, "name": _name()}, ok=CREATED),
    Access("PATCH", "/api/street-offices/{street_office_id}", ADMIN, url=lambda s: f"/api/street-offices/{s.new_street_office()}", json=lambda s: {"name": _name()}),
    Access("DELETE", "/api/street-offices/{street_office_id}", ADMIN, url=lambda s: f"/api/street-offices/{s.new_street_office()}", ok=DELETED),
    Access("GET", "/api/compounds", ALL),
    Access("POST", "/api/compounds", ADMIN, json=lambda s: {"street_office_id": s.a.street_office, "name": _name()}, ok=CREATED),
    Access("GET", "/api/compounds/{compound_id}", ALL, url=lambda s: f"/api/compounds/{s.a.compound}", scoped=True),
    Access("PATCH", "/api/compounds/{compound_id}", ADMIN, url=lambda s: f"/api/compounds/{s.new_compound()}", json=lambda s: {"address": "梅川路 1 号"}),
    Access("DELETE", "/api/compounds/{compound_id}", ADMIN, url=lambda s: f"/api/compounds/{s.new_compound()}", ok=DELETED),
    Access("GET", "/api/buildings", ALL),
    Access("POST", "/api/buildings", SITE_EDIT, json=lambda s: {"compound_id": s.a.compound, "name": _name()}, scoped=True, ok=CREATED),
    Access("GET", "/api/buildings/{building_id}", ALL, url=lambda s: f"/api/buildings/{s.a.building}", scoped=True),
    Access("PATCH", "/api/buildings/{building_id}", SITE_EDIT, url=lambda s: f"/api/buildings/{s.a.building}", json=lambda s: {"floors": 7}, scoped=True),
    Access("DELETE", "/api/buildings/{building_id}", SITE_EDIT, url=lambda s: f"/api/buildings/{s.new_building()}", scoped=True, ok=DELETED),
    Access("GET", "/api/entrances", ALL),
    Access("POST", "/api/entrances", SITE_EDIT, json=lambda s: {"building_id": s.a.building, "name": _name()}, scoped=True, ok=CREATED),
    Access("GET", "/api/entrances/{entrance_id}", ALL, url=lambda s: f"/api/entrances/{s.a.entrance}", scoped=True),
    Access("PATCH", "/api/entrances/{entrance_id}", SITE_EDIT, url=lambda s: f"/api/entrances/{s.new_entrance()}", json=lambda s: {"name": _name()}, scoped=True),
    Access("DELETE", "/api/entrances/{entrance_id}", SITE_EDIT, url=lambda s: f"/api/entrances/{s.new_entrance()}", scoped=True, ok=DELETED),
    Access("GET", "/api/flats", ALL),
    Access("POST", "/api/flats", SITE_EDIT, json=lambda s: {"building_id": s.a.building, "unit_id": _name(), "area_m2": 60}, scoped=True, ok=CREATED),
    Access("GET", "/api/flats/{flat_id}", ALL, url=lambda s: f"/api/flats/{s.a.flat}", scoped=True),
    Access("PATCH", "/api/flats/{flat_id}", SITE_EDIT, url=lambda s: f"/api/flats/{s.a.flat}", json=lambda s: {"registered_occupants": 3}, scoped=True),
    Access("DELETE", "/api/flats/{flat_id}", SITE_EDIT, url=lambda s: f"/api/flats/{s.new_flat()}", scoped=True, ok=DELETED),
    Access("GET", "/api/devices", ALL),
    Access("POST", "/api/devices", DEVICE_EDIT, json=lambda s: {"compound_id": s.a.compound, "kind": "charging_sensor", "device_id": _name(), "location": "bike_shed"}, scoped=True, ok=CREATED),
    Access("GET", "/api/devices/{device_pk}", ALL, url=lambda s: f"/api/devices/{s.a.device}", scoped=True),
    Access("PATCH", "/api/devices/{device_pk}", DEVICE_EDIT, url=lambda s: f"/api/devices/{s.a.device}", json=lambda s: {"params": {"address": 2}}, scoped=True),
    Access("DELETE", "/api/devices/{device_pk}", DEVICE_EDIT, url=lambda s: f"/api/devices/{s.new_device()}", scoped=True, ok=DELETED),
    Access("GET", "/api/cards", CARDS),
    Access("POST", "/api/cards", CARDS, json=lambda s: {"flat_id": s.a.flat, "card": uuid.uuid4().hex}, scoped=True, ok=CREATED),
    Access("DELETE", "/api/cards/{card_pk}", CARDS, url=lambda s: f"/api/cards/{s.new_card()}", scoped=True, ok=DELETED),
    Access("POST", "/api/import", SITE_EDIT, files=_buildings_csv),
    # users and API keys
    Access("GET", "/api/users", ADMIN),
    Access("POST", "/api/users", ADMIN, json=lambda s: {"username": _name(), "password": "long-enough-pw", "role": "property", "compound_ids": [s.a.compound]}, ok=CREATED),
    Access("GET", "/api/users/{user_id}", ADMIN, url=lambda s: f"/api/users/{s.new_user()}"),
    Access("PATCH", "/api/users/{user_id}", ADMIN, url=lambda s: f"/api/users/{s.new_user()}", json=lambda s: {"display_name": "张三"}),
    Access("DELETE", "/api/users/{user_id}", ADMIN, url=lambda s: f"/api/users/{s.new_user()}", ok=DELETED),
    Access("GET", "/api/users/{user_id}/api-keys", ADMIN, url=lambda s: f"/api/users/{s.new_user()}/api-keys"),
    Access("POST", "/api/users/{user_id}/api-keys", ADMIN, url=lambda s: f"/api/users/{s.new_user()}/api-keys", json=lambda s: {"name": "office system"}, ok=CREATED),
    Access("DELETE", "/api/users/{user_id}/api-keys/{key_id}", ADMIN, url=lambda s: "/api/users/{}/api-keys/{}".format(*s.new_api_key()), ok=DELETED),
    Access("GET", "/api/audit", ALL),
    # alert lifecycle, flats' files, sublandlords, channels, reports (fleet/api/cases.py)
    Access("GET", "/api/alerts/{alert_id}/case", ALL, url=lambda s: f"/api/alerts/{s.a.alert}/case", scoped=True, ok=None),
    Access("POST", "/api/alerts/{alert_id}/actions/{action}", ALL, url=lambda s: f"/api/alerts/{s.a.alert}/actions/acknowledge", scoped=True, ok=None),
    Access("POST", "/api/alerts/{alert_id}/comments", ALL, url=lambda s: f"/api/alerts/{s.a.alert}/comments", data=lambda s: {"comment": "已上门核查"}, scoped=True, ok=None),
    Access("GET", "/api/alerts/{alert_id}/photos/{photo_id}", ALL, url=lambda s: f"/api/alerts/{s.a.alert}/photos/1", scoped=True, ok=None),
    Access("GET", "/api/cases", ALL),
    Access("GET", "/api/risk/flats", ALL),
    Access("GET", "/api/flats/{flat_id}/file", ALL, url=lambda s: f"/api/flats/{s.a.flat}/file", scoped=True, ok=None),
    Access("PUT", "/api/flats/{flat_id}/rented", OFFICE, url=lambda s: f"/api/flats/{s.a.flat}/rented", json=lambda s: {"rented": True}, scoped=True, ok=None),
    Access("GET", "/api/sublandlords", OFFICE, ok=None),
    Access("POST", "/api/sublandlords", OFFICE, json=lambda s: {"name": "二房东", "flat_ids": [s.a.flat]}, ok=None),
    Access("PUT", "/api/sublandlords/{sublandlord_id}/flats", OFFICE, url=lambda s: "/api/sublandlords/999999/flats", json=lambda s: [s.a.flat], ok=None),
    Access("GET", "/api/channels", OFFICE, ok=None),
    Access("POST", "/api/channels", OFFICE, json=lambda s: {"name": "x", "kind": "email", "to": ["a@example.test"], "street_office_id": s.a.street_office}, ok=None),
    Access("DELETE", "/api/channels/{channel_id}", OFFICE, url=lambda s: "/api/channels/999999", ok=None),
    Access("GET", "/api/reports/statistics{suffix}", OFFICE, url=lambda s: "/api/reports/statistics.json?start=2026-11-01T00:00:00Z&end=2026-11-15T00:00:00Z", ok=None),
    # provisioning (fleet/api/provisioning.py)
    Access("POST", "/api/provisioning/gateways", DEVICE_EDIT, json=lambda s: {"entrance_id": s.a.entrance}, ok=None),
    Access("POST", "/api/provisioning/gateways/{gateway_id}/code", DEVICE_EDIT, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}/code", scoped=True, ok=None),
    Access("GET", "/api/provisioning/qr.png", DEVICE_EDIT, url=lambda s: "/api/provisioning/qr.png?code=ABCDEFGH", ok=None),
    Access("GET", "/api/provisioning/qr.svg", DEVICE_EDIT, url=lambda s: "/api/provisioning/qr.svg?code=ABCDEFGH", ok=None),
    Access("POST", "/api/enroll", None, json=lambda s: {"code": "not-a-real-code"}, ok=None),
    Access("GET", "/api/provisioning/gateways/{gateway_id}", SITE_EDIT, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}", scoped=True, ok=None),
    Access("GET", "/api/provisioning/gateways/{gateway_id}/config", SITE_EDIT, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}/config", scoped=True, ok=None),
    Access("POST", "/api/provisioning/gateways/{gateway_id}/config/refresh", DEVICE_EDIT, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}/config/refresh", scoped=True, ok=None),
    Access("PUT", "/api/provisioning/gateways/{gateway_id}/config/override", ADMIN, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}/config/override", ok=None),
    Access("DELETE", "/api/provisioning/gateways/{gateway_id}/config/override", ADMIN, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}/config/override", ok=None),
    Access("GET", "/api/provisioning/compounds/{compound_id}/rules", SITE_EDIT, url=lambda s: f"/api/provisioning/compounds/{s.a.compound}/rules", scoped=True, ok=None),
    Access("PUT", "/api/provisioning/compounds/{compound_id}/rules", ADMIN, url=lambda s: f"/api/provisioning/compounds/{s.a.compound}/rules", ok=None),
    # Last: a successful call replaces compound A's gateway (moving its devices and alerts).
    Access("POST", "/api/provisioning/gateways/{gateway_id}/replace", SITE_EDIT, url=lambda s: f"/api/provisioning/gateways/{s.a.gateway}/replace", json=lambda s: {}, scoped=True, ok=None),
]  # fmt: skip


def test_every_route_is_in_the_table(mqtt_broker: BrokerEndpoint, tmp_path: Any) -> None:
    settings = make_settings(mqtt_broker, f"sqlite:///{tmp_path / 'fleet.db'}")
    schema = create_app(settings).openapi()
    in_app = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method in operations
    }
    in_table = [entry.id for entry in ROUTES]
    assert len(in_table) == len(set(in_table)), "a route is listed twice"
    assert sorted(in_app - set(in_table)) == [], "routes with no access entry: add them to ROUTES"
    assert sorted(set(in_table) - in_app) == [], "entries for routes that no longer exist"


async def _call(
    client: httpx.AsyncClient, entry: Access, seed: Seed, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(
        entry.method,
        entry.url(seed) if entry.url else entry.route,
        headers=headers,
        json=entry.json(seed) if entry.json else None,
        data=entry.data(seed) if entry.data else None,
        files=entry.files(seed) if entry.files else None,
    )


async def test_every_route_for_every_role(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    settings = make_settings(mqtt_broker, database_url)
    failures: list[str] = []
    checked = 0
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        for entry in ROUTES:
            if entry.roles is None:
                r = await _call(client, entry, seed, {})
                checked += 1
                if r.status_code == 401 and entry.ok is not None:
                    failures.append(f"{entry.id} public, anonymous: 401")
                if r.status_code >= 500 or (entry.ok is not None and r.status_code not in entry.ok):
                    failures.append(f"{entry.id} anonymous: {r.status_code} {r.text[:200]}")
                continue
            r = await _call(client, entry, seed, {})
            checked += 1
            if r.status_code != 401:
                failures.append(f"{entry.id} anonymous: {r.status_code}, expected 401")
            for role in ROLES:
                r = await _call(client, entry, seed, seed.auth(role))
                checked += 1
                if role not in entry.roles:
                    if r.status_code != 403:
                        failures.append(f"{entry.id} {role}: {r.status_code}, expected 403")
                    continue
                if r.status_code >= 500 or r.status_code == 401:
                    failures.append(f"{entry.id} {role}: {r.status_code} {r.text[:200]}")
                elif entry.ok is not None and r.status_code not in entry.ok:
                    failures.append(
                        f"{entry.id} {role}: {r.status_code}, expected {sorted(entry.ok)}: "
                        f"{r.text[:200]}"
                    )
                if entry.scoped and role != "admin":
                    r = await _call(client, entry, seed, seed.auth(role, "b"))
                    checked += 1
                    if r.status_code != 403:
                        failures.append(
                            f"{entry.id} {role} of another compound: {r.status_code}, expected 403"
                        )
    assert failures == [], "\n".join(failures)
    assert checked > 4 * len(ROUTES)


@pytest.mark.parametrize("role", ["installer", "property", "officer"])
async def test_lists_show_only_the_callers_compounds(
    mqtt_broker: BrokerEndpoint, database_url: str, role: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        mine, theirs = seed.auth(role, "a"), seed.a
        expected = {
            "/api/compounds": ("id", seed.a.compound, seed.b.compound),
            "/api/buildings": ("id", seed.a.building, seed.b.building),
            "/api/entrances": ("id", seed.a.entrance, seed.b.entrance),
            "/api/flats": ("id", seed.a.flat, seed.b.flat),
            "/api/devices": ("id", seed.a.device, seed.b.device),
            "/api/alerts": ("alert_id", seed.a.alert, seed.b.alert),
        }
        if role != "officer":  # officers get alerts, not device health
            expected["/api/gateways"] = ("gateway_id", seed.a.gateway, seed.b.gateway)
        for path, (key, own, other) in expected.items():
            r = await client.get(path, headers=mine)
            assert r.status_code == 200, (path, r.text)
            ids = {item[key] for item in r.json()["items"]}
            assert own in ids, path
            assert other not in ids, path
            # Asking for the other compound's rows by filter does not get round the scope.
        r = await client.get("/api/flats", headers=mine, params={"compound_id": seed.b.compound})
        assert r.json()["items"] == []
        r = await client.get("/api/street-offices", headers=mine)
        assert {o["id"] for o in r.json()["items"]} == {theirs.street_office}
        r = await client.get("/api/districts", headers=mine)
        assert [d["id"] for d in r.json()["items"]] == [seed.district]
        me = (await client.get("/api/auth/me", headers=mine)).json()
        assert me["role"] == role and me["compound_ids"] == [seed.a.compound]
        admin = (await client.get("/api/auth/me", headers=seed.auth("admin"))).json()
        assert admin["compound_ids"] is None


async def test_openapi_documents_both_credentials(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        r = await client.get("/docs")
        assert r.status_code == 200 and "swagger" in r.text.lower()
        schema = (await client.get("/openapi.json")).json()
        schemes = schema["components"]["securitySchemes"]
        assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/api/auth/token"
        assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        assert schema["paths"]["/api/flats"]["get"]["security"]
