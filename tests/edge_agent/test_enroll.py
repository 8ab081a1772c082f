"""`edge-agent enroll` against a real HTTP server that answers like the fleet manager's
POST /api/enroll: identity, credentials and the initial config land in private files, secrets
are never printed, an enrolled gateway asks for --force, refusals and outages are explained."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract.control import DesiredConfig, EnrollResponse, config_hash
from edge_agent.desired import load_effective_config
from tests.conftest import free_port
from tests.support.webhook import post_server

PASSWORD = "broker-pass-Zq81xx"
SITE_KEY = "ab" * 32
CODE = "K7Q-2M9-XP4"


@dataclass
class FleetStub:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    # (status, body) to answer with, in order
    script: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@contextmanager
def fleet_stub() -> Iterator[FleetStub]:
    state = FleetStub()

    def answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        state.requests.append({"path": path, "json": json.loads(body)})
        status, reply = state.script.pop(0)
        return status, json.dumps(reply).encode()

    with post_server(answer) as base:
        state.url = base
        yield state


def enrollment(gw: str, *, with_config: bool = True) -> dict[str, Any]:
    desired = None
    if with_config:
        config = {
            "site": {"site_id": "compound-7", "units": [{"unit_id": "1-101", "building": "1"}]},
            "modbus_tcp": [{"host": "10.0.0.5", "port": 502,
                            "meters": [{"meter_id": "m-1-101", "slave": 1}]}],
        }  # fmt: skip
        desired = DesiredConfig(
            gw=gw, version=3, hash=config_hash(config), issued_at=datetime.now(UTC), config=config
        )
    answer = EnrollResponse.model_validate(
        {
            "gateway_id": gw,
            "mqtt": {"url": "mqtts://broker.example:8883", "username": f"gw-{gw}",
                     "password": PASSWORD, "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n"},
            "site_key": SITE_KEY,
            "desired": desired,
        }
    )  # fmt: skip
    return answer.model_dump(mode="json")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_enroll_writes_private_identity_and_config_and_prints_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "agent.toml"
    state = tmp_path / "state"
    with fleet_stub() as fleet:
        fleet.script.append((200, enrollment("gw-b1-e1")))
        done = run_cli(
            "enroll", "--server", fleet.url + "/", "--token", CODE,
            "--config", str(config), "--state-dir", str(state),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (request,) = fleet.requests
    assert request["path"] == "/api/enroll"
    assert request["json"]["code"] == CODE and request["json"]["hostname"]
    out = done.stdout + done.stderr
    assert "gw-b1-e1" in out and "mqtts://broker.example:8883" in out and "gw-gw-b1-e1" in out
    assert "version 3, 1 device(s)" in out
    assert PASSWORD not in out and SITE_KEY not in out
    for path, mode in [
        (config, 0o600), (config.parent, 0o700), (state, 0o700),
        (state / "desired.json", 0o600), (state / "broker-ca.pem", 0o600),
    ]:  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    effective = load_effective_config(config)
    cfg = effective.config
    assert cfg.gateway_id == "gw-b1-e1" and cfg.site_key.get_secret_value() == SITE_KEY
    assert cfg.mqtt.username == "gw-gw-b1-e1" and cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == PASSWORD and cfg.mqtt.use_tls
    assert cfg.mqtt.ca_file == state / "broker-ca.pem"
    assert cfg.site.site_id == "compound-7" and cfg.modbus_tcp[0].meters[0].meter_id == "m-1-101"
    assert effective.desired is not None and effective.desired.version == 3
    checked = run_cli("check-config", "--config", str(config))
    assert checked.returncode == 0 and "desired config version 3" in checked.stdout


def test_enrolled_gateway_needs_force_and_keeps_its_device_sections(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    state = tmp_path / "state"
    args = ["enroll", "--token", CODE, "--config", str(config), "--state-dir", str(state)]
    with fleet_stub() as fleet:
        fleet.script.append((200, enrollment("gw-1", with_config=False)))
        assert run_cli(*args, "--server", fleet.url).returncode == 0
        # an installer adds a reader by hand
        with config.open("a") as f:
            f.write('\n[[serial_readers]]\nreader_id = "r-1"\nurl = "/dev/ttyUSB0"\n')
        again = run_cli(*args, "--server", fleet.url)
        assert again.returncode == 1
        assert "already enrolled" in again.stderr and "--force" in again.stderr
        assert fleet.requests[1:] == []  # refused before asking the server
        fleet.script.append((200, enrollment("gw-2", with_config=False)))
        forced = run_cli(*args, "--server", fleet.url, "--force")
    assert forced.returncode == 0, forced.stderr
    cfg = load_effective_config(config).config
    assert cfg.gateway_id == "gw-2" and [r.reader_id for r in cfg.serial_readers] == ["r-1"]
    assert cfg.site.site_id == "unassigned"  # until the fleet manager pushes the real one


def test_refused_code_and_unreachable_server_are_explained(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    args = ["enroll", "--token", CODE, "--config", str(config),
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    with fleet_stub() as fleet:
        fleet.script.append((410, {"detail": "enrollment code expired"}))
        fleet.script.append((500, {"detail": "database down"}))
        fleet.script.append(
            (409, {"detail": {"code": "enrollment_used", "message": "注册码已被使用",
                              "message_en": "Enrollment code already used"}})
        )  # fmt: skip
        refused = run_cli(*args, "--server", fleet.url)
        failed = run_cli(*args, "--server", fleet.url)
        used = run_cli(*args, "--server", fleet.url)
    assert refused.returncode == 1
    assert "refused the code (HTTP 410: enrollment code expired)" in refused.stderr
    assert "new one-time code" in refused.stderr
    assert failed.returncode == 1 and "HTTP 500: database down" in failed.stderr
    assert used.returncode == 1
    assert "(HTTP 409: 注册码已被使用 / Enrollment code already used)" in used.stderr
    unreachable = run_cli(*args, "--server", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "cannot reach the fleet manager" in unreachable.stderr
    assert not config.exists()  # nothing half-written
