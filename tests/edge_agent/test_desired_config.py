"""Desired configuration pushed by the fleet manager (retained on down/config), end to end
through the real broker: applied without a restart, persisted, reported on up/config_state;
invalid configs rejected with their reason; a config that breaks every driver rolled back."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

from contract import topics
from contract.control import config_hash
from contract.messages import ConfigState, Heartbeat, MeterTelemetry
from firmware_sim.modbus_meters import ModbusMeterSim, constant_load
from tests.conftest import BrokerEndpoint, free_port
from tests.edge_agent.control_helpers import (
    base_config,
    desired_payload,
    gateway_id,
    listening,
    make_agent,
    modbus_section,
    running,
)

UP = topics.Up
DOWN = topics.Down


def _meters_seen(up: Any, after: int = 0) -> set[str]:
    return {
        r.meter_id
        for m in up.of(UP.TELEMETRY)[after:]
        if isinstance(m, MeterTelemetry)
        for r in m.readings
    }


async def test_pushed_config_starts_drivers_without_restart_and_survives_an_offline_restart(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    base = base_config(gw, tmp_path / "state", mqtt_broker)
    async with (
        ModbusMeterSim({1: constant_load(850.0), 2: constant_load(120.0)}) as sim,
        listening(mqtt_broker, gw) as up,
    ):
        agent = make_agent(base)
        assert agent.drivers == []
        async with running(agent):
            await up.wait(UP.BIRTH)
            config = {"modbus_tcp": modbus_section(sim.port)}
            await up.publish(DOWN.CONFIG, desired_payload(gw, 1, config), retain=True)
            state = await up.wait(UP.CONFIG_STATE)
            assert isinstance(state, ConfigState)
            assert (state.status, state.version, state.hash) == ("applied", 1, config_hash(config))
            assert (state.applied_version, state.applied_hash) == (1, config_hash(config))
            # the same process now reads both meters: no restart happened
            session = agent.session
            await up.wait(UP.TELEMETRY, lambda m: len(_meters_seen(up)) == 2)
            assert agent.session == session and _meters_seen(up) == {"m-1-101", "m-1-102"}
            hb = await up.wait(UP.HEARTBEAT, lambda m: m.config_version == 1)
            assert isinstance(hb, Heartbeat) and hb.config_hash == config_hash(config)
            birth = await up.wait(UP.BIRTH, lambda m: m.config_version == 1)
            assert {d.device_id for d in birth.devices} == {"m-1-101", "m-1-102"}

        stored = tmp_path / "state" / "desired.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert json.loads(stored.read_text())["desired"]["version"] == 1

        # Restart with the broker unreachable: the stored config wins over the TOML (which
        # has no meters), and the meters are read into the outbox.
        offline = {**base, "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"}}
        agent = make_agent(offline)
        assert [d.name for d in agent.drivers] == [f"modbus-tcp:127.0.0.1:{sim.port}"]
        async with running(agent):
            await _until(lambda: agent.outbox.depth() > 0)
            assert agent.controller.applied is not None
            assert agent.controller.applied.version == 1


async def _until(probe: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.05)


async def test_invalid_configs_are_rejected_with_their_reason_and_the_running_one_stays(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    base = base_config(gw, tmp_path / "state", mqtt_broker)
    good = {"modbus_tcp": modbus_section(0)}  # replaced below once the simulator has a port
    async with (
        ModbusMeterSim({1: constant_load(850.0), 2: constant_load(120.0)}) as sim,
        listening(mqtt_broker, gw) as up,
    ):
        good = {"modbus_tcp": modbus_section(sim.port)}
        agent = make_agent(base)
        async with running(agent):
            await up.wait(UP.BIRTH)
            await up.publish(DOWN.CONFIG, desired_payload(gw, 1, good), retain=True)
            await up.wait(UP.CONFIG_STATE, lambda m: m.status == "applied")
            driver_task = agent.supervisor.stats()[f"driver:modbus-tcp:127.0.0.1:{sim.port}"]
            started = driver_task.started_mono

            bad_slave = {"modbus_tcp": [{**good["modbus_tcp"][0], "meters": [
                {"meter_id": "m-1-101", "slave": 0}]}]}  # fmt: skip
            dangling = {**good, "site": {**base["site"], "meters": [
                {"meter_id": "m-1-101", "unit_id": "9-999"}]}}  # fmt: skip
            cases: list[tuple[bytes, str]] = [
                (desired_payload(gw, 2, bad_slave), "slave"),
                (desired_payload(gw, 3, {**good, "mqtt": {"url": "mqtt://evil"}}), "mqtt"),
                (desired_payload(gw, 4, good, hash="0" * 64), "hash mismatch"),
                (desired_payload("another-gw", 5, good), "another-gw"),
                (desired_payload(gw, 6, dangling), "unknown unit_id"),
                (b"{not json", "not JSON"),
            ]
            for n, (payload, expected) in enumerate(cases, start=1):
                await up.publish(DOWN.CONFIG, payload, retain=True)
                state = await up.wait(
                    UP.CONFIG_STATE, lambda m, n=n: len(
                        [s for s in up.of(UP.CONFIG_STATE) if s.status == "rejected"]) >= n,
                )  # fmt: skip
                rejected = [s for s in up.of(UP.CONFIG_STATE) if s.status == "rejected"]
                state = rejected[n - 1]
                assert expected in (state.reason or ""), (expected, state.reason)
                assert (state.applied_version, state.applied_hash) == (1, config_hash(good))
            # the first config still runs, untouched, and meters are still read
            assert agent.controller.applied is not None and agent.controller.applied.version == 1
            assert driver_task.started_mono == started and driver_task.restarts == 0
            seen = len(up.of(UP.TELEMETRY))
            await up.wait(UP.TELEMETRY, lambda m: len(_meters_seen(up, seen)) == 2)
            assert (
                json.loads((tmp_path / "state" / "desired.json").read_text())["desired"]["version"]
                == 1
            )


async def test_same_config_is_not_reapplied_on_reconnect(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    base = base_config(gw, tmp_path / "state", mqtt_broker)
    async with (
        ModbusMeterSim({1: constant_load(850.0), 2: constant_load(120.0)}) as sim,
        listening(mqtt_broker, gw) as up,
    ):
        config = {"modbus_tcp": modbus_section(sim.port)}
        agent = make_agent(base)
        async with running(agent):
            await up.wait(UP.BIRTH)
            await up.publish(DOWN.CONFIG, desired_payload(gw, 1, config), retain=True)
            await up.wait(UP.CONFIG_STATE, lambda m: m.status == "applied")
            task = agent.supervisor.stats()[f"driver:modbus-tcp:127.0.0.1:{sim.port}"]
            started = task.started_mono
            for reconnects in (1, 2):
                births = len(up.of(UP.BIRTH))
                await agent.supervisor.restart("uplink")  # drop and re-open the connection
                await up.wait(UP.BIRTH, lambda m, b=births: len(up.of(UP.BIRTH)) > b)
                # the retained config comes again; "unchanged" is said once per agent session
                await up.wait(UP.CONFIG_STATE, lambda m: m.status == "unchanged")
                states = [s.status for s in up.of(UP.CONFIG_STATE)]
                assert states == ["applied", "unchanged"], (reconnects, states)
            assert task.started_mono == started and task.restarts == 0

        # a restarted agent (new session) runs the stored config and says "unchanged" once
        agent = make_agent(base)
        async with running(agent):
            state = await up.wait(
                UP.CONFIG_STATE, lambda m: m.session == agent.session and m.status == "unchanged"
            )
            assert (state.version, state.applied_version) == (1, 1)


async def test_config_that_breaks_every_driver_is_rolled_back(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    base = base_config(gw, tmp_path / "state", mqtt_broker, config_rollback_grace_s=1.5)
    dead_port = free_port()
    async with (
        ModbusMeterSim({1: constant_load(850.0), 2: constant_load(120.0)}) as sim,
        listening(mqtt_broker, gw) as up,
    ):
        good = {"modbus_tcp": modbus_section(sim.port)}
        # every device in v2 is unreachable: a bus with nothing listening and a missing port
        broken = {
            "modbus_tcp": modbus_section(dead_port),
            "serial_readers": [{"reader_id": "r-1", "url": str(tmp_path / "no-such-tty")}],
        }
        agent = make_agent(base)
        async with running(agent):
            await up.wait(UP.BIRTH)
            await up.publish(DOWN.CONFIG, desired_payload(gw, 1, good), retain=True)
            await up.wait(UP.CONFIG_STATE, lambda m: m.status == "applied")
            await up.wait(UP.TELEMETRY, lambda m: len(_meters_seen(up)) == 2)
            await up.publish(DOWN.CONFIG, desired_payload(gw, 2, broken), retain=True)
            applied = await up.wait(UP.CONFIG_STATE, lambda m: m.version == 2)
            assert applied.status == "applied"
            assert sorted(d.name for d in agent.drivers) == [
                f"modbus-tcp:127.0.0.1:{dead_port}",
                "serial:r-1",
            ]
            state = await up.wait(UP.CONFIG_STATE, lambda m: m.status == "rolled_back")
            assert (state.version, state.hash) == (2, config_hash(broken))
            assert (state.applied_version, state.applied_hash) == (1, config_hash(good))
            assert "every driver failed" in (state.reason or "")
            assert f"modbus-tcp:127.0.0.1:{dead_port}" in (state.reason or "")
            assert "serial:r-1" in (state.reason or "")
            # back on v1: its meters are read again
            assert [d.name for d in agent.drivers] == [f"modbus-tcp:127.0.0.1:{sim.port}"]
            seen = len(up.of(UP.TELEMETRY))
            await up.wait(UP.TELEMETRY, lambda m: len(_meters_seen(up, seen)) == 2)
            stored = json.loads((tmp_path / "state" / "desired.json").read_text())
            assert stored["desired"]["version"] == 1
            assert config_hash(broken) in stored["rolled_back"]

            # the broken config is still retained: a reconnect does not apply it again
            births = len(up.of(UP.BIRTH))
            await agent.supervisor.restart("uplink")
            await up.wait(UP.BIRTH, lambda m: len(up.of(UP.BIRTH)) > births)
            await _until(agent.uplink.incoming.empty)
            await _until(lambda: len(up.of(UP.HEARTBEAT)) > 3)
            assert [d.name for d in agent.drivers] == [f"modbus-tcp:127.0.0.1:{sim.port}"]
            assert [s.status for s in up.of(UP.CONFIG_STATE)] == [
                "applied",
                "applied",
                "rolled_back",
            ]


def test_a_damaged_or_unfitting_stored_config_falls_back_to_the_toml(
    tmp_path: Path, caplog: Any
) -> None:
    gw = gateway_id()
    state = tmp_path / "state"
    base = base_config(gw, state, "mqtt://127.0.0.1:1")
    state.mkdir()
    (state / "desired.json").write_text('{"desired": {"gw": ')  # a torn write by hand
    agent = make_agent(base)
    assert agent.controller.applied is None and agent.drivers == []
    assert "desired.json" in caplog.text
    agent.outbox.close()

    payload = json.loads(desired_payload(gw, 4, {"modbus_tcp": modbus_section(1502)}))
    (state / "desired.json").write_text(json.dumps({"desired": payload, "rolled_back": {}}))
    agent = make_agent(base)
    assert agent.controller.applied is not None and len(agent.drivers) == 1
    agent.outbox.close()
    # stored by an agent version whose bus config had an option this version no longer knows
    old = {"modbus_tcp": [{**modbus_section(1502)[0], "retired_option": 1}]}
    (state / "desired.json").write_text(
        json.dumps({"desired": {**payload, "config": old}, "rolled_back": {}})
    )
    caplog.clear()
    agent = make_agent(base)
    assert agent.controller.applied is None and "does not fit the TOML" in caplog.text
    agent.outbox.close()
