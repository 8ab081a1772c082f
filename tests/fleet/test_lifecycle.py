"""The alert lifecycle through the API: every step, every refusal, episodes and recurrence."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from contract.alerts import AlertKind, Change, Severity
from fleet.auth import hash_password
from fleet.db import make_engine, make_sessionmaker, utcnow
from fleet.models import (
    Building,
    Compound,
    District,
    Entrance,
    Flat,
    Gateway,
    StreetOffice,
    User,
    user_compounds,
)
from fleet.store import apply_uplink
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import alert, fleet_client, login, make_settings

PASSWORD = "lifecycle-pass-123"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class Site:
    gateway: str
    other_gateway: str
    flat_id: int
    compound_id: int
    other_compound_id: int
    street_office_id: int
    other_street_office_id: int


def seed_site(database_url: str, gateway: str | None = None) -> Site:
    """Two street offices, one compound each, a flat and a gateway in each, and users.
    ``gateway`` names the first office's gateway (a real agent's id in end-to-end tests)."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    suffix = uuid.uuid4().hex[:8]
    now = utcnow()
    try:
        with sessions() as s, s.begin():
            district = District(name=f"区-{suffix}")
            s.add(district)
            s.flush()
            ids = []
            gateways = []
            flats = []
            offices = []
            for n in ("A", "B"):
                office = StreetOffice(district_id=district.id, name=f"街道{n}")
                s.add(office)
                s.flush()
                compound = Compound(street_office_id=office.id, name=f"小区{n}")
                s.add(compound)
                s.flush()
                building = Building(compound_id=compound.id, name="3号楼")
                s.add(building)
                s.flush()
                entrance = Entrance(building_id=building.id, name="1单元")
                s.add(entrance)
                s.flush()
                flat = Flat(building_id=building.id, entrance_id=entrance.id, unit_id="1-201")
                s.add(flat)
                gw = gateway if gateway and n == "A" else f"gw-{n.lower()}-{suffix}"
                s.add(Gateway(gateway_id=gw, online=False, first_seen=now, entrance_id=entrance.id))
                s.flush()
                ids.append(compound.id)
                gateways.append(gw)
                flats.append(flat.id)
                offices.append(office.id)
            for name, role, office_id in (
                ("officer_a", "officer", offices[0]),
                ("officer_b", "officer", offices[1]),
                ("property_a", "property", None),
                ("installer_a", "installer", None),
            ):
                user = User(
                    username=name,
                    password_hash=hash_password(PASSWORD),
                    created_at=now,
                    role=role,
                    street_office_id=office_id,
                )
                s.add(user)
                s.flush()
                if office_id is None:
                    s.execute(sa.insert(user_compounds).values(user_id=user.id, compound_id=ids[0]))
    finally:
        engine.dispose()
    return Site(gateways[0], gateways[1], flats[0], ids[0], ids[1], offices[0], offices[1])


