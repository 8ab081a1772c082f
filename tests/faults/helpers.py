"""The rig of the fault tests: a private Mosquitto, the fleet manager (``fleet serve``), the
simulated building (``firmware-sim building``), the edge agent, and an observer that records
what reaches the fleet side of the broker, in arrival order.

What the agent committed is read from its outbox's audit table (``outbox.audit = true``: every
committed message id, written in the same transaction as the message); what the fleet manager
stored is read from its database (``uplink_messages``: every applied message id, once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import sqlalchemy as sa
import tomli_w

from fleet.demo import agent_config_from_endpoints
from tests.conftest import free_port, wait_for_port
from tests.support.mosquitto import PrivateMosquitto
from tests.support.procs import child, wait_until

OUTBOX_KINDS = ("alert", "card", "charging", "telemetry", "config_state", "cmd_result")


@dataclass
class Arrival:
    index: int
    at: float  # time.time() at the observer
    kind: str
    body: dict[str, Any]


@dataclass
class Observer:
    """A persistent-session subscriber to one gateway's uplink (survives broker restarts)."""

    broker: PrivateMosquitto
    gateway_id: str
    arrivals: list[Arrival] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        ident = f"observer-{uuid.uuid4().hex[:8]}"
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, identifier=ident, clean_session=False
                ) as client:
                    await client.subscribe(f"edge/v1/{self.gateway_id}/up/#", qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                        kind = str(m.topic).rsplit("/", 1)[-1]
                        self.arrivals.append(Arrival(len(self.arrivals), time.time(), kind, body))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    def first_arrival(self) -> dict[str, Arrival]:
        out: dict[str, Arrival] = {}
        for a in self.arrivals:
            out.setdefault(a.body["id"], a)
        return out

    def heartbeats(self) -> list[dict[str, Any]]:
        return [a.body for a in self.arrivals if a.kind == "heartbeat"]


@contextlib.asynccontextmanager
async def observing(broker: PrivateMosquitto, gateway_id: str) -> AsyncIterator[Observer]:
    obs = Observer(broker, gateway_id)
    task = asyncio.create_task(obs.run())
    try:
        # Subscribed before anything is published (the session is persistent from then on).
        await asyncio.wait_for(obs.subscribed.wait(), 15)
        yield obs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Rig:
    tmp: Path
    broker: PrivateMosquitto
    database_url: str
    gateway_id: str
    endpoints: dict[str, Any]
    sim_started: float

    @property
    def state_dir(self) -> Path:
        return self.tmp / "agent-state"

    def agent_config(self, *, poll_interval_s: float = 0.5, **overrides: Any) -> Path:
        config = agent_config_from_endpoints(
            self.endpoints,
            gateway_id=self.gateway_id,
            mqtt_url=self.broker.url,
            state_dir=self.state_dir,
            charging_sustain_s=3.0,
            poll_interval_s=poll_interval_s,
        )
        config["heartbeat_interval_s"] = 1.0
        config["telemetry_batch_s"] = 0.5
        config["mqtt"] = {"url": self.broker.url, "keepalive_s": 5, "will_delay_s": 2}
        config["outbox"] = {"audit": True, "historical_after_s": 2.0, "reserve_mb": 1.0}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = self.tmp / "agent.toml"
        path.write_text(tomli_w.dumps(config))
        return path

    # -- what the agent committed ------------------------------------------------------------

    def audit(self) -> list[tuple[str, int, float]]:
        """(msg_id, priority, created) of every message the outbox committed (not dropped)."""
        path = self.state_dir / "outbox.db"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return [
                (str(r[0]), int(r[1]), float(r[2]))
                for r in db.execute(
                    "SELECT msg_id, priority, created FROM outbox_audit WHERE dropped = 0"
                )
            ]
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            db.close()

    def outbox_depth(self) -> int:
        db = sqlite3.connect(f"file:{self.state_dir / 'outbox.db'}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            db.close()

    def integrity(self) -> str:
        db = sqlite3.connect(self.state_dir / "outbox.db", timeout=5)
        try:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            db.close()

    # -- what the fleet manager stored -------------------------------------------------------

    def fleet_ids(self) -> dict[str, float]:
        """message id -> received_at (epoch s) of every message the fleet manager applied."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT message_id, received_at FROM uplink_messages WHERE gateway_id = :gw"
                    ),
                    {"gw": self.gateway_id},
                ).all()
        except sa.exc.OperationalError:
            return {}
        finally:
            engine.dispose()
        return {str(r[0]): _epoch(r[1]) for r in rows}

    def fleet_rows_per_id(self, table: str) -> dict[str, int]:
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        f"SELECT message_id, count(*) FROM {table}"
                        " WHERE gateway_id = :gw GROUP BY message_id"
                    ),
                    {"gw": self.gateway_id},
                ).all()
        finally:
            engine.dispose()
        return {str(r[0]): int(r[1]) for r in rows}


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


@contextlib.contextmanager
def fleet_and_building(
    tmp: Path,
    broker: PrivateMosquitto,
    database_url: str,
    *,
    sim_args: list[str],
) -> Iterator[Rig]:
    """The fleet manager (persistent MQTT session) and a simulated building, both running."""
    gateway_id = f"gw-fault-{uuid.uuid4().hex[:10]}"
    http_port = free_port()
    env = {
        "FLEET_DATABASE_URL": database_url,
        "FLEET_MQTT_URL": broker.url,
        "FLEET_MQTT_CLIENT_ID": f"fleet-{gateway_id}",
        "FLEET_HTTP_PORT": str(http_port),
        "FLEET_SECRET_KEY": "fault-secret-key-that-is-long-enough-0123456789",
        "FLEET_ADMIN_PASSWORD": "fault-pass-123",
        "FLEET_WEBHOOK_SECRET": "fault-webhook-secret-0123456789",
        "FLEET_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
    }
    endpoints_file = tmp / "building.json"
    with child(["fleet", "serve"], tmp / "fleet.log", env):
        assert wait_for_port("127.0.0.1", http_port, timeout=60), (tmp / "fleet.log").read_text()

        def subscribed() -> bool:
            r = httpx.get(f"http://127.0.0.1:{http_port}/api/health", timeout=5)
            return bool(r.json().get("mqtt_connected"))

        wait_until(subscribed, 30, "the fleet manager's ingest to subscribe")
        sim_started = time.time()
        with child(
            ["firmware_sim", "building", "--endpoints-file", str(endpoints_file), *sim_args],
            tmp / "sim.log",
        ):
            wait_until(endpoints_file.exists, 30, "the simulator's endpoints file")
            endpoints = json.loads(endpoints_file.read_text())
            yield Rig(tmp, broker, database_url, gateway_id, endpoints, sim_started)


async def wait_for(probe: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Async poll: ``probe()`` truthy within ``timeout`` or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
