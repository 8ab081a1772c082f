"""The agent's TOML configuration, validated once at start (``edge-agent run --config``).

Typos are errors (``extra="forbid"``), secrets are :class:`pydantic.SecretStr` so they never
appear in reprs or logs, and every error names the field and says what to do.
"""

from __future__ import annotations

import itertools
import math
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
    will_delay_s: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="MQTT 5 will delay: a reconnect within this long sends no death; 0: off",
    )
    max_inflight: int = Field(default=200, ge=1, le=65535, description="unacknowledged QoS 1")

    @property
    def use_tls(self) -> bool:
        return self.tls or urlparse(self.url).scheme == "mqtts"

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


class OutboxConfig(_Model):
    """The durable outbox (docs/outbox.md)."""

    disk_budget_mb: float = Field(
        default=512.0, gt=0, description="above this, old telemetry is downsampled (never alerts)"
    )
    reserve_mb: float = Field(
        default=8.0, ge=0, description="space held back so alerts still fit on a full disk"
    )
    historical_after_s: float = Field(
        default=30.0, ge=0, description="a message older than this when sent is historical"
    )
    audit: bool = Field(
        default=False, description="keep every committed message id (tests, diagnostics)"
    )


class ModbusRegisterConfig(_Model):
    """One field of a ``profile = "generic"`` meter's register map.

    See docs/devices/meters-modbus.md.
    """

    field: Literal[
        "power_w", "voltage_v", "current_a", "energy_kwh", "power_factor", "frequency_hz"
    ]
    address: int = Field(ge=0, le=65535)
    data_type: Literal["float32", "int16", "uint16", "int32", "uint32"] = "float32"
    word_order: Literal["big", "little"] = Field(
        default="big", description="32-bit values: 'big' = high word first"
    )
    scale: float = Field(default=1.0, description="value = raw * scale, e.g. 0.1 or 1000 (kW->W)")

    @model_validator(mode="after")
    def _scale(self) -> ModbusRegisterConfig:
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError("scale must be a finite, non-zero number")
        return self


