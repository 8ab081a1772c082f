"""The app factory and an embeddable server.

``create_app(settings)`` returns a FastAPI app whose lifespan owns everything with a life of its
own: it migrates the database, builds the engine, makes sure the admin exists, and runs the MQTT
ingest and the webhook forwarder under one task group until shutdown cancels them. Nothing is
built at import time, so tests and the demo can run several apps side by side.

``serve(settings)`` runs that app on uvicorn inside the caller's event loop and stops cleanly
when cancelled; signals are the caller's business (the CLI maps SIGINT/SIGTERM to cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from fleet import provisioning
from fleet.api import api_router
from fleet.api import metrics as metrics_api
from fleet.api import provisioning as provisioning_api
from fleet.auth import ensure_admin
from fleet.backoff import Backoff
from fleet.db import make_engine, make_sessionmaker, migrate, utcnow
from fleet.dbthreads import DbThreads
from fleet.forwarder import Forwarder, sync_env_channels
from fleet.health import HealthMonitor
from fleet.ingest import Ingest, IngestStats
from fleet.reminders import Reminders
from fleet.runtime import Runtime
from fleet.settings import Settings
from fleet.tasks import run_all, stop_tasks
from fleet.web import make_router

log = logging.getLogger(__name__)

WORKER_RESTART_INITIAL_S = 1.0
WORKER_RESTART_MAX_S = 60.0


def _sync_env_channels(sessions: sessionmaker[Session], settings: Settings) -> None:
    """``FLEET_WEBHOOK_URLS`` become district-wide forwarding channels (fleet/forwarder.py)."""
    with sessions() as session, session.begin():
        sync_env_channels(session, settings.webhook_urls, utcnow())


class StartupError(RuntimeError):
    """The fleet manager could not start (database, port, ...); the cause is chained."""


def _version() -> str:
    try:
        return importlib.metadata.version("qunzu-guard")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


async def _supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Keep a worker alive: workers handle their expected failures themselves, so reaching
    here is a bug, but one bug must not leave the fleet deaf until someone restarts it."""
    backoff = Backoff(WORKER_RESTART_INITIAL_S, WORKER_RESTART_MAX_S)
    while True:
        try:
            await run()
            log.error("%s returned unexpectedly", name)
        except Exception:
            log.exception("%s crashed", name)
        delay = backoff.next_delay()
        log.error("restarting %s in %.1f s", name, delay)
        await asyncio.sleep(delay)


async def _run_workers(
    ingest: Ingest | None,
    forwarder: Forwarder,
    monitor: HealthMonitor | None = None,
    reminders: Reminders | None = None,
) -> None:
    workers: dict[str, Coroutine[Any, Any, None]] = {}
    if reminders is not None:
        workers["fleet-reminders"] = _supervise("reminders", reminders.run)
    if ingest is not None:
        workers["fleet-ingest"] = _supervise("ingest", ingest.run)
    if monitor is not None:
        workers["fleet-health"] = _supervise("health", monitor.run)
    workers["fleet-forwarder"] = _supervise("forwarder", forwarder.run)
    await run_all(workers)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runtime]:
    """Migrate, connect, and run the workers for the duration of the ``async with``."""
    await asyncio.to_thread(migrate, settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        await asyncio.to_thread(ensure_admin, sessions, settings)
        await asyncio.to_thread(_sync_env_channels, sessions, settings)
        stats = IngestStats()
        wake = asyncio.Event()
        async with httpx.AsyncClient(
            headers={"User-Agent": f"qunzu-guard-fleet/{_version()}"},
            follow_redirects=False,
        ) as http:
            db = DbThreads()
            ingest = Ingest(settings, sessions, stats=stats, on_deliveries_enqueued=wake.set, db=db)
            forwarder = Forwarder(settings, sessions, http, wake, db=db)
            # Ingest and the health monitor (which needs ingest listening) run here unless
            # dedicated `fleet-manager ingest` workers do it (FLEET_INGEST_ENABLED=false).
            monitor = HealthMonitor(settings, sessions, stats, db=db)
            workers = asyncio.create_task(
                _run_workers(
                    ingest if settings.ingest_enabled else None,
                    forwarder,
                    monitor if settings.ingest_enabled else None,
                    Reminders(settings, sessions, wake, db=db),
                ),
                name="fleet-workers",
            )
            log.info(
                "fleet manager started: database %s, broker %s",
                engine.url.render_as_string(hide_password=True),
                settings.mqtt_display,
            )
            try:
                yield Runtime(settings, engine, sessions, stats, wake, workers)
            finally:
                await stop_tasks(workers)
                await db.close()
    finally:
        engine.dispose()


def create_app(settings: Settings) -> FastAPI:
    """The fleet manager as an ASGI app; see the module docstring for its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                runtime = await stack.enter_async_context(running(settings))
            except Exception as exc:
                app.state.startup_error = exc  # for serve() to report the cause
                raise
            app.state.runtime = runtime
            # Enrollment, broker accounts and the desired-config publisher.
            app.state.provisioning = await stack.enter_async_context(
                provisioning.running(settings, runtime.sessions)
            )
            try:
                yield
            finally:
                del app.state.runtime
                del app.state.provisioning

    app = FastAPI(
        title="Fleet manager",
        description="Gateways, alerts and forwarding for group-rental and e-bike fire hazards.",
        version=_version(),
        lifespan=lifespan,
    )
    app.include_router(api_router())
    app.include_router(metrics_api.router)  # /metrics, outside /api like scrapers expect
    app.include_router(provisioning_api.router, prefix="/api")
    app.include_router(make_router(settings))
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves signals to its caller and reports startup through an event."""

    def __init__(self, config: uvicorn.Config, started: asyncio.Event | None) -> None:
        super().__init__(config)
        self._started_event = started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit as exc:
            # uvicorn exits the process on a failed startup; here that would take the caller's
            # event loop (the demo's broker, its children) down with it.
            raise StartupError("fleet manager failed to start") from exc
        if self.started and self._started_event is not None:
            self._started_event.set()


async def serve(settings: Settings, *, started: asyncio.Event | None = None) -> None:
    """Serve the fleet manager on ``settings.http_host:http_port`` until cancelled.

    ``started`` is set once the lifespan has run (database migrated, workers running) and the
    socket accepts connections. Raises :class:`StartupError` when it cannot start.
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _EmbeddedServer(config, started)
    # Its own task so that cancelling us can turn into uvicorn's graceful shutdown (close the
    # socket, run the lifespan's exit) instead of abandoning the server mid-loop.
    task = asyncio.create_task(server.serve(), name="fleet-http")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(StartupError):
            await task
        raise
    except StartupError:
        cause = getattr(app.state, "startup_error", None)
        if cause is not None:
            raise StartupError(f"fleet manager failed to start: {cause}") from cause
        raise StartupError(
            f"fleet manager failed to start on {settings.http_host}:{settings.http_port} "
            "(is the port in use? see the log above)"
        ) from None
    if not server.started:
        raise StartupError("fleet manager stopped before it started")


def app_from_env() -> FastAPI:
    """The app with settings from the environment: the factory ``fleet-manager serve
    --workers N`` hands to uvicorn, whose worker processes each build their own."""
    return create_app(Settings())
