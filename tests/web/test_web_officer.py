"""The street office's pages (fleet/web_officer.py): inbox filters, comments and photos on the
alert page, the reports page and its downloads; at HTTP level with the real app, broker and
database, plus one browser journey. Scoped as the API is: another compound's data is never
offered, shown or served."""

from __future__ import annotations

import csv
import html
import io
import re
import uuid
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from openpyxl import load_workbook
from PIL import Image
from playwright.async_api import Browser, FilePayload, expect

from contract.alerts import AlertKind, Severity
from fleet.db import utcnow
from fleet.reports import HEADER_ROW
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    ADMIN_PASSWORD,
    alert,
    eventually,
    fleet_client,
    make_settings,
    publish,
    wire,
)
from tests.fleet.sites_helpers import PASSWORD, Seed, seeded
from tests.web.conftest import PHONE, WebServer, screenshot, sign_in

PHOTO_LIMIT = 64 * 1024  # small, so the too-large case is a small upload


def _png(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), (30, 120, 200)).save(out, format="JPEG")
    return out.getvalue()


async def _page_login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> None:
    client.cookies.clear()
    r = await client.post("/login", data={"username": username, "password": password})
    assert r.status_code == 303, r.text


def _inbox_ids(page: str) -> list[str]:
    body = re.search(r'<tbody id="inbox".*?</tbody>', page, re.S)
    assert body is not None
    return re.findall(r'<tr id="alert-([0-9a-f]+)"', body.group(0))


def _options(page: str, name: str) -> list[tuple[str, str]]:
    select = re.search(rf'<select name="{name}">(.*?)</select>', page, re.S)
    assert select is not None, name
    return [
        (value, html.unescape(label))
        for value, label in re.findall(
            r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select.group(1)
        )
    ]


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None
    return found.group(1)


async def _step(
    client: httpx.AsyncClient, headers: dict[str, str], alert_id: str, *steps: str
) -> None:
    """Lifecycle steps through the API (bearer token), as another officer's client would."""
    forms = {
        "dispatch": {"assignee": "张网格员"},
        "false_alarm": {"comment": "现场无人充电"},
        "close": {"comment": "办结"},
    }
    for action in steps:
        r = await client.post(
            f"/api/alerts/{alert_id}/actions/{action}", data=forms.get(action, {}), headers=headers
        )
        assert r.status_code == 200, (action, r.text)


async def _stored(client: httpx.AsyncClient, seed: Seed, *alert_ids: str) -> None:
    async def present() -> bool:
        r = await client.get("/api/alerts", headers=seed.headers["admin"], params={"limit": 500})
        return set(alert_ids) <= {x["alert_id"] for x in r.json()["items"]}

    await eventually(present, f"alerts {alert_ids}")


