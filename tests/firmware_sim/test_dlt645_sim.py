"""The DL/T 645 bus simulator, checked byte by byte over its real transports, and its CLI."""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys

import pytest
from serial_asyncio_fast import open_serial_connection

from firmware_sim.dlt645_meter import Dlt645BusSim, SimMeter, bcd, default_load, frame

A = "000000123456"
READ_VOLTAGE = bytes.fromhex("68 56 34 12 00 00 00 68 11 04 33 34 34 35 51 16")  # domain.md
READ_ADDRESS = bytes.fromhex("68 aa aa aa aa aa aa 68 13 00 df 16")


async def _ask(url: str, request: bytes, want: int, timeout: float = 2.0) -> bytes:
    reader, writer = await open_serial_connection(url=url, baudrate=2400)
    try:
        writer.write(request)
        got = b""
        async with asyncio.timeout(timeout):
            while len(got) < want:
                got += await reader.read(512)
        return got
    finally:
        writer.close()


async def _silence(url: str, request: bytes, wait: float = 0.2) -> bytes:
    reader, writer = await open_serial_connection(url=url, baudrate=2400)
    try:
        writer.write(request)
        try:
            async with asyncio.timeout(wait):
                return await reader.read(512)
        except TimeoutError:
            return b""
    finally:
        writer.close()


def test_bcd_and_frame_helpers() -> None:
    assert bcd(220.1, 2, 1, False) == bytes.fromhex("01 22")
    assert bcd(-1.2345, 3, 4, True) == bytes.fromhex("45 23 81")
    assert bcd(1e9, 2, 1, False) == bytes.fromhex("99 99")  # clamped, as a display would
    assert frame(bytes.fromhex("56 34 12 00 00 00"), 0x11, bytes.fromhex("00 01 01 02")) == (
        READ_VOLTAGE
    )


@pytest.mark.parametrize("tcp", [False, True], ids=["pty", "tcp"])
async def test_the_domain_example_gets_the_voltage(tcp: bool) -> None:
    meter = SimMeter(A, lambda t: 100.0, nominal_voltage_v=230.0)
    async with Dlt645BusSim([meter], tcp=tcp, reply_preamble=2) as bus:
        reply = await _ask(bus.url, READ_VOLTAGE, 20)
    assert reply[:12] == bytes.fromhex("fe fe 68 56 34 12 00 00 00 68 91 06")
    assert reply[12:16] == bytes.fromhex("33 34 34 35")  # the DI echoed, +0x33
    volts = bytes((b - 0x33) & 0xFF for b in reply[16:18])
    assert 227.0 <= int(volts[::-1].hex()) / 10 <= 233.0
    assert reply[18] == sum(reply[2:18]) & 0xFF and reply[19] == 0x16
    assert bus.requests == 1 and bus.replies == 1


async def test_broadcast_address_read_with_one_meter_and_with_several() -> None:
    async with Dlt645BusSim([SimMeter(A, default_load(0))], reply_preamble=0) as bus:
        reply = await _ask(bus.url, READ_ADDRESS, 18)
    assert reply == frame(
        bytes.fromhex("56 34 12 00 00 00"), 0x93, bytes.fromhex("56 34 12 00 00 00")
    )
    meters = [SimMeter(A, default_load(0)), SimMeter("000000000002", default_load(1))]
    async with Dlt645BusSim(meters, reply_preamble=0) as bus:
        collided = await _ask(bus.url, READ_ADDRESS, 18)
    assert collided != reply and bus.faults == {"collision": 1}


async def test_unknown_data_identifier_and_queued_errors_and_silence() -> None:
    async with Dlt645BusSim([SimMeter(A, default_load(0))], reply_preamble=0) as bus:
        # DI 04000401 (the meter's own address parameter) is not simulated: "no such data"
        unknown = frame(bytes.fromhex("56 34 12 00 00 00"), 0x11, bytes.fromhex("01 04 00 04"))
        assert await _ask(bus.url, unknown, 13) == frame(
            bytes.fromhex("56 34 12 00 00 00"), 0xD1, b"\x02"
        )
        bus.error_next(A, 0x01)
        assert (await _ask(bus.url, READ_VOLTAGE, 13))[8:11] == bytes.fromhex("d1 01 34")
        bus.silence(A)
        assert await _silence(bus.url, READ_VOLTAGE) == b""
        other = READ_VOLTAGE.replace(bytes.fromhex("56 34 12"), bytes.fromhex("57 34 12"))
        bus.silence(A, False)
        assert await _silence(bus.url, other) == b""  # another address: nobody answers
        bus.corrupt_next()
        bad = await _ask(bus.url, READ_VOLTAGE, 18)
    assert bad[-2] != sum(bad[:-2]) & 0xFF
    assert bus.faults == {"error_reply": 1, "corrupt": 1}


def test_bad_buses_are_refused() -> None:
    with pytest.raises(ValueError):
        Dlt645BusSim([])
    with pytest.raises(ValueError):
        Dlt645BusSim([SimMeter(A, default_load(0)), SimMeter(A, default_load(1))])
    with pytest.raises(ValueError):
        SimMeter("12345", default_load(0))


def _line(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    assert readable, "no output"
    return proc.stdout.readline().decode().strip()


@pytest.mark.parametrize(
    ("module", "function", "args", "prefix"),
    [
        (
            "firmware_sim.dlt645_meter",
            "run_dlt645_cli",
            ["--meters", "2", "--fault-rate", "0.1"],
            "/dev/",
        ),
        (
            "firmware_sim.dlt645_meter",
            "run_dlt645_cli",
            ["--tcp", "127.0.0.1:0"],
            "socket://127.0.0.1:",
        ),
        (
            "firmware_sim.card_reader",
            "run_card_reader_cli",
            ["--format", "em4100", "--every", "0.05"],
            "/dev/",
        ),
    ],
    ids=["dlt645-pty", "dlt645-tcp", "card-reader"],
)
def test_cli_prints_the_endpoint_and_stops_on_sigterm(
    module: str, function: str, args: list[str], prefix: str
) -> None:
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert _line(proc).startswith(prefix)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
