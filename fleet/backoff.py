"""Jittered exponential backoff, shared by MQTT reconnects and webhook retries.

Full jitter (a random delay between half and all of the exponential step) keeps a fleet of
clients that lost the same broker or receiver from coming back in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def backoff_delay(attempt: int, *, initial: float, maximum: float) -> float:
    """Delay before retry number ``attempt`` (1 = the first retry)."""
    step = min(maximum, initial * 2 ** max(0, attempt - 1))
    return random.uniform(step / 2, step)


@dataclass
class Backoff:
    """Counts consecutive failures; :meth:`reset` after a success."""

    initial: float
    maximum: float
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        return backoff_delay(self.failures, initial=self.initial, maximum=self.maximum)

    def reset(self) -> None:
        self.failures = 0
