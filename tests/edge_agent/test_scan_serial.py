"""Installer tools: DL/T 645 address scan and the live card frame view, against the simulators."""

from __future__ import annotations

import asyncio
import logging
import random
import tomllib

import pytest
import serial

from edge_agent.scan_serial import (
    Dlt645ScanResult,
    ScanError,
    ScannedFrame,
    as_config_snippet,
    dlt645_config_snippet,
    mask_card,
    scan_dlt645,
    scan_serial,
)
from firmware_sim.card_reader import CardReaderSim
from firmware_sim.dlt645_meter import Dlt645BusSim, SimMeter, default_load

A1, A2, A3 = "000000123456", "000000000002", "201907150003"


@pytest.mark.parametrize("tcp", [False, True], ids=["pty", "socket"])
async def test_one_meter_answers_the_broadcast(tcp: bool) -> None:
    async with Dlt645BusSim([SimMeter(A1, default_load(0))], tcp=tcp) as bus:
        assert await scan_dlt645(bus.url, timeout_s=0.5) == [A1]


async def test_several_meters_collide_so_their_addresses_are_probed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    meters = [SimMeter(a, default_load(i)) for i, a in enumerate((A1, A2, A3))]
    async with Dlt645BusSim(meters) as bus:
        bus.silence(A3)
        found = await scan_dlt645(bus.url, timeout_s=0.3, probe=[A2, A1, A3, "000000000009"])
    assert found == [A2, A1]  # sorted; the silent one and the absent one are not there
    assert "several meters on the bus" in caplog.text


def test_dlt645_snippet_is_agent_config() -> None:
    text = as_config_snippet(Dlt645ScanResult("/dev/ttyUSB1", 2400, (A1, A2)))
    assert text == dlt645_config_snippet("/dev/ttyUSB1", [A1, A2])
    bus = tomllib.loads(text)["dlt645"][0]
    assert bus["url"] == "/dev/ttyUSB1" and bus["baudrate"] == 2400 and bus["parity"] == "E"
    assert [m["address"] for m in bus["meters"]] == [A1, A2]
    assert bus["meters"][0]["meter_id"] == f"m-{A1}"


def test_card_numbers_are_masked() -> None:
    assert mask_card("3104992211") == "******2211"
    assert mask_card("0F0012D687") == "******D687"
    assert mask_card("1234") == "****"


async def test_scan_serial_shows_masked_frames_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    shown: list[ScannedFrame] = []
    async with CardReaderSim(frame_format="em4100") as sim:
        scan = asyncio.create_task(scan_serial(sim.path, 9600, "em4100", 0.6, shown.append))
        await asyncio.sleep(0.2)  # the port is open (opening flushes the input)
        await sim.swipe("0F0012D687")
        await sim.swipe_corrupt("1A2B3C4D5E")
        await sim.send_garbage(random.Random(2))
        await sim.swipe_split("1A2B3C4D5E")
        result = await scan
    assert [f.text for f in shown] == [
        "card ******D687",
        "bad checksum",
        "garbage",
        "card ******4D5E",
    ]
    assert result.counts == {"card": 2, "bad_checksum": 1, "garbage": 1}
    assert result.suggested_format is None
    assert any("termination" in h for h in result.hints)
    assert "0F0012D687" not in caplog.text
    reader = tomllib.loads(as_config_snippet(result, reader_id="b1-gate"))["serial_readers"][0]
    assert reader == {
        "reader_id": "b1-gate",
        "url": sim.path,
        "baudrate": 9600,
        "frame_format": "em4100",
    }


async def test_scan_serial_suggests_the_format_that_works() -> None:
    shown: list[ScannedFrame] = []
    async with CardReaderSim(frame_format="wiegand") as sim:
        scan = asyncio.create_task(scan_serial(sim.path, 9600, "em4100", 0.5, shown.append))
        await asyncio.sleep(0.2)
        await sim.swipe("0001234567")
        await sim.swipe("0000065537")
        result = await scan
    assert result.cards == 0 and result.counts.get("garbage", 0) >= 1
    assert result.suggested_format == "wiegand"
    assert any("frame_format = 'wiegand'" in h for h in result.hints)
    assert tomllib.loads(as_config_snippet(result))["serial_readers"][0]["frame_format"] == (
        "wiegand"
    )


async def test_a_port_held_by_the_agent_is_a_clear_error() -> None:
    async with CardReaderSim() as sim:
        held = serial.Serial(sim.path, exclusive=True)
        try:
            with pytest.raises(ScanError, match="stop it first"):
                await scan_serial(sim.path, 9600, "decimal", 0.1, print)
            with pytest.raises(ScanError, match="stop it first"):
                await scan_dlt645(sim.path, timeout_s=0.1, parity="N")
        finally:
            held.close()
    with pytest.raises(ScanError, match="12 digits"):
        await scan_dlt645("/dev/null", probe=["123"])
