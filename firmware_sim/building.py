"""A simulated building: every device of one entrance, on real transports, with a scenario.

One building with N flats (two per floor: ``1-101``, ``1-102``, ``1-201``, ...):

- one Chint DDSU666 meter per flat (``m-<unit>``), all behind one Modbus TCP endpoint as
  slaves 1..N;
- one serial card reader at the entrance (``b<building>-entrance``) on a pseudo-terminal, with
  cards registered to flats;
- one BLE charging sensor (BTHome v2) per flat and one in the stairwell, on the advert feed.

Scenario: after ``charging_after_s`` the sensor in the charging flat (``1-201`` by default)
reports an e-bike charging at about ``charging_power_w`` and that flat's meter load rises by the
same amount; cards are swiped at the entrance every few seconds. Everything about the building
(flats, cards, MACs, loads, swipe order) is a function of ``seed``; ports and the pty path are
whatever the system hands out.

:meth:`SimulatedBuilding.endpoints` describes it all for the agent, including the ``site``
mapping in the format of ``site.json`` (spec/replay.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_sim._aio import cancel_and_wait
from firmware_sim.ble_feed import BleFeedServer, SimChargingSensor
from firmware_sim.card_reader import CardReaderSim
from firmware_sim.modbus_meters import LoadFn, ModbusMeterSim

log = logging.getLogger(__name__)

ENDPOINTS_VERSION = 1
READER_BAUDRATE = 9600


@dataclass(frozen=True)
class FlatPlan:
    """One flat and its devices (all derived from the seed)."""

    unit_id: str
    floor: int
    slave: int
    meter_id: str
    sensor_mac: str
    sensor_id: str
    floor_area_m2: float
    rooms: int
    registered_occupants: int
    rated_current_a: float
    cards: tuple[str, ...] = field(repr=False)
    base_load_w: float
    fridge_w: float
    fridge_period_s: float
    fridge_phase: float


def _sensor_id(mac: str) -> str:
    return "ble-" + mac.replace(":", "").lower()


def plan_flats(flats: int, seed: int, building: str = "1") -> list[FlatPlan]:
    """The flats of the building, two per floor, deterministic in ``seed``."""
    if not 1 <= flats <= 240:
        raise ValueError("flats must be 1..240")
    rng = random.Random(f"flats:{seed}")
    plans = []
    seen_cards: set[str] = set()
    for i in range(flats):
        floor, door = i // 2 + 1, i % 2 + 1
        unit_id = f"{building}-{floor}{door:02d}"
        mac = f"A4:C1:38:AA:{(i + 1) >> 8:02X}:{(i + 1) & 0xFF:02X}"
        occupants = rng.randint(1, 4)
        cards: list[str] = []
        while len(cards) < occupants:
            card = str(rng.randrange(1_000_000_000, 4_294_967_295))
            if card not in seen_cards:
                seen_cards.add(card)
                cards.append(card)
        plans.append(
            FlatPlan(
                unit_id=unit_id,
                floor=floor,
                slave=i + 1,
                meter_id=f"m-{unit_id}",
                sensor_mac=mac,
                sensor_id=_sensor_id(mac),
                floor_area_m2=round(rng.uniform(42.0, 95.0), 1),
                rooms=rng.randint(1, 3),
                registered_occupants=occupants,
                rated_current_a=rng.choice([32.0, 40.0, 63.0]),
                cards=tuple(cards),
                base_load_w=rng.uniform(60.0, 250.0),
                fridge_w=rng.uniform(80.0, 140.0),
                fridge_period_s=rng.uniform(900.0, 1800.0),
                fridge_phase=rng.random(),
            )
        )
    return plans


class SimulatedBuilding:
    """``async with SimulatedBuilding(flats=4, seed=7) as b: b.endpoints()``"""

    def __init__(
        self,
        *,
        flats: int = 4,
        seed: int = 0,
        charging_after_s: float = 5.0,
        charging_unit: str | None = None,
        charging_power_w: float = 180.0,
        building: str = "1",
        host: str = "127.0.0.1",
        advert_interval_s: float = 1.0,
        swipe_every_s: tuple[float, float] | None = (2.0, 6.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seed = seed
        self.building = building
        self.flats = plan_flats(flats, seed, building)
        units = [f.unit_id for f in self.flats]
        if charging_unit is None:
            charging_unit = f"{building}-201" if f"{building}-201" in units else units[-1]
        if charging_unit not in units:
            raise ValueError(f"charging_unit {charging_unit!r} is not a flat of this building")
        self.charging_unit = charging_unit
        self.charging_after_s = charging_after_s
        self.charging_power_w = charging_power_w
        self.reader_id = f"b{building}-entrance"
        self.stairwell_mac = "A4:C1:38:BB:00:01"
        self._swipe_every_s = swipe_every_s
        self._clock = clock
        self._host = host
        self.meters = ModbusMeterSim(
            {f.slave: self._load_fn(f) for f in self.flats}, host=host, seed=seed, clock=clock
        )
        self.card_reader = CardReaderSim()
        self.ble_feed = BleFeedServer(host=host, interval_s=advert_interval_s, seed=seed)
        self.sensors: dict[str, SimChargingSensor] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    # -- the scenario -----------------------------------------------------------------------

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def charging_w(self, t: float) -> float:
        """The e-bike charger's draw at scenario time ``t`` (0 before it is plugged in)."""
        if t < self.charging_after_s:
            return 0.0
        return self.charging_power_w + 2.0 * math.sin((t - self.charging_after_s) / 20.0)

    def _load_fn(self, flat: FlatPlan) -> LoadFn:
        charging = flat.unit_id == self.charging_unit
        seed = self.seed

        def load(t: float) -> float:
            cycle = (t / flat.fridge_period_s + flat.fridge_phase) % 1.0
            fridge = flat.fridge_w if cycle < 0.4 else 0.0
            noise = random.Random(f"noise:{seed}:{flat.slave}:{int(t // 5)}").uniform(-10, 10)
            extra = self.charging_w(t) if charging else 0.0
            return max(0.0, flat.base_load_w + fridge + noise + extra)

        return load

    async def _charging_scenario(self) -> None:
        flat = next(f for f in self.flats if f.unit_id == self.charging_unit)
        sensor = self.sensors[flat.sensor_mac]
        await asyncio.sleep(max(0.0, self.charging_after_s - self.elapsed()))
        log.info("scenario: e-bike charging starts in flat %s", flat.unit_id)
        while True:
            sensor.set(True, round(self.charging_w(self.elapsed()), 1))
            await asyncio.sleep(self.ble_feed.interval_s)

    async def _swipes(self, every_s: tuple[float, float]) -> None:
        cards = [c for f in self.flats for c in f.cards]
        await self.card_reader.random_swipes(
            cards, rng=random.Random(f"swipes:{self.seed}"), every_s=every_s
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedBuilding:
        self._t0 = self._clock()
        await self.meters.__aenter__()
        try:
            await self.card_reader.__aenter__()
            await self.ble_feed.__aenter__()
        except BaseException:
            await self.aclose()
            raise
        for f in self.flats:
            self.sensors[f.sensor_mac] = self.ble_feed.add_sensor(f.sensor_mac)
        self.sensors[self.stairwell_mac] = self.ble_feed.add_sensor(self.stairwell_mac)
        self._tasks.append(asyncio.create_task(self._charging_scenario(), name="sim-charging"))
        if self._swipe_every_s is not None:
            self._tasks.append(
                asyncio.create_task(self._swipes(self._swipe_every_s), name="sim-swipes")
            )
        log.info(
            "building %s: %d flats, modbus %s:%d, reader %s, BLE feed %s:%d",
            self.building,
            len(self.flats),
            self._host,
            self.meters.port,
            self.card_reader.path,
            self._host,
            self.ble_feed.port,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await cancel_and_wait(task)
        await self.ble_feed.__aexit__(None, None, None)
        await self.card_reader.__aexit__(None, None, None)
        await self.meters.__aexit__(None, None, None)

    # -- description ------------------------------------------------------------------------

    def site(self) -> dict[str, Any]:
        """The site mapping, in the format of ``site.json`` (spec/replay.md)."""
        return {
            "site_id": f"sim-{self.seed}",
            "timezone": "Asia/Shanghai",
            "units": [
                {
                    "unit_id": f.unit_id,
                    "building": self.building,
                    "floor_area_m2": f.floor_area_m2,
                    "rooms": f.rooms,
                    "registered_occupants": f.registered_occupants,
                    "rated_current_a": f.rated_current_a,
                }
                for f in self.flats
            ],
            "cards": [{"card": c, "unit_id": f.unit_id} for f in self.flats for c in f.cards],
            "meters": [{"meter_id": f.meter_id, "unit_id": f.unit_id} for f in self.flats],
            "sensors": [
                *(
                    {"sensor_id": f.sensor_id, "location": "unit", "unit_id": f.unit_id}
                    for f in self.flats
                ),
                {
                    "sensor_id": _sensor_id(self.stairwell_mac),
                    "location": "stairwell",
                    "building": self.building,
                },
            ],
            "readers": [{"reader_id": self.reader_id, "building": self.building}],
        }

    def endpoints(self) -> dict[str, Any]:
        """Everything an agent needs to read this building (JSON-serialisable)."""
        charging_flat = next(f for f in self.flats if f.unit_id == self.charging_unit)
        sensors = {f.sensor_mac: f.sensor_id for f in self.flats}
        sensors[self.stairwell_mac] = _sensor_id(self.stairwell_mac)
        return {
            "version": ENDPOINTS_VERSION,
            "seed": self.seed,
            "building": self.building,
            "modbus": {
                "host": self._host,
                "port": self.meters.port,
                "function_code": 3,
                "profile": "ddsu666",
                "meters": {f.meter_id: f.slave for f in self.flats},
            },
            "card_reader": {
                "reader_id": self.reader_id,
                "path": self.card_reader.path,
                "url": self.card_reader.path,
                "baudrate": READER_BAUDRATE,
            },
            "ble_feed": {
                "host": self._host,
                "port": self.ble_feed.port,
                "sensors": sensors,
            },
            "scenario": {
                "charging_unit": self.charging_unit,
                "charging_sensor_id": charging_flat.sensor_id,
                "charging_meter_id": charging_flat.meter_id,
                "charging_after_s": self.charging_after_s,
                "charging_power_w": self.charging_power_w,
            },
            "site": self.site(),
        }
