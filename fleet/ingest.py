"""MQTT ingest: every gateway uplink message, validated, into the database, in batches.

One ingest worker holds one or more MQTT connections (subscribed at QoS 1 to
``edge/v1/+/up/#``, or with several workers to the MQTT 5 shared subscription
``$share/<group>/edge/v1/+/up/#`` so the broker gives each message to one of them) and one
batcher. Received messages are collected until ``FLEET_INGEST_BATCH_MAX`` of them, or until
``FLEET_INGEST_BATCH_MS`` have passed or the stream pauses, then validated against the contract
and written in one transaction (:func:`fleet.store.apply_batch`). Only after that transaction
commits does the worker send the PUBACKs (paho's ``manual_ack``), so a worker killed at any
moment has acknowledged nothing it has not stored: the broker delivers the rest again (to the
same client id's persistent session, ``FLEET_MQTT_CLIENT_ID``), and the message ids make the
second delivery harmless.

Nothing a gateway sends can stop ingest: a payload that breaks the contract is counted by reason
and logged (rate-limited, gateway id and a short prefix, never the payload) and acknowledged. A
batch that fails for a database reason is retried while the database is unreachable (nothing is
acknowledged meanwhile), and otherwise split into one transaction per message so that one bad
message is counted and dropped without taking its batch-mates along. A lost broker connection
is retried forever with jittered exponential backoff. The worker stops when cancelled.

The embedded amqtt broker speaks MQTT 3.1.1 only and has no shared subscriptions: with
``FLEET_MQTT_PROTOCOL=auto`` the worker notices and falls back to one plain subscription, so run
a single ingest worker there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt
import sqlalchemy as sa
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.orm import Session, sessionmaker

from contract.messages import ContractError, decode_uplink
from contract.topics import up_filter
from fleet.backoff import Backoff, backoff_delay
from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.models import IngestWorker
from fleet.settings import Settings
from fleet.store import BatchOutcome, Received, apply_batch, insert_ignoring_duplicates
from fleet.tasks import run_all, stop_tasks

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 30.0
DB_ATTEMPTS = 4  # for errors that look transient while the database still answers
DB_RETRY_INITIAL_S = 0.2
DB_RETRY_MAX_S = 5.0
WARNING_INTERVAL_S = 60.0
PAYLOAD_PREFIX_BYTES = 32
QUIET_S = 0.002  # a batch closes early when no message arrived for this long
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: how long the broker keeps a fixed-id worker's queue
_SUBACK_FAILURE = 0x80
_UNSUPPORTED_PROTOCOL = (1, 0x84)  # CONNACK: 3.1.1 "unacceptable protocol", 5 "unsupported"


@dataclass
class IngestStats:
    """Counters and state that health and metrics show; owned by one :class:`Ingest`."""

    accepted: Counter[str] = field(default_factory=Counter)  # by message type
    rejected: Counter[str] = field(default_factory=Counter)  # by ContractError reason
    failed: Counter[str] = field(default_factory=Counter)  # "database" / "internal"
    duplicates: int = 0
    batches: int = 0
    batch_messages: int = 0
    last_batch_size: int = 0
    lag_seconds: float | None = None  # commit time - ts of the newest live message
    notifications: int = 0
    connected: bool = False
    connections: int = 0
    protocol: str | None = None
    shared_group: str | None = None
    subscribed_since: datetime | None = None  # receiving without interruption since then
    started_at: datetime = field(default_factory=utcnow)
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

    def to_json(self) -> dict[str, Any]:
        """Everything ``GET /metrics`` renders, JSON-safe (stored in ``ingest_workers``)."""
        return {
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "failed": dict(self.failed),
            "duplicates": self.duplicates,
            "batches": self.batches,
            "batch_messages": self.batch_messages,
            "last_batch_size": self.last_batch_size,
            "lag_seconds": self.lag_seconds,
            "notifications": self.notifications,
            "connected": self.connected,
            "connections": self.connections,
            "protocol": self.protocol,
            "shared_group": self.shared_group,
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


def _unsupported_protocol(exc: aiomqtt.MqttError) -> bool:
    if not isinstance(exc, MqttConnectError):
        return False
    rc = exc.rc
    value = rc.value if isinstance(rc, ReasonCode) else rc
    return value in _UNSUPPORTED_PROTOCOL or "protocol version" in str(exc).lower()


class _Connection:
    """One MQTT connection of the worker: the live client (for acknowledgements) or None."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.client: aiomqtt.Client | None = None


@dataclass(slots=True)
class _Pending:
    """A message received and not yet acknowledged."""

    connection: _Connection
    client: aiomqtt.Client
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_at: datetime


