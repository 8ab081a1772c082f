"""Sustained MQTT ingest into PostgreSQL through Mosquitto, with 1 and 2 ingest workers.

For each worker count: a fresh PostgreSQL database, ``--workers`` ``fleet-manager ingest``
processes on one MQTT 5 shared subscription (fixed client ids: persistent sessions, acks after
commit), and ``--gateways`` ``mosquitto_pub -l`` processes (C, so the load generator costs
little CPU) each publishing one gateway's telemetry at QoS 1, fed at an offered total rate of
``--rate`` messages/s for ``--seconds`` seconds. Every message is a valid contract
``MeterTelemetry`` with ``--readings`` samples and a unique id.

Measured: how long until every message is in the database (``uplink_messages`` rows, counted
every 0.25 s), giving the sustained stored rate; rows at the end (zero loss means exactly one
``uplink_messages`` row per message and ``--readings`` ``meter_readings`` rows each); the mean
batch size and the CPU seconds of the workers, of Mosquitto and of PostgreSQL during the run
(from /proc, when readable).

By default the broker is a private Mosquitto started for the run (same binary and defaults as
the system one, on a free port): the system broker on 127.0.0.1:1883 is shared with other work
on this machine, whose traffic under ``edge/v1/+/up/#`` the ingest workers would consume too.
``--mqtt-url mqtt://127.0.0.1:1883`` uses a given broker instead.

Mosquitto's per-client queue (``max_queued_messages``, default 1000) drops QoS 1 messages a
slow subscriber cannot take: an offered rate above what ingest sustains shows up as loss here
(as it would in production; raise the limit there). Messages still travel the real path: broker,
contract validation, batched upsert, commit, PUBACK.

Run: ``.venv/bin/python bench/ingest_bench.py --workers 1 2 --rate 4000 --seconds 20``
(``--database-url`` of an account that may CREATE DATABASE, ``--mqtt-url``,
``--max-queued`` for the private broker's ``max_queued_messages``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import sqlalchemy as sa

from contract.messages import MeterSample, MeterTelemetry, encode
from contract.topics import Up, up
from fleet.db import migrate

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-key-0123456789abcdef0123"
FEED_TICK_S = 0.02


@dataclass
class Result:
    workers: int
    offered: float
    messages: int
    publish_s: float
    stored_s: float
    stored_rate: float
    uplink_rows: int
    reading_rows: int
    expected_readings: int
    mean_batch: float
    worker_cpu_s: float
    broker_cpu_s: float
    db_cpu_s: float
    failed: int
    rejected: int


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process still there."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between the two readings (processes born in between: all of theirs)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def pids_of(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def payloads(gateway: str, count: int, readings: int, session: int) -> list[bytes]:
    base = datetime.now(UTC)
    lines = []
    for seq in range(1, count + 1):
        ts = base + timedelta(milliseconds=seq)
        message = MeterTelemetry(
            id=uuid.uuid4().hex,
            gw=gateway,
            session=session,
            seq=seq,
            ts=ts,
            readings=[
                MeterSample(
                    meter_id=f"m-{r}",
                    unit_id=f"1-{101 + r}",
                    ts=ts,
                    power_w=100.0 + seq % 500,
                    voltage_v=220.0,
                )
                for r in range(readings)
            ],
        )
        lines.append(encode(message) + b"\n")
    return lines


async def feed(
    procs: list[subprocess.Popen[bytes]], lines: list[list[bytes]], rate: float
) -> float:
    """Write each publisher's lines to its stdin at ``rate`` messages/s in total."""
    per_proc = rate / len(procs)
    sent = [0] * len(procs)
    start = time.monotonic()
    while any(sent[i] < len(lines[i]) for i in range(len(procs))):
        elapsed = time.monotonic() - start
        due = int(per_proc * (elapsed + FEED_TICK_S))
        for i, proc in enumerate(procs):
            upto = min(due, len(lines[i]))
            if upto > sent[i]:
                assert proc.stdin is not None
                proc.stdin.write(b"".join(lines[i][sent[i] : upto]))
                proc.stdin.flush()
                sent[i] = upto
        await asyncio.sleep(FEED_TICK_S)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    return time.monotonic() - start


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def worker_stats(engine: sa.Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT stats FROM ingest_workers")).scalars().all()
    return [r if isinstance(r, dict) else json.loads(r) for r in rows]


async def forget_sessions(host: str, port: int, client_ids: list[str]) -> None:
    for cid in client_ids:
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client(
                host, port, identifier=cid, protocol=aiomqtt.ProtocolVersion.V5, clean_start=True
            ):
                pass


async def run_one(args: argparse.Namespace, workers: int) -> Result:
    admin = sa.create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(args.database_url).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    engine = sa.create_engine(url)
    mqtt = urlsplit(args.mqtt_url)
    host, port = mqtt.hostname or "127.0.0.1", mqtt.port or 1883
    run = uuid.uuid4().hex[:6]
    group = f"bench-{run}"
    connections = args.connections
    client_ids = [f"bench-{run}-w{w}" for w in range(workers)]
    all_ids = [cid if c == 0 else f"{cid}-{c}" for cid in client_ids for c in range(connections)]
    procs: list[subprocess.Popen[bytes]] = []
    pubs: list[subprocess.Popen[bytes]] = []
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for w, cid in enumerate(client_ids):
            env = {
                **os.environ,
                "FLEET_DATABASE_URL": url,
                "FLEET_MQTT_URL": args.mqtt_url,
                "FLEET_SECRET_KEY": SECRET,
                "FLEET_MQTT_CLIENT_ID": cid,
                "FLEET_MQTT_SHARED_GROUP": group,
                "FLEET_INGEST_CONNECTIONS": str(connections),
                "FLEET_INGEST_BATCH_MAX": str(args.batch_max),
                "FLEET_INGEST_STATS_INTERVAL_S": "0.5",
                "FLEET_LOG_LEVEL": "WARNING",
            }
            log = (logs / f"ingest-{workers}w-{w}.log").open("wb")
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - started before the clock runs
                    [sys.executable, "-m", "fleet", "ingest"], cwd=REPO, env=env,
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = worker_stats(engine)
            if len(stats) == workers and all(s.get("connected") for s in stats):
                break
            await asyncio.sleep(0.25)
        else:
            raise SystemExit("ingest workers did not subscribe within 60 s (see --log-dir)")

        total = int(args.rate * args.seconds)
        per_gateway = total // args.gateways
        total = per_gateway * args.gateways
        session = int(time.time())
        gateways = [f"bench-{run}-gw{g:03d}" for g in range(args.gateways)]
        lines = [payloads(gw, per_gateway, args.readings, session) for gw in gateways]
        for gw in gateways:
            pubs.append(
                subprocess.Popen(  # noqa: ASYNC220 - started before the clock runs
                    ["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1", "-l",
                     "-t", up(gw, Up.TELEMETRY), "-i", f"{gw}-pub"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        await asyncio.sleep(1.0)  # publishers connected

        worker_pids = [p.pid for p in procs]
        cpu0 = (
            cpu_seconds(worker_pids), cpu_seconds(pids_of("mosquitto")),
            cpu_seconds(pids_of("postgres")),
        )  # fmt: skip
        start = time.monotonic()
        feeder = asyncio.create_task(feed(pubs, lines, args.rate))
        stored_at = None
        last, last_change = -1, time.monotonic()
        while True:
            n = count(engine, "SELECT count(*) FROM uplink_messages")
            now = time.monotonic()
            if n != last:
                last, last_change = n, now
            if n >= total:
                stored_at = now
                break
            if feeder.done() and now - last_change > args.stall_s:
                break  # nothing more arrives: the rest is lost
            await asyncio.sleep(0.25)
        publish_s = await feeder
        cpu1 = (
            cpu_seconds(worker_pids), cpu_seconds(pids_of("mosquitto")),
            cpu_seconds(pids_of("postgres")),
        )  # fmt: skip
        elapsed = (stored_at or time.monotonic()) - start
        await asyncio.sleep(1.0)  # stats rows catch up
        stats = worker_stats(engine)
        batches = sum(int(s.get("batches", 0)) for s in stats)  # type: ignore[call-overload]
        batch_messages = sum(int(s.get("batch_messages", 0)) for s in stats)  # type: ignore[call-overload]

        def delta(i: int) -> float:
            return cpu_delta(cpu0[i], cpu1[i])

        return Result(
            workers=workers,
            offered=args.rate,
            messages=total,
            publish_s=publish_s,
            stored_s=elapsed,
            stored_rate=count(engine, "SELECT count(*) FROM uplink_messages") / elapsed,
            uplink_rows=count(engine, "SELECT count(*) FROM uplink_messages"),
            reading_rows=count(engine, "SELECT count(*) FROM meter_readings"),
            expected_readings=total * args.readings,
            mean_batch=batch_messages / batches if batches else 0.0,
            worker_cpu_s=delta(0),
            broker_cpu_s=delta(1),
            db_cpu_s=delta(2),
            failed=sum(sum(dict(s.get("failed") or {}).values()) for s in stats),  # type: ignore[call-overload]
            rejected=sum(sum(dict(s.get("rejected") or {}).values()) for s in stats),  # type: ignore[call-overload]
        )
    finally:
        for p in pubs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
        await forget_sessions(host, port, all_ids)
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def private_mosquitto(max_queued: int | None) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        extra = f"max_queued_messages {max_queued}\n" if max_queued is not None else ""
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra}")
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--mqtt-url", default=None, help="default: a private Mosquitto")
    parser.add_argument("--max-queued", type=int, default=None, help="private broker only")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rate", type=float, default=4000.0, help="offered messages/s in total")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gateways", type=int, default=40, help="one mosquitto_pub each")
    parser.add_argument("--readings", type=int, default=1, help="meter samples per message")
    parser.add_argument("--connections", type=int, default=8, help="MQTT connections per worker")
    parser.add_argument("--batch-max", type=int, default=500)
    parser.add_argument("--stall-s", type=float, default=10.0)
    parser.add_argument("--log-dir", default="/tmp/ingest-bench")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    args = parser.parse_args()
    if shutil.which("mosquitto_pub") is None:
        raise SystemExit("needs mosquitto_pub (Debian package mosquitto-clients)")
    with contextlib.ExitStack() as stack:
        if args.mqtt_url is None:
            args.mqtt_url = stack.enter_context(private_mosquitto(args.max_queued))
        results = [asyncio.run(run_one(args, w)) for w in args.workers]
    print(f"\nbroker {args.mqtt_url}, {args.gateways} gateways, {args.readings} reading(s)/message")
    print(
        f"\n{'workers':>7} {'offered/s':>9} {'messages':>8} {'stored/s':>8} {'secs':>6} "
        f"{'lost':>5} {'readings ok':>11} {'batch':>6} {'worker cpu':>10} {'broker':>6} "
        f"{'db cpu':>6} {'failed':>6}"
    )
    for r in results:
        lost = r.messages - r.uplink_rows
        print(
            f"{r.workers:>7} {r.offered:>9.0f} {r.messages:>8} {r.stored_rate:>8.0f} "
            f"{r.stored_s:>6.1f} {lost:>5} {r.reading_rows == r.expected_readings!s:>11} "
            f"{r.mean_batch:>6.1f} {r.worker_cpu_s:>9.1f}s "
            f"{r.broker_cpu_s:>5.1f}s {r.db_cpu_s:>5.1f}s {r.failed:>6}"
        )


if __name__ == "__main__":
    main()
