"""Builders and runners for the fleet manager tests: real broker, real database, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiomqtt
import httpx
import sqlalchemy as sa

from contract.alerts import CATEGORY_OF, AlertKind, Change, Severity
from contract.control import DesiredConfig
from contract.messages import (
    AlertMessage,
    AlertSubject,
    Birth,
    CardSwipeEvent,
    Death,
    Envelope,
    Heartbeat,
    MeterSample,
    MeterTelemetry,
    encode,
    new_message_id,
)
from contract.topics import Down, Up, down, up
from fleet.app import create_app
from fleet.db import make_engine, make_sessionmaker
from fleet.models import GatewayHeartbeat
from fleet.settings import Settings
from tests.conftest import BrokerEndpoint

T = TypeVar("T")

SECRET = "test-secret-key-0123456789abcdef"
WEBHOOK_SECRET = "test-webhook-key-fedcba9876543210"
ADMIN_PASSWORD = "test-admin-pass"
T0 = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)


def gateway_id() -> str:
    """Unique per test: in CI the broker is one shared Mosquitto."""
    return f"gw-t-{uuid.uuid4().hex[:12]}"


def heartbeat_rows(database_url: str, gw: str) -> list[GatewayHeartbeat]:
    """The gateway's stored heartbeat history, oldest first."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return list(
                session.scalars(
                    sa.select(GatewayHeartbeat)
                    .where(GatewayHeartbeat.gateway_id == gw)
                    .order_by(GatewayHeartbeat.ts)
                )
            )
    finally:
        engine.dispose()


def make_settings(broker: BrokerEndpoint, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_url": broker.url,
        "secret_key": SECRET,
        "webhook_secret": WEBHOOK_SECRET,
        "admin_password": ADMIN_PASSWORD,
        "public_url": "https://fleet.example.test",
        "forward_poll_s": 0.5,
        "forward_backoff_initial_s": 0.2,
        "forward_backoff_max_s": 0.5,
        **overrides,
    }
    return Settings(**values)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 15.0
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@contextlib.asynccontextmanager
async def fleet_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running (migrations, ingest, forwarder), reached over ASGI.

    Returns once ingest is subscribed, so messages published afterwards are not missed.
    """
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://fleet.test"
        ) as client,
    ):

        async def subscribed() -> bool:
            r = await client.get("/api/health")
            return bool(r.json()["mqtt_connected"])

        await eventually(subscribed, "ingest to subscribe")
        yield client


async def login(client: httpx.AsyncClient, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    r = await client.post("/api/auth/token", data={"username": "admin", "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def publish(broker: BrokerEndpoint, *messages: tuple[str, bytes]) -> None:
    """Publish raw (topic, payload) pairs at QoS 1, as a gateway would."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def wire(message: Envelope) -> tuple[str, bytes]:
    kind = Up(message.model_dump()["type"])
    return up(message.gw, kind), encode(message)


def envelope(gw: str, *, session: int = 1, seq: int = 0, ts: datetime = T0) -> dict[str, Any]:
    return {"id": new_message_id(), "gw": gw, "session": session, "seq": seq, "ts": ts}


def birth(gw: str, *, session: int = 1, seq: int = 0) -> Birth:
    return Birth(
        **envelope(gw, session=session, seq=seq),
        agent_version="0.1.0-test",
        started_at=T0,
        site_id="site-test",
    )


def death(gw: str, *, session: int = 1, seq: int = 0, reason: str = "clean_stop") -> Death:
    return Death.model_validate({**envelope(gw, session=session, seq=seq), "reason": reason})


def heartbeat(gw: str, *, session: int = 1, seq: int = 1) -> Heartbeat:
    return Heartbeat(
        **envelope(gw, session=session, seq=seq), uptime_s=1.0, agent_version="0.1.0-test"
    )


def telemetry(gw: str, meter_id: str, *, count: int = 3) -> MeterTelemetry:
    readings = [
        MeterSample(
            meter_id=meter_id, unit_id="1-201", ts=T0 + timedelta(seconds=10 * i), power_w=150.0 + i
        )
        for i in range(count)
    ]
    return MeterTelemetry(**envelope(gw, seq=2), readings=readings)


def swipe(gw: str) -> CardSwipeEvent:
    return CardSwipeEvent(
        **envelope(gw, seq=3), reader_id="r-1", card="ab" * 16, unit_id="1-201", event_ts=T0
    )


def alert(
    gw: str,
    alert_id: str,
    *,
    change: Change = Change.RAISED,
    kind: AlertKind = AlertKind.EBIKE_CHARGING,
    severity: Severity = Severity.MEDIUM,
    ts: datetime = T0,
    cleared_at: datetime | None = None,
    evidence: dict[str, float | int | str | bool | None] | None = None,
    unit_id: str = "1-201",
) -> AlertMessage:
    return AlertMessage(
        **envelope(gw, seq=10, ts=ts),
        alert_id=alert_id,
        change=change,
        kind=kind,
        category=CATEGORY_OF[kind],
        severity=severity,
        subject=AlertSubject(unit_id=unit_id, sensor_id="ble-201"),
        raised_at=T0,
        cleared_at=cleared_at,
        evidence=evidence if evidence is not None else {"peak_power_w": 182.5, "location": "unit"},
    )


async def retained_desired(
    broker: BrokerEndpoint, gw: str, wanted: Callable[[DesiredConfig], bool]
) -> DesiredConfig:
    """Subscribe to the gateway's config topic (as the gateway would) until a config that
    ``wanted`` accepts is there: the retained one, or one published afterwards."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(down(gw, Down.CONFIG), qos=1)
        async with asyncio.timeout(90):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                desired = DesiredConfig.model_validate_json(message.payload)
                if wanted(desired):
                    return desired
    raise AssertionError("the broker closed the subscription")
