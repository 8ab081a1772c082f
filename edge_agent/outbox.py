"""The durable outbox: a message counts as produced once it is committed here.

SQLite in WAL mode with ``synchronous=FULL`` (a Pi loses power; an accepted alert must survive
it). Rows are deleted only after the broker acknowledged the QoS 1 publish, so a crash between
send and delete re-sends the message, and the fleet manager drops the duplicate by its id
(at-least-once made effectively-once). Lower ``priority`` values go first: alerts (0) and card
or charging events (1) before telemetry (5). docs/outbox.md states what is guaranteed.

**Group commit.** :meth:`Outbox.put` appends the message to the next batch and returns a future
that resolves once that batch's transaction is committed (fsynced): only then does the message
count as produced. One worker thread owns the write connection (as aiosqlite does), so an fsync
never stalls the event loop; while it runs, new messages gather into the next batch, so one
fsync covers many messages. Acknowledged rows are deleted in the same transactions.

**Disk budget.** When the live pages of the database exceed the budget, the oldest telemetry is
downsampled (every other batch among the oldest, then the rest, oldest first), counted. Alerts
and events are never dropped for the budget.

**Full disk.** A commit that fails with SQLITE_FULL / ENOSPC raises the ``disk_full`` fault:
the reserve file (space set aside at start) is released and old telemetry is thinned, so alerts
and events still commit; telemetry is dropped (counted) while the fault lasts. If even that
fails, alerts and events are held in memory and sent from there (not durable: lost on a crash),
and retried on disk every few seconds. The fault clears when free space is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

PRIORITY_ALERT = 0
PRIORITY_EVENT = 1
PRIORITY_TELEMETRY = 5
PRIORITIES = (PRIORITY_ALERT, PRIORITY_EVENT, PRIORITY_TELEMETRY)

FAULT_DISK_FULL = "disk_full"
FAULT_DB_ERROR = "db_error"

MAX_HELD = 100_000  # alerts/events kept in memory when nothing can be stored
RETRY_S = 5.0
_MB = 1024 * 1024
LOW_WATER_BYTES = 1 * _MB  # less free space than this on the outbox's disk: disk_full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
"""
_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_audit (
    msg_id TEXT PRIMARY KEY,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


class Stored(Enum):
    """What became of a message given to :meth:`Outbox.put`."""

    COMMITTED = "committed"  # on disk: survives a crash or power loss
    HELD = "held"  # disk full: in memory only, sent from there, lost on a crash
    DROPPED = "dropped"  # telemetry on a full disk: counted in ``counters``


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message to send. ``key`` > 0: a database row; < 0: held in memory."""

    key: int
    priority: int
    topic: str
    payload: bytes
    created: float


@dataclass(slots=True)
class DrainCursor:
    """Where one connection's drain has got to, so in-flight rows are not fetched twice."""

    after: dict[int, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))
    held_after: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_age_s: float | None
    fault: str | None
    counters: dict[str, int]


@dataclass(slots=True)
class _Item:
    topic: str
    payload: bytes
    priority: int
    created: float
    msg_id: str
    future: asyncio.Future[Stored]


