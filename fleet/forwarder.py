"""Forward notifications to the street offices' channels from a durable outbox.

Whatever changes an alert in a way a receiver should hear of (raised, severity up, cleared at
the device, raised again, a lifecycle step, a reminder, an escalation) calls :func:`enqueue` in
the same transaction: it freezes the payload in a ``notifications`` row (its ``key`` is the
idempotency key) and adds one ``forward_deliveries`` row per channel that wants it: the
channels of the alert's street office plus the district-wide ones (``street_office_id`` NULL,
where ``FLEET_WEBHOOK_URLS`` live). So a notification the database has is one that will be
sent, whatever crashes in between.

The :class:`Forwarder` claims due rows and sends them through the channel's sender
(``fleet/channels``): success is delivered; anything else is retried with jittered exponential
backoff until ``forward_max_attempts``, then marked failed. State lives in the database, so
deliveries survive restarts, and several processes can run the worker side by side: a claim
pushes ``next_attempt_at`` forward by a lease (PostgreSQL also skips rows another worker has
locked).

Order per flat: a row is claimed only when no older row for the same channel and ``order_key``
(the alert's subject) is still pending, so a receiver that was down gets a flat's raise before
its update and its clear. Quiet hours (per channel, local time) defer everything but
high-severity notifications to the end of the quiet window; a high one pulls the flat's
deferred rows forward with it, keeping the order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, sessionmaker

from fleet.backoff import backoff_delay
from fleet.channels import ChannelKind, DeliveryError, Message, Sender
from fleet.channels.email import EmailSender
from fleet.channels.outbox import enqueue, quiet_until, sync_env_channels
from fleet.channels.robots import DingTalkSender, WeComSender
from fleet.channels.webhook import WebhookSender, encode_body, signature
from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.models import DeliveryStatus, ForwardChannel, ForwardDelivery, Notification
from fleet.settings import Settings
from fleet.tasks import stop_tasks

__all__ = [
    "Forwarder",
    "encode_body",
    "enqueue",
    "quiet_until",
    "signature",
    "sync_env_channels",
]

log = logging.getLogger(__name__)

BATCH_SIZE = 50
MAX_IN_FLIGHT = 32  # deliveries being sent at once, over all channels
ERROR_PAUSE_S = 5.0


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed delivery with what its channel needs to send it."""

    delivery_id: int
    alert_id: str | None
    kind: str
    config: dict[str, Any]
    attempts: int
    message: Message


