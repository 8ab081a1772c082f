"""The uplink against a real broker: drain order, historical marks, MQTT 5 fallback, TLS and
per-gateway credentials (a private Mosquitto), birth and will."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
from pydantic import SecretStr

from contract.messages import Birth, CardSwipeEvent, MeterSample, MeterTelemetry, encode
from contract.topics import Up, up
from edge_agent.config import MqttConfig
from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_EVENT, PRIORITY_TELEMETRY, Outbox
from edge_agent.session import MessageFactory
from edge_agent.uplink import Uplink
from tests.conftest import BrokerEndpoint
from tests.support.mosquitto import PrivateMosquitto
from tests.support.tls import make_ca, server_cert

T0 = dt.datetime(2026, 3, 1, 20, 0, tzinfo=dt.UTC)


def _gw() -> str:
    return f"gw-up-{uuid.uuid4().hex[:10]}"


def _birth(factory: MessageFactory) -> Birth:
    return factory.make(Birth, agent_version="test", started_at=T0, site_id="site-test")


@contextlib.asynccontextmanager
async def _observer(
    host: str, port: int, gw: str, **kwargs: Any
) -> AsyncIterator[list[dict[str, Any]]]:
    """Everything published under the gateway's uplink prefix, in arrival order."""
    seen: list[dict[str, Any]] = []
    async with aiomqtt.Client(host, port, **kwargs) as client:
        await client.subscribe(f"edge/v1/{gw}/up/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                seen.append(body)

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until(probe: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _message(factory: MessageFactory, kind: str) -> tuple[str, bytes, str]:
    if kind == "card":
        msg: Any = factory.make(
            CardSwipeEvent, reader_id="r-1", card="ab" * 16, unit_id="1-201", event_ts=T0
        )
        return up(factory.gateway_id, Up.CARD), encode(msg), msg.id
    msg = factory.make(MeterTelemetry, readings=[MeterSample(meter_id="m-1", ts=T0, power_w=100.0)])
    return up(factory.gateway_id, Up.TELEMETRY), encode(msg), msg.id


async def test_backlog_drains_alerts_first_and_marks_it_historical(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = _gw()
    factory = MessageFactory(gw, session=4)
    now = [1_000_000.0]
    outbox = Outbox(tmp_path / "outbox.db", clock=lambda: now[0], reserve_bytes=0)
    backlog: dict[str, str] = {}
    for i in range(300):
        topic, payload, msg_id = _message(factory, "telemetry" if i % 3 else "card")
        prio = PRIORITY_TELEMETRY if i % 3 else PRIORITY_EVENT
        outbox.put(topic, payload, prio, msg_id=msg_id)
        backlog[msg_id] = "telemetry" if i % 3 else "card"
    # An "alert" (a card-shaped message on the alert priority keeps the test short).
    topic, payload, alert_id = _message(factory, "card")
    await outbox.put(topic, payload, PRIORITY_ALERT, msg_id=alert_id)
    now[0] += 120.0  # the backlog is two minutes old when the uplink connects
    config = MqttConfig(url=mqtt_broker.url, max_inflight=20)
    uplink = Uplink(
        config=config,
        outbox=outbox,
        factory=factory,
        birth=lambda: _birth(factory),
        historical_after_s=30.0,
        clock=lambda: now[0],
    )
    async with _observer(mqtt_broker.host, mqtt_broker.port, gw) as seen:
        task = asyncio.create_task(uplink.run())
        try:
            await _until(lambda: outbox.depth() == 0 and len(seen) >= 302, "the backlog")
            # A message produced now is live.
            topic, payload, live_id = _message(factory, "card")
            await outbox.put(topic, payload, PRIORITY_EVENT, msg_id=live_id)
            await _until(lambda: any(m["id"] == live_id for m in seen), "the live message")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "birth"
    ids = [m["id"] for m in seen]
    assert ids[1] == alert_id  # the alert first
    first_tel = kinds.index("telemetry")
    assert set(kinds[2:first_tel]) == {"card"}  # then the events, then telemetry
    assert len([k for k in kinds if k == "card"]) == 101 + 1
    # Every backlog message arrived (at least once) and was marked historical; the new is not.
    by_id = {m["id"]: m for m in seen}
    assert set(backlog) | {alert_id} <= set(by_id)
    assert all(by_id[i]["historical"] is True for i in [*backlog, alert_id])
    assert by_id[live_id]["historical"] is False
    assert uplink.counters["sent_historical"] >= 301
    # The birth carries this session's number; seq numbers grow.
    assert seen[0]["session"] == 4
    # MQTT 5 (will delay) where the broker has it; amqtt speaks 3.1.1 only.
    assert uplink.mqtt5 is (mqtt_broker.kind == "external")
    outbox.close()


def _make_ca_and_server(directory: Path) -> tuple[Path, Path, Path]:
    ca = make_ca(directory, "test ca")
    cert_file, key_file = server_cert(directory, ca)
    return ca.pem, cert_file, key_file


async def test_tls_and_per_gateway_credentials(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = _make_ca_and_server(tmp_path)
    broker = PrivateMosquitto(tmp_path / "broker")  # skips or fails without Mosquitto
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "gw-tls", "s3cret-gw-pass"], check=True
    )
    # The listener speaks TLS only and wants a password.
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwd}\ncafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\n"
    )
    with broker:
        gw = "gw-tls"
        factory = MessageFactory(gw, session=2)
        outbox = Outbox(tmp_path / "outbox.db", reserve_bytes=0)
        topic, payload, msg_id = _message(factory, "card")
        await outbox.put(topic, payload, PRIORITY_EVENT, msg_id=msg_id)
        good = MqttConfig(
            url=f"mqtts://localhost:{broker.port}",
            username="gw-tls",
            password=SecretStr("s3cret-gw-pass"),
            ca_file=ca_file,
        )
        tls = ssl.create_default_context(cafile=str(ca_file))
        async with _observer(
            "localhost",
            broker.port,
            gw,
            username="gw-tls",
            password="s3cret-gw-pass",
            tls_context=tls,
        ) as seen:
            uplink = Uplink(
                config=good, outbox=outbox, factory=factory, birth=lambda: _birth(factory)
            )
            task = asyncio.create_task(uplink.run())
            try:
                await _until(lambda: any(m["id"] == msg_id for m in seen), "the TLS message")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert uplink.mqtt5 is True
            # A clean stop says goodbye with this session's death.
            await _until(lambda: seen[-1]["type"] == "death", "the death")
            assert seen[-1]["reason"] == "clean_stop" and seen[-1]["session"] == 2

            # A wrong password is refused and counted; nothing is lost from the outbox.
            await outbox.put(topic, payload, PRIORITY_EVENT, msg_id="m-wrong")
            bad = good.model_copy(update={"password": SecretStr("wrong-pass")})
            uplink = Uplink(
                config=bad, outbox=outbox, factory=factory, birth=lambda: _birth(factory)
            )
            task = asyncio.create_task(uplink.run())
            try:
                await _until(lambda: uplink.counters["connect_failures"] >= 1, "a refusal")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert outbox.depth() == 1
        outbox.close()


