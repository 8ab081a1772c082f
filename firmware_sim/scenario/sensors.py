"""BLE charging sensors (a smart plug or a current clamp on the charging socket).

Two reporting patterns seen in BLE devices, picked and parameterised per sensor:

* ``periodic``: a report every 30-60 s while charging and every 2-10 min when idle;
* ``on_change``: a report when charging starts or stops, when the power moves by more than 10 %,
  and a keep-alive every 5-10 min.

Both send the state change at once (adverts are repeated, so a change is not lost), lose some
periodic reports (0-8 %), and some sensors report no power (a binary charging detector).
``charging`` is true from the plug-in until the charger's current has tapered off (or the plug
is pulled); a charger left in float reports a few watts with ``charging`` false.
"""

from __future__ import annotations

import random
from typing import Protocol

from firmware_sim.scenario._rng import chance
from firmware_sim.scenario.intervals import Interval

PERIODIC = "periodic"
ON_CHANGE = "on_change"

MIN_LABELLED_S = 120
"""Sessions shorter than this are plug-ins, not charging (the ``ebike_charging`` rule's sustain)."""


class Session(Protocol):
    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def unplug(self) -> int: ...

    def power(self, t: int, r: float) -> float: ...


class SensorSim:
    def __init__(self, sensor_id: str, rng: random.Random, gaps: list[Interval]) -> None:
        self.sensor_id = sensor_id
        self.rng = rng
        self.gaps = gaps
        self.pattern = PERIODIC if chance(rng, 0.6) else ON_CHANGE
        self.has_power = chance(rng, 0.85)
        self.charging_period = rng.randint(30, 60)
        self.idle_period = rng.randint(120, 600)
        self.keepalive = rng.randint(300, 600)
        self.loss = rng.uniform(0.0, 0.08)
        self.sessions: list[Session] = []
        self._next = rng.randrange(self.idle_period)
        self._cursor = -1
        self._i = 0
        self._gap_i = 0
        self._last_emit = -(10**9)
        self._last_power = 0.0
        self._head = '{"type": "charging_sensor", "ts": "'
        self._mid = f'", "sensor_id": "{sensor_id}", '

    def add(self, session: Session) -> bool:
        """Add a session (sessions arrive in time order and do not overlap on one socket)."""
        if self.sessions and session.start < self.sessions[-1].unplug:
            return False
        self.sessions.append(session)
        return True

    def _boundary_after(self, t: int) -> int | None:
        sessions = self.sessions
        while self._i < len(sessions) and sessions[self._i].unplug <= t:
            self._i += 1
        for s in sessions[self._i :]:
            if s.start > t:
                return s.start
            if s.end > t:
                return s.end
        return None

    def _state(self, t: int) -> tuple[bool, float]:
        for s in self.sessions[self._i :]:
            if s.start > t:
                break
            if t < s.unplug:
                return t < s.end, s.power(t, self.rng.random())
        return False, 0.0

    def _in_gap(self, t: int) -> bool:
        gaps = self.gaps
        while self._gap_i < len(gaps) and gaps[self._gap_i][1] <= t:
            self._gap_i += 1
        return self._gap_i < len(gaps) and gaps[self._gap_i][0] <= t

    def events_until(self, d0: int, until: int, date: str, tod: list[str]) -> list[tuple[int, str]]:
        """Reports with ts < ``until`` <= ``d0`` + 1 day (ts text: ``date + tod[t - d0]``)."""
        out: list[tuple[int, str]] = []
        rng = self.rng
        while True:
            boundary = self._boundary_after(self._cursor)
            if boundary is not None and boundary <= self._next:
                t = boundary + rng.randint(0, 2)
                change = True
            else:
                t = self._next
                change = False
            if t >= until:
                return out
            self._cursor = t
            charging, power = self._state(t)
            emit = change
            if not change:
                if self.pattern == PERIODIC:
                    emit = not chance(rng, self.loss)
                else:
                    due = t - self._last_emit >= self.keepalive
                    moved = charging and abs(power - self._last_power) > 0.1 * max(
                        self._last_power, 1.0
                    )
                    emit = (due or moved) and not chance(rng, self.loss)
            if emit and not self._in_gap(t):
                self._last_emit = t
                self._last_power = power
                body = f'"power_w": {power:.1f}, ' if self.has_power else ""
                state = "true" if charging else "false"
                text = f'{self._head}{date}{tod[t - d0]}{self._mid}{body}"charging": {state}}}'
                out.append((t, text))
            if self.pattern == PERIODIC:
                period = self.charging_period if charging else self.idle_period
            else:
                period = 30 if charging else 60
            self._next = t + period + rng.randint(-2, 2)
