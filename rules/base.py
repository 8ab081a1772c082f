"""The interface every hazard rule implements, so the engine can route events to it.

A rule is a plain object with mutable per-device state, driven only by the events it is given:

- ``kinds``: the alert kinds it raises (each kind belongs to exactly one rule);
- ``inputs``: the device event types the engine routes to it (``Tick`` always reaches it when
  time must pass for it);
- ``next_due``: the earliest time at which the rule has something to decide without a new
  device event (a sustain threshold, a hysteresis, a silence timeout), or None. The engine uses it
  to pass time to a rule only when the rule needs it, which keeps the per-event cost O(1);
- ``process(event)``: first fires everything due at or before ``event.ts`` (in time order), then
  applies the event; returns the alert changes that resulted, oldest first (any sequence: a
  rule may return the shared empty :data:`NO_CHANGES` when nothing happened, which saves an
  allocation per event; callers must not mutate what they get);
- ``open_episodes()``: the open episodes as last published (the exact values in the last
  ``AlertChange`` for each), e.g. for re-sending after a reconnect;
- ``finish()``: the episodes still open at the end of input (``cleared_at`` None), with their
  evidence brought up to the latest time the rule has seen. It does not close anything.

Rules are pure: no IO, no clock, no randomness; they import only ``contract`` and the standard
library.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from contract.alerts import AlertChange, AlertEpisode, AlertKind
from contract.events import CardSwipe, ChargingSensorReading, MeterReading, RuleInput

DeviceInput = CardSwipe | MeterReading | ChargingSensorReading
"""The device events rules consume (``RuleInput`` without ``Tick``)."""

NO_CHANGES: tuple[AlertChange, ...] = ()
"""What ``process`` returns when nothing changed (immutable, shared)."""


class Rule(Protocol):
    """What the :class:`rules.engine.RuleEngine` needs from a rule."""

    @property
    def kinds(self) -> frozenset[AlertKind]: ...

    @property
    def inputs(self) -> frozenset[type[DeviceInput]]: ...

    @property
    def next_due(self) -> datetime | None: ...

    def process(self, event: RuleInput) -> Sequence[AlertChange]: ...

    def open_episodes(self) -> list[AlertEpisode]: ...

    def finish(self) -> list[AlertEpisode]: ...


def episode_order(episode: AlertEpisode) -> tuple[datetime, str, str]:
    """Sort key of episodes in output: ``raised_at``, then kind, then subject (replay spec)."""
    return episode.raised_at, episode.kind.value, episode.subject.key()
