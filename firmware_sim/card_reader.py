"""A serial entrance card reader on a pseudo-terminal.

The simulator holds the pty's master side and writes what a reader sends. The agent opens the
slave side (:attr:`path`, e.g. ``/dev/pts/5``) exactly as it would open ``/dev/ttyUSB0``.

Frame formats (``frame_format``), written from the readers' descriptions, not from ``drivers``:

- ``decimal`` (default): one card number per line, ``"<number>\\r\\n"``;
- ``hex``: the card number as upper-case hex digits per line;
- ``em4100``: ``STX``, 10 hex digits, 2 hex digits of XOR checksum, CR LF (or the variant
  given by ``em4100_terminator``), ``ETX``;
- ``wiegand``: the raw Wiegand bits as a line of ``0``/``1`` characters (a Wiegand-to-serial
  converter); the number is the combined ``facility * 2**card_bits + card`` of
  ``wiegand_format``.

Faults on purpose: :meth:`CardReaderSim.send_raw` writes any bytes; :meth:`send_garbage`
writes line noise; :meth:`swipe_split` writes a frame in pieces with pauses; :meth:`swipe_corrupt`
writes a frame with a wrong checksum (EM4100) or parity (Wiegand). :func:`run_card_reader_cli`
runs a reader with random swipes and random faults until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import random
import signal
import sys
import tty
from collections.abc import Sequence
from typing import Literal, get_args

from firmware_sim.wiegand_source import FormatName, flip_parity, pack, split_number

log = logging.getLogger(__name__)

FrameFormat = Literal["decimal", "hex", "em4100", "wiegand"]
FRAME_FORMATS: tuple[FrameFormat, ...] = get_args(FrameFormat)
STX, ETX = b"\x02", b"\x03"


def em4100_frame(number: str, *, terminator: bytes = b"\r\n", corrupt: bool = False) -> bytes:
    """An EM4100 ASCII frame for the 10-hex-digit ``number`` (checksum = XOR of the 5 bytes)."""
    data = bytes.fromhex(number)
    if len(data) != 5:
        raise ValueError("an EM4100 number is 10 hex digits")
    checksum = 0
    for b in data:
        checksum ^= b
    if corrupt:
        checksum ^= 0x5A
    return STX + number.upper().encode("ascii") + b"%02X" % checksum + terminator + ETX


class CardReaderSim:
    """``async with CardReaderSim() as reader: reader.path; await reader.swipe("3104992211")``"""

    def __init__(
        self,
        *,
        frame_format: FrameFormat = "decimal",
        wiegand_format: FormatName = "h10301",
        em4100_terminator: bytes = b"\r\n",
    ) -> None:
        if frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {', '.join(FRAME_FORMATS)}")
        self.frame_format = frame_format
        self.wiegand_format: FormatName = wiegand_format
        self.em4100_terminator = em4100_terminator
        self._master: int | None = None
        self._slave: int | None = None
        self._path = ""
        self.swipes = 0
        self.dropped_bytes = 0

    @property
    def path(self) -> str:
        """The slave device path to open (valid while entered)."""
        return self._path

    async def __aenter__(self) -> CardReaderSim:
        master, slave = os.openpty()
        # Raw mode from the start: no echo back to the master, no CR/LF translation, even
        # before a reader opens the port and configures it.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._path = os.ttyname(slave)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def frame(self, number: str, *, corrupt: bool = False) -> bytes:
        """The bytes the reader sends for ``number`` in its frame format.

        ``corrupt`` gives a wrong checksum (EM4100) or parity (Wiegand); the line formats have
        no check, so there it replaces a digit with a letter that is not a hex digit.
        """
        if not number.isalnum():
            raise ValueError("a card number is digits (or hex digits)")
        if self.frame_format == "em4100":
            return em4100_frame(number, terminator=self.em4100_terminator, corrupt=corrupt)
        if self.frame_format == "wiegand":
            facility, card = split_number(self.wiegand_format, int(number))
            bits, count = pack(self.wiegand_format, facility, card)
            if corrupt:
                bits = flip_parity(bits, count)
            return format(bits, f"0{count}b").encode("ascii") + b"\r\n"
        text = number.upper() if self.frame_format == "hex" else number
        if corrupt:
            text = text[:-1] + "Z"
        return text.encode("ascii") + b"\r\n"

    async def swipe(self, number: str) -> None:
        """Send one card frame, as the reader does when a card is presented."""
        data = self.frame(number)
        self.swipes += 1
        await self.send_raw(data)

    async def swipe_split(self, number: str, *, pieces: int = 3, pause_s: float = 0.02) -> None:
        """Send one card frame in ``pieces`` writes with pauses (a slow or buffered line)."""
        data = self.frame(number)
        self.swipes += 1
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            await self.send_raw(data[i : i + step])
            await asyncio.sleep(pause_s)

    async def swipe_corrupt(self, number: str) -> None:
        """Send a frame damaged on the line (bad checksum / parity / digit)."""
        await self.send_raw(self.frame(number, corrupt=True))

    async def send_garbage(self, rng: random.Random, size: int = 12) -> None:
        """Line noise: random bytes (never a frame by accident: no STX, no CR/LF at the end)."""
        noise = bytes(rng.choice(b"\x00\x7f\xff\x13\x80!?#@~") for _ in range(size))
        await self.send_raw(noise + b"\r\n")

    async def send_raw(self, data: bytes) -> None:
        """Write bytes to the line. Bytes the line cannot take (nobody reading) are dropped,
        as on a real serial line."""
        if self._master is None:
            raise RuntimeError("the card reader is not running")
        try:
            written = os.write(self._master, data)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                raise
            written = 0
        self.dropped_bytes += len(data) - written
        await asyncio.sleep(0)

    async def random_swipes(
        self,
        cards: Sequence[str],
        *,
        rng: random.Random,
        every_s: tuple[float, float] = (2.0, 6.0),
        unregistered_share: float = 0.1,
    ) -> None:
        """Swipe random cards forever (until cancelled), every ``every_s`` seconds (uniform).

        A share of swipes uses a card that is not in ``cards`` (an unregistered card).
        """
        while True:
            await asyncio.sleep(rng.uniform(*every_s))
            if not cards or rng.random() < unregistered_share:
                number = self.random_number(rng)
            else:
                number = rng.choice(list(cards))
            await self.swipe(number)

    def random_number(self, rng: random.Random) -> str:
        """A random card number in this reader's format."""
        if self.frame_format in ("em4100", "hex"):
            return f"{rng.randrange(1 << 40):010X}"
        if self.frame_format == "wiegand":
            card_bits = {"h10301": 24, "w34": 32, "c1k35": 32, "h10304": 35}[self.wiegand_format]
            return f"{rng.randrange(1 << card_bits):010d}"
        return str(rng.randrange(1_000_000_000, 4_294_967_295))


