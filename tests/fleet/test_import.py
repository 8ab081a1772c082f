"""CSV import of the site register, through the API and the CLI, with real-world files."""

from __future__ import annotations

import codecs
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from fleet.db import migrate, utcnow
from fleet.desired import refresh
from fleet.models import (
    AuditEntry,
    BrokerAccount,
    Building,
    CardRegistration,
    Compound,
    DesiredConfigRow,
    Entrance,
    Flat,
    Gateway,
)
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import fleet_client, login, make_settings
from tests.fleet.sites_helpers import engine_sessions, seeded

REPO = Path(__file__).resolve().parents[2]

COMPOUNDS = """区,街道,小区名称,小区编码,地址
普陀区,长征镇,阳光花园,YG01,梅川路 1 号
 普陀区 , 长征镇 ,  绿地小区 ,LD02,\t
"""

FLATS = """小区编码,楼栋,单元,户号,楼层,面积（㎡）*,房间数,登记人数,额定电流(A)
YG01,1号楼,1单元,1-201,2,85.5㎡,3,2,40A
YG01,1号楼,1单元,1-202,2,60,2,1,32

YG01,2号楼,,2-101,1,120,4,5,63
"""


def _upload(name: str, body: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, body, "text/csv")}


def _counts(database_url: str) -> dict[str, int]:
    with engine_sessions(database_url) as sessions, sessions() as session:
        return {
            model.__tablename__: session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
            for model in (Compound, Building, Entrance, Flat, CardRegistration)
        }


async def _import(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, body: bytes, **params: str
) -> httpx.Response:
    return await client.post(
        "/api/import", headers=headers, files=_upload(name, body), params=params
    )


