"""DL/T 645-2007 meters on one simulated RS-485 bus: a pseudo-terminal or a TCP port.

The simulator answers what real meters answer, written from the protocol description rather
than from ``drivers`` (so that a mistake in the driver's codec is not copied into its peer):

- read (control 0x11) of the data identifiers a single-phase meter has: 00000000 combined
  active energy, 02010100 voltage, 02020100 current, 02030000 active power, 02060000 power
  factor, 02800002 frequency, with values from each meter's load function; a data identifier it
  does not have gets an error reply (0xD1, "no such data");
- read address (control 0x13, address AA..AA): answered when exactly one meter is on the bus;
  with several, their answers collide on the wire and the master sees garbage;
- replies start with FE wake-up bytes (``reply_preamble``).

Faults on demand: :meth:`Dlt645BusSim.garbage_next` (noise before the next replies),
:meth:`split_next` (replies written in pieces with pauses), :meth:`corrupt_next` (bad checksums),
:meth:`silence` (a meter stops answering, and later comes back), :meth:`error_next` (error
replies). ``fault_rate`` draws such faults at random (the CLI's ``--fault-rate``).

``async with Dlt645BusSim([SimMeter("000000123456", load)]) as bus: bus.url`` gives the pty's
slave path (``tcp=False``) or ``socket://127.0.0.1:<port>`` (``tcp=True``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import math
import os
import random
import signal
import sys
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from firmware_sim._aio import cancel_and_wait

log = logging.getLogger(__name__)

LoadFn = Callable[[float], float]
"""Seconds since the bus started -> active power in W."""

_BROADCAST = bytes([0xAA] * 6)
_FIELDS: dict[int, tuple[str, int, int, bool]] = {
    # DI: (field, bytes, decimals, signed)
    0x00000000: ("energy_kwh", 4, 2, False),
    0x02010100: ("voltage_v", 2, 1, False),
    0x02020100: ("current_a", 3, 3, True),
    0x02030000: ("power_kw", 3, 4, True),
    0x02060000: ("power_factor", 2, 3, True),
    0x02800002: ("frequency_hz", 2, 2, False),
}


def bcd(value: float, length: int, decimals: int, signed: bool) -> bytes:
    """``value`` as ``length`` BCD bytes, low byte first, sign in the top bit if ``signed``."""
    n = round(abs(value) * 10**decimals)
    top = 8 * 10 ** (2 * length - 1) if signed else 10 ** (2 * length)
    n = min(n, top - 1)
    digits = f"{n:0{2 * length}d}"
    out = bytearray(int(digits[i : i + 2], 16) for i in range(0, 2 * length, 2))[::-1]
    if signed and value < 0:
        out[-1] |= 0x80
    return bytes(out)


def address_bytes(address: str) -> bytes:
    """12 address digits (most significant first) as sent: six bytes, low byte first."""
    if len(address) != 12 or not address.isdigit():
        raise ValueError(f"a meter address is 12 digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def frame(addr: bytes, control: int, data: bytes, *, preamble: int = 0) -> bytes:
    """One frame: FE*preamble 68 A0..A5 68 C L DATA+33 CS 16."""
    body = bytes([0x68]) + addr + bytes([0x68, control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    return b"\xfe" * preamble + body + bytes([sum(body) & 0xFF, 0x16])


def default_load(index: int, seed: int = 0) -> LoadFn:
    """A flat's load: a base load, a fridge cycling every ~20 min, slow drift (W)."""
    rng = random.Random(f"dlt645:{seed}:{index}")
    base = rng.uniform(60.0, 250.0)
    fridge = rng.uniform(70.0, 120.0)
    period = rng.uniform(900.0, 1500.0)
    phase = rng.uniform(0.0, period)

    def load(t: float) -> float:
        on = ((t + phase) % period) < period * 0.4
        return base + (fridge if on else 0.0) + 15.0 * math.sin(t / 600.0)

    return load


@dataclass
class SimMeter:
    """One single-phase meter on the bus."""

    address: str
    load: LoadFn
    energy_kwh: float = 1234.5
    nominal_voltage_v: float = 220.0
    power_factor: float = 0.93
    silent: bool = False
    errors: dict[int | None, list[int]] = field(default_factory=dict)
    """Queued error replies: DI (None: any DI) -> error codes, one per request."""
    _last_t: float | None = None

    def __post_init__(self) -> None:
        self.raw_address = address_bytes(self.address)

    def values(self, t: float) -> dict[str, float]:
        power_w = max(0.0, self.load(t))
        if self._last_t is not None and t > self._last_t:
            self.energy_kwh += power_w * (t - self._last_t) / 3_600_000.0
        self._last_t = t
        voltage = self.nominal_voltage_v + 2.5 * math.sin(t / 97.0)
        pf = self.power_factor if power_w > 1 else 1.0
        return {
            "energy_kwh": self.energy_kwh,
            "voltage_v": voltage,
            "current_a": power_w / (voltage * pf),
            "power_kw": power_w / 1000.0,
            "power_factor": pf,
            "frequency_hz": 50.0 + 0.02 * math.sin(t / 31.0),
        }


