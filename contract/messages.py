"""Payload models for every MQTT message (schema version 1).

Every message carries the envelope: ``v`` (schema version), ``id`` (minted at the edge, stable
across re-sends, so the fleet manager can upsert by it), ``gw`` (gateway id, must match the
topic), ``session`` (increments on every agent start) and ``seq`` (per-session sequence number,
so gaps are visible), and ``ts`` (when the message was produced). ``historical`` is set on
messages sent from the backlog after an outage.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from contract import SCHEMA_VERSION
from contract.alerts import AlertKind, Category, Change, EvidenceValue, Severity
from contract.topics import Up, parse_up

MAX_PAYLOAD_BYTES = 256 * 1024


class ContractError(ValueError):
    """A payload that does not satisfy the contract. ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str, gateway_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.gateway_id = gateway_id


def new_message_id() -> str:
    return uuid.uuid4().hex


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1  # contract.SCHEMA_VERSION
    id: str = Field(min_length=1, max_length=64)
    gw: str = Field(min_length=1, max_length=64)
    session: int = Field(ge=0)
    seq: int = Field(ge=0)
    ts: AwareDatetime
    historical: bool = False


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    kind: Literal["meter", "card_reader", "charging_sensor"]
    driver: str
    unit_id: str | None = None
    location: str | None = None


class Birth(Envelope):
    type: Literal["birth"] = "birth"
    agent_version: str
    started_at: AwareDatetime
    site_id: str
    config_version: int | None = None
    devices: list[DeviceInfo] = Field(default_factory=list)


class Death(Envelope):
    """Published by the agent on a clean stop, and registered as its MQTT last will."""

    type: Literal["death"] = "death"
    reason: Literal["clean_stop", "connection_lost"]


class DeviceStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    online: bool
    last_seen: AwareDatetime | None = None
    fault: str | None = None
    counters: dict[str, int] = Field(default_factory=dict)


class TaskHealth(BaseModel):
    """One supervised task of the agent (a driver, the uplink, the rules, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    running: bool
    failures: int = Field(default=0, ge=0)
    restarts: int = Field(default=0, ge=0)
    last_error: str | None = Field(default=None, max_length=500)
    last_failure_at: AwareDatetime | None = None


class Heartbeat(Envelope):
    """Gateway health. Every field after ``devices`` is optional (added in issue 4)."""

    type: Literal["heartbeat"] = "heartbeat"
    uptime_s: float = Field(ge=0)
    agent_version: str
    outbox_depth: int = Field(default=0, ge=0)
    outbox_oldest_age_s: float | None = None
    devices: dict[str, DeviceStatus] = Field(default_factory=dict)
    cpu_temp_c: float | None = None
    load_avg: tuple[float, float, float] | None = None
    mem_rss_bytes: int | None = Field(default=None, ge=0)
    mem_available_bytes: int | None = Field(default=None, ge=0)
    disk_free_bytes: int | None = Field(default=None, ge=0)
    tasks: dict[str, TaskHealth] = Field(default_factory=dict)
    config_version: int | None = Field(default=None, ge=0)
    config_hash: str | None = Field(default=None, max_length=128)
    outbox_fault: str | None = Field(
        default=None, max_length=64, description="e.g. 'disk_full' while the outbox cannot store"
    )
    outbox_counters: dict[str, int] = Field(
        default_factory=dict, description="outbox counters: drops, disk-full errors, ..."
    )
    devices_total: int | None = Field(
        default=None,
        ge=0,
        description="all the gateway's devices, also those a partial ``devices`` leaves out",
    )
    devices_online: int | None = Field(default=None, ge=0)
    devices_faulty: int | None = Field(default=None, ge=0)
    devices_partial: bool = Field(
        default=False,
        description="``devices`` holds only some devices: every offline or faulty one, and the "
        "others in turn (a gateway with too many devices for one message)",
    )


class MeterSample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meter_id: str
    unit_id: str | None = None
    ts: AwareDatetime
    power_w: float
    voltage_v: float | None = None
    current_a: float | None = None
    energy_kwh: float | None = None
    power_factor: float | None = None


class MeterTelemetry(Envelope):
    type: Literal["telemetry"] = "telemetry"
    readings: list[MeterSample] = Field(min_length=1, max_length=5000)


class CardSwipeEvent(Envelope):
    """A swipe. ``card`` is the HMAC-SHA256 pseudonym (hex), never the card number."""

    type: Literal["card"] = "card"
    reader_id: str
    card: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    unit_id: str | None = None
    event_ts: AwareDatetime


class ChargingEvent(Envelope):
    type: Literal["charging"] = "charging"
    sensor_id: str
    unit_id: str | None = None
    location: str | None = None
    charging: bool
    power_w: float | None = None
    event_ts: AwareDatetime


class AlertSubject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: str | None = None
    building: str | None = None
    sensor_id: str | None = None
    meter_id: str | None = None
    reader_id: str | None = None


class AlertMessage(Envelope):
    """An alert episode's state. ``alert_id`` is the episode id: stable across updates."""

    type: Literal["alert"] = "alert"
    alert_id: str = Field(min_length=1, max_length=64)
    change: Change
    kind: AlertKind
    category: Category
    severity: Severity
    subject: AlertSubject
    raised_at: AwareDatetime
    cleared_at: AwareDatetime | None = None
    evidence: dict[str, EvidenceValue] = Field(default_factory=dict)


