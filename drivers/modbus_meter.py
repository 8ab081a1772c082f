"""Per-flat electricity meters over Modbus: register maps, decoding and the bus poller.

Two halves, as everywhere in ``drivers``:

- the pure part: declarative register maps (:data:`PROFILES`: Chint DDSU666, Eastron SDM120 and
  SDM630, plus :func:`generic_profile` built from configuration), the read plan that coalesces
  neighbouring registers into as few requests as possible (:func:`plan_reads`) and the decoder of
  the replies into typed values (:class:`MeterDecoder` -> :class:`MeterValues`);
- the adapter, :class:`ModbusMeterPoller`: every meter of one bus (one RS-485 line, one
  ``socket://`` converter or one Modbus TCP endpoint), polled through one
  :class:`drivers.modbus_bus.ModbusLink`, yielding :class:`contract.events.MeterReading` and
  :class:`contract.events.DeviceFault`. :class:`ModbusTcpMeterPoller` is the Modbus TCP
  shorthand kept from the first version.

Register facts (docs: domain.md, "Modbus meters"; docs/devices/meters-modbus.md): IEEE 754
float32, big-endian, high word first unless configured.

- Chint DDSU666 (function 0x03 by default, some units answer 0x04 only): 0x2000 voltage (V),
  0x2002 current (A), 0x2004 active power (kW), 0x200A power factor, 0x200E frequency (Hz),
  0x4000 imported active energy (kWh).
- Eastron SDM120 (function 0x04, input registers): 0x0000 V, 0x0006 A, 0x000C W, 0x001E PF,
  0x0046 Hz, 0x0048 import kWh, 0x0156 total kWh.
- Eastron SDM630 (three-phase, function 0x04): phase voltages 0x0000/02/04, phase currents
  0x0006/08/0A, phase powers 0x000C/0E/10, total system power 0x0034 (W), total power factor
  0x003E, frequency 0x0046, import kWh 0x0048. A reading carries the total power, the phase 1
  (L1) voltage and, as ``current_a``, the *highest* of the three phase currents: a three-phase
  breaker is rated per pole, so the most loaded phase is what the overload rule must compare
  with the rating (a sum would overstate by up to three times and raise false overload alarms).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import operator
import struct
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, get_args

from contract.events import DeviceFault, MeterReading
from drivers.base import Backoff, DeviceState, DriverConfigError, DriverCounters, utc_now
from drivers.modbus_bus import (
    FAULT_BAD_RESPONSE,
    FAULT_EXCEPTION,
    FAULT_TIMEOUT,
    FAULT_UNREACHABLE,
    FC_HOLDING,
    FC_INPUT,
    BadAnswer,
    ExceptionAnswer,
    GarbledAnswer,
    LinkDown,
    ModbusError,
    ModbusLink,
    NoAnswer,
    TcpEndpoint,
    TraceHook,
)

log = logging.getLogger(__name__)

WordOrder = Literal["big", "little"]
DataType = Literal["float32", "int16", "uint16", "int32", "uint32"]
MAX_REGISTERS_PER_READ = 125  # Modbus application protocol limit for function 0x03/0x04
DEFAULT_MAX_GAP = 8
"""Registers a read may bridge between two wanted fields. On RS-485 a separate request costs
about 20 character times (8 request bytes, 5 reply overhead bytes, two 3.5-character silences)
plus the meter's turnaround; a bridged register costs 2, so bridging pays up to about 10."""