@dataclass(slots=True)
class _WriteResult:
    ok: bool
    error: BaseException | None = None
    deleted: int = 0
    downsampled: int = 0
    free_bytes: int | None = None


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Outbox:
    """Single-process, single-event-loop outbox (plus its one writer thread)."""

    def __init__(
        self,
        path: Path,
        *,
        budget_bytes: int = 512 * _MB,
        reserve_bytes: int = 8 * _MB,
        audit: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._budget = budget_bytes
        self._reserve_bytes = reserve_bytes
        self._reserve_path = path.with_name(path.name + ".reserve")
        self._audit = audit
        self._clock = clock
        self.fault: str | None = None
        try:
            self._db, self._reader = self._open()
        except (sqlite3.Error, OSError) as exc:
            # A restart on a full disk: SQLite cannot even create its WAL. Give up the reserve
            # and try once more (if that fails too, the error says why the agent cannot start).
            free = self._free_bytes()
            if not is_disk_full(exc) and (free is None or free >= LOW_WATER_BYTES):
                raise
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()
            self._db, self._reader = self._open()
            self.fault = FAULT_DISK_FULL
            log.error(  # noqa: TRY400 - the cause is in the message
                "outbox: opened %s on a full disk (%s; %s bytes free before releasing the "
                "reserve): dropping telemetry, storing alerts and events in the reserve",
                path,
                exc,
                free,
            )
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._depth = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")
        self._pending: list[_Item] = []
        self._acks: list[int] = []
        self._acking: set[int] = set()  # acknowledged, delete not yet committed
        self._writing: asyncio.Future[_WriteResult] | None = None
        self._inflight: tuple[Future[_WriteResult], list[_Item], list[int]] | None = None
        self._held: dict[int, _Item] = {}
        self._held_seq = 0
        self._closed = False
        self._retry_at = 0.0
        self._retry_timer: asyncio.TimerHandle | None = None
        self.counters: dict[str, int] = {
            "committed": 0,
            "commits": 0,
            "acked": 0,
            "telemetry_downsampled": 0,
            "telemetry_dropped_disk_full": 0,
            "disk_full_errors": 0,
            "disk_full_faults": 0,
            "db_errors": 0,
            "held_in_memory": 0,
            "held_dropped": 0,
        }
        self.added = asyncio.Event()  # set when committed rows (or held ones) are ready to send
        if self.fault is None:
            self._ensure_reserve()
        else:
            self.counters["disk_full_faults"] += 1

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={4 * _MB}")
            db.executescript(_SCHEMA)
            if self._audit:
                db.executescript(_AUDIT_SCHEMA)
            # Reads (drain, stats) run on the event loop through their own connection: WAL
            # readers see committed rows only and never wait for the writer's fsync.
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException:
            db.close()
            raise
        reader.execute("PRAGMA query_only=ON")
        return db, reader

    # -- producing --------------------------------------------------------------------------

    def put(
        self, topic: str, payload: bytes, priority: int, *, msg_id: str = ""
    ) -> asyncio.Future[Stored]:
        """Queue a message for the next commit. The future says when (and whether) it is
        stored; the message counts as produced once it resolves to ``Stored.COMMITTED``."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority}")
        if self._closed:
            raise RuntimeError("outbox is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Stored] = loop.create_future()
        if priority == PRIORITY_TELEMETRY and self.fault == FAULT_DISK_FULL:
            self.counters["telemetry_dropped_disk_full"] += 1
            fut.set_result(Stored.DROPPED)
            return fut
        self._pending.append(_Item(topic, payload, priority, self._clock(), msg_id, fut))
        self._kick()
        return fut

    async def flush(self) -> None:
        """Wait until everything put so far is stored (or held, or dropped)."""
        while True:
            if self._writing is not None:
                await asyncio.wait({self._writing})
                await asyncio.sleep(0)
                continue
            if not self._pending:
                return
            self._kick()
            if self._writing is None:
                await asyncio.sleep(0.05)  # backing off after a failed write

    def _kick(self) -> None:
        if self._writing is not None or self._closed or not (self._pending or self._acks):
            return
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0:
            if self._retry_timer is None:
                self._retry_timer = loop.call_later(wait, self._retry)
            return
        batch, self._pending = self._pending, []
        acks, self._acks = self._acks, []
        work = self._executor.submit(self._write, batch, acks)
        self._inflight = (work, batch, acks)
        self._writing = asyncio.wrap_future(work, loop=loop)
        self._writing.add_done_callback(lambda f: self._written(f, batch, acks))

    def _retry(self) -> None:
        self._retry_timer = None
        self._kick()

    def _written(
        self, fut: asyncio.Future[_WriteResult], batch: list[_Item], acks: list[int]
    ) -> None:
        if self._inflight is None:
            return  # settled by close()
        self._inflight = None
        self._writing = None
        result = fut.result() if not fut.cancelled() else _WriteResult(ok=False)
        if not result.ok and not self._closed:
            # Do not spin on a failing disk: the next attempt waits a second.
            self._retry_at = asyncio.get_running_loop().time() + 1.0
        self._settle(result, batch, acks)
        if not self._closed:
            self._kick()

    def _settle(self, result: _WriteResult, batch: list[_Item], acks: list[int]) -> None:
        if result.ok:
            self.counters["commits"] += 1
            self.counters["committed"] += len(batch)
            self.counters["acked"] += result.deleted
            self.counters["telemetry_downsampled"] += result.downsampled
            self._depth += len(batch) - result.deleted - result.downsampled
            self._acking.difference_update(acks)
            for item in batch:
                if not item.future.done():
                    item.future.set_result(Stored.COMMITTED)
            if batch:
                self.added.set()
            free = result.free_bytes
            if free is not None and free < LOW_WATER_BYTES and self.fault is None:
                # The disk is about to fill (SQLite may still write into its WAL for a while):
                # act now, while alerts are still sure to fit.
                self._raise_fault(FAULT_DISK_FULL, OSError(errno.ENOSPC, "free space low"))
                if not self._closed:
                    loop = asyncio.get_running_loop()
                    self._writing = loop.run_in_executor(self._executor, self._make_room)
                    self._writing.add_done_callback(self._room_made)
            return
        error = result.error
        if error is not None and is_disk_full(error):
            self.counters["disk_full_errors"] += 1
            first = self.fault != FAULT_DISK_FULL
            self._raise_fault(FAULT_DISK_FULL, error)
            keep: list[_Item] = []
            for item in batch:
                if item.priority == PRIORITY_TELEMETRY:
                    self.counters["telemetry_dropped_disk_full"] += 1
                    item.future.set_result(Stored.DROPPED)
                else:
                    keep.append(item)
            if first:
                # Retry the alerts and events into the space the reserve leaves behind.
                self._pending[:0] = keep
                self._acks[:0] = acks
                if not self._closed:
                    loop = asyncio.get_running_loop()
                    self._writing = loop.run_in_executor(self._executor, self._make_room)
                    self._writing.add_done_callback(self._room_made)
                return
            self._hold(keep)
        else:
            self.counters["db_errors"] += 1
            self._raise_fault(FAULT_DB_ERROR, error)
            self._hold([i for i in batch if i.priority != PRIORITY_TELEMETRY])
            for item in batch:
                if item.priority == PRIORITY_TELEMETRY and not item.future.done():
                    item.future.set_result(Stored.DROPPED)
        self._acks[:0] = acks  # deletes are retried with the next commit

    def _room_made(self, fut: asyncio.Future[_WriteResult]) -> None:
        self._writing = None
        result = fut.result() if not fut.cancelled() else _WriteResult(ok=False)
        if result.ok:
            self.counters["telemetry_downsampled"] += result.downsampled
            self._depth -= result.downsampled
        self._retry_at = 0.0  # retry the alerts and events at once, into the freed space
        if not self._closed:
            self._kick()

    def _hold(self, items: Sequence[_Item]) -> None:
        for item in items:
            if len(self._held) >= MAX_HELD:
                self.counters["held_dropped"] += 1
                log.error("outbox: %d messages held in memory; dropping one", MAX_HELD)
                item.future.set_result(Stored.DROPPED)
                continue
            self._held_seq += 1
            self._held[self._held_seq] = item
            self.counters["held_in_memory"] += 1
            item.future.set_result(Stored.HELD)
        if items:
            self.added.set()

    def _raise_fault(self, fault: str, error: BaseException | None) -> None:
        if self.fault == fault:
            return
        self.fault = fault
        if fault == FAULT_DISK_FULL:
            self.counters["disk_full_faults"] += 1
            log.error(
                "outbox: the disk holding %s is full (%s; %s bytes free): dropping telemetry, "
                "releasing the %d-byte reserve for alerts and events",
                self.path,
                error,
                self._free_bytes(),
                self._reserve_bytes,
            )
        else:
            log.error("outbox: cannot write %s: %s; holding alerts in memory", self.path, error)

    # -- writer thread --------------------------------------------------------------------

    def _write(self, batch: list[_Item], acks: list[int]) -> _WriteResult:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if batch:
                db.executemany(
                    "INSERT INTO outbox (priority, topic, payload, created) VALUES (?, ?, ?, ?)",
                    [(i.priority, i.topic, i.payload, i.created) for i in batch],
                )
                if self._audit:
                    db.executemany(
                        "INSERT OR IGNORE INTO outbox_audit (msg_id, priority, created)"
                        " VALUES (?, ?, ?)",
                        [(i.msg_id, i.priority, i.created) for i in batch if i.msg_id],
                    )
            deleted = 0
            if acks:
                cur = db.executemany("DELETE FROM outbox WHERE id = ?", [(k,) for k in acks])
                deleted = max(cur.rowcount, 0)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            return _WriteResult(ok=False, error=exc)
        downsampled = 0
        with contextlib.suppress(sqlite3.Error, OSError):
            downsampled = self._enforce_budget()
        return _WriteResult(
            ok=True, deleted=deleted, downsampled=downsampled, free_bytes=self._free_bytes()
        )

    def _used_bytes(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def _enforce_budget(self) -> int:
        over = self._used_bytes() - self._budget
        if over <= 0:
            return 0
        return self._downsample(over + self._budget // 10)

    def _downsample(self, want_bytes: int) -> int:
        """Delete old telemetry worth ``want_bytes``: every other batch among the oldest first
        (so the oldest hours stay covered at a lower rate), then the remaining oldest."""
        rows = self._db.execute(
            "SELECT id, length(payload) FROM outbox WHERE priority = ? ORDER BY id LIMIT 100000",
            (PRIORITY_TELEMETRY,),
        ).fetchall()
        victims: list[int] = []
        freed = 0
        for pass_ in (1, 0):
            for n, (row_id, size) in enumerate(rows):
                if freed >= want_bytes:
                    break
                if n % 2 == pass_:
                    victims.append(int(row_id))
                    freed += int(size) + 64
        if not victims:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(v,) for v in victims])
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        log.warning(
            "outbox: over its disk budget; downsampled %d old telemetry batches", len(victims)
        )
        return len(victims)

    def _make_room(self) -> _WriteResult:
        """Disk full: give up the reserve, thin old telemetry, checkpoint the WAL."""
        with contextlib.suppress(OSError):
            self._reserve_path.unlink()
        downsampled = 0
        with contextlib.suppress(sqlite3.Error, OSError):
            downsampled = self._downsample(max(self._used_bytes() // 4, 1))
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return _WriteResult(ok=True, downsampled=downsampled)

    def _ensure_reserve(self) -> bool:
        """Set aside ``reserve_bytes`` on the outbox's disk (allocated blocks, not a hole)."""
        if self._reserve_bytes <= 0:
            return True
        try:
            if self._reserve_path.exists() and (
                self._reserve_path.stat().st_size >= self._reserve_bytes
            ):
                return True
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()
            log.warning(
                "outbox: cannot set aside the %d-byte reserve: %s", self._reserve_bytes, exc
            )
            return False
        return True

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    # -- recovery ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover from a fault: retry held messages, restore the reserve. Runs forever."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RETRY_S)
            if self.fault is None and not self._held:
                continue
            free = self._free_bytes()
            if free is not None and free < self._reserve_bytes + LOW_WATER_BYTES + 2 * _MB:
                continue
            if self._held:
                self._requeue_held()
                await self.flush()
            if self._held:
                continue
            if await loop.run_in_executor(self._executor, self._ensure_reserve):
                log.info("outbox: disk space is back (%s bytes free); storing all again", free)
                self.fault = None

    def _requeue_held(self) -> None:
        loop = asyncio.get_running_loop()
        for key, item in list(self._held.items()):
            del self._held[key]
            fut: asyncio.Future[Stored] = loop.create_future()
            self._pending.append(
                _Item(item.topic, item.payload, item.priority, item.created, item.msg_id, fut)
            )
        self._kick()

    # -- draining -----------------------------------------------------------------------------

    def cursor(self) -> DrainCursor:
        return DrainCursor()

    def fetch(self, cursor: DrainCursor, limit: int) -> list[OutboxRow]:
        """The next committed (or held) messages in priority order, past ``cursor``."""
        out: list[OutboxRow] = []
        for seq, item in self._held.items():
            if seq > cursor.held_after and len(out) < limit:
                out.append(OutboxRow(-seq, item.priority, item.topic, item.payload, item.created))
                cursor.held_after = seq
        for priority in PRIORITIES:
            if len(out) >= limit:
                break
            rows = self._reader.execute(
                "SELECT id, topic, payload, created FROM outbox"
                " WHERE priority = ? AND id > ? ORDER BY id LIMIT ?",
                (priority, cursor.after[priority], limit - len(out) + len(self._acking)),
            ).fetchall()
            for r in rows:
                key = int(r[0])
                cursor.after[priority] = key
                if key in self._acking:
                    continue
                out.append(OutboxRow(key, priority, str(r[1]), bytes(r[2]), float(r[3])))
                if len(out) >= limit:
                    break
        return out

    def ack(self, keys: Sequence[int]) -> None:
        """The broker acknowledged these: delete them (with the next commit)."""
        for key in keys:
            if key < 0:
                if self._held.pop(-key, None) is not None:
                    self.counters["acked"] += 1
            else:
                self._acks.append(key)
                self._acking.add(key)
        self._kick()

    # -- reporting ----------------------------------------------------------------------------

    def depth(self) -> int:
        """Messages not yet acknowledged (stored or held)."""
        return max(0, self._depth - len(self._acking)) + len(self._held)

    def oldest_age_s(self, now: float | None = None) -> float | None:
        row = self._reader.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        created = [float(row[0])] if row is not None else []
        created += [i.created for i in self._held.values()]
        if not created:
            return None
        return max(0.0, (now if now is not None else self._clock()) - min(created))

    def stats(self) -> OutboxStats:
        return OutboxStats(self.depth(), self.oldest_age_s(), self.fault, dict(self.counters))

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending (blocking), then close. Held messages are lost (logged)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._inflight is not None:
            work, batch, acks = self._inflight
            self._inflight = None
            self._settle(work.result(), batch, acks)
        if self._pending or self._acks:
            batch, self._pending = self._pending, []
            result = self._write(batch, self._acks)
            for item in batch:
                if not item.future.done():
                    item.future.set_result(Stored.COMMITTED if result.ok else Stored.DROPPED)
            if not result.ok:
                log.error("outbox: %d messages could not be stored at close", len(batch))
        if self._held:
            log.error("outbox: %d messages held in memory are lost at close", len(self._held))
        self._reader.close()
        self._db.close()
