"""A task that goes on after one cancel is stopped all the same (agent, fleet and simulators).

On Python 3.11, ``asyncio.wait_for`` returns the awaited result instead of raising when the
result and the cancel arrive in the same loop iteration (CPython gh-86296); aiomqtt awaits every
connect and acknowledgement that way. A shutdown that cancels once and then waits hung on it (the
fleet's config publisher at a lifespan's end, seen in CI).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from drivers.base import cancel_and_wait
from drivers.base import stop_tasks as agent_stop_tasks
from firmware_sim._aio import cancel_and_wait as sim_cancel_and_wait
from fleet.tasks import run_all
from fleet.tasks import stop_tasks as fleet_stop_tasks

Stopper = Callable[..., Awaitable[None]]
STOPPERS = [
    pytest.param(agent_stop_tasks, id="drivers.base.stop_tasks"),
    pytest.param(fleet_stop_tasks, id="fleet.tasks.stop_tasks"),
    pytest.param(sim_cancel_and_wait, id="firmware_sim._aio.cancel_and_wait"),
]


def stubborn(cancels: list[int], swallow: list[int]) -> Callable[[], Awaitable[None]]:
    """A loop that takes the first ``swallow[0]`` cancels for a result, as wait_for may."""

    async def body() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) <= swallow[0]:
                    continue
                raise

    return body


@pytest.mark.parametrize("stop", STOPPERS)
async def test_a_task_that_swallows_cancels_is_stopped(stop: Stopper) -> None:
    cancels: list[int] = []
    budget = [2]
    task = asyncio.create_task(stubborn(cancels, budget)())
    await asyncio.sleep(0)
    try:
        async with asyncio.timeout(30):  # a hang guard, not a speed limit
            await stop(task)
        assert task.cancelled() and len(cancels) == 3
    finally:
        budget[0] = 0  # whatever happened, let the loop close
        task.cancel()
        await asyncio.wait([task])


@pytest.mark.parametrize("stop", STOPPERS)
async def test_a_result_and_a_cancel_together_in_wait_for(stop: Stopper) -> None:
    """The real thing: an acknowledgement lands in the very iteration the stop cancels."""
    loop = asyncio.get_running_loop()
    acks: list[asyncio.Future[None]] = []
    running = [True]

    async def publisher() -> None:
        while running[0]:
            ack: asyncio.Future[None] = loop.create_future()
            acks.append(ack)
            await asyncio.wait_for(ack, timeout=3600)

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0)
    acks[-1].set_result(None)
    try:
        async with asyncio.timeout(30):
            await stop(task)
        assert task.done()
    finally:
        running[0] = False
        acks[-1].cancel()
        await asyncio.wait([task])


@pytest.mark.parametrize("stop", STOPPERS)
async def test_our_own_cancellation_is_not_swallowed(stop: Stopper) -> None:
    cancels: list[int] = []
    deaf = [10**9]
    victim = asyncio.create_task(stubborn(cancels, deaf)())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(stop(victim))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not victim.done() and cancels  # it was asked, and we were not held hostage
    deaf[0] = 0  # now it listens
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim


@pytest.mark.parametrize("cancel", [cancel_and_wait, sim_cancel_and_wait])
async def test_cancel_and_wait_raises_the_tasks_own_error(cancel: Stopper) -> None:
    async def broken() -> None:
        raise OSError("serial port gone")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="serial port gone"):
        await cancel(task)
    # ... and stop_tasks leaves it in the task (a stopping service logs, it does not fail)
    task2 = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await agent_stop_tasks(task2)
    await fleet_stop_tasks(task2)
    assert isinstance(task2.exception(), OSError)


async def test_a_task_group_of_run_all_stops_a_task_that_swallows_cancels() -> None:
    """An asyncio.TaskGroup cancels its tasks once and then waits: the fleet's workers (ingest
    over aiomqtt among them) hung a lifespan's shutdown that way. run_all stops them for sure."""
    cancels: list[int] = []
    budget = [2]
    group = asyncio.create_task(run_all({"stubborn": stubborn(cancels, budget)()}))
    await asyncio.sleep(0.05)
    group.cancel()
    try:
        async with asyncio.timeout(30):  # a hang guard, not a speed limit
            await asyncio.wait([group])
        assert group.cancelled() and len(cancels) == 3
    finally:
        budget[0] = 0
        group.cancel()
        await asyncio.wait([group])


async def test_run_all_raises_a_tasks_error_once_the_others_have_stopped() -> None:
    cancels: list[int] = []
    budget = [2]

    async def broken() -> None:
        await asyncio.sleep(0.05)
        raise OSError("database gone")

    try:
        async with asyncio.timeout(30):
            with pytest.raises(ExceptionGroup) as raised:
                await run_all({"stubborn": stubborn(cancels, budget)(), "broken": broken()})
        assert raised.group_contains(OSError, match="database gone")
        assert len(cancels) == 3
    finally:
        budget[0] = 0


async def test_the_fleets_stop_tasks_logs_a_tasks_own_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A worker that failed (or fails as it is cancelled) is stopped without raising: its error
    # must reach the log under its name, and a group's errors, which the group raises, must not.
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise OSError("lost the database while closing") from None

    async def failed_already() -> None:
        raise ValueError("bad row")

    early = asyncio.create_task(failed_already(), name="fleet-reminders")
    late = asyncio.create_task(fails_on_cancel(), name="fleet-ingest")
    quiet = asyncio.create_task(asyncio.sleep(3600), name="fleet-forwarder")
    await asyncio.sleep(0.01)
    with caplog.at_level("ERROR", logger="fleet.tasks"):
        await fleet_stop_tasks(early, late, quiet)
    logged = sorted(r.getMessage() for r in caplog.records if r.name == "fleet.tasks")
    assert logged == [
        "task fleet-ingest had failed: lost the database while closing",
        "task fleet-reminders had failed: bad row",
    ]
    caplog.clear()

    async def broken() -> None:
        raise OSError("database gone")

    with caplog.at_level("ERROR", logger="fleet.tasks"), pytest.raises(ExceptionGroup):
        await run_all({"broken": broken()})
    assert not [r for r in caplog.records if r.name == "fleet.tasks"]
