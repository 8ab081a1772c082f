"""The gateway page and the installer's device check (fleet/web_fleet.py), with the real app,
broker and database: heartbeat history charted from what ingest stored, devices with their live
answer, scope as in the API, and a mapping fix that is audited and pushed to the gateway as a new
retained desired config. The last test is the browser journey (installer on a phone, property
manager at a desk)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from playwright.async_api import Browser, ViewportSize, expect

from contract.control import DesiredConfig
from contract.messages import ConfigState, DeviceStatus, Heartbeat
from firmware_sim.modbus_meters import ModbusMeterSim, constant_load
from fleet.api.deps import COOKIE_NAME
from fleet.db import utcnow
from fleet.models import DeviceHealth, Flat, Gateway
from fleet.web_kit import csrf_token
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    envelope,
    eventually,
    fleet_client,
    gateway_id,
    make_settings,
    publish,
    retained_desired,
    wire,
)
from tests.fleet.sites_helpers import PASSWORD, seeded
from tests.support.procs import child
from tests.web.conftest import PHONE, WebServer, screenshot, sign_in


async def _page_login(client: httpx.AsyncClient, username: str) -> None:
    client.cookies.clear()
    r = await client.post("/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 303, r.text


def _beat(
    gw: str,
    seq: int,
    ts: datetime,
    *,
    depth: int,
    load: float,
    devices: dict[str, DeviceStatus] | None = None,
) -> Heartbeat:
    return Heartbeat(
        **{**envelope(gw, seq=seq), "ts": ts},
        uptime_s=60.0 * seq,
        agent_version="0.1.0-test",
        outbox_depth=depth,
        load_avg=(load, load, load),
        mem_available_bytes=300_000_000,
        devices=devices or {},
    )


def _section(html: str, element_id: str) -> str:
    """The element with this id (a figure, table, tr...) up to its closing tag."""
    match = re.search(rf'<(\w+)[^>]*id="{re.escape(element_id)}"[^>]*>(.*?)</\1>', html, re.S)
    assert match is not None, f"#{element_id} not on the page"
    return match.group(2)


def _row(html: str, device_id: str) -> str:
    match = re.search(rf'<tr data-device="{re.escape(device_id)}">(.*?)</tr>', html, re.S)
    assert match is not None, f"no row for {device_id}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1)))


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match is not None
    return match.group(1)


def _meters(desired: DesiredConfig) -> dict[str, str]:
    return {m["meter_id"]: m["unit_id"] for m in desired.config["site"]["meters"]}


async def test_gateway_page_charts_the_stored_heartbeats_and_lists_devices(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        gw = seed.a.gateway
        now = utcnow().replace(microsecond=0)
        # 30 hours ago (outside the chart), four a minute apart five hours ago, then silence
        # for four hours, then two more: the line breaks at the silence.
        times = [now - timedelta(hours=30)]
        times += [now - timedelta(hours=5) + timedelta(minutes=m) for m in range(4)]
        times += [now - timedelta(hours=1), now - timedelta(minutes=59)]
        depths = [99, 0, 4, 40, 7, 3, 2]
        devices = {
            "m-201": DeviceStatus(online=True, last_seen=now - timedelta(minutes=59)),
            "m-9": DeviceStatus(online=False, fault="no answer"),
        }
        beats = [
            _beat(gw, i + 1, ts, depth=d, load=0.5, devices=devices)
            for i, (ts, d) in enumerate(zip(times, depths, strict=True))
        ]
        await publish(mqtt_broker, *(wire(b) for b in beats))

        async def stored() -> bool:
            r = await client.get(f"/api/gateways/{gw}/devices", headers=seed.auth("admin"))
            return {d["device_id"] for d in r.json()} == {"m-201", "m-9"}

        await eventually(stored, "the heartbeats")

        await _page_login(client, "property_a")
        page = await client.get(f"/gateways/{gw}")
        assert page.status_code == 200
        assert "最近24小时心跳记录" in page.text  # Chinese by default
        chart = _section(page.text, "outbox-chart")
        lines = [
            [tuple(map(float, p.split(","))) for p in points.split()]
            for points in re.findall(r'<polyline class="series-line" points="([^"]+)"', chart)
        ]
        assert [len(line) for line in lines] == [4, 2]  # six heartbeats in 24 h, one gap
        ys = [y for line in lines for _, y in line]
        assert min(ys) == lines[0][2][1]  # the highest backlog (40) is drawn highest
        xs = [x for line in lines for x, _ in line]
        assert xs == sorted(xs)
        assert "max 40" in chart
        assert 'id="load-chart"' in page.text
        assert re.search(r'id="gw-backlog">2<', page.text)  # the newest heartbeat's
        meter = _row(page.text, "m-201")
        assert "电表" in meter and "1-201" in meter and "正常" in meter
        assert " 1 " in meter  # its bus address from the register
        silent = _row(page.text, "m-9")
        assert "无应答" in silent and "no answer" in silent and "未登记" in silent
        assert "保存并下发" not in page.text  # property users do not change mappings

        live = await client.get(f"/gateways/{gw}/live")
        assert live.status_code == 200
        body = live.json()
        assert body["online"] is True
        assert {d["device_id"]: d["state"] for d in body["devices"]} == {
            "m-201": "ok",
            "m-9": "offline",
        }

        # The fleet list: backlog, devices in trouble, a link to the page.
        fleet = await client.get("/fleet")
        row = _section(fleet.text, f"gw-{gw}")
        assert f'href="/gateways/{gw}"' in row
        assert re.search(r'class="backlog">2<', row)
        assert re.search(r'class="trouble offline">1<', row)
        # The summary by building: this compound's building, its one gateway online, and not
        # the other compound's building.
        by_building = _section(fleet.text, "buildings")
        assert f'id="building-{seed.a.building}"' in by_building
        assert f'id="building-{seed.b.building}"' not in by_building
        building_row = _section(by_building, f"building-{seed.a.building}")
        assert re.search(r'class="total">1<', building_row)
        assert re.search(r'class="dark">0<', building_row)

        english = await client.get(f"/gateways/{gw}", params={"lang": "en"})
        assert "Heartbeats, last 24 hours" in english.text and "silent" in english.text

        # Another compound's gateway: 403 and nothing of it; unknown: 404; officers: 403.
        other = await client.get(f"/gateways/{seed.b.gateway}")
        assert other.status_code == 403
        assert seed.b.gateway not in _section(other.text, "main")  # (the URL is in the nav)
        assert (await client.get(f"/gateways/{seed.b.gateway}/live")).status_code == 403
        assert (await client.get("/gateways/gw-nobody")).status_code == 404
        await _page_login(client, "officer_a")
        assert (await client.get(f"/gateways/{gw}")).status_code == 403
        client.cookies.clear()
        r = await client.get(f"/gateways/{gw}")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_installer_fixes_a_mapping_and_the_new_config_is_pushed(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    # A short retry as in the provisioning tests: the publisher drops a wake-up that arrives
    # while a round is running (fleet/desired.py), which the set-up below can provoke.
    settings = make_settings(
        mqtt_broker, database_url, public_url="http://fleet.test", config_publish_retry_s=2.0
    )
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        installer = seed.auth("installer", "a")
        gw = gateway_id()
        r = await client.post(
            "/api/provisioning/gateways",
            json={"entrance_id": seed.a.entrance, "gateway_id": gw},
            headers=installer,
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/enroll", json={"code": r.json()["code"]})
        assert r.status_code == 200, r.text
        r = await client.post(
            "/api/flats",
            headers=installer,
            json={"building_id": seed.a.building, "entrance_id": seed.a.entrance,
                  "unit_id": "1-202", "floor": 2},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        flat2 = r.json()["id"]
        r = await client.post(
            "/api/devices",
            headers=installer,
            json={"compound_id": seed.a.compound, "kind": "meter", "device_id": "m-7",
                  "gateway_id": gw, "flat_id": seed.a.flat,
                  "params": {"slave": 7, "url": "/dev/ttyUSB0"}},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        pk = r.json()["id"]
        first = await retained_desired(mqtt_broker, gw, lambda d: _meters(d) == {"m-7": "1-201"})

        await _page_login(client, "installer_a")
        page = await client.get(f"/gateways/{gw}")
        assert page.status_code == 200
        assert f'id="map-{pk}"' in page.text
        assert re.search(rf'id="desired-version">{first.version}<', page.text)
        csrf = _csrf(page.text)

        # A forged form is refused; so is a flat of another compound (nothing changes).
        r = await client.post(
            f"/gateways/{gw}/devices/{pk}/flat", data={"csrf": "forged", "flat_id": str(flat2)}
        )
        assert r.status_code == 403
        r = await client.post(
            f"/gateways/{gw}/devices/{pk}/flat",
            data={"csrf": csrf, "flat_id": str(seed.b.flat)},
        )
        assert r.status_code == 303 and "error=mapping_invalid" in r.headers["location"]
        for bad in ("99999999999999999999", "0", "x1"):  # beyond any id, not an id, not a number
            r = await client.post(
                f"/gateways/{gw}/devices/{pk}/flat", data={"csrf": csrf, "flat_id": bad}
            )
            assert r.status_code == 303 and "error=mapping_invalid" in r.headers["location"], bad

        r = await client.post(
            f"/gateways/{gw}/devices/{pk}/flat", data={"csrf": csrf, "flat_id": str(flat2)}
        )
        assert r.status_code == 303
        assert r.headers["location"] == f"/gateways/{gw}?saved=m-7#devices"
        device = await client.get(f"/api/devices/{pk}", headers=installer)
        assert device.json()["flat_id"] == flat2
        audit = await client.get(
            "/api/audit",
            headers=seed.auth("admin"),
            params={"entity": "device", "entity_id": str(pk)},
        )
        entries = audit.json()["items"]
        assert [e["action"] for e in entries] == ["update", "create"]
        assert entries[0]["actor"] == "installer_a"
        assert entries[0]["summary"] == {
            "before": {"flat_id": seed.a.flat},
            "after": {"flat_id": flat2},
        }

        # The gateway finds the new config retained on the broker.
        second = await retained_desired(mqtt_broker, gw, lambda d: _meters(d) == {"m-7": "1-202"})
        assert second.version > first.version
        saved = await client.get(f"/gateways/{gw}", params={"saved": "m-7"})
        assert "已保存 m-7 的房屋对应关系" in saved.text
        assert "1-202" in _row(saved.text, "m-7")

        async def desired_shown() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/gateways/{gw}/live")).json()["config"]
            return body if body["desired"] == second.version else None

        config = await eventually(desired_shown, "the new desired version")
        assert config["published"] is True and config["in_step"] is False

        # The agent reports the new config applied: the page shows it in step.
        report = ConfigState(
            **{**envelope(gw, seq=5), "ts": utcnow()},
            status="applied",
            version=second.version,
            hash=second.hash,
            applied_version=second.version,
            applied_hash=second.hash,
        )
        await publish(mqtt_broker, wire(report))

        async def applied() -> bool:
            body = (await client.get(f"/gateways/{gw}/live")).json()["config"]
            return bool(body["applied"] == second.version and body["in_step"])

        await eventually(applied, "the applied version")
        page = await client.get(f"/gateways/{gw}")
        assert re.search(rf'id="applied-version" class="online">{second.version}<', page.text)

        # A property manager may look but not change a mapping.
        await _page_login(client, "property_a")
        page = await client.get(f"/gateways/{gw}")
        assert page.status_code == 200 and "保存并下发" not in page.text  # no form offered
        token = csrf_token(settings, client.cookies[COOKIE_NAME])  # a valid token all the same
        r = await client.post(
            f"/gateways/{gw}/devices/{pk}/flat", data={"csrf": token, "flat_id": ""}
        )
        assert r.status_code == 303 and "error=mapping_forbidden" in r.headers["location"]
        device = await client.get(f"/api/devices/{pk}", headers=installer)
        assert device.json()["flat_id"] == flat2


async def test_an_installer_fixes_a_meter_on_a_phone_and_a_manager_sees_the_history(
    web: WebServer, browser: Browser, tmp_path: Path
) -> None:
    seed = web.seed
    # The register has the entrance's meter (slave 3 on its Modbus TCP converter, here the
    # simulator) on flat 1-201, and no gateway yet; in the box it is 1-202's meter.
    with seed.sessions() as session:
        flat2 = Flat(
            building_id=seed.a.building, entrance_id=seed.a.entrance, unit_id="1-202", floor=2
        )
        session.add(flat2)
        session.commit()
        flat2_id = flat2.id
    async with ModbusMeterSim({3: constant_load(850.0)}) as sim:
        r = await web.client.post(
            "/api/devices",
            headers=seed.auth("installer", "a"),
            json={"compound_id": seed.a.compound, "kind": "meter", "device_id": "m-301",
                  "flat_id": seed.a.flat,
                  "params": {"slave": 3, "transport": "tcp", "host": sim.host,
                             "port": sim.port}},
        )  # fmt: skip
        assert r.status_code == 201, r.text

        # On a phone in the stairwell: a new gateway for the entrance, with its meter listed.
        phone = ViewportSize(width=PHONE["width"], height=PHONE["height"])
        page = await browser.new_page(viewport=phone)
        await sign_in(page, web.base_url, "installer_a")
        await page.get_by_role("link", name="安装网关").click()
        await page.get_by_role("button", name="新建网关并生成注册码").click()
        gw = (await page.locator("#gateway-id").inner_text()).strip()
        code = (await page.locator("#enroll-code").inner_text()).strip()
        row = page.locator('tr[data-device="m-301"]')
        await expect(row).to_contain_text("待绑定到本网关")
        await expect(row).to_contain_text("1-201")
        await expect(row.locator(".dev-state")).to_have_text("未知")

        # The gateway enrolls with the code and starts (heartbeats every 2 s, not 30 s).
        config_path = tmp_path / "agent" / "agent.toml"
        enrolled = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "edge_agent.cli", "enroll", "--server", web.base_url,
             "--token", code, "--config", str(config_path), "--state-dir", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        agent_config = tomllib.loads(config_path.read_text())
        config_path.write_text(tomli_w.dumps({**agent_config, "heartbeat_interval_s": 2.0}))
        with child(["edge_agent.cli", "run", "--config", str(config_path)], tmp_path / "a.log"):
            await expect(page.locator("#gateway-status")).to_have_text("在线", timeout=60_000)

            # The meter is 1-202's: fix it from the phone; it is now behind this gateway.
            await row.get_by_label("改为房屋 m-301").select_option(str(flat2_id))
            await row.get_by_role("button", name="保存并下发").click()
            await expect(page.locator("#mapping-saved")).to_contain_text("m-301")
            row = page.locator('tr[data-device="m-301"]')
            await expect(row.locator(".dev-flat")).to_have_text("1-202")
            await expect(row).not_to_contain_text("待绑定到本网关")
            # The new desired config is on the broker, its version on the page; the agent
            # applies it, polls the meter, and the page shows both without a reload.
            pushed = await retained_desired(
                web.broker, gw, lambda d: _meters(d) == {"m-301": "1-202"}
            )
            await expect(page.locator("#desired-version")).to_have_text(str(pushed.version))
            await expect(row.locator(".dev-state")).to_have_text("正常", timeout=60_000)
            await expect(page.locator("#applied-version")).to_have_text(
                str(pushed.version), timeout=60_000
            )
            await expect(page.locator("#config-note")).to_have_text("已生效")
            await expect(page.locator("#gw-backlog")).not_to_have_text("-")  # from heartbeats
            await screenshot(page, "install-devices")

    # The property manager, at a desk, opens compound A's first gateway from the fleet list:
    # its last six hours of heartbeats (published as that gateway would have sent them).
    gw_a = seed.a.gateway
    now = utcnow().replace(microsecond=0)
    depths = (0, 0, 3, 12, 25, 9, 4, 1, 0, 0, 2, 0)
    history = [
        _beat(gw_a, i + 1, now - timedelta(minutes=30 * (len(depths) - i)), depth=d, load=0.2)
        for i, d in enumerate(depths)
    ]
    answer = {"m-201": DeviceStatus(online=True, last_seen=now)}
    latest = _beat(gw_a, len(history) + 1, now, depth=0, load=0.3, devices=answer)
    await publish(web.broker, *(wire(b) for b in (*history, latest)))
    manager = await browser.new_page()
    await sign_in(manager, web.base_url, "property_a")
    await manager.get_by_role("link", name="设备运行状况").click()
    await manager.locator(f"#gw-{gw_a}").get_by_role("link", name=gw_a).click()
    await expect(manager.locator("h2")).to_contain_text(gw_a)
    await expect(manager.locator('tr[data-device="m-201"] .dev-state')).to_have_text("正常")
    chart = manager.locator("#outbox-chart svg")
    await expect(chart).to_be_visible()
    points = await chart.locator("polyline.series-line").get_attribute("points")
    assert points is not None and len(points.split()) == len(history) + 1
    await expect(manager.locator("#load-chart svg")).to_be_visible()
    await expect(manager.locator("#gw-backlog")).to_have_text("0")
    await screenshot(manager, "gateway")


async def test_a_silent_gateway_is_offline_in_every_figure_of_the_fleet_page(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    """Connected by its flag but silent past the limit (the health monitor has not swept yet):
    its row, the offline count, the building summary and the filters all say offline, and so
    do the JSON API (the gateway, the list and its filter, its devices) and /metrics."""
    # no grace period: silence counts as soon as ingest is subscribed (by default it counts
    # only after FLEET_HEALTH_GRACE_S of listening, see fleet.queries.offline_limit_s)
    settings = make_settings(
        mqtt_broker, database_url, public_url="http://fleet.test", health_grace_s=0.0
    )
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        gw = seed.a.gateway
        with seed.sessions() as session, session.begin():
            gateway = session.get(Gateway, gw)
            assert gateway is not None and gateway.online  # its birth
            gateway.last_seen = utcnow() - timedelta(seconds=settings.gateway_offline_after_s + 60)
            # what its last heartbeat said of a meter: fine, but nobody can tell any more
            session.add(
                DeviceHealth(
                    gateway_id=gw,
                    device_id="m-201",
                    online=True,
                    reported_at=gateway.last_seen,
                    counters={},
                )
            )
        await _page_login(client, "property_a")
        page = await client.get("/fleet")
        assert page.status_code == 200
        assert "离线" in _section(page.text, f"gw-{gw}")
        assert re.search(r'id="offline-total">1<', page.text)
        building_row = _section(_section(page.text, "buildings"), f"building-{seed.a.building}")
        assert re.search(r'class="dark offline">1<', building_row)
        offline_only = await client.get("/fleet", params={"online": "no"})
        assert f'id="gw-{gw}"' in offline_only.text
        online_only = await client.get("/fleet", params={"online": "yes"})
        assert f'id="gw-{gw}"' not in online_only.text

        headers = seed.auth("property")
        one = (await client.get(f"/api/gateways/{gw}", headers=headers)).json()
        assert one["online"] is False and one["offline_reason"] == "timeout"
        assert one["offline_since"] is not None
        listed = await client.get("/api/gateways", params={"online": "false"}, headers=headers)
        assert gw in [g["gateway_id"] for g in listed.json()["items"]]
        row = next(g for g in listed.json()["items"] if g["gateway_id"] == gw)
        assert row["online"] is False and row["offline_reason"] == "timeout"
        live = await client.get("/api/gateways", params={"online": "true"}, headers=headers)
        assert gw not in [g["gateway_id"] for g in live.json()["items"]]
        devices = (await client.get(f"/api/gateways/{gw}/devices", headers=headers)).json()
        assert devices and {d["state"] for d in devices} == {"unknown"}
        gauges = (await client.get("/metrics")).text
        assert re.search(r"^fleet_gateways_online 1(\.0)?$", gauges, re.M), gauges
        assert re.search(r"^fleet_gateways_offline 1(\.0)?$", gauges, re.M), gauges