class Forwarder:
    """The forwarding worker. Build it in the app's lifespan, run :meth:`run` as a task."""

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
        """Deliver due rows until cancelled.

        Deliveries run as their own tasks (at most ``MAX_IN_FLIGHT``), so a slow or dead
        receiver delays only its own rows: each finished delivery records its outcome and wakes
        the loop, which claims whatever became due (the next row of that flat, a new alert).
        The loop otherwise sleeps until woken, a retry is due, or the poll interval.
        """
        tasks: dict[asyncio.Task[None], Job] = {}
        try:
            while True:
                self._wake.clear()  # a wake-up during this round triggers the next one at once
                try:
                    room = min(BATCH_SIZE, MAX_IN_FLIGHT - len(tasks))
                    jobs, timeout = await self._claim(max(room, 0))
                    for job in jobs:
                        task = asyncio.create_task(
                            self._deliver(job), name=f"deliver-{job.delivery_id}"
                        )
                        tasks[task] = job
                        task.add_done_callback(lambda t: tasks.pop(t, None))
                    if jobs and len(jobs) == room:
                        await asyncio.sleep(0)  # let the tasks start, then claim more
                        continue
                except sa.exc.SQLAlchemyError as exc:
                    log.error(  # noqa: TRY400 - a traceback per poll would drown the log
                        "forwarder database error, retrying in %.0f s: %s",
                        ERROR_PAUSE_S,
                        str(exc).splitlines()[0][:300],
                    )
                    timeout = ERROR_PAUSE_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            pending = dict(tasks)
            await stop_tasks(*pending)
            # A task cancelled before it started never ran its own release: hand its row back
            # so the next start retries it at once instead of after the lease.
            for task, job in pending.items():
                if task.cancelled():
                    await self._db.run(self._release, job)

    async def _claim(self, limit: int) -> tuple[list[Job], float]:
        """Claim due rows; when cancelled meanwhile, release what the claim took (the database
        work runs on in its thread and commits, so its rows would otherwise stay leased)."""
        claim = asyncio.ensure_future(self._db.run(self._claim_due, limit))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                jobs, _ = await claim
                for job in jobs:
                    await self._db.run(self._release, job)
            raise

    def _claim_due(self, limit: int = BATCH_SIZE) -> tuple[list[Job], float]:
        """Lease up to ``limit`` due rows; also how long until the next row is due (one
        transaction: on SQLite every transaction takes the write lock)."""
        now = utcnow()
        older = aliased(ForwardDelivery)
        blocked = (
            sa.select(older.id)
            .where(
                older.channel_id == ForwardDelivery.channel_id,
                older.order_key == ForwardDelivery.order_key,
                older.status == DeliveryStatus.PENDING.value,
                older.id < ForwardDelivery.id,
            )
            .exists()
        )
        with self._sessions() as session, session.begin():
            rows = (
                []
                if limit <= 0
                else session.execute(
                    sa.select(ForwardDelivery, Notification, ForwardChannel)
                    .join(Notification, Notification.id == ForwardDelivery.notification_id)
                    .join(ForwardChannel, ForwardChannel.id == ForwardDelivery.channel_id)
                    .where(
                        ForwardDelivery.status == DeliveryStatus.PENDING.value,
                        ForwardDelivery.next_attempt_at <= now,
                        ~blocked,
                    )
                    .order_by(ForwardDelivery.next_attempt_at, ForwardDelivery.id)
                    .limit(limit)
                    .with_for_update(of=ForwardDelivery, skip_locked=True)
                ).all()
            )
            jobs = []
            for delivery, notification, channel in rows:
                delivery.next_attempt_at = now + self._lease
                jobs.append(
                    Job(
                        delivery.id,
                        delivery.alert_id,
                        channel.kind,
                        dict(channel.config),
                        delivery.attempts,
                        self._message(notification),
                    )
                )
            session.flush()
            next_due = session.scalar(
                sa.select(sa.func.min(ForwardDelivery.next_attempt_at)).where(
                    ForwardDelivery.status == DeliveryStatus.PENDING.value
                )
            )
        poll = self._settings.forward_poll_s
        if next_due is None:
            return jobs, poll
        return jobs, max(0.0, min(poll, (next_due - now).total_seconds()))

    def _message(self, notification: Notification) -> Message:
        payload = dict(notification.payload)
        link_path = payload.get("link_path")
        link = f"{self._settings.base_url}{link_path}" if isinstance(link_path, str) else None
        attachment = None
        xlsx = payload.pop("xlsx_b64", None)
        if isinstance(xlsx, str):
            attachment = (str(payload.get("filename", "report.xlsx")), base64.b64decode(xlsx))
        return Message(
            key=notification.key,
            event=notification.event,
            severity=notification.severity,
            payload=payload,
            link=link,
            attachment=attachment,
        )

    def sender(self, kind: str, config: dict[str, Any]) -> Sender:
        s = self._settings
        timeout = s.forward_timeout_s
        tz = s.display_timezone
        match kind:
            case ChannelKind.WEBHOOK:
                return WebhookSender(self._http, config, key=s.webhook_key, timeout=timeout)
            case ChannelKind.WECOM:
                return WeComSender(self._http, config, tz=tz, timeout=timeout)
            case ChannelKind.DINGTALK:
                return DingTalkSender(self._http, config, tz=tz, timeout=timeout)
            case ChannelKind.EMAIL:
                return EmailSender(
                    config,
                    host=s.smtp_host,
                    port=s.smtp_port,
                    sender=s.smtp_from,
                    username=s.smtp_username,
                    password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                    starttls=s.smtp_starttls,
                    use_tls=s.smtp_tls,
                    tz=tz,
                    timeout=timeout,
                )
        raise DeliveryError(f"unknown channel kind {kind!r}", retryable=False)

    async def _deliver(self, job: Job) -> None:
        error: DeliveryError | None = None
        try:
            await self.sender(job.kind, job.config).send(job.message)
        except DeliveryError as exc:
            error = exc
        except asyncio.CancelledError:
            # Shutting down mid-request: hand the row back now rather than leaving it leased,
            # so the next start (or another worker) retries it at once.
            await self._db.run(self._release, job)
            raise
        except Exception as exc:  # a bug in a sender must not kill the worker
            log.exception("sending notification %s over %s failed", job.message.key, job.kind)
            error = DeliveryError(f"internal error: {type(exc).__name__}")
        try:
            await self._db.run(self._record, job, error)
        except sa.exc.SQLAlchemyError as exc:
            # The lease expires and the row is retried; the receiver may see it twice, which the
            # idempotency key is for.
            log.error(  # noqa: TRY400
                "could not record delivery %d (%s): %s",
                job.delivery_id,
                job.message.key,
                str(exc).splitlines()[0][:300],
            )
        self._wake.set()  # the next row of this flat (or channel) may be due now

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

    def _record(self, job: Job, error: DeliveryError | None) -> None:
        now = utcnow()
        attempts = job.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_error": error.detail[:500] if error else None,
        }
        if error is None:
            values |= {"status": DeliveryStatus.DELIVERED.value, "delivered_at": now}
            log.info("notification %s delivered over %s", job.message.key, job.kind)
        elif not error.retryable or attempts >= self._settings.forward_max_attempts:
            values |= {"status": DeliveryStatus.FAILED.value}
            log.error(
                "giving up on notification %s over %s after %d attempts: %s",
                job.message.key,
                job.kind,
                attempts,
                error.detail,
            )
        else:
            delay = backoff_delay(
                attempts,
                initial=self._settings.forward_backoff_initial_s,
                maximum=self._settings.forward_backoff_max_s,
            )
            values |= {"next_attempt_at": now + timedelta(seconds=delay)}
            log.warning(
                "delivering notification %s over %s failed (%s); attempt %d, retry in %.1f s",
                job.message.key,
                job.kind,
                error.detail,
                attempts,
                delay,
            )
        with self._sessions() as session, session.begin():
            session.execute(
                sa.update(ForwardDelivery)
                .where(ForwardDelivery.id == job.delivery_id)
                .values(**values)
            )
