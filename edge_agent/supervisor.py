"""Named, supervised tasks and the systemd notification protocol.

:class:`Supervisor` runs every long-lived loop of the agent (each driver, the rules ticker, the
uplink, the health reporter, the downlink controller) as a named task in one
:class:`asyncio.TaskGroup`. A task that fails (raises, or returns although it should run
forever) is restarted after a jittered exponential backoff; its failure is counted and its last
error kept for the heartbeat. A failing task never touches another one. Tasks stop by
cancellation only.

:class:`SdNotify` speaks systemd's ``sd_notify`` datagram protocol (``READY=1``,
``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``) over ``$NOTIFY_SOCKET`` without a dependency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drivers.base import Backoff, stop_tasks, utc_now

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 300.0
STABLE_AFTER_S = 60.0
ERROR_TEXT_MAX = 300


@dataclass(slots=True)
class TaskStats:
    """What the heartbeat reports about one supervised task."""

    running: bool = False
    failures: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_failure_at: datetime | None = None
    started_mono: float = 0.0


class Supervisor:
    """``await sup.run()`` (until cancelled); ``sup.start(name, factory)`` before or during it.

    ``on_failure(name, error)`` is called after each failure (the desired-config controller uses
    it to see drivers fail after a config change).
    """

    def __init__(
        self,
        *,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        stable_after_s: float = STABLE_AFTER_S,
        on_failure: Callable[[str, str], None] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._stable_after_s = stable_after_s
        self._on_failure = on_failure
        self._clock = clock
        self._factories: dict[str, TaskFactory] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stats: dict[str, TaskStats] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()

    # -- inspection ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._factories)

    def stats(self) -> Mapping[str, TaskStats]:
        return self._stats

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    # -- control -------------------------------------------------------------------------------

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as task ``name`` (a fresh coroutine on every restart)."""
        if name in self._factories:
            raise ValueError(f"task {name!r} already exists")
        self._factories[name] = factory
        self._stats.setdefault(name, TaskStats())
        if self._tg is not None:
            self._spawn(name)

    async def stop(self, name: str) -> bool:
        """Cancel task ``name`` and wait until it has finished. False if there is none."""
        factory = self._factories.pop(name, None)
        task = self._tasks.pop(name, None)
        self._stats.pop(name, None)
        if factory is None:
            return False
        if task is not None:
            await stop_tasks(task)
        return True

    async def restart(self, name: str) -> bool:
        """Stop and start task ``name`` again (fresh backoff). False if there is none."""
        factory = self._factories.get(name)
        if factory is None:
            return False
        stats = self._stats.get(name, TaskStats())
        await self.stop(name)
        self.start(name, factory)
        self._stats[name].restarts = stats.restarts + 1
        self._stats[name].failures = stats.failures
        self._stats[name].last_error = stats.last_error
        self._stats[name].last_failure_at = stats.last_failure_at
        return True

    async def run(self) -> None:
        """Run every task until cancelled; then cancel them all and wait for them."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for name in list(self._factories):
                    self._spawn(name)
                self.ready.set()
                await asyncio.Future()  # until cancelled
            finally:
                # The task group cancels its tasks once and then waits: a cancel swallowed
                # (see stop_tasks) would hang it; stop them for sure first.
                await stop_tasks(*self._tasks.values())
                self._tg = None
                self.ready.clear()
                self._tasks.clear()

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        assert self._tg is not None
        self._tasks[name] = self._tg.create_task(self._guard(name), name=name)

    async def _guard(self, name: str) -> None:
        backoff = Backoff(self._backoff_min_s, self._backoff_max_s)
        while True:
            stats = self._stats[name]
            factory = self._factories[name]
            stats.running = True
            stats.started_mono = time.monotonic()
            try:
                await factory()
                error = "stopped by itself"
                log.error("task %s stopped by itself", name)
            except asyncio.CancelledError:
                stats.running = False
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
                log.exception("task %s failed", name)
            stats.running = False
            stats.failures += 1
            stats.last_error = error
            stats.last_failure_at = self._clock()
            if time.monotonic() - stats.started_mono >= self._stable_after_s:
                backoff.reset()
            delay = backoff.next()
            if self._on_failure is not None:
                try:
                    self._on_failure(name, error)
                except Exception:
                    log.exception("failure hook for task %s failed", name)
            log.warning("task %s restarts in %.1fs", name, delay)
            await asyncio.sleep(delay)
            stats.restarts += 1


class SdNotify:
    """systemd's notification socket (``Type=notify``, ``WatchdogSec=``), or nothing.

    Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. ``watchdog_interval_s``
    is half of ``$WATCHDOG_USEC`` when the watchdog is enabled for this process, else None.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> bool:
        """Send ``KEY=value`` lines; False when not under systemd or the socket is gone."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(states).encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str = "running") -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")
