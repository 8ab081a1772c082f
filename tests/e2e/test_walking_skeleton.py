"""End to end: simulated devices -> edge agent -> broker -> fleet manager -> DB -> webhook.

Every part runs as in production, as separate processes over real transports: the simulated
building serves Modbus TCP and a pseudo-terminal card reader and streams BLE adverts, the agent
reads them through its real drivers, the broker is Mosquitto in CI (amqtt otherwise), the
database PostgreSQL in CI (SQLite otherwise), and the webhook receiver is a real HTTP server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from fleet.demo import agent_config_from_endpoints
from tests.conftest import BrokerEndpoint, free_port, wait_for_port
from tests.support.procs import E2E_ADMIN_PASSWORD, child, fleet_serve_env, wait_until
from tests.support.webhook import Received, webhook_receiver

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"


def _token(base: str) -> str:
    r = httpx.post(f"{base}/api/auth/token", data={"username": "admin", "password": E2E_ADMIN_PASSWORD})
    r.raise_for_status()
    return str(r.json()["access_token"])


def _get(base: str, path: str, token: str) -> Any:
    r = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    return r.json()


def _items(body: Any) -> list[dict[str, Any]]:
    return list(body["items"] if isinstance(body, dict) else body)


def test_charging_ebike_becomes_alert_at_street_office(
    tmp_path: Path, mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gateway_id = f"gw-e2e-{os.getpid()}-{free_port()}"
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    with webhook_receiver() as hook:
        fleet_env = fleet_serve_env(
            database_url=database_url,
            mqtt_url=mqtt_broker.url,
            http_port=http_port,
            webhook_url=hook.url,
            webhook_secret=WEBHOOK_SECRET,
        )
        endpoints_file = tmp_path / "building.json"
        with (
            child(["fleet", "serve"], tmp_path / "fleet.log", fleet_env),
            child(
                [
                    "firmware_sim", "building", "--flats", "4", "--seed", "7",
                    "--charging-after", "3", "--endpoints-file", str(endpoints_file),
                ],
                tmp_path / "sim.log",
            ),
        ):  # fmt: skip
            assert wait_for_port("127.0.0.1", http_port, timeout=60), (
                tmp_path / "fleet.log"
            ).read_text()
            wait_until(endpoints_file.exists, 30, "the simulator's endpoints file")
            endpoints = json.loads(endpoints_file.read_text())
            config = agent_config_from_endpoints(
                endpoints,
                gateway_id=gateway_id,
                mqtt_url=mqtt_broker.url,
                state_dir=tmp_path / "agent-state",
                charging_sustain_s=5.0,
                poll_interval_s=1.0,
            )
            cfg_path = tmp_path / "agent.toml"
            cfg_path.write_text(tomli_w.dumps(config))
            with child(
                ["edge_agent", "run", "--config", str(cfg_path)], tmp_path / "agent.log"
            ) as agent:
                token = _token(base)

                def gateway() -> dict[str, Any] | None:
                    for g in _items(_get(base, "/api/gateways", token)):
                        if g["gateway_id"] == gateway_id:
                            return g
                    return None

                gw = wait_until(gateway, 30, "the gateway's birth at the fleet manager")
                assert gw["online"] is True

                # The charging sensor in flat 1-201 reports charging; the edge rule raises an
                # alert and the fleet manager forwards it to the street office's webhook.
                def delivered() -> Received | None:
                    for r in hook.received:
                        body = r.json()
                        if body["kind"] == "ebike_charging" and body["gateway_id"] == gateway_id:
                            return r
                    return None

                request = wait_until(delivered, 60, "the ebike_charging alert at the webhook")
                alert = request.json()
                # The street office's system can tell the message came from its fleet manager.
                mac = hmac.new(WEBHOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
                assert request.headers["x-signature"] == f"sha256={mac}"
                assert request.headers["idempotency-key"] == alert["alert_id"]
                charging_sensor = endpoints["site"]["sensors"]
                sensor_ids = {
                    s["sensor_id"] for s in charging_sensor if s.get("unit_id") == "1-201"
                }
                assert alert["unit_id"] == "1-201"
                assert alert["sensor_id"] in sensor_ids
                assert alert["category"] == "消防"
                assert alert["severity"] in ("medium", "high")
                assert alert["raised_at"]
                assert alert["evidence"]["peak_power_w"] > 100
                assert alert["evidence"]["location"] == "unit"
                assert alert["title_zh"]

                # The same alert is visible in the fleet manager's API.
                stored = [
                    a
                    for a in _items(_get(base, "/api/alerts", token))
                    if a["alert_id"] == alert["alert_id"]
                ]
                assert len(stored) == 1 and stored[0]["unit_id"] == "1-201"

                # Meter telemetry and card swipes made it too, with no raw card number.
                log_text = (tmp_path / "agent.log").read_text()
                for card in endpoints["site"]["cards"]:
                    assert card["card"] not in log_text

                # A gateway that dies without a word shows offline through its last will.
                agent.send_signal(signal.SIGKILL)
                agent.wait(10)

                def offline() -> dict[str, Any] | None:
                    g = gateway()
                    return g if g is not None and g["online"] is False else None

                gw = wait_until(offline, 60, "the gateway to show offline after SIGKILL")
                assert gw["death_reason"] == "connection_lost"
