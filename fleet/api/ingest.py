"""``GET /api/ingest/stats``: what this process's MQTT ingest accepted and rejected, and why.

Counters are per process and start at zero with it; with several ingest workers, add them up.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleet.api.deps import CurrentUser, RuntimeDep

router = APIRouter(prefix="/ingest", tags=["ingest"])


class IngestStatsPublic(BaseModel):
    accepted: dict[str, int] = Field(description="Stored messages by type (birth, alert, ...).")
    accepted_total: int
    rejected: dict[str, int] = Field(
        description="Messages refused by the contract, by reason (not_json, unknown_version, "
        "invalid, too_large, topic_mismatch, bad_topic)."
    )
    rejected_total: int
    failed: dict[str, int] = Field(description="Valid messages lost to database or other errors.")
    mqtt_connected: bool
    last_message_at: datetime | None


@router.get("/stats")
def read_ingest_stats(runtime: RuntimeDep, _user: CurrentUser) -> IngestStatsPublic:
    return IngestStatsPublic.model_validate(runtime.ingest_stats.snapshot())
