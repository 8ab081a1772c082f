"""What every driver offers the agent: an event stream, device status and counters.

A driver is a thin async adapter over one real transport. Its device loop lives in
:meth:`Driver.events`, an async generator that yields typed events and runs until it is
cancelled. Codecs live next to the adapters, are pure (no IO, no asyncio, no clock) and are tested
byte by byte.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from drivers.events import DriverEvent


def utc_now() -> datetime:
    """The default clock of the adapters (tests inject their own)."""
    return datetime.now(UTC)


class DriverError(Exception):
    """Base of the drivers' own exceptions."""


class DriverConfigError(DriverError, ValueError):
    """A driver was built with a configuration it cannot use (fatal: do not retry)."""


class DriverCounters:
    """A small mutable map of named counters (frames ok, timeouts, reconnects, ...)."""

    __slots__ = ("_counts",)

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._counts: dict[str, int] = dict.fromkeys(names, 0)

    def inc(self, name: str, n: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def __repr__(self) -> str:
        return f"DriverCounters({self._counts!r})"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Health of one device as its driver sees it."""

    online: bool
    last_seen: datetime | None = None
    fault: str | None = None


class Driver(Protocol):
    """The interface the agent's supervisor runs (one implementation per device kind)."""

    name: str
    counters: DriverCounters

    def events(self) -> AsyncIterator[DriverEvent]:
        """Run the device loop and yield typed events; stops only by cancellation."""
        ...

    def device_status(self) -> dict[str, DeviceState]:
        """Status of every device this driver reads, by device id."""
        ...


class Backoff:
    """Jittered exponential backoff delays (``next()``), reset after a success."""

    def __init__(
        self, initial_s: float = 0.2, max_s: float = 10.0, *, rng: random.Random | None = None
    ) -> None:
        self._initial = initial_s
        self._max = max_s
        self._current = initial_s
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = self._current * (0.5 + self._rng.random() / 2)
        self._current = min(self._max, self._current * 2)
        return delay

    def reset(self) -> None:
        self._current = self._initial


RECANCEL_S = 0.5
"""How often :func:`stop_tasks` cancels again a task that went on after a cancel."""


async def stop_tasks(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, without swallowing our own
    cancellation (their own errors are left in them).

    One cancel is not always enough: on Python 3.11, ``asyncio.wait_for`` (which aiomqtt awaits
    every connect and acknowledgement with) returns the awaited result instead of raising when
    the result and the cancel arrive in the same loop iteration (CPython gh-86296), and the
    task goes on. A task still running is therefore cancelled again every ``RECANCEL_S``; a
    single wait could hang for ever. (``fleet.tasks`` has the fleet's twin of this helper:
    ``fleet`` does not import ``drivers``.)"""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """:func:`stop_tasks`, then raise the first of the tasks' own errors (not a cancellation)."""
    await stop_tasks(*tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            task.result()


def raise_if_cancelling() -> None:
    """Honour a cancellation that a library call swallowed.

    In Python 3.11 ``asyncio.wait_for`` (which pymodbus awaits every request with) returns the
    result instead of raising CancelledError when the task is cancelled just as the result
    arrives; the task's cancel request stays counted. Call this after such calls so that a
    driver still stops when cancelled.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
