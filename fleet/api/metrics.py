"""``GET /metrics``: Prometheus text exposition (format 0.0.4), rendered here, not by
prometheus_client.

The fleet manager runs as several processes (API workers, ingest workers, maybe on several
machines), and any of them may answer a scrape. prometheus_client's multiprocess mode only adds
up processes that share one directory on one machine, so instead every ingest worker writes its
counters to ``ingest_workers`` every ``FLEET_INGEST_STATS_INTERVAL_S`` and this endpoint renders
them, one series per worker (label ``worker``; aggregate with ``sum by``), together with gauges
read from the database (gateways online/offline, sequence gaps, health notifications). A
worker's counters restart from zero when the worker does, which ``rate()`` handles; workers
silent for longer than :data:`STALE_AFTER_S` are left out.

No login, like ``/api/health``: numbers only. Restrict it at the reverse proxy if needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response

from fleet.api.deps import OfflineLimitDep, SessionDep
from fleet.db import utcnow
from fleet.models import Gateway, GatewaySession, HealthNotification, IngestWorker
from fleet.queries import online_clause

router = APIRouter(tags=["metrics"])

STALE_AFTER_S = 120.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self._lines.append(
                f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}"
            )

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _stats(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = json.loads(raw)
    return raw if isinstance(raw, dict) else {}


def render(session: SessionDep, offline_after_s: float) -> str:
    now = utcnow()
    workers = [
        (w.worker_id, _stats(w.stats))
        for w in session.scalars(
            sa.select(IngestWorker)
            .where(IngestWorker.updated_at >= now - timedelta(seconds=STALE_AFTER_S))
            .order_by(IngestWorker.worker_id)
        )
    ]
    out = _Exposition()

    def per_worker(key: str, label: str) -> list[tuple[dict[str, str], float]]:
        return [
            ({"worker": wid, label: str(k)}, float(v))
            for wid, s in workers
            for k, v in sorted(dict(s.get(key) or {}).items())
        ]

    def scalar(key: str) -> list[tuple[dict[str, str], float]]:
        return [
            ({"worker": wid}, float(s[key]))
            for wid, s in workers
            if isinstance(s.get(key), int | float) and not isinstance(s.get(key), bool)
        ]

    out.family(
        "fleet_ingest_messages_total",
        "counter",
        "Uplink messages stored (new, valid), by message kind.",
        per_worker("accepted", "kind"),
    )
    out.family(
        "fleet_ingest_rejected_total",
        "counter",
        "Uplink messages refused by the contract, by reason.",
        per_worker("rejected", "reason"),
    )
    out.family(
        "fleet_ingest_failed_total",
        "counter",
        "Valid uplink messages lost to database or internal errors.",
        per_worker("failed", "reason"),
    )
    out.family(
        "fleet_ingest_duplicates_total",
        "counter",
        "Redelivered uplink messages recognised by id and skipped.",
        scalar("duplicates"),
    )
    out.family(
        "fleet_ingest_batches_total", "counter", "Batches written (one transaction each).",
        scalar("batches"),
    )  # fmt: skip
    out.family(
        "fleet_ingest_batch_messages_total",
        "counter",
        "Messages received in batches (divide by batches_total for the mean batch size).",
        scalar("batch_messages"),
    )
    out.family(
        "fleet_ingest_batch_size", "gauge", "Messages in the last batch.",
        scalar("last_batch_size"),
    )  # fmt: skip
    out.family(
        "fleet_ingest_lag_seconds",
        "gauge",
        "Commit time minus the timestamp of the newest live message of the last batch.",
        scalar("lag_seconds"),
    )
    out.family(
        "fleet_ingest_connected",
        "gauge",
        "1 when every MQTT connection of the worker is subscribed.",
        [({"worker": wid}, 1.0 if s.get("connected") else 0.0) for wid, s in workers],
    )
    out.family(
        "fleet_ingest_workers", "gauge", "Ingest workers that reported recently.",
        [({}, float(len(workers)))],
    )  # fmt: skip

    # the same online test as the API's gateways and the pages (flag and recent last_seen)
    is_online = online_clause(now=now, offline_after_s=offline_after_s).label("online")
    online = dict(session.execute(sa.select(is_online, sa.func.count()).group_by(is_online)).all())
    out.family(
        "fleet_gateways_online", "gauge", "Gateways online now.",
        [({}, float(online.get(True, 0)))],
    )  # fmt: skip
    out.family(
        "fleet_gateways_offline", "gauge", "Gateways offline now (death or silence).",
        [({}, float(online.get(False, 0)))],
    )  # fmt: skip
    gaps = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(Gateway.seq_gaps), 0))) or 0
    out.family(
        "fleet_seq_gaps",
        "gauge",
        "Messages missing from the gateways' current sessions (sequence gaps).",
        [({}, float(gaps))],
    )
    all_gaps = session.scalar(
        sa.select(
            sa.func.coalesce(
                sa.func.sum(
                    sa.case(
                        (
                            GatewaySession.max_seq > GatewaySession.received,
                            GatewaySession.max_seq - GatewaySession.received,
                        ),
                        else_=0,
                    )
                ),
                0,
            )
        )
    )
    out.family(
        "fleet_seq_gaps_all_sessions",
        "gauge",
        "Messages missing over every recorded session (falls when a late message fills a gap).",
        [({}, float(all_gaps or 0))],
    )
    notes = session.execute(
        sa.select(HealthNotification.kind, sa.func.count()).group_by(HealthNotification.kind)
    ).all()
    out.family(
        "fleet_health_notifications_total",
        "counter",
        "Health notifications recorded for the property company, by kind.",
        [({"kind": kind}, float(n)) for kind, n in sorted(notes)],
    )
    return out.text()


@router.get("/metrics", response_class=Response, include_in_schema=True)
def read_metrics(session: SessionDep, offline_after_s: OfflineLimitDep) -> Response:
    return Response(content=render(session, offline_after_s), media_type=CONTENT_TYPE)
