"""Provisioning against a private Mosquitto with the dynamic-security plugin.

Each test starts its own Mosquitto on a free port (dynsec needs an admin and a config file of
its own, and the shared CI broker must not be reconfigured). The admin is created with
``mosquitto_ctrl dynsec init``; the fleet manager's ingest logs in as a separate service user
with the ``fleet-service`` role, and manages gateways' clients and roles as the admin.

Without ``TEST_MQTT_URL`` (a laptop) the tests skip when Mosquitto is not installed; with it
(CI, where Mosquitto is part of the platform) a missing binary or plugin is a failure.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from contract.messages import new_message_id
from contract.topics import Down, down
from fleet.dynsec import BrokerAddress, DynsecControl, gateway_role
from tests.conftest import BrokerEndpoint, free_port, wait_for_port
from tests.fleet.helpers import eventually, fleet_client, login, make_settings, telemetry, wire
from tests.fleet.test_provisioning import (
    SiteIds,
    create_gateway,
    enroll,
    gateway_client,
    make_site,
    readings_of,
    refused,
    scenario_desired_config,
    scenario_isolation,
    scenario_replacement,
    service_url,
)

PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
ADMIN, ADMIN_PASSWORD = "dynsec-admin", "dynsec-admin-pass-0123456789"
SERVICE, SERVICE_PASSWORD = "fleet-svc", "fleet-svc-pass-0123456789abc"


def _missing() -> str | None:
    for binary in ("mosquitto", "mosquitto_ctrl"):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            return f"{binary} is not installed"
    if not PLUGIN.exists():
        return f"the dynamic-security plugin {PLUGIN} is not installed"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[BrokerEndpoint]:
    missing = _missing()
    if missing:
        if os.environ.get("TEST_MQTT_URL"):
            pytest.fail(f"TEST_MQTT_URL is set (CI has Mosquitto) but {missing}")
        pytest.skip(f"{missing}: the dynamic-security tests need a private Mosquitto")
    dynsec = tmp_path / "dynamic-security.json"
    subprocess.run(
        [_binary("mosquitto_ctrl"), "dynsec", "init", str(dynsec), ADMIN, ADMIN_PASSWORD],
        check=True,
        capture_output=True,
    )
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"plugin {PLUGIN}\n"
        f"plugin_opt_config_file {dynsec}\n"
        "persistence false\n"
        # Started as root, Mosquitto would switch to the user 'mosquitto', which cannot read
        # the test's private directory; stay who we are.
        f"user {getpass.getuser()}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(
        [_binary("mosquitto"), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        if not wait_for_port("127.0.0.1", port):
            pytest.fail(f"private Mosquitto did not start; see {tmp_path / 'mosquitto.log'}")
        yield BrokerEndpoint("127.0.0.1", port, "external")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def control(broker: BrokerEndpoint) -> DynsecControl:
    return DynsecControl(BrokerAddress(broker.host, broker.port, ADMIN, ADMIN_PASSWORD))


@pytest.fixture
async def dynsec_fleet(
    mosquitto: BrokerEndpoint, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, BrokerEndpoint, str, SiteIds]]:
    # The installation step of docs/provisioning.md: a service user for the fleet manager.
    # Mosquitto drops a client whose roles change, so the role is given before ingest connects.
    ctl = control(mosquitto)
    await ctl.run([{"command": "createClient", "username": SERVICE, "password": SERVICE_PASSWORD}])
    await ctl.ensure_service_role(SERVICE)
    site = await asyncio.to_thread(make_site, database_url)
    settings = make_settings(
        mosquitto,
        database_url,
        mqtt_url=service_url(mosquitto, SERVICE, SERVICE_PASSWORD),
        broker_auth="dynsec",
        broker_admin_username=ADMIN,
        broker_admin_password=ADMIN_PASSWORD,
        config_publish_retry_s=2.0,
    )
    async with fleet_client(settings) as client:
        yield client, mosquitto, database_url, site


async def test_dynsec_isolation(dynsec_fleet: Any) -> None:
    client, broker, database_url, site = dynsec_fleet
    await scenario_isolation(client, broker, database_url, site, v5=True)


async def test_dynsec_isolation_mqtt311(dynsec_fleet: Any) -> None:
    client, broker, database_url, site = dynsec_fleet
    await scenario_isolation(client, broker, database_url, site, v5=False)


async def test_dynsec_replacement(dynsec_fleet: Any) -> None:
    client, broker, database_url, site = dynsec_fleet
    await scenario_replacement(client, broker, database_url, site, v5=True)


async def test_dynsec_desired_config(dynsec_fleet: Any) -> None:
    client, broker, database_url, site = dynsec_fleet
    await scenario_desired_config(client, broker, database_url, site, v5=True)


async def test_dynsec_client_and_role_per_gateway(dynsec_fleet: Any) -> None:
    """What the broker holds after an enrollment: one client, one role with exactly the
    gateway's own prefixes; a re-enrollment replaces the password (the old one stops working)."""
    client, broker, _database_url, site = dynsec_fleet
    admin = await login(client)
    gw = f"gw-ds-{new_message_id()[:8]}"
    code = (await create_gateway(client, admin, site.entrance_id, gw))["code"]
    first = await enroll(client, code)
    used = await client.post("/api/enroll", json={"code": code})
    assert used.status_code == 409 and used.json()["detail"]["code"] == "enrollment_used"
    ctl = control(broker)
    (got,) = await ctl.run([{"command": "getClient", "username": gw}])
    assert [r["rolename"] for r in got["data"]["client"]["roles"]] == [gateway_role(gw)]
    (role,) = await ctl.run([{"command": "getRole", "rolename": gateway_role(gw)}])
    acls = {(a["acltype"], a["topic"], a["allow"]) for a in role["data"]["role"]["acls"]}
    assert acls == {
        ("publishClientSend", f"edge/v1/{gw}/up/#", True),
        ("subscribePattern", f"edge/v1/{gw}/down/#", True),
        ("publishClientReceive", f"edge/v1/{gw}/down/#", True),
    }

    fresh = (await client.post(f"/api/provisioning/gateways/{gw}/code", headers=admin)).json()
    second = await enroll(client, fresh["code"])
    with pytest.raises(aiomqtt.MqttError):
        async with gateway_client(broker, first, v5=True) as c:
            await c.subscribe(down(gw, Down.CONFIG), qos=1)
    async with gateway_client(broker, second, v5=True) as c:
        assert not refused(await c.subscribe(down(gw, Down.CONFIG), qos=1))
        await c.publish(*wire(telemetry(gw, "m-1")), qos=1)

    async def stored() -> int:
        return await readings_of(_database_url, gw)

    assert await eventually(stored, "telemetry after re-enrollment") == 3


