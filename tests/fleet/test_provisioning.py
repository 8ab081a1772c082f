"""Provisioning against the embedded broker with its auth plugin (and the fleet's database):
one-time codes, enrollment, per-gateway isolation, replacement, desired config.

The same scenarios run against a private Mosquitto with dynamic security in
``test_dynsec.py``; the helpers here are shared with it. Every test acts as a gateway with a
real MQTT client using the credentials the enrollment handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import segno
import sqlalchemy as sa
from paho.mqtt.reasoncodes import ReasonCode

from contract.control import DesiredConfig, config_hash
from contract.messages import ConfigState, encode, new_message_id
from contract.topics import Down, Up, down, up
from edge_agent.config import AgentConfig
from fleet.app import create_app
from fleet.auth import hash_password
from fleet.db import make_engine, make_sessionmaker, migrate, utcnow
from fleet.models import (
    Alert,
    AuditEntry,
    Building,
    CardRegistration,
    Compound,
    Device,
    District,
    EnrollmentCode,
    Entrance,
    Flat,
    MeterReading,
    StreetOffice,
    User,
    user_compounds,
)
from fleet.settings import Settings
from tests.conftest import BrokerEndpoint, free_port, wait_for_port
from tests.fleet.helpers import (
    T0,
    alert,
    envelope,
    eventually,
    fleet_client,
    login,
    make_settings,
    telemetry,
    wire,
)

CODE_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")
SERVICE_USER, SERVICE_PASSWORD = "fleet-svc", "svc-pass-0123456789abcdef"
INSTALLER_PASSWORD = "installer-pass-123"


# --- Site register -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteIds:
    compound_id: int
    other_compound_id: int
    building_id: int
    entrance_id: int
    other_entrance_id: int
    flat_ids: dict[str, int]


def make_site(database_url: str) -> SiteIds:
    """Two compounds; in the first a building with one entrance and three flats, cards for
    one of them; installer ``inst`` works in the first, ``officer`` is an officer there too."""
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            district = District(name="普陀区")
            session.add(district)
            session.flush()
            office = StreetOffice(district_id=district.id, name="长风街道")
            session.add(office)
            session.flush()
            compound = Compound(street_office_id=office.id, name="长风一村", code="cf1")
            other = Compound(street_office_id=office.id, name="长风二村", code="cf2")
            session.add_all([compound, other])
            session.flush()
            building = Building(compound_id=compound.id, name="3号楼")
            other_building = Building(compound_id=other.id, name="1号楼")
            session.add_all([building, other_building])
            session.flush()
            entrance = Entrance(building_id=building.id, name="1单元")
            other_entrance = Entrance(building_id=other_building.id, name="1单元")
            session.add_all([entrance, other_entrance])
            session.flush()
            flats = {
                unit: Flat(
                    building_id=building.id,
                    entrance_id=entrance.id,
                    unit_id=unit,
                    area_m2=60.0,
                    rooms=2,
                    registered_occupants=2,
                    rated_current_a=40.0,
                )
                for unit in ("3-101", "3-201", "3-301")
            }
            session.add_all(flats.values())
            session.flush()
            session.add(
                CardRegistration(flat_id=flats["3-201"].id, card="ab" * 16, created_at=utcnow())
            )
            for name, role in (("inst", "installer"), ("officer", "officer"), ("pm", "property")):
                user = User(
                    username=name,
                    password_hash=hash_password(INSTALLER_PASSWORD),
                    created_at=utcnow(),
                    role=role,
                )
                session.add(user)
                session.flush()
                session.execute(
                    sa.insert(user_compounds).values(user_id=user.id, compound_id=compound.id)
                )
            return SiteIds(
                compound.id,
                other.id,
                building.id,
                entrance.id,
                other_entrance.id,
                {u: f.id for u, f in flats.items()},
            )
    finally:
        engine.dispose()


def add_device(database_url: str, **values: Any) -> None:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            session.add(Device(**values))
    finally:
        engine.dispose()


def query(database_url: str, stmt: sa.Select[Any]) -> list[Any]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(stmt).all())
    finally:
        engine.dispose()


async def login_as(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    r = await client.post("/api/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


# --- Brokers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_auth_broker(tmp_path: Path) -> Iterator[tuple[BrokerEndpoint, Path]]:
    """``fleet-manager broker --auth-file``: a private embedded broker that checks logins."""
    port = free_port()
    auth_file = tmp_path / "broker-credentials.json"
    log = (tmp_path / "broker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.broker", "--port", str(port), "--auth-file", str(auth_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for_port("127.0.0.1", port):
            pytest.fail("embedded broker with --auth-file did not start")
        yield BrokerEndpoint("127.0.0.1", port, "embedded"), auth_file
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def service_url(broker: BrokerEndpoint, user: str, password: str) -> str:
    return f"mqtt://{user}:{password}@{broker.host}:{broker.port}"


# --- Acting as a gateway -----------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolled:
    gateway_id: str
    username: str
    password: str
    site_key: str
    desired: DesiredConfig | None


async def create_gateway(
    client: httpx.AsyncClient, headers: dict[str, str], entrance_id: int, gateway_id: str
) -> dict[str, Any]:
    r = await client.post(
        "/api/provisioning/gateways",
        json={"entrance_id": entrance_id, "gateway_id": gateway_id},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def enroll(client: httpx.AsyncClient, code: str) -> Enrolled:
    r = await client.post(
        "/api/enroll", json={"code": code, "hostname": "pi-test", "agent_version": "0.1.0"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return Enrolled(
        gateway_id=body["gateway_id"],
        username=body["mqtt"]["username"],
        password=body["mqtt"]["password"],
        site_key=body["site_key"],
        desired=DesiredConfig.model_validate(body["desired"]) if body["desired"] else None,
    )


async def enrolled_with_meter(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    database_url: str,
    site: SiteIds,
    gateway_id: str,
    meter_id: str,
) -> Enrolled:
    """A gateway created at the site's entrance with one meter (flat 3-201), then enrolled."""
    created = await create_gateway(client, headers, site.entrance_id, gateway_id)
    await asyncio.to_thread(
        add_device,
        database_url,
        compound_id=site.compound_id,
        gateway_id=gateway_id,
        kind="meter",
        device_id=meter_id,
        flat_id=site.flat_ids["3-201"],
        params={"slave": 1, "url": "/dev/ttyUSB0"},
    )
    return await enroll(client, created["code"])


