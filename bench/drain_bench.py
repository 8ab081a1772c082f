"""Drain rate of an outbox backlog to a real broker (QoS 1, deleted after PUBACK).

Fills an outbox with N messages (1 % alerts, 10 % card events, the rest telemetry batches of
10 readings), then starts the real :class:`Uplink` against the broker and measures the time
until every message was acknowledged and its row deleted (the deletes committed).

    python bench/drain_bench.py --messages 1000000 --url mqtt://127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contract.messages import (
    AlertMessage,
    AlertSubject,
    Birth,
    CardSwipeEvent,
    MeterSample,
    MeterTelemetry,
    encode,
)
from contract.topics import Up, up
from edge_agent.config import MqttConfig
from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_EVENT, PRIORITY_TELEMETRY, Outbox
from edge_agent.session import MessageFactory
from edge_agent.uplink import Uplink

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def samples(factory: MessageFactory) -> list[tuple[str, bytes, int]]:
    gw = factory.gateway_id
    alert = factory.make(
        AlertMessage,
        alert_id="a" * 32,
        change="raised",
        kind="ebike_charging",
        category="消防",
        severity="medium",
        subject=AlertSubject(unit_id="1-201", sensor_id="ble-a4c138aa0003"),
        raised_at=T0,
        evidence={"peak_power_w": 182.5, "location": "unit"},
    )
    card = factory.make(
        CardSwipeEvent, reader_id="b1-entrance", card="ab" * 32, unit_id="1-201", event_ts=T0
    )
    tel = factory.make(
        MeterTelemetry,
        readings=[
            MeterSample(
                meter_id=f"m-1-{i:03d}",
                unit_id="1-201",
                ts=T0 + timedelta(seconds=i),
                power_w=120.0 + i,
                voltage_v=229.8,
                current_a=0.52,
                energy_kwh=1234.5,
                power_factor=0.98,
            )
            for i in range(5)
        ],
    )
    return [
        (up(gw, Up.ALERT), encode(alert), PRIORITY_ALERT),
        (up(gw, Up.CARD), encode(card), PRIORITY_EVENT),
        (up(gw, Up.TELEMETRY), encode(tel), PRIORITY_TELEMETRY),
    ]


async def fill(ob: Outbox, n: int, factory: MessageFactory) -> float:
    kinds = samples(factory)
    t0 = time.perf_counter()
    chunk = 50_000
    for start in range(0, n, chunk):
        futures = []
        for i in range(start, min(n, start + chunk)):
            topic, payload, prio = kinds[0] if i % 100 == 0 else kinds[1 if i % 10 == 0 else 2]
            futures.append(ob.put(topic, payload, prio))
        await asyncio.gather(*futures)
    return time.perf_counter() - t0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--inflight", type=int, default=200, help="mqtt.max_inflight")
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="drain-bench-", dir=Path.cwd()))
    path = base / "outbox.db"
    factory = MessageFactory(f"gw-bench-{int(time.time())}", session=1)
    ob = Outbox(path, reserve_bytes=0, budget_bytes=4 * 1024**3)
    fill_s = await fill(ob, args.messages, factory)
    size_mb = path.stat().st_size / 1e6
    print(f"backlog: {args.messages} messages, {size_mb:.0f} MB, filled in {fill_s:.1f} s")
    config = MqttConfig(url=args.url, max_inflight=args.inflight)
    uplink = Uplink(
        config=config,
        outbox=ob,
        factory=factory,
        birth=lambda: factory.make(Birth, agent_version="bench", started_at=T0, site_id="bench"),
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    task = asyncio.create_task(uplink.run())
    while ob.depth() > 0:  # noqa: ASYNC110 - polling a counter for a benchmark
        await asyncio.sleep(0.1)
    await ob.flush()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sent = uplink.counters["sent"]
    ob.close()
    print(
        f"{'broker':<28} {'inflight':>8} {'sent':>9} {'s':>7} {'msgs/s':>8}"
        f" {'cpu s':>7} {'msgs/cpu-s':>10} {'MQTT':>5}"
    )
    print(
        f"{args.url:<28} {args.inflight:>8} {sent:>9} {elapsed:>7.1f} {sent / elapsed:>8.0f}"
        f" {cpu:>7.1f} {sent / cpu:>10.0f} {'5' if uplink.mqtt5 else '3.1.1':>5}"
    )
    print("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    if args.dir is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        base.rmdir()


if __name__ == "__main__":
    asyncio.run(main())