async def _run_cli(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with CardReaderSim(
            frame_format=args.format, wiegand_format=args.wiegand_format
        ) as sim:
            print(sim.path, flush=True)

            async def swipes() -> None:
                cards = [sim.random_number(rng) for _ in range(args.cards)]
                while True:
                    await asyncio.sleep(rng.uniform(args.every / 2, args.every * 1.5))
                    number = rng.choice(cards)
                    if rng.random() >= args.fault_rate:
                        await sim.swipe(number)
                        continue
                    fault = rng.choice(("garbage", "split", "corrupt"))
                    log.info("fault: %s", fault)
                    if fault == "garbage":
                        await sim.send_garbage(rng)
                    elif fault == "split":
                        await sim.swipe_split(number)
                    else:
                        await sim.swipe_corrupt(number)

            task = asyncio.create_task(swipes(), name="card-reader-swipes")
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run_card_reader_cli(argv: Sequence[str] | None = None) -> int:
    """``firmware-sim card-reader``: print the pty path, swipe random cards until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="firmware-sim card-reader", description="a serial card reader on a pty"
    )
    parser.add_argument("--format", choices=FRAME_FORMATS, default="decimal")
    parser.add_argument(
        "--wiegand-format", choices=("h10301", "w34", "c1k35", "h10304"), default="h10301"
    )
    parser.add_argument("--cards", type=int, default=8, help="how many distinct cards")
    parser.add_argument("--every", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of swipes that are faults (0-1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.fault_rate <= 1 or args.cards < 1 or args.every <= 0:
        parser.error("--fault-rate is 0..1, --cards >= 1, --every > 0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    return asyncio.run(_run_cli(args))
