"""Stopping background tasks for sure.

One cancel is not always enough: on Python 3.11, ``asyncio.wait_for`` (which aiomqtt awaits
every connect and acknowledgement with) returns the awaited result instead of raising when the
result and the cancel arrive in the same loop iteration (CPython gh-86296), and the task goes on.
A lifespan that cancels its publisher once and then waits could wait for ever. (``drivers.base``
has the agent's twin of this helper; ``fleet`` does not import ``drivers``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_S = 0.5
"""How often :func:`stop_tasks` cancels again a task that went on after a cancel."""


async def stop_tasks(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended (their errors are not raised: a
    stopping service logs, it does not fail); our own cancellation is not swallowed."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
