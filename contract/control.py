"""Downlink payloads (fleet manager -> gateway) and the enrollment exchange.

``edge/v1/{gw}/down/config`` carries a retained :class:`DesiredConfig`; ``edge/v1/{gw}/down/cmd``
carries :class:`Command` (not retained). The agent answers on ``up/config_state`` and
``up/cmd_result`` (see :mod:`contract.messages`).

``config`` in a desired config is the device, site and rules part of the agent's TOML config as
a JSON object: the keys ``modbus``, ``modbus_tcp``, ``serial_readers``, ``wiegand_readers``,
``dlt645``, ``ble``, ``site`` and ``rules`` with the same shapes as in ``edge_agent/config.py``
(``AgentConfig``). Identity, credentials and ``state_dir`` are never part of it. ``hash`` is
:func:`config_hash` of ``config``; the agent compares hashes so that the same config is not
re-applied on every reconnect.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DESIRED_CONFIG_KEYS = frozenset(
    {"modbus", "modbus_tcp", "serial_readers", "wiegand_readers", "dlt645", "ble", "site", "rules"}
)

CommandName = Literal["ping", "restart_driver", "rescan", "upload_logs", "reload_config"]


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``config`` (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DesiredConfig(_Model):
    v: Literal[1] = 1
    gw: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1)
    hash: str = Field(min_length=64, max_length=64)
    issued_at: AwareDatetime
    config: dict[str, Any]


class Command(_Model):
    v: Literal[1] = 1
    gw: str = Field(min_length=1, max_length=64)
    correlation_id: str = Field(min_length=1, max_length=64)
    command: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    issued_at: AwareDatetime
    expires_at: AwareDatetime | None = None


class EnrollRequest(_Model):
    """``POST /api/enroll`` body: the one-time code, plus what the gateway says about itself."""

    code: str = Field(min_length=6, max_length=128)
    hostname: str | None = Field(default=None, max_length=255)
    agent_version: str | None = Field(default=None, max_length=64)


class BrokerCredentials(_Model):
    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    username: str
    password: str
    ca_pem: str | None = Field(default=None, description="CA certificate for mqtts, PEM")


class EnrollResponse(_Model):
    """What a gateway gets for a valid code: identity, broker credentials, site key, config."""

    gateway_id: str = Field(min_length=1, max_length=64)
    mqtt: BrokerCredentials
    site_key: str = Field(min_length=32, description="HMAC key for card pseudonyms, hex")
    desired: DesiredConfig | None = None
