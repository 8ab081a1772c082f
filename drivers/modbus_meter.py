"""Per-flat electricity meters over Modbus TCP (Chint DDSU666 profile).

Two halves, as everywhere in ``drivers``:

- the pure part: a declarative register map (:data:`REGISTERS`), the read plan that coalesces
  neighbouring registers into as few requests as possible (:func:`plan_reads`) and the decoder
  of a block of 16-bit registers into field values (:func:`decode_registers`);
- the adapter, :class:`ModbusTcpMeterPoller`, which polls every meter behind one Modbus TCP
  endpoint (a meter with a TCP interface or an RS-485 gateway) with pymodbus's
  ``AsyncModbusTcpClient`` and yields :class:`contract.events.MeterReading` and
  :class:`contract.events.DeviceFault`.

Register facts (docs: domain.md, "Modbus meters"): IEEE 754 float32, big-endian, high word first
unless configured; DDSU666 0x2000 voltage (V), 0x2002 current (A), 0x2004 active power (kW),
0x200A power factor, 0x200E frequency (Hz), 0x4000 imported active energy (kWh). Sources
disagree on the function code (0x03 holding vs 0x04 input registers): 0x03 is the default, a
meter can be configured to 0x04.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from contract.events import DeviceFault, MeterReading
from drivers.base import (
    DeviceState,
    DriverConfigError,
    DriverCounters,
    raise_if_cancelling,
    utc_now,
)

log = logging.getLogger(__name__)

WordOrder = Literal["big", "little"]

FC_HOLDING = 0x03
FC_INPUT = 0x04
MAX_REGISTERS_PER_READ = 125  # Modbus application protocol limit for function 0x03/0x04

FAULT_TIMEOUT = "timeout"
"""The meter did not answer within ``timeout_s`` (dead meter, wrong address, broken bus)."""
FAULT_EXCEPTION = "modbus_exception"
"""The meter answered with a Modbus exception (e.g. illegal address: wrong profile)."""
FAULT_BAD_RESPONSE = "bad_response"
"""The meter answered with the wrong number of registers or values that are not numbers."""
FAULT_UNREACHABLE = "unreachable"
"""The Modbus TCP endpoint (meter or RS-485 gateway) refused or dropped the connection."""


# -- the pure part ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where one field lives and how to turn its registers into a value."""

    address: int
    count: int = 2
    data_type: Literal["float32"] = "float32"
    word_order: WordOrder = "big"
    scale: float = 1.0
    unit: str = ""


REGISTERS: dict[str, RegisterSpec] = {
    "voltage_v": RegisterSpec(0x2000, unit="V"),
    "current_a": RegisterSpec(0x2002, unit="A"),
    "power_w": RegisterSpec(0x2004, scale=1000.0, unit="W"),  # the meter reports kW
    "power_factor": RegisterSpec(0x200A),
    "frequency_hz": RegisterSpec(0x200E, unit="Hz"),
    "energy_kwh": RegisterSpec(0x4000, unit="kWh"),
}
"""Chint DDSU666 single-phase meter: field name -> register."""


@dataclass(frozen=True, slots=True)
class MeterProfile:
    registers: Mapping[str, RegisterSpec]
    function_code: int = FC_HOLDING


