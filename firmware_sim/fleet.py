"""A fleet of lightweight simulated gateways speaking the real MQTT contract.

``firmware-sim fleet --gateways 2000 --broker mqtt://127.0.0.1:1883 --interval 30`` runs that
many gateways in one asyncio process, each with its own MQTT connection: a last will (a
``connection_lost`` death minted just before the birth, as the agent does), a birth with its
devices, heartbeats every ``interval`` seconds with per-device status, and meter telemetry. No
drivers, rules or outbox: just what the fleet manager sees of a gateway.

The MQTT side is paho-mqtt driven by the asyncio loop through paho's external-loop interface
(``on_socket_*`` callbacks, ``loop_read`` / ``loop_write`` / ``loop_misc``), with one
housekeeping task for all clients, so 2,000 connections cost little more than their sockets.

Gateways can be killed on purpose, two ways:

- ``drop``: the TCP connection is closed without an MQTT DISCONNECT (a crash, a power cut): the
  broker notices at once and publishes the will.
- ``silent``: everything stops, pings included, but the socket stays open (a half-open
  connection: the network died under the gateway): the broker notices only after 1.5 keepalive
  periods, and the fleet manager's inactivity timeout may notice first.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import socket
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.messages import (
    Birth,
    Death,
    DeviceInfo,
    DeviceStatus,
    Envelope,
    Heartbeat,
    MeterSample,
    MeterTelemetry,
    encode,
)
from contract.topics import Up, up

log = logging.getLogger(__name__)

KillMode = Literal["drop", "silent"]
AGENT_VERSION = "sim-fleet-1"
CONNECT_BATCH = 50  # connections opened before yielding to the loop


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class SimGateway:
    """One simulated gateway: its MQTT client and its session's numbering."""

    gateway_id: str
    session: int
    client: mqtt.Client
    seq: int = 0
    state: Literal["connecting", "up", "dropped", "silent", "lost", "stopped"] = "connecting"
    connected_at: float | None = None
    killed_at: float | None = None
    sent: int = 0
    held_socket: Any = None  # a silent gateway's socket, kept open on purpose

    def envelope(self) -> dict[str, Any]:
        self.seq += 1
        return {
            "id": uuid.uuid4().hex,
            "gw": self.gateway_id,
            "session": self.session,
            "seq": self.seq,
            "ts": _now(),
        }


@dataclass
class FleetStats:
    connected: int = 0
    published: int = 0
    lost: int = 0
    killed: dict[str, int] = field(default_factory=dict)


def _broker(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"--broker must look like mqtt://host:port, got {url!r}")
    return parts.hostname, parts.port or 1883


