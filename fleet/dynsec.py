"""Mosquitto dynamic security over its control topic: one client and one role per gateway.

The fleet manager sends JSON commands to ``$CONTROL/dynamic-security/v1`` as a broker client
with dynamic-security rights (``FLEET_BROKER_ADMIN_USERNAME``, by default the user of
``FLEET_MQTT_URL``) and reads the answers on ``$CONTROL/dynamic-security/v1/response``, matched
by ``correlationData``. Each call opens its own short connection: enrollments and replacements
are rare, and a connection that exists only while it is used cannot be found broken later.

A gateway ``gw`` gets the client ``gw`` (its password is set here and kept by Mosquitto only, as
a salted hash) with the role ``gateway-gw``, which allows exactly:

- ``publishClientSend edge/v1/gw/up/#`` (its own uplink),
- ``subscribePattern edge/v1/gw/down/#`` (its own config and commands),
- ``publishClientReceive edge/v1/gw/down/#``.

Everything else falls to the default ACL access, which Mosquitto ships as deny for publishing
and subscribing. The fleet manager's own ingest user gets the role ``fleet-service``
(:meth:`DynsecControl.ensure_service_role`): subscribe to every uplink and publish every downlink.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from contract.topics import PREFIX

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
SERVICE_ROLE = "fleet-service"
_SUBACK_FAILURE = 0x80


class DynsecError(Exception):
    """The broker could not be reached, or refused a command (``command`` and ``error``)."""

    def __init__(self, message: str, *, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool = False


def gateway_role(gateway_id: str) -> str:
    return f"gateway-{gateway_id}"


def gateway_acls(gateway_id: str) -> list[dict[str, Any]]:
    up = f"{PREFIX}/{gateway_id}/up/#"
    down = f"{PREFIX}/{gateway_id}/down/#"
    return [
        {"acltype": "publishClientSend", "topic": up, "allow": True},
        {"acltype": "subscribePattern", "topic": down, "allow": True},
        {"acltype": "publishClientReceive", "topic": down, "allow": True},
    ]


def create_gateway_commands(gateway_id: str, password: str) -> list[dict[str, Any]]:
    """Replace any earlier client/role of this gateway (a re-enrollment after a factory reset
    gets a fresh password) and create them anew."""
    role = gateway_role(gateway_id)
    return [
        {"command": "deleteClient", "username": gateway_id},
        {"command": "deleteRole", "rolename": role},
        {"command": "createRole", "rolename": role, "acls": gateway_acls(gateway_id)},
        {
            "command": "createClient",
            "username": gateway_id,
            "password": password,
            "textname": f"gateway {gateway_id}",
            "roles": [{"rolename": role, "priority": 0}],
        },
    ]


def revoke_gateway_commands(gateway_id: str) -> list[dict[str, Any]]:
    """Disable first (kicks a connected session at once), then delete client and role."""
    return [
        {"command": "disableClient", "username": gateway_id},
        {"command": "deleteClient", "username": gateway_id},
        {"command": "deleteRole", "rolename": gateway_role(gateway_id)},
    ]


def service_role_acls() -> list[dict[str, Any]]:
    uplink = f"{PREFIX}/+/up/#"
    downlink = f"{PREFIX}/+/down/#"
    return [
        {"acltype": "subscribePattern", "topic": uplink, "allow": True},
        {"acltype": "publishClientReceive", "topic": uplink, "allow": True},
        {"acltype": "publishClientSend", "topic": downlink, "allow": True},
    ]


# Errors that mean "already as wanted": deleting what is gone, creating what exists.
_HARMLESS = {
    "deleteClient": ("not found",),
    "deleteRole": ("not found",),
    "disableClient": ("not found",),
    "createRole": ("already exists",),
    "addRoleACL": ("already exists",),
    "addClientRole": ("already",),
}


def _harmless(command: str, error: str) -> bool:
    return any(text in error.lower() for text in _HARMLESS.get(command, ()))


class DynsecControl:
    """Runs batches of dynamic-security commands; raises :class:`DynsecError` on failure."""

    def __init__(self, broker: BrokerAddress, *, timeout_s: float = 10.0) -> None:
        self._broker = broker
        self._timeout_s = timeout_s

    async def run(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` as one message; return the responses in order. A command whose
        error is harmless (see ``_HARMLESS``) counts as done; any other error raises."""
        tagged = [{**c, "correlationData": uuid.uuid4().hex} for c in commands]
        try:
            async with asyncio.timeout(self._timeout_s):
                responses = await self._exchange(tagged)
        except TimeoutError as exc:
            raise DynsecError(
                f"no answer from the dynamic-security plugin within {self._timeout_s:.0f} s "
                "(is it loaded, and may this user use it?)"
            ) from exc
        except aiomqtt.MqttError as exc:
            raise DynsecError(f"broker unavailable: {exc}") from exc
        ordered: list[dict[str, Any]] = []
        for sent in tagged:
            response = responses[sent["correlationData"]]
            error = response.get("error")
            if error and not _harmless(sent["command"], str(error)):
                raise DynsecError(f"{sent['command']}: {error}", command=sent["command"])
            ordered.append(response)
        return ordered

    async def ensure_service_role(self, username: str) -> None:
        """Give the fleet manager's own broker user the ``fleet-service`` role (idempotent).

        Mosquitto disconnects a client whose roles change ("administrative action"), so when
        ``username`` is the admin user itself the answer to ``addClientRole`` may never
        arrive; the role is then verified on a new connection.
        """
        acls = service_role_acls()
        await self.run(
            [
                {"command": "createRole", "rolename": SERVICE_ROLE, "acls": acls},
                *({"command": "addRoleACL", "rolename": SERVICE_ROLE, **acl} for acl in acls),
            ]
        )
        if await self._has_role(username, SERVICE_ROLE):
            return
        add = {"command": "addClientRole", "username": username, "rolename": SERVICE_ROLE}
        try:
            await self.run([add])
        except DynsecError:
            if not await self._has_role(username, SERVICE_ROLE):
                raise
        log.info("broker user %r now has the %s role", username, SERVICE_ROLE)

    async def _has_role(self, username: str, rolename: str) -> bool:
        (response,) = await self.run([{"command": "getClient", "username": username}])
        client = response.get("data", {}).get("client", {})
        return any(r.get("rolename") == rolename for r in client.get("roles", []))

    async def _exchange(self, tagged: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        b = self._broker
        wanted = {c["correlationData"] for c in tagged}
        found: dict[str, dict[str, Any]] = {}
        async with aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            tls_context=ssl.create_default_context() if b.tls else None,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            granted = await client.subscribe(RESPONSE_TOPIC, qos=1)
            for code in granted:
                refused = (
                    code.is_failure if isinstance(code, ReasonCode) else code >= _SUBACK_FAILURE
                )
                if refused:
                    raise DynsecError(
                        f"broker refused a subscription to {RESPONSE_TOPIC}: this user has no "
                        "dynamic-security rights"
                    )
            # QoS 0: the responses confirm delivery, and a disconnect (Mosquitto drops a client
            # whose own roles change) then surfaces at once in the message loop below.
            await client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=0)
            async for message in client.messages:
                try:
                    body = json.loads(message.payload)
                except (TypeError, ValueError):
                    continue
                for response in body.get("responses", []) if isinstance(body, dict) else []:
                    key = response.get("correlationData") if isinstance(response, dict) else None
                    if isinstance(key, str) and key in wanted:
                        found[key] = response
                if wanted <= found.keys():
                    return found
        raise DynsecError("broker closed the connection before answering")
