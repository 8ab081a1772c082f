"""Blocking database work off the event loop, on threads the app owns.

``asyncio.to_thread`` cannot be waited for at shutdown: a cancelled task leaves its thread
running, still holding a pooled connection, while the engine is disposed under it. The
fleet's workers run their database calls here instead, and shutdown waits for the threads to
finish before the engine is disposed, so no connection is ever orphaned.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DbThreads:
    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fleet-db")

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Wait for every call already started, then stop the threads."""
        await asyncio.to_thread(self._pool.shutdown, True)
