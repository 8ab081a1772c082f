"""The broker goes away while the building keeps producing; nothing produced meanwhile is lost,
nothing is stored twice, alerts arrive before the telemetry backlog, and the backlog is marked
historical."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_TELEMETRY
from tests.faults.helpers import fleet_and_building, observing, wait_for
from tests.support.mosquitto import PrivateMosquitto
from tests.support.procs import child

pytestmark = pytest.mark.e2e

CHARGING_AFTER_S = 9.0  # the e-bike starts charging during the outage
HISTORICAL_AFTER_S = 2.0


async def test_outage_loses_nothing_and_alerts_jump_the_backlog(
    tmp_path: Path, database_url: str
) -> None:
    with (
        PrivateMosquitto(tmp_path / "broker") as broker,
        fleet_and_building(
            tmp_path,
            broker,
            database_url,
            sim_args=["--flats", "6", "--seed", "3", "--charging-after", str(CHARGING_AFTER_S)],
        ) as rig,
    ):
        cfg = rig.agent_config()
        async with observing(broker, rig.gateway_id) as obs:
            with child(["edge_agent", "run", "--config", str(cfg)], tmp_path / "agent.log"):
                await wait_for(
                    lambda: any(a.kind == "birth" for a in obs.arrivals), 30, "the birth"
                )
                assert time.time() - rig.sim_started < CHARGING_AFTER_S, "machine too slow"
                # Outage: the devices keep producing, the agent keeps committing.
                broker.stop()
                stopped = time.time()

                def alert_during_outage() -> bool:
                    return any(p == PRIORITY_ALERT and c > stopped for _, p, c in rig.audit())

                await wait_for(alert_during_outage, 30, "an alert raised during the outage")
                await wait_for(lambda: time.time() > stopped + 6, 10, "a 6 s outage")
                restarted = time.time()
                broker.start()

                produced = rig.audit()

                def all_stored() -> bool:
                    stored = rig.fleet_ids()
                    return all(i in stored for i, _, _ in produced)

                await wait_for(all_stored, 45, "every produced message at the fleet manager")
                # Something produced after the backlog went out is live again.
                drained = time.time()
                await wait_for(
                    lambda: any(a.kind == "telemetry" and a.at > drained + 1 for a in obs.arrivals),
                    20,
                    "live telemetry",
                )
            log = (tmp_path / "agent.log").read_text()

    backlog = [(i, p, c) for i, p, c in produced if stopped < c < restarted]
    alerts = [i for i, p, _ in backlog if p == PRIORITY_ALERT]
    telemetry = [i for i, p, _ in backlog if p == PRIORITY_TELEMETRY]
    assert alerts and len(telemetry) >= 5, (len(alerts), len(telemetry), log[-3000:])

    # Every message produced during the outage reached the fleet manager, and was stored once
    # (uplink_messages is keyed by message id; card swipes have one row per message id).
    stored = rig.fleet_ids()
    assert {i for i, _, _ in backlog} <= set(stored)
    swipes = rig.fleet_rows_per_id("card_swipes")
    assert all(n == 1 for n in swipes.values())

    # Alerts first: at the observer (arrival order) and at the fleet manager (receive time).
    first = obs.first_arrival()
    assert max(first[i].index for i in alerts) < min(first[i].index for i in telemetry)
    assert max(stored[i] for i in alerts) <= min(stored[i] for i in telemetry)

    # The backlog went out marked historical; what is produced now is live.
    old = [i for i, _, c in backlog if restarted - c > HISTORICAL_AFTER_S + 0.5]
    assert old and all(first[i].body["historical"] is True for i in old)
    live = [a for a in obs.arrivals if a.kind == "telemetry" and a.at > drained + 1]
    assert live and all(a.body["historical"] is False for a in live)
