"""What the running app holds: built by the lifespan, reached by requests through ``app.state``.

Nothing here exists at import time; tests and the demo build as many apps as they like, each
with its own engine, workers and counters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from fleet.ingest import IngestStats
from fleet.settings import Settings


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    engine: sa.Engine
    sessions: sessionmaker[Session]
    ingest_stats: IngestStats
    forward_wake: asyncio.Event
    workers: asyncio.Task[None]

    @property
    def workers_running(self) -> bool:
        return not self.workers.done()
