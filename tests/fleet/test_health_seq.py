"""Sequence tracking per gateway session: gaps are counted, a late backlog (historical) message
fills its gap, an older session's backlog does not disturb the current one, and a redelivered
message is counted once."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from contract.messages import Envelope
from fleet.db import make_engine
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import (
    birth,
    eventually,
    fleet_client,
    gateway_id,
    heartbeat,
    login,
    make_settings,
    publish,
    swipe,
    telemetry,
    wire,
)


def at(message: Envelope, *, session: int, seq: int, historical: bool = False) -> Envelope:
    return message.model_copy(update={"session": session, "seq": seq, "historical": historical})


async def state(client: httpx.AsyncClient, headers: dict[str, str], gw: str) -> dict[str, Any]:
    r = await client.get(f"/api/gateways/{gw}", headers=headers)
    return dict(r.json()) if r.status_code == 200 else {}


async def test_gaps_are_counted_and_filled_by_late_backlog_messages(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gw = gateway_id()
    async with fleet_client(make_settings(mqtt_broker, database_url)) as client:
        headers = await login(client)
        hb3 = at(heartbeat(gw), session=1, seq=3)
        # Session 1: will = 1, birth = 2, heartbeat 3, then telemetry 6: 4 and 5 are missing.
        await publish(
            mqtt_broker,
            wire(at(birth(gw), session=1, seq=2)),
            wire(hb3),
            wire(at(telemetry(gw, "m-1"), session=1, seq=6)),
        )

        async def seq6() -> dict[str, Any] | None:
            g = await state(client, headers, gw)
            return g if g.get("last_seq") == 6 else None

        g = await eventually(seq6, "the telemetry")
        assert (g["session"], g["seq_gaps"], g["online"]) == (1, 2, True)

        # The outbox delivers 4 and 5 late, as backlog; 3 is redelivered by the broker.
        await publish(
            mqtt_broker,
            wire(at(swipe(gw), session=1, seq=4, historical=True)),
            wire(hb3),
            wire(at(swipe(gw), session=1, seq=5, historical=True)),
        )

        async def filled() -> dict[str, Any] | None:
            g = await state(client, headers, gw)
            return g if g.get("seq_gaps") == 0 else None

        await eventually(filled, "the backlog to fill the gaps")

        # The agent restarts (session 2); then backlog of session 1 still arrives.
        await publish(
            mqtt_broker,
            wire(at(birth(gw), session=2, seq=2)),
            wire(at(swipe(gw), session=1, seq=7, historical=True)),
            wire(at(heartbeat(gw), session=2, seq=3)),
        )

        async def session2() -> dict[str, Any] | None:
            g = await state(client, headers, gw)
            return g if g.get("session") == 2 and g.get("last_seq") == 3 else None

        g = await eventually(session2, "session 2")
        assert (g["online"], g["seq_gaps"]) == (True, 0)

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT session, max_seq, received FROM gateway_sessions "
                    "WHERE gateway_id = :gw ORDER BY session"
                ),
                {"gw": gw},
            ).all()
    finally:
        engine.dispose()
    # Session 1: seqs 1..7 all accounted for (1 through the birth), 3 counted once.
    assert [tuple(r) for r in rows] == [(1, 7, 7), (2, 3, 3)]