class ModbusMeterConfig(_Model):
    meter_id: str = Field(min_length=1)
    slave: int = Field(ge=1, le=247)
    profile: Literal["ddsu666", "sdm120", "sdm630", "generic"] = "ddsu666"
    function_code: Literal[3, 4] | None = Field(
        default=None, description="3 holding / 4 input registers; default: the profile's"
    )
    interval_s: float | None = Field(default=None, gt=0, description="default: the bus's")
    timeout_s: float | None = Field(default=None, gt=0, le=5, description="default: the bus's")
    registers: list[ModbusRegisterConfig] = Field(
        default_factory=list, description="profile 'generic' only: the register map"
    )

    @model_validator(mode="after")
    def _registers(self) -> ModbusMeterConfig:
        fields = [r.field for r in self.registers]
        if self.profile != "generic":
            if fields:
                raise ValueError(f"registers are for profile 'generic', not {self.profile!r}")
            return self
        if "power_w" not in fields:
            raise ValueError("a generic meter needs a power_w register")
        if len(set(fields)) != len(fields):
            raise ValueError("a field appears twice in registers")
        spans = sorted(
            (r.address, r.address + (1 if "16" in r.data_type else 2)) for r in self.registers
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise ValueError(f"registers overlap at address {start}")
        return self


class ModbusBusConfig(_Model):
    """Modbus meters on one bus, read one request at a time (docs/devices/meters-modbus.md).

    ``transport``: "tcp" (Modbus TCP: ``host``, ``port`` 502), "rtu" (RS-485 adapter: ``url`` =
    the serial device, ``baudrate``, ``parity``, ``stopbits``) or "rtu-over-tcp" (a transparent
    serial-to-Ethernet converter: ``host`` and ``port``).
    """

    transport: Literal["tcp", "rtu", "rtu-over-tcp"] = "tcp"
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = Field(default=None, description="rtu: /dev/ttyUSB0, /dev/ttyAMA0, ...")
    baudrate: int = Field(default=9600, ge=300, le=115200)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=0.3, gt=0, le=5)
    max_quarantine_s: float = Field(default=300.0, gt=0)
    meters: list[ModbusMeterConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _bus(self) -> ModbusBusConfig:
        if self.transport == "rtu":
            if not self.url:
                raise ValueError("an rtu bus needs url (the serial device, e.g. /dev/ttyUSB0)")
        elif not self.host:
            raise ValueError(f"a {self.transport} bus needs host")
        elif self.transport == "rtu-over-tcp" and self.port is None:
            raise ValueError("an rtu-over-tcp bus needs port (the converter's TCP port)")
        ids = [m.meter_id for m in self.meters]
        slaves = [m.slave for m in self.meters]
        if len(set(ids)) != len(ids):
            raise ValueError("two meters on one bus have the same meter_id")
        if len(set(slaves)) != len(slaves):
            raise ValueError("two meters on one bus have the same slave address")
        return self


class ModbusTcpConfig(ModbusBusConfig):
    """A ``[[modbus_tcp]]`` entry (the first format): a Modbus TCP bus, ``host`` and ``port``."""

    transport: Literal["tcp"] = "tcp"
    host: str


WiegandFormatName = Literal["h10301", "w34", "c1k35", "h10304"]


def _all_wiegand_formats() -> list[WiegandFormatName]:
    return ["h10301", "w34", "c1k35", "h10304"]


class SerialReaderConfig(_Model):
    reader_id: str = Field(min_length=1)
    url: str = Field(min_length=1, description="device path or socket://host:port")
    baudrate: int = 9600
    frame_format: Literal["decimal", "hex", "em4100", "wiegand"] = Field(
        default="decimal", description="docs/devices/card-readers.md"
    )
    w34_uid: bool = Field(
        default=False, description="'wiegand' frames: W34 carries a 32-bit UID (Chinese readers)"
    )


class WiegandReaderConfig(_Model):
    """A Wiegand reader on two GPIO lines (libgpiod v2 on the gateway)."""

    reader_id: str = Field(min_length=1)
    chip: str = "/dev/gpiochip0"
    d0: int = Field(ge=0, description="GPIO line offset of D0 (green wire)")
    d1: int = Field(ge=0, description="GPIO line offset of D1 (white wire)")
    idle_ms: float = Field(default=25.0, ge=5, le=1000)
    formats: list[WiegandFormatName] = Field(default_factory=_all_wiegand_formats, min_length=1)
    w34_uid: bool = False

    @model_validator(mode="after")
    def _lines(self) -> WiegandReaderConfig:
        if self.d0 == self.d1:
            raise ValueError("d0 and d1 must be different GPIO lines")
        return self


class Dlt645MeterConfig(_Model):
    meter_id: str = Field(min_length=1)
    address: str = Field(
        pattern=r"^[0-9]{12}$", description="12 digits from the nameplate, e.g. 000000123456"
    )


class Dlt645BusConfig(_Model):
    """DL/T 645-2007 meters on one RS-485 bus (a serial port or socket://host:port)."""

    url: str = Field(min_length=1, description="device path or socket://host:port")
    baudrate: int = 2400
    parity: Literal["E", "N", "O"] = "E"
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0, le=5)
    meters: list[Dlt645MeterConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Dlt645BusConfig:
        addresses = [m.address for m in self.meters]
        if len(set(addresses)) != len(addresses):
            raise ValueError("two meters on one bus have the same address")
        return self


class BleSensorConfig(_Model):
    sensor_id: str = Field(min_length=1)
    mac: str = Field(pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
    bindkey: SecretStr | None = Field(
        default=None, description="encrypted BTHome sensors: the 16-byte key as 32 hex digits"
    )

    @model_validator(mode="after")
    def _bindkey(self) -> BleSensorConfig:
        key = self.bindkey.get_secret_value() if self.bindkey is not None else None
        if key is not None and (len(key) != 32 or any(c not in _HEX for c in key)):
            raise ValueError("bindkey must be 32 hex digits (a 16-byte BTHome key)")
        return self

    def bindkey_bytes(self) -> bytes | None:
        return None if self.bindkey is None else bytes.fromhex(self.bindkey.get_secret_value())


_HEX = frozenset("0123456789abcdefABCDEF")


class BleConfig(_Model):
    source: str = Field(default="bleak", description="'bleak' (the radio) or feed://host:port")
    adapter: str | None = None
    sensors: list[BleSensorConfig] = Field(default_factory=list)
    watchdog_s: float = Field(
        default=120.0,
        ge=0,
        description="restart scanning after this long without any advert; 0: off",
    )
    offline_after_s: float = Field(default=300.0, gt=0, description="a sensor not heard is offline")

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
    config_rollback_grace_s: float = Field(
        default=60.0,
        gt=0,
        description="a pushed config under which every driver fails this long is rolled back",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    modbus_tcp: list[ModbusTcpConfig] = Field(default_factory=list)
    modbus: list[ModbusBusConfig] = Field(default_factory=list)
    serial_readers: list[SerialReaderConfig] = Field(default_factory=list)
    wiegand_readers: list[WiegandReaderConfig] = Field(default_factory=list)
    dlt645: list[Dlt645BusConfig] = Field(default_factory=list)
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
