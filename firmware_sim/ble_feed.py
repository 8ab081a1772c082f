"""BLE charging sensors advertising BTHome v2, streamed over TCP as JSON lines.

There is no radio in tests and demos, so the "air" is a TCP server: every connected client gets
every advert as one JSON line::

    {"mac": "A4:C1:38:AA:00:01", "rssi": -60, "local_name": "...",
     "service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "<hex>"}}

Each :class:`SimChargingSensor` re-advertises every ``interval_s`` with an incrementing packet id
and advertises at once when its state changes (:meth:`SimChargingSensor.set`). A sensor with a
``bindkey`` sends encrypted adverts (AES-CCM, :func:`firmware_sim.bthome.encrypt`) with a
counter that goes up by one per packet.

Faults on purpose: :meth:`SimChargingSensor.replay` sends an old packet again (a counter going
backwards), :meth:`SimChargingSensor.advertise_with_key` encrypts with another key,
:meth:`SimChargingSensor.advertise_garbage` sends service data that is not BTHome, and
:meth:`BleFeedServer.set_silent` makes the air go quiet (connections stay open, nothing comes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from typing import Any

from firmware_sim._aio import cancel_and_wait
from firmware_sim.bthome import BTHOME_SERVICE_UUID, encrypt, service_data

log = logging.getLogger(__name__)


class SimChargingSensor:
    """One simulated charging sensor. Create it with :meth:`BleFeedServer.add_sensor`."""

    def __init__(
        self,
        feed: BleFeedServer,
        mac: str,
        *,
        local_name: str,
        rssi: int,
        battery_pct: int,
        rng: random.Random,
        bindkey: bytes | None = None,
    ) -> None:
        self.mac = mac.upper()
        self.bindkey = bindkey
        self.counter = rng.randrange(1000, 100_000)  # AES-CCM counter (encrypted sensors)
        self.sent: deque[dict[str, Any]] = deque(maxlen=16)  # recent adverts, for replays
        self.local_name = local_name
        self.rssi = rssi
        self.battery_pct = battery_pct
        self.charging = False
        self.power_w = 0.0
        self.packet_id = rng.randrange(256)
        self.adverts = 0
        self._feed = feed
        self._rng = rng

    def set(self, charging: bool, power_w: float) -> None:
        """Change what the sensor measures; it advertises the new state at once."""
        changed = (charging, power_w) != (self.charging, self.power_w)
        self.charging, self.power_w = charging, power_w
        if changed:
            self.advertise()

    def advert(self, *, next_packet: bool = True, key: bytes | None = None) -> dict[str, Any]:
        """The next advert as a feed line object (``next_packet=False`` repeats the packet).

        An encrypted sensor encrypts with its bindkey, or with ``key`` when given (a wrong key).
        """
        if next_packet:
            self.packet_id = (self.packet_id + 1) % 256
            self.counter += 1
        data = service_data(
            packet_id=self.packet_id,
            battery_pct=self.battery_pct,
            power_w=self.power_w,
            charging=self.charging,
        )
        bindkey = key or self.bindkey
        if bindkey is not None:
            data = encrypt(data, mac=self.mac, bindkey=bindkey, counter=self.counter)
        return self._line(data)

    def _line(self, data: bytes) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "rssi": self.rssi + self._rng.randint(-3, 3),
            "local_name": self.local_name,
            "service_data": {BTHOME_SERVICE_UUID: data.hex()},
        }

    def advertise(self, *, repeat: int = 1) -> None:
        """Send the next packet ``repeat`` times (BLE devices often repeat a packet)."""
        line = self.advert()
        self.sent.append(line)
        for _ in range(repeat):
            self.adverts += 1
            self._feed.broadcast(line)

    def replay(self, back: int = 2) -> None:
        """Send again the packet sent ``back`` packets ago (an attacker's recording)."""
        self.adverts += 1
        self._feed.broadcast(self.sent[-1 - back])

    def advertise_with_key(self, key: bytes) -> None:
        """Send the next packet encrypted with ``key`` (a wrong bindkey, or a forgery)."""
        self.adverts += 1
        self._feed.broadcast(self.advert(key=key))

    def advertise_garbage(self, data: bytes | None = None) -> None:
        """Send service data that is not a valid BTHome packet (random bytes by default)."""
        if data is None:
            data = self._rng.randbytes(self._rng.randint(1, 24))
        self.adverts += 1
        self._feed.broadcast(self._line(data))


class BleFeedServer:
    """``async with BleFeedServer() as feed: s = feed.add_sensor("A4:C1:38:AA:00:01")``

    Listens on ``host`` (a free port when ``port=0``; :attr:`port` is the real one).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.host = host
        self._port = port
        self.interval_s = interval_s
        self._rng = random.Random(seed)
        self.silent = False
        self.connections = 0  # clients accepted so far
        self.sensors: dict[str, SimChargingSensor] = {}
        self._clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        return self._port

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def add_sensor(
        self,
        mac: str,
        *,
        local_name: str | None = None,
        battery_pct: int = 90,
        bindkey: bytes | None = None,
    ) -> SimChargingSensor:
        sensor = SimChargingSensor(
            self,
            mac,
            local_name=local_name or f"BTHome {mac[-5:].replace(':', '')}",
            rssi=self._rng.randint(-85, -55),
            battery_pct=battery_pct,
            rng=random.Random(self._rng.random()),
            bindkey=bindkey,
        )
        self.sensors[sensor.mac] = sensor
        return sensor

    def set_silent(self, silent: bool) -> None:
        """Go quiet (nothing is sent, connections stay open) or speak again."""
        self.silent = silent

    def broadcast(self, obj: dict[str, Any] | str | bytes) -> None:
        """Send one line to every connected client (a dict is JSON-encoded; str/bytes raw).
        Nothing is sent while the feed is silent."""
        if self.silent:
            return
        if isinstance(obj, dict):
            line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        elif isinstance(obj, str):
            line = obj.encode()
        else:
            line = obj
        for writer in list(self._clients):
            if writer.is_closing():
                self._clients.discard(writer)
                continue
            writer.write(line)

    async def drop_clients(self) -> None:
        """Close every client connection (the feed drops; clients should reconnect)."""
        for writer in list(self._clients):
            writer.close()
        self._clients.clear()
        await asyncio.sleep(0)

    async def __aenter__(self) -> BleFeedServer:
        self._server = await asyncio.start_server(self._on_client, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick(), name="ble-feed-ticker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            await cancel_and_wait(self._ticker)
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2)
        self._clients.clear()
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._clients.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while await reader.read(1024):  # clients send nothing; wait for them to leave
                pass
        except OSError:
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for sensor in self.sensors.values():
                sensor.advertise()
