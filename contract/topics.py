"""The MQTT topic scheme (version 1).

Uplink (gateway publishes): ``edge/v1/{gateway_id}/up/{kind}``
Downlink (gateway subscribes): ``edge/v1/{gateway_id}/down/{kind}``

The split lets the broker's ACL allow a gateway to publish only under its own ``up/`` prefix and
subscribe only to its own ``down/`` prefix.
"""

from __future__ import annotations

import re
from enum import StrEnum

PREFIX = "edge/v1"
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Up(StrEnum):
    BIRTH = "birth"
    DEATH = "death"
    HEARTBEAT = "heartbeat"
    TELEMETRY = "telemetry"
    CARD = "card"
    CHARGING = "charging"
    ALERT = "alert"
    CONFIG_STATE = "config_state"
    CMD_RESULT = "cmd_result"


class Down(StrEnum):
    CONFIG = "config"
    COMMAND = "cmd"


def valid_gateway_id(gateway_id: str) -> bool:
    return bool(_GATEWAY_ID.match(gateway_id))


def up(gateway_id: str, kind: Up) -> str:
    return f"{PREFIX}/{gateway_id}/up/{kind.value}"


def down(gateway_id: str, kind: Down) -> str:
    return f"{PREFIX}/{gateway_id}/down/{kind.value}"


def up_filter(shared_group: str | None = None) -> str:
    """Subscription filter for every gateway's uplink (optionally an MQTT 5 shared one)."""
    base = f"{PREFIX}/+/up/#"
    return f"$share/{shared_group}/{base}" if shared_group else base


def parse_up(topic: str) -> tuple[str, Up] | None:
    """``(gateway_id, kind)`` of an uplink topic, or None when it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != "up":
        return None
    try:
        kind = Up(parts[4])
    except ValueError:
        return None
    if not valid_gateway_id(parts[2]):
        return None
    return parts[2], kind