async def config_reported(
    client: httpx.AsyncClient, headers: dict[str, str], gateway_id: str
) -> dict[str, Any]:
    """The gateway's config page at the fleet, once it shows the gateway's first report."""

    async def reported() -> dict[str, Any] | None:
        r = await client.get(f"/api/provisioning/gateways/{gateway_id}/config", headers=headers)
        body: dict[str, Any] = r.json()
        return body if body["applied"] else None

    return await eventually(reported, "the gateway's config report")


def gateway_client(
    broker: BrokerEndpoint, creds: Enrolled, *, password: str | None = None, v5: bool = False
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=creds.username,
        password=password if password is not None else creds.password,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        identifier=f"{creds.gateway_id}-{new_message_id()[:6]}",
    )


def refused(granted: Any) -> bool:
    return all((c.is_failure if isinstance(c, ReasonCode) else int(c) >= 0x80) for c in granted)


async def readings_of(database_url: str, gateway_id: str) -> int:
    rows = await asyncio.to_thread(
        query,
        database_url,
        sa.select(sa.func.count())
        .select_from(MeterReading)
        .where(MeterReading.gateway_id == gateway_id),
    )
    return int(rows[0][0])


async def retained_config(
    broker: BrokerEndpoint, creds: Enrolled, *, v5: bool = False, min_version: int = 1
) -> DesiredConfig:
    """Subscribe as the gateway and read the retained desired config (at least
    ``min_version``)."""
    async with gateway_client(broker, creds, v5=v5) as c:
        assert not refused(await c.subscribe(down(creds.gateway_id, Down.CONFIG), qos=1))
        async with asyncio.timeout(20):
            async for message in c.messages:
                desired = DesiredConfig.model_validate_json(message.payload)  # type: ignore[arg-type]
                if desired.version >= min_version:
                    return desired
    raise AssertionError("no retained config")


# --- Scenarios (shared with test_dynsec.py) ----------------------------------------------------