class SimulatedFleet:
    """``async with SimulatedFleet(...) as fleet:`` connects every gateway (births sent) and
    runs heartbeats and telemetry until the block ends (each gateway then stops cleanly)."""

    def __init__(
        self,
        *,
        gateways: int,
        broker_url: str,
        interval_s: float = 30.0,
        telemetry_every_s: float | None = None,
        keepalive_s: int = 60,
        prefix: str = "sim-gw",
        site_id: str = "sim-site",
        session: int | None = None,
        seed: int | None = None,
    ) -> None:
        if gateways < 1:
            raise ValueError("--gateways must be at least 1")
        self.host, self.port = _broker(broker_url)
        self.count = gateways
        self.interval_s = interval_s
        self.telemetry_every_s = interval_s if telemetry_every_s is None else telemetry_every_s
        self.keepalive_s = keepalive_s
        self.prefix = prefix
        self.site_id = site_id
        self.session = session if session is not None else int(time.time())
        self.stats = FleetStats()
        self.gateways: dict[str, SimGateway] = {}
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._all_up = asyncio.Event()

    # -- paho <-> asyncio ----------------------------------------------------------------

    def _attach(self, client: mqtt.Client) -> None:
        loop = self._loop
        assert loop is not None

        def on_open(c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.add_reader(sock, c.loop_read)

        def on_close(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)

        def on_want_write(c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.add_writer(sock, c.loop_write)

        def on_wrote(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.remove_writer(sock)

        client.on_socket_open = on_open
        client.on_socket_close = on_close
        client.on_socket_register_write = on_want_write
        client.on_socket_unregister_write = on_wrote

    def _make(self, index: int) -> SimGateway:
        gateway_id = f"{self.prefix}-{index:05d}"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{gateway_id}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
            reconnect_on_failure=False,
        )
        gw = SimGateway(gateway_id, self.session, client)
        # The will is minted before the birth, so the birth's number is the will's plus one.
        will = Death.model_validate({**gw.envelope(), "reason": "connection_lost"})
        client.will_set(up(gateway_id, Up.DEATH), encode(will), qos=1)
        client.on_connect = lambda c, u, f, rc, p: self._connected(gw, rc)
        client.on_disconnect = lambda c, u, f, rc, p: self._disconnected(gw, rc)
        self._attach(client)
        return gw

    def _connected(self, gw: SimGateway, rc: Any) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("gateway %s refused by the broker: %s", gw.gateway_id, rc)
            gw.state = "lost"
            self.stats.lost += 1
            return
        gw.state = "up"
        gw.connected_at = time.monotonic()
        self.stats.connected += 1
        self._publish(gw, self._birth(gw))
        if self.stats.connected == self.count:
            self._all_up.set()

    def _disconnected(self, gw: SimGateway, rc: Any) -> None:
        if gw.state == "up":
            gw.state = "lost"
            self.stats.lost += 1
            log.warning("gateway %s lost its connection: %s", gw.gateway_id, rc)

    # -- messages ------------------------------------------------------------------------

    def _birth(self, gw: SimGateway) -> Birth:
        return Birth(
            **gw.envelope(),
            agent_version=AGENT_VERSION,
            started_at=_now(),
            site_id=self.site_id,
            devices=[
                DeviceInfo(device_id="m-1", kind="meter", driver="sim", unit_id="1-101"),
                DeviceInfo(
                    device_id="ble-1", kind="charging_sensor", driver="sim", location="bike_shed"
                ),
            ],
        )

    def _heartbeat(self, gw: SimGateway) -> Heartbeat:
        now = _now()
        started = gw.connected_at or time.monotonic()
        return Heartbeat(
            **gw.envelope(),
            uptime_s=max(0.0, time.monotonic() - started),
            agent_version=AGENT_VERSION,
            devices={
                "m-1": DeviceStatus(online=True, last_seen=now),
                "ble-1": DeviceStatus(online=True, last_seen=now),
            },
        )

    def _telemetry(self, gw: SimGateway) -> MeterTelemetry:
        return MeterTelemetry(
            **gw.envelope(),
            readings=[
                MeterSample(
                    meter_id="m-1",
                    unit_id="1-101",
                    ts=_now(),
                    power_w=round(self._random.uniform(50, 900), 1),
                    voltage_v=220.0,
                )
            ],
        )

    def _publish(self, gw: SimGateway, message: Envelope) -> None:
        kind = Up(message.model_dump(include={"type"})["type"])
        gw.client.publish(up(gw.gateway_id, kind), encode(message), qos=1)
        gw.sent += 1
        self.stats.published += 1

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedFleet:
        self._loop = asyncio.get_running_loop()
        for index in range(self.count):
            gw = self._make(index)
            self.gateways[gw.gateway_id] = gw
            try:
                gw.client.connect(self.host, self.port, keepalive=self.keepalive_s)
            except OSError as exc:
                gw.state = "lost"
                self.stats.lost += 1
                log.warning("gateway %s cannot connect: %s", gw.gateway_id, exc)
            if index % CONNECT_BATCH == CONNECT_BATCH - 1:
                await asyncio.sleep(0)
        self._tasks = [
            asyncio.create_task(self._housekeeping(), name="sim-fleet-misc"),
            asyncio.create_task(self._schedule(), name="sim-fleet-schedule"),
        ]
        return self

    async def wait_connected(self, timeout: float = 120.0) -> None:
        """Until every gateway has connected and sent its birth."""
        await asyncio.wait_for(self._all_up.wait(), timeout)

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for gw in self.gateways.values():
            if gw.state == "up":
                self._publish(gw, Death.model_validate({**gw.envelope(), "reason": "clean_stop"}))
                gw.client.disconnect()
                gw.state = "stopped"
        await asyncio.sleep(0.5)  # let the deaths and DISCONNECTs leave
        for gw in self.gateways.values():
            self._close(gw)

    def _close(self, gw: SimGateway) -> None:
        if gw.state == "dropped":
            return  # its socket is closed already
        sock = gw.client.socket()
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if gw.held_socket is not None:
            gw.held_socket.close()
            gw.held_socket = None
        if sock is not None:
            sock.close()

    async def _housekeeping(self) -> None:
        """paho's keepalive pings and timeouts, for every live client, once a second."""
        while True:
            await asyncio.sleep(1.0)
            for gw in list(self.gateways.values()):
                if gw.state in ("up", "connecting"):
                    gw.client.loop_misc()

    async def _schedule(self) -> None:
        """Heartbeats and telemetry, each gateway at its own phase."""
        now = time.monotonic()
        queue: list[tuple[float, int, str, str]] = []
        for order, gw_id in enumerate(self.gateways):
            queue.append((now + self._random.uniform(0, self.interval_s), order, gw_id, "hb"))
            if self.telemetry_every_s > 0:
                first = now + self._random.uniform(0, self.telemetry_every_s)
                queue.append((first, order, gw_id, "tm"))
        heapq.heapify(queue)
        while True:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                due, order, gw_id, what = heapq.heappop(queue)
                gw = self.gateways[gw_id]
                if gw.state == "connecting":  # not acknowledged yet: try again soon
                    heapq.heappush(queue, (now + 0.5, order, gw_id, what))
                    continue
                if gw.state != "up":
                    continue  # dead gateways stay dead
                if what == "hb":
                    self._publish(gw, self._heartbeat(gw))
                    heapq.heappush(queue, (due + self.interval_s, order, gw_id, what))
                else:
                    self._publish(gw, self._telemetry(gw))
                    heapq.heappush(queue, (due + self.telemetry_every_s, order, gw_id, what))
            await asyncio.sleep(0.05 if not queue else max(0.0, min(0.5, queue[0][0] - now)))

    def kill(self, gateway_ids: Iterable[str], mode: KillMode) -> float:
        """Kill these gateways now (see the module docstring); returns the monotonic time."""
        when = time.monotonic()
        loop = self._loop
        assert loop is not None
        for gw_id in gateway_ids:
            gw = self.gateways[gw_id]
            if gw.state != "up":
                continue
            sock = gw.client.socket()
            gw.killed_at = when
            if sock is None:
                gw.state = "lost"
                continue
            loop.remove_reader(sock)
            loop.remove_writer(sock)
            if mode == "drop":
                gw.state = "dropped"
                raw = sock if isinstance(sock, socket.socket) else None
                if raw is not None:
                    # RST rather than a graceful close: nothing more goes out, like a crash.
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            else:
                gw.state = "silent"
                gw.held_socket = sock
            self.stats.killed[mode] = self.stats.killed.get(mode, 0) + 1
        return when

    def alive(self) -> list[str]:
        return [g.gateway_id for g in self.gateways.values() if g.state == "up"]


async def run_fleet(
    *,
    gateways: int,
    broker_url: str,
    interval_s: float,
    telemetry_every_s: float | None,
    keepalive_s: int,
    prefix: str,
    kill_after_s: float | None,
    kill_count: int,
    kill_mode: KillMode,
    stop: asyncio.Event,
) -> int:
    async with SimulatedFleet(
        gateways=gateways,
        broker_url=broker_url,
        interval_s=interval_s,
        telemetry_every_s=telemetry_every_s,
        keepalive_s=keepalive_s,
        prefix=prefix,
    ) as fleet:
        started = time.monotonic()
        await fleet.wait_connected()
        print(
            f"firmware-sim: fleet of {gateways} gateways connected in "
            f"{time.monotonic() - started:.1f} s (session {fleet.session})",
            flush=True,
        )
        if kill_after_s is not None:
            try:
                await asyncio.wait_for(stop.wait(), kill_after_s)
            except TimeoutError:
                victims = fleet.alive()[:kill_count]
                fleet.kill(victims, kill_mode)
                print(f"firmware-sim: killed {len(victims)} gateways ({kill_mode})", flush=True)
        await stop.wait()
        log.info(
            "stopping: %d published, %d lost, killed %s",
            fleet.stats.published,
            fleet.stats.lost,
            fleet.stats.killed,
        )
    return 0