PROFILES: dict[str, MeterProfile] = {"ddsu666": MeterProfile(REGISTERS, FC_HOLDING)}


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read request: ``count`` registers from ``address``."""

    address: int
    count: int


def plan_reads(
    registers: Mapping[str, RegisterSpec],
    *,
    max_gap: int = 8,
    max_count: int = MAX_REGISTERS_PER_READ,
) -> tuple[ReadBlock, ...]:
    """Coalesce the fields into as few reads as possible.

    Fields whose registers are at most ``max_gap`` registers apart share one read, as long as
    the read stays within ``max_count`` registers. For the DDSU666 map this gives
    ``0x2000..0x200F`` (16 registers) and ``0x4000..0x4001``.
    """
    specs = sorted(registers.values(), key=lambda s: s.address)
    blocks: list[ReadBlock] = []
    start = end = -1  # current block covers [start, end)
    for spec in specs:
        spec_end = spec.address + spec.count
        if start >= 0 and spec.address - end <= max_gap and spec_end - start <= max_count:
            end = max(end, spec_end)
            continue
        if start >= 0:
            blocks.append(ReadBlock(start, end - start))
        start, end = spec.address, spec_end
    if start >= 0:
        blocks.append(ReadBlock(start, end - start))
    return tuple(blocks)


def encode_float32(value: float, word_order: WordOrder = "big") -> list[int]:
    """Two 16-bit registers holding ``value`` as IEEE 754 float32."""
    raw = struct.pack(">f", value)
    words = [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
    return words if word_order == "big" else words[::-1]


def decode_float32(words: Sequence[int], word_order: WordOrder = "big") -> float:
    """Inverse of :func:`encode_float32`. Raises ValueError unless given two 16-bit words."""
    if len(words) != 2 or any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError(f"a float32 needs two 16-bit registers, got {list(words)!r}")
    hi, lo = (words[0], words[1]) if word_order == "big" else (words[1], words[0])
    value: float = struct.unpack(">f", hi.to_bytes(2, "big") + lo.to_bytes(2, "big"))[0]
    return value


def decode_registers(
    start: int, registers: Sequence[int], specs: Mapping[str, RegisterSpec] = REGISTERS
) -> dict[str, float]:
    """Decode every field of ``specs`` that lies wholly inside the block read from ``start``.

    Values are scaled (DDSU666 power: kW -> W). A field whose registers do not hold a finite
    number (a NaN or infinity, as some meters send for "not available") is left out.
    """
    values: dict[str, float] = {}
    for name, spec in specs.items():
        offset = spec.address - start
        if offset < 0 or offset + spec.count > len(registers):
            continue
        raw = decode_float32(registers[offset : offset + spec.count], spec.word_order)
        if math.isfinite(raw):
            values[name] = raw * spec.scale
    return values


# -- the adapter --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """One meter behind a Modbus TCP endpoint."""

    meter_id: str
    slave: int
    profile: str = "ddsu666"
    function_code: int | None = None  # None: the profile's default


@dataclass(slots=True)
class _MeterState:
    spec: MeterSpec
    profile: MeterProfile
    function_code: int
    plan: tuple[ReadBlock, ...]
    last_seen: datetime | None = None
    fault: str | None = None


class _PollFailed(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, fault: str, detail: str) -> None:
        super().__init__(detail)
        self.fault = fault
        self.detail = detail


class ModbusTcpMeterPoller:
    """Poll meters over Modbus TCP every ``interval_s``; yield readings and fault changes.

    Meters are read one after another on one connection (as an RS-485 bus behind a gateway
    must be); a meter that does not answer costs at most ``timeout_s`` per read and never stops
    the others. A fault is reported once when it starts (``DeviceFault(active=True)``) and once
    when the meter answers again (``active=False``). A dropped connection is re-opened at the
    next meter or, if the endpoint stays down, at the next cycle.

    Counters: ``reads_ok`` (meter readings), ``timeouts``, ``exceptions`` (Modbus exception
    answers), ``bad_responses``, ``reconnects``.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        meters: Sequence[MeterSpec],
        interval_s: float = 10.0,
        timeout_s: float = 0.5,
        clock: Callable[[], datetime] = utc_now,
        name: str | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise DriverConfigError("interval_s and timeout_s must be positive")
        self.name = name or f"modbus-tcp:{host}:{port}"
        self.counters = DriverCounters(
            ("reads_ok", "timeouts", "exceptions", "bad_responses", "reconnects")
        )
        self._host = host
        self._port = port
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._meters: dict[str, _MeterState] = {}
        for m in meters:
            if m.meter_id in self._meters:
                raise DriverConfigError(f"duplicate meter_id {m.meter_id!r}")
            if not 0 <= m.slave <= 247:
                raise DriverConfigError(f"meter {m.meter_id!r}: slave {m.slave} not in 0..247")
            profile = PROFILES.get(m.profile)
            if profile is None:
                raise DriverConfigError(
                    f"meter {m.meter_id!r}: unknown profile {m.profile!r} "
                    f"(known: {', '.join(sorted(PROFILES))})"
                )
            fc = m.function_code if m.function_code is not None else profile.function_code
            if fc not in (FC_HOLDING, FC_INPUT):
                raise DriverConfigError(f"meter {m.meter_id!r}: function code must be 3 or 4")
            self._meters[m.meter_id] = _MeterState(m, profile, fc, plan_reads(profile.registers))

    def device_status(self) -> dict[str, DeviceState]:
        return {
            meter_id: DeviceState(
                online=st.fault is None and st.last_seen is not None,
                last_seen=st.last_seen,
                fault=st.fault,
            )
            for meter_id, st in self._meters.items()
        }

    async def events(self) -> AsyncGenerator[MeterReading | DeviceFault, None]:
        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            name=self.name,
            timeout=self._timeout_s,
            retries=0,
            reconnect_delay=0,  # no background reconnects: this loop decides when to connect
        )
        # pymodbus drops the connection after this many unanswered requests in a row; allow a
        # whole cycle of dead meters so one dead bus segment does not churn the connection.
        client.set_max_no_responses(len(self._meters) + 3)
        loop = asyncio.get_running_loop()
        attempts = 0
        try:
            next_cycle = loop.time()
            while True:
                endpoint_down = False
                for st in self._meters.values():
                    if not client.connected and not endpoint_down:
                        if attempts:
                            self.counters.inc("reconnects")
                        attempts += 1
                        endpoint_down = not await client.connect()
                        raise_if_cancelling()
                        if endpoint_down:
                            log.warning("%s: cannot connect", self.name)
                    if endpoint_down:
                        detail = f"cannot connect to {self._host}:{self._port}"
                        for event in self._failed(st, FAULT_UNREACHABLE, detail):
                            yield event
                        continue
                    for event in await self._poll(client, st):
                        yield event
                next_cycle += self._interval_s
                delay = next_cycle - loop.time()
                if delay < 0:  # a slow cycle: skip the missed ticks rather than burst
                    next_cycle = loop.time()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            client.close()

    async def _poll(
        self, client: AsyncModbusTcpClient, st: _MeterState
    ) -> list[MeterReading | DeviceFault]:
        values: dict[str, float] = {}
        try:
            for block in st.plan:
                registers = await self._read(client, st, block)
                values.update(decode_registers(block.address, registers, st.profile.registers))
        except _PollFailed as failed:
            return self._failed(st, failed.fault, failed.detail)
        if "power_w" not in values:
            self.counters.inc("bad_responses")
            return self._failed(st, FAULT_BAD_RESPONSE, "power register holds no number")
        self.counters.inc("reads_ok")
        ts = self._clock()
        out: list[MeterReading | DeviceFault] = []
        if st.fault is not None:
            out.append(DeviceFault(ts, st.spec.meter_id, st.fault, "recovered", active=False))
            log.info("%s: meter %s answers again", self.name, st.spec.meter_id)
            st.fault = None
        st.last_seen = ts
        out.append(
            MeterReading(
                ts=ts,
                meter_id=st.spec.meter_id,
                power_w=values["power_w"],
                voltage_v=values.get("voltage_v"),
                current_a=values.get("current_a"),
                energy_kwh=values.get("energy_kwh"),
                power_factor=values.get("power_factor"),
            )
        )
        return out

    async def _read(
        self, client: AsyncModbusTcpClient, st: _MeterState, block: ReadBlock
    ) -> list[int]:
        read = (
            client.read_holding_registers
            if st.function_code == FC_HOLDING
            else client.read_input_registers
        )
        try:
            response: ModbusPDU = await read(
                block.address, count=block.count, device_id=st.spec.slave
            )
        except ConnectionException as exc:
            raise_if_cancelling()
            raise _PollFailed(FAULT_UNREACHABLE, str(exc)) from None
        except ModbusIOException as exc:
            raise_if_cancelling()
            self.counters.inc("timeouts")
            raise _PollFailed(FAULT_TIMEOUT, f"no answer within {self._timeout_s}s") from exc
        raise_if_cancelling()
        if response.isError():
            self.counters.inc("exceptions")
            code = getattr(response, "exception_code", None)
            raise _PollFailed(
                FAULT_EXCEPTION,
                f"exception code {code} reading {block.count} registers at {block.address:#06x}",
            )
        registers = list(response.registers)
        if len(registers) != block.count:
            self.counters.inc("bad_responses")
            raise _PollFailed(
                FAULT_BAD_RESPONSE, f"asked for {block.count} registers, got {len(registers)}"
            )
        return registers

    def _failed(self, st: _MeterState, fault: str, detail: str) -> list[MeterReading | DeviceFault]:
        if st.fault == fault:
            return []
        ts = self._clock()
        out: list[MeterReading | DeviceFault] = []
        if st.fault is not None:
            out.append(DeviceFault(ts, st.spec.meter_id, st.fault, "superseded", active=False))
        log.warning("%s: meter %s: %s (%s)", self.name, st.spec.meter_id, fault, detail)
        st.fault = fault
        out.append(DeviceFault(ts, st.spec.meter_id, fault, detail, active=True))
        return out
