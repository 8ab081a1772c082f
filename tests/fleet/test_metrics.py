"""``GET /metrics``: Prometheus text format with ingest counters per worker and fleet gauges."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import aiomqtt
import httpx

from contract.topics import Up, up
from fleet.db import migrate
from tests.conftest import BrokerEndpoint, free_port, wait_for_port
from tests.fleet.helpers import (
    SECRET,
    birth,
    death,
    eventually,
    fleet_client,
    gateway_id,
    heartbeat,
    make_settings,
    publish,
    wire,
)
from tests.support.procs import child

SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample lines by metric name; every family must declare HELP and TYPE first."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name in declared, f"{name} has no TYPE line"
        families.setdefault(name, []).append((dict(LABEL.findall(labels or "")), float(value)))
    return families


def total(
    families: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lbl, v in families.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())
    )


async def metrics(client: httpx.AsyncClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


async def test_metrics_show_ingest_counters_and_gateway_gauges(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    up_gw, down_gw = gateway_id(), gateway_id()
    settings = make_settings(mqtt_broker, database_url, ingest_stats_interval_s=0.2)
    async with fleet_client(settings) as client:
        await publish(
            mqtt_broker,
            wire(birth(up_gw)),
            wire(heartbeat(up_gw, seq=5)),  # seqs 3 and 4 missing
            wire(birth(down_gw)),
            wire(death(down_gw, seq=3, reason="connection_lost")),
            (up(up_gw, Up.HEARTBEAT), b"{not json"),
        )

        async def counted() -> dict[str, list[tuple[dict[str, str], float]]] | None:
            m = await metrics(client)
            return (
                m
                if total(m, "fleet_ingest_rejected_total", reason="not_json") >= 1
                and total(m, "fleet_ingest_messages_total", kind="death") >= 1
                else None
            )

        m = await eventually(counted, "the worker's counters in /metrics")
        assert total(m, "fleet_ingest_messages_total", kind="birth") >= 2
        assert total(m, "fleet_ingest_messages_total", kind="heartbeat") >= 1
        assert total(m, "fleet_ingest_workers") == 1
        assert total(m, "fleet_ingest_connected") == 1
        assert total(m, "fleet_ingest_batches_total") >= 1
        assert total(m, "fleet_ingest_batch_messages_total") >= 5
        assert [lbl for lbl, _ in m["fleet_ingest_lag_seconds"]] != []
        assert total(m, "fleet_gateways_online") >= 1
        assert total(m, "fleet_gateways_offline") >= 1
        assert total(m, "fleet_seq_gaps") >= 2
        assert total(m, "fleet_health_notifications_total", kind="gateway_offline") >= 1
        # No login needed, like /api/health; nothing a gateway sent appears in it.
        text = (await client.get("/metrics")).text
        assert "not json" not in text


async def test_api_processes_render_the_counters_of_a_separate_ingest_worker(
    mqtt_broker: BrokerEndpoint, database_url: str, tmp_path: Path
) -> None:
    """The systemd layout: `serve --workers 2` (no ingest in them) and one `fleet-manager
    ingest` process; any API process answers /metrics with the worker's counters."""
    migrate(database_url)
    port = free_port()
    client_id = f"ingest-m-{uuid.uuid4().hex[:8]}"
    env = {
        "FLEET_DATABASE_URL": database_url,
        "FLEET_MQTT_URL": mqtt_broker.url,
        "FLEET_SECRET_KEY": SECRET,
        "FLEET_INGEST_STATS_INTERVAL_S": "0.3",
    }
    gw = gateway_id()
    try:
        with (
            child(["fleet", "ingest", "--client-id", client_id], tmp_path / "ingest.log", env),
            child(
                ["fleet", "serve", "--workers", "2", "--port", str(port)],
                tmp_path / "serve.log",
                {**env, "FLEET_INGEST_ENABLED": "false"},
            ) as server,
        ):
            assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                r = await client.get("/api/health")
                assert r.status_code == 200, r.text
                assert (r.json()["status"], r.json()["ingest_in_process"]) == ("ok", False)

                async def worker_reports() -> bool:
                    m = await metrics(client)
                    return total(m, "fleet_ingest_connected") >= 1

                await eventually(worker_reports, "the ingest worker in /metrics", timeout=60)
                await publish(mqtt_broker, wire(birth(gw)))

                async def stored() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                    m = await metrics(client)
                    ok = total(m, "fleet_ingest_messages_total", kind="birth") >= 1
                    return m if ok and total(m, "fleet_gateways_online") >= 1 else None

                m = await eventually(stored, "the birth counted by the worker", timeout=30)
                workers = {lbl["worker"] for lbl, _ in m["fleet_ingest_connected"]}
                assert len(workers) == 1 and client_id in next(iter(workers))
            assert server.poll() is None
    finally:
        if mqtt_broker.kind == "external":
            async with aiomqtt.Client(
                mqtt_broker.host, mqtt_broker.port, identifier=client_id,
                protocol=aiomqtt.ProtocolVersion.V5, clean_start=True,
            ):  # fmt: skip
                pass  # forget the worker's persistent session on the shared broker
