"""Two ingest worker processes on one MQTT 5 shared subscription, one of them SIGKILLed in the
middle of the stream: every message is stored exactly once.

Needs Mosquitto (the embedded amqtt broker has no MQTT 5 and no shared subscriptions). With
TEST_MQTT_URL set the test uses that broker and fails if it cannot do this; without it the test
starts a private Mosquitto when the binary is installed, and skips otherwise.

Why nothing is lost: a worker acknowledges a message only after the transaction holding it
committed, and its fixed client id keeps a persistent session, so the broker redelivers what the
killed worker had received but not acknowledged when the worker comes back (as systemd's
Restart= brings it back). Why nothing is stored twice: the redelivered ids are already in
``uplink_messages``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import sqlalchemy as sa

from fleet.db import make_engine, migrate
from tests.conftest import free_port, wait_for_port
from tests.fleet.helpers import SECRET, envelope, swipe, wire
from tests.support.procs import child, wait_until

N_MESSAGES = 3000
N_GATEWAYS = 10
PUBLISH_PER_S = 600.0


def _private_mosquitto(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        if not wait_for_port("127.0.0.1", port):
            pytest.fail("private mosquitto did not start")
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def mosquitto_url(tmp_path: Path) -> Iterator[str]:
    url = os.environ.get("TEST_MQTT_URL")
    if url:
        yield url
        return
    if shutil.which("mosquitto") is None:
        pytest.skip(
            "needs Mosquitto: the embedded amqtt broker has no MQTT 5 shared subscriptions "
            "(set TEST_MQTT_URL or install mosquitto)"
        )
    yield from _private_mosquitto(tmp_path)


def _worker_env(database_url: str, mqtt_url: str, client_id: str, group: str) -> dict[str, str]:
    return {
        "FLEET_DATABASE_URL": database_url,
        "FLEET_MQTT_URL": mqtt_url,
        "FLEET_SECRET_KEY": SECRET,
        "FLEET_MQTT_CLIENT_ID": client_id,
        "FLEET_MQTT_SHARED_GROUP": group,
        "FLEET_MQTT_PROTOCOL": "5",  # fail, rather than fall back, if the broker lacks it
        "FLEET_INGEST_STATS_INTERVAL_S": "0.3",
        "FLEET_INGEST_CONNECTIONS": "2",
    }


def _count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def _workers(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT worker_id, stats FROM ingest_workers")).all()
    out = {}
    for worker_id, stats in rows:
        out[worker_id] = stats if isinstance(stats, dict) else json.loads(stats)
    return out


async def _forget_sessions(mqtt_url: str, client_ids: list[str]) -> None:
    """Remove the workers' persistent sessions (a shared CI broker would keep queueing)."""
    host_port = mqtt_url.removeprefix("mqtt://")
    host, _, port = host_port.partition(":")
    for client_id in client_ids:
        async with aiomqtt.Client(
            host,
            int(port or 1883),
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
        ):
            pass


async def test_two_shared_workers_one_killed_midstream_store_every_message_once(
    mosquitto_url: str, database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    engine = make_engine(database_url)
    run = uuid.uuid4().hex[:8]
    group = f"fleet-t-{run}"
    ids = {name: f"ingest-t-{run}-{name}" for name in ("a", "b")}
    client_ids = [f"{cid}{suffix}" for cid in ids.values() for suffix in ("", "-1")]
    gateways = [f"gw-w-{run}-{i:02d}" for i in range(N_GATEWAYS)]
    messages = []
    for i in range(N_MESSAGES):
        gw = gateways[i % N_GATEWAYS]
        seq = i // N_GATEWAYS + 1
        messages.append(swipe(gw).model_copy(update=envelope(gw, seq=seq)))
    expected = {m.id for m in messages}
    assert len(expected) == N_MESSAGES

    def stored() -> int:
        return _count(
            engine,
            "SELECT count(*) FROM card_swipes WHERE gateway_id LIKE :p",
            p=f"gw-w-{run}-%",
        )

    try:
        with ExitStack() as stack:
            procs = {}
            for name, cid in ids.items():
                procs[name] = stack.enter_context(
                    child(
                        ["fleet", "ingest"],
                        tmp_path / f"worker-{name}.log",
                        _worker_env(database_url, mosquitto_url, cid, group),
                    )
                )

            def both_subscribed() -> bool:
                workers = _workers(engine)
                up = [w for w in workers.values() if w.get("connected")]
                return len(up) == 2 and all(w["shared_group"] == group for w in up)

            await asyncio.to_thread(wait_until, both_subscribed, 60, "both workers to subscribe")

            host_port = mosquitto_url.removeprefix("mqtt://")
            host, _, port = host_port.partition(":")

            async def publish_all() -> None:
                async with aiomqtt.Client(host, int(port or 1883)) as client:
                    for i, message in enumerate(messages):
                        topic, payload = wire(message)
                        await client.publish(topic, payload, qos=1)
                        if i % 30 == 29:
                            await asyncio.sleep(30 / PUBLISH_PER_S)

            publisher = asyncio.create_task(publish_all())
            await asyncio.to_thread(
                wait_until, lambda: stored() >= N_MESSAGES // 4, 60, "a quarter of the stream"
            )
            procs["a"].send_signal(signal.SIGKILL)
            procs["a"].wait()
            killed_at = stored()
            assert killed_at < N_MESSAGES, "the worker must die mid-stream"
            # What systemd's Restart= would do: the same worker, same client id, comes back.
            procs["a"] = stack.enter_context(
                child(
                    ["fleet", "ingest"],
                    tmp_path / "worker-a-restarted.log",
                    _worker_env(database_url, mosquitto_url, ids["a"], group),
                )
            )
            await publisher
            await asyncio.to_thread(
                wait_until, lambda: stored() >= N_MESSAGES, 90, "every message to be stored"
            )
            await asyncio.sleep(1.0)  # anything redelivered late would show up now

            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT message_id FROM card_swipes WHERE gateway_id LIKE :p"),
                    {"p": f"gw-w-{run}-%"},
                ).all()
                sessions = conn.execute(
                    sa.text(
                        "SELECT gateway_id, max_seq, received FROM gateway_sessions "
                        "WHERE gateway_id LIKE :p"
                    ),
                    {"p": f"gw-w-{run}-%"},
                ).all()
                gaps = conn.execute(
                    sa.text("SELECT sum(seq_gaps) FROM gateways WHERE gateway_id LIKE :p"),
                    {"p": f"gw-w-{run}-%"},
                ).scalar_one()
            workers = _workers(engine)
    finally:
        engine.dispose()
        await _forget_sessions(mosquitto_url, client_ids)

    ids_stored = [r.message_id for r in rows]
    assert len(ids_stored) == N_MESSAGES
    assert set(ids_stored) == expected
    # Sequence tracking saw each message exactly once too: no gap, nothing counted twice.
    per_gateway = N_MESSAGES // N_GATEWAYS
    assert sorted((max_seq, received) for _, max_seq, received in sessions) == [
        (per_gateway, per_gateway)
    ] * N_GATEWAYS
    assert gaps == 0
    # The shared subscription split the stream: both workers stored some of it.
    accepted = [w["accepted"].get("card", 0) for w in workers.values()]
    assert sum(1 for n in accepted if n > 0) >= 2, workers
