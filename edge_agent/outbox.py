"""The durable outbox: a message counts as produced once it is committed here.

SQLite in WAL mode with ``synchronous=FULL`` (a Pi loses power; an accepted alert must survive
it). Rows are deleted only after the broker acknowledged the QoS 1 publish, so a crash between
send and delete re-sends the message, and the fleet manager drops the duplicate by its id
(at-least-once made effectively-once). Lower ``priority`` values go first: alerts (0) and card
events (1) before telemetry (5).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

PRIORITY_ALERT = 0
PRIORITY_EVENT = 1
PRIORITY_TELEMETRY = 5

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


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes


class Outbox:
    """Single-process, single-event-loop outbox. Not thread safe by design."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.added = asyncio.Event()

    def close(self) -> None:
        self._db.close()

    def put(self, topic: str, payload: bytes, priority: int) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (priority, topic, payload, created) VALUES (?, ?, ?, ?)",
            (priority, topic, payload, time.time()),
        )
        self.added.set()
        return int(cur.lastrowid or 0)

    def peek(self, limit: int) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, topic, payload FROM outbox ORDER BY priority, id LIMIT ?", (limit,)
        ).fetchall()
        return [OutboxRow(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def ack(self, ids: list[int]) -> None:
        if ids:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def oldest_age_s(self, now: float | None = None) -> float | None:
        row = self._db.execute("SELECT min(created) FROM outbox").fetchone()
        if row[0] is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - float(row[0]))
