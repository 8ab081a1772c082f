"""Helpers for driver tests: consume a driver's event stream with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


async def collect_until(
    events: AsyncIterator[T],
    done: Callable[[list[T]], bool],
    timeout: float = 10.0,
) -> list[T]:
    """Read events until ``done(events_so_far)`` is true; fail after ``timeout`` seconds."""
    seen: list[T] = []
    try:
        async with asyncio.timeout(timeout):
            async for event in events:
                seen.append(event)
                if done(seen):
                    return seen
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s; got {seen!r}") from None
    raise AssertionError(f"stream ended; got {seen!r}")


async def wait_for(probe: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.01)
    assert probe(), what


class StepClock:
    """A clock that advances by ``step`` on every call (deterministic timestamps)."""

    def __init__(self, start: datetime | None = None, step_s: float = 1.0) -> None:
        self.now = start or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        self.step = timedelta(seconds=step_s)

    def __call__(self) -> datetime:
        current = self.now
        self.now += self.step
        return current


class Consumer(Generic[T]):
    """Drains an event stream in a background task; tests wait for conditions on ``seen``."""

    def __init__(self, events: AsyncIterator[T]) -> None:
        self.seen: list[T] = []
        self._task = asyncio.create_task(self._run(events))

    async def _run(self, events: AsyncIterator[T]) -> None:
        async for event in events:
            self.seen.append(event)

    async def until(self, done: Callable[[list[T]], bool], timeout: float = 10.0) -> list[T]:
        try:
            async with asyncio.timeout(timeout):
                while not done(self.seen):
                    if self._task.done():
                        self._task.result()
                        raise AssertionError(f"stream ended; got {self.seen!r}")
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s; got {self.seen!r}") from None
        return list(self.seen)

    async def stop(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task


@asynccontextmanager
async def consuming(events: AsyncIterator[T]) -> AsyncIterator[Consumer[T]]:
    consumer = Consumer(events)
    try:
        yield consumer
    finally:
        await consumer.stop()
