"""The building view (flats by floor, colored by risk, open alerts marked) and the flat page
(一户一档), at HTTP level with the real app, broker and database, scoped as the API is."""

from __future__ import annotations

import re

import httpx

from fleet.models import Flat
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import fleet_client, make_settings
from tests.fleet.sites_helpers import PASSWORD, seeded


async def _page_login(client: httpx.AsyncClient, username: str) -> None:
    client.cookies.clear()
    r = await client.post("/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 303, r.text


def _cells(html: str) -> list[tuple[str, str, str, str]]:
    """(floor, unit, risk, open count) of each flat cell, in page order."""
    out = []
    for row in re.finditer(r'<tr data-floor="([^"]*)">(.*?)</tr>', html, re.S):
        for cell in re.finditer(
            r'data-unit="([^"]+)" data-risk="([^"]+)" data-open="(\d+)"', row.group(2)
        ):
            out.append((row.group(1), cell.group(1), cell.group(2), cell.group(3)))
    return out


async def test_building_grid_and_flat_file(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        # Compound A's building: the seeded flat 1-201 (floor 2, with the open alert) plus
        # two flats on floor 1, added out of order, and one on floor 3.
        with seed.sessions() as session:
            for unit, floor in (("1-102", 1), ("1-301", 3), ("1-101", 1)):
                session.add(Flat(building_id=seed.a.building, unit_id=unit, floor=floor))
            session.commit()

        await _page_login(client, "officer_a")
        home = await client.get("/")
        assert f'href="/buildings/{seed.a.building}"' in home.text
        assert f'href="/buildings/{seed.b.building}"' not in home.text

        page = await client.get(f"/buildings/{seed.a.building}")
        assert page.status_code == 200
        assert "楼层" in page.text and "图例" in page.text  # Chinese by default
        cells = _cells(page.text)
        assert [(floor, unit) for floor, unit, _, _ in cells] == [
            ("3", "1-301"),
            ("2", "1-201"),
            ("1", "1-101"),
            ("1", "1-102"),
        ]
        risk = {unit: (level, count) for _, unit, level, count in cells}
        # The new (unverified) case makes the flat medium risk, as GET /api/risk/flats says.
        api = await client.get("/api/risk/flats", headers=seed.auth("officer"))
        assert api.status_code == 200
        by_flat = {r["flat_id"]: r["risk"] for r in api.json()}
        assert by_flat[seed.a.flat] == "medium"
        assert risk["1-201"] == ("medium", "1")
        assert risk["1-101"] == risk["1-102"] == risk["1-301"] == ("low", "0")
        cell = re.search(rf'<td class="([^"]*)" id="flat-{seed.a.flat}"(.*?)</td>', page.text, re.S)
        assert cell is not None
        assert "risk-medium" in cell.group(1) and "has-open" in cell.group(1)
        assert "中风险" in cell.group(2) and "电动自行车" in cell.group(2)
        assert f'href="/flats/{seed.a.flat}"' in cell.group(2)

        english = await client.get(f"/buildings/{seed.a.building}", params={"lang": "en"})
        assert "Medium risk" in english.text and "Floor 3" in english.text
        assert f'href="/flats/{seed.a.flat}?lang=en"' in english.text

        flat = await client.get(f"/flats/{seed.a.flat}")
        assert flat.status_code == 200
        assert "一户一档" in flat.text
        facts = re.search(r'<table id="flat-facts">(.*?)</table>', flat.text, re.S)
        assert facts is not None
        for value in ("1-201", "85.0", "3", "2", "40.0"):
            assert f"<td>{value}</td>" in facts.group(1)
        assert 'data-risk="medium"' in flat.text
        # The reason in the page's language (the API keeps its English text and adds the code).
        assert f"告警尚未核查：电动自行车违规充电（{seed.a.alert}）" in flat.text
        assert 'data-code="unverified"' in flat.text
        flat_en = await client.get(f"/flats/{seed.a.flat}", params={"lang": "en"})
        assert f"unverified: ebike_charging ({seed.a.alert})" in flat_en.text
        file = await client.get(f"/api/flats/{seed.a.flat}/file", headers=seed.auth("officer"))
        assert file.json()["risk_reasons"] == [f"unverified: ebike_charging ({seed.a.alert})"]
        assert file.json()["risk_reason_details"] == [
            {
                "code": "unverified",
                "params": {"kind": "ebike_charging", "alert_id": seed.a.alert},
                "text": f"unverified: ebike_charging ({seed.a.alert})",
            }
        ]
        timeline = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', flat.text, re.S)
        assert timeline is not None
        assert f'data-alert="{seed.a.alert}"' in timeline.group(1)
        assert "新告警" in timeline.group(1)
        assert f'href="/buildings/{seed.a.building}"' in flat.text

        # Another compound's building and flat: 403, nothing of them shown; unknown ids: 404.
        other = await client.get(f"/buildings/{seed.b.building}")
        assert other.status_code == 403
        assert seed.b.gateway not in other.text and "1-201" not in other.text
        other_flat = await client.get(f"/flats/{seed.b.flat}")
        assert other_flat.status_code == 403
        assert seed.b.alert not in other_flat.text and "1-201" not in other_flat.text
        assert (await client.get("/buildings/999999999")).status_code == 404
        assert (await client.get("/flats/999999999")).status_code == 404

        # Compound B's property manager sees its own building but not A's.
        await _page_login(client, "property_b")
        assert (await client.get(f"/buildings/{seed.b.building}")).status_code == 200
        assert (await client.get(f"/buildings/{seed.a.building}")).status_code == 403
        assert (await client.get(f"/flats/{seed.a.flat}")).status_code == 403

        # Signed out: the pages send to the login.
        client.cookies.clear()
        r = await client.get(f"/buildings/{seed.a.building}")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
