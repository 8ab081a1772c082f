"""``GET /api/health``: for load balancers and people, no login.

200 with ``status: ok`` when the database answers, the broker connection is up and the workers
run; 503 with ``status: degraded`` otherwise. Shows ingest counters (numbers only, nothing a
gateway sent).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from fleet.api.deps import RuntimeDep
from fleet.api.ingest import IngestStatsPublic

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    mqtt_connected: bool
    workers_running: bool
    ingest: IngestStatsPublic


@router.get("/health")
def read_health(runtime: RuntimeDep, response: Response) -> Health:
    try:
        with runtime.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        database = True
    except sa.exc.SQLAlchemyError:
        database = False
    stats = IngestStatsPublic.model_validate(runtime.ingest_stats.snapshot())
    healthy = database and stats.mqtt_connected and runtime.workers_running
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if healthy else "degraded",
        database=database,
        mqtt_connected=stats.mqtt_connected,
        workers_running=runtime.workers_running,
        ingest=stats,
    )
