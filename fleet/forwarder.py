"""Forward alerts to the street office's webhooks from a durable outbox.

Ingest writes one ``forward_deliveries`` row per (alert, receiver URL) in the same transaction
that first stores the alert, so an alert the database has is an alert that will be forwarded,
whatever crashes in between. This worker claims due rows, POSTs the alert as JSON and records the
outcome: 2xx is delivered; anything else is retried with jittered exponential backoff until
``forward_max_attempts``, then marked failed. Because state lives in the database, deliveries
survive restarts, and several fleet-manager processes can run the worker side by side: a claim
pushes ``next_attempt_at`` forward by a lease (PostgreSQL also skips rows another worker has
locked), so a row is not sent twice at once, and a worker that dies mid-request only delays the
retry until the lease runs out.

Receivers get at-least-once delivery: ``Idempotency-Key`` (the alert id) lets them drop repeats,
and ``X-Signature: sha256=<hex>`` (HMAC-SHA256 of the exact body bytes) lets them check the
sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from contract.alerts import AlertKind
from fleet.backoff import backoff_delay
from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.models import Alert, DeliveryStatus, ForwardDelivery
from fleet.settings import Settings
from fleet.texts import kind_title

log = logging.getLogger(__name__)

WEBHOOK_SCHEMA_VERSION = 1
BATCH_SIZE = 50
CONCURRENCY = 8
ERROR_PAUSE_S = 5.0


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed delivery, with the body to send (built from the alert's current state)."""

    delivery_id: int
    alert_id: str
    url: str
    attempts: int
    body: bytes


