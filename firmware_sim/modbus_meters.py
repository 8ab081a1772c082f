"""Simulated Modbus meters (Chint DDSU666, Eastron SDM120 and SDM630) on real transports.

Every meter is a Modbus device id (slave) 1..247 of one pymodbus server. Its registers are filled
at the moment they are read, from the meter's load function ``load(t_seconds) -> power_w``
(``t`` counts from the simulator's start): voltage about 226-234 V, current = P / (V * PF),
frequency about 50 Hz, imported energy integrated over time. A three-phase SDM630 splits the
load over its phases.

Transports (``transport=``), each a real one the driver opens as it would in the field:

- ``"tcp"``: Modbus TCP (MBAP) on ``host:port``, like a meter with Ethernet or a Modbus TCP
  gateway (:attr:`ModbusMeterSim.url` ``tcp://host:port``);
- ``"rtu-tcp"``: Modbus RTU frames over TCP, like a transparent serial-to-Ethernet converter
  (``socket://host:port``);
- ``"rtu-pty"``: Modbus RTU on a pseudo-terminal, like an RS-485 adapter (``/dev/pts/N``).

Between the master and the server sits *the line*: a byte relay (the idea of pymodbus's
NullModem manipulator) that can corrupt what the meters send, as long RS-485 runs do:

- per meter (:meth:`ModbusMeterSim.set_mode`): ``"silent"`` (the meter stops answering),
  ``"exception"`` (it answers a Modbus exception, device failure by default), ``"slow"`` (it
  answers ``delay_s`` late), ``"ok"``;
- on the RTU line (:attr:`ModbusMeterSim.line`, a :class:`LineFaults`): noise bytes in front
  of replies, a corrupted byte (CRC error), replies split into pieces with gaps, unsolicited
  noise (:meth:`ModbusMeterSim.write_noise`), and probabilistic versions for long runs;
- :meth:`ModbusMeterSim.pause` / :meth:`~ModbusMeterSim.resume`: the endpoint vanishes (TCP:
  the port closes and every connection drops; pty: the line goes dead) and comes back.

This module does not import ``drivers``: it lays out the registers from the meters' datasheets
itself (IEEE 754 float32, big-endian, high word first). :func:`run_modbus_cli` runs it from the
command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import random
import signal
import struct
import sys
import time
import tty
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from firmware_sim._aio import cancel_and_wait

log = logging.getLogger(__name__)

LoadFn = Callable[[float], float]
Mode = Literal["ok", "silent", "exception", "slow"]
Profile = Literal["ddsu666", "sdm120", "sdm630"]
Transport = Literal["tcp", "rtu-pty", "rtu-tcp"]
PROFILE_NAMES: tuple[str, ...] = get_args(Profile)
TRANSPORTS: tuple[str, ...] = get_args(Transport)

# DDSU666 register map (float32, two registers each), kept for callers of the first version
REG_VOLTAGE = 0x2000  # V
REG_CURRENT = 0x2002  # A
REG_POWER = 0x2004  # kW
REG_REACTIVE = 0x2006  # kvar
REG_APPARENT = 0x2008  # kVA
REG_PF = 0x200A
REG_FREQUENCY = 0x200E  # Hz
REG_ENERGY_IMPORT = 0x4000  # kWh


@dataclass(frozen=True)
class Layout:
    """A meter model's registers: address -> quantity (float32 each), the blocks it serves
    (reads outside them get ILLEGAL_ADDRESS) and the function codes it answers."""

    name: str
    function_codes: frozenset[int]
    blocks: tuple[tuple[int, int], ...]
    registers: Mapping[int, str]


LAYOUTS: dict[str, Layout] = {
    # Chint DDSU666: sources disagree on 0x03 vs 0x04, so it answers both.
    "ddsu666": Layout(
        "ddsu666",
        frozenset({3, 4}),
        ((0x2000, 16), (0x4000, 2)),
        {
            REG_VOLTAGE: "voltage",
            REG_CURRENT: "current",
            REG_POWER: "power_kw",
            REG_REACTIVE: "reactive_kvar",
            REG_APPARENT: "apparent_kva",
            REG_PF: "pf",
            REG_FREQUENCY: "frequency",
            REG_ENERGY_IMPORT: "import_kwh",
        },
    ),
    # Eastron SDM120: input registers (0x04) only.
    "sdm120": Layout(
        "sdm120",
        frozenset({4}),
        ((0x0000, 0x26), (0x0046, 10), (0x0156, 4)),
        {
            0x0000: "voltage",
            0x0006: "current",
            0x000C: "power_w",
            0x0012: "apparent_va",
            0x0018: "reactive_var",
            0x001E: "pf",
            0x0024: "phase_angle",
            0x0046: "frequency",
            0x0048: "import_kwh",
            0x004A: "export_kwh",
            0x0156: "total_kwh",
        },
    ),
    # Eastron SDM630 three-phase: input registers (0x04) only.
    "sdm630": Layout(
        "sdm630",
        frozenset({4}),
        ((0x0000, 0x50), (0x0156, 4)),
        {
            0x0000: "voltage_l1",
            0x0002: "voltage_l2",
            0x0004: "voltage_l3",
            0x0006: "current_l1",
            0x0008: "current_l2",
            0x000A: "current_l3",
            0x000C: "power_l1_w",
            0x000E: "power_l2_w",
            0x0010: "power_l3_w",
            0x001E: "pf_l1",
            0x0020: "pf_l2",
            0x0022: "pf_l3",
            0x0034: "power_w",
            0x0038: "apparent_va",
            0x003C: "reactive_var",
            0x003E: "pf",
            0x0046: "frequency",
            0x0048: "import_kwh",
            0x004A: "export_kwh",
            0x0156: "total_kwh",
        },
    ),
}


def float32_registers(value: float) -> list[int]:
    """Two registers, high word first, holding ``value`` as a big-endian IEEE float32."""
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


# -- load curves --------------------------------------------------------------------------------


def constant_load(watts: float) -> LoadFn:
    return lambda t: watts


def household_load(seed: int, slave: int, *, time_scale: float = 1.0) -> LoadFn:
    """A flat: standby base load, a fridge cycling (30-40 % duty), noise changing every 5 s,
    and an evening bump (TV, lights) once a (``time_scale``-compressed) day."""
    rng = random.Random(f"household:{seed}:{slave}")
    base = rng.uniform(40.0, 220.0)
    fridge = rng.uniform(80.0, 150.0)
    period = rng.uniform(1200.0, 2400.0)
    duty = rng.uniform(0.3, 0.4)
    phase = rng.random()
    evening = rng.uniform(100.0, 400.0)

    def load(t: float) -> float:
        ts = t * time_scale
        on = (ts / period + phase) % 1.0 < duty
        hour = (ts / 3600.0 + 18.0) % 24.0  # the run starts at 18:00
        bump = evening if 18.5 <= hour < 23.0 else 0.0
        noise = random.Random(f"noise:{seed}:{slave}:{int(ts // 5)}").uniform(-8.0, 8.0)
        return max(0.0, base + (fridge if on else 0.0) + bump + noise)

    return load


def ebike_charging_load(
    start_s: float,
    *,
    plateau_w: float = 180.0,
    constant_current_s: float = 4 * 3600.0,
    taper_s: float = 2 * 3600.0,
    tail_w: float = 3.0,
    time_scale: float = 1.0,
) -> LoadFn:
    """An e-bike charger (CC-CV): a flat plateau, an exponential taper, a float tail."""

    def load(t: float) -> float:
        ts = (t - start_s) * time_scale
        if ts < 0:
            return 0.0
        if ts < constant_current_s:
            return plateau_w + 1.5 * math.sin(ts / 600.0)
        tapered = ts - constant_current_s
        if tapered < taper_s:
            return tail_w + (plateau_w - tail_w) * math.exp(-4.0 * tapered / taper_s)
        return tail_w

    return load


def sum_loads(*loads: LoadFn) -> LoadFn:
    return lambda t: sum(f(t) for f in loads)


# -- one meter ----------------------------------------------------------------------------------


@dataclass
class SimMeter:
    """One simulated meter and its electrical state."""

    slave: int
    load: LoadFn
    profile: str = "ddsu666"
    nominal_voltage_v: float = 230.0
    voltage_phase: float = 0.0
    power_factor: float = 0.95
    energy_kwh: float = 1000.0
    phase_split: tuple[float, float, float] = (1.0, 0.0, 0.0)
    mode: Mode = "ok"
    slow_s: float = 0.0
    exception_code: int = int(ExcCodes.DEVICE_FAILURE)
    reads: int = 0
    _last_t: float | None = None
    _last_power_w: float = 0.0

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.profile]

    def quantities_at(self, t: float) -> dict[str, float]:
        """Advance the energy register to time ``t`` and return every quantity."""
        power_w = max(0.0, float(self.load(t)))
        if self._last_t is not None and t > self._last_t:
            hours = (t - self._last_t) / 3600.0
            self.energy_kwh += (self._last_power_w + power_w) / 2.0 / 1000.0 * hours
        self._last_t, self._last_power_w = t, power_w
        pf = self.power_factor
        apparent = power_w / pf
        reactive = math.sqrt(max(0.0, apparent**2 - power_w**2))
        q: dict[str, float] = {
            "power_w": power_w,
            "power_kw": power_w / 1000.0,
            "apparent_va": apparent,
            "apparent_kva": apparent / 1000.0,
            "reactive_var": reactive,
            "reactive_kvar": reactive / 1000.0,
            "pf": pf,
            "phase_angle": math.degrees(math.acos(pf)),
            "frequency": 50.0 + 0.02 * math.sin(t / 7.0),
            "import_kwh": self.energy_kwh,
            "export_kwh": 0.0,
            "total_kwh": self.energy_kwh,
        }
        for i, share in enumerate(self.phase_split, start=1):
            swing = math.sin(2 * math.pi * t / 300 + self.voltage_phase + i)
            volts = self.nominal_voltage_v + 3.5 * swing
            phase_w = power_w * share
            q[f"voltage_l{i}"] = volts
            q[f"current_l{i}"] = phase_w / (volts * pf)
            q[f"power_l{i}_w"] = phase_w
            q[f"pf_l{i}"] = pf
        q["voltage"] = q["voltage_l1"]
        q["current"] = power_w / (q["voltage_l1"] * pf)
        return q

    def values_at(self, t: float) -> dict[int, float]:
        """Every register's value at time ``t`` (address -> float), per the meter's layout."""
        q = self.quantities_at(t)
        return {reg: q[name] for reg, name in self.layout.registers.items()}


# -- the line -----------------------------------------------------------------------------------


@dataclass
class LineFaults:
    """What the line does to replies on their way to the master (RTU transports).

    Counted faults apply to the next replies: ``noise_next`` replies get ``noise`` in front,
    ``corrupt_next`` replies get one byte flipped (a CRC error). ``split`` sends every reply in
    three pieces ``split_gap_s`` apart. The ``*_rate`` fields do the same at random, for long
    runs. ``dead`` drops everything (a cut cable). Delays of slow meters are applied here too,
    for every transport.
    """

    noise: bytes = b"\x00"
    noise_next: int = 0
    corrupt_next: int = 0
    split: bool = False
    split_gap_s: float = 0.003
    noise_rate: float = 0.0
    corrupt_rate: float = 0.0
    dead: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    replies: int = 0
    noised: int = 0
    corrupted: int = 0

    def shape(
        self, reply: bytes, *, delay_s: float = 0.0, rtu: bool = True
    ) -> list[tuple[float, bytes]]:
        """The pieces to send for one reply, each with its delay from now."""
        if self.dead or not reply:
            return []
        self.replies += 1
        data = reply
        if rtu:
            rng = self.rng
            if self.corrupt_next > 0 or (self.corrupt_rate and rng.random() < self.corrupt_rate):
                self.corrupt_next = max(0, self.corrupt_next - 1)
                self.corrupted += 1
                i = len(data) // 2
                data = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :]
            if self.noise_next > 0 or (self.noise_rate and rng.random() < self.noise_rate):
                self.noise_next = max(0, self.noise_next - 1)
                self.noised += 1
                data = self.noise + data
        if not self.split or len(data) < 3:
            return [(delay_s, data)]
        a, b = len(data) // 3, 2 * len(data) // 3
        gap = self.split_gap_s
        return [(delay_s, data[:a]), (delay_s + gap, data[a:b]), (delay_s + 2 * gap, data[b:])]


def _reply_slave(data: bytes, rtu: bool) -> int | None:
    """The device id a reply comes from (RTU: byte 0; MBAP: byte 6)."""
    index = 0 if rtu else 6
    return data[index] if len(data) > index else None


class _Pipe:
    """One master-side connection relayed to the internal pymodbus server. ``send`` writes
    towards the master."""

    def __init__(self, sim: ModbusMeterSim, send: Callable[[bytes], None]) -> None:
        self.send = send
        self._sim = sim
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", self._sim.server_port
        )
        self._task = asyncio.create_task(self._replies(), name="modbus-sim-replies")

    def to_server(self, data: bytes) -> None:
        if self._sim.line.dead or self._writer is None or self._writer.is_closing():
            return
        self._writer.write(data)

    async def _replies(self) -> None:
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        rtu = self._sim.rtu
        with contextlib.suppress(OSError, ConnectionError):
            while data := await self._reader.read(4096):
                slave = _reply_slave(data, rtu)
                meter = self._sim.meters.get(slave) if slave is not None else None
                delay = meter.slow_s if meter is not None and meter.mode == "slow" else 0.0
                for after, piece in self._sim.line.shape(data, delay_s=delay, rtu=rtu):
                    if after <= 0:
                        self.send(piece)
                        continue
                    now = loop.time()
                    self._timers = {h for h in self._timers if h.when() > now}
                    self._timers.add(loop.call_later(after, self.send, piece))

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()


# -- the simulator ------------------------------------------------------------------------------


class ModbusMeterSim:
    """``async with ModbusMeterSim({1: load1, 2: load2}) as sim: sim.url ...``

    ``loads`` maps slave ids to load functions; ``profile`` is one profile for all meters or a
    map slave -> profile. ``port=0`` picks a free port; :attr:`port` is the real one once
    entered (TCP transports), :attr:`path` the pty (``rtu-pty``). ``clock`` gives seconds
    (monotonic) and is injectable for tests.
    """

    def __init__(
        self,
        loads: Mapping[int, LoadFn],
        *,
        profile: str | Mapping[int, str] = "ddsu666",
        transport: Transport = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not loads:
            raise ValueError("at least one meter")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        rng = random.Random(seed)
        self.host = host
        self.transport = transport
        self.rtu = transport != "tcp"
        self._port = port
        self._clock = clock
        self._t0 = 0.0
        self.line = LineFaults(rng=random.Random(rng.random()))
        self.meters: dict[int, SimMeter] = {}
        for slave in sorted(loads):
            if not 1 <= slave <= 247:
                raise ValueError(f"slave {slave} not in 1..247")
            name = profile if isinstance(profile, str) else profile.get(slave, "ddsu666")
            if name not in LAYOUTS:
                raise ValueError(f"unknown profile {name!r} (known: {', '.join(LAYOUTS)})")
            split = (1.0, 0.0, 0.0)
            if name == "sdm630":
                a, b = rng.uniform(0.3, 0.5), rng.uniform(0.2, 0.35)
                split = (a, b, 1.0 - a - b)
            self.meters[slave] = SimMeter(
                slave=slave,
                load=loads[slave],
                profile=name,
                nominal_voltage_v=round(rng.uniform(227.0, 231.0), 2),
                voltage_phase=rng.uniform(0, 2 * math.pi),
                power_factor=round(rng.uniform(0.90, 0.98), 3),
                energy_kwh=round(rng.uniform(800.0, 6000.0), 2),
                phase_split=split,
            )
        self._server: ModbusTcpServer | None = None
        self.server_port = 0
        self._front: asyncio.Server | None = None
        self._pipes: dict[_Pipe, asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._master: int | None = None
        self._slave_fd: int | None = None
        self._pty_pipe: _Pipe | None = None
        self.path = ""

    # -- description -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Where the driver connects: ``tcp://h:p``, ``socket://h:p`` or the pty path."""
        if self.transport == "rtu-pty":
            return self.path
        scheme = "tcp" if self.transport == "tcp" else "socket"
        return f"{scheme}://{self.host}:{self._port}"

    def endpoints(self) -> dict[str, Any]:
        """A JSON-serialisable description (what the CLI prints)."""
        return {
            "transport": self.transport,
            "url": self.url,
            "host": None if self.transport == "rtu-pty" else self.host,
            "port": None if self.transport == "rtu-pty" else self._port,
            "path": self.path or None,
            "meters": {str(s): m.profile for s, m in self.meters.items()},
        }

    def elapsed(self) -> float:
        return self._clock() - self._t0

    # -- faults ------------------------------------------------------------------------------

    def set_mode(
        self, slave: int, mode: Mode, *, delay_s: float = 0.5, exception_code: int | None = None
    ) -> None:
        """``"silent"``, ``"exception"`` (``exception_code``, default 4 device failure),
        ``"slow"`` (answers ``delay_s`` late) or ``"ok"``."""
        meter = self.meters[slave]
        meter.mode = mode
        if mode == "slow":
            meter.slow_s = delay_s
        if exception_code is not None:
            meter.exception_code = exception_code

    def set_load(self, slave: int, load: LoadFn) -> None:
        self.meters[slave].load = load

    def write_noise(self, data: bytes) -> None:
        """Unsolicited bytes on the line towards the master (RTU transports)."""
        if self._master is not None:
            self._write_master(data)
        for pipe in list(self._pipes):
            pipe.send(data)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> ModbusMeterSim:
        self._t0 = self._clock()
        devices = [
            SimDevice(
                id=slave,
                simdata=[
                    SimData(address, count=count, datatype=DataType.REGISTERS)
                    for address, count in meter.layout.blocks
                ],
                action=self._action_for(slave),
            )
            for slave, meter in self.meters.items()
        ]
        # Every other id: a catch-all device whose replies _trace_packet drops (an absent slave
        # is silent, as on a real bus; pymodbus's ignore_missing_devices does not cover SimDevice).
        devices.append(SimDevice(id=0, simdata=[SimData(0, count=1, datatype=DataType.REGISTERS)]))
        server = ModbusTcpServer(
            devices,
            framer=FramerType.RTU if self.rtu else FramerType.SOCKET,
            address=("127.0.0.1", 0),
            trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        self._server = server
        listener = cast(asyncio.Server, server.transport)
        self.server_port = int(listener.sockets[0].getsockname()[1])
        try:
            if self.transport == "rtu-pty":
                await self._open_pty()
            else:
                await self.resume()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close_front()
        await self._close_pty()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def resume(self) -> None:
        """Serve (again, on the same port); on a pty, bring the line back."""
        self.line.dead = False
        if self.transport == "rtu-pty" or self._front is not None:
            return
        self._front = await asyncio.start_server(self._on_client, self.host, self._port)
        self._port = int(self._front.sockets[0].getsockname()[1])

    async def pause(self) -> None:
        """The endpoint vanishes: TCP closes its port and every connection; a pty goes dead."""
        if self.transport == "rtu-pty":
            self.line.dead = True
            return
        await self._close_front()

    async def _close_front(self) -> None:
        front, self._front = self._front, None
        if front is not None:
            front.close()
        for pipe, writer in list(self._pipes.items()):
            await pipe.close()
            writer.close()
        self._pipes.clear()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2)
        if front is not None:
            await front.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)

        def send(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        pipe = _Pipe(self, send)
        self._pipes[pipe] = writer
        try:
            await pipe.open()
            while data := await reader.read(4096):
                pipe.to_server(data)
        except (OSError, ConnectionError):
            pass
        finally:
            self._pipes.pop(pipe, None)
            await pipe.close()
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _open_pty(self) -> None:
        master, slave_fd = os.openpty()
        tty.setraw(slave_fd)  # no echo, no line discipline, even before the driver opens it
        os.set_blocking(master, False)
        self._master, self._slave_fd = master, slave_fd
        self.path = os.ttyname(slave_fd)
        pipe = _Pipe(self, self._write_master)
        await pipe.open()
        self._pty_pipe = pipe
        asyncio.get_running_loop().add_reader(master, self._on_master_readable)

    def _on_master_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                return
            raise
        if data and self._pty_pipe is not None:
            self._pty_pipe.to_server(data)

    def _write_master(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                raise

    async def _close_pty(self) -> None:
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
        if self._pty_pipe is not None:
            await self._pty_pipe.close()
            self._pty_pipe = None
        for fd in (self._master, self._slave_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave_fd = None

    # -- the server's hooks ------------------------------------------------------------------

    def _action_for(self, slave: int) -> SimAction:
        meter = self.meters[slave]

        async def action(  # noqa: PLR0917 - pymodbus's SimAction signature
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if set_values is not None:
                return ExcCodes.ILLEGAL_FUNCTION  # a meter's measurements are read-only
            if function_code not in meter.layout.function_codes:
                return ExcCodes.ILLEGAL_ADDRESS
            if meter.mode == "exception":
                return ExcCodes(meter.exception_code)
            meter.reads += 1
            for reg, value in meter.values_at(self.elapsed()).items():
                offset = reg - start_address
                if offset >= 0 and offset + 1 < len(registers):
                    registers[offset : offset + 2] = float32_registers(value)
            return None

        return action

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop the replies of silent meters and of slaves that do not exist."""
        if sending:
            slave = _reply_slave(data, self.rtu)
            meter = self.meters.get(slave) if slave is not None else None
            if meter is None or meter.mode == "silent":
                return b""
        return data


# -- command line -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSpec:
    """One ``--fault`` argument, parsed."""

    kind: str
    slave: int | None = None
    value: float | None = None


FAULT_HELP = (
    "silent:SLAVE | exception:SLAVE | slow:SLAVE:SECONDS | flap:SLAVE:SECONDS (silent and "
    "back every SECONDS) | noise:RATE | corrupt:RATE | split"
)


def parse_fault(text: str) -> FaultSpec:
    parts = text.split(":")
    kind = parts[0]
    try:
        if kind in ("silent", "exception") and len(parts) == 2:
            return FaultSpec(kind, int(parts[1]))
        if kind in ("slow", "flap") and len(parts) == 3:
            return FaultSpec(kind, int(parts[1]), float(parts[2]))
        if kind in ("noise", "corrupt") and len(parts) == 2 and 0 <= float(parts[1]) <= 1:
            return FaultSpec(kind, None, float(parts[1]))
        if kind == "split" and len(parts) == 1:
            return FaultSpec(kind)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"bad fault {text!r}; use {FAULT_HELP}")


def _modbus_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firmware-sim modbus",
        description="Run simulated Modbus meters until SIGINT or SIGTERM; print the endpoint "
        "as one JSON line first.",
    )
    p.add_argument("--meters", type=int, default=4, help="number of meters (slaves 1..N)")
    p.add_argument(
        "--profile",
        default="ddsu666",
        choices=[*PROFILE_NAMES, "mixed"],
        help="meter model (mixed: ddsu666, sdm120, sdm630 in turn)",
    )
    p.add_argument("--transport", default="tcp", choices=TRANSPORTS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--load",
        default="household",
        help="household | constant:WATTS | ebike:SLAVE:START_S (household plus a charger)",
    )
    p.add_argument("--time-scale", type=float, default=1.0, help="compress load curves")
    p.add_argument("--fault", action="append", type=parse_fault, default=[], help=FAULT_HELP)
    p.add_argument("--log-level", default="WARNING")
    return p


def _loads(args: argparse.Namespace) -> dict[int, LoadFn]:
    n: int = args.meters
    if not 1 <= n <= 247:
        raise ValueError("--meters must be 1..247")
    spec: str = args.load
    if spec.startswith("constant:"):
        watts = float(spec.split(":", 1)[1])
        return {s: constant_load(watts) for s in range(1, n + 1)}
    loads = {s: household_load(args.seed, s, time_scale=args.time_scale) for s in range(1, n + 1)}
    if spec.startswith("ebike:"):
        _, slave, start = spec.split(":")
        s = int(slave)
        if s not in loads:
            raise ValueError(f"--load ebike: no meter {s}")
        charger = ebike_charging_load(float(start), time_scale=args.time_scale)
        loads[s] = sum_loads(loads[s], charger)
    elif spec != "household":
        raise ValueError(f"unknown --load {spec!r}")
    return loads


def _profiles(args: argparse.Namespace) -> dict[int, str]:
    if args.profile != "mixed":
        return dict.fromkeys(range(1, args.meters + 1), args.profile)
    return {s: PROFILE_NAMES[(s - 1) % len(PROFILE_NAMES)] for s in range(1, args.meters + 1)}


def apply_faults(sim: ModbusMeterSim, faults: Iterable[FaultSpec]) -> list[asyncio.Task[None]]:
    """Apply parsed ``--fault`` arguments; returns the tasks of timed faults (flapping)."""
    tasks: list[asyncio.Task[None]] = []
    for f in faults:
        if f.slave is not None and f.slave not in sim.meters:
            raise ValueError(f"fault {f.kind}: no meter {f.slave}")
        if f.kind == "silent" and f.slave is not None:
            sim.set_mode(f.slave, "silent")
        elif f.kind == "exception" and f.slave is not None:
            sim.set_mode(f.slave, "exception")
        elif f.kind == "slow" and f.slave is not None and f.value is not None:
            sim.set_mode(f.slave, "slow", delay_s=f.value)
        elif f.kind == "flap" and f.slave is not None and f.value is not None:
            tasks.append(asyncio.create_task(_flap(sim, f.slave, f.value), name="sim-flap"))
        elif f.kind == "noise" and f.value is not None:
            sim.line.noise_rate = f.value
        elif f.kind == "corrupt" and f.value is not None:
            sim.line.corrupt_rate = f.value
        elif f.kind == "split":
            sim.line.split = True
    return tasks


async def _flap(sim: ModbusMeterSim, slave: int, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        sim.set_mode(slave, "silent")
        await asyncio.sleep(every_s)
        sim.set_mode(slave, "ok")


async def _run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        sim = ModbusMeterSim(
            _loads(args),
            profile=_profiles(args),
            transport=args.transport,
            host=args.host,
            port=args.port,
            seed=args.seed,
        )
        async with sim:
            tasks = apply_faults(sim, args.fault)
            try:
                sys.stdout.write(json.dumps(sim.endpoints(), separators=(",", ":")) + "\n")
                sys.stdout.flush()
                await stop.wait()
            finally:
                for task in tasks:
                    await cancel_and_wait(task)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run_modbus_cli(argv: Sequence[str] | None = None) -> int:
    """``firmware-sim modbus``: run simulated meters until SIGINT/SIGTERM (exit code 0), after
    printing the endpoint as one JSON line (``transport``, ``url``, ``host``, ``port``,
    ``path``, ``meters``). Exit code 2 on bad arguments."""
    args = _modbus_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_run(args))
    except ValueError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a bad argument, no traceback wanted
        return 2


__all__ = [
    "LAYOUTS",
    "FaultSpec",
    "Layout",
    "LineFaults",
    "LoadFn",
    "ModbusMeterSim",
    "Mode",
    "SimMeter",
    "apply_faults",
    "constant_load",
    "ebike_charging_load",
    "float32_registers",
    "household_load",
    "parse_fault",
    "run_modbus_cli",
    "sum_loads",
]