class ConfigState(Envelope):
    """What the agent did with a desired config (``down/config``): applied, rejected, rolled back.

    ``version``/``hash`` identify the config this report is about; ``applied_version`` and
    ``applied_hash`` the one now running (after a rejection or rollback: the previous one).
    """

    type: Literal["config_state"] = "config_state"
    status: Literal["applied", "rejected", "rolled_back", "unchanged"]
    version: int = Field(ge=0)
    hash: str = Field(min_length=1, max_length=128)
    applied_version: int | None = Field(default=None, ge=0)
    applied_hash: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=2000)


class CommandResult(Envelope):
    """The answer to a ``down/cmd`` command, matched by ``correlation_id``."""

    type: Literal["cmd_result"] = "cmd_result"
    correlation_id: str = Field(min_length=1, max_length=64)
    command: str = Field(min_length=1, max_length=64)
    ok: bool
    detail: str | None = Field(default=None, max_length=2000)
    data: dict[str, Any] = Field(default_factory=dict)


_MODEL_OF: dict[Up, type[Envelope]] = {
    Up.BIRTH: Birth,
    Up.DEATH: Death,
    Up.HEARTBEAT: Heartbeat,
    Up.TELEMETRY: MeterTelemetry,
    Up.CARD: CardSwipeEvent,
    Up.CHARGING: ChargingEvent,
    Up.ALERT: AlertMessage,
    Up.CONFIG_STATE: ConfigState,
    Up.CMD_RESULT: CommandResult,
}


def encode(message: Envelope) -> bytes:
    return message.model_dump_json(exclude_none=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def decode_uplink(topic: str, payload: bytes) -> Envelope:
    """Validate an uplink message against its topic. Raises :class:`ContractError`."""
    parsed = parse_up(topic)
    if parsed is None:
        raise ContractError("bad_topic", f"not an uplink topic: {topic[:200]!r}")
    gateway_id, kind = parsed
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", gateway_id)
    try:
        raw: Any = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("not_json", str(exc)[:200], gateway_id) from exc
    except ValueError as exc:
        raise ContractError("invalid", str(exc), gateway_id) from exc
    if not isinstance(raw, dict):
        raise ContractError("invalid", "payload is not a JSON object", gateway_id)
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise ContractError("unknown_version", f"schema version {version!r}", gateway_id)
    model = _MODEL_OF[kind]
    try:
        message = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContractError("invalid", f"{where}: {first['msg']}", gateway_id) from exc
    if message.gw != gateway_id:
        raise ContractError(
            "topic_mismatch", f"payload gw {message.gw!r} on topic of {gateway_id!r}", gateway_id
        )
    return message
