"""MQTT ingest: every gateway uplink message, validated, into the database.

One long-lived task: connect, subscribe to ``edge/v1/+/up/#`` at QoS 1, and for each message
validate it against the contract and apply it in its own short transaction. Nothing a gateway
sends can stop ingest: a payload that breaks the contract is counted by reason and logged
(rate-limited, with the gateway id and a short prefix, never the payload), and a database error
is retried briefly when it looks transient, then counted and logged. A lost broker connection is
retried forever with jittered exponential backoff. The task stops when cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt
import sqlalchemy as sa
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.orm import Session, sessionmaker

from contract.messages import ContractError, Envelope, decode_uplink
from contract.topics import up_filter
from fleet.backoff import Backoff, backoff_delay
from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.settings import Settings
from fleet.store import Applied, apply_uplink

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 30.0
DB_ATTEMPTS = 4  # for errors that look transient (lost connection, SQLite busy)
DB_RETRY_INITIAL_S = 0.2
WARNING_INTERVAL_S = 60.0
PAYLOAD_PREFIX_BYTES = 32
_SUBACK_FAILURE = 0x80


@dataclass
class IngestStats:
    """Counters and state that the health endpoint shows; owned by one :class:`Ingest`."""

    accepted: Counter[str] = field(default_factory=Counter)  # by message type
    rejected: Counter[str] = field(default_factory=Counter)  # by ContractError reason
    failed: Counter[str] = field(default_factory=Counter)  # "database" / "internal"
    connected: bool = False
    last_message_at: datetime | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "accepted": dict(sorted(self.accepted.items())),
            "accepted_total": self.accepted.total(),
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected.total(),
            "failed": dict(sorted(self.failed.items())),
            "mqtt_connected": self.connected,
            "last_message_at": self.last_message_at,
        }


class _WarningLimiter:
    """At most one warning per (gateway, reason) per interval, so a gateway stuck sending
    garbage many times a second cannot flood the log; the suppressed count is reported."""

    _MAX_KEYS = 10_000

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._state: dict[tuple[str | None, str], tuple[float, int]] = {}

    def should_log(self, key: tuple[str | None, str]) -> tuple[bool, int]:
        now = time.monotonic()
        last, suppressed = self._state.get(key, (-self._interval, 0))
        if now - last >= self._interval:
            if len(self._state) >= self._MAX_KEYS:
                self._state.clear()
            self._state[key] = (now, 0)
            return True, suppressed
        self._state[key] = (last, suppressed + 1)
        return False, 0


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _check_granted(topic_filter: str, granted: Sequence[int | ReasonCode]) -> None:
    """Raise when the broker refused the subscription (an ACL, a shared subscription it does
    not support): connected but deaf is the failure nobody notices."""
    for code in granted:
        refused = code.is_failure if isinstance(code, ReasonCode) else code >= _SUBACK_FAILURE
        if refused:
            raise aiomqtt.MqttError(f"broker refused subscription to {topic_filter}")


def _is_transient(exc: sa.exc.SQLAlchemyError) -> bool:
    return isinstance(exc, sa.exc.OperationalError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


class Ingest:
    """The ingest worker. Build it in the app's lifespan, run :meth:`run` as a task."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        stats: IngestStats | None = None,
        on_deliveries_enqueued: Callable[[], None] = lambda: None,
        db: DbThreads,
    ) -> None:
        self._db = db
        self._settings = settings
        self._sessions = sessions
        self.stats = stats if stats is not None else IngestStats()
        self._on_deliveries_enqueued = on_deliveries_enqueued
        self._warnings = _WarningLimiter(WARNING_INTERVAL_S)

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        return aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=s.mqtt_password,
            identifier=s.mqtt_client_id,
            # A fixed client id asks the broker to keep our subscription and queue QoS 1
            # messages while we are away; a random one would leave orphaned sessions behind.
            clean_session=s.mqtt_client_id is None,
            keepalive=30,
            tls_context=ssl.create_default_context() if s.mqtt_tls else None,
        )

    async def run(self) -> None:
        """Consume uplink messages until cancelled, reconnecting whenever the broker is lost."""
        topic_filter = up_filter(self._settings.mqtt_shared_group)
        backoff = Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        while True:
            try:
                async with self._client() as client:
                    _check_granted(topic_filter, await client.subscribe(topic_filter, qos=1))
                    self.stats.connected = True
                    backoff.reset()
                    log.info(
                        "ingest subscribed to %s on %s", topic_filter, self._settings.mqtt_display
                    )
                    async for message in client.messages:
                        await self.handle(message.topic.value, _as_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "MQTT broker %s unavailable (%s); reconnecting in %.1f s",
                    self._settings.mqtt_display,
                    exc,
                    delay,
                )
                self.stats.connected = False
                await asyncio.sleep(delay)
            finally:
                self.stats.connected = False

    async def handle(self, topic: str, payload: bytes) -> None:
        """Validate and store one message. Never raises (except on cancellation)."""
        received_at = utcnow()
        self.stats.last_message_at = received_at
        try:
            message = decode_uplink(topic, payload)
        except ContractError as exc:
            self.stats.rejected[exc.reason] += 1
            self._warn_rejected(topic, payload, exc)
            return
        try:
            applied = await self._apply(message, received_at)
        except sa.exc.SQLAlchemyError as exc:
            self.stats.failed["database"] += 1
            log.error(  # noqa: TRY400 - the cause is in the message; no traceback per message
                "database error storing %s %s from gateway %s, message dropped: %s",
                type(message).__name__,
                message.id,
                message.gw,
                str(exc).splitlines()[0][:300],
            )
            return
        except Exception:
            self.stats.failed["internal"] += 1
            log.exception(
                "unexpected error storing %s %s from gateway %s, message dropped",
                type(message).__name__,
                message.id,
                message.gw,
            )
            return
        self.stats.accepted[topic.rsplit("/", 1)[-1]] += 1
        if applied.deliveries_enqueued:
            self._on_deliveries_enqueued()

    async def _apply(self, message: Envelope, received_at: datetime) -> Applied:
        attempt = 1
        while True:
            try:
                return await self._db.run(self._apply_sync, message, received_at)
            except sa.exc.SQLAlchemyError as exc:
                if attempt >= DB_ATTEMPTS or not _is_transient(exc):
                    raise
                delay = backoff_delay(attempt, initial=DB_RETRY_INITIAL_S, maximum=2.0)
                log.warning(
                    "database error (attempt %d/%d), retrying in %.1f s: %s",
                    attempt,
                    DB_ATTEMPTS,
                    delay,
                    str(exc).splitlines()[0][:300],
                )
                attempt += 1
                await asyncio.sleep(delay)

    def _apply_sync(self, message: Envelope, received_at: datetime) -> Applied:
        with self._sessions() as session, session.begin():
            return apply_uplink(
                session,
                message,
                received_at=received_at,
                webhook_urls=self._settings.webhook_urls,
            )

    def _warn_rejected(self, topic: str, payload: bytes, exc: ContractError) -> None:
        should, suppressed = self._warnings.should_log((exc.gateway_id, exc.reason))
        if not should:
            return
        log.warning(
            "rejected uplink from gateway %s on %s: %s: %s (%d bytes, starts %r)%s",
            exc.gateway_id or "?",
            topic[:200],
            exc.reason,
            exc.detail[:200],
            len(payload),
            payload[:PAYLOAD_PREFIX_BYTES],
            f"; {suppressed} similar suppressed" if suppressed else "",
        )
