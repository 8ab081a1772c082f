"""Heartbeat history: every heartbeat ingest receives through the real broker is kept (once,
however often the broker delivers it) for the gateway page's charts, and pruned after the
retention period."""

from __future__ import annotations

from datetime import timedelta

from contract.messages import DeviceStatus, Heartbeat
from fleet.db import make_engine, make_sessionmaker, utcnow
from fleet.health import prune_heartbeats
from fleet.models import GatewayHeartbeat
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    birth,
    envelope,
    eventually,
    fleet_client,
    gateway_id,
    heartbeat_rows,
    make_settings,
    publish,
    wire,
)


async def test_ingest_keeps_each_heartbeat_once_and_prunes_old_ones(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    now = utcnow().replace(microsecond=0)
    settings = make_settings(mqtt_broker, database_url)
    devices = {
        "m-1": DeviceStatus(online=True, last_seen=now),
        "m-2": DeviceStatus(online=False, fault="timeout"),
        "r-1": DeviceStatus(online=True, fault="crc errors"),
    }
    # Eight days ago (past the 7-day retention), then three in the last half hour.
    ages = (timedelta(days=8), timedelta(minutes=30), timedelta(minutes=20), timedelta(minutes=10))
    beats = [
        Heartbeat(
            **{**envelope(gw, seq=i + 1), "ts": now - age},
            uptime_s=100.0 * i,
            agent_version="0.1.0-test",
            outbox_depth=10 * i,
            outbox_oldest_age_s=3.5 * i,
            load_avg=(0.25 * i, 0.2, 0.1),
            mem_available_bytes=200_000_000 + i,
            mem_rss_bytes=30_000_000,
            disk_free_bytes=5_000_000_000,
            cpu_temp_c=48.5,
            devices=devices,
            config_version=4,
        )
        for i, age in enumerate(ages)
    ]
    async with fleet_client(settings):
        # The last one twice: a redelivery (same message id) is stored once.
        await publish(mqtt_broker, wire(birth(gw)), *(wire(b) for b in beats), wire(beats[-1]))

        async def stored() -> list[GatewayHeartbeat] | None:
            rows = heartbeat_rows(database_url, gw)
            return rows if len(rows) >= len(beats) else None

        rows = await eventually(stored, "the heartbeats to be stored")
    assert len(rows) == len(beats)
    assert [r.ts for r in rows] == [b.ts for b in beats]
    newest = rows[-1]
    assert (newest.session, newest.outbox_depth, newest.outbox_oldest_age_s) == (1, 30, 10.5)
    assert (newest.load_1m, newest.mem_available_bytes, newest.mem_rss_bytes) == (
        0.75,
        200_000_003,
        30_000_000,
    )
    assert (newest.disk_free_bytes, newest.cpu_temp_c, newest.config_version) == (
        5_000_000_000,
        48.5,
        4,
    )
    # Three devices: two answer, one is silent, two report a fault.
    assert (newest.devices_total, newest.devices_online, newest.devices_faulty) == (3, 2, 2)

    engine = make_engine(database_url)
    try:
        sessions = make_sessionmaker(engine)
        assert prune_heartbeats(sessions, utcnow(), settings.heartbeat_retention_days) == 1
        assert prune_heartbeats(sessions, utcnow(), settings.heartbeat_retention_days) == 0
    finally:
        engine.dispose()
    assert [r.ts for r in heartbeat_rows(database_url, gw)] == [b.ts for b in beats[1:]]
    assert settings.heartbeat_retention_days == 7.0
