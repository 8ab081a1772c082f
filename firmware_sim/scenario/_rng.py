"""Seeded randomness: one independent ``random.Random`` stream per (seed, purpose, key).

Every flat, device and plan draws from its own stream, so the order in which the streaming
writer happens to pull events never changes what is drawn, and adding a device to one building
does not reshuffle the others. Keys are hashed with SHA-256 (``hash()`` of a string is salted
per process, so it would break reproducibility).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def rng_for(seed: int, *keys: str | int) -> random.Random:
    """An independent generator for ``seed`` and the given keys."""
    text = "\x1f".join([str(seed), *(str(k) for k in keys)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def weighted(rng: random.Random, options: Sequence[tuple[T, float]]) -> T:
    """One of ``options`` (value, weight), chosen with probability proportional to weight."""
    total = sum(w for _, w in options)
    x = rng.random() * total
    for value, w in options:
        x -= w
        if x < 0:
            return value
    return options[-1][0]


def log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    """A draw whose logarithm is uniform on [log lo, log hi] (durations of faults, gaps)."""
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def chance(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def gauss_clamped(rng: random.Random, mu: float, sigma: float, lo: float, hi: float) -> float:
    return clamp(rng.gauss(mu, sigma), lo, hi)
