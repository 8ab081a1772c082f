"""A serial entrance card reader on a pseudo-terminal.

The simulator holds the pty's master side and writes what a reader sends: one bare decimal card
number per line, ``"<number>\\r\\n"``. The agent opens the slave side (:attr:`path`, e.g.
``/dev/pts/5``) exactly as it would open ``/dev/ttyUSB0``.

Faults on purpose: :meth:`CardReaderSim.send_raw` writes any bytes (noise, partial frames,
over-long lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import tty
from collections.abc import Sequence

log = logging.getLogger(__name__)


class CardReaderSim:
    """``async with CardReaderSim() as reader: reader.path; await reader.swipe("3104992211")``"""

    def __init__(self) -> None:
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

    async def swipe(self, number: str) -> None:
        """Send one card line, as the reader does when a card is presented."""
        if not number.isalnum():
            raise ValueError("a card number is digits (or hex digits)")
        self.swipes += 1
        await self.send_raw(number.encode("ascii") + b"\r\n")

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
                number = str(rng.randrange(1_000_000_000, 4_294_967_295))
            else:
                number = rng.choice(list(cards))
            await self.swipe(number)
