"""Stopping background tasks for sure.

One cancel is not always enough: on Python 3.11, ``asyncio.wait_for`` (which aiomqtt awaits
every connect and acknowledgement with) returns the awaited result instead of raising when the
result and the cancel arrive in the same loop iteration (CPython gh-86296), and the task goes on.
A lifespan that cancels its publisher once and then waits could wait for ever. (``drivers.base``
has the agent's twin of this helper; ``fleet`` does not import ``drivers``.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_S = 0.5
"""How often :func:`stop_tasks` cancels again a task that went on after a cancel."""


async def stop_tasks(*tasks: asyncio.Task[Any], report: bool = True) -> None:
    """Cancel ``tasks`` and wait until every one has ended; our own cancellation is not
    swallowed. A task's own error is not raised (a stopping service does not fail): it is
    logged with the task's name (``report``), so it is neither lost nor left for the garbage
    collector's "exception was never retrieved"."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    if not report:
        return
    for task in tasks:
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            log.error("task %s had failed: %s", task.get_name(), exc, exc_info=exc)


async def run_all(coros: Mapping[str, Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` as the tasks of one :class:`asyncio.TaskGroup`, named by the keys, until
    every one has ended; a task's error ends the others and is raised as the group raises it.

    A task group on its own cancels its tasks once when it aborts (a task failed, or we are
    cancelled) and then waits for them, deaf to further cancels: a task that took that cancel
    for a result (see :func:`stop_tasks`) and went on would hang it. Here the group's tasks are
    stopped with :func:`stop_tasks` before the group exits."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(coro, name=name) for name, coro in coros.items()]
        try:
            await asyncio.wait(tasks)
        finally:
            await stop_tasks(*tasks, report=False)  # the group raises their errors
