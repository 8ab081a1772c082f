"""The MQTT uplink: one connection per gateway, last will, birth on connect, outbox drain.

The death message is registered as the MQTT last will when connecting, so a gateway that loses
power or is killed shows as offline at the fleet manager; a clean stop publishes it explicitly.
Messages leave the outbox only after the broker acknowledged them (QoS 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable

import aiomqtt

from contract import topics
from contract.messages import Birth, Death, encode
from edge_agent.config import MqttConfig
from edge_agent.outbox import Outbox
from edge_agent.session import MessageFactory

log = logging.getLogger(__name__)

DRAIN_BATCH = 100
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0


class Uplink:
    def __init__(
        self,
        *,
        config: MqttConfig,
        outbox: Outbox,
        factory: MessageFactory,
        birth: Callable[[], Birth],
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._factory = factory
        self._birth = birth
        self._client: aiomqtt.Client | None = None
        self.connected = False
        self.counters: dict[str, int] = {"sent": 0, "connects": 0, "connect_failures": 0}

    def _client_for(self, will: aiomqtt.Will) -> aiomqtt.Client:
        c = self._config
        tls: ssl.SSLContext | None = None
        if c.tls:
            tls = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        return aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
            identifier=f"edge-{self._factory.gateway_id}",
            will=will,
            keepalive=c.keepalive_s,
            tls_context=tls,
        )

    async def run(self) -> None:
        """Connect, announce, drain; reconnect with jittered exponential backoff. Runs forever."""
        gw = self._factory.gateway_id
        backoff = BACKOFF_MIN_S
        while True:
            will_msg = self._factory.make(Death, reason="connection_lost")
            will = aiomqtt.Will(topics.up(gw, topics.Up.DEATH), encode(will_msg), qos=1)
            try:
                async with self._client_for(will) as client:
                    self._client = client
                    self.connected = True
                    self.counters["connects"] += 1
                    log.info("connected to %s:%d", self._config.host, self._config.port)
                    await client.publish(
                        topics.up(gw, topics.Up.BIRTH), encode(self._birth()), qos=1
                    )
                    backoff = BACKOFF_MIN_S
                    try:
                        await self._drain(client)
                    except asyncio.CancelledError:
                        await self._say_goodbye(client)
                        raise
            except aiomqtt.MqttError as exc:
                self.counters["connect_failures"] += 1
                log.warning("MQTT connection lost or refused (%s); retrying in %.1fs", exc, backoff)
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

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            rows = self._outbox.peek(DRAIN_BATCH)
            if not rows:
                self._outbox.added.clear()
                rows = self._outbox.peek(DRAIN_BATCH)
                if not rows:
                    await self._outbox.added.wait()
                    continue
            await asyncio.gather(*(client.publish(r.topic, r.payload, qos=1) for r in rows))
            self._outbox.ack([r.id for r in rows])
            self.counters["sent"] += len(rows)

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
