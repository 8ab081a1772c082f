"""The Modbus meter simulator: register layouts over every transport (read with a bare pymodbus
client, not the driver), the line's byte faults, and ``run_modbus_cli`` as a process."""

from __future__ import annotations

import json
import select
import signal
import struct
import subprocess
import sys

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from firmware_sim.modbus_meters import (
    LAYOUTS,
    FaultSpec,
    LineFaults,
    ModbusMeterSim,
    Transport,
    constant_load,
    ebike_charging_load,
    household_load,
    parse_fault,
)


def _f32(words: list[int]) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", *words))[0])


def _client(sim: ModbusMeterSim) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    if sim.transport == "rtu-pty":
        return AsyncModbusSerialClient(sim.path, framer=FramerType.RTU, timeout=1, retries=0)
    framer = FramerType.SOCKET if sim.transport == "tcp" else FramerType.RTU
    return AsyncModbusTcpClient(sim.host, port=sim.port, framer=framer, timeout=1, retries=0)


@pytest.mark.parametrize("transport", ["tcp", "rtu-tcp", "rtu-pty"])
async def test_each_layout_over_each_transport(transport: Transport) -> None:
    loads = {1: constant_load(1200.0), 2: constant_load(600.0), 3: constant_load(3000.0)}
    profiles = {1: "ddsu666", 2: "sdm120", 3: "sdm630"}
    async with ModbusMeterSim(loads, profile=profiles, transport=transport) as sim:
        assert sim.endpoints()["meters"] == {"1": "ddsu666", "2": "sdm120", "3": "sdm630"}
        client = _client(sim)
        try:
            assert await client.connect()
            ddsu = await client.read_holding_registers(0x2000, count=16, device_id=1)
            sdm120 = await client.read_input_registers(0x0000, count=14, device_id=2)
            sdm630 = await client.read_input_registers(0x0000, count=0x50, device_id=3)
            wrong_fc = await client.read_holding_registers(0x0000, count=2, device_id=2)
        finally:
            client.close()
    r = ddsu.registers
    assert _f32(r[4:6]) == pytest.approx(1.2)  # kW
    assert 225 < _f32(r[0:2]) < 235 and _f32(r[14:16]) == pytest.approx(50.0, abs=0.05)
    r = sdm120.registers
    assert _f32(r[12:14]) == pytest.approx(600.0)  # W
    r = sdm630.registers
    phases = [_f32(r[0x0C + 2 * i : 0x0E + 2 * i]) for i in range(3)]
    assert _f32(r[0x34:0x36]) == pytest.approx(3000.0)
    assert sum(phases) == pytest.approx(3000.0, rel=1e-5) and min(phases) > 0
    assert all(225 < _f32(r[2 * i : 2 * i + 2]) < 235 for i in range(3))
    assert wrong_fc.isError() and wrong_fc.exception_code == 2  # an SDM answers 0x04 only
    assert set(LAYOUTS) == {"ddsu666", "sdm120", "sdm630"}


async def test_silent_exception_and_absent_slaves() -> None:
    async with ModbusMeterSim({1: constant_load(1.0), 2: constant_load(2.0)}) as sim:
        sim.set_mode(1, "silent")
        sim.set_mode(2, "exception", exception_code=6)
        client = AsyncModbusTcpClient(sim.host, port=sim.port, timeout=0.2, retries=0)
        try:
            await client.connect()
            busy = await client.read_holding_registers(0x2000, count=2, device_id=2)
            with pytest.raises(Exception, match="No response"):
                await client.read_holding_registers(0x2000, count=2, device_id=1)
            with pytest.raises(Exception, match="No response"):
                await client.read_holding_registers(0x2000, count=2, device_id=9)  # absent
        finally:
            client.close()
    assert busy.isError() and busy.exception_code == 6


REPLY = bytes(range(1, 10))


