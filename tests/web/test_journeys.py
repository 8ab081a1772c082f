"""One browser test per user journey: real fleet manager, real broker and database, Chromium.

What is asserted is what the person sees on the page (text in rows, HTTP status of a page they
open by URL), never the server's internals."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import zxingcpp
from PIL import Image
from playwright.async_api import Browser, expect

from contract.alerts import AlertKind, Severity
from contract.messages import MeterSample, MeterTelemetry
from tests.fleet.health_helpers import place_gateway
from tests.fleet.helpers import (
    T0,
    alert,
    birth,
    death,
    envelope,
    eventually,
    gateway_id,
    publish,
    wire,
)
from tests.support.procs import child
from tests.web.conftest import PHONE, WebServer, screenshot, sign_in


async def test_a_user_of_one_compound_cannot_see_another_compounds_data(
    web: WebServer, browser: Browser
) -> None:
    seed = web.seed
    page = await browser.new_page()
    await sign_in(page, web.base_url, "property_a")

    await page.get_by_role("link", name="设备运行状况").click()
    gateways = page.locator("#gateways tbody")
    await expect(gateways).to_contain_text(seed.a.gateway)
    await expect(gateways).to_contain_text("小区A")
    assert seed.b.gateway not in await page.content()

    await page.get_by_role("link", name="告警处置").click()
    inbox = page.locator("#inbox")
    await expect(inbox.locator(f"#alert-{seed.a.alert}")).to_be_visible()
    assert seed.b.alert not in await page.content()

    # Typing the other compound's alert into the address bar does not show it.
    response = await page.goto(f"{web.base_url}/alerts/{seed.b.alert}")
    assert response is not None and response.status == 403
    assert seed.b.gateway not in await page.content()
    response = await page.goto(f"{web.base_url}/alerts/{seed.a.alert}")
    assert response is not None and response.status == 200
    await expect(page.locator("main")).to_contain_text(seed.a.gateway)

    # An officer of compound B's street office sees B's alert and not A's.
    other = await browser.new_page()
    await sign_in(other, web.base_url, "officer_b")
    await other.goto(f"{web.base_url}/alerts")
    await expect(other.locator(f"#alert-{seed.b.alert}")).to_be_visible()
    assert seed.a.alert not in await other.content()
    response = await other.goto(f"{web.base_url}/fleet")
    assert response is not None and response.status == 403  # officers: alerts, not devices


async def test_a_property_manager_finds_the_offline_gateway(
    web: WebServer, browser: Browser
) -> None:
    seed = web.seed
    # A second gateway of compound A stays online; the seeded one dies (its last will).
    alive = gateway_id()
    await publish(web.broker, wire(birth(alive)))
    place_gateway(web.settings.database_url, alive, seed.a.entrance)
    await publish(web.broker, wire(death(seed.a.gateway, seq=20, reason="connection_lost")))

    async def offline() -> bool:
        r = await web.client.get(
            f"/api/gateways/{seed.a.gateway}", headers=seed.auth("property", "a")
        )
        return r.status_code == 200 and not r.json()["online"]

    await eventually(offline, "the death message to be stored")

    page = await browser.new_page()
    await sign_in(page, web.base_url, "property_a")
    await page.get_by_role("link", name="设备运行状况").click()
    await expect(page.locator("#offline-total")).to_have_text("1")
    dead = page.locator(f"#gw-{seed.a.gateway}")
    await expect(dead).to_contain_text("离线")
    await expect(dead).to_contain_text("连接中断")
    await expect(dead).to_contain_text("1号楼")
    await expect(page.locator(f"#gw-{alive}")).to_contain_text("在线")
    await screenshot(page, "fleet-health")

    # Only the offline ones, in English.
    await page.get_by_label("状态").select_option("no")
    await page.get_by_role("button", name="筛选").click()
    await expect(page.locator(f"#gw-{seed.a.gateway}")).to_be_visible()
    await expect(page.locator(f"#gw-{alive}")).to_have_count(0)
    await page.get_by_role("link", name="English").click()
    await expect(page.locator(f"#gw-{seed.a.gateway}")).to_contain_text("offline")
    await expect(page.locator(f"#gw-{alive}")).to_have_count(0)


async def test_an_officer_sees_a_new_alert_arrive_live(web: WebServer, browser: Browser) -> None:
    seed = web.seed
    page = await browser.new_page()
    await sign_in(page, web.base_url, "officer_a")
    await page.get_by_role("link", name="告警处置").click()
    await expect(page.locator("#live-status")).to_have_text("实时接收新告警中")
    total = int(await page.locator("#alerts-total").inner_text())

    # The flat's meter: base load, then an e-bike charger's step, plateau and taper.
    def watts(minute: int) -> float:
        if 0 <= minute < 60:
            return 330.0
        if 60 <= minute < 80:
            return 330.0 - (minute - 60) * 8
        return 150.0

    readings = [
        MeterSample(
            meter_id="m-202", unit_id="1-203", ts=T0 + timedelta(minutes=m), power_w=watts(m)
        )
        for m in range(-60, 120, 2)
    ]
    await publish(
        web.broker, wire(MeterTelemetry(**envelope(seed.a.gateway, seq=5), readings=readings))
    )
    fresh = uuid.uuid4().hex
    elsewhere = uuid.uuid4().hex
    await publish(
        web.broker,
        wire(alert(seed.b.gateway, elsewhere, kind=AlertKind.EBIKE_CHARGING, unit_id="1-203")),
        wire(
            alert(
                seed.a.gateway,
                fresh,
                severity=Severity.HIGH,
                unit_id="1-203",
                evidence={"peak_power_w": 330.0, "plateau_minutes": 60, "taper_minutes": 20},
            )
        ),
    )
    row = page.locator(f"#alert-{fresh}")
    await expect(row).to_contain_text("电动自行车违规充电")  # no reload: never navigated
    await expect(row).to_contain_text("1-203")
    await expect(page.locator("#alerts-total")).to_have_text(str(total + 1))
    assert await page.locator(f"#alert-{elsewhere}").count() == 0  # compound B's: not here
    await screenshot(page, "inbox")

    await row.get_by_role("link").click()
    await expect(page.locator("h2")).to_have_text("电动自行车违规充电")
    await expect(page.locator("#case-status")).to_have_text("新告警")
    # The chart: the stored readings drawn, the plateau and taper shaded.
    chart = page.locator("#power-chart svg")
    await expect(chart).to_be_visible()
    points = await chart.locator("polyline.power-line").get_attribute("points")
    assert points is not None and len(points.split()) == len(readings)
    await expect(chart.locator("rect.band-plateau")).to_have_count(1)
    await expect(chart.locator("rect.band-taper")).to_have_count(1)
    await screenshot(page, "alert")

    await page.get_by_role("button", name="确认收到").click()
    await expect(page.locator("#case-status")).to_have_text("已确认收到")
    dispatch = page.locator("#form-dispatch")
    await dispatch.get_by_label("核查人").fill("张网格员")
    await dispatch.get_by_label("核查期限").fill("2099-12-01T18:00")
    await dispatch.get_by_role("button", name="派员线下核查").click()
    await expect(page.locator("#case-status")).to_have_text("线下核查中")
    await expect(page.locator("#assignee")).to_have_text("张网格员")
    await expect(page.locator("#due-at")).to_have_text("2099-12-01 18:00:00")
    await page.locator("#form-confirm").get_by_role("button", name="核查属实").click()
    await expect(page.locator("#case-status")).to_have_text("核查属实")
    await page.locator("#form-rectify").get_by_role("button", name="责令限期整改").click()
    await expect(page.locator("#case-status")).to_have_text("限期整改中")
    close = page.locator("#form-close")
    await close.get_by_label("说明").fill("充电器已移出室内，复查合格")
    await close.get_by_role("button", name="办结").click()
    await expect(page.locator("#case-status")).to_have_text("已办结")
    await expect(page.locator("#form-close")).to_have_count(0)  # no more steps
    timeline = page.locator("#timeline")
    for step in ("已确认收到", "已派员线下核查", "核查属实", "已责令限期整改", "已办结"):
        await expect(timeline).to_contain_text(step)
    await expect(timeline).to_contain_text("充电器已移出室内，复查合格")

    # The API (another client, bearer token) agrees.
    r = await web.client.get(f"/api/alerts/{fresh}/case", headers=seed.auth("officer", "a"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "closed"

    # A form post without the page's CSRF token is refused, cookie or not.
    r = await page.request.post(
        f"{web.base_url}/alerts/{seed.a.alert}/actions/acknowledge",
        form={"csrf": "forged"},
        max_redirects=0,
    )
    assert r.status == 403


async def test_an_installer_enrolls_a_gateway_from_the_qr_code(
    web: WebServer, browser: Browser, tmp_path: Path
) -> None:
    seed = web.seed
    page = await browser.new_page(viewport=PHONE)  # on a phone in the stairwell
    await sign_in(page, web.base_url, "installer_a")
    await page.get_by_role("link", name="安装网关").click()
    entrance = page.get_by_label("安装位置（小区 楼栋 单元）")
    options = await entrance.locator("option").all_inner_texts()
    assert options == ["小区A 1号楼 1单元"]  # compound B's entrance is not offered
    await screenshot(page, "install")
    await page.get_by_role("button", name="新建网关并生成注册码").click()

    code = (await page.locator("#enroll-code").inner_text()).strip()
    new_gateway = (await page.locator("#gateway-id").inner_text()).strip()
    await expect(page.locator("#gateway-status")).to_have_text("等待网关上线…")
    # The QR image holds the enrollment URI with the same code.
    src = await page.locator("#enroll-qr").get_attribute("src")
    assert src is not None
    png = await page.request.get(f"{web.base_url}{src}")
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(await png.body())))
    assert [b.text for b in found] == [f"{web.settings.base_url}/api/enroll?code={code}"]
    scanned = parse_qs(urlsplit(found[0].text).query)["code"][0]
    await screenshot(page, "enroll")

    # The gateway enrolls with the scanned code and starts; the page shows it come online.
    config_path = tmp_path / "agent" / "agent.toml"
    enrolled = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edge_agent.cli", "enroll", "--server", web.base_url,
         "--token", scanned, "--config", str(config_path), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert new_gateway in enrolled.stdout
    with child(["edge_agent.cli", "run", "--config", str(config_path)], tmp_path / "agent.log"):
        await expect(page.locator("#gateway-status")).to_have_text("在线", timeout=60_000)
        await screenshot(page, "enroll-online")
        # And the fleet-health page lists it online in compound A.
        await page.goto(f"{web.base_url}/fleet")
        row = page.locator(f"#gw-{new_gateway}")
        await expect(row).to_contain_text("在线")
        await expect(row).to_contain_text("小区A")
    assert seed.b.gateway not in await page.content()
