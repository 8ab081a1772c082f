"""Helpers for the agent's control-side tests: a real agent in this event loop, a listener on
the gateway's uplink topics through the real broker, and desired-config payloads."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from contract import topics
from contract.control import DesiredConfig, config_hash
from contract.messages import Envelope, decode_uplink
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.conftest import BrokerEndpoint

SITE: dict[str, Any] = {
    "site_id": "s1",
    "units": [{"unit_id": "1-101", "building": "1"}, {"unit_id": "1-102", "building": "1"}],
    "meters": [
        {"meter_id": "m-1-101", "unit_id": "1-101"},
        {"meter_id": "m-1-102", "unit_id": "1-102"},
    ],
}


def gateway_id() -> str:
    return f"gw-ctl-{uuid.uuid4().hex[:10]}"


def base_config(
    gw: str, state_dir: Path, broker: BrokerEndpoint | str, **extra: Any
) -> dict[str, Any]:
    """The TOML of a gateway as parsed (a dict), with no devices unless ``extra`` adds some."""
    url = broker if isinstance(broker, str) else broker.url
    return {
        "gateway_id": gw,
        "state_dir": str(state_dir),
        "site_key": "site-key-0123456789abcdef",
        "heartbeat_interval_s": 0.3,
        "telemetry_batch_s": 0.3,
        "config_rollback_grace_s": 60.0,
        "mqtt": {"url": url},
        "site": SITE,
        **extra,
    }


def modbus_section(port: int, *, interval_s: float = 0.1, meters: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "host": "127.0.0.1",
            "port": port,
            "interval_s": interval_s,
            "timeout_s": 0.2,
            "meters": [{"meter_id": f"m-1-10{i}", "slave": i} for i in range(1, meters + 1)],
        }
    ]


def desired_payload(gw: str, version: int, config: dict[str, Any], **override: Any) -> bytes:
    fields: dict[str, Any] = {
        "gw": gw,
        "version": version,
        "hash": config_hash(config),
        "issued_at": datetime.now(UTC),
        "config": config,
    }
    fields.update(override)
    return DesiredConfig(**fields).model_dump_json().encode()


class Uplink:
    """Everything the gateway publishes, decoded against the contract, in arrival order."""

    def __init__(self, client: aiomqtt.Client, gw: str) -> None:
        self.client = client
        self.gw = gw
        self.messages: list[Envelope] = []
        self.topics: list[str] = []

    def of(self, kind: topics.Up) -> list[Any]:
        return [m for t, m in zip(self.topics, self.messages, strict=True) if t.endswith(kind)]

    async def wait(
        self, kind: topics.Up, predicate: Callable[[Any], bool] = lambda m: True,
        timeout: float = 20.0,
    ) -> Any:  # fmt: skip
        async with asyncio.timeout(timeout):
            while True:
                for m in self.of(kind):
                    if predicate(m):
                        return m
                await asyncio.sleep(0.02)

    async def publish(self, kind: topics.Down, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(topics.down(self.gw, kind), payload, qos=1, retain=retain)

    async def _collect(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)
            payload = message.payload
            assert isinstance(payload, bytes)
            self.messages.append(decode_uplink(topic, payload))
            self.topics.append(topic)


@contextlib.asynccontextmanager
async def listening(broker: BrokerEndpoint, gw: str) -> AsyncIterator[Uplink]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"test-{uuid.uuid4().hex[:8]}"
    ) as client:
        await client.subscribe(f"{topics.PREFIX}/{gw}/up/#", qos=1)
        up = Uplink(client, gw)
        task = asyncio.create_task(up._collect())
        try:
            yield up
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
            # leave no retained config behind for another test
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topics.down(gw, topics.Down.CONFIG), b"", qos=1, retain=True)


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    task = asyncio.create_task(agent.run(), name="agent")
    try:
        await asyncio.wait_for(agent.supervisor.ready.wait(), 10)
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_agent(base: dict[str, Any], **kwargs: Any) -> Agent:
    return Agent(AgentConfig.model_validate(base), base=base, **kwargs)