async def scenario_isolation(
    client: httpx.AsyncClient, broker: BrokerEndpoint, database_url: str, site: SiteIds, *, v5: bool
) -> None:
    """An enrolled gateway publishes its own telemetry (stored); under another gateway's prefix
    nothing arrives; subscribing to another's config is refused; a wrong password is refused."""
    admin = await login(client)
    gw_a = f"gw-a-{new_message_id()[:8]}"
    gw_b = f"gw-b-{new_message_id()[:8]}"
    a = await enroll(client, (await create_gateway(client, admin, site.entrance_id, gw_a))["code"])
    b = await enroll(client, (await create_gateway(client, admin, site.entrance_id, gw_b))["code"])
    assert (a.gateway_id, a.username) == (gw_a, gw_a)
    assert a.password != b.password and len(a.password) >= 32

    async with gateway_client(broker, a, v5=v5) as c:
        # Under B's prefix first, then its own: once its own is stored, the forged one (sent
        # earlier on the same connection) has been dropped, not merely delayed.
        forged_topic, forged_payload = wire(telemetry(gw_b, "m-forged"))
        await c.publish(forged_topic, forged_payload, qos=1)
        await c.publish(*wire(telemetry(gw_a, "m-1")), qos=1)
        # Subscribing to B's config (or everyone's downlink) is refused.
        assert refused(await c.subscribe(down(gw_b, Down.CONFIG), qos=1))
        assert refused(await c.subscribe("edge/v1/+/down/#", qos=1))
        assert not refused(await c.subscribe(down(gw_a, Down.CONFIG), qos=1))

    async def stored() -> int:
        return await readings_of(database_url, gw_a)

    assert await eventually(stored, "A's own telemetry stored") == 3
    assert await readings_of(database_url, gw_b) == 0

    with pytest.raises(aiomqtt.MqttError):
        async with gateway_client(broker, a, password="not-the-password", v5=v5) as c:
            await c.publish(*wire(telemetry(gw_a, "m-2")), qos=1)


async def scenario_replacement(
    client: httpx.AsyncClient, broker: BrokerEndpoint, database_url: str, site: SiteIds, *, v5: bool
) -> None:
    """Replacing a gateway revokes its credentials (a new connection is refused, the open one
    loses its rights), and moves devices and history to the new gateway, audited."""
    admin = await login(client)
    old_id = f"gw-old-{new_message_id()[:8]}"
    old = await enrolled_with_meter(client, admin, database_url, site, old_id, f"m-{old_id}")
    async with gateway_client(broker, old, v5=v5) as c:
        await c.publish(*wire(telemetry(old_id, "m-1")), qos=1)
        await c.publish(*wire(alert(old_id, f"al-{old_id}")), qos=1)

    async def stored() -> bool:
        return await readings_of(database_url, old_id) == 3 and bool(
            await asyncio.to_thread(
                query, database_url, sa.select(Alert.alert_id).where(Alert.gateway_id == old_id)
            )
        )

    await eventually(stored, "the old gateway's history")

    pm = await login_as(client, "pm", INSTALLER_PASSWORD)  # a property company replaces
    new_id = f"gw-new-{new_message_id()[:8]}"
    # The old gateway is still connected while it is replaced; what it sends afterwards on
    # that connection must not arrive (dynsec drops the connection, the embedded broker's
    # topic check refuses the publish).
    with contextlib.suppress(aiomqtt.MqttError):
        async with gateway_client(broker, old, v5=v5) as live:
            r = await client.post(
                f"/api/provisioning/gateways/{old_id}/replace",
                json={"new_gateway_id": new_id, "reason": "进水损坏 water damage"},
                headers=pm,
            )
            await live.publish(*wire(telemetry(old_id, "m-late")), qos=0)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["new_gateway_id"] == new_id
    moved = body["moved"]
    assert (moved["devices"], moved["meter_readings"], moved["alerts"]) == (1, 3, 1)
    assert (moved["card_swipes"], moved["charging_events"]) == (0, 0)
    assert CODE_RE.match(body["enrollment"]["code"])

    # The old credentials no longer log in.
    with pytest.raises(aiomqtt.MqttError):
        async with gateway_client(broker, old, v5=v5) as c:
            await c.publish(*wire(telemetry(old_id, "m-9")), qos=1)
    # History and devices are the new gateway's.
    assert await readings_of(database_url, old_id) == 0
    assert await readings_of(database_url, new_id) == 3
    devices = await asyncio.to_thread(
        query, database_url, sa.select(Device.gateway_id).where(Device.device_id == f"m-{old_id}")
    )
    assert devices == [(new_id,)]
    audited = await asyncio.to_thread(
        query,
        database_url,
        sa.select(AuditEntry.actor, AuditEntry.summary).where(
            AuditEntry.entity == "gateway_replacement", AuditEntry.entity_id == old_id
        ),
    )
    assert len(audited) == 1 and audited[0][0] == "pm"
    assert audited[0][1]["new_gateway_id"] == new_id

    # The old gateway left the entrance (so the property company no longer sees it); replacing
    # it twice is refused, and it gets no new code.
    r = await client.get(f"/api/provisioning/gateways/{old_id}", headers=admin)
    assert r.json()["replaced_by"] == new_id and r.json()["enrolled"] is False
    r = await client.post(f"/api/provisioning/gateways/{old_id}/replace", json={}, headers=admin)
    assert r.status_code == 409
    r = await client.post(f"/api/provisioning/gateways/{old_id}/code", headers=admin)
    assert r.status_code == 409

    # The new gateway enrolls with its code and publishes.
    new = await enroll(client, body["enrollment"]["code"])
    async with gateway_client(broker, new, v5=v5) as c:
        await c.publish(*wire(telemetry(new_id, "m-2")), qos=1)

    async def new_stored() -> bool:
        return await readings_of(database_url, new_id) == 6

    await eventually(new_stored, "the new gateway's telemetry")
    late = await asyncio.to_thread(
        query,
        database_url,
        sa.select(sa.func.count())
        .select_from(MeterReading)
        .where(MeterReading.meter_id == "m-late"),
    )
    assert late == [(0,)]