def signature(key: bytes, body: bytes) -> str:
    """The ``X-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def webhook_payload(alert: Alert, *, base_url: str) -> dict[str, Any]:
    """The JSON document a receiver gets for ``alert``."""
    kind = AlertKind(alert.kind)
    return {
        "v": WEBHOOK_SCHEMA_VERSION,
        "alert_id": alert.alert_id,
        "kind": alert.kind,
        "category": alert.category,
        "severity": alert.severity,
        "state": alert.state,
        "title_zh": kind_title(kind, "zh"),
        "title_en": kind_title(kind, "en"),
        "unit_id": alert.unit_id,
        "building": alert.building,
        "sensor_id": alert.sensor_id,
        "meter_id": alert.meter_id,
        "reader_id": alert.reader_id,
        "gateway_id": alert.gateway_id,
        "raised_at": _iso(alert.raised_at),
        "cleared_at": _iso(alert.cleared_at),
        "evidence": alert.evidence,
        "link": f"{base_url}/alerts/{alert.alert_id}",
    }


def encode_body(payload: dict[str, Any]) -> bytes:
    # Chinese stays readable (ensure_ascii off); compact and key-sorted so equal payloads give
    # equal bytes and equal signatures.
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


class Forwarder:
    """The webhook worker. Build it in the app's lifespan, run :meth:`run` as a task."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        http: httpx.AsyncClient,
        wake: asyncio.Event,
        *,
        db: DbThreads,
    ) -> None:
        self._db = db
        self._settings = settings
        self._sessions = sessions
        self._http = http
        self._wake = wake
        self._lease = timedelta(seconds=settings.forward_timeout_s * 3 + 30)

    async def run(self) -> None:
        """Deliver due rows until cancelled; sleep until woken, a retry is due, or the poll."""
        limit = asyncio.Semaphore(CONCURRENCY)
        while True:
            self._wake.clear()  # a wake-up during this round triggers the next one at once
            try:
                jobs = await self._db.run(self._claim_due)
                async with asyncio.TaskGroup() as tg:
                    for job in jobs:
                        tg.create_task(self._deliver(job, limit), name=f"deliver-{job.delivery_id}")
                if len(jobs) == BATCH_SIZE:
                    continue
                timeout = await self._db.run(self._seconds_until_next_due)
            except sa.exc.SQLAlchemyError as exc:
                log.error(  # noqa: TRY400 - a traceback per poll would drown the log
                    "forwarder database error, retrying in %.0f s: %s",
                    ERROR_PAUSE_S,
                    str(exc).splitlines()[0][:300],
                )
                timeout = ERROR_PAUSE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _claim_due(self) -> list[Job]:
        now = utcnow()
        with self._sessions() as session, session.begin():
            rows = session.execute(
                sa.select(ForwardDelivery, Alert)
                .join(Alert, Alert.alert_id == ForwardDelivery.alert_id)
                .where(
                    ForwardDelivery.status == DeliveryStatus.PENDING.value,
                    ForwardDelivery.next_attempt_at <= now,
                )
                .order_by(ForwardDelivery.next_attempt_at, ForwardDelivery.id)
                .limit(BATCH_SIZE)
                .with_for_update(of=ForwardDelivery, skip_locked=True)
            ).all()
            jobs = []
            for delivery, alert in rows:
                delivery.next_attempt_at = now + self._lease
                payload = webhook_payload(alert, base_url=self._settings.base_url)
                jobs.append(
                    Job(
                        delivery.id,
                        alert.alert_id,
                        delivery.url,
                        delivery.attempts,
                        encode_body(payload),
                    )
                )
            return jobs

    def _seconds_until_next_due(self) -> float:
        poll = self._settings.forward_poll_s
        with self._sessions() as session:
            next_due = session.scalar(
                sa.select(sa.func.min(ForwardDelivery.next_attempt_at)).where(
                    ForwardDelivery.status == DeliveryStatus.PENDING.value
                )
            )
        if next_due is None:
            return poll
        return max(0.0, min(poll, (next_due - utcnow()).total_seconds()))

    async def _deliver(self, job: Job, limit: asyncio.Semaphore) -> None:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": job.alert_id,
            "X-Signature": signature(self._settings.webhook_key, job.body),
        }
        error: str | None
        async with limit:
            try:
                response = await self._http.post(
                    job.url,
                    content=job.body,
                    headers=headers,
                    timeout=self._settings.forward_timeout_s,
                )
                error = None if response.is_success else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            except asyncio.CancelledError:
                # Shutting down mid-request: hand the row back now rather than leaving it
                # leased, so the next start (or another worker) retries it at once.
                await self._db.run(self._release, job)
                raise
        try:
            await self._db.run(self._record, job, error)
        except sa.exc.SQLAlchemyError as exc:
            # The lease expires and the row is retried; the receiver may see it twice, which the
            # idempotency key is for.
            log.error(  # noqa: TRY400
                "could not record delivery %d of alert %s: %s",
                job.delivery_id,
                job.alert_id,
                str(exc).splitlines()[0][:300],
            )

    def _release(self, job: Job) -> None:
        try:
            with self._sessions() as session, session.begin():
                session.execute(
                    sa.update(ForwardDelivery)
                    .where(ForwardDelivery.id == job.delivery_id)
                    .values(next_attempt_at=utcnow())
                )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not release delivery %d: %s", job.delivery_id, exc)

    def _record(self, job: Job, error: str | None) -> None:
        now = utcnow()
        attempts = job.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if error is None:
            values |= {"status": DeliveryStatus.DELIVERED.value, "delivered_at": now}
            log.info("alert %s delivered to %s", job.alert_id, job.url)
        elif attempts >= self._settings.forward_max_attempts:
            values |= {"status": DeliveryStatus.FAILED.value}
            log.error(
                "giving up on alert %s for %s after %d attempts: %s",
                job.alert_id,
                job.url,
                attempts,
                error,
            )
        else:
            delay = backoff_delay(
                attempts,
                initial=self._settings.forward_backoff_initial_s,
                maximum=self._settings.forward_backoff_max_s,
            )
            values |= {"next_attempt_at": now + timedelta(seconds=delay)}
            log.warning(
                "delivering alert %s to %s failed (%s); attempt %d, retry in %.1f s",
                job.alert_id,
                job.url,
                error,
                attempts,
                delay,
            )
        with self._sessions() as session, session.begin():
            session.execute(
                sa.update(ForwardDelivery)
                .where(ForwardDelivery.id == job.delivery_id)
                .values(**values)
            )
