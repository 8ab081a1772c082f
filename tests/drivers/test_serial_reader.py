"""SerialCardReader against the simulated reader on a real pseudo-terminal (and a TCP port)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from contract.events import DeviceFault
from drivers.serial_card import CardRead, SerialCardReader
from firmware_sim.card_reader import CardReaderSim
from tests.drivers.helpers import StepClock, collect_until, consuming, wait_for

READER = "b1-entrance"


def _cards(events: list[CardRead | DeviceFault]) -> list[str]:
    return [e.number for e in events if isinstance(e, CardRead)]


async def _open(
    reader: SerialCardReader, events: AsyncIterator[CardRead | DeviceFault]
) -> asyncio.Future[CardRead | DeviceFault]:
    """Start reading and wait until the port is open (pyserial flushes input on open)."""
    first = asyncio.ensure_future(anext(events))
    await wait_for(lambda: reader.device_status()[READER].online, what="port open")
    return first


async def test_swipes_arrive_in_order(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = StepClock()
    async with CardReaderSim() as sim:
        assert sim.path.startswith("/dev/")
        reader = SerialCardReader(url=sim.path, reader_id=READER, clock=clock)
        async with aclosing(reader.events()) as events:
            first = await _open(reader, events)
            for number in ("3104992211", "0004471283", "04A1B2C3D4"):
                await sim.swipe(number)
            got = [await first]
            got += await collect_until(events, lambda seen: len(seen) >= 2)
    assert got == [
        CardRead(got[0].ts, READER, "3104992211"),
        CardRead(got[1].ts, READER, "0004471283"),
        CardRead(got[2].ts, READER, "04A1B2C3D4"),
    ]
    assert got[0].ts < got[1].ts < got[2].ts
    assert reader.counters.snapshot() == {"frames_ok": 3, "garbage": 0, "overlong": 0, "reopen": 0}
    assert reader.device_status()[READER].last_seen == got[2].ts
    assert "3104992211" not in caplog.text


async def test_garbage_is_counted_and_skipped_and_split_frames_join() -> None:
    async with CardReaderSim() as sim:
        reader = SerialCardReader(url=sim.path, reader_id=READER)
        async with aclosing(reader.events()) as events:
            first = await _open(reader, events)
            await sim.send_raw(b"\x00\xff\x13noise\r\n")
            await sim.send_raw(b"9" * 40 + b"\r\n")
            await sim.send_raw(b"31049")
            await asyncio.sleep(0.05)
            await sim.send_raw(b"92211\r\n")
            await sim.swipe("0004471283")
            got = [await first]
            got += await collect_until(events, lambda seen: len(seen) >= 1)
    assert _cards(got) == ["3104992211", "0004471283"]
    assert reader.counters["garbage"] == 1
    assert reader.counters["overlong"] == 1
    assert reader.counters["frames_ok"] == 2


async def test_missing_port_faults_once_then_reopens_when_it_appears() -> None:
    # A TCP "serial port" (pyserial's socket:// URL) that is not there yet, then drops.
    lines: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await lines.put(w)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

    reader = SerialCardReader(
        url=f"socket://127.0.0.1:{port}",
        reader_id=READER,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    async with aclosing(reader.events()) as events:
        got = await collect_until(events, lambda seen: len(seen) >= 1)
        assert isinstance(got[0], DeviceFault) and got[0].active
        assert got[0].fault == "port_unavailable"
        assert not reader.device_status()[READER].online

        server = await asyncio.start_server(on_client, "127.0.0.1", port)
        try:
            back = await collect_until(events, lambda seen: len(seen) >= 1)
            assert isinstance(back[0], DeviceFault) and not back[0].active
            writer = await lines.get()
            writer.write(b"3104992211\r\n")
            read = await collect_until(events, lambda seen: len(seen) >= 1)
            assert _cards(read) == ["3104992211"]

            writer.close()  # the line drops
            lost = await collect_until(events, lambda seen: len(seen) >= 1)
            assert isinstance(lost[0], DeviceFault) and lost[0].active
            again = await collect_until(events, lambda seen: len(seen) >= 1)
            assert isinstance(again[0], DeviceFault) and not again[0].active
            writer = await lines.get()
            writer.write(b"0004471283\n")
            read = await collect_until(events, lambda seen: len(seen) >= 1)
            assert _cards(read) == ["0004471283"]
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
    assert reader.counters["reopen"] >= 2


async def test_port_that_vanishes_faults_and_keeps_trying(tmp_path: Path) -> None:
    # Opened through a stable link, as a real reader is (/dev/serial/by-id/...): the pty's own
    # number may be handed to another pseudo-terminal once this one is gone.
    link = tmp_path / "ttyCARD0"
    got: list[CardRead | DeviceFault] = []

    async def consume(reader: SerialCardReader) -> None:
        async for event in reader.events():
            got.append(event)

    async with CardReaderSim() as sim:
        link.symlink_to(sim.path)
        reader = SerialCardReader(
            url=str(link), reader_id=READER, backoff_initial_s=0.05, backoff_max_s=0.1
        )
        task = asyncio.create_task(consume(reader))
        await wait_for(lambda: reader.device_status()[READER].online, what="port open")
        await sim.swipe("3104992211")
        await wait_for(lambda: bool(got), what="a swipe")
    link.unlink()  # the device is unplugged: its link goes with it
    try:
        await wait_for(lambda: reader.counters["reopen"] >= 2, what="reopen attempts")
        assert [(e.fault, e.active) for e in got if isinstance(e, DeviceFault)] == [
            ("port_unavailable", True)
        ]
        assert _cards(got) == ["3104992211"]
        assert not reader.device_status()[READER].online
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_second_reader_cannot_open_the_same_port() -> None:
    async with CardReaderSim() as sim:
        first = SerialCardReader(url=sim.path, reader_id=READER)
        second = SerialCardReader(url=sim.path, reader_id="other", backoff_initial_s=0.05)
        async with consuming(first.events()) as a:
            await wait_for(lambda: first.device_status()[READER].online, what="port open")
            async with consuming(second.events()) as b:
                faults = await b.until(lambda seen: len(seen) >= 1)
                await sim.swipe("3104992211")
                await a.until(lambda seen: len(seen) >= 1)
    assert isinstance(faults[0], DeviceFault) and faults[0].fault == "port_unavailable"
    assert "lock" in faults[0].detail
    assert _cards(a.seen) == ["3104992211"]
    assert not _cards(b.seen)
