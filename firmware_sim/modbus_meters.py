"""Simulated Chint DDSU666 meters behind one Modbus TCP endpoint (a pymodbus server).

Every meter is a Modbus device id (slave) 1..N of one ``pymodbus.server.ModbusTcpServer``. Its
registers are filled at the moment they are read, from the meter's load function
``load(t_seconds) -> power_w`` (``t`` counts from the simulator's start): voltage about
226-234 V, current = P / (V * PF), imported energy integrated over time. Holding (0x03) and input
(0x04) registers hold the same values, since sources disagree on which one a DDSU666 answers.

Faults on purpose: ``set_mode(slave, "silent")`` makes a meter stop answering (its responses
are dropped on the wire), ``"exception"`` makes it answer with a Modbus exception (device
failure), and :meth:`ModbusMeterSim.pause` / :meth:`~ModbusMeterSim.resume` take the whole
endpoint off the network and back on the same port.

This module does not import ``drivers``: it lays out the registers from the meter's datasheet
itself (IEEE 754 float32, big-endian, high word first).
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

LoadFn = Callable[[float], float]
Mode = Literal["ok", "silent", "exception"]

# DDSU666 register map (float32, two registers each)
REG_VOLTAGE = 0x2000  # V
REG_CURRENT = 0x2002  # A
REG_POWER = 0x2004  # kW
REG_REACTIVE = 0x2006  # kvar
REG_APPARENT = 0x2008  # kVA
REG_PF = 0x200A
REG_FREQUENCY = 0x200E  # Hz
REG_ENERGY_IMPORT = 0x4000  # kWh
_BLOCK_LOW = (0x2000, 16)
_BLOCK_ENERGY = (0x4000, 2)


def float32_registers(value: float) -> list[int]:
    """Two registers, high word first, holding ``value`` as a big-endian IEEE float32."""
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


@dataclass
class SimMeter:
    """One simulated meter and its electrical state."""

    slave: int
    load: LoadFn
    nominal_voltage_v: float = 230.0
    voltage_phase: float = 0.0
    power_factor: float = 0.95
    energy_kwh: float = 1000.0
    mode: Mode = "ok"
    _last_t: float | None = None
    _last_power_w: float = 0.0

    def values_at(self, t: float) -> dict[int, float]:
        """Advance the energy register to time ``t`` and return every register's value."""
        power_w = max(0.0, float(self.load(t)))
        if self._last_t is not None and t > self._last_t:
            hours = (t - self._last_t) / 3600.0
            self.energy_kwh += (self._last_power_w + power_w) / 2.0 / 1000.0 * hours
        self._last_t, self._last_power_w = t, power_w
        swing = math.sin(2 * math.pi * t / 300 + self.voltage_phase)
        voltage = self.nominal_voltage_v + 3.5 * swing
        pf = self.power_factor
        apparent_va = power_w / pf
        current = apparent_va / voltage
        reactive_var = math.sqrt(max(0.0, apparent_va**2 - power_w**2))
        return {
            REG_VOLTAGE: voltage,
            REG_CURRENT: current,
            REG_POWER: power_w / 1000.0,
            REG_REACTIVE: reactive_var / 1000.0,
            REG_APPARENT: apparent_va / 1000.0,
            REG_PF: pf,
            REG_FREQUENCY: 50.0 + 0.02 * math.sin(t / 7.0),
            REG_ENERGY_IMPORT: self.energy_kwh,
        }


class ModbusMeterSim:
    """``async with ModbusMeterSim({1: load1, 2: load2}) as sim: sim.port ...``

    ``loads`` maps slave ids to load functions. ``port=0`` picks a free port; :attr:`port` is
    the real one once entered. ``clock`` gives seconds (monotonic) and is injectable for tests.
    """

    def __init__(
        self,
        loads: Mapping[int, LoadFn],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not loads:
            raise ValueError("at least one meter")
        rng = random.Random(seed)
        self.host = host
        self._port = port
        self._clock = clock
        self._t0 = 0.0
        self.meters: dict[int, SimMeter] = {}
        for slave in sorted(loads):
            if not 1 <= slave <= 247:
                raise ValueError(f"slave {slave} not in 1..247")
            self.meters[slave] = SimMeter(
                slave=slave,
                load=loads[slave],
                nominal_voltage_v=round(rng.uniform(227.0, 231.0), 2),
                voltage_phase=rng.uniform(0, 2 * math.pi),
                power_factor=round(rng.uniform(0.90, 0.98), 3),
                energy_kwh=round(rng.uniform(800.0, 6000.0), 2),
            )
        self._server: ModbusTcpServer | None = None

    @property
    def port(self) -> int:
        return self._port

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def set_mode(self, slave: int, mode: Mode) -> None:
        self.meters[slave].mode = mode

    def set_load(self, slave: int, load: LoadFn) -> None:
        self.meters[slave].load = load

    async def __aenter__(self) -> ModbusMeterSim:
        self._t0 = self._clock()
        await self.resume()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pause()

    async def resume(self) -> None:
        """Start serving (again, on the same port)."""
        if self._server is not None:
            return
        devices = [
            SimDevice(
                id=slave,
                simdata=[
                    SimData(_BLOCK_LOW[0], count=_BLOCK_LOW[1], datatype=DataType.REGISTERS),
                    SimData(_BLOCK_ENERGY[0], count=_BLOCK_ENERGY[1], datatype=DataType.REGISTERS),
                ],
                action=self._action_for(slave),
            )
            for slave in self.meters
        ]
        server = ModbusTcpServer(
            devices, address=(self.host, self._port), trace_packet=self._trace_packet
        )
        await server.serve_forever(background=True)
        self._server = server
        listener = cast(asyncio.Server, server.transport)
        self._port = int(listener.sockets[0].getsockname()[1])

    async def pause(self) -> None:
        """Stop serving and drop every connection (the endpoint vanishes from the network)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

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
            if meter.mode == "exception":
                return ExcCodes.DEVICE_FAILURE
            for reg, value in meter.values_at(self.elapsed()).items():
                offset = reg - start_address
                if offset >= 0 and offset + 1 < len(registers):
                    registers[offset : offset + 2] = float32_registers(value)
            return None

        return action

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop the responses of silent meters (byte 6 of the MBAP header is the unit id)."""
        if sending and len(data) > 6:
            meter = self.meters.get(data[6])
            if meter is not None and meter.mode == "silent":
                return b""
        return data
