"""Outbox enqueue rate with durable (fsynced, group) commits.

A message counts once the future :meth:`Outbox.put` returned resolves to ``COMMITTED``, i.e.
after the WAL commit that holds it was fsynced (``synchronous=FULL``). Two shapes:

- ``producers``: P concurrent producers, each awaiting its own message's commit before making
  the next (like P devices whose events must be durable before they are acknowledged);
- ``burst``: one producer puts N messages and awaits them all (a telemetry flush, a backlog).

    python bench/outbox_bench.py --messages 100000 --producers 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from contract.messages import CardSwipeEvent, encode, new_message_id
from contract.topics import Up, up
from edge_agent.outbox import PRIORITY_EVENT, Outbox, Stored


def _payload(seq: int) -> bytes:
    now = datetime.now(UTC)
    msg = CardSwipeEvent(
        id=new_message_id(),
        gw="gw-bench",
        session=1,
        seq=seq,
        ts=now,
        reader_id="b1-entrance",
        card="ab" * 32,
        unit_id="1-201",
        event_ts=now,
    )
    return encode(msg)


async def producers(path: Path, messages: int, producers: int) -> tuple[float, Outbox]:
    ob = Outbox(path, reserve_bytes=0)
    topic = up("gw-bench", Up.CARD)
    payloads = [_payload(i) for i in range(1000)]
    per = messages // producers

    async def produce(k: int) -> None:
        for i in range(per):
            stored = await ob.put(topic, payloads[(k + i) % 1000], PRIORITY_EVENT)
            assert stored is Stored.COMMITTED

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for k in range(producers):
            tg.create_task(produce(k))
    return time.perf_counter() - t0, ob


async def burst(path: Path, messages: int) -> tuple[float, Outbox]:
    ob = Outbox(path, reserve_bytes=0)
    topic = up("gw-bench", Up.CARD)
    payloads = [_payload(i) for i in range(1000)]
    t0 = time.perf_counter()
    futures = [ob.put(topic, payloads[i % 1000], PRIORITY_EVENT) for i in range(messages)]
    results = await asyncio.gather(*futures)
    assert set(results) == {Stored.COMMITTED}
    return time.perf_counter() - t0, ob


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--producers", type=int, default=64)
    p.add_argument("--dir", type=Path, default=None, help="where the database goes (a real disk)")
    args = p.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="outbox-bench-", dir=Path.cwd()))
    rows = []
    for name in ("producers", "burst"):
        path = base / f"{name}-{os.getpid()}.db"
        if name == "producers":
            elapsed, ob = await producers(path, args.messages, args.producers)
            shape = f"{args.producers} producers, each awaits its commit"
        else:
            elapsed, ob = await burst(path, args.messages)
            shape = "1 producer, puts all, awaits all"
        n = ob.counters["committed"]
        commits = ob.counters["commits"]
        ob.close()
        rows.append((shape, n, elapsed, n / elapsed, commits, n / max(commits, 1)))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(f"outbox enqueue, durable commits (synchronous=FULL), database in {base}")
    print(f"{'shape':<42} {'msgs':>8} {'s':>7} {'msgs/s':>9} {'commits':>8} {'msgs/commit':>12}")
    for shape, n, elapsed, rate, commits, per in rows:
        print(f"{shape:<42} {n:>8} {elapsed:>7.2f} {rate:>9.0f} {commits:>8} {per:>12.1f}")
    if args.dir is None:
        base.rmdir()


if __name__ == "__main__":
    asyncio.run(main())
