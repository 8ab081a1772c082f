"""50 concurrent ingests of episodes for one flat and kind leave exactly one open case.

Real concurrency: 50 threads, each with its own engine and connection, released together by a
barrier, each applying a different episode (its own gateway at the same entrance) through the
same ``apply_uplink`` that MQTT ingest calls. On PostgreSQL (TEST_DATABASE_URL) the partial
unique index and ``INSERT ... ON CONFLICT DO NOTHING`` are what keep it to one case; on SQLite
the database serialises writers.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from contract.alerts import AlertKind
from fleet.db import make_engine, make_sessionmaker, migrate, utcnow
from fleet.models import Alert, AlertEpisodeRow, Entrance, Gateway
from fleet.store import apply_uplink
from tests.fleet.helpers import T0, alert
from tests.fleet.test_lifecycle import seed_site

WORKERS = 50


def test_fifty_concurrent_episodes_make_one_open_case(database_url: str) -> None:
    migrate(database_url)
    site = seed_site(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s, s.begin():
            entrance_id = s.scalar(
                sa.select(Gateway.entrance_id).where(Gateway.gateway_id == site.gateway)
            )
            assert s.get(Entrance, entrance_id) is not None
            gateways = [f"{site.gateway}-{i}" for i in range(WORKERS)]
            for gw in gateways:
                s.add(
                    Gateway(
                        gateway_id=gw, online=False, first_seen=utcnow(), entrance_id=entrance_id
                    )
                )
    finally:
        engine.dispose()

    barrier = threading.Barrier(WORKERS)
    errors: list[BaseException] = []
    episode_ids = [uuid.uuid4().hex for _ in range(WORKERS)]

    def worker(i: int) -> None:
        own = make_engine(database_url, poolclass=sa.pool.NullPool)
        try:
            message = alert(
                gateways[i],
                episode_ids[i],
                kind=AlertKind.EBIKE_CHARGING,
                ts=T0 + timedelta(seconds=i),
            )
            with make_sessionmaker(own)() as s:
                s.connection()  # connect before the barrier, so all start together
                s.rollback()
                barrier.wait(timeout=60)
                for attempt in range(5):
                    try:
                        with s.begin():
                            apply_uplink(s, message, received_at=utcnow())
                        break
                    except sa.exc.OperationalError:  # a deadlock victim retries, as ingest does
                        if attempt == 4:
                            raise
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert errors == []

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            cases = s.scalars(
                sa.select(Alert).where(Alert.kind == AlertKind.EBIKE_CHARGING.value)
            ).all()
            assert len(cases) == 1
            [case] = cases
            assert case.status == "new"
            assert case.flat_id == site.flat_id
            assert case.episodes == WORKERS
            attached = s.scalars(
                sa.select(AlertEpisodeRow.episode_id).where(
                    AlertEpisodeRow.alert_id == case.alert_id
                )
            ).all()
            assert sorted(attached) == sorted(episode_ids)
            # The constraint itself: a second open case for the key is refused by the database.
            clone = {c.key: getattr(case, c.key) for c in Alert.__table__.columns}
            s.rollback()
            with pytest.raises(sa.exc.IntegrityError), s.begin():
                s.execute(sa.insert(Alert).values({**clone, "alert_id": uuid.uuid4().hex}))
    finally:
        engine.dispose()
    if os.environ.get("TEST_DATABASE_URL"):
        assert database_url.startswith("postgresql")
