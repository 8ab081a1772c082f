"""The MQTT uplink: one connection per gateway, last will, birth on connect, outbox drain.

- **Identity.** Per-gateway credentials (``mqtt.username`` / ``mqtt.password``) and TLS when the
  URL is ``mqtts://`` or ``mqtt.tls`` is set (``mqtt.ca_file`` names a private CA).
- **Birth and death.** A birth is published on every connect; the death (with the session
  number) is registered as the last will, so a gateway that loses power or is killed shows as
  offline; a clean stop publishes it explicitly. With an MQTT 5 broker (Mosquitto) the will has
  a delay (``mqtt.will_delay_s``) and the session outlives the connection by as long, so a
  reconnect within the delay sends no death at all. An MQTT 3.1.1 broker (the embedded amqtt)
  refuses the MQTT 5 connect: the uplink then connects with 3.1.1 and a will without delay, and
  stays on 3.1.1 for the rest of the process.
- **Drain.** Messages go in priority order (alerts, events, telemetry) with up to
  ``mqtt.max_inflight`` QoS 1 publishes awaiting PUBACK at once; a message leaves the outbox only
  after its PUBACK. A message older than ``historical_after_s`` when it is sent goes out with
  ``historical: true`` (it is backlog, not live news).
- **Reconnect** with jittered exponential backoff (0.5 s doubling to 60 s). A TLS failure (the
  broker's certificate is not signed by the CA in ``mqtt.ca_file``, names another host, or has
  expired by the gateway's clock) is logged as such and counted in ``tls_failures``; it is not
  mistaken for a broker without MQTT 5. Messages stay in the outbox until a connection works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import topics
from contract.messages import Birth, Death, encode
from drivers.base import stop_tasks
from edge_agent.config import MqttConfig
from edge_agent.outbox import Outbox, OutboxRow
from edge_agent.session import MessageFactory

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0
PROBE_TIMEOUT_S = 5.0
_LIVE = b'"historical":false'
_HISTORICAL = b'"historical":true'
# What ssl's errors say (aiomqtt keeps only the text of the exception it translates).
_TLS_MARKERS = ("[SSL", "_ssl.c", "certificate")


def is_tls_failure(exc: BaseException) -> bool:
    """Whether a connect failed in the TLS handshake (certificate, host name, protocol)."""
    text = str(exc)
    return isinstance(exc, ssl.SSLError) or any(marker in text for marker in _TLS_MARKERS)


def mark_historical(payload: bytes) -> bytes:
    """The same message with ``historical: true`` in its envelope.

    Envelopes are encoded with their fields first (``v, id, gw, session, seq, ts, historical``),
    none of which can hold that text, so the first occurrence is the envelope's own flag.
    """
    head = payload[:400]
    if _LIVE in head:
        return payload.replace(_LIVE, _HISTORICAL, 1)
    data = json.loads(payload)
    data["historical"] = True
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class Uplink:
    def __init__(
        self,
        *,
        config: MqttConfig,
        outbox: Outbox,
        factory: MessageFactory,
        birth: Callable[[], Birth],
        subscriptions: Sequence[str] = (),
        historical_after_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._subscriptions = tuple(subscriptions)
        # Downlink messages (topic, payload) on the subscribed topics, for the agent's controller.
        self.incoming: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=1000)
        self._config = config
        self._outbox = outbox
        self._factory = factory
        self._birth = birth
        self._historical_after_s = historical_after_s
        self._clock = clock
        self._client: aiomqtt.Client | None = None
        # None: not yet known; True: MQTT 5 (will delay); False: MQTT 3.1.1 broker.
        self.mqtt5: bool | None = None if config.will_delay_s > 0 else False
        self._session_started = False  # an MQTT 5 session exists at the broker to resume
        self.connected = False
        self.counters: dict[str, int] = {
            "sent": 0,
            "sent_historical": 0,
            "connects": 0,
            "connect_failures": 0,
            "tls_failures": 0,
        }

    def _tls(self) -> ssl.SSLContext | None:
        c = self._config
        if not c.use_tls:
            return None
        return ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)

    def _client_for(self, death: bytes, *, mqtt5: bool) -> aiomqtt.Client:
        c = self._config
        topic = topics.up(self._factory.gateway_id, topics.Up.DEATH)
        will = aiomqtt.Will(topic, death, qos=1)
        connect_props: Properties | None = None
        if mqtt5:
            will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_props.WillDelayInterval = c.will_delay_s
            will = aiomqtt.Will(topic, death, qos=1, properties=will_props)
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # The will waits for the delay or the end of the session, whichever is first:
            # the session must outlive the connection for the delay to mean anything.
            connect_props.SessionExpiryInterval = c.will_delay_s
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
            identifier=f"edge-{self._factory.gateway_id}",
            protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            properties=connect_props,
            # MQTT 5: resume our own session on a reconnect (that is what cancels the will).
            clean_start=(not self._session_started) if mqtt5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            # An MQTT 3.1.1 broker may not answer an MQTT 5 connect at all (amqtt): do not wait
            # long for an answer the first time.
            timeout=PROBE_TIMEOUT_S if mqtt5 and self.mqtt5 is None else None,
            keepalive=c.keepalive_s,
            tls_context=self._tls(),
            max_inflight_messages=c.max_inflight,
        )
        client.pending_calls_threshold = c.max_inflight + 10
        return client

    async def _connect(self, death: bytes) -> contextlib.AsyncExitStack:
        """An entered client: MQTT 5 when the broker has it, else 3.1.1 (remembered)."""
        stack = contextlib.AsyncExitStack()
        if self.mqtt5 is not False:
            try:
                client = await stack.enter_async_context(self._client_for(death, mqtt5=True))
            except MqttConnectError as exc:
                if exc.rc not in (1, 132):  # 3.1.1 / MQTT 5 "unsupported protocol version"
                    raise
                log.info("broker refused MQTT 5 (%s); using MQTT 3.1.1 without will delay", exc)
            except aiomqtt.MqttError as exc:
                if self.mqtt5 is True or "Connection refused" in str(exc) or is_tls_failure(exc):
                    raise  # a broker known to speak MQTT 5, nobody listening, or TLS refused
                log.info("MQTT 5 connect failed (%s); trying MQTT 3.1.1", exc)
            else:
                self.mqtt5 = True
                self._session_started = True
                self._client = client
                return stack
        client = await stack.enter_async_context(self._client_for(death, mqtt5=False))
        if self.mqtt5 is None:
            log.info("broker speaks MQTT 3.1.1 only: the last will has no delay")
        self.mqtt5 = False
        self._client = client
        return stack

    async def run(self) -> None:
        """Connect, announce, drain; reconnect with jittered exponential backoff. Runs forever."""
        gw = self._factory.gateway_id
        backoff = BACKOFF_MIN_S
        while True:
            death = encode(self._factory.make(Death, reason="connection_lost"))
            try:
                async with await self._connect(death):
                    client = self._client
                    assert client is not None
                    self.connected = True
                    self.counters["connects"] += 1
                    log.info(
                        "connected to %s:%d (MQTT %s)",
                        self._config.host,
                        self._config.port,
                        "5" if self.mqtt5 else "3.1.1",
                    )
                    await client.publish(
                        topics.up(gw, topics.Up.BIRTH), encode(self._birth()), qos=1
                    )
                    backoff = BACKOFF_MIN_S
                    try:
                        await self._serve(client)
                    except asyncio.CancelledError:
                        await self._say_goodbye(client)
                        raise
            except aiomqtt.MqttError as exc:
                self.counters["connect_failures"] += 1
                if not self.connected and is_tls_failure(exc):
                    self.counters["tls_failures"] += 1
                    log.warning(
                        "TLS with the broker %s:%d failed (%s): check mqtt.ca_file (the CA that "
                        "signed the broker's certificate), the host name in mqtt.url and the "
                        "clock; messages stay in the outbox; retrying in %.1fs",
                        self._config.host,
                        self._config.port,
                        exc,
                        backoff,
                    )
                else:
                    log.warning(
                        "MQTT connection lost or refused (%s); retrying in %.1fs", exc, backoff
                    )
            finally:
                self._client = None
                self.connected = False
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        death = self._factory.make(Death, reason="clean_stop")
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(
                topics.up(self._factory.gateway_id, topics.Up.DEATH),
                encode(death),
                qos=1,
                timeout=2.0,
            )

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Drain the outbox and receive the downlink until either fails (connection lost).

        The receiver also notices a lost connection at once (publishes awaiting PUBACK would
        only time out)."""
        for topic in self._subscriptions:
            await client.subscribe(topic, qos=1)
        drain = asyncio.create_task(self._drain(client), name="uplink-drain")
        receive = asyncio.create_task(self._receive(client), name="uplink-receive")
        try:
            done, _ = await asyncio.wait({drain, receive}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await stop_tasks(drain, receive)
        for task in done:
            task.result()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload or "").encode()
            try:
                self.incoming.put_nowait((str(message.topic), data))
            except asyncio.QueueFull:
                self.counters["downlink_dropped"] = self.counters.get("downlink_dropped", 0) + 1
                log.warning("downlink queue full; dropped a message on %s", message.topic)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send the outbox in priority order, at most ``max_inflight`` awaiting PUBACK."""
        outbox = self._outbox
        window = asyncio.Semaphore(self._config.max_inflight)
        cursor = outbox.cursor()
        fetch = max(16, min(self._config.max_inflight, 500))
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    rows = outbox.fetch(cursor, fetch)
                    if not rows:
                        outbox.added.clear()
                        rows = outbox.fetch(cursor, fetch)
                        if not rows:
                            await outbox.added.wait()
                            continue
                    for row in rows:
                        await window.acquire()
                        tg.create_task(self._send(client, row, window))
        except BaseExceptionGroup as group:
            mqtt_errors, rest = group.split(aiomqtt.MqttError)
            if mqtt_errors is None or rest is not None:
                raise
            raise _first(mqtt_errors) from None

    async def _send(
        self, client: aiomqtt.Client, row: OutboxRow, window: asyncio.Semaphore
    ) -> None:
        try:
            payload = row.payload
            historical = self._clock() - row.created > self._historical_after_s
            if historical:
                payload = mark_historical(payload)
            # No per-publish timer (it costs more than the publish): a dead connection is
            # noticed by the receive loop and the keepalive, which end the drain.
            await client.publish(row.topic, payload, qos=1, timeout=math.inf)
        finally:
            window.release()
        self._outbox.ack([row.key])
        self.counters["sent"] += 1
        if historical:
            self.counters["sent_historical"] += 1

    async def publish_live(self, topic: str, payload: bytes) -> bool:
        """Publish a message that is only worth sending now (heartbeats). False if offline."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=0)
        except aiomqtt.MqttError:
            return False
        return True


def _first(group: BaseExceptionGroup[aiomqtt.MqttError]) -> aiomqtt.MqttError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, aiomqtt.MqttError)
    return exc