async def test_dynsec_broker_down_keeps_the_code_usable(
    mosquitto: BrokerEndpoint, database_url: str
) -> None:
    """The broker refuses the admin (wrong password): enrollment fails with 503 and the code
    can be used once the broker side is fixed."""
    site = await asyncio.to_thread(make_site, database_url)
    ctl = control(mosquitto)
    await ctl.run([{"command": "createClient", "username": SERVICE, "password": SERVICE_PASSWORD}])
    await ctl.ensure_service_role(SERVICE)
    base = {
        "mqtt_url": service_url(mosquitto, SERVICE, SERVICE_PASSWORD),
        "broker_auth": "dynsec",
        "broker_admin_username": ADMIN,
        "broker_control_timeout_s": 3.0,
    }
    broken = make_settings(mosquitto, database_url, broker_admin_password="wrong", **base)
    async with fleet_client(broken) as client:
        admin = await login(client)
        code = (
            await create_gateway(client, admin, site.entrance_id, f"gw-bd-{new_message_id()[:6]}")
        )["code"]
        r = await client.post("/api/enroll", json={"code": code})
        assert r.status_code == 503, r.text
        assert "仍然有效" in r.json()["detail"]["message"]
    fixed = make_settings(mosquitto, database_url, broker_admin_password=ADMIN_PASSWORD, **base)
    async with fleet_client(fixed) as client:
        r = await client.post("/api/enroll", json={"code": code})
        assert r.status_code == 200, r.text