@dataclass(frozen=True)
class _Request:
    addr: bytes
    control: int
    data: bytes


def parse_requests(buf: bytearray) -> list[_Request]:
    """Take every complete request out of ``buf`` (dropping bytes that start no frame)."""
    out: list[_Request] = []
    while True:
        start = buf.find(0x68)
        if start < 0:
            buf.clear()
            return out
        del buf[:start]
        if len(buf) < 10:
            return out
        length = buf[9]
        if buf[7] != 0x68 or length > 200:
            del buf[:1]
            continue
        total = 12 + length
        if len(buf) < total:
            return out
        if buf[total - 1] != 0x16 or sum(buf[: total - 2]) & 0xFF != buf[total - 2]:
            del buf[:1]
            continue
        data = bytes((b - 0x33) & 0xFF for b in buf[10 : 10 + length])
        out.append(_Request(bytes(buf[1:7]), buf[8], data))
        del buf[:total]


class Dlt645BusSim:
    """Meters sharing one bus; see the module docstring."""

    def __init__(
        self,
        meters: Sequence[SimMeter],
        *,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        reply_delay_s: float = 0.003,
        reply_preamble: int = 4,
        fault_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not meters:
            raise ValueError("a bus needs at least one meter")
        addresses = [m.address for m in meters]
        if len(set(addresses)) != len(addresses):
            raise ValueError("meter addresses must differ")
        if not 0 <= fault_rate <= 1:
            raise ValueError("fault_rate is 0..1")
        self.meters = {m.raw_address: m for m in meters}
        self._tcp = tcp
        self._host = host
        self._port = port
        self._delay = reply_delay_s
        self._preamble = reply_preamble
        self.fault_rate = fault_rate
        self._rng = rng or random.Random(0)
        self._t0 = time.monotonic()
        self._master: int | None = None
        self._slave: int | None = None
        self._path = ""
        self._server: asyncio.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._handlers: set[asyncio.Future[None]] = set()
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._serve_task: asyncio.Task[None] | None = None
        self._garbage_next = 0
        self._split_next = 0
        self._corrupt_next = 0
        self.requests = 0
        self.replies = 0
        self.faults: dict[str, int] = {}

    # -- endpoints ------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The pty slave path (pty mode)."""
        return self._path

    @property
    def url(self) -> str:
        """What a driver opens: the pty path, or ``socket://host:port`` in TCP mode."""
        if self._server is not None:
            port = self._server.sockets[0].getsockname()[1]
            return f"socket://{self._host}:{port}"
        return self._path

    async def __aenter__(self) -> Dlt645BusSim:
        if self._tcp:
            self._server = await asyncio.start_server(self._on_client, self._host, self._port)
        else:
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no CR/LF translation before a driver configures it
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self._path = os.ttyname(slave)
            asyncio.get_running_loop().add_reader(master, self._on_pty_readable)
        self._serve_task = asyncio.create_task(self._serve(), name="dlt645-bus")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._serve_task is not None:
            await cancel_and_wait(self._serve_task)
        if self._server is not None:
            self._server.close()
            if self._client is not None:
                self._client.close()  # the handler's read ends: it finishes by itself
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=2)
            await self._server.wait_closed()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def _on_pty_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                return
            raise
        if data:
            self._inbox.put_nowait(data)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None:
            self._client.close()  # one master per bus: the newest connection wins
        self._client = writer
        done = asyncio.get_running_loop().create_future()
        self._handlers.add(done)
        try:
            while data := await reader.read(4096):
                self._inbox.put_nowait(data)
        except ConnectionError:
            pass
        finally:
            if self._client is writer:
                self._client = None
            writer.close()
            self._handlers.discard(done)
            done.set_result(None)

    # -- faults ---------------------------------------------------------------------------------

    def garbage_next(self, n: int = 1) -> None:
        """Write line noise before each of the next ``n`` replies."""
        self._garbage_next += n

    def split_next(self, n: int = 1) -> None:
        """Write each of the next ``n`` replies in three pieces with 20 ms pauses."""
        self._split_next += n

    def corrupt_next(self, n: int = 1) -> None:
        """Give each of the next ``n`` replies a wrong checksum."""
        self._corrupt_next += n

    def silence(self, address: str, silent: bool = True) -> None:
        """Make the meter at ``address`` stop answering (``silent=False``: answer again)."""
        self.meters[address_bytes(address)].silent = silent

    def error_next(
        self, address: str, code: int = 0x02, *, n: int = 1, di: int | None = None
    ) -> None:
        """Answer the meter's next ``n`` reads (of ``di``, or any DI) with error ``code``."""
        errors = self.meters[address_bytes(address)].errors.setdefault(di, [])
        errors.extend([code] * n)

    async def send_raw(self, data: bytes) -> None:
        """Write any bytes onto the bus."""
        await self._write(data)

    # -- the bus --------------------------------------------------------------------------------

    async def _serve(self) -> None:
        buf = bytearray()
        while True:
            buf += await self._inbox.get()
            for request in parse_requests(buf):
                self.requests += 1
                reply = self._answer(request)
                if reply is None:
                    continue
                await asyncio.sleep(self._delay)
                await self._send_reply(reply)

    def _answer(self, req: _Request) -> bytes | None:
        t = time.monotonic() - self._t0
        if req.control == 0x13 and req.addr == _BROADCAST and not req.data:
            alive = [m for m in self.meters.values() if not m.silent]
            replies = [
                frame(m.raw_address, 0x93, m.raw_address, preamble=self._preamble) for m in alive
            ]
            if len(replies) == 1:
                return replies[0]
            if not replies:
                return None
            # several meters answer at once: on the wire the frames collide
            width = max(len(r) for r in replies)
            mixed = bytearray(width)
            for r in replies:
                for i, b in enumerate(r):
                    mixed[i] |= b
            self._count("collision")
            return bytes(mixed)
        meter = self.meters.get(req.addr)
        if meter is None or meter.silent or req.control != 0x11 or len(req.data) != 4:
            return None
        di = int.from_bytes(req.data, "little")
        queued = meter.errors.get(di) or meter.errors.get(None)
        if queued:
            code = queued.pop(0)
            self._count("error_reply")
            return frame(meter.raw_address, 0xD1, bytes([code]), preamble=self._preamble)
        spec = _FIELDS.get(di)
        if spec is None:
            return frame(meter.raw_address, 0xD1, b"\x02", preamble=self._preamble)
        name, length, decimals, signed = spec
        value = meter.values(t)[name]
        data = req.data + bcd(value, length, decimals, signed)
        return frame(meter.raw_address, 0x91, data, preamble=self._preamble)

    def _count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    async def _send_reply(self, reply: bytes) -> None:
        garbage = split = corrupt = False
        if self._garbage_next:
            self._garbage_next -= 1
            garbage = True
        if self._split_next:
            self._split_next -= 1
            split = True
        if self._corrupt_next:
            self._corrupt_next -= 1
            corrupt = True
        if self.fault_rate and self._rng.random() < self.fault_rate:
            kind = self._rng.choice(("garbage", "split", "corrupt", "drop"))
            if kind == "drop":
                self._count("drop")
                return
            garbage |= kind == "garbage"
            split |= kind == "split"
            corrupt |= kind == "corrupt"
        if corrupt:
            self._count("corrupt")
            reply = reply[:-2] + bytes([(reply[-2] + 1) & 0xFF]) + reply[-1:]
        if garbage:
            self._count("garbage")
            noise = bytes(self._rng.choice(b"\x00\x12\x55\x68\x99\xff\x16") for _ in range(9))
            await self._write(noise)
        self.replies += 1
        if split:
            self._count("split")
            step = -(-len(reply) // 3)
            for i in range(0, len(reply), step):
                await self._write(reply[i : i + step])
                await asyncio.sleep(0.02)
        else:
            await self._write(reply)

    async def _write(self, data: bytes) -> None:
        if self._master is not None:
            try:
                os.write(self._master, data)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                    raise
        elif self._client is not None:
            self._client.write(data)
            with contextlib.suppress(ConnectionError):
                await self._client.drain()
        await asyncio.sleep(0)


# -- command line -------------------------------------------------------------------------------


def _addresses(args: argparse.Namespace) -> list[str]:
    if args.addresses:
        return [a.strip() for a in args.addresses.split(",") if a.strip()]
    return [f"{i + 1:012d}" for i in range(args.meters)]


async def _run_cli(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    meters = [SimMeter(a, default_load(i, args.seed)) for i, a in enumerate(_addresses(args))]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, _, port = (args.tcp or "").rpartition(":")
    try:
        async with Dlt645BusSim(
            meters,
            tcp=bool(args.tcp),
            host=host or "127.0.0.1",
            port=int(port or 0),
            fault_rate=args.fault_rate,
            rng=rng,
        ) as bus:
            print(bus.url, flush=True)
            print("meters: " + ", ".join(m.address for m in meters), file=sys.stderr)
            await stop.wait()
            log.info("stopping after %d requests, faults %s", bus.requests, bus.faults)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run_dlt645_cli(argv: Sequence[str] | None = None) -> int:
    """``firmware-sim dlt645``: print the bus's pty path (or socket URL), run until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="firmware-sim dlt645", description="DL/T 645-2007 meters on a pty or TCP port"
    )
    parser.add_argument("--meters", type=int, default=1, help="meters 000000000001, ...")
    parser.add_argument("--addresses", default="", help="comma-separated 12-digit addresses")
    parser.add_argument("--tcp", default="", metavar="HOST:PORT", help="listen on TCP instead")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of replies that are faulty (0-1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.fault_rate <= 1 or args.meters < 1:
        parser.error("--fault-rate is 0..1 and --meters >= 1")
    try:
        for address in _addresses(args):
            address_bytes(address)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    return asyncio.run(_run_cli(args))
