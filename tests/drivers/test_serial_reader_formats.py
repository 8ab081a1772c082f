"""SerialCardReader in every frame format against the simulated reader on a real pty, faults
included (garbage, split frames, bad checksums / parity)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from contract.events import DeviceFault
from drivers.serial_card import CardRead, SerialCardReader
from firmware_sim.card_reader import CardReaderSim
from tests.drivers.helpers import collect_until, wait_for

READER = "b1-entrance"


async def _open(
    reader: SerialCardReader, events: AsyncIterator[CardRead | DeviceFault]
) -> asyncio.Future[CardRead | DeviceFault]:
    first = asyncio.ensure_future(anext(events))
    await wait_for(lambda: reader.device_status()[READER].online, what="port open")
    return first


# format, two card numbers in that format, expected delivered numbers, counters after the run
CASES = [
    pytest.param(
        "decimal",
        ["3104992211", "0004471283"],
        ["3104992211", "0004471283"],
        {"frames_ok": 2, "garbage": 2, "overlong": 0, "reopen": 0},  # corrupt digit -> garbage
        id="decimal",
    ),
    pytest.param(
        "hex",
        ["04A1B2C3D4", "DEADBEEF01"],
        ["04A1B2C3D4", "DEADBEEF01"],
        {"frames_ok": 2, "garbage": 2, "overlong": 0, "reopen": 0},
        id="hex",
    ),
    pytest.param(
        "em4100",
        ["0F0012D687", "1A2B3C4D5E"],
        ["0F0012D687", "1A2B3C4D5E"],
        {"frames_ok": 2, "garbage": 1, "overlong": 0, "reopen": 0, "bad_checksum": 1},
        id="em4100",
    ),
    pytest.param(
        "wiegand",
        ["0001234567", "0000065537"],
        ["0001234567", "0000065537"],
        {
            "frames_ok": 2,
            "garbage": 1,
            "overlong": 0,
            "reopen": 0,
            "bad_parity": 1,
            "raw_wiegand": 0,
        },
        id="wiegand",
    ),
]


@pytest.mark.parametrize(("fmt", "cards", "expected", "counters"), CASES)
async def test_frames_faults_and_counters(
    fmt: str,
    cards: list[str],
    expected: list[str],
    counters: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with CardReaderSim(frame_format=fmt) as sim:  # type: ignore[arg-type]
        reader = SerialCardReader(url=sim.path, reader_id=READER, frame_format=fmt)  # type: ignore[arg-type]
        async with aclosing(reader.events()) as events:
            first = await _open(reader, events)
            await sim.send_garbage(random.Random(1))
            await sim.swipe_corrupt(cards[0])
            await sim.swipe_split(cards[0])
            await sim.swipe(cards[1])
            got = [await first]
            got += await collect_until(events, lambda seen: len(seen) >= 1)
    assert [e.number for e in got if isinstance(e, CardRead)] == expected
    assert reader.counters.snapshot() == counters
    assert all(number not in caplog.text for number in cards)


async def test_em4100_terminator_variants_all_read() -> None:
    numbers = []
    for terminator in (b"\r\n", b"\r", b"\n", b""):
        async with CardReaderSim(frame_format="em4100", em4100_terminator=terminator) as sim:
            reader = SerialCardReader(url=sim.path, reader_id=READER, frame_format="em4100")
            async with aclosing(reader.events()) as events:
                first = await _open(reader, events)
                await sim.swipe("0F0012D687")
                event = await first
                assert isinstance(event, CardRead)
                numbers.append(event.number)
    assert numbers == ["0F0012D687"] * 4


async def test_wiegand_lines_carry_facility_and_card_and_keypad_codes_are_raw() -> None:
    async with CardReaderSim(frame_format="wiegand", wiegand_format="w34") as sim:
        reader = SerialCardReader(
            url=sim.path, reader_id=READER, frame_format="wiegand", w34_uid=True
        )
        async with aclosing(reader.events()) as events:
            first = await _open(reader, events)
            await sim.send_raw(b"10110100\r\n")  # an 8-bit keypad code
            await sim.swipe(f"{0x12345678:010d}")
            event = await first
    assert event == CardRead(event.ts, READER, f"{0x12345678:010d}", None, 0x12345678)
    assert reader.counters["raw_wiegand"] == 1
