"""Wiegand: bit formats and parity, the edge decoder (timing, idle, noise), fuzz, the adapter.

GPIO has no software peer: the adapter is fed by the edge simulator (firmware_sim.wiegand_source)
through its ``edge_source`` injection point.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import aclosing
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.events import DeviceFault
from drivers.base import DriverConfigError
from drivers.events import CardRead
from drivers.wiegand import (
    ALL_FORMATS,
    FORMATS,
    Edge,
    FormatName,
    RawWiegand,
    WiegandCard,
    WiegandDecoder,
    WiegandError,
    WiegandFrame,
    WiegandReader,
    WiegandTiming,
    decode_bits,
    encode_bits,
    gpiod_available,
)
from firmware_sim.wiegand_source import SimEdge, WiegandEdgeSim, frame_edges, pack
from tests.drivers.helpers import StepClock, collect_until

IDLE = 25_000_000

# -- bit frames ---------------------------------------------------------------------------------

H10301_1_1 = 0b10000000100000000000000010  # facility 1, card 1: the textbook example


@pytest.mark.parametrize(
    ("bits", "count", "frame"),
    [
        pytest.param(H10301_1_1, 26, WiegandCard("h10301", 1, 1, 65537), id="h10301-fc1-card1"),
        pytest.param(
            encode_bits("h10301", 18, 54919)[0],
            26,
            WiegandCard("h10301", 18, 54919, 1234567),
            id="h10301-018,54919",
        ),
        pytest.param(
            encode_bits("w34", 0xABCD, 0x1234)[0],
            34,
            WiegandCard("w34", 0xABCD, 0x1234, 0xABCD1234),
            id="w34",
        ),
        pytest.param(
            encode_bits("c1k35", 0xFFF, 0xFFFFF)[0],
            35,
            WiegandCard("c1k35", 0xFFF, 0xFFFFF, 0xFFFFFFFF),
            id="c1k35-all-ones",
        ),
        pytest.param(
            encode_bits("h10304", 1, 2)[0],
            37,
            WiegandCard("h10304", 1, 2, (1 << 19) | 2),
            id="h10304",
        ),
    ],
)
def test_known_frames_decode(bits: int, count: int, frame: WiegandCard) -> None:
    assert decode_bits(bits, count) == frame


def test_card_number_convention() -> None:
    card = decode_bits(H10301_1_1, 26)
    assert isinstance(card, WiegandCard)
    assert card.number == "0000065537"  # facility * 65536 + card, 10 digits as printed
    big = decode_bits(*encode_bits("h10304", 65535, 524287))
    assert isinstance(big, WiegandCard) and big.number == str((1 << 35) - 1)  # 11 digits
    assert "65537" not in repr(card)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_round_trip_and_every_single_bit_error_is_caught(fmt: FormatName) -> None:
    rng = random.Random(fmt)
    f_width, c_width = FORMATS[fmt].facility[1], FORMATS[fmt].card[1]
    for _ in range(50):
        facility, card = rng.randrange(1 << f_width), rng.randrange(1 << c_width)
        bits, count = encode_bits(fmt, facility, card)
        decoded = decode_bits(bits, count)
        assert isinstance(decoded, WiegandCard)
        assert (decoded.format, decoded.facility, decoded.card) == (fmt, facility, card)
        for i in range(count):
            assert decode_bits(bits ^ (1 << i), count) == WiegandError("parity", count)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_layouts_agree_with_the_simulators_independent_packer(fmt: FormatName) -> None:
    rng = random.Random(fmt + "x")
    f_width, c_width = FORMATS[fmt].facility[1], FORMATS[fmt].card[1]
    for _ in range(200):
        facility, card = rng.randrange(1 << f_width), rng.randrange(1 << c_width)
        assert encode_bits(fmt, facility, card) == pack(fmt, facility, card)


def test_corporate_1000_parity_masks() -> None:
    # P2 covers positions 3,4,6,7,...; P35 covers 2,3,5,6,...; P1 covers all of 2-35.
    spec = {p.position: p for p in FORMATS["c1k35"].parity}
    assert spec[2].covers[:6] == (3, 4, 6, 7, 9, 10) and spec[2].covers[-2:] == (33, 34)
    assert spec[35].covers[:6] == (2, 3, 5, 6, 8, 9) and spec[35].covers[-2:] == (32, 33)
    assert spec[1].covers == tuple(range(2, 36))
    # company 0, card 0: P2 even over zeros = 0, P35 odd over zeros = 1, P1 odd over one 1 = 0
    assert encode_bits("c1k35", 0, 0) == (1, 35)


@pytest.mark.parametrize(
    ("bits", "count"),
    [
        pytest.param(0b1011, 4, id="4-bit-keypad"),
        pytest.param(0b11100001, 8, id="8-bit-keypad"),
        pytest.param(H10301_1_1 >> 1, 25, id="26-bit-missing-one"),
        pytest.param(1 << 39, 40, id="40-bit"),
    ],
)
def test_unknown_lengths_are_raw(bits: int, count: int) -> None:
    assert decode_bits(bits, count) == RawWiegand(bits, count)


def test_formats_can_be_restricted_and_w34_read_as_uid() -> None:
    bits, count = encode_bits("w34", 0x1234, 0x5678)
    assert decode_bits(bits, count, formats=("h10301",)) == RawWiegand(bits, 34)
    assert decode_bits(bits, count, w34_uid=True) == WiegandCard(
        "w34", None, 0x12345678, 0x12345678
    )
    assert decode_bits(1, 200) == WiegandError("overlong", 200)
    with pytest.raises(ValueError):
        encode_bits("h10301", 256, 0)


# -- the edge decoder ---------------------------------------------------------------------------


def _edges(sim_edges: list[SimEdge]) -> list[Edge]:
    return [Edge(e.t_ns, 1 if e.line else 0, e.falling) for e in sim_edges]


def _run(edges: list[Edge], decoder: WiegandDecoder | None = None) -> list[WiegandFrame]:
    decoder = decoder or WiegandDecoder()
    out = [f for e in edges for f in decoder.feed(e)]
    if decoder.deadline_ns is not None:
        out += decoder.tick(decoder.deadline_ns)
    return out


def _swipe(
    fmt: FormatName = "h10301", facility: int = 18, card: int = 54919, **kw: object
) -> list[Edge]:
    bits, count = pack(fmt, facility, card)
    return _edges(frame_edges(bits, count, t0_ns=1_000_000_000, **kw))  # type: ignore[arg-type]


def test_a_frame_ends_only_after_the_idle_time() -> None:
    edges = _swipe()
    decoder = WiegandDecoder()
    for edge in edges:  # every strict prefix: nothing yet, a frame in progress
        assert decoder.feed(edge) == []
        assert decoder.deadline_ns == edge.t_ns + IDLE
    deadline = decoder.deadline_ns
    assert deadline is not None
    assert decoder.tick(deadline - 1) == []
    assert decoder.tick(deadline) == [WiegandCard("h10301", 18, 54919, 1234567)]
    assert decoder.deadline_ns is None
    assert decoder.tick(deadline + IDLE) == []


def test_the_next_frame_ends_the_previous_one_and_idle_is_configurable() -> None:
    first, second = _swipe(card=1), _swipe(card=2)
    shift = first[-1].t_ns + 30_000_000 - second[0].t_ns  # 30 ms later
    second = [Edge(e.t_ns + shift, e.line, e.falling) for e in second]
    decoder = WiegandDecoder()
    out = [f for e in first + second for f in decoder.feed(e)]
    assert [f.card for f in out if isinstance(f, WiegandCard)] == [1]
    # with a 50 ms idle time the 30 ms pause does not end the frame: 52 bits, no format
    assert _run(first + second, WiegandDecoder(idle_ns=50_000_000)) == [
        RawWiegand(_concat(first + second), 52)
    ]


def _concat(edges: list[Edge]) -> int:
    bits = 0
    for e in edges:
        if e.falling:
            bits = bits << 1 | e.line
    return bits


def _stuck_line() -> list[Edge]:
    edges = _swipe()
    return edges[:-1]  # the last pulse never ends: D0 or D1 held low


def _both_low() -> list[Edge]:
    edges = _swipe()
    t = edges[10].t_ns + 10_000  # the other line goes low while this pulse is still low
    other: Literal[0, 1] = 0 if edges[10].line else 1
    return [*edges[:11], Edge(t, other, True), Edge(t + 40_000, other, False), *edges[11:]]


def _backwards() -> list[Edge]:
    edges = _swipe()
    return [*edges[:20], Edge(edges[19].t_ns - 5_000_000, 0, True), *edges[20:]]


def _too_fast() -> list[Edge]:
    bits, count = pack("h10301", 18, 54919)
    return _edges(frame_edges(bits, count, t0_ns=0, period_us=150.0))  # gaps of 100 µs


def _narrow_pulses() -> list[Edge]:
    bits, count = pack("h10301", 18, 54919)
    return _edges(frame_edges(bits, count, t0_ns=0, pulse_us=8.0, jitter_us=1.0))


MALFORMED_EDGES = [
    pytest.param(_swipe(fault="parity"), WiegandError("parity", 26), id="bad-parity"),
    pytest.param(_swipe(fault="missing_bit"), "raw25", id="missing-bit-raw"),
    pytest.param(
        _swipe("c1k35", 7, 7, fault="missing_bit"), WiegandError("parity", 34), id="missing-bit-34"
    ),
    pytest.param(_swipe(fault="glitch"), WiegandError("noise", 27), id="noise-glitch"),
    pytest.param(_swipe(fault="long_pulse"), WiegandError("timing", 26), id="pulse-too-long"),
    pytest.param(_stuck_line(), WiegandError("timing", 26), id="line-stuck-low"),
    pytest.param(_both_low(), WiegandError("noise", 27), id="both-lines-low"),
    pytest.param(_backwards(), WiegandError("timing", 27), id="time-goes-backwards"),
    pytest.param(_too_fast(), WiegandError("noise", 26), id="gaps-too-short"),
    pytest.param(_narrow_pulses(), WiegandError("noise", 26), id="pulses-too-narrow"),
]


@pytest.mark.parametrize(("edges", "expected"), MALFORMED_EDGES)
def test_malformed_edge_streams(edges: list[Edge], expected: object) -> None:
    out = _run(edges)
    if expected == "raw25":
        assert len(out) == 1 and isinstance(out[0], RawWiegand) and out[0].count == 25
    else:
        assert out == [expected]


def test_decoder_resyncs_after_a_noisy_frame() -> None:
    noisy = _swipe(fault="glitch")
    good = [Edge(e.t_ns + 100_000_000, e.line, e.falling) for e in _swipe(card=77)]
    rising_first = [Edge(good[0].t_ns - 50_000_000, 1, False)]  # a line settling: ignored
    out = _run(noisy + rising_first + good)
    assert out == [WiegandError("noise", 27), WiegandCard("h10301", 18, 77, 18 * 65536 + 77)]


def test_falling_edge_only_sources() -> None:
    falling = [e for e in _swipe() if e.falling]
    decoder = WiegandDecoder(timing=WiegandTiming(edges="falling"))
    assert _run(falling, decoder) == [WiegandCard("h10301", 18, 54919, 1234567)]
    # in "both" mode the same stream is a string of pulses that never end
    assert _run(falling) == [WiegandError("noise", 26)]


def test_bad_decoder_arguments() -> None:
    with pytest.raises(ValueError):
        WiegandDecoder(idle_ns=0)
    with pytest.raises(ValueError):
        WiegandDecoder(formats=("h10302",))  # type: ignore[arg-type]


# -- fuzz ---------------------------------------------------------------------------------------


def _edges_from_bytes(buf: bytes) -> list[Edge]:
    """Three bytes per edge: line, kind and a time step on one of four scales."""
    t = 10**12
    edges = []
    for i in range(0, len(buf) - 2, 3):
        head, step = buf[i], buf[i + 1] << 8 | buf[i + 2]
        t += step * (20, 100, 1_000, 10)[(head >> 2) & 3]
        edges.append(Edge(t, head & 1, not head & 2))  # type: ignore[arg-type]
    return edges


def _assert_genuine(frames: list[WiegandFrame], edges: list[Edge]) -> None:
    lines = "".join(str(e.line) for e in edges if e.falling)
    for frame in frames:
        if isinstance(frame, WiegandCard):
            count = FORMATS[frame.format].length
            assert frame.facility is not None
            assert pack(frame.format, frame.facility, frame.card) == (frame.bits, count)
            assert format(frame.bits, f"0{count}b") in lines


@settings(max_examples=10_000, deadline=None)
@given(st.binary(max_size=300))
def test_random_edges_never_raise_and_only_genuine_cards_come_out(buf: bytes) -> None:
    edges = _edges_from_bytes(buf)
    frames = _run(edges)
    _assert_genuine(frames, edges)


@settings(max_examples=1_000, deadline=None)
@given(
    st.sampled_from(ALL_FORMATS),
    st.integers(0, 4095),
    st.integers(0, 65535),
    st.sampled_from([None, "missing_bit", "parity", "glitch", "long_pulse"]),
    st.lists(st.integers(0, 60), max_size=3),
    st.integers(0, 2**32),
)
def test_perturbed_real_frames_never_yield_a_wrong_card(
    fmt: FormatName,
    facility: int,
    card: int,
    fault: object,
    drop: list[int],
    seed: int,
) -> None:
    facility &= (1 << FORMATS[fmt].facility[1]) - 1
    edges = _edges(
        frame_edges(
            *pack(fmt, facility, card),
            t0_ns=0,
            rng=random.Random(seed),
            fault=fault,  # type: ignore[arg-type]
        )
    )
    for i in sorted(set(drop), reverse=True):
        if i < len(edges):
            del edges[i]
    frames = _run(edges)
    _assert_genuine(frames, edges)
    if fault is None and not drop:
        assert frames == [decode_bits(*pack(fmt, facility, card))]


# -- the adapter --------------------------------------------------------------------------------

READER = "b1-gate"


def _reader(sim: WiegandEdgeSim, **kw: object) -> WiegandReader:
    return WiegandReader(
        d0=17,
        d1=27,
        reader_id=READER,
        edge_source=sim,
        clock=StepClock(),
        **kw,  # type: ignore[arg-type]
    )


async def test_swipes_in_every_format_arrive_as_card_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = WiegandEdgeSim()
    reader = _reader(sim)
    async with aclosing(reader.events()) as events:
        await sim.swipe(facility=18, card=54919)
        await sim.swipe(facility=0x1234, card=0x5678, fmt="w34")
        await sim.swipe(facility=4000, card=1_000_000, fmt="c1k35")
        await sim.swipe(facility=65000, card=500_000, fmt="h10304")
        got = await collect_until(events, lambda seen: len(seen) >= 4)
        status = reader.device_status()[READER]
    assert [(e.number, e.facility, e.card) for e in got if isinstance(e, CardRead)] == [
        ("0001234567", 18, 54919),
        (f"{0x12345678:010d}", 0x1234, 0x5678),
        (f"{(4000 << 20) | 1_000_000:010d}", 4000, 1_000_000),
        (f"{(65000 << 19) | 500_000:010d}", 65000, 500_000),
    ]
    assert reader.counters["frames_ok"] == 4
    assert status.online and status.last_seen == got[-1].ts
    assert "1234567" not in caplog.text and "54919" not in caplog.text


async def test_faults_are_counted_and_good_swipes_still_arrive() -> None:
    sim = WiegandEdgeSim()
    reader = _reader(sim)
    async with aclosing(reader.events()) as events:
        await sim.swipe(number=1, fault="parity")
        await sim.swipe(number=2, fault="missing_bit")
        await sim.swipe(number=3, fault="glitch")
        await sim.swipe(number=4, fault="long_pulse")
        await sim.send_bits(0b10110100, 8)  # a keypad key: raw, never a card
        await sim.swipe(number=1234567)
        got = await collect_until(events, lambda seen: len(seen) >= 1)
    assert got == [CardRead(got[0].ts, READER, "0001234567", 18, 54919)]
    assert reader.counters.snapshot() == {
        "frames_ok": 1,
        "parity_errors": 1,
        "noise": 1,
        "bad_timing": 1,
        "overlong": 0,
        "raw_frames": 2,  # the 25-bit frame with a missing bit, and the keypad code
        "restarts": 0,
    }


async def test_real_time_edges_end_frames_on_the_idle_timeout() -> None:
    sim = WiegandEdgeSim(realtime=True, period_us=1500.0)
    reader = _reader(sim, idle_ms=30)
    loop = asyncio.get_running_loop()
    async with aclosing(reader.events()) as events:
        started = loop.time()
        await sim.swipe(number=1234567)
        got = await collect_until(events, lambda seen: len(seen) >= 1)
        elapsed = loop.time() - started
        await sim.swipe(number=7654321)
        got += await collect_until(events, lambda seen: len(seen) >= 1)
    assert [e.number for e in got if isinstance(e, CardRead)] == ["0001234567", "0007654321"]
    assert 0.065 <= elapsed < 2.0  # 26 bits of 1.5 ms, then 30 ms of quiet


async def test_a_source_that_ends_faults_once_and_recovers() -> None:
    sim = WiegandEdgeSim()
    reader = _reader(sim, backoff_initial_s=0.01, backoff_max_s=0.02)
    async with aclosing(reader.events()) as events:
        await sim.swipe(number=5)
        first = await collect_until(events, lambda seen: len(seen) >= 1)
        sim.close()
        fault = await collect_until(events, lambda seen: len(seen) >= 1)
        assert not reader.device_status()[READER].online
        await sim.swipe(number=6)
        back = await collect_until(events, lambda seen: len(seen) >= 2)
    assert isinstance(first[0], CardRead) and first[0].number == "0000000005"
    assert isinstance(fault[0], DeviceFault)
    assert (fault[0].fault, fault[0].active) == ("gpio_unavailable", True)
    assert isinstance(back[0], DeviceFault) and not back[0].active
    assert isinstance(back[1], CardRead) and back[1].number == "0000000006"
    assert reader.counters["restarts"] == 1


@pytest.mark.skipif(gpiod_available(), reason="gpiod is installed here")
def test_without_gpiod_and_without_a_source_the_reader_says_what_to_install() -> None:
    with pytest.raises(DriverConfigError, match="python3-libgpiod / gpiod>=2"):
        WiegandReader(d0=17, d1=27, reader_id=READER)


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"d0": 17, "d1": 17}, id="same-line"),
        pytest.param({"d0": 17, "d1": 27, "idle_ms": 1}, id="idle-too-short"),
        pytest.param({"d0": 17, "d1": 27, "formats": ("h10302",)}, id="unknown-format"),
    ],
)
def test_bad_reader_config(kw: dict[str, object]) -> None:
    with pytest.raises(DriverConfigError):
        WiegandReader(reader_id=READER, edge_source=WiegandEdgeSim(), **kw)  # type: ignore[arg-type]
