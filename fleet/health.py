"""Gateway health: offline detection for what the broker cannot notice.

A gateway's birth puts it online and its last will (or clean-stop death) takes it offline; that
is ingest's job (:mod:`fleet.store`). What the will cannot cover is a connection that is
half-open (the gateway's network died and the broker has not noticed yet), a broker that lost
the will, or an agent that is connected but stuck. :class:`HealthMonitor` marks a gateway
offline (``offline_reason='timeout'``) when nothing arrived from it for
``FLEET_GATEWAY_OFFLINE_AFTER_S`` (3 heartbeat intervals by default); its next message brings it
back.

Silence only means something while ingest is listening. The monitor runs next to an ingest
worker and times nothing out while that worker is not subscribed, nor during a grace period
(``FLEET_HEALTH_GRACE_S``, default the offline timeout) after it (re)subscribed: when the fleet
manager itself restarts, every gateway's last message is old, and marking them all offline
would be a false outage of the whole fleet and a flood of notifications.

Each timeout records one notification for the property company (物业) per gateway session (the
same key a last will uses, so a will and a timeout of one session notify once). Devices of an
offline gateway are shown as unknown, not each as a fault. Recording works in several processes
at once: the update is conditional and notification keys are unique.

Once an hour the monitor also forgets applied message ids older than
``FLEET_DEDUPE_RETENTION_DAYS`` and heartbeat history older than
``FLEET_HEARTBEAT_RETENTION_DAYS``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.models import Gateway, GatewayHeartbeat, HealthNotification, UplinkMessage
from fleet.queries import UNJUDGED_S, offline_limit_s
from fleet.settings import Settings
from fleet.store import PROPERTY, gateway_offline_key, insert_ignoring_duplicates

if TYPE_CHECKING:
    from fleet.ingest import IngestStats

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0

# What a device's state is shown as, in the API.
DEVICE_OK = "ok"
DEVICE_FAULT = "fault"
DEVICE_OFFLINE = "offline"
DEVICE_UNKNOWN = "unknown"


def device_state(*, gateway_online: bool, online: bool | None, fault: str | None) -> str:
    """A device's state as people should see it: unknown while its gateway is offline (the
    gateway cannot tell us, so this is not a device fault), else what the gateway reported."""
    if not gateway_online or online is None:
        return DEVICE_UNKNOWN
    if not online:
        return DEVICE_OFFLINE
    return DEVICE_FAULT if fault else DEVICE_OK


def sweep(sessions: sessionmaker[Session], now: datetime, offline_after_s: float) -> list[str]:
    """Mark gateways silent for longer than ``offline_after_s`` offline; their ids."""
    cutoff = now - timedelta(seconds=offline_after_s)
    with sessions() as session, session.begin():
        rows = session.execute(
            sa.update(Gateway)
            .where(Gateway.online.is_(True), Gateway.last_seen < cutoff)
            .values(online=False, offline_reason="timeout", offline_since=now)
            .returning(Gateway.gateway_id, Gateway.session)
        ).all()
        if rows:
            session.execute(
                insert_ignoring_duplicates(session, HealthNotification, ["key"]),
                [
                    {
                        "key": gateway_offline_key(gw, number),
                        "kind": "gateway_offline",
                        "audience": PROPERTY,
                        "gateway_id": gw,
                        "device_id": None,
                        "detail": "timeout",
                        "created_at": now,
                    }
                    for gw, number in sorted(rows)
                ],
            )
    return sorted(gw for gw, _ in rows)


def prune_message_ids(sessions: sessionmaker[Session], now: datetime, days: float) -> int:
    """Forget message ids older than ``days`` (they only guard against redelivery)."""
    with sessions() as session, session.begin():
        result = session.execute(
            sa.delete(UplinkMessage).where(UplinkMessage.received_at < now - timedelta(days=days))
        )
    return int(getattr(result, "rowcount", 0) or 0)


def prune_heartbeats(sessions: sessionmaker[Session], now: datetime, days: float) -> int:
    """Drop heartbeat history older than ``days`` (the gateway page charts the last day)."""
    with sessions() as session, session.begin():
        result = session.execute(
            sa.delete(GatewayHeartbeat).where(GatewayHeartbeat.ts < now - timedelta(days=days))
        )
    return int(getattr(result, "rowcount", 0) or 0)


class HealthMonitor:
    """Times out silent gateways while ``stats`` (the ingest worker's) says it is listening."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        stats: IngestStats,
        *,
        db: DbThreads,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._stats = stats
        self._db = db
        self.timed_out = 0

    async def run(self) -> None:
        s = self._settings
        interval = min(s.health_sweep_s, s.gateway_offline_after_s / 4)
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = utcnow()
            try:
                # the same limit as the API and the pages (none during the grace period)
                limit = offline_limit_s(s, self._stats.subscribed_since, now)
                if limit < UNJUDGED_S:
                    gone = await self._db.run(sweep, self._sessions, now, limit)
                    if gone:
                        self.timed_out += len(gone)
                        log.info(
                            "%d gateway(s) silent for %.0f s, now offline: %s",
                            len(gone),
                            s.gateway_offline_after_s,
                            ", ".join(gone[:20]) + (" ..." if len(gone) > 20 else ""),
                        )
                if loop.time() - last_prune >= PRUNE_INTERVAL_S:
                    last_prune = loop.time()
                    await self._db.run(
                        prune_message_ids, self._sessions, now, s.dedupe_retention_days
                    )
                    await self._db.run(
                        prune_heartbeats, self._sessions, now, s.heartbeat_retention_days
                    )
            except sa.exc.SQLAlchemyError as exc:
                log.warning("health sweep failed: %s", str(exc).splitlines()[0][:300])