WORDS: dict[str, int] = {"float32": 2, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2}
_STRUCT_CODE = {"float32": "f", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I"}
_WORD_NAMES = {1: "one 16-bit register", 2: "two 16-bit registers"}

ReadingField = Literal[
    "power_w", "voltage_v", "current_a", "energy_kwh", "power_factor", "frequency_hz"
]
READING_FIELDS: frozenset[str] = frozenset(get_args(ReadingField))
"""Field names a generic map may use (``power_w`` is required)."""


# -- register specs and values ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where one field lives and how to turn its registers into a value.

    The value is ``raw * scale``; a value that is not finite, or outside ``valid`` (after
    scaling), is left out of the result as "not available".
    """

    address: int
    data_type: DataType = "float32"
    word_order: WordOrder = "big"
    scale: float = 1.0
    unit: str = ""
    valid: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF:
            raise DriverConfigError(f"register address {self.address} not in 0..65535")
        if self.data_type not in WORDS:
            raise DriverConfigError(f"unknown data type {self.data_type!r}")
        if self.word_order not in ("big", "little"):
            raise DriverConfigError(f"word order must be big or little, not {self.word_order!r}")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise DriverConfigError("scale must be a finite, non-zero number")

    @property
    def count(self) -> int:
        """Registers the field occupies."""
        return WORDS[self.data_type]


def decode_value(
    words: Sequence[int], data_type: DataType = "float32", word_order: WordOrder = "big"
) -> float:
    """The raw (unscaled) number in ``words``. Raises ValueError unless given the right number
    of 16-bit words."""
    n = WORDS[data_type]
    if len(words) != n or any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError(f"a {data_type} needs {_WORD_NAMES[n]}, got {list(words)!r}")
    ordered = (words[1], words[0]) if n == 2 and word_order == "little" else tuple(words)
    raw = struct.pack(f">{n}H", *ordered)
    value: float = struct.unpack(">" + _STRUCT_CODE[data_type], raw)[0]
    return float(value)


def encode_value(
    value: float, data_type: DataType = "float32", word_order: WordOrder = "big"
) -> list[int]:
    """Registers holding ``value`` (rounded for the integer types). Raises ValueError if the
    value does not fit the type."""
    code = _STRUCT_CODE[data_type]
    try:
        raw = struct.pack(">" + code, value if data_type == "float32" else round(value))
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} does not fit a {data_type}: {exc}") from None
    n = WORDS[data_type]
    words = list(struct.unpack(f">{n}H", raw))
    return words[::-1] if n == 2 and word_order == "little" else words


def encode_float32(value: float, word_order: WordOrder = "big") -> list[int]:
    """Two 16-bit registers holding ``value`` as IEEE 754 float32."""
    return encode_value(value, "float32", word_order)


def decode_float32(words: Sequence[int], word_order: WordOrder = "big") -> float:
    """Inverse of :func:`encode_float32`. Raises ValueError unless given two 16-bit words."""
    return decode_value(words, "float32", word_order)


def _scaled(spec: RegisterSpec, raw: float) -> float | None:
    value = raw * spec.scale
    if not math.isfinite(value):
        return None
    if spec.valid is not None and not spec.valid[0] <= value <= spec.valid[1]:
        return None
    return value


def decode_registers(
    start: int, registers: Sequence[int], specs: Mapping[str, RegisterSpec] | None = None
) -> dict[str, float]:
    """Decode every field of ``specs`` that lies wholly inside the block read from ``start``.

    Values are scaled (DDSU666 power: kW -> W). A field whose registers do not hold a usable
    number (NaN, infinity, outside its ``valid`` range) is left out. Raises ValueError if a
    register is not a 16-bit value.
    """
    values: dict[str, float] = {}
    for name, spec in (REGISTERS if specs is None else specs).items():
        offset = spec.address - start
        if offset < 0 or offset + spec.count > len(registers):
            continue
        raw = decode_value(registers[offset : offset + spec.count], spec.data_type, spec.word_order)
        value = _scaled(spec, raw)
        if value is not None:
            values[name] = value
    return values


# -- profiles -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterProfile:
    """A meter model's register map.

    ``registers`` maps field names to registers; the fields named in :data:`READING_FIELDS`
    fill the reading, ``power_w`` is required. ``phase_currents`` names per-phase current
    fields: without a ``current_a`` field, the reading's current is the highest of them.
    ``unpolled`` fields are documented but not read every poll.
    """

    name: str
    registers: Mapping[str, RegisterSpec]
    function_code: int = FC_HOLDING
    phase_currents: tuple[str, ...] = ()
    unpolled: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if "power_w" not in self.registers:
            raise DriverConfigError(f"profile {self.name!r}: a power_w register is required")
        if self.function_code not in (FC_HOLDING, FC_INPUT):
            raise DriverConfigError(f"profile {self.name!r}: function code must be 3 or 4")
        missing = [n for n in (*self.phase_currents, *self.unpolled) if n not in self.registers]
        if missing:
            raise DriverConfigError(f"profile {self.name!r}: unknown fields {missing}")

    def polled(self) -> dict[str, RegisterSpec]:
        """The fields read every poll: those of the reading, plus the phase currents."""
        wanted = READING_FIELDS | set(self.phase_currents)
        return {n: s for n, s in self.registers.items() if n in wanted and n not in self.unpolled}


_V = (0.0, 1000.0)
_PF = (-1.0, 1.0)
_HZ = (0.0, 100.0)

REGISTERS: dict[str, RegisterSpec] = {
    "voltage_v": RegisterSpec(0x2000, unit="V", valid=_V),
    "current_a": RegisterSpec(0x2002, unit="A"),
    "power_w": RegisterSpec(0x2004, scale=1000.0, unit="W"),  # the meter reports kW
    "power_factor": RegisterSpec(0x200A, valid=_PF),
    "frequency_hz": RegisterSpec(0x200E, unit="Hz", valid=_HZ),
    "energy_kwh": RegisterSpec(0x4000, unit="kWh"),
}
"""Chint DDSU666 single-phase meter: field name -> register."""

SDM120_REGISTERS: dict[str, RegisterSpec] = {
    "voltage_v": RegisterSpec(0x0000, unit="V", valid=_V),
    "current_a": RegisterSpec(0x0006, unit="A"),
    "power_w": RegisterSpec(0x000C, unit="W"),
    "power_factor": RegisterSpec(0x001E, valid=_PF),
    "frequency_hz": RegisterSpec(0x0046, unit="Hz", valid=_HZ),
    "energy_kwh": RegisterSpec(0x0048, unit="kWh"),  # import active energy
    "total_energy_kwh": RegisterSpec(0x0156, unit="kWh"),
}
"""Eastron SDM120 single-phase meter (input registers, function 0x04)."""

SDM630_REGISTERS: dict[str, RegisterSpec] = {
    "voltage_v": RegisterSpec(0x0000, unit="V", valid=_V),  # phase 1 (L1-N)
    "voltage_l2_v": RegisterSpec(0x0002, unit="V", valid=_V),
    "voltage_l3_v": RegisterSpec(0x0004, unit="V", valid=_V),
    "current_l1_a": RegisterSpec(0x0006, unit="A"),
    "current_l2_a": RegisterSpec(0x0008, unit="A"),
    "current_l3_a": RegisterSpec(0x000A, unit="A"),
    "power_l1_w": RegisterSpec(0x000C, unit="W"),
    "power_l2_w": RegisterSpec(0x000E, unit="W"),
    "power_l3_w": RegisterSpec(0x0010, unit="W"),
    "power_w": RegisterSpec(0x0034, unit="W"),  # total system power
    "power_factor": RegisterSpec(0x003E, valid=_PF),  # total system power factor
    "frequency_hz": RegisterSpec(0x0046, unit="Hz", valid=_HZ),
    "energy_kwh": RegisterSpec(0x0048, unit="kWh"),  # total import active energy
}
"""Eastron SDM630 three-phase meter (input registers, function 0x04)."""

PROFILES: dict[str, MeterProfile] = {
    "ddsu666": MeterProfile("ddsu666", REGISTERS, FC_HOLDING),
    "sdm120": MeterProfile(
        "sdm120", SDM120_REGISTERS, FC_INPUT, unpolled=frozenset({"total_energy_kwh"})
    ),
    "sdm630": MeterProfile(
        "sdm630",
        SDM630_REGISTERS,
        FC_INPUT,
        phase_currents=("current_l1_a", "current_l2_a", "current_l3_a"),
    ),
}


_DEFAULT_VALID: dict[str, tuple[float, float]] = {
    "voltage_v": _V,
    "power_factor": _PF,
    "frequency_hz": _HZ,
}


def generic_profile(
    registers: Mapping[str, RegisterSpec], function_code: int = FC_HOLDING, name: str = "generic"
) -> MeterProfile:
    """A profile from configuration: fields from :data:`READING_FIELDS`, ``power_w`` required.

    Voltage, power factor and frequency get the built-in profiles' plausibility ranges unless
    the spec has its own ``valid``.
    """
    unknown = sorted(set(registers) - READING_FIELDS)
    if unknown:
        raise DriverConfigError(
            f"generic map: unknown fields {unknown} (known: {', '.join(sorted(READING_FIELDS))})"
        )
    specs = {
        n: replace(s, valid=_DEFAULT_VALID[n]) if s.valid is None and n in _DEFAULT_VALID else s
        for n, s in registers.items()
    }
    return MeterProfile(name, specs, function_code)


# -- read plan and decoder ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read request: ``count`` registers from ``address``."""

    address: int
    count: int


def plan_reads(
    registers: Mapping[str, RegisterSpec],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
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


@dataclass(frozen=True, slots=True)
class MeterValues:
    """What one poll of a meter found (power required, the rest when the meter had it)."""

    power_w: float
    voltage_v: float | None = None
    current_a: float | None = None
    energy_kwh: float | None = None
    power_factor: float | None = None
    frequency_hz: float | None = None

    def reading(self, ts: datetime, meter_id: str) -> MeterReading:
        return MeterReading(
            ts=ts,
            meter_id=meter_id,
            power_w=self.power_w,
            voltage_v=self.voltage_v,
            current_a=self.current_a,
            energy_kwh=self.energy_kwh,
            power_factor=self.power_factor,
        )


@dataclass(frozen=True, slots=True)
class _Block:
    """One read of the plan, compiled: how its registers become the fields' raw numbers."""

    address: int
    count: int
    pack: Callable[..., bytes]  # registers -> big-endian bytes
    order: Callable[[Sequence[int]], Sequence[int]] | None  # swaps little-endian words first
    unpack: Callable[[bytes], tuple[float, ...]]  # bytes -> every field's raw value
    fields: tuple[tuple[int, float, float, float], ...]  # (slot, scale, low, high)


_SLOTS = ("power_w", "voltage_v", "current_a", "energy_kwh", "power_factor", "frequency_hz")
"""The decoder's output slots, in :class:`MeterValues` order (phase currents follow)."""


def _compile(
    block: ReadBlock, specs: list[tuple[str, RegisterSpec]], slots: Mapping[str, int]
) -> _Block:
    specs = sorted(specs, key=lambda item: item[1].address)
    fmt, at, order = ">", 0, list(range(block.count))
    for _, spec in specs:
        offset = spec.address - block.address
        if offset < at:
            raise DriverConfigError(f"registers overlap at {spec.address:#06x}")
        fmt += "x" * (2 * (offset - at)) + _STRUCT_CODE[spec.data_type]
        at = offset + spec.count
        if spec.count == 2 and spec.word_order == "little":
            order[offset], order[offset + 1] = offset + 1, offset
    fmt += "x" * (2 * (block.count - at))
    swap = order != list(range(block.count))
    return _Block(
        block.address,
        block.count,
        struct.Struct(f">{block.count}H").pack,
        operator.itemgetter(*order) if swap else None,
        struct.Struct(fmt).unpack,
        tuple(
            (slots[name], spec.scale, *(spec.valid or (-math.inf, math.inf)))
            for name, spec in specs
        ),
    )


class MeterDecoder:
    """A profile compiled into its read plan (:attr:`blocks`) and a fast decoder of the replies.

    :meth:`decode` takes the registers of every block, in plan order, and returns
    :class:`MeterValues`; it raises :class:`drivers.modbus_bus.BadAnswer` for a reply of the
    wrong length, a register outside 0..65535, or no usable power value.
    """

    def __init__(
        self,
        profile: MeterProfile,
        *,
        max_gap: int = DEFAULT_MAX_GAP,
        max_count: int = MAX_REGISTERS_PER_READ,
    ) -> None:
        self.profile = profile
        polled = profile.polled()
        self.blocks = plan_reads(polled, max_gap=max_gap, max_count=max_count)
        members: list[list[tuple[str, RegisterSpec]]] = [[] for _ in self.blocks]
        for name, spec in polled.items():
            for i, block in enumerate(self.blocks):
                offset = spec.address - block.address
                if offset >= 0 and offset + spec.count <= block.count:
                    members[i].append((name, spec))
                    break
        slots = {name: i for i, name in enumerate((*_SLOTS, *profile.phase_currents))}
        self._slot_count = len(slots)
        self._phase_slots = tuple(slots[n] for n in profile.phase_currents)
        self._compiled = tuple(
            _compile(b, m, slots) for b, m in zip(self.blocks, members, strict=True)
        )

    def decode(self, replies: Sequence[Sequence[int]]) -> MeterValues:
        v = self._slots(replies)
        return MeterValues(v[0], v[1], v[2], v[3], v[4], v[5])  # type: ignore[arg-type]

    def reading(
        self, replies: Sequence[Sequence[int]], ts: datetime, meter_id: str
    ) -> MeterReading:
        """:meth:`decode` straight into the event (the poller's hot path)."""
        v = self._slots(replies)
        return MeterReading(ts, meter_id, v[0], v[1], v[2], v[3], v[4])  # type: ignore[arg-type]

    def _slots(self, replies: Sequence[Sequence[int]]) -> list[float | None]:
        """The values in :data:`_SLOTS` order (power guaranteed), then the phase currents."""
        if len(replies) != len(self._compiled):
            raise BadAnswer(f"expected {len(self._compiled)} replies, got {len(replies)}")
        out: list[float | None] = [None] * self._slot_count
        isfinite = math.isfinite
        for block, regs in zip(self._compiled, replies):  # noqa: B905 - lengths checked
            if len(regs) != block.count:
                raise BadAnswer(
                    f"asked for {block.count} registers at {block.address:#06x}, got {len(regs)}"
                )
            words = regs if block.order is None else block.order(regs)
            try:
                raw = block.pack(*words)
            except struct.error:
                raise BadAnswer("a register outside 0..65535") from None
            for (slot, scale, low, high), number in zip(block.fields, block.unpack(raw)):  # noqa: B905
                value = number * scale
                if isfinite(value) and low <= value <= high:
                    out[slot] = float(value)
        if out[0] is None:
            raise BadAnswer("power register holds no number")
        if self._phase_slots and out[2] is None:
            phases = [p for p in (out[i] for i in self._phase_slots) if p is not None]
            if phases:
                out[2] = max(phases)
        return out


# -- the adapter --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """One meter on a bus. ``None`` values take the poller's defaults (and the profile's
    function code)."""

    meter_id: str
    slave: int
    profile: str | MeterProfile = "ddsu666"
    function_code: int | None = None
    interval_s: float | None = None
    timeout_s: float | None = None


METER_COUNTERS = ("reads_ok", "timeouts", "exceptions", "bad_responses", "quarantined")
"""Counters kept per meter (:meth:`ModbusMeterPoller.device_counters`)."""
BUS_COUNTERS = (*METER_COUNTERS, "reconnects", "requests")
"""Counters of the whole bus (:attr:`ModbusMeterPoller.counters`): the meters' sums, plus
connection attempts after the first (``reconnects``) and Modbus transactions (``requests``)."""

_COUNTER_OF: dict[type[ModbusError], str] = {
    NoAnswer: "timeouts",
    GarbledAnswer: "bad_responses",
    ExceptionAnswer: "exceptions",
    BadAnswer: "bad_responses",
}

Event = MeterReading | DeviceFault


@dataclass(slots=True, eq=False)
class _Meter:
    spec: MeterSpec
    decoder: MeterDecoder
    function_code: int
    interval_s: float
    timeout_s: float
    max_skip: int
    blocks: tuple[tuple[int, int], ...]
    counters: DriverCounters = field(default_factory=lambda: DriverCounters(METER_COUNTERS))
    due: float = 0.0
    failures: int = 0  # consecutive failed polls
    run_fault: str | None = None  # fault class of the current run of failures
    run_length: int = 0
    last_seen: datetime | None = None
    fault: str | None = None  # the reported (active) fault


class ModbusMeterPoller:
    """Poll every meter of one bus; yield readings and fault changes.

    Scheduling. Each meter has its own interval. The bus runs one transaction at a time, back
    to back while meters are due, and sleeps (no busy waiting) until the next one is due. A
    meter polled late keeps its grid unless it fell more than one interval behind, in which
    case the missed polls are dropped rather than burst.

    Quarantine. A meter that does not answer costs its whole timeout (default 0.3 s) of bus
    time. After its k-th failed poll in a row it is skipped for ``2**(k-1)`` of its polls (1, 2,
    4, ...) up to ``max_quarantine_s``, so a dead meter costs little bus time and the others
    keep their rate; it is retried at the end of every quarantine and resumes by itself when it
    answers. Modbus exception replies and malformed replies cost no waiting and are not
    quarantined.

    Faults. A fault is reported once (``DeviceFault(active=True)``) after ``fault_after``
    failed polls of one kind in a row (``unreachable``: at once), and cleared once
    (``active=False``) at the next good reading; a fault of another kind that persists
    supersedes it. Kinds: ``timeout``, ``bad_response`` (garbled bytes or malformed replies),
    ``modbus_exception``, ``unreachable`` (the port or connection is down; reopened with
    jittered exponential backoff).

    Counters: :data:`BUS_COUNTERS` for the bus (:attr:`counters`), :data:`METER_COUNTERS` per
    meter (:meth:`device_counters`). ``quarantined`` counts polls skipped.
    """

    def __init__(
        self,
        *,
        link: ModbusLink,
        meters: Sequence[MeterSpec],
        interval_s: float = 10.0,
        timeout_s: float = 0.3,
        max_quarantine_s: float = 300.0,
        fault_after: int = 2,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
        name: str | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or max_quarantine_s <= 0:
            raise DriverConfigError("interval_s, timeout_s and max_quarantine_s must be positive")
        if fault_after < 1:
            raise DriverConfigError("fault_after must be at least 1")
        if not meters:
            raise DriverConfigError("a bus needs at least one meter")
        self.name = name or link.name
        self.counters = DriverCounters(BUS_COUNTERS)
        self._link = link
        self._clock = clock
        self._fault_after = fault_after
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self._meters: dict[str, _Meter] = {}
        slaves: dict[int, str] = {}
        requests = 0
        for m in meters:
            meter = self._build(m, interval_s, timeout_s, max_quarantine_s)
            if m.slave in slaves:
                raise DriverConfigError(
                    f"meters {slaves[m.slave]!r} and {m.meter_id!r} share slave {m.slave}"
                )
            slaves[m.slave] = m.meter_id
            self._meters[m.meter_id] = meter
            requests += len(meter.blocks)
        # pymodbus drops a TCP connection after this many unanswered requests in a row: allow
        # a whole round of dead meters, so one dead slave never churns the connection.
        link.drop_after_no_answers = max(link.drop_after_no_answers, requests + 3)

    def _build(
        self, m: MeterSpec, interval_s: float, timeout_s: float, max_quarantine_s: float
    ) -> _Meter:
        if m.meter_id in self._meters:
            raise DriverConfigError(f"duplicate meter_id {m.meter_id!r}")
        if not 1 <= m.slave <= 247:
            raise DriverConfigError(f"meter {m.meter_id!r}: slave {m.slave} not in 1..247")
        if isinstance(m.profile, MeterProfile):
            profile = m.profile
        else:
            found = PROFILES.get(m.profile)
            if found is None:
                raise DriverConfigError(
                    f"meter {m.meter_id!r}: unknown profile {m.profile!r} "
                    f"(known: {', '.join(sorted(PROFILES))})"
                )
            profile = found
        fc = m.function_code if m.function_code is not None else profile.function_code
        if fc not in (FC_HOLDING, FC_INPUT):
            raise DriverConfigError(f"meter {m.meter_id!r}: function code must be 3 or 4")
        interval = m.interval_s if m.interval_s is not None else interval_s
        timeout = m.timeout_s if m.timeout_s is not None else timeout_s
        if interval <= 0 or timeout <= 0:
            raise DriverConfigError(f"meter {m.meter_id!r}: interval and timeout must be positive")
        decoder = MeterDecoder(profile)
        return _Meter(
            spec=m,
            decoder=decoder,
            function_code=fc,
            interval_s=interval,
            timeout_s=timeout,
            max_skip=max(1, int(max_quarantine_s / interval)),
            blocks=tuple((b.address, b.count) for b in decoder.blocks),
        )

    # -- status -------------------------------------------------------------------------------

    def device_status(self) -> dict[str, DeviceState]:
        return {
            meter_id: DeviceState(
                online=m.fault is None and m.last_seen is not None,
                last_seen=m.last_seen,
                fault=m.fault,
            )
            for meter_id, m in self._meters.items()
        }

    def device_counters(self) -> dict[str, dict[str, int]]:
        """Counters per meter id (:data:`METER_COUNTERS`)."""
        return {meter_id: m.counters.snapshot() for meter_id, m in self._meters.items()}

    # -- the loop -----------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        link = self._link
        seq = itertools.count()
        now = loop.time()
        heap: list[tuple[float, int, _Meter]] = []
        for m in self._meters.values():
            m.due = now
            heap.append((now, next(seq), m))
        attempts = 0
        down_logged = False
        try:
            while True:
                if not link.connected:
                    if attempts:
                        self.counters.inc("reconnects")
                    attempts += 1
                    try:
                        await link.connect()
                    except LinkDown as exc:
                        if not down_logged:
                            log.warning("%s: %s", self.name, exc)
                            down_logged = True
                        for event in self._link_down(str(exc)):
                            yield event
                        await asyncio.sleep(self._backoff.next())
                        continue
                    if down_logged:
                        log.info("%s: connected again", self.name)
                    down_logged = False
                    self._backoff.reset()
                due, _, m = heap[0]
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                heapq.heappop(heap)
                try:
                    out = await self._poll(m, loop)
                except LinkDown as exc:
                    out = self._link_down(str(exc))
                    m.due = loop.time()  # first in line once the bus is back
                heapq.heappush(heap, (m.due, next(seq), m))
                if type(out) is MeterReading:
                    yield out
                else:
                    for event in out:  # type: ignore[union-attr]
                        yield event
        finally:
            link.close()

    async def _poll(self, m: _Meter, loop: asyncio.AbstractEventLoop) -> MeterReading | list[Event]:
        link = self._link
        spec = m.spec
        replies: list[list[int]] = []
        try:
            for address, count in m.blocks:
                replies.append(
                    await link.read_registers(
                        spec.slave, m.function_code, address, count, timeout_s=m.timeout_s
                    )
                )
            ts = self._clock()
            reading = m.decoder.reading(replies, ts, spec.meter_id)
        except LinkDown:
            raise
        except ModbusError as exc:
            self.counters.inc("requests", len(replies) + 1)
            return self._failed(m, exc, loop.time())
        self.counters.inc("requests", len(replies))
        now = loop.time()
        m.counters.inc("reads_ok")
        self.counters.inc("reads_ok")
        m.last_seen = ts
        due = m.due + m.interval_s
        m.due = now if due <= now - m.interval_s else due
        if m.failures or m.fault is not None:
            m.failures = m.run_length = 0
            m.run_fault = None
            if m.fault is not None:
                log.info("%s: meter %s answers again", self.name, spec.meter_id)
                recovered = DeviceFault(ts, spec.meter_id, m.fault, "recovered", active=False)
                m.fault = None
                return [recovered, reading]
        return reading

    def _failed(self, m: _Meter, exc: ModbusError, now: float) -> list[Event]:
        counter = _COUNTER_OF.get(type(exc), "bad_responses")
        m.counters.inc(counter)
        self.counters.inc(counter)
        m.failures += 1
        if isinstance(exc, NoAnswer | GarbledAnswer):
            skip = min(2 ** min(m.failures - 1, 30), m.max_skip)
            m.counters.inc("quarantined", skip)
            self.counters.inc("quarantined", skip)
            m.due = now + m.interval_s * (skip + 1)
            log.debug(
                "%s: meter %s quarantined for %d polls (%s)", self.name, m.spec.meter_id, skip, exc
            )
        else:
            due = m.due + m.interval_s
            m.due = now if due <= now - m.interval_s else due
        return self._fault(m, exc.fault, str(exc))

    def _fault(self, m: _Meter, fault: str, detail: str) -> list[Event]:
        if m.run_fault == fault:
            m.run_length += 1
        else:
            m.run_fault, m.run_length = fault, 1
        if m.fault == fault:
            return []
        if fault != FAULT_UNREACHABLE and m.run_length < self._fault_after:
            return []
        ts = self._clock()
        out: list[Event] = []
        if m.fault is not None:
            out.append(DeviceFault(ts, m.spec.meter_id, m.fault, "superseded", active=False))
        log.warning("%s: meter %s: %s (%s)", self.name, m.spec.meter_id, fault, detail)
        m.fault = fault
        out.append(DeviceFault(ts, m.spec.meter_id, fault, detail, active=True))
        return out

    def _link_down(self, detail: str) -> list[Event]:
        out: list[Event] = []
        for m in self._meters.values():
            out.extend(self._fault(m, FAULT_UNREACHABLE, detail))
        return out


class ModbusTcpMeterPoller(ModbusMeterPoller):
    """The Modbus TCP shorthand: every meter behind one ``host:port`` (a meter with Ethernet or
    a Modbus TCP gateway), polled on one connection."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        meters: Sequence[MeterSpec],
        interval_s: float = 10.0,
        timeout_s: float = 0.3,
        clock: Callable[[], datetime] = utc_now,
        name: str | None = None,
        trace: TraceHook | None = None,
    ) -> None:
        link = ModbusLink(TcpEndpoint(host, port), trace=trace, name=name)
        super().__init__(
            link=link,
            meters=meters,
            interval_s=interval_s,
            timeout_s=timeout_s,
            clock=clock,
            name=name or f"modbus-tcp:{host}:{port}",
        )


__all__ = [
    "BUS_COUNTERS",
    "FAULT_BAD_RESPONSE",
    "FAULT_EXCEPTION",
    "FAULT_TIMEOUT",
    "FAULT_UNREACHABLE",
    "FC_HOLDING",
    "FC_INPUT",
    "MAX_REGISTERS_PER_READ",
    "METER_COUNTERS",
    "PROFILES",
    "READING_FIELDS",
    "REGISTERS",
    "SDM120_REGISTERS",
    "SDM630_REGISTERS",
    "MeterDecoder",
    "MeterProfile",
    "MeterSpec",
    "MeterValues",
    "ModbusMeterPoller",
    "ModbusTcpMeterPoller",
    "ReadBlock",
    "RegisterSpec",
    "decode_float32",
    "decode_registers",
    "decode_value",
    "encode_float32",
    "encode_value",
    "generic_profile",
    "plan_reads",
]