async def test_import_real_world_files_all_or_nothing(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        admin = await login(client)
        # Excel's "CSV UTF-8" writes a BOM; surrounding whitespace and blank lines are common.
        r = await _import(client, admin, "compounds.csv", codecs.BOM_UTF8 + COMPOUNDS.encode())
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "compounds"
        assert r.json()["created"] == {"district": 1, "street_office": 1, "compound": 2}

        # Excel in a Chinese locale saves "CSV" as GBK, with full-width brackets and units.
        r = await _import(client, admin, "flats.csv", FLATS.encode("gbk"))
        assert r.status_code == 200, r.text
        assert r.json()["created"] == {"building": 2, "entrance": 1, "flat": 3}
        r = await client.get("/api/flats", headers=admin, params={"unit_id": "1-201"})
        flat = r.json()["items"][0]
        assert (flat["area_m2"], flat["rooms"], flat["registered_occupants"]) == (85.5, 3, 2)
        assert flat["rated_current_a"] == 40.0 and flat["floor"] == 2

        # The same file again changes nothing: re-importing is harmless.
        before = _counts(database_url)
        r = await _import(client, admin, "flats.csv", FLATS.encode("gbk"))
        assert r.status_code == 200 and r.json()["created"] == {} and r.json()["updated"] == {}
        assert _counts(database_url) == before

        # One bad row anywhere and nothing at all is written; every bad row is reported.
        bad = (
            "Compound Code, Building ,Unit,Area,Rooms\n"
            "YG01,3号楼,3-101,70,2\n"
            "YG01,3号楼,3-102,seventy,2\n"
            "NOPE,1号楼,9-999,50,1\n"
            "YG01,3号楼,3-101,70,2\n"
            "YG01,3号楼,3-103,70,2.5\n"
        )
        r = await _import(client, admin, "bad.csv", bad.encode())
        assert r.status_code == 422
        report = r.json()
        assert report["kind"] == "flats" and report["rows"] == 5
        errors = [(e["row"], e["column"]) for e in report["errors"]]
        assert errors == [(3, "Area"), (4, "Compound Code"), (5, "Unit"), (6, "Rooms")]
        for e in report["errors"]:
            assert e["message_zh"] and e["message_en"]
        assert "seventy" in report["errors"][0]["message_zh"]
        assert "duplicates line 2" in report["errors"][2]["message_en"]
        assert _counts(database_url) == before  # building 3号楼 and flat 3-101 were not kept

        # A dry run checks a good file and writes nothing.
        good = "Compound Code,Building,Unit\nYG01,3号楼,3-101\n"
        r = await _import(client, admin, "good.csv", good.encode(), dry_run="true")
        assert r.status_code == 200 and r.json()["created"] == {"building": 1, "flat": 1}
        assert _counts(database_url) == before

        # UTF-16 with tabs ("Unicode text" from Excel), English headers.
        cards = (
            "compound\tbuilding\tunit_id\tcard\tholder\n阳光花园\t1号楼\t1-201\t"
            + "AB" * 16
            + "\t张三\n"
        )
        r = await _import(client, admin, "cards.txt", cards.encode("utf-16"))
        assert r.status_code == 200, r.text
        assert r.json()["created"] == {"card_registration": 1}
        r = await client.get("/api/cards", headers=admin)
        assert [c["card"] for c in r.json()["items"]] == ["ab" * 16]  # stored lower case


async def test_import_refuses_card_numbers_and_unknown_columns(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        admin = await login(client)
        await _import(client, admin, "c.csv", COMPOUNDS.encode())
        await _import(client, admin, "f.csv", FLATS.encode())
        r = await _import(
            client,
            admin,
            "cards.csv",
            "小区编码,楼栋,户号,卡号伪名\nYG01,1号楼,1-201,0012345678\n".encode(),
        )
        assert r.status_code == 422
        [error] = r.json()["errors"]
        assert error["row"] == 2 and error["column"] == "卡号伪名"
        assert (
            "不能填写卡号" in error["message_zh"] and "never the card number" in error["message_en"]
        )

        r = await _import(
            client, admin, "f.csv", "小区编码,楼栋,户号,面基\nYG01,1号楼,1-203,50\n".encode()
        )
        assert r.status_code == 422
        assert r.json()["errors"][0]["column"] == "面基"  # a misspelt column is not silently lost
        r = await _import(client, admin, "x.csv", b"\xff\xfe\x00")
        assert r.status_code == 422
        r = await _import(client, admin, "empty.csv", b"\n\n")
        assert r.status_code == 422 and r.json()["errors"][0]["message_en"]


async def test_import_is_limited_to_the_callers_compounds(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        rows = "小区编码,楼栋,户号\nC-A,1号楼,1-301\nC-B,1号楼,1-301\n".encode()
        r = await _import(client, seed.auth("installer", "a"), "f.csv", rows)
        assert r.status_code == 422
        [error] = r.json()["errors"]
        assert error["row"] == 3 and "outside your compounds" in error["message_en"]
        r = await _import(client, seed.auth("officer", "a"), "f.csv", rows)
        assert r.status_code == 403
        r = await _import(client, seed.auth("property", "a"), "c.csv", COMPOUNDS.encode())
        assert r.status_code == 403  # new compounds are for admins
        r = await _import(
            client,
            seed.auth("property", "a"),
            "f.csv",
            rows.splitlines(True)[0] + rows.splitlines(True)[1],
        )
        assert r.status_code == 200, r.text
        # One audit entry per compound touched, readable by that compound's users.
        r = await client.get(
            "/api/audit", headers=seed.auth("officer", "a"), params={"entity": "flats"}
        )
        [entry] = r.json()["items"]
        assert entry["action"] == "import" and entry["actor"] == "property_a"
        assert entry["compound_id"] == seed.a.compound
        assert entry["summary"]["created"] == {"flat": 1}
        r = await client.get(
            "/api/audit", headers=seed.auth("officer", "b"), params={"entity": "flats"}
        )
        assert r.json()["items"] == []


def test_cli_import_reports_errors_by_line_and_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    env = {"PATH": "/usr/bin:/bin", "FLEET_DATABASE_URL": url}
    compounds = tmp_path / "compounds.csv"
    compounds.write_bytes(codecs.BOM_UTF8 + COMPOUNDS.encode())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleet", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    result = run("import", str(compounds))
    assert result.returncode == 2 and "db upgrade" in result.stderr  # no schema yet
    migrate(url)
    result = run("import", str(compounds))
    assert result.returncode == 0, result.stderr
    assert "compound 2" in result.stdout
    flats = tmp_path / "flats.csv"
    flats.write_bytes((FLATS + "YG01,9号楼,,9-101,1,abc,1,1,1\n").encode("gbk"))
    result = run("import", str(flats))
    assert result.returncode == 1
    assert "未导入任何数据" in result.stderr and "第 6 行 [面积（㎡）*]" in result.stderr
    result = run("import", "--lang", "en", str(flats))
    assert "line 6" in result.stderr and "'abc' is not a number" in result.stderr
    assert "Traceback" not in result.stderr
    assert _counts(url)["flats"] == 0
    with engine_sessions(url) as sessions, sessions() as session:
        actors = set(session.scalars(sa.select(AuditEntry.actor)))
    assert actors == {"cli"}


def test_cli_import_reassembles_the_desired_config_of_the_gateways_it_concerns(
    tmp_path: Path,
) -> None:
    """No publisher runs in the import command: it stores the new desired configs, which the
    running fleet manager then publishes (the row is left unpublished for it)."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    env = {"PATH": "/usr/bin:/bin", "FLEET_DATABASE_URL": url}
    migrate(url)

    def run(name: str, body: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return subprocess.run(
            [sys.executable, "-m", "fleet", "import", str(path)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert run("compounds.csv", COMPOUNDS).returncode == 0
    assert run("flats.csv", FLATS).returncode == 0
    now = utcnow()
    with engine_sessions(url) as sessions, sessions() as session, session.begin():
        entrances = {
            (b, e): i
            for i, b, e in session.execute(
                sa.select(Entrance.id, Building.name, Entrance.name).join(
                    Building, Building.id == Entrance.building_id
                )
            )
        }
        for gw, entrance in (("gw-1", entrances[("1号楼", "1单元")]), ("gw-2", None)):
            session.add(Gateway(gateway_id=gw, entrance_id=entrance, first_seen=now))
            session.flush()
            session.add(BrokerAccount(gateway_id=gw, username=gw, mode="none", created_at=now))
        for gw in ("gw-1", "gw-2"):
            row = refresh(session, gw, timezone="Asia/Shanghai")
            assert row is not None
            row.published_version = row.version
    before = _desired(url)

    result = run("more.csv", FLATS.splitlines()[0] + "\nYG01,1号楼,1单元,1-301,3,70,2,2,40\n")
    assert result.returncode == 0, result.stderr
    assert "desired config changed for 1 gateway(s): gw-1" in result.stdout
    after = _desired(url)
    assert after["gw-1"][0] == before["gw-1"][0] + 1  # a new version, not yet published
    assert after["gw-1"][1] == before["gw-1"][0]
    assert "1-301" in json.dumps(after["gw-1"][2], ensure_ascii=False)
    assert after["gw-2"][:2] == before["gw-2"][:2]  # another entrance's gateway: untouched


def _desired(url: str) -> dict[str, tuple[int, int | None, Any]]:
    with engine_sessions(url) as sessions, sessions() as session:
        return {
            row.gateway_id: (row.version, row.published_version, row.config)
            for row in session.scalars(sa.select(DesiredConfigRow))
        }
