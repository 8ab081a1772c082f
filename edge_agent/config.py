"""The agent's TOML configuration, validated once at start (``edge-agent run --config``).

Typos are errors (``extra="forbid"``), secrets are :class:`pydantic.SecretStr` so they never
appear in reprs or logs, and every error names the field and says what to do.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from contract.site import RulesConfig, Site
from contract.topics import valid_gateway_id

CONFIG_VERSION = 1


class ConfigError(Exception):
    """The configuration cannot be used. The message says which field and what to do."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Model):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(default=30, ge=5, le=600)
    tls: bool = False
    ca_file: Path | None = None

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @model_validator(mode="after")
    def _scheme(self) -> MqttConfig:
        if urlparse(self.url).scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"mqtt.url must start with mqtt:// or mqtts://, got {self.url!r}")
        return self


class ModbusMeterConfig(_Model):
    meter_id: str = Field(min_length=1)
    slave: int = Field(ge=1, le=247)
    profile: Literal["ddsu666"] = "ddsu666"


class ModbusTcpConfig(_Model):
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=0.5, gt=0, le=5)
    meters: list[ModbusMeterConfig] = Field(min_length=1)


class SerialReaderConfig(_Model):
    reader_id: str = Field(min_length=1)
    url: str = Field(min_length=1, description="device path or socket://host:port")
    baudrate: int = 9600


class BleSensorConfig(_Model):
    sensor_id: str = Field(min_length=1)
    mac: str = Field(pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class BleConfig(_Model):
    source: str = Field(default="bleak", description="'bleak' (the radio) or feed://host:port")
    adapter: str | None = None
    sensors: list[BleSensorConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _source(self) -> BleConfig:
        if self.source != "bleak" and not self.source.startswith("feed://"):
            raise ValueError("ble.source must be 'bleak' or feed://host:port")
        return self


class AgentConfig(_Model):
    version: Literal[1] = 1  # CONFIG_VERSION
    gateway_id: str
    state_dir: Path = Path("/var/lib/edge-agent")
    site_key: SecretStr = Field(
        description="per-site secret for card pseudonyms (HMAC-SHA256); never leaves the site"
    )
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    telemetry_batch_s: float = Field(default=10.0, gt=0)
    tick_interval_s: float = Field(default=1.0, gt=0)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    modbus_tcp: list[ModbusTcpConfig] = Field(default_factory=list)
    serial_readers: list[SerialReaderConfig] = Field(default_factory=list)
    ble: BleConfig | None = None
    site: Site
    rules: RulesConfig = Field(default_factory=RulesConfig)

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        if not valid_gateway_id(self.gateway_id):
            raise ValueError(
                f"gateway_id {self.gateway_id!r}: use 1-64 letters, digits, '-', '_' or '.'"
            )
        if len(self.site_key.get_secret_value()) < 16:
            raise ValueError("site_key must be at least 16 characters (a random secret)")
        return self


def parse_config(data: dict[str, object], source: str = "config") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_config(path: Path) -> AgentConfig:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, str(path))