def _ack(item: _Pending) -> None:
    """Send the PUBACK, on the connection that received the message if it is still up (after
    a reconnect the broker redelivers unacknowledged messages itself).

    aiomqtt 2.x has no public manual acknowledgement yet (empicano/aiomqtt#345); the paho client
    it wraps has (``manual_ack_set`` / ``ack``, paho-mqtt 2.0), and that is what is used here.
    """
    if item.qos > 0 and item.connection.client is item.client:
        item.client._client.ack(item.mid, item.qos)  # private: see the docstring


def worker_identity(settings: Settings) -> str:
    """A name for this worker in metrics: host, process, and the MQTT client id if fixed."""
    suffix = settings.mqtt_client_id or uuid.uuid4().hex[:8]
    return f"{socket.gethostname()}:{os.getpid()}:{suffix}"[:128]


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
        worker_id: str | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._sessions = sessions
        self.stats = stats if stats is not None else IngestStats()
        self.worker_id = worker_id or worker_identity(settings)
        self._on_deliveries_enqueued = on_deliveries_enqueued
        self._warnings = _WarningLimiter(WARNING_INTERVAL_S)
        self._up: set[int] = set()

    # -- MQTT ----------------------------------------------------------------------------

    def _client(self, index: int, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        s = self._settings
        identifier = None
        if s.mqtt_client_id is not None:
            identifier = s.mqtt_client_id if index == 0 else f"{s.mqtt_client_id}-{index}"
        persistent = identifier is not None
        kwargs: dict[str, Any] = {}
        if protocol is aiomqtt.ProtocolVersion.V5:
            # A fixed client id asks the broker to keep our subscription and to queue (and
            # redeliver) QoS 1 messages while we are away; a random one would leave orphaned
            # sessions behind, so it gets a clean one.
            kwargs["clean_start"] = not persistent
            if persistent:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                kwargs["properties"] = props
        else:
            kwargs["clean_session"] = not persistent
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=s.mqtt_password,
            identifier=identifier,
            protocol=protocol,
            keepalive=30,
            tls_context=ssl.create_default_context() if s.mqtt_tls else None,
            **kwargs,
        )
        # Before connecting: a persistent session's queued messages arrive right after CONNACK.
        client._client.manual_ack_set(True)
        return client

    async def _detect_protocol(self) -> aiomqtt.ProtocolVersion:
        choice = self._settings.mqtt_protocol
        if choice == "5":
            return aiomqtt.ProtocolVersion.V5
        if choice == "3.1.1":
            return aiomqtt.ProtocolVersion.V311
        backoff = Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        while True:
            try:
                async with aiomqtt.Client(
                    self._settings.mqtt_host,
                    self._settings.mqtt_port,
                    username=self._settings.mqtt_username,
                    password=self._settings.mqtt_password,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    tls_context=ssl.create_default_context() if self._settings.mqtt_tls else None,
                ):
                    return aiomqtt.ProtocolVersion.V5
            except aiomqtt.MqttError as exc:
                if _unsupported_protocol(exc):
                    return aiomqtt.ProtocolVersion.V311
                delay = backoff.next_delay()
                log.warning(
                    "MQTT broker %s unavailable (%s); retrying in %.1f s",
                    self._settings.mqtt_display,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def run(self) -> None:
        """Consume uplink messages until cancelled, reconnecting whenever the broker is lost."""
        protocol = await self._detect_protocol()
        group = self._settings.mqtt_shared_group
        if group and protocol is not aiomqtt.ProtocolVersion.V5:
            log.warning(
                "broker %s speaks MQTT 3.1.1 only: no shared subscription, run ONE ingest worker",
                self._settings.mqtt_display,
            )
            group = None
        count = self._settings.ingest_connections if group else 1
        self.stats.protocol = "5" if protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"
        self.stats.shared_group = group
        topic_filter = up_filter(group)
        queue: asyncio.Queue[_Pending] = asyncio.Queue()
        try:
            tasks = {
                f"ingest-mqtt-{index}": self._consume(
                    _Connection(index), count, protocol, topic_filter, queue
                )
                for index in range(count)
            }
            tasks["ingest-batcher"] = self._batches(queue)
            tasks["ingest-stats"] = self._report_stats()
            await run_all(tasks)
        finally:
            self._up.clear()
            self._set_connected(count)

    def _set_connected(self, count: int) -> None:
        self.stats.connections = len(self._up)
        self.stats.connected = len(self._up) == count
        if not self._up:
            self.stats.subscribed_since = None
        elif self.stats.subscribed_since is None:
            self.stats.subscribed_since = utcnow()

    async def _consume(
        self,
        connection: _Connection,
        count: int,
        protocol: aiomqtt.ProtocolVersion,
        topic_filter: str,
        queue: asyncio.Queue[_Pending],
    ) -> None:
        backoff = Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        while True:
            try:
                client = self._client(connection.index, protocol)
                self._deliver_to(queue, connection, client)
                async with client:
                    connection.client = client
                    _check_granted(topic_filter, await client.subscribe(topic_filter, qos=1))
                    self._up.add(connection.index)
                    self._set_connected(count)
                    backoff.reset()
                    log.info(
                        "ingest subscribed to %s on %s (MQTT %s, connection %d/%d)",
                        topic_filter,
                        self._settings.mqtt_display,
                        self.stats.protocol,
                        connection.index + 1,
                        count,
                    )
                    async for _ in client.messages:
                        pass  # messages go to the queue directly (_deliver_to); this waits
                        # for the connection to end, which raises MqttError
            except aiomqtt.MqttError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "MQTT broker %s unavailable (%s); reconnecting in %.1f s",
                    self._settings.mqtt_display,
                    exc,
                    delay,
                )
                self._up.discard(connection.index)
                self._set_connected(count)
                await asyncio.sleep(delay)
            finally:
                connection.client = None
                self._up.discard(connection.index)
                self._set_connected(count)

    @staticmethod
    def _deliver_to(
        queue: asyncio.Queue[_Pending], connection: _Connection, client: aiomqtt.Client
    ) -> None:
        """Hand paho's messages straight to the batch queue.

        aiomqtt would wrap each message in its own object and wake a task per message through
        its iterator; at thousands of messages per second that is a measurable share of the
        worker's CPU, and the batcher wants the raw messages anyway. The callback runs on the
        event loop (aiomqtt drives paho from it), so ``put_nowait`` is safe; the queue needs
        no bound because the broker's in-flight window (acknowledged only after commit) is one.
        """

        def on_message(_client: Any, _userdata: Any, message: Any) -> None:
            queue.put_nowait(
                _Pending(
                    connection,
                    client,
                    message.mid,
                    message.qos,
                    message.topic,
                    _as_bytes(message.payload),
                    utcnow(),
                )
            )

        client._client.on_message = on_message  # private: see _ack

    # -- batches -------------------------------------------------------------------------

    async def _batches(self, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        limit = self._settings.ingest_batch_max
        window = self._settings.ingest_batch_ms / 1000
        # Two stages: while one batch is being written (in a database thread), the next one is
        # collected and validated here. Batches are stored and acknowledged strictly in order
        # (MQTT wants PUBACKs in the order the PUBLISHes came).
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                batch = await self._collect(queue, loop, limit, window)
                decoded = self._decode(batch)
                if writing is not None:
                    previous, writing = writing, None
                    try:
                        await previous  # a failed write raises here, and only here
                    finally:
                        if not previous.done():
                            writing = previous  # interrupted: stopped (and reported) below
                writing = asyncio.create_task(self._write(batch, decoded), name="ingest-write")
        finally:
            if writing is not None:
                await stop_tasks(writing)

    @staticmethod
    async def _collect(
        queue: asyncio.Queue[_Pending],
        loop: asyncio.AbstractEventLoop,
        limit: int,
        window: float,
    ) -> list[_Pending]:
        """Up to ``limit`` messages: more while they keep coming, at most ``window`` s."""
        batch = [await queue.get()]
        deadline = loop.time() + window
        while len(batch) < limit:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            size = len(batch)
            await asyncio.sleep(min(QUIET_S, remaining))
            if queue.empty() and len(batch) == size:
                break  # the stream paused (or the broker's in-flight window is full)
        return batch

    async def process(self, batch: Sequence[_Pending]) -> None:
        """Validate, store and acknowledge ``batch``. Never raises (except on cancellation)."""
        await self._write(batch, self._decode(batch))

    def _decode(self, batch: Sequence[_Pending]) -> list[Received]:
        decoded: list[Received] = []
        for item in batch:
            try:
                decoded.append(Received(decode_uplink(item.topic, item.payload), item.received_at))
            except ContractError as exc:
                self.stats.rejected[exc.reason] += 1
                self._warn_rejected(item.topic, item.payload, exc)
        if batch:
            self.stats.last_message_at = batch[-1].received_at
        return decoded

    async def _write(self, batch: Sequence[_Pending], decoded: list[Received]) -> None:
        if decoded:
            outcome = await self._store(decoded)
            committed = utcnow()
            self.stats.accepted.update(outcome.stored)
            self.stats.duplicates += outcome.duplicates
            self.stats.notifications += outcome.notifications
            live = [r.message.ts for r in decoded if not r.message.historical]
            if live:
                self.stats.lag_seconds = max(0.0, (committed - max(live)).total_seconds())
            if outcome.deliveries_enqueued:
                self._on_deliveries_enqueued()
        self.stats.batches += 1
        self.stats.batch_messages += len(batch)
        self.stats.last_batch_size = len(batch)
        for item in batch:
            _ack(item)

    async def _store(self, batch: list[Received]) -> BatchOutcome:
        attempt = 1
        while True:
            try:
                return await self._db.run(self._apply_sync, batch)
            except sa.exc.SQLAlchemyError as exc:
                reachable = await self._db.run(self._database_answers)
                if not reachable or (_is_transient(exc) and attempt < DB_ATTEMPTS):
                    # Unreachable: keep everything unacknowledged and wait, however long.
                    delay = backoff_delay(
                        attempt, initial=DB_RETRY_INITIAL_S, maximum=DB_RETRY_MAX_S
                    )
                    log.warning(
                        "database error storing a batch of %d (attempt %d), retrying in %.1f s: %s",
                        len(batch),
                        attempt,
                        delay,
                        str(exc).splitlines()[0][:300],
                    )
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                if len(batch) > 1:
                    return await self._store_one_by_one(batch)
                message = batch[0].message
                self.stats.failed["database"] += 1
                log.error(  # noqa: TRY400 - the cause is in the message; no traceback per message
                    "database error storing %s %s from gateway %s, message dropped: %s",
                    type(message).__name__,
                    message.id,
                    message.gw,
                    str(exc).splitlines()[0][:300],
                )
                return BatchOutcome()
            except Exception:
                if len(batch) > 1:
                    return await self._store_one_by_one(batch)
                message = batch[0].message
                self.stats.failed["internal"] += 1
                log.exception(
                    "unexpected error storing %s %s from gateway %s, message dropped",
                    type(message).__name__,
                    message.id,
                    message.gw,
                )
                return BatchOutcome()

    async def _store_one_by_one(self, batch: list[Received]) -> BatchOutcome:
        total = BatchOutcome()
        for item in batch:
            one = await self._store([item])
            total.stored.update(one.stored)
            total.duplicates += one.duplicates
            total.deliveries_enqueued += one.deliveries_enqueued
            total.notifications += one.notifications
        return total

    def _apply_sync(self, batch: list[Received]) -> BatchOutcome:
        with self._sessions() as session, session.begin():
            return apply_batch(session, batch, webhook_urls=self._settings.webhook_urls)

    def _database_answers(self) -> bool:
        try:
            with self._sessions() as session:
                session.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    # -- counters for GET /metrics ---------------------------------------------------------

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(self._settings.ingest_stats_interval_s)
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                await self._db.run(self._write_stats)

    def _write_stats(self) -> None:
        now = utcnow()
        with self._sessions() as session, session.begin():
            row = {
                "worker_id": self.worker_id,
                "started_at": self.stats.started_at,
                "updated_at": now,
                "stats": self.stats.to_json(),
            }
            inserted = session.execute(
                insert_ignoring_duplicates(session, IngestWorker, ["worker_id"])
                .values(**row)
                .returning(IngestWorker.worker_id)
            ).first()
            if inserted is None:
                session.execute(
                    sa.update(IngestWorker)
                    .where(IngestWorker.worker_id == self.worker_id)
                    .values(updated_at=now, stats=row["stats"])
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


async def run_worker(settings: Settings) -> None:
    """``fleet-manager ingest``: one ingest worker and its health monitor, no HTTP, until
    cancelled. Run as many as the load needs, each with its own ``FLEET_MQTT_CLIENT_ID`` and
    the same ``FLEET_MQTT_SHARED_GROUP``."""
    from fleet.db import make_engine, make_sessionmaker, migrate  # noqa: PLC0415
    from fleet.health import HealthMonitor  # noqa: PLC0415 - fleet.health imports this module

    await asyncio.to_thread(migrate, settings.database_url)
    engine = make_engine(settings.database_url)
    db = DbThreads()
    try:
        sessions = make_sessionmaker(engine)
        ingest = Ingest(settings, sessions, db=db)
        monitor = HealthMonitor(settings, sessions, ingest.stats, db=db)
        log.info("ingest worker %s starting", ingest.worker_id)
        if settings.mqtt_client_id is None:
            log.warning(
                "no fixed MQTT client id (--client-id / FLEET_MQTT_CLIENT_ID): the session is "
                "clean, so messages received but not yet stored are lost if this worker dies"
            )
        await run_all({"fleet-ingest": ingest.run(), "fleet-health": monitor.run()})
    finally:
        await db.close()
        engine.dispose()