async def scenario_desired_config(
    client: httpx.AsyncClient, broker: BrokerEndpoint, database_url: str, site: SiteIds, *, v5: bool
) -> None:
    """The config is assembled from the register, published retained, versioned by hash; a
    pushed config the gateway rejects shows its reason at the fleet manager."""
    admin = await login(client)
    gw = f"gw-cfg-{new_message_id()[:8]}"
    created = await create_gateway(client, admin, site.entrance_id, gw)
    for values in (
        {
            "kind": "meter",
            "device_id": f"{gw}-m1",
            "flat_id": site.flat_ids["3-201"],
            "params": {"slave": 3, "url": "/dev/ttyUSB0", "profile": "sdm120"},
        },
        {
            "kind": "meter",
            "device_id": f"{gw}-m2",
            "flat_id": site.flat_ids["3-301"],
            "params": {"protocol": "dlt645", "address": "000000123456", "url": "/dev/ttyUSB1"},
        },
        {
            "kind": "charging_sensor",
            "device_id": f"{gw}-s1",
            "location": "stairwell",
            "params": {"mac": "AA:BB:CC:DD:EE:01"},
        },
        {"kind": "card_reader", "device_id": f"{gw}-r1", "params": {"url": "/dev/ttyAMA0"}},
        {"kind": "meter", "device_id": f"{gw}-m3", "params": {}},  # no slave: a problem
    ):
        await asyncio.to_thread(
            add_device, database_url, compound_id=site.compound_id, gateway_id=gw, **values
        )
    enrolled = await enroll(client, created["code"])
    assert enrolled.desired is not None and enrolled.desired.version == 1
    config = enrolled.desired.config
    assert enrolled.desired.hash == config_hash(config)
    # The register's mapping: which slave/address is which flat, which sensor is where.
    assert config["modbus"] == [
        {
            "transport": "rtu",
            "url": "/dev/ttyUSB0",
            "meters": [{"meter_id": f"{gw}-m1", "slave": 3, "profile": "sdm120"}],
        }
    ]
    assert config["dlt645"] == [
        {"url": "/dev/ttyUSB1", "meters": [{"meter_id": f"{gw}-m2", "address": "000000123456"}]}
    ]
    site_cfg = config["site"]
    assert site_cfg["site_id"] == "cf1"
    assert {u["unit_id"] for u in site_cfg["units"]} == {"3-101", "3-201", "3-301"}
    assert site_cfg["meters"] == [
        {"meter_id": f"{gw}-m1", "unit_id": "3-201"},
        {"meter_id": f"{gw}-m2", "unit_id": "3-301"},
    ]
    assert site_cfg["sensors"] == [
        {"sensor_id": f"{gw}-s1", "location": "stairwell", "building": "3号楼"}
    ]
    assert site_cfg["readers"] == [{"reader_id": f"{gw}-r1", "building": "3号楼"}]
    assert site_cfg["cards"] == [{"card": "ab" * 16, "unit_id": "3-201"}]
    assert config["rules"]["overload"]["sustain_s"] == 300.0  # documented default
    # The agent's own config model accepts it (identity and credentials come from enrollment).
    AgentConfig.model_validate({"gateway_id": gw, "site_key": enrolled.site_key, **config})

    state = (await client.get(f"/api/provisioning/gateways/{gw}/config", headers=admin)).json()
    assert any(f"{gw}-m3" in p and "slave" in p for p in state["desired"]["problems"])

    # Published retained: the gateway reads it on subscribing.
    retained = await retained_config(broker, enrolled, v5=v5)
    assert (retained.version, retained.hash) == (1, enrolled.desired.hash)

    # A mapping change through the register's API (a meter added for flat 3-101) is published
    # as the next version without anyone asking.
    r = await client.post(
        "/api/devices",
        json={
            "compound_id": site.compound_id,
            "kind": "meter",
            "device_id": f"{gw}-m4",
            "gateway_id": gw,
            "flat_id": site.flat_ids["3-101"],
            "params": {"slave": 4, "url": "/dev/ttyUSB0", "profile": "sdm120"},
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    mapped = await retained_config(broker, enrolled, v5=v5, min_version=2)
    assert mapped.version == 2
    assert {"meter_id": f"{gw}-m4", "unit_id": "3-101"} in mapped.config["site"]["meters"]
    assert [m["slave"] for m in mapped.config["modbus"][0]["meters"]] == [3, 4]

    # A threshold change for the compound is a new version; the same again is not.
    r = await client.put(
        f"/api/provisioning/compounds/{site.compound_id}/rules",
        json={"overload": {"sustain_s": 600}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["effective"]["overload"]["sustain_s"] == 600.0
    retained = await retained_config(broker, enrolled, v5=v5, min_version=3)
    assert retained.version == 3
    assert retained.config["rules"]["overload"]["sustain_s"] == 600.0
    r = await client.post(f"/api/provisioning/gateways/{gw}/config/refresh", headers=admin)
    assert r.json()["desired"]["version"] == 3  # unchanged hash, unchanged version

    # An admin pushes a config the gateway will refuse.
    bad = {"modbus": [{"transport": "rtu", "meters": []}]}
    r = await client.put(
        f"/api/provisioning/gateways/{gw}/config/override", json={"config": bad}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["desired"]["version"] == 4 and r.json()["desired"]["source"] == "override"
    pushed = await retained_config(broker, enrolled, v5=v5, min_version=4)
    assert pushed.config == bad
    reason = "modbus.0.meters: List should have at least 1 item after validation"
    async with gateway_client(broker, enrolled, v5=v5) as c:
        report = ConfigState(
            **envelope(gw, seq=5, ts=T0 + timedelta(minutes=5)),
            status="rejected",
            version=pushed.version,
            hash=pushed.hash,
            applied_version=3,
            applied_hash=retained.hash,
            reason=reason,
        )
        await c.publish(up(gw, Up.CONFIG_STATE), encode(report), qos=1)

    body = await config_reported(client, admin, gw)
    assert body["drift"] == "rejected" and body["in_sync"] is False
    assert body["applied"]["last_rejection_reason"] == reason
    assert body["applied"]["applied_version"] == 3
    assert body["desired"]["version"] == 4

    # Back to the register: the gateway applies it and the fleet shows it in sync.
    r = await client.delete(f"/api/provisioning/gateways/{gw}/config/override", headers=admin)
    desired = r.json()["desired"]
    assert desired["source"] == "site" and desired["version"] == 5
    async with gateway_client(broker, enrolled, v5=v5) as c:
        report = ConfigState(
            **envelope(gw, seq=6, ts=T0 + timedelta(minutes=6)),
            status="applied",
            version=5,
            hash=desired["hash"],
            applied_version=5,
            applied_hash=desired["hash"],
        )
        await c.publish(up(gw, Up.CONFIG_STATE), encode(report), qos=1)

    async def synced() -> bool:
        r = await client.get(f"/api/provisioning/gateways/{gw}/config", headers=admin)
        return bool(r.json()["in_sync"])

    await eventually(synced, "config in sync")
    r = await client.get(f"/api/provisioning/gateways/{gw}/config", headers=admin)
    assert r.json()["drift"] == "in_sync"
    assert r.json()["applied"]["last_rejection_reason"] == reason  # kept for the record


# --- Embedded broker runs ----------------------------------------------------------------------


@pytest.fixture
async def embedded(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, BrokerEndpoint, str, SiteIds]]:
    site = await asyncio.to_thread(make_site, database_url)
    with embedded_auth_broker(tmp_path) as (broker, auth_file):
        settings = make_settings(
            broker,
            database_url,
            mqtt_url=service_url(broker, SERVICE_USER, SERVICE_PASSWORD),
            broker_auth="embedded",
            broker_auth_file=auth_file,
            config_publish_retry_s=2.0,
        )
        async with fleet_client(settings) as client:
            yield client, broker, database_url, site


async def test_embedded_isolation(embedded: Any) -> None:
    client, broker, database_url, site = embedded
    await scenario_isolation(client, broker, database_url, site, v5=False)


async def test_embedded_replacement(embedded: Any) -> None:
    client, broker, database_url, site = embedded
    await scenario_replacement(client, broker, database_url, site, v5=False)


async def test_embedded_desired_config(embedded: Any) -> None:
    client, broker, database_url, site = embedded
    await scenario_desired_config(client, broker, database_url, site, v5=False)


async def test_a_stale_retained_config_is_replaced_once_the_gateway_reports_it(
    embedded: Any,
) -> None:
    """Two fleet processes can race: one publishes version 2 and records it, the other then
    publishes the version 1 it had read, and the broker keeps that one retained. When the
    gateway reports version 1, the fleet publishes version 2 again."""
    client, broker, database_url, site = embedded
    admin = await login(client)
    gw = f"gw-race-{new_message_id()[:8]}"
    enrolled = await enrolled_with_meter(client, admin, database_url, site, gw, f"{gw}-m1")
    first = enrolled.desired
    assert first is not None and first.version == 1
    r = await client.put(
        f"/api/provisioning/compounds/{site.compound_id}/rules",
        json={"overload": {"sustain_s": 420}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    newest = await retained_config(broker, enrolled, min_version=2)
    assert newest.version == 2

    # The lagging publisher: version 1, retained, after version 2 was recorded as published.
    async with aiomqtt.Client(
        broker.host, broker.port, username=SERVICE_USER, password=SERVICE_PASSWORD
    ) as service:
        await service.publish(down(gw, Down.CONFIG), first.model_dump_json(), qos=1, retain=True)
    stale = await retained_config(broker, enrolled)
    assert stale.version == 1  # what a gateway (or its replacement) now gets on subscribing

    # The gateway applies what it got and says so.
    async with gateway_client(broker, enrolled) as c:
        report = ConfigState(
            **envelope(gw, seq=1, ts=T0 + timedelta(minutes=1)),
            status="applied",
            version=1,
            hash=first.hash,
            applied_version=1,
            applied_hash=first.hash,
        )
        await c.publish(up(gw, Up.CONFIG_STATE), encode(report), qos=1)

    body = await config_reported(client, admin, gw)
    assert body["applied"]["applied_version"] == 1 and body["in_sync"] is False
    again = await retained_config(broker, enrolled, min_version=2)
    assert (again.version, again.hash) == (2, newest.hash)


async def test_embedded_broker_refuses_anonymous_and_unknown_users(embedded: Any) -> None:
    _client, broker, _database_url, _site = embedded
    for username, password in ((None, None), ("nobody", "x" * 40)):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                broker.host, broker.port, username=username, password=password
            ) as c:
                await c.publish("edge/v1/x/up/heartbeat", b"{}", qos=1)


# --- Codes -------------------------------------------------------------------------------------


@pytest.fixture
async def open_fleet(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str, SiteIds, Settings]]:
    """The fleet on the shared test broker, FLEET_BROKER_AUTH=none: the code rules only."""
    site = await asyncio.to_thread(make_site, database_url)
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client:
        yield client, database_url, site, settings


def detail(r: httpx.Response) -> dict[str, str]:
    body: dict[str, str] = r.json()["detail"]
    return body


async def test_code_is_typeable_single_use_and_refusals_are_clear(open_fleet: Any) -> None:
    client, database_url, site, _settings = open_fleet
    installer = await login_as(client, "inst", INSTALLER_PASSWORD)
    gw = f"gw-code-{new_message_id()[:8]}"
    created = await create_gateway(client, installer, site.entrance_id, gw)
    code = created["code"]
    assert CODE_RE.match(code), code
    assert created["expires_at"] > utcnow().isoformat()
    # Stored hashed only.
    hashes = await asyncio.to_thread(
        query,
        database_url,
        sa.select(EnrollmentCode.code_hash).where(EnrollmentCode.gateway_id == gw),
    )
    assert len(hashes) == 1 and code.replace("-", "") not in hashes[0][0]

    # Typed sloppily (lower case, spaces, O for 0) it still works, once.
    sloppy = code.lower().replace("-", " ").replace("0", "o")
    first = await client.post("/api/enroll", json={"code": sloppy})
    assert first.status_code == 200, first.text
    assert first.json()["gateway_id"] == gw
    assert len(first.json()["site_key"]) == 64
    again = await client.post("/api/enroll", json={"code": code})
    assert again.status_code == 409
    assert detail(again)["code"] == "enrollment_used"
    assert "已被使用" in detail(again)["message"] and "already used" in detail(again)["message_en"]

    unknown = await client.post("/api/enroll", json={"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})
    assert unknown.status_code == 404 and "不存在" in detail(unknown)["message"]
    malformed = await client.post("/api/enroll", json={"code": "hello-world"})
    assert malformed.status_code == 400 and detail(malformed)["code"] == "enrollment_malformed"

    # A new code for the same gateway (factory reset) works and revokes the unused older one.
    first_new = (
        await client.post(f"/api/provisioning/gateways/{gw}/code", headers=installer)
    ).json()
    second_new = (
        await client.post(f"/api/provisioning/gateways/{gw}/code", headers=installer)
    ).json()
    revoked = await client.post("/api/enroll", json={"code": first_new["code"]})
    assert revoked.status_code == 410 and detail(revoked)["code"] == "enrollment_revoked"
    reenrolled = await client.post("/api/enroll", json={"code": second_new["code"]})
    assert reenrolled.status_code == 200
    assert reenrolled.json()["site_key"] == first.json()["site_key"]  # per compound, stable
    assert reenrolled.json()["mqtt"]["password"] != first.json()["mqtt"]["password"]


async def test_expired_code_is_refused(open_fleet: Any) -> None:
    client, database_url, site, _settings = open_fleet
    admin = await login(client)
    gw = f"gw-exp-{new_message_id()[:8]}"
    code = (await create_gateway(client, admin, site.entrance_id, gw))["code"]

    def expire() -> None:
        engine = make_engine(database_url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.update(EnrollmentCode)
                    .where(EnrollmentCode.gateway_id == gw)
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
        finally:
            engine.dispose()

    await asyncio.to_thread(expire)
    r = await client.post("/api/enroll", json={"code": code})
    assert r.status_code == 410
    assert detail(r)["code"] == "enrollment_expired" and "已过期" in detail(r)["message"]


async def test_concurrent_claims_of_one_code_let_exactly_one_through(open_fleet: Any) -> None:
    """Eight gateways race with one code through two API processes (the fixture's app and a
    second one on the same database): exactly one gets credentials."""
    client, _database_url, site, settings = open_fleet
    admin = await login(client)
    gw = f"gw-race-{new_message_id()[:8]}"
    code = (await create_gateway(client, admin, site.entrance_id, gw))["code"]
    second = create_app(settings)
    async with second.router.lifespan_context(second):

        async def attempt(i: int) -> int:
            if i % 2 == 0:
                return (await client.post("/api/enroll", json={"code": code})).status_code
            transport = httpx.ASGITransport(app=second, client=(f"10.0.0.{i}", 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://fleet.test") as c:
                return (await c.post("/api/enroll", json={"code": code})).status_code

        results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert sorted(results) == [200] + [409] * 7


async def test_enroll_is_rate_limited_per_client_ip(open_fleet: Any) -> None:
    client, _database_url, _site, _settings = open_fleet
    statuses = [
        (await client.post("/api/enroll", json={"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})).status_code
        for _ in range(12)
    ]
    assert statuses == [404] * 10 + [429] * 2  # FLEET_ENROLL_RATE_LIMIT: 10 a minute
    r = await client.post("/api/enroll", json={"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})
    assert int(r.headers["Retry-After"]) >= 1 and "稍后" in detail(r)["message"]


async def test_qr_codes_hold_the_enrollment_uri(open_fleet: Any) -> None:
    client, _database_url, site, settings = open_fleet
    installer = await login_as(client, "inst", INSTALLER_PASSWORD)
    created = await create_gateway(
        client, installer, site.entrance_id, f"gw-qr-{new_message_id()[:6]}"
    )
    assert created["enroll_uri"] == f"{settings.base_url}/api/enroll?code={created['code']}"
    png = await client.get(created["qr_png"], headers=installer)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    expected = io.BytesIO()
    segno.make(created["enroll_uri"], error="m").save(expected, kind="png", scale=8, border=4)
    assert png.content == expected.getvalue()
    svg = await client.get(created["qr_svg"], headers=installer)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    assert (await client.get(created["qr_svg"])).status_code == 401


async def test_roles_and_scopes(open_fleet: Any) -> None:
    client, _database_url, site, _settings = open_fleet
    installer = await login_as(client, "inst", INSTALLER_PASSWORD)
    officer = await login_as(client, "officer", INSTALLER_PASSWORD)
    admin = await login(client)
    body = {"entrance_id": site.entrance_id}
    assert (await client.post("/api/provisioning/gateways", json=body)).status_code == 401
    r = await client.post("/api/provisioning/gateways", json=body, headers=officer)
    assert r.status_code == 403
    outside = {"entrance_id": site.other_entrance_id}
    r = await client.post("/api/provisioning/gateways", json=outside, headers=installer)
    assert r.status_code == 403
    other_gw = (
        await client.post("/api/provisioning/gateways", json=outside, headers=admin)
    ).json()["gateway_id"]
    for method, path in (
        ("post", f"/api/provisioning/gateways/{other_gw}/code"),
        ("get", f"/api/provisioning/gateways/{other_gw}"),
        ("get", f"/api/provisioning/gateways/{other_gw}/config"),
        ("post", f"/api/provisioning/gateways/{other_gw}/replace"),
    ):
        kwargs: dict[str, Any] = {"headers": installer}
        if path.endswith("replace"):
            kwargs["json"] = {}
        r = await getattr(client, method)(path, **kwargs)
        assert r.status_code == 403, (path, r.text)
    own = (await client.post("/api/provisioning/gateways", json=body, headers=installer)).json()
    gw = own["gateway_id"]
    r = await client.put(
        f"/api/provisioning/gateways/{gw}/config/override", json={"config": {}}, headers=installer
    )
    assert r.status_code == 403  # overrides are for admins
    r = await client.put(
        f"/api/provisioning/compounds/{site.compound_id}/rules", json={}, headers=installer
    )
    assert r.status_code == 403
    status_ = (await client.get(f"/api/provisioning/gateways/{gw}", headers=installer)).json()
    assert status_["enrolled"] is False and status_["codes"][0]["state"] == "usable"
    assert set(status_["codes"][0]) == {
        "created_at",
        "created_by",
        "expires_at",
        "state",
        "used_at",
    }
    r = await client.put(
        f"/api/provisioning/compounds/{site.compound_id}/rules",
        json={"overload": {"sustain_s": -1}},
        headers=admin,
    )
    assert r.status_code == 422 and "sustain_s" in r.text


async def test_odd_input_gets_a_clear_answer_not_a_server_error(open_fleet: Any) -> None:
    client, _database_url, site, _settings = open_fleet
    admin = await login(client)
    gw = f"gw-odd-{new_message_id()[:6]}"
    code = (await create_gateway(client, admin, site.entrance_id, gw))["code"]
    r = await client.post("/api/enroll", json={"code": code, "hostname": "pi\x00\n3-1"})
    assert r.status_code == 200, r.text  # stored without the control characters
    for config in ({"rules": float("nan")}, {"site": "a\x00b"}, {"unknown_key": 1}):
        r = await client.put(
            f"/api/provisioning/gateways/{gw}/config/override",
            content=json.dumps({"config": config}),
            headers={**admin, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (config, r.text)
    r = await client.get("/api/provisioning/gateways/a%00b", headers=admin)
    assert r.status_code == 422
    r = await client.get(f"/api/provisioning/gateways/{gw}/config", headers=admin)
    assert r.status_code == 200 and r.json()["desired"]["source"] == "site"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param({"broker_auth": "embedded"}, "BROKER_AUTH_FILE", id="embedded-no-file"),
        pytest.param(
            {"broker_auth": "embedded", "broker_auth_file": "/tmp/creds.json"},
            "user and password in FLEET_MQTT_URL",
            id="embedded-no-service-login",
        ),
        pytest.param({"broker_auth": "dynsec"}, "dynamic-security admin", id="dynsec-no-admin"),
        pytest.param(
            {"gateway_mqtt_url": "http://broker.example"}, "GATEWAY_MQTT_URL", id="gateway-url"
        ),
    ],
)
def test_broker_settings_that_cannot_work_are_refused_at_start(
    values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        Settings(demo=True, **values)


def test_embedded_broker_auth_makes_ingest_speak_mqtt_311() -> None:
    settings = Settings(
        demo=True,
        broker_auth="embedded",
        broker_auth_file=Path("/tmp/creds.json"),
        mqtt_url="mqtt://fleet:pw@127.0.0.1:1883",
    )
    assert settings.mqtt_protocol == "3.1.1"
    assert settings.gateway_broker_url == "mqtt://127.0.0.1:1883"  # never the fleet's password
