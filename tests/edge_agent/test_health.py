"""The heartbeat, as the fleet manager receives it through the real broker: system readings,
each device's own status and counters, supervised tasks and their failures."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import tomli_w

from contract import topics
from contract.messages import MAX_PAYLOAD_BYTES, Heartbeat, encode
from edge_agent.health import SystemProbe, device_statuses
from firmware_sim.ble_feed import BleFeedServer
from firmware_sim.modbus_meters import ModbusMeterSim, constant_load
from tests.conftest import BrokerEndpoint, free_port
from tests.edge_agent.control_helpers import (
    base_config,
    gateway_id,
    listening,
    make_agent,
    modbus_section,
    running,
)


def _zone(root: Path, n: int, kind: str, milli: str) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(milli + "\n")


def test_cpu_temperature_prefers_the_cpu_zone_and_is_none_where_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "thermal"
    _zone(root, 0, "battery", "31000")
    _zone(root, 1, "cpu-thermal", "48312")
    _zone(root, 2, "gpu", "garbage")
    assert SystemProbe(thermal_root=root).cpu_temp_c() == 48.3
    other = tmp_path / "other"
    _zone(other, 0, "acpitz", "27800")
    assert SystemProbe(thermal_root=other).cpu_temp_c() == 27.8  # no CPU zone: the first one
    assert SystemProbe(thermal_root=tmp_path / "none").cpu_temp_c() is None
    broken = SystemProbe(thermal_root=tmp_path / "none", proc_root=tmp_path / "none")
    assert broken.load_avg() is None and broken.mem_available_bytes() is None
    assert broken.rss_bytes() is None and broken.disk_free_bytes(tmp_path / "none") is None


async def test_heartbeat_reports_system_devices_with_their_own_counters_and_tasks(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    thermal = tmp_path / "thermal"
    _zone(thermal, 0, "cpu-thermal", "51250")
    # slave 2 is configured but not on the bus: it times out while slave 1 answers
    async with ModbusMeterSim({1: constant_load(850.0)}) as sim, listening(mqtt_broker, gw) as up:
        base = base_config(gw, tmp_path / "state", mqtt_broker, modbus_tcp=modbus_section(sim.port))
        agent = make_agent(base, probe=SystemProbe(thermal_root=thermal))
        async with running(agent):
            hb: Heartbeat = await up.wait(
                topics.Up.HEARTBEAT,
                lambda m: (
                    m.devices["m-1-102"].fault is not None
                    and m.devices["m-1-101"].counters.get("reads_ok", 0) > 0
                ),
            )
    good, dead = hb.devices["m-1-101"], hb.devices["m-1-102"]
    assert good.online and good.fault is None and good.counters["timeouts"] == 0
    assert not dead.online and dead.fault is not None and dead.counters["reads_ok"] == 0
    assert set(good.counters) == {
        "reads_ok",
        "timeouts",
        "exceptions",
        "bad_responses",
        "quarantined",
    }
    assert hb.cpu_temp_c == 51.2 or hb.cpu_temp_c == 51.3
    assert hb.load_avg is not None and len(hb.load_avg) == 3
    assert hb.mem_rss_bytes is not None and hb.mem_rss_bytes > 10 * 1024 * 1024
    assert hb.mem_available_bytes is not None and hb.mem_available_bytes > 0
    assert hb.disk_free_bytes is not None and hb.disk_free_bytes > 0
    assert hb.uptime_s > 0 and hb.agent_version
    driver = f"driver:modbus-tcp:127.0.0.1:{sim.port}"
    assert {"uplink", "rules", "telemetry", "health", "control", driver} <= set(hb.tasks)
    assert all(t.running and t.failures == 0 for t in hb.tasks.values())
    assert hb.outbox_depth >= 0 and hb.config_version is None


async def test_a_gateway_with_too_many_devices_for_one_message_reports_them_all_in_turn(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    # 1,500 charging sensors heard over the (simulated) air and 10 configured but never heard:
    # one heartbeat with every device and its counters is about twice the 256 KiB that the
    # fleet accepts, and the fleet would refuse it whole.
    gw = gateway_id()
    heard = [f"A4:C1:38:{i >> 16:02X}:{(i >> 8) & 0xFF:02X}:{i & 0xFF:02X}" for i in range(1500)]
    silent = [f"A4:C1:39:00:00:{i:02X}" for i in range(10)]
    sensors = [{"sensor_id": f"ble-{m.replace(':', '').lower()}", "mac": m} for m in heard + silent]
    silent_ids = {s["sensor_id"] for s in sensors[1500:]}
    async with BleFeedServer(interval_s=3.0, seed=9) as feed, listening(mqtt_broker, gw) as up:
        for mac in heard:
            feed.add_sensor(mac)
        ble = {"source": f"feed://127.0.0.1:{feed.port}", "sensors": sensors}
        agent = make_agent(base_config(gw, tmp_path / "state", mqtt_broker, ble=ble))
        async with running(agent):
            # every heard sensor online, then three more heartbeats
            first: Heartbeat = await up.wait(
                topics.Up.HEARTBEAT, lambda m: m.devices_online == 1500, timeout=60.0
            )
            everyone = device_statuses(agent.drivers)  # what a single heartbeat would carry
            full = agent.heartbeat().model_copy(update={"devices": everyone})
            async with asyncio.timeout(20.0):
                while (
                    len(beats := [m for m in up.of(topics.Up.HEARTBEAT) if m.seq >= first.seq]) < 4
                ):
                    await asyncio.sleep(0.05)
    assert len(encode(full)) > MAX_PAYLOAD_BYTES  # what the agent would have sent before
    seen: set[str] = set()
    for hb in beats:
        # the listener decoded each against the contract, size limit included
        assert hb.devices_partial and hb.devices_total == 1510
        assert hb.devices_online == 1500 and hb.devices_faulty == 0
        assert silent_ids <= set(hb.devices)  # what needs a visit is in every heartbeat
        assert all(not hb.devices[d].online for d in silent_ids)
        assert 500 < len(hb.devices) < 1510
        seen |= set(hb.devices)
    assert seen == {s["sensor_id"] for s in sensors}  # everyone reported within a few beats


async def _doctor(config: Path, timeout: str = "3") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "doctor", "--config", str(config), "--lang", "en",
        "--device-timeout", timeout,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _row(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(name + " ")]
    return line


async def test_doctor_checks_each_part_and_says_what_to_do(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    async with ModbusMeterSim({1: constant_load(850.0)}) as sim:
        good = base_config(
            gw, tmp_path / "state", mqtt_broker, modbus_tcp=modbus_section(sim.port, meters=1)
        )
        path = tmp_path / "agent.toml"
        path.write_text(tomli_w.dumps(good))
        code, out = await _doctor(path)
        for name in ("config", "state_dir", "disk", "broker", "device m-1-101"):
            assert " ok " in _row(out, name), out
        assert code == (1 if "FAIL" in out else 0), out

        # a meter that does not answer and a broker that is not there
        bad = {
            **good,
            "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
            "modbus_tcp": modbus_section(sim.port, meters=2),
        }
        path.write_text(tomli_w.dumps(bad))
        code, out = await _doctor(path)
    assert code == 1
    assert " ok " in _row(out, "device m-1-101")
    dead = _row(out, "device m-1-102")
    assert "FAIL" in dead and "check the Modbus TCP gateway's host" in dead
    broker = _row(out, "broker")
    assert "FAIL" in broker and "broker unreachable: check mqtt.url" in broker
    assert "check(s) failed" in out

    path.write_text('gateway_id = "gw 1/#"\n')
    code, out = await _doctor(path)
    assert code == 1 and "FAIL" in _row(out, "config") and "re-enroll" in _row(out, "config")


async def test_a_failing_task_is_reported_in_the_heartbeat_and_drivers_keep_reading(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    async with ModbusMeterSim({1: constant_load(850.0)}) as sim, listening(mqtt_broker, gw) as up:
        base = base_config(
            gw, tmp_path / "state", mqtt_broker, modbus_tcp=modbus_section(sim.port, meters=1)
        )
        agent = make_agent(base)

        async def broken() -> None:
            raise OSError("cannot open /dev/ttyUSB9")

        agent.supervisor.start("driver:extra", broken)
        async with running(agent):
            hb: Heartbeat = await up.wait(
                topics.Up.HEARTBEAT,
                lambda m: "driver:extra" in m.tasks
                and m.tasks["driver:extra"].failures >= 1
                and m.devices["m-1-101"].counters.get("reads_ok", 0) > 2,
            )
    extra = hb.tasks["driver:extra"]
    assert extra.last_error == "OSError: cannot open /dev/ttyUSB9"
    assert extra.last_failure_at is not None and not extra.running
    assert hb.devices["m-1-101"].online and hb.tasks["uplink"].failures == 0
