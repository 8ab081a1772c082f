"""Buildings, flats and entrance readers of a compound.

Flats are numbered the usual Chinese way, ``<building>-<floor><position>`` (``3-1202`` is
building 3, floor 12, second flat on the landing). Size, number of rooms and the main breaker's
rating are drawn per flat from the building's stock before anyone moves in, so nothing about a
flat's id, size class or breaker says who lives there.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from firmware_sim.scenario._rng import weighted

TWO_READER_MIN_FLATS = 6
"""A building gets a second entrance reader only when it is big enough to have two doors."""


@dataclass(frozen=True, slots=True)
class Unit:
    unit_id: str
    building: str
    floor: int
    rooms: int
    """Rooms on the property certificate (partitions not counted)."""
    area_m2: float
    rated_current_a: int


@dataclass(frozen=True, slots=True)
class Building:
    name: str
    units: tuple[Unit, ...]
    readers: tuple[str, ...]
    """Entrance readers; the first is the main door."""


_AREA_BY_ROOMS = {1: (32.0, 52.0), 2: (48.0, 82.0), 3: (72.0, 118.0), 4: (100.0, 150.0)}


def _rated(rng: random.Random, area: float) -> int:
    if area < 60:
        return weighted(rng, [(32, 0.55), (40, 0.35), (50, 0.1)])
    if area < 100:
        return weighted(rng, [(32, 0.25), (40, 0.4), (50, 0.2), (63, 0.15)])
    return weighted(rng, [(40, 0.3), (50, 0.35), (63, 0.35)])


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """``total`` flats over ``parts`` buildings, unevenly (largest remainders), each >= 1."""
    weights = [rng.uniform(0.75, 1.25) for _ in range(parts)]
    spare = total - parts
    raw = [spare * w / sum(weights) for w in weights]
    counts = [int(r) for r in raw]
    order = sorted(range(parts), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]


def build_layout(rng: random.Random, flats: int, buildings: int) -> list[Building]:
    if buildings < 1 or flats < buildings:
        raise ValueError("need at least one flat per building")
    out: list[Building] = []
    counts = _split(rng, flats, buildings)
    two_reader = [
        counts[i] >= TWO_READER_MIN_FLATS and rng.random() < 0.45 for i in range(buildings)
    ]
    big = [i for i in range(buildings) if counts[i] >= TWO_READER_MIN_FLATS]
    if big and not any(two_reader):
        two_reader[rng.choice(big)] = True
    if buildings > 1 and all(two_reader):
        two_reader[rng.randrange(buildings)] = False
    for i, count in enumerate(counts):
        name = str(i + 1)
        per_floor = 2 if count <= 12 else weighted(rng, [(2, 0.4), (3, 0.25), (4, 0.35)])
        floors = math.ceil(count / per_floor)
        units: list[Unit] = []
        for k in range(count):
            floor, pos = divmod(k, per_floor)
            rooms = weighted(rng, [(1, 0.14), (2, 0.44), (3, 0.33), (4, 0.09)])
            lo, hi = _AREA_BY_ROOMS[rooms]
            area = round(rng.uniform(lo, hi), 1)
            units.append(
                Unit(
                    unit_id=f"{name}-{floor + 1}{pos + 1:02d}",
                    building=name,
                    floor=floor + 1,
                    rooms=rooms,
                    area_m2=area,
                    rated_current_a=_rated(rng, area),
                )
            )
        assert floors >= 1
        readers = (f"b{name}-north", f"b{name}-south") if two_reader[i] else (f"b{name}-entrance",)
        out.append(Building(name, tuple(units), readers))
    return out