@pytest.mark.parametrize(
    ("faults", "rtu", "pieces"),
    [
        pytest.param(LineFaults(), True, [(0.0, REPLY)], id="clean"),
        pytest.param(LineFaults(noise_next=1), True, [(0.0, b"\x00" + REPLY)], id="noise"),
        pytest.param(
            LineFaults(corrupt_next=1),
            True,
            [(0.0, REPLY[:4] + bytes([REPLY[4] ^ 0x5A]) + REPLY[5:])],
            id="corrupt",
        ),
        pytest.param(
            LineFaults(split=True, split_gap_s=0.01),
            True,
            [(0.5, REPLY[:3]), (0.51, REPLY[3:6]), (0.52, REPLY[6:])],
            id="split-and-slow",
        ),
        pytest.param(LineFaults(dead=True), True, [], id="dead"),
        pytest.param(
            LineFaults(noise_next=1, corrupt_next=1), False, [(0.0, REPLY)], id="tcp-is-reliable"
        ),
    ],
)
def test_line_shapes_replies(
    faults: LineFaults, rtu: bool, pieces: list[tuple[float, bytes]]
) -> None:
    delay = 0.5 if faults.split else 0.0
    got = faults.shape(REPLY, delay_s=delay, rtu=rtu)
    assert [(pytest.approx(t), b) for t, b in got] == pieces
    # counted faults apply to the next reply only
    again = faults.shape(REPLY, delay_s=delay, rtu=rtu)
    assert again == ([] if faults.dead else got if faults.split else [(0.0, REPLY)])


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        pytest.param("silent:3", FaultSpec("silent", 3), id="silent"),
        pytest.param("exception:2", FaultSpec("exception", 2), id="exception"),
        pytest.param("slow:4:0.5", FaultSpec("slow", 4, 0.5), id="slow"),
        pytest.param("flap:5:10", FaultSpec("flap", 5, 10.0), id="flap"),
        pytest.param("noise:0.1", FaultSpec("noise", None, 0.1), id="noise"),
        pytest.param("split", FaultSpec("split"), id="split"),
    ],
)
def test_fault_arguments(text: str, spec: FaultSpec) -> None:
    assert parse_fault(text) == spec


@pytest.mark.parametrize("text", ["silent", "slow:4", "noise:2", "melt:1", "silent:x"])
def test_bad_fault_arguments(text: str) -> None:
    with pytest.raises(Exception, match="bad fault"):
        parse_fault(text)


def test_load_curves() -> None:
    charger = ebike_charging_load(100.0, plateau_w=180.0, constant_current_s=3600, taper_s=3600)
    assert charger(50.0) == 0.0
    assert charger(100.0 + 1800) == pytest.approx(180.0, abs=2)  # the plateau
    assert 3.0 < charger(100.0 + 3600 + 1800) < 180.0 * 0.5  # tapering
    assert charger(100.0 + 8000) == 3.0  # the float tail
    flat = household_load(1, 2)
    assert all(0 <= flat(t) < 1000 for t in range(0, 86_400, 600))
    assert flat(10.0) == household_load(1, 2)(10.0)  # deterministic in (seed, slave)


# -- the command line ---------------------------------------------------------------------------

_CLI = (
    "import sys; from firmware_sim.modbus_meters import run_modbus_cli; sys.exit(run_modbus_cli())"
)


def test_cli_prints_the_endpoint_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "--meters", "3", "--profile", "mixed",
         "--transport", "rtu-tcp", "--fault", "silent:2", "--load", "ebike:1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 20)
        assert readable, "no endpoint line"
        endpoint = json.loads(proc.stdout.readline())
        assert endpoint["transport"] == "rtu-tcp"
        assert endpoint["url"] == f"socket://127.0.0.1:{endpoint['port']}"
        assert endpoint["meters"] == {"1": "ddsu666", "2": "sdm120", "3": "sdm630"}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out == b""
    assert b"Traceback" not in err


def test_cli_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CLI, "--meters", "0"], capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert b"--meters" in result.stderr
