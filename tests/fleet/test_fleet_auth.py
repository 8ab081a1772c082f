"""Login: API tokens, the web pages' cookie, and who gets an admin account."""

from __future__ import annotations

import uuid

from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    ADMIN_PASSWORD,
    alert,
    eventually,
    fleet_client,
    gateway_id,
    login,
    make_settings,
    publish,
    wire,
)


async def test_api_requires_a_valid_token(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        r = await client.post(
            "/api/auth/token", data={"username": "admin", "password": "wrong-password"}
        )
        assert r.status_code == 401
        r = await client.post(
            "/api/auth/token", data={"username": "nobody", "password": ADMIN_PASSWORD}
        )
        assert r.status_code == 401
        for path in ("/api/alerts", "/api/gateways", "/api/ingest/stats"):
            assert (await client.get(path)).status_code == 401, path
            forged = {"Authorization": "Bearer not.a.token"}
            assert (await client.get(path, headers=forged)).status_code == 401, path
        headers = await login(client)
        for path in ("/api/alerts", "/api/gateways", "/api/ingest/stats"):
            assert (await client.get(path, headers=headers)).status_code == 200, path
        # Health is for load balancers: no login.
        r = await client.get("/api/health")
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["database"] is True


async def test_token_signed_with_another_key_is_refused(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    other = make_settings(
        mqtt_broker, database_url, secret_key="another-secret-0123456789abcdefghij"
    )
    async with fleet_client(other) as client:
        headers = await login(client)
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        assert (await client.get("/api/alerts", headers=headers)).status_code == 401


async def test_no_admin_without_a_password_outside_demo(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, admin_password=None)
    async with fleet_client(settings) as client:
        for password in ("admin", ADMIN_PASSWORD, ""):
            r = await client.post(
                "/api/auth/token", data={"username": "admin", "password": password}
            )
            assert r.status_code in (401, 422), password


async def test_demo_mode_has_admin_admin(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    settings = make_settings(
        mqtt_broker, database_url, demo=True, secret_key=None, admin_password=None
    )
    async with fleet_client(settings) as client:
        await login(client, password="admin")


async def test_web_pages_need_login_and_speak_chinese_by_default(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    alert_id = uuid.uuid4().hex
    # Served over plain http here, so the cookie must not be marked Secure.
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client:
        r = await client.get("/")
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login")
        r = await client.get("/login")
        assert r.status_code == 200
        assert 'lang="zh-CN"' in r.text and "登录" in r.text

        r = await client.post("/login", data={"username": "admin", "password": "nope"})
        assert r.status_code == 401
        assert "用户名或密码错误" in r.text
        assert "fleet_token" not in r.cookies

        await publish(mqtt_broker, wire(alert(gw, alert_id)))
        headers = await login(client)

        async def stored() -> bool:
            r = await client.get(f"/api/alerts/{alert_id}", headers=headers)
            return r.status_code == 200

        await eventually(stored, "the alert")

        r = await client.post(
            "/login", data={"username": "admin", "password": ADMIN_PASSWORD, "next": "//evil.test/"}
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/"  # no open redirect
        set_cookie = r.headers["set-cookie"]
        assert "fleet_token=" in set_cookie
        assert "httponly" in set_cookie.lower()
        assert "samesite=lax" in set_cookie.lower()
        assert "secure" not in set_cookie.lower()

        r = await client.get("/")
        assert r.status_code == 200
        assert "网关" in r.text
        assert gw in r.text
        assert "电动自行车违规充电" in r.text
        assert "1-201" in r.text

        r = await client.get("/", params={"lang": "en"})
        assert 'lang="en"' in r.text
        assert "Gateways" in r.text and "E-bike charging indoors" in r.text

        r = await client.get(f"/alerts/{alert_id}")
        assert r.status_code == 200
        assert "peak_power_w" in r.text and "消防" in r.text

        r = await client.post("/logout")
        assert r.status_code == 303
        client.cookies.clear()
        assert (await client.get(f"/alerts/{alert_id}")).status_code == 303


async def test_login_cookie_is_not_an_api_credential_for_other_sites(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    """The API takes the bearer header only, so a cross-site request riding on the page's
    cookie cannot call it."""
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        r = await client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 303
        # The public URL is https, so the browser must only send the cookie over https.
        assert "secure" in r.headers["set-cookie"].lower()
        client.cookies.set("fleet_token", r.cookies["fleet_token"])
        assert (await client.get("/api/alerts")).status_code == 401
