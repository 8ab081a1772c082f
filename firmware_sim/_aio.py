"""Small asyncio helpers shared by the simulators."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_S = 0.5
"""How often :func:`cancel_and_wait` cancels again a task that went on after a cancel."""


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, without swallowing our own
    cancellation; then raise the first of their own errors (not a cancellation).

    A task still running is cancelled again every ``RECANCEL_S``: on Python 3.11,
    ``asyncio.wait_for`` can take a cancel that arrives with its result for the result (CPython
    gh-86296). The twin of ``drivers.base.cancel_and_wait`` (``firmware_sim`` imports only
    ``contract``)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            task.result()