def ingest(database_url: str, *messages: Any) -> None:
    """Apply alert messages exactly as MQTT ingest does (same function, own transaction)."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            for m in messages:
                with s.begin():
                    apply_uplink(s, m, received_at=utcnow())
    finally:
        engine.dispose()


async def as_user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    r = await client.post("/api/auth/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def step(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    alert_id: str,
    action: str,
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    **form: str,
) -> httpx.Response:
    return await client.post(
        f"/api/alerts/{alert_id}/actions/{action}", headers=headers, data=form, files=files
    )


PATH = [
    ("acknowledge", {}),
    ("dispatch", {"assignee": "网格员王五"}),
    ("confirm", {"comment": "现场核实：室内充电", "category": "消防"}),
    ("rectify", {"comment": "已发限期整改告知书"}),
    ("recheck", {"comment": "复查：仍有电瓶在室内"}),
    ("close", {"comment": "复查合格"}),
]
STATUS_AFTER = {
    "acknowledge": "acknowledged",
    "dispatch": "dispatched",
    "confirm": "confirmed",
    "false_alarm": "false_alarm",
    "rectify": "rectifying",
    "recheck": "rectifying",
    "close": "closed",
}


async def test_every_step_from_new_to_closed_with_timeline_and_photo(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        alert_id = uuid.uuid4().hex
        ingest(database_url, alert(site.gateway, alert_id))
        officer = await as_user(client, "officer_a")
        before = datetime.now(UTC)
        for action, form in PATH:
            files = [("photos", ("site.png", PNG, "image/png"))] if action == "confirm" else None
            r = await step(client, officer, alert_id, action, files, **form)
            assert r.status_code == 200, (action, r.text)
            case = r.json()
            assert case["status"] == STATUS_AFTER[action]
            if action == "dispatch":
                assert case["assignee"] == "网格员王五"
                due = datetime.fromisoformat(case["due_at"])
                assert timedelta(hours=47) < due - before < timedelta(hours=49)
            if action == "rectify":
                deadline = datetime.fromisoformat(case["deadline_at"])
                assert timedelta(days=4.9) < deadline - before < timedelta(days=5.1)
            if action == "recheck":
                deadline = datetime.fromisoformat(case["deadline_at"])
                assert timedelta(days=2.9) < deadline - before < timedelta(days=3.1)
                assert case["rechecks"] == 1
        assert case["flat_id"] == site.flat_id
        assert case["compound_id"] == site.compound_id
        assert case["outcome"] == "confirmed"
        assert case["category"] == "消防"
        assert [e["action"] for e in case["timeline"]] == ["raised"] + [a for a, _ in PATH]
        assert {e["actor"] for e in case["timeline"][1:]} == {"officer_a"}
        confirm = case["timeline"][3]
        assert confirm["summary"]["comment"] == "现场核实：室内充电"
        assert confirm["summary"]["from"] == "dispatched"
        [photo] = case["photos"]
        assert confirm["summary"]["photos"] == [photo["id"]]
        r = await client.get(f"/api/alerts/{alert_id}/photos/{photo['id']}", headers=officer)
        assert r.status_code == 200 and r.content == PNG
        assert r.headers["content-type"] == "image/png"

        # The work lists: by status, overdue; another office sees none of it.
        r = await client.get("/api/cases", headers=officer, params={"status": "closed"})
        assert [c["alert_id"] for c in r.json()["items"]] == [alert_id]
        r = await client.get(
            "/api/cases", headers=officer, params={"status": ["new", "dispatched"]}
        )
        assert r.json()["total"] == 0
        r = await client.get("/api/cases", headers=officer, params={"overdue": "true"})
        assert r.json()["total"] == 0
        other = await as_user(client, "officer_b")
        assert (await client.get("/api/cases", headers=other)).json()["total"] == 0
        r = await client.get("/api/risk/flats", headers=officer)
        assert [(f["flat_id"], f["risk"]) for f in r.json()] == [(site.flat_id, "medium")]
        assert (await client.get("/api/risk/flats", headers=other)).json() == []

        # Property staff may add notes and photos, but no steps.
        prop = await as_user(client, "property_a")
        r = await client.post(
            f"/api/alerts/{alert_id}/comments", headers=prop, data={"comment": "物业已张贴告知"}
        )
        assert r.status_code == 201, r.text
        r = await client.get(f"/api/alerts/{alert_id}/case", headers=officer)
        assert r.json()["timeline"][-1]["summary"]["comment"] == "物业已张贴告知"

        # The flat's file shows the case and its steps.
        r = await client.get(f"/api/flats/{site.flat_id}/file", headers=officer)
        assert r.status_code == 200, r.text
        file = r.json()
        assert [a["alert_id"] for a in file["alerts"]] == [alert_id]
        assert file["risk"] == "medium"  # confirmed and closed within 180 days: observed
        details = file["risk_reason_details"]
        assert [(d["code"], d["params"]["alert_id"]) for d in details] == [
            ("closed_recently", alert_id)
        ]
        assert file["risk_reasons"] == [d["text"] for d in details]
        assert file["risk_reasons"][0].startswith("closed in the last 180 days: ")
        assert len(file["timeline"]) == len(PATH) + 2


async def test_false_alarm_path(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        alert_id = uuid.uuid4().hex
        ingest(database_url, alert(site.gateway, alert_id))
        officer = await as_user(client, "officer_a")
        for action, form in (
            ("acknowledge", {}),
            (
                "dispatch",
                {"assignee": "张三", "due_at": (utcnow() + timedelta(hours=4)).isoformat()},
            ),
            ("false_alarm", {"comment": "住户家中为电脑负载"}),
            ("close", {"comment": "误报办结"}),
        ):
            r = await step(client, officer, alert_id, action, **form)
            assert r.status_code == 200, (action, r.text)
            assert r.json()["status"] == STATUS_AFTER[action]
        assert r.json()["outcome"] == "false_alarm"


# For each action, a state in which it is not allowed, and the steps that reach that state.
WRONG_STATE = {
    "acknowledge": ["acknowledge"],  # already acknowledged
    "dispatch": [],  # still new
    "confirm": ["acknowledge"],
    "false_alarm": ["acknowledge"],
    "rectify": ["acknowledge", "dispatch"],
    "recheck": ["acknowledge", "dispatch", "confirm"],
    "close": ["acknowledge", "dispatch", "confirm"],
}
FORM = {
    "acknowledge": {},
    "dispatch": {"assignee": "李四"},
    "confirm": {"comment": "属实"},
    "false_alarm": {"comment": "误报"},
    "rectify": {"comment": "整改"},
    "recheck": {"comment": "复查"},
    "close": {"comment": "办结"},
}


async def test_every_refusal(mqtt_broker: BrokerEndpoint, database_url: str) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        officer = await as_user(client, "officer_a")
        other_office = await as_user(client, "officer_b")
        prop = await as_user(client, "property_a")
        installer = await as_user(client, "installer_a")
        admin = await login(client)
        for action, form in FORM.items():
            alert_id = uuid.uuid4().hex
            ingest(
                database_url,
                alert(site.gateway, alert_id, unit_id=f"9-{uuid.uuid4().hex[:6]}"),
            )
            # Wrong role and other street office: refused in any state.
            for who, code in ((prop, 403), (installer, 403), (other_office, 403)):
                r = await step(client, who, alert_id, action, **form)
                assert r.status_code == code, (action, r.text)
            r = await step(client, {}, alert_id, action, **form)
            assert r.status_code == 401
            # Wrong state.
            for earlier in WRONG_STATE[action]:
                r = await step(client, officer, alert_id, earlier, **FORM[earlier])
                assert r.status_code == 200, (earlier, r.text)
            r = await step(client, officer, alert_id, action, **form)
            assert r.status_code == 409, (action, r.text)
            # Nothing changed: the timeline has only the steps that were allowed.
            r = await client.get(f"/api/alerts/{alert_id}/case", headers=admin)
            assert [e["action"] for e in r.json()["timeline"]] == ["raised", *WRONG_STATE[action]]

        # Bad input is refused with a clear error and changes nothing.
        alert_id = uuid.uuid4().hex
        ingest(database_url, alert(site.gateway, alert_id, unit_id="8-801"))
        assert (await step(client, officer, alert_id, "acknowledge")).status_code == 200
        r = await step(client, officer, alert_id, "dispatch")
        assert r.status_code == 422 and "assignee" in r.text
        past = (utcnow() - timedelta(hours=1)).isoformat()
        r = await step(client, officer, alert_id, "dispatch", assignee="王五", due_at=past)
        assert r.status_code == 422
        r = await step(
            client,
            officer,
            alert_id,
            "dispatch",
            [("photos", ("x.png", b"GIF89a not a png", "image/png"))],
            assignee="王五",
        )
        assert r.status_code == 422 and "JPEG or PNG" in r.text
        big = PNG + b"\x00" * settings.photo_max_bytes
        r = await step(
            client,
            officer,
            alert_id,
            "dispatch",
            [("photos", ("big.png", big, "image/png"))],
            assignee="王五",
        )
        assert r.status_code == 413
        assert (
            await step(client, officer, alert_id, "dispatch", assignee="王五")
        ).status_code == 200
        r = await step(client, officer, alert_id, "false_alarm")
        assert r.status_code == 422 and "comment" in r.text
        r = await client.get(f"/api/alerts/{alert_id}/case", headers=officer)
        assert r.json()["status"] == "dispatched"
        assert r.json()["photos"] == []
        # An alert that does not exist.
        assert (await step(client, officer, "nope", "acknowledge")).status_code == 404


async def test_episodes_attach_to_the_open_case_and_a_relapse_is_recurring(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        officer = await as_user(client, "officer_a")
        first, second, third = (uuid.uuid4().hex for _ in range(3))
        t = utcnow()
        # Evening one: raised and cleared. Evening two on the same flat: a new episode.
        ingest(
            database_url,
            alert(site.gateway, first, ts=t),
            alert(
                site.gateway,
                first,
                change=Change.CLEARED,
                ts=t + timedelta(hours=3),
                cleared_at=t + timedelta(hours=3),
            ),
            alert(site.gateway, second, ts=t + timedelta(days=1), severity=Severity.HIGH),
        )
        r = await client.get("/api/alerts", headers=officer, params={"kind": "ebike_charging"})
        assert [a["alert_id"] for a in r.json()["items"]] == [first]
        r = await client.get(f"/api/alerts/{first}/case", headers=officer)
        case = r.json()
        assert case["episodes"] == 2
        assert case["state"] == "open"  # the second episode is still going
        assert case["severity"] == "high"
        assert case["recurring"] is False
        assert [e["action"] for e in case["timeline"]] == ["raised", "cleared", "reraised"]
        # Another kind on the same flat is another case.
        ingest(database_url, alert(site.gateway, uuid.uuid4().hex, kind=AlertKind.OVERLOAD))

        for action in ("acknowledge", "dispatch", "false_alarm", "close"):
            form = {"assignee": "王五", "comment": "已办"}
            assert (await step(client, officer, first, action, **form)).status_code == 200
        # A late update of the closed case's episode changes nothing; a new episode starts a
        # new case, marked recurring (回潮): the flat had a case closed within 90 days.
        ingest(
            database_url,
            alert(site.gateway, second, change=Change.UPDATED, ts=t + timedelta(days=1, hours=1)),
            alert(site.gateway, third, ts=t + timedelta(days=2)),
        )
        r = await client.get(f"/api/alerts/{third}/case", headers=officer)
        assert r.status_code == 200, r.text
        assert r.json()["recurring"] is True
        assert r.json()["status"] == "new"
        r = await client.get(f"/api/alerts/{first}/case", headers=officer)
        assert r.json()["status"] == "closed"
        assert r.json()["episodes"] == 2


@pytest.mark.parametrize("who", ["officer_b"])
async def test_other_street_office_cannot_read_the_case_or_the_flat(
    mqtt_broker: BrokerEndpoint, database_url: str, who: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        site = seed_site(database_url)
        alert_id = uuid.uuid4().hex
        ingest(database_url, alert(site.gateway, alert_id))
        other = await as_user(client, who)
        assert (await client.get(f"/api/alerts/{alert_id}/case", headers=other)).status_code == 403
        assert (
            await client.get(f"/api/flats/{site.flat_id}/file", headers=other)
        ).status_code == 403
        r = await client.post(
            f"/api/alerts/{alert_id}/comments", headers=other, data={"comment": "x"}
        )
        assert r.status_code == 403
