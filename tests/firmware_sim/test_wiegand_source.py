"""The Wiegand edge generator: bit layouts, realistic timing, and its faults."""

from __future__ import annotations

import random

import pytest

from firmware_sim.card_reader import CardReaderSim, em4100_frame
from firmware_sim.wiegand_source import SimEdge, WiegandEdgeSim, frame_edges, pack, split_number


@pytest.mark.parametrize(
    ("fmt", "facility", "card", "bits"),
    [
        pytest.param("h10301", 1, 1, "10000000100000000000000010", id="h10301-textbook"),
        pytest.param("h10301", 0, 0, "00000000000000000000000001", id="h10301-zero"),
        pytest.param("c1k35", 0, 0, "0" * 34 + "1", id="c1k35-zero"),
        pytest.param("w34", 0, 0, "0" * 33 + "1", id="w34-zero"),
        pytest.param("h10304", 0, 0, "0" * 36 + "1", id="h10304-zero"),
    ],
)
def test_pack(fmt: str, facility: int, card: int, bits: str) -> None:
    assert pack(fmt, facility, card) == (int(bits, 2), len(bits))  # type: ignore[arg-type]


def test_number_split_and_range() -> None:
    assert split_number("h10301", 18 * 65536 + 54919) == (18, 54919)
    with pytest.raises(ValueError):
        pack("h10301", 256, 0)


def test_edges_have_realistic_timing() -> None:
    bits, count = pack("h10301", 18, 54919)
    edges = frame_edges(bits, count, t0_ns=0, rng=random.Random(3))
    assert len(edges) == 2 * count
    falling = [e for e in edges if e.falling]
    rising = [e for e in edges if not e.falling]
    widths = [r.t_ns - f.t_ns for f, r in zip(falling, rising, strict=True)]
    assert all(40_000 <= w <= 60_000 for w in widths)  # 50 µs ± jitter: inside 20-100 µs
    gaps = [b.t_ns - a.t_ns for a, b in zip(rising, falling[1:], strict=False)]
    assert all(200_000 <= g <= 20_000_000 for g in gaps)
    assert "".join(str(e.line) for e in falling) == format(bits, "026b")
    assert all(f.line == r.line for f, r in zip(falling, rising, strict=True))


def test_edge_faults() -> None:
    bits, count = pack("h10301", 18, 54919)
    assert len(frame_edges(bits, count, t0_ns=0, fault="missing_bit")) == 2 * (count - 1)
    flipped = [e.line for e in frame_edges(bits, count, t0_ns=0, fault="parity") if e.falling]
    assert flipped[-1] != (bits & 1)
    glitched = frame_edges(bits, count, t0_ns=0, fault="glitch")
    assert len(glitched) == 2 * count + 2
    long = frame_edges(bits, count, t0_ns=0, fault="long_pulse")
    assert max(b.t_ns - a.t_ns for a, b in zip(long[::2], long[1::2], strict=True)) == 400_000


async def test_the_edge_sim_is_an_async_source_with_gaps_between_frames() -> None:
    sim = WiegandEdgeSim()
    await sim.swipe(facility=1, card=1)
    await sim.swipe(number=65537)
    sim.close()
    edges: list[SimEdge] = [e async for e in sim]
    assert len(edges) == 104 and sim.frames == 2
    assert edges[52].t_ns - edges[51].t_ns >= 100_000_000


def test_card_reader_frames() -> None:
    assert em4100_frame("0F0012D687") == b"\x020F0012D6874C\r\n\x03"
    assert em4100_frame("0F0012D687", terminator=b"") == b"\x020F0012D6874C\x03"
    assert CardReaderSim(frame_format="wiegand").frame("0000065537") == (
        b"10000000100000000000000010\r\n"
    )
    assert CardReaderSim(frame_format="hex").frame("04a1b2c3d4") == b"04A1B2C3D4\r\n"
    with pytest.raises(ValueError):
        CardReaderSim(frame_format="bcd")  # type: ignore[arg-type]