async def test_inbox_filters_by_compound_kind_category_severity_status_and_recurring(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        officer = seed.auth("officer", "a")
        # Compound A: the seeded e-bike case is closed (false alarm), then the flat charges again:
        # a new case on a flat closed within 90 days is recurring (回潮). Also a high overload
        # and a group rental; 51 low overloads on other units make a second page.
        await _step(
            client, officer, seed.a.alert, "acknowledge", "dispatch", "false_alarm", "close"
        )
        again, overload, rental = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
        many = [uuid.uuid4().hex for _ in range(51)]
        await publish(
            mqtt_broker,
            wire(alert(seed.a.gateway, again)),
            wire(
                alert(
                    seed.a.gateway,
                    overload,
                    kind=AlertKind.OVERLOAD,
                    severity=Severity.HIGH,
                    unit_id="1-301",
                )
            ),
            wire(
                alert(
                    seed.a.gateway, rental, kind=AlertKind.SUSPECTED_GROUP_RENTAL, unit_id="1-401"
                )
            ),
            *(
                wire(
                    alert(
                        seed.a.gateway,
                        x,
                        kind=AlertKind.OVERLOAD,
                        severity=Severity.LOW,
                        unit_id=f"9-{i:03d}",
                    )
                )
                for i, x in enumerate(many)
            ),
        )
        await _stored(client, seed, again, overload, rental, *many)
        other_compound = seed.new_compound()  # in A's street office: the officer's too

        await _page_login(client, "officer_a")
        page = await client.get("/alerts")
        assert page.status_code == 200
        # Only the officer's compounds are offered (compound B is another street office's).
        offered = _options(page.text, "compound")
        assert ("", "全部") in offered
        assert (str(seed.a.compound), "小区A") in offered
        assert str(other_compound) in {v for v, _ in offered}
        assert str(seed.b.compound) not in {v for v, _ in offered} and "小区B" not in page.text
        assert _options(page.text, "recurring") == [
            ("", "全部"),
            ("yes", "仅回潮"),
            ("no", "非回潮"),
        ]

        async def ids(**params: str) -> set[str]:
            r = await client.get("/alerts", params={**params, "page": "1"})
            assert r.status_code == 200
            found = _inbox_ids(r.text)
            total = re.search(r'<span id="alerts-total">(\d+)</span>', r.text)
            assert total is not None
            if int(total.group(1)) <= 50:
                assert len(found) == int(total.group(1))
            return set(found)

        assert await ids(recurring="yes") == {again}
        page = await client.get("/alerts", params={"recurring": "yes"})
        row = re.search(rf'<tr id="alert-{again}">(.*?)</tr>', page.text, re.S)
        assert row is not None and "回潮" in row.group(1)
        assert again not in await ids(recurring="no")
        assert await ids(kind="suspected_group_rental") == {rental}
        assert await ids(category="住房") == {rental}
        assert await ids(severity="high") == {overload}
        assert await ids(status="closed") == {seed.a.alert}
        assert await ids(kind="overload", severity="high") == {overload}
        assert await ids(compound=str(seed.a.compound), kind="ebike_charging") == {
            seed.a.alert,
            again,
        }
        assert await ids(compound=str(other_compound)) == set()
        # Another street office's compound in the URL: ignored (not a filter, not offered),
        # and B's alert stays out as the scope says.
        ignored = await client.get(
            "/alerts", params={"compound": str(seed.b.compound), "kind": "suspected_group_rental"}
        )
        assert _inbox_ids(ignored.text) == [rental]
        assert seed.b.alert not in ignored.text
        assert "selected>小区B" not in ignored.text

        # Filters are kept across pages and the language switch.
        first = await client.get(
            "/alerts",
            params={"kind": "overload", "recurring": "no", "compound": str(seed.a.compound)},
        )
        assert '<span id="alerts-total">52</span>' in first.text
        assert len(_inbox_ids(first.text)) == 50
        following = re.search(r'<a href="([^"]+)" rel="next">', first.text)
        assert following is not None
        link = html.unescape(following.group(1))
        for kept in ("kind=overload", "recurring=no", f"compound={seed.a.compound}", "page=2"):
            assert kept in link
        second = await client.get(link)
        assert len(_inbox_ids(second.text)) == 2
        assert set(_inbox_ids(first.text)) | set(_inbox_ids(second.text)) == {overload, *many}
        english = re.search(r'<a href="([^"]+)" lang="en">English</a>', second.text)
        assert english is not None
        en = await client.get(html.unescape(english.group(1)))
        assert "Recurring only" in en.text and "Filter" in en.text
        assert 'value="no" selected' in en.text and 'value="overload" selected' in en.text
        assert _inbox_ids(en.text) == _inbox_ids(second.text)
        # Filtered pages do not take live arrivals (a new alert may not match).
        assert "data-live-src" not in first.text
        assert "data-live-src" in (await client.get("/alerts")).text

        # An admin sees both compounds offered, and the filter splits them.
        await _page_login(client, "admin", ADMIN_PASSWORD)
        admin_page = await client.get("/alerts")
        assert {str(seed.a.compound), str(seed.b.compound)} <= {
            v for v, _ in _options(admin_page.text, "compound")
        }
        assert await ids(compound=str(seed.b.compound)) == {seed.b.alert}
        assert seed.b.alert not in await ids(compound=str(seed.a.compound))


async def test_comments_and_photos_from_the_alert_page(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(
        mqtt_broker, database_url, public_url="http://fleet.test", photo_max_bytes=PHOTO_LIMIT
    )
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        page_path = f"/alerts/{seed.a.alert}"
        await _page_login(client, "officer_a")
        page = await client.get(page_path)
        assert 'id="form-comment"' in page.text and 'id="form-photos"' in page.text
        assert 'enctype="multipart/form-data"' in page.text
        assert "照片（JPEG 或 PNG，每张不超过 0.0625 MB）" in page.text
        token = _csrf(page.text)
        post = f"/alerts/{seed.a.alert}/comments"

        r = await client.post(post, data={"csrf": token, "comment": "已电话联系业主，今晚上门"})
        assert r.status_code == 303 and r.headers["location"] == f"{page_path}#timeline"
        page = await client.get(page_path)
        entry = re.search(
            r'<li id="entry-\d+" data-action="comment">(.*?)</li>\s*(?=<li|</ol>)', page.text, re.S
        )
        assert entry is not None
        assert "补充说明" in entry.group(1) and "officer_a" in entry.group(1)
        assert "已电话联系业主，今晚上门" in entry.group(1)

        # A photo (PNG) with a note, then a JPEG: both shown as thumbnails in the timeline.
        png, jpeg = _png(), _jpeg()
        r = await client.post(
            post,
            data={"csrf": token, "form": "photos", "comment": "楼道充电现场"},
            files=[("photos", ("site.png", png, "image/png"))],
        )
        assert r.status_code == 303, r.text
        r = await client.post(
            post,
            data={"csrf": token, "form": "photos"},
            files=[("photos", ("site2.jpg", jpeg, "image/jpeg"))],
        )
        assert r.status_code == 303
        page = await client.get(page_path)
        thumbs = re.findall(
            rf'<img src="/alerts/{seed.a.alert}/photos/(\d+)\?size=thumb" alt="([^"]+)"', page.text
        )
        assert len(thumbs) == 2
        assert "现场照片 site.png" in thumbs[0][1] and "officer_a" in thumbs[0][1]
        assert "楼道充电现场" in page.text
        served = await client.get(f"/alerts/{seed.a.alert}/photos/{thumbs[0][0]}")
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/png" and served.content == png
        served = await client.get(f"/alerts/{seed.a.alert}/photos/{thumbs[1][0]}")
        assert served.headers["content-type"] == "image/jpeg" and served.content == jpeg
        # The API sees the same photos (same service, same table).
        case = await client.get(
            f"/api/alerts/{seed.a.alert}/case", headers=seed.auth("officer", "a")
        )
        assert [p["filename"] for p in case.json()["photos"]] == ["site.png", "site2.jpg"]

        # Bad input: a clear message on the page, nothing stored.
        async def refused(
            files: list[Any] | None, data: dict[str, str], error: str, text: str
        ) -> None:
            r = await client.post(post, data={"csrf": token, **data}, files=files)
            assert r.status_code == 303
            assert r.headers["location"] == f"{page_path}?error={error}#comment-forms"
            shown = await client.get(r.headers["location"].split("#")[0])
            message = re.search(
                r'<p class="error" role="alert" id="page-error">([^<]+)</p>', shown.text
            )
            assert message is not None and message.group(1) == text

        await refused(
            [("photos", ("notes.txt", b"not a picture", "text/plain"))],
            {"form": "photos"},
            "photo_type",
            "照片只能是 JPEG 或 PNG 格式，请重新选择",
        )
        # A GIF named .png is judged by its bytes, as the API does.
        await refused(
            [("photos", ("fake.png", b"GIF89a" + b"\x00" * 32, "image/png"))],
            {"form": "photos"},
            "photo_type",
            "照片只能是 JPEG 或 PNG 格式，请重新选择",
        )
        await refused(
            [("photos", ("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * PHOTO_LIMIT, "image/png"))],
            {"form": "photos"},
            "photo_size",
            "照片过大：每张不超过 0.0625 MB",
        )
        await refused(None, {"form": "photos"}, "photo_missing", "请选择要上传的照片")
        await refused(
            None, {"form": "comment", "comment": "   "}, "comment_empty", "请填写说明内容"
        )
        case = await client.get(
            f"/api/alerts/{seed.a.alert}/case", headers=seed.auth("officer", "a")
        )
        assert len(case.json()["photos"]) == 2
        assert [e["action"] for e in case.json()["timeline"]].count("comment") == 3

        english = await client.get(page_path, params={"lang": "en", "error": "photo_size"})
        assert "Photo too large: at most 0.0625 MB each" in english.text
        assert "Upload site photos" in english.text and "Photos (JPEG or PNG" in english.text
        assert "<strong>Comment</strong> · officer_a" in english.text  # timeline entries

        # Without the page's CSRF token (missing or forged) the post is refused.
        for data in ({"comment": "伪造"}, {"comment": "伪造", "csrf": "0" * 64}):
            r = await client.post(post, data=data)
            assert r.status_code == 403
        assert "伪造" not in (await client.get(page_path)).text

        # Another compound's alert and photo: 403 (its photo posted by B's property manager).
        await _page_login(client, "property_b")
        b_page = await client.get(f"/alerts/{seed.b.alert}")
        assert 'id="form-photos"' in b_page.text and 'id="form-acknowledge"' not in b_page.text
        r = await client.post(
            f"/alerts/{seed.b.alert}/comments",
            data={"csrf": _csrf(b_page.text), "form": "photos"},
            files=[("photos", ("b.png", _png((0, 128, 0)), "image/png"))],
        )
        assert r.status_code == 303
        b_page = await client.get(f"/alerts/{seed.b.alert}")
        b_photo = re.search(rf"/alerts/{seed.b.alert}/photos/(\d+)", b_page.text)
        assert b_photo is not None
        assert (
            await client.get(f"/alerts/{seed.b.alert}/photos/{b_photo.group(1)}")
        ).status_code == 200
        await _page_login(client, "officer_a")
        assert (
            await client.get(f"/alerts/{seed.b.alert}/photos/{b_photo.group(1)}")
        ).status_code == 403
        # ... nor under A's alert id; an unknown photo is 404.
        assert (
            await client.get(f"/alerts/{seed.a.alert}/photos/{b_photo.group(1)}")
        ).status_code == 404
        assert (await client.get(f"/alerts/{seed.a.alert}/photos/999999999")).status_code == 404
        a_page = await client.get(page_path)
        r = await client.post(
            f"/alerts/{seed.b.alert}/comments", data={"csrf": _csrf(a_page.text), "comment": "越权"}
        )
        assert r.status_code == 403

        # Installers see the alert but neither form, and a post is 403.
        await _page_login(client, "installer_a")
        inst = await client.get(page_path)
        assert inst.status_code == 200 and 'id="form-comment"' not in inst.text
        token = _csrf((await client.get("/install")).text)  # a valid token of this installer
        r = await client.post(post, data={"csrf": token, "comment": "安装人员"})
        assert r.status_code == 403
        assert "安装人员" not in (await client.get(page_path)).text
        # Signed out: the photo is 401 and the form post goes to the login.
        client.cookies.clear()
        assert (
            await client.get(f"/alerts/{seed.a.alert}/photos/{thumbs[0][0]}")
        ).status_code == 401
        r = await client.post(post, data={"comment": "x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def _preview(page: str, table: str) -> dict[str, dict[str, str]]:
    """Table ``table`` of the preview: {first cell + row label: {column key: cell text}}."""
    found = re.search(rf'<table class="report" id="report-table-{table}".*?</table>', page, re.S)
    assert found is not None, table
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", found.group(0).split("<tbody>")[1], re.S):
        cells = dict(re.findall(r'<t[hd][^>]*data-key="([^"]+)">([^<]*)</t[hd]>', row))
        out[f"{cells['area']} {cells.get('row', '')}".strip()] = cells
    return out


async def test_reports_page_preview_and_downloads(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        # Compound A: the e-bike case confirmed, and a group rental (4 estimated occupants)
        # confirmed; compound B's case confirmed too (another street office: not in A's report).
        rental = uuid.uuid4().hex
        await publish(
            mqtt_broker,
            wire(
                alert(
                    seed.a.gateway,
                    rental,
                    kind=AlertKind.SUSPECTED_GROUP_RENTAL,
                    evidence={"estimated_occupants": 4},
                )
            ),
        )
        await _stored(client, seed, rental)
        for alert_id in (seed.a.alert, rental):
            await _step(
                client, seed.auth("officer", "a"), alert_id, "acknowledge", "dispatch", "confirm"
            )
        await _step(
            client, seed.auth("officer", "b"), seed.b.alert, "acknowledge", "dispatch", "confirm"
        )

        today = utcnow().astimezone(ZoneInfo(settings.display_timezone)).date()
        start, end = today - timedelta(days=1), today + timedelta(days=1)
        period = {"start": start.isoformat(), "end": end.isoformat()}

        await _page_login(client, "officer_a")
        home = await client.get("/")
        assert 'href="/reports"' in home.text and "统计报表" in home.text
        page = await client.get("/reports", params=period)
        assert page.status_code == 200, page.text
        assert _options(page.text, "area") == [
            ("", "本人负责的全部小区"),
            (f"office-{seed.a.street_office}", "街道：街道A"),
            (f"compound-{seed.a.compound}", "小区A"),
        ]
        assert f"{start} – {end}" in page.text
        table4 = _preview(page.text, "4")
        assert set(table4) == {"小区A 每周数", "小区A 累计数"}
        total = table4["小区A 累计数"]
        assert total["hazards_found"] == "2"
        assert total["hazards_found_fire"] == "1" and total["hazards_found_housing"] == "1"
        assert total["registered_group_rentals"] == "1"
        assert total["registered_group_rental_residents"] == "4"
        assert total["hazards_rectified"] == "0"
        assert "fugitives" not in total  # no data for it here: left to the downloads
        table3 = _preview(page.text, "3")
        assert table3["小区A"]["flats"] == "1" and table3["小区A"]["group_rental_flats"] == "1"
        assert table3["小区A"]["hazard_group_rental_flats"] == "1"  # the e-bike hazard, same flat
        # The same figures as the API's statistics for the same period and scope.
        api = await client.get(
            "/api/reports/statistics.json",
            params={
                "start": f"{start}T00:00:00+08:00",
                "end": f"{end + timedelta(days=1)}T00:00:00+08:00",
            },
            headers=seed.auth("officer", "a"),
        )
        assert api.status_code == 200, api.text
        api_rows = api.json()["tables"]["4"]["rows"]
        assert [r["area"] for r in api_rows] == ["小区A", "小区A"]
        for key, value in total.items():
            if key not in ("area", "row"):
                assert str(api_rows[1][key]) == value, key

        # XLSX: the three sheets, read back cell by cell.
        xlsx_link = re.search(r'href="(/reports/statistics\.xlsx\?[^"]+)"', page.text)
        assert xlsx_link is not None
        r = await client.get(html.unescape(xlsx_link.group(1)))
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
        assert (
            f'filename="statistics_{start:%Y%m%d}_{end:%Y%m%d}.xlsx"'
            in r.headers["content-disposition"]
        )
        book = load_workbook(io.BytesIO(r.content))
        assert book.sheetnames == ["附件3", "附件4", "附件5"]
        sheet = book["附件4"]
        assert sheet["A1"].value == "附件4 重点地区整治情况统计表"
        assert sheet["A2"].value == "填报单位：街道A"
        assert sheet["D2"].value == f"统计期间：{start} 至 {end}"
        headers = [c.value for c in sheet[HEADER_ROW]]
        rows = [[c.value for c in row] for row in sheet.iter_rows(min_row=HEADER_ROW + 1)]
        assert [(r[0], r[1]) for r in rows] == [("小区A", "每周数"), ("小区A", "累计数")]
        assert rows[1][headers.index("排查安全隐患 合计（处）")] == 2
        assert rows[1][headers.index("登记群租房（户）")] == 1
        assert rows[1][headers.index("登记群租房租住人员（人）")] == 4
        assert rows[1][headers.index("破获刑事案件（起）")] is None
        sheet3 = book["附件3"]
        row3 = [c.value for c in sheet3[HEADER_ROW + 1]]
        headers3 = [c.value for c in sheet3[HEADER_ROW]]
        assert (
            row3[headers3.index("房屋总数(户)")] == 1
            and row3[headers3.index("所属街道（镇）")] == "街道A"
        )

        # CSV: one table, the form's headers, UTF-8 with BOM.
        csv_link = re.search(r'href="(/reports/statistics\.csv\?[^"]*table=4[^"]*)"', page.text)
        assert csv_link is not None
        r = await client.get(html.unescape(csv_link.group(1)))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.content.startswith(b"\xef\xbb\xbf")
        table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
        assert table[0][:3] == ["重点地区", "项目", "登记群租房（户）"]
        assert table[2][0:3] == ["小区A", "累计数", "1"]
        assert table[2][table[0].index("排查安全隐患 合计（处）")] == "2"

        # A preset month; one compound as the area; the street office as the area.
        month = await client.get(
            "/reports", params={"month": f"{today:%Y-%m}", "area": f"compound-{seed.a.compound}"}
        )
        first = today.replace(day=1)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        assert f"{first} – {last}" in month.text
        assert _preview(month.text, "4")["小区A 累计数"]["hazards_found"] == "2"
        assert f'<option value="{today:%Y-%m}" selected>' in month.text
        # Dates changed after choosing a month: the dates count.
        changed = await client.get("/reports", params={"month": f"{today:%Y-%m}", **period})
        assert f"{start} – {end}" in changed.text
        assert f'<option value="{today:%Y-%m}" selected>' not in changed.text
        office = await client.get(
            "/reports", params={**period, "area": f"office-{seed.a.street_office}"}
        )
        assert '<span id="report-area">街道A</span>' in office.text

        # Another street office's compound: 403, as the API's ensure_compound; so is its XLSX.
        assert (
            await client.get("/reports", params={**period, "area": f"compound-{seed.b.compound}"})
        ).status_code == 403
        r = await client.get(
            "/reports/statistics.xlsx", params={**period, "area": f"compound-{seed.b.compound}"}
        )
        assert r.status_code == 403
        # B's officer sees B's confirmed case only.
        await _page_login(client, "officer_b")
        b_page = await client.get("/reports", params=period)
        assert set(_preview(b_page.text, "4")) == {"小区B 每周数", "小区B 累计数"}
        assert _preview(b_page.text, "4")["小区B 累计数"]["hazards_found"] == "1"

        # Bad periods: a clear message (422), no preview.
        bad = await client.get(
            "/reports", params={"start": end.isoformat(), "end": start.isoformat()}
        )
        assert bad.status_code == 422 and "结束日期不能早于开始日期" in bad.text
        assert 'id="report-preview"' not in bad.text
        bad = await client.get("/reports", params={"month": "2026-13"})
        assert bad.status_code == 422 and "日期不正确" in bad.text
        assert (
            await client.get("/reports/statistics.csv", params={"start": "x"})
        ).status_code == 422
        english = await client.get("/reports", params={**period, "lang": "en"})
        assert "Download XLSX (tables 3-5)" in english.text and "Street office" in english.text

        # Property companies and installers do not get reports (as the API), nor the nav link.
        await _page_login(client, "property_a")
        assert (await client.get("/reports")).status_code == 403
        assert (await client.get("/reports/statistics.xlsx", params=period)).status_code == 403
        assert 'href="/reports"' not in (await client.get("/")).text
        client.cookies.clear()
        r = await client.get("/reports")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_an_officer_filters_comments_adds_a_photo_and_downloads_the_report(
    web: WebServer, browser: Browser
) -> None:
    seed = web.seed
    overload = uuid.uuid4().hex
    await publish(
        web.broker,
        wire(
            alert(
                seed.a.gateway,
                overload,
                kind=AlertKind.OVERLOAD,
                severity=Severity.HIGH,
                unit_id="1-301",
            )
        ),
    )
    await _stored(web.client, seed, overload)

    page = await browser.new_page()
    await sign_in(page, web.base_url, "officer_a")
    await page.get_by_role("link", name="告警处置").click()
    await page.get_by_label("小区").select_option(label="小区A")
    await page.get_by_label("类型").select_option(label="电动自行车违规充电")
    await page.get_by_role("button", name="筛选").click()
    await expect(page.locator(f"#alert-{seed.a.alert}")).to_be_visible()
    await expect(page.locator(f"#alert-{overload}")).to_have_count(0)

    await page.locator(f"#alert-{seed.a.alert}").get_by_role("link").click()
    await expect(page.locator("h2")).to_have_text("电动自行车违规充电")
    await page.get_by_label("说明内容").fill("已通知物业，明早上门核实")
    await page.get_by_role("button", name="提交说明").click()
    timeline = page.locator("#timeline")
    await expect(timeline).to_contain_text("补充说明")
    await expect(timeline).to_contain_text("已通知物业，明早上门核实")

    # A wrong file first: the page says why; then the photo.
    photos = page.locator("#form-photos")
    await photos.get_by_label("照片（JPEG 或 PNG").set_input_files(
        files=FilePayload(name="readme.txt", mimeType="text/plain", buffer=b"hello")
    )
    await photos.get_by_role("button", name="上传照片").click()
    await expect(page.locator("#page-error")).to_have_text(
        "照片只能是 JPEG 或 PNG 格式，请重新选择"
    )
    photos = page.locator("#form-photos")
    await photos.get_by_label("照片（JPEG 或 PNG").set_input_files(
        files=FilePayload(
            name="charger.png", mimeType="image/png", buffer=_png((220, 120, 0), (320, 240))
        )
    )
    await photos.get_by_label("照片说明（可选）").fill("楼道内充电器")
    await photos.get_by_role("button", name="上传照片").click()
    thumb = page.locator("#timeline img")
    await expect(thumb).to_have_count(1)
    await expect(thumb).to_have_attribute("alt", re.compile("现场照片 charger.png"))
    assert await thumb.evaluate("img => img.complete && img.naturalWidth") == 320  # it loaded
    await expect(timeline).to_contain_text("楼道内充电器")
    await screenshot(page, "alert-photos")

    await page.get_by_role("link", name="统计报表").click()
    await page.get_by_label("按月份").select_option(
        value=f"{utcnow().astimezone(ZoneInfo(web.settings.display_timezone)):%Y-%m}"
    )
    await page.get_by_role("button", name="预览").click()
    await expect(page.locator("#report-table-4")).to_contain_text("小区A")
    await screenshot(page, "reports")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="下载 XLSX（附件3-5）").click()
    download = await info.value
    assert download.suggested_filename.endswith(".xlsx")
    book = load_workbook(io.BytesIO((await download.path()).read_bytes()))
    assert book["附件4"]["A2"].value == "填报单位：街道A"
    assert [c.value for c in book["附件4"][HEADER_ROW + 1]][:2] == ["小区A", "每周数"]

    # The report on a phone: the preview scrolls inside its box, the page does not.
    await page.set_viewport_size({"width": PHONE["width"], "height": PHONE["height"]})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]


def _camera_jpeg(size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A camera-sized photo, stored sideways with EXIF orientation 6 (rotate 90° to view)."""
    w, h = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.paste((200, 40, 40), (0, 0, w // 4, h // 4))  # a red block in the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, exif=exif)
    return out.getvalue()


async def test_the_timeline_shows_small_upright_thumbnails_and_links_the_whole_photo(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    big = _camera_jpeg()
    assert len(big) <= settings.photo_max_bytes
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        page_path = f"/alerts/{seed.a.alert}"
        await _page_login(client, "officer_a")
        token = _csrf((await client.get(page_path)).text)
        post = f"/alerts/{seed.a.alert}/comments"
        truncated = big[: len(big) // 3]  # starts like a JPEG (accepted), but cut short
        for name, data, kind in (
            ("camera.jpg", big, "image/jpeg"),
            ("logo.png", _png(size=(900, 300)), "image/png"),
            ("cut.jpg", truncated, "image/jpeg"),
        ):
            r = await client.post(
                post,
                data={"csrf": token, "form": "photos"},
                files=[("photos", (name, data, kind))],
            )
            assert r.status_code == 303, r.text
        page = (await client.get(page_path)).text
        ids = re.findall(
            rf'<a href="/alerts/{seed.a.alert}/photos/(\d+)" id="photo-\d+"><img '
            rf'src="/alerts/{seed.a.alert}/photos/(\d+)\?size=thumb"',
            page,
        )
        assert len(ids) == 3 and all(a == b for a, b in ids)
        camera, logo, cut = (f"/alerts/{seed.a.alert}/photos/{a}" for a, _ in ids)

        # The camera photo: a small JPEG, upright (the stored top-left block is now top-right).
        thumb = await client.get(camera, params={"size": "thumb"})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert len(thumb.content) * 5 < len(big)
        shown = Image.open(io.BytesIO(thumb.content))
        assert shown.size == (240, 320)  # 1600 x 1200 stored sideways, 320 px on its long side
        r, g, b = shown.convert("RGB").getpixel((shown.width - 10, 10))  # type: ignore[misc]
        assert r > 150 and g < 90 and b < 90
        # The link gives the photo itself, byte for byte.
        whole = await client.get(camera)
        assert whole.headers["content-type"] == "image/jpeg" and whole.content == big

        # A PNG becomes a JPEG thumbnail of at most 320 px.
        small = await client.get(logo, params={"size": "thumb"})
        assert small.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(small.content)).size == (320, 107)

        # The API gives the same thumbnail to a client with a bearer token.
        api = f"/api{camera}"
        officer = seed.auth("officer", "a")
        api_thumb = await client.get(api, params={"size": "thumb"}, headers=officer)
        assert api_thumb.headers["content-type"] == "image/jpeg"
        assert api_thumb.content == thumb.content
        assert (await client.get(api, headers=officer)).content == big
        assert (await client.get(api, params={"size": "huge"}, headers=officer)).status_code == 422

        # A photo Pillow cannot read has no thumbnail: the photo itself is served, no error.
        broken = await client.get(cut, params={"size": "thumb"})
        assert broken.status_code == 200
        assert broken.headers["content-type"] == "image/jpeg" and broken.content == truncated
