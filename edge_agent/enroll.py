"""``edge-agent enroll --server URL --token CODE``: a one-time code for the gateway's identity.

The fleet manager answers ``POST {server}/api/enroll`` (:class:`contract.control.EnrollRequest`)
with the gateway id, its broker credentials, the site key and usually the initial desired
config (:class:`contract.control.EnrollResponse`). They are written into the agent's TOML config
(mode 0600, directory 0700; any device sections already in it are kept), the CA certificate (for
``mqtts``) into the state directory, and the desired config into ``<state_dir>/desired.json``,
where the agent picks it up on start. The password and site key are never printed.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from pydantic import ValidationError

from contract.control import EnrollRequest, EnrollResponse, config_hash
from edge_agent.desired import DesiredStore, StoredDesired, write_private

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
MARKER = "enrollment.json"
TIMEOUT_S = 20.0


class EnrollError(Exception):
    """Enrollment did not happen; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class EnrollResult:
    gateway_id: str
    broker_url: str
    username: str
    config_path: Path
    state_dir: Path
    ca_file: Path | None
    desired_version: int | None
    devices: int

    def summary(self) -> str:
        lines = [
            f"enrolled gateway {self.gateway_id}",
            f"  broker:        {self.broker_url} (user {self.username}; password stored)",
            f"  config:        {self.config_path} (mode 0600)",
            f"  state dir:     {self.state_dir}",
            "  site key:      stored (used for card pseudonyms, never sent)",
        ]
        if self.ca_file is not None:
            lines.append(f"  CA:            {self.ca_file}")
        if self.desired_version is None:
            lines.append("  desired config: none yet (the fleet manager will push it)")
        else:
            lines.append(
                f"  desired config: version {self.desired_version}, {self.devices} device(s)"
            )
        lines.append("next: edge-agent doctor --config " + str(self.config_path))
        return "\n".join(lines)


def _chown(owner: str, paths: list[Path]) -> None:
    """Give the written files to the agent's user (enroll usually runs as root)."""
    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        raise EnrollError(f"user {owner!r} does not exist (create it or pass --owner)") from None
    for p in paths:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def default_owner() -> str | None:
    """``edge-agent`` when enroll runs as root and that user exists (the systemd unit's user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("edge-agent")
    except KeyError:
        return None
    return "edge-agent"


def _read_existing(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise EnrollError(f"{path} exists but is not valid TOML ({exc}); fix or move it") from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail[:300]
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        # the fleet manager's refusals: {"code", "message" (Chinese), "message_en"}
        texts = [detail["message"], detail.get("message_en")]
        return " / ".join(t for t in texts if isinstance(t, str))[:500]
    if detail is not None:
        return json.dumps(detail, ensure_ascii=False)[:300]
    return response.reason_phrase


def request_enrollment(
    server: str, code: str, *, agent_version: str, transport: httpx.BaseTransport | None = None
) -> EnrollResponse:
    url = server.rstrip("/") + "/api/enroll"
    body = EnrollRequest(code=code, hostname=socket.gethostname(), agent_version=agent_version)
    try:
        with httpx.Client(timeout=TIMEOUT_S, transport=transport) as client:
            response = client.post(url, json=body.model_dump(mode="json"))
    except httpx.TransportError as exc:
        raise EnrollError(
            f"cannot reach the fleet manager at {server} ({type(exc).__name__}: {exc}); "
            "check the address, the network and that the server is running"
        ) from None
    if response.status_code in (400, 401, 403, 404, 409, 410, 422):
        raise EnrollError(
            f"the fleet manager refused the code (HTTP {response.status_code}: "
            f"{_detail(response)}); ask for a new one-time code"
        )
    if response.status_code >= 400:
        raise EnrollError(
            f"the fleet manager failed (HTTP {response.status_code}: {_detail(response)}); "
            "try again later"
        )
    try:
        return EnrollResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise EnrollError(
            f"the fleet manager's answer is not a valid enrollment ({exc.error_count()} "
            "errors); is the server URL right?"
        ) from None


def enroll(
    server: str,
    code: str,
    *,
    config_path: Path = DEFAULT_CONFIG,
    state_dir: Path | None = None,
    force: bool = False,
    owner: str | None = None,
    agent_version: str = "0+unknown",
    transport: httpx.BaseTransport | None = None,
) -> EnrollResult:
    existing = _read_existing(config_path)
    state = Path(state_dir or existing.get("state_dir") or DEFAULT_STATE_DIR)
    marker = state / MARKER
    if (marker.exists() or "gateway_id" in existing) and not force:
        who = existing.get("gateway_id", "?")
        raise EnrollError(
            f"this gateway is already enrolled (gateway {who}, {config_path}); "
            "re-run with --force to replace its identity and credentials"
        )
    if len(code.strip()) < 6:
        raise EnrollError("the code is too short; type the whole one-time code")
    answer = request_enrollment(server, code.strip(), agent_version=agent_version,
                                transport=transport)  # fmt: skip
    desired = answer.desired
    if desired is not None and (
        desired.gw != answer.gateway_id or desired.hash != config_hash(desired.config)
    ):
        raise EnrollError("the fleet manager sent a desired config that does not check out")

    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.chmod(0o700)
    ca_file: Path | None = None
    if answer.mqtt.ca_pem:
        ca_file = state / "broker-ca.pem"
        write_private(ca_file, answer.mqtt.ca_pem.encode())
    mqtt: dict[str, Any] = dict(existing.get("mqtt") or {})
    mqtt.update(
        url=answer.mqtt.url,
        username=answer.mqtt.username,
        password=answer.mqtt.password,
        tls=answer.mqtt.url.startswith("mqtts://"),
    )
    if ca_file is not None:
        mqtt["ca_file"] = str(ca_file)
    else:
        mqtt.pop("ca_file", None)
    config: dict[str, Any] = {
        **existing,
        "gateway_id": answer.gateway_id,
        "state_dir": str(state),
        "site_key": answer.site_key,
        "mqtt": mqtt,
    }
    if "site" not in config and (desired is None or "site" not in desired.config):
        # The agent needs a site to start; the fleet manager's first push replaces it.
        config["site"] = {"site_id": "unassigned"}
    config_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(config_path, tomli_w.dumps(config).encode())
    store = DesiredStore(state)
    stored = store.load() if not force else StoredDesired()
    stored.desired = desired
    store.save(stored)
    write_private(
        marker,
        json.dumps(
            {
                "gateway_id": answer.gateway_id,
                "server": server,
                "enrolled_at": datetime.now(UTC).isoformat(),
            }
        ).encode(),
    )
    if owner is not None:
        _chown(owner, [config_path.parent, config_path, state, *state.iterdir()])
    devices = 0
    if desired is not None:
        c = desired.config
        for key in ("modbus", "modbus_tcp", "dlt645"):
            devices += sum(len(bus.get("meters", [])) for bus in c.get(key) or [])
        devices += len(c.get("serial_readers") or []) + len(c.get("wiegand_readers") or [])
        devices += len((c.get("ble") or {}).get("sensors") or [])
    return EnrollResult(
        gateway_id=answer.gateway_id,
        broker_url=answer.mqtt.url,
        username=answer.mqtt.username,
        config_path=config_path,
        state_dir=state,
        ca_file=ca_file,
        desired_version=desired.version if desired else None,
        devices=devices,
    )
