"""The real agent meets the real fleet manager: ``edge-agent enroll`` with a one-time code, then
``edge-agent run`` with the credentials it got, on the embedded broker that checks them.

The fleet manager serves HTTP on a free port (uvicorn, its whole lifespan). The agent is two child
processes, as on a gateway. What a person sees: the gateway comes online, the fleet manager
shows the desired config applied (in sync), a threshold change reaches the gateway as the next
version and is applied too.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from fleet.app import serve
from tests.conftest import free_port
from tests.fleet.helpers import ADMIN_PASSWORD, eventually, make_settings
from tests.fleet.test_provisioning import (
    SERVICE_PASSWORD,
    SERVICE_USER,
    embedded_auth_broker,
    make_site,
    service_url,
)
from tests.support.procs import child


@contextlib.asynccontextmanager
async def served(settings: Any) -> AsyncIterator[str]:
    started = asyncio.Event()
    task = asyncio.create_task(serve(settings, started=started))
    try:
        await asyncio.wait_for(started.wait(), 60)
        yield f"http://{settings.http_host}:{settings.http_port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_agent_enrolls_runs_and_applies_its_config(tmp_path: Path, database_url: str) -> None:
    site = await asyncio.to_thread(make_site, database_url)
    with embedded_auth_broker(tmp_path) as (broker, auth_file):
        settings = make_settings(
            broker,
            database_url,
            mqtt_url=service_url(broker, SERVICE_USER, SERVICE_PASSWORD),
            broker_auth="embedded",
            broker_auth_file=auth_file,
            gateway_mqtt_url=broker.url,
            http_port=free_port(),
            config_publish_retry_s=2.0,
        )
        async with served(settings) as base, httpx.AsyncClient(base_url=base) as client:
            r = await client.post(
                "/api/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
            )
            admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = await client.post(
                "/api/provisioning/gateways",
                json={"entrance_id": site.entrance_id, "gateway_id": "gw-e2e-1"},
                headers=admin,
            )
            assert r.status_code == 201, r.text
            code = r.json()["code"]

            config_path = tmp_path / "agent" / "agent.toml"
            state_dir = tmp_path / "state"
            enroll = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "edge_agent.cli", "enroll", "--server", base, "--token",
                 code.lower(), "--config", str(config_path), "--state-dir", str(state_dir)],
                capture_output=True,
                text=True,
                timeout=60,
            )  # fmt: skip
            assert enroll.returncode == 0, enroll.stderr
            assert "gw-e2e-1" in enroll.stdout
            assert code not in enroll.stdout + enroll.stderr  # nor the password
            again = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "edge_agent.cli", "enroll", "--server", base, "--token",
                 code, "--config", str(tmp_path / "other.toml"), "--state-dir",
                 str(tmp_path / "other")],
                capture_output=True,
                text=True,
                timeout=60,
            )  # fmt: skip
            assert again.returncode == 1 and "已被使用" in again.stderr

            async def state() -> dict[str, Any]:
                r = await client.get("/api/provisioning/gateways/gw-e2e-1/config", headers=admin)
                body: dict[str, Any] = r.json()
                return body

            # A short rollback grace so the broken-config step below is quick.
            config_path.write_text(
                "config_rollback_grace_s = 3.0\n" + config_path.read_text()
            )
            with child(
                ["edge_agent.cli", "run", "--config", str(config_path)], tmp_path / "agent.log"
            ):

                async def in_sync(version: int) -> bool:
                    body = await state()
                    return bool(body["in_sync"]) and body["desired"]["version"] == version

                await eventually(lambda: in_sync(1), "the agent to apply config v1", timeout=60)

                async def online() -> bool:
                    r = await client.get("/api/gateways/gw-e2e-1", headers=admin)
                    return r.status_code == 200 and bool(r.json()["online"])

                await eventually(online, "the gateway online", timeout=30)

                r = await client.put(
                    f"/api/provisioning/compounds/{site.compound_id}/rules",
                    json={"overload": {"sustain_s": 900}},
                    headers=admin,
                )
                assert r.status_code == 200, r.text
                await eventually(lambda: in_sync(2), "the agent to apply config v2", timeout=60)
                body = await state()
                assert body["applied"]["applied_version"] == 2
                assert body["desired"]["config"]["rules"]["overload"]["sustain_s"] == 900.0

                v2_config = dict(body["desired"]["config"])
                # An invalid pushed config: the agent keeps running v2 and the reason is
                # visible at the fleet manager.
                r = await client.put(
                    "/api/provisioning/gateways/gw-e2e-1/config/override",
                    json={"config": {"modbus": [{"transport": "carrier-pigeon", "meters": []}]}},
                    headers=admin,
                )
                assert r.status_code == 200, r.text
                bad_version = r.json()["desired"]["version"]

                async def rejected() -> bool:
                    applied = (await state())["applied"]
                    return bool(applied) and applied["last_rejected_version"] == bad_version

                await eventually(rejected, "the agent to reject the invalid config", timeout=60)
                body = await state()
                assert body["drift"] == "rejected"
                assert body["applied"]["applied_version"] == 2
                assert "transport" in body["applied"]["last_rejection_reason"]

                # A valid config whose every driver fails (a Modbus meter on a closed port)
                # is rolled back to v2 after the grace period.
                dead_port = free_port()
                r = await client.put(
                    "/api/provisioning/gateways/gw-e2e-1/config/override",
                    json={
                        "config": {
                            **v2_config,
                            "modbus": [
                                {
                                    "transport": "tcp",
                                    "host": "127.0.0.1",
                                    "port": dead_port,
                                    "interval_s": 0.5,
                                    "meters": [{"meter_id": "m-dead", "slave": 1}],
                                }
                            ]
                        }
                    },
                    headers=admin,
                )
                assert r.status_code == 200, r.text
                broken_version = r.json()["desired"]["version"]

                async def rolled_back() -> bool:
                    applied = (await state())["applied"]
                    return (
                        bool(applied)
                        and applied["status"] == "rolled_back"
                        and applied["version"] == broken_version
                    )

                await eventually(rolled_back, "the agent to roll back", timeout=60)
                body = await state()
                assert body["applied"]["applied_version"] == 2
                assert body["applied"]["reason"]
