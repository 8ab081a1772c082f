"""The durable outbox: group commit, priorities, acknowledgement, disk budget, historical marks.

Every test uses a real SQLite file; "survives" means a second :class:`Outbox` on the same file
(a restarted agent) sees it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from contract.messages import CardSwipeEvent, decode_uplink, encode, new_message_id
from contract.topics import Up, up
from edge_agent.outbox import (
    PRIORITY_ALERT,
    PRIORITY_EVENT,
    PRIORITY_TELEMETRY,
    Outbox,
    Stored,
)
from edge_agent.uplink import mark_historical


async def test_put_resolves_after_commit_and_survives_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", audit=True)
    stored = await ob.put("t/alert", b"a-1", PRIORITY_ALERT, msg_id="m-1")
    assert stored is Stored.COMMITTED
    ob.close()
    # Another process (the restarted agent) sees the committed row and its audit record.
    db = sqlite3.connect(tmp_path / "outbox.db")
    assert db.execute("SELECT payload FROM outbox").fetchall() == [(b"a-1",)]
    assert db.execute("SELECT msg_id FROM outbox_audit").fetchall() == [("m-1",)]
    db.close()


async def test_group_commit_many_messages_few_fsyncs(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db")
    futures = [ob.put("t/tel", b"x" * 100, PRIORITY_TELEMETRY) for _ in range(2000)]
    results = await asyncio.gather(*futures)
    assert set(results) == {Stored.COMMITTED}
    assert ob.depth() == 2000
    # One transaction (one fsync) covers many messages.
    assert ob.counters["commits"] * 10 <= 2000
    ob.close()


async def test_fetch_in_priority_order_and_cursor_skips_in_flight(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db")
    for i in range(3):
        ob.put("t/tel", f"tel-{i}".encode(), PRIORITY_TELEMETRY)
    ob.put("t/card", b"card-0", PRIORITY_EVENT)
    await ob.put("t/alert", b"alert-0", PRIORITY_ALERT)
    cursor = ob.cursor()
    first = ob.fetch(cursor, 2)
    assert [r.payload for r in first] == [b"alert-0", b"card-0"]
    # A new alert committed while telemetry is being sent goes out next.
    await ob.put("t/alert", b"alert-1", PRIORITY_ALERT)
    assert [r.payload for r in ob.fetch(cursor, 2)] == [b"alert-1", b"tel-0"]
    ob.ack([r.key for r in first])
    await ob.flush()
    assert ob.depth() == 4
    ob.close()
    # Unacknowledged rows are still there after a restart; acknowledged ones are gone.
    ob = Outbox(tmp_path / "outbox.db")
    assert [r.payload for r in ob.fetch(ob.cursor(), 10)] == [
        b"alert-1",
        b"tel-0",
        b"tel-1",
        b"tel-2",
    ]
    ob.close()


async def test_depth_and_oldest_age(tmp_path: Path) -> None:
    now = [1000.0]
    ob = Outbox(tmp_path / "outbox.db", clock=lambda: now[0])
    assert ob.depth() == 0 and ob.oldest_age_s() is None
    await ob.put("t/tel", b"x", PRIORITY_TELEMETRY)
    now[0] = 1030.0
    await ob.put("t/alert", b"y", PRIORITY_ALERT)
    now[0] = 1045.0
    stats = ob.stats()
    assert (stats.depth, stats.oldest_age_s, stats.fault) == (2, 45.0, None)
    ob.close()


async def test_disk_budget_downsamples_oldest_telemetry_never_alerts(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", budget_bytes=400_000, reserve_bytes=0)
    blob = b"r" * 2000
    for i in range(400):
        ob.put("t/tel", b"%05d" % i + blob, PRIORITY_TELEMETRY)
        if i % 40 == 0:
            ob.put("t/alert", b"alert-%03d" % i, PRIORITY_ALERT)
        if i % 10 == 9:
            await ob.flush()
    rows = ob.fetch(ob.cursor(), 10_000)
    alerts = [r for r in rows if r.priority == PRIORITY_ALERT]
    telemetry = [int(r.payload[:5]) for r in rows if r.priority == PRIORITY_TELEMETRY]
    assert len(alerts) == 10  # never dropped
    assert ob.counters["telemetry_downsampled"] > 0
    assert len(telemetry) + ob.counters["telemetry_downsampled"] == 400
    assert ob.depth() == len(rows)
    # The newest telemetry is all there; the gaps are among the oldest.
    assert telemetry[-20:] == list(range(380, 400))
    # Downsampled, not truncated: the oldest hour is still covered, at a lower rate.
    assert telemetry[0] < 10
    assert len([t for t in telemetry if t < 100]) < 50
    ob.close()


async def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db")
    fut = ob.put("t/card", b"last words", PRIORITY_EVENT)
    ob.close()
    assert fut.result() is Stored.COMMITTED
    ob = Outbox(tmp_path / "outbox.db")
    assert [r.payload for r in ob.fetch(ob.cursor(), 10)] == [b"last words"]
    ob.close()


def test_mark_historical_changes_only_the_flag() -> None:
    msg = CardSwipeEvent(
        id=new_message_id(),
        gw="gw-1",
        session=3,
        seq=7,
        ts=datetime(2026, 3, 1, 20, 0, tzinfo=UTC),
        reader_id="r-1",
        card="ab" * 16,
        event_ts=datetime(2026, 3, 1, 20, 0, tzinfo=UTC),
    )
    marked = decode_uplink(up("gw-1", Up.CARD), mark_historical(encode(msg)))
    assert marked == msg.model_copy(update={"historical": True})