class _Proxy:
    """A TCP proxy in front of the broker whose connections the test can cut (a lost uplink)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.accepting = True
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._pipes |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def test_lost_connection_sends_the_will_with_the_session_number(tmp_path: Path) -> None:
    """MQTT 3.1.1 behaviour (will delay 0): a connection that dies without a word yields the
    death at once, with the session number; the uplink reconnects and is born again."""
    with PrivateMosquitto(tmp_path / "broker") as broker:
        gw = _gw()
        factory = MessageFactory(gw, session=9)
        outbox = Outbox(tmp_path / "outbox.db", reserve_bytes=0)
        proxy = _Proxy(broker.port)
        async with proxy as port, _observer("127.0.0.1", broker.port, gw) as seen:
            config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", will_delay_s=0, keepalive_s=5)
            uplink = Uplink(
                config=config, outbox=outbox, factory=factory, birth=lambda: _birth(factory)
            )
            task = asyncio.create_task(uplink.run())
            try:
                await _until(lambda: any(m["type"] == "birth" for m in seen), "the birth")
                proxy.cut()
                await _until(lambda: any(m["type"] == "death" for m in seen), "the death")
                await _until(lambda: [m["type"] for m in seen].count("birth") == 2, "rebirth")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        death = next(m for m in seen if m["type"] == "death")
        assert death["reason"] == "connection_lost" and death["session"] == 9
        assert uplink.mqtt5 is False
        outbox.close()


async def test_mqtt5_will_delay_hides_a_short_outage_but_not_a_long_one(tmp_path: Path) -> None:
    delay = 4
    with PrivateMosquitto(tmp_path / "broker") as broker:
        gw = _gw()
        factory = MessageFactory(gw, session=11)
        outbox = Outbox(tmp_path / "outbox.db", reserve_bytes=0)
        proxy = _Proxy(broker.port)
        async with proxy as port, _observer("127.0.0.1", broker.port, gw) as seen:
            config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", will_delay_s=delay, keepalive_s=5)
            uplink = Uplink(
                config=config, outbox=outbox, factory=factory, birth=lambda: _birth(factory)
            )
            task = asyncio.create_task(uplink.run())
            try:
                await _until(lambda: any(m["type"] == "birth" for m in seen), "the birth")
                assert uplink.mqtt5 is True
                # A blip: the uplink is back (resuming its session) before the delay is over.
                proxy.cut()
                await _until(lambda: [m["type"] for m in seen].count("birth") == 2, "rebirth")
                await asyncio.sleep(delay + 1)
                assert "death" not in [m["type"] for m in seen]
                # A real outage: no way back; the death follows after the delay.
                proxy.accepting = False
                proxy.cut()
                lost = asyncio.get_running_loop().time()
                await _until(lambda: any(m["type"] == "death" for m in seen), "the death", 30)
                waited = asyncio.get_running_loop().time() - lost
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        death = next(m for m in seen if m["type"] == "death")
        assert death["reason"] == "connection_lost" and death["session"] == 11
        assert waited >= delay - 0.5
        outbox.close()
