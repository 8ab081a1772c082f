"""DL/T 645-2007 electricity meters on RS-485: a sans-IO codec and a bus poller.

DL/T 645-2007 is the Chinese national meter protocol. No well-kept package on PyPI offers it as
a codec: the one that exists (``dlt645``, a single author's client/server library since late
2025) bundles its own blocking transports and is not among the project's locked dependencies.
This module is the codec, small enough to be tested byte by byte.

Frame (docs: domain.md, "DL/T 645-2007")::

    FE*0-4  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes)  CS  16

- up to four ``FE`` wake-up bytes (masters send four; meters often answer with some too);
- the address: 12 BCD digits, six bytes, low byte first (``000000123456`` is
  ``56 34 12 00 00 00``); ``AAAAAAAAAAAA`` is the broadcast that asks the one meter on the bus
  for its address (control ``0x13``);
- control ``C``: bit 7 direction (1: meter to master), bit 6 error reply, bit 5 more frames
  follow, bits 0-4 the function (``0x11`` read, ``0x13`` read address);
- every DATA byte is sent plus ``0x33`` (mod 256);
- ``CS``: the sum of every byte from the first ``68`` through DATA, mod 256;
- ``L`` is at most 200 for reads; a longer ``L`` is taken for a false start (garbage).

Data identifiers (DI) are four bytes sent low byte first; their values are BCD, low byte first,
with the sign in the top bit of the most significant byte where :data:`DATA_IDS` says so.

:func:`decode` returns ``(frame | Malformed | None, used)``: ``None, 0`` means "need more
bytes"; :class:`Malformed` says what was skipped (``garbage`` before or instead of a frame: the
decoder resynchronises at the next ``68``; ``bad_checksum``: a whole frame whose CS is wrong;
``bad_data``: a frame with a valid CS whose value is not valid BCD or has the wrong length).

The adapter :class:`Dlt645Poller` reads every configured meter on one bus, one transaction at
a time, and yields :class:`contract.events.MeterReading` and :class:`contract.events.DeviceFault`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import re
import termios
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Literal

import serial
from serial_asyncio_fast import connection_for_serial, open_serial_connection

from contract.events import DeviceFault, MeterReading
from drivers.base import Backoff, DeviceState, DriverConfigError, DriverCounters, utc_now
from drivers.framing import StreamDecoder

__all__ = [
    "BROADCAST_ADDRESS",
    "DATA_IDS",
    "DI_CURRENT_A",
    "DI_ENERGY",
    "DI_FREQUENCY",
    "DI_POWER",
    "DI_POWER_FACTOR",
    "DI_VOLTAGE_A",
    "AddressReply",
    "DataIdSpec",
    "Dlt645Decoder",
    "Dlt645MeterSpec",
    "Dlt645Poller",
    "ErrorReply",
    "Frame",
    "Malformed",
    "OtherFrame",
    "Parity",
    "ReadAddressRequest",
    "ReadReply",
    "ReadRequest",
    "decode",
    "decode_value",
    "encode",
    "encode_read",
    "encode_read_address",
    "encode_value",
    "open_bus",
]

log = logging.getLogger(__name__)

START = 0x68
END = 0x16
WAKE = 0xFE
OFFSET = 0x33
MAX_PREAMBLE = 4
MAX_DATA_LEN = 200
HEADER_LEN = 10  # 68 A0..A5 68 C L
BROADCAST_ADDRESS = "AAAAAAAAAAAA"

C_READ = 0x11
C_READ_ADDRESS = 0x13
C_REPLY = 0x80  # direction bit: meter to master
C_ERROR = 0x40  # abnormal reply
C_FOLLOW = 0x20  # more frames follow
C_READ_REPLY = C_REPLY | C_READ  # 0x91
C_READ_REPLY_MORE = C_READ_REPLY | C_FOLLOW  # 0xB1
C_READ_ERROR = C_READ_REPLY | C_ERROR  # 0xD1
C_READ_ADDRESS_REPLY = C_REPLY | C_READ_ADDRESS  # 0x93

ERROR_BITS = {
    0x01: "other error",
    0x02: "no such data",
    0x04: "password wrong / unauthorised",
    0x08: "baud rate cannot be changed",
    0x10: "too many year time zones",
    0x20: "too many daily time slots",
    0x40: "too many tariffs",
}
"""The error byte of an error reply (DL/T 645-2007, 7.3): one bit per reason."""

_ADDRESS = re.compile(r"^[0-9A-F]{12}$")


# -- data identifiers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataIdSpec:
    """How to read one data identifier's value: ``length`` BCD bytes with ``decimals`` digits
    after the point, sign in the top bit when ``signed``; ``field`` names the
    :class:`~contract.events.MeterReading` field it fills (after multiplying by ``scale``)."""

    name: str
    length: int
    decimals: int
    signed: bool = False
    unit: str = ""
    field: str | None = None
    scale: float = 1.0


DI_ENERGY = 0x00000000
DI_VOLTAGE_A = 0x02010100
DI_CURRENT_A = 0x02020100
DI_POWER = 0x02030000
DI_POWER_FACTOR = 0x02060000
DI_FREQUENCY = 0x02800002

DATA_IDS: dict[int, DataIdSpec] = {
    DI_ENERGY: DataIdSpec("combined active energy", 4, 2, unit="kWh", field="energy_kwh"),
    DI_VOLTAGE_A: DataIdSpec("phase A voltage", 2, 1, unit="V", field="voltage_v"),
    DI_CURRENT_A: DataIdSpec("phase A current", 3, 3, signed=True, unit="A", field="current_a"),
    DI_POWER: DataIdSpec(
        "total active power", 3, 4, signed=True, unit="kW", field="power_w", scale=1000.0
    ),
    DI_POWER_FACTOR: DataIdSpec("total power factor", 2, 3, signed=True, field="power_factor"),
    DI_FREQUENCY: DataIdSpec("grid frequency", 2, 2, unit="Hz", field="frequency_hz"),
}
"""Data identifier -> value format (XXXXXX.XX kWh, XXX.X V, XXX.XXX A, XX.XXXX kW, X.XXX, XX.XX
Hz)."""


def decode_value(spec: DataIdSpec, raw: bytes) -> float:
    """The value of ``raw`` (BCD, low byte first, 0x33 already removed).

    Raises ValueError for the wrong length or a nibble that is not a decimal digit. A negative
    zero (sign bit with all digits zero) comes back as ``-0.0``, so it re-encodes to the same
    bytes.
    """
    if len(raw) != spec.length:
        raise ValueError(f"{spec.name}: {spec.length} bytes expected, got {len(raw)}")
    digits = bytearray(raw)
    negative = False
    if spec.signed and digits[-1] & 0x80:
        negative = True
        digits[-1] &= 0x7F
    n = 0
    for byte in reversed(digits):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise ValueError(f"{spec.name}: {raw.hex()} is not BCD")
        n = n * 100 + hi * 10 + lo
    value = n / float(10**spec.decimals)
    return -value if negative else value


def encode_value(spec: DataIdSpec, value: float) -> bytes:
    """Inverse of :func:`decode_value`. Raises ValueError when ``value`` does not fit."""
    if not math.isfinite(value):
        raise ValueError(f"{spec.name}: {value} is not a number")
    negative = math.copysign(1.0, value) < 0
    if negative and not spec.signed:
        raise ValueError(f"{spec.name} is unsigned")
    n = round(abs(value) * 10**spec.decimals)
    limit = 8 * 10 ** (2 * spec.length - 1) if spec.signed else 10 ** (2 * spec.length)
    if n >= limit:
        raise ValueError(f"{spec.name}: {value} does not fit in {spec.length} BCD bytes")
    out = bytearray()
    for _ in range(spec.length):
        n, pair = divmod(n, 100)
        out.append((pair // 10) << 4 | pair % 10)
    if negative:
        out[-1] |= 0x80
    return bytes(out)


# -- frames -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Master: read ``di`` from the meter at ``address`` (control 0x11)."""

    address: str
    di: int


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    """Master: broadcast "which address have you?" (control 0x13, address AA..AA)."""


@dataclass(frozen=True, slots=True)
class ReadReply:
    """Meter: the value of ``di`` (control 0x91, or 0xB1 when more frames follow)."""

    address: str
    di: int
    value: float
    follow_up: bool = False


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Meter: an error reply (control with bit 0x40, e.g. 0xD1) with its error byte."""

    address: str
    code: int
    control: int = C_READ_ERROR

    @property
    def reasons(self) -> list[str]:
        return [text for bit, text in ERROR_BITS.items() if self.code & bit] or ["unknown"]


@dataclass(frozen=True, slots=True)
class AddressReply:
    """Meter: its address, answering the broadcast read-address request (control 0x93)."""

    address: str


@dataclass(frozen=True, slots=True)
class OtherFrame:
    """A valid frame this codec does not interpret (other functions, data ids not in
    :data:`DATA_IDS`). ``data`` has the 0x33 offset removed."""

    address: str
    control: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Malformed:
    """Bytes that were skipped: ``garbage`` (not a frame; resync), ``bad_checksum`` (a whole
    frame with a wrong CS) or ``bad_data`` (a frame with a valid CS and an unreadable value)."""

    reason: Literal["garbage", "bad_checksum", "bad_data"]


Frame = ReadRequest | ReadAddressRequest | ReadReply | ErrorReply | AddressReply | OtherFrame


def _address_bytes(address: str) -> bytes:
    if not _ADDRESS.match(address):
        raise ValueError(f"a DL/T 645 address is 12 BCD digits (A: wildcard), got {address!r}")
    return bytes.fromhex(address)[::-1]


def _address_str(raw: bytes) -> str:
    return raw[::-1].hex().upper()


def _frame(address: str, control: int, data: bytes, preamble: int) -> bytes:
    if not 0 <= preamble <= MAX_PREAMBLE:
        raise ValueError(f"preamble is 0..{MAX_PREAMBLE} FE bytes")
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"at most {MAX_DATA_LEN} data bytes")
    body = (
        bytes([START])
        + _address_bytes(address)
        + bytes([START, control, len(data)])
        + bytes((b + OFFSET) & 0xFF for b in data)
    )
    return bytes([WAKE]) * preamble + body + bytes([sum(body) & 0xFF, END])


def encode(frame: Frame, *, preamble: int = 0) -> bytes:
    """The bytes of ``frame``, after ``preamble`` wake-up bytes (FE)."""
    if isinstance(frame, ReadRequest):
        return _frame(frame.address, C_READ, frame.di.to_bytes(4, "little"), preamble)
    if isinstance(frame, ReadAddressRequest):
        return _frame(BROADCAST_ADDRESS, C_READ_ADDRESS, b"", preamble)
    if isinstance(frame, ReadReply):
        spec = DATA_IDS[frame.di]
        control = C_READ_REPLY_MORE if frame.follow_up else C_READ_REPLY
        data = frame.di.to_bytes(4, "little") + encode_value(spec, frame.value)
        return _frame(frame.address, control, data, preamble)
    if isinstance(frame, ErrorReply):
        return _frame(frame.address, frame.control, bytes([frame.code]), preamble)
    if isinstance(frame, AddressReply):
        return _frame(frame.address, C_READ_ADDRESS_REPLY, _address_bytes(frame.address), preamble)
    return _frame(frame.address, frame.control, frame.data, preamble)


def encode_read(address: str, di: int, *, preamble: int = 0) -> bytes:
    """Read request for data identifier ``di`` from the meter at ``address``."""
    return encode(ReadRequest(address, di), preamble=preamble)


def encode_read_address(*, preamble: int = 0) -> bytes:
    """Broadcast read-address request (only one meter may be on the bus)."""
    return encode(ReadAddressRequest(), preamble=preamble)


def _interpret(address: str, control: int, data: bytes) -> Frame | Malformed:
    if control == C_READ and len(data) == 4:
        return ReadRequest(address, int.from_bytes(data, "little"))
    if control == C_READ_ADDRESS and not data and address == BROADCAST_ADDRESS:
        return ReadAddressRequest()
    if control in (C_READ_REPLY, C_READ_REPLY_MORE) and len(data) >= 4:
        di = int.from_bytes(data[:4], "little")
        spec = DATA_IDS.get(di)
        if spec is not None:
            try:
                value = decode_value(spec, data[4:])
            except ValueError:
                return Malformed("bad_data")
            return ReadReply(address, di, value, follow_up=control == C_READ_REPLY_MORE)
    if control & (C_REPLY | C_ERROR) == C_REPLY | C_ERROR and len(data) == 1:
        return ErrorReply(address, data[0], control)
    if control == C_READ_ADDRESS_REPLY and len(data) == 6 and _address_str(data) == address:
        return AddressReply(address)  # a meter puts its own address in header and data
    return OtherFrame(address, control, data)


def decode(buf: bytes) -> tuple[Frame | Malformed | None, int]:
    """Decode the first frame of ``buf``.

    Returns ``(None, 0)`` when more bytes are needed (nothing consumed), ``(frame, n)`` for a
    frame of ``n`` bytes (its wake-up bytes included) and ``(Malformed, n)`` for ``n`` bytes
    skipped. Up to four FE bytes before a frame are its preamble; more are garbage.
    """
    start = buf.find(START)
    if start < 0:
        start = len(buf)
    pre = start
    while pre > 0 and start - pre < MAX_PREAMBLE and buf[pre - 1] == WAKE:
        pre -= 1
    if pre > 0:
        return Malformed("garbage"), pre
    if start == len(buf):
        return None, 0  # empty, or nothing but up to four wake-up bytes
    avail = len(buf) - start
    if avail > 7 and buf[start + 7] != START:
        return Malformed("garbage"), start + 1
    if avail < HEADER_LEN:
        return None, 0
    length = buf[start + 9]
    if length > MAX_DATA_LEN:
        return Malformed("garbage"), start + 1
    total = start + HEADER_LEN + length + 2
    if len(buf) < total:
        return None, 0
    if buf[total - 1] != END:
        return Malformed("garbage"), start + 1
    body = buf[start : total - 2]
    if sum(body) & 0xFF != buf[total - 2]:
        return Malformed("bad_checksum"), total
    address = _address_str(body[1:7])
    data = bytes((b - OFFSET) & 0xFF for b in body[HEADER_LEN:])
    return _interpret(address, body[8], data), total


class Dlt645Decoder(StreamDecoder[Frame | Malformed]):
    """Sans-IO stream decoder over :func:`decode` (a frame is at most 216 bytes, so the buffer
    never holds more than one partial frame). A run of garbage is reported once.
    """

    def __init__(self) -> None:
        super().__init__(decode, _is_garbage)


def _is_garbage(item: Frame | Malformed) -> bool:
    return isinstance(item, Malformed) and item.reason == "garbage"


# -- the adapter --------------------------------------------------------------------------------

FAULT_TIMEOUT = "timeout"
"""The meter did not answer within ``timeout_s`` (dead meter, wrong address, broken bus)."""
FAULT_ERROR_REPLY = "error_reply"
"""The meter answered the power read with an error reply (the detail names the error bits)."""
FAULT_PORT = "port_unavailable"
"""The serial port (or socket:// endpoint) cannot be opened or was lost."""

DEFAULT_DATA_IDS: tuple[int, ...] = (
    DI_POWER,
    DI_VOLTAGE_A,
    DI_CURRENT_A,
    DI_ENERGY,
    DI_POWER_FACTOR,
)
"""What one poll of a meter reads, power first (a reading needs it; the rest are optional)."""

Parity = Literal["E", "N", "O"]
_PARITY = {"E": serial.PARITY_EVEN, "N": serial.PARITY_NONE, "O": serial.PARITY_ODD}


async def _open_serial(
    url: str, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``serial_asyncio_fast.open_serial_connection``, except that a port whose configuration
    fails is closed again (the library leaves it open, holding its exclusive lock)."""
    loop = asyncio.get_running_loop()
    if url.startswith("socket://"):
        return await open_serial_connection(loop=loop, url=url, **kwargs)
    port = await loop.run_in_executor(None, partial(serial.serial_for_url, url, **kwargs))
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    try:
        port.timeout = 0  # what the transport sets first: a pty refuses parity only here
        transport, _ = await connection_for_serial(loop, lambda: protocol, port)
    except BaseException:
        port.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def open_bus(
    url: str, *, baudrate: int = 2400, parity: Parity = "E", name: str = "dlt645"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a DL/T 645 bus (8 data bits, ``parity``, 1 stop bit), exclusively: one master per
    bus. Raises OSError, serial.SerialException or termios.error when it cannot."""
    while True:
        try:
            return await _open_serial(
                url,
                baudrate=baudrate,
                bytesize=serial.EIGHTBITS,
                parity=_PARITY[parity],
                stopbits=serial.STOPBITS_ONE,
                exclusive=True,
            )
        except termios.error as exc:
            # A pseudo-terminal (a simulator, a ser2net/socat bridge) has no line and refuses
            # parity with EINVAL; a real UART does not. Open it without parity.
            if parity == "N" or exc.args[0] != errno.EINVAL:
                raise
            log.warning(
                "%s: %s refuses parity %s (a pseudo-terminal?); opening it without parity",
                name,
                url,
                parity,
            )
            parity = "N"


@dataclass(frozen=True, slots=True)
class Dlt645MeterSpec:
    """One meter on the bus: the agent's ``meter_id`` and the meter's 12-digit address (as
    printed on its nameplate, most significant digit first)."""

    meter_id: str
    address: str


@dataclass(slots=True)
class _MeterState:
    spec: Dlt645MeterSpec
    last_seen: datetime | None = None
    fault: str | None = None


class _NoAnswer(Exception):  # noqa: N818 - internal control flow, never escapes
    pass


class _PortLost(Exception):  # noqa: N818 - internal control flow, never escapes
    pass


TraceHook = Callable[[Literal["tx", "rx"], bytes], None]


class Dlt645Poller:
    """Poll DL/T 645-2007 meters on one RS-485 bus every ``interval_s``.

    ``url`` is a serial device (``/dev/ttyUSB0``, better ``/dev/serial/by-id/...``) or
    ``socket://host:port`` (an RS-485-to-TCP converter); DL/T 645 meters default to 2400 baud,
    8 data bits, even parity, 1 stop bit. The port is opened exclusively.

    Each poll reads, per meter, one data identifier per transaction (:data:`DEFAULT_DATA_IDS`,
    power first), one transaction at a time on the bus. A meter that does not answer costs one
    ``timeout_s`` per poll and its remaining reads are skipped, so a dead meter never stalls the
    others beyond its timeout. A corrupted reply (bad checksum, garbage) is asked again once at
    once (``retries``). A reply from another address or for another DI (a late answer) is
    counted as ``unexpected`` and ignored; the poller's own request echoed by an RS-485 adapter
    is ignored.

    Faults per meter, reported once when they start (``DeviceFault(active=True)``) and once when
    the meter reads again (``active=False``): ``timeout``, ``error_reply`` (an error reply to the
    power read), ``port_unavailable``. An error reply to an optional reading (voltage, current,
    energy, power factor) leaves that field ``None`` and counts ``error_replies`` only.

    Counters: ``frames_ok`` (valid replies), ``readings``, ``bad_checksum``, ``resync`` (garbage
    skipped), ``bad_data``, ``timeouts``, ``error_replies``, ``unexpected``, ``retries``,
    ``reopen``. ``trace_frame(direction, raw)`` is called with every request sent and every
    chunk received (a wire trace for the installer; meter data is not personal data).
    """

    def __init__(
        self,
        *,
        url: str,
        meters: Sequence[Dlt645MeterSpec],
        baudrate: int = 2400,
        parity: Parity = "E",
        interval_s: float = 10.0,
        timeout_s: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
        data_ids: Sequence[int] = DEFAULT_DATA_IDS,
        wake_preamble: int = 4,
        retries: int = 1,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        trace_frame: TraceHook | None = None,
        name: str | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise DriverConfigError("interval_s and timeout_s must be positive")
        if parity not in _PARITY:
            raise DriverConfigError("parity must be 'E', 'N' or 'O'")
        if not meters:
            raise DriverConfigError("a DL/T 645 bus needs at least one meter")
        if not data_ids or data_ids[0] != DI_POWER or any(d not in DATA_IDS for d in data_ids):
            raise DriverConfigError("data_ids must start with the power DI and be in DATA_IDS")
        if not 0 <= wake_preamble <= MAX_PREAMBLE or retries < 0:
            raise DriverConfigError("wake_preamble is 0..4 and retries >= 0")
        self.name = name or f"dlt645:{url}"
        self.counters = DriverCounters(
            (
                "frames_ok",
                "readings",
                "bad_checksum",
                "resync",
                "bad_data",
                "timeouts",
                "error_replies",
                "unexpected",
                "retries",
                "reopen",
            )
        )
        self._meters: dict[str, _MeterState] = {}
        seen_addresses: set[str] = set()
        for m in meters:
            if m.meter_id in self._meters:
                raise DriverConfigError(f"duplicate meter_id {m.meter_id!r}")
            if not re.fullmatch(r"[0-9]{12}", m.address):
                raise DriverConfigError(
                    f"meter {m.meter_id!r}: address must be 12 digits, got {m.address!r}"
                )
            if m.address in seen_addresses:
                raise DriverConfigError(f"meter {m.meter_id!r}: address {m.address} used twice")
            seen_addresses.add(m.address)
            self._meters[m.meter_id] = _MeterState(m)
        self._url = url
        self._baudrate = baudrate
        self._parity = parity
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._data_ids = tuple(data_ids)
        self._preamble = wake_preamble
        self._retries = retries
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._trace = trace_frame
        self._decoder = Dlt645Decoder()

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
        loop = asyncio.get_running_loop()
        first = True
        while True:
            if not first:
                self.counters.inc("reopen")
                await asyncio.sleep(self._backoff.next())
            first = False
            try:
                reader, writer = await open_bus(
                    self._url, baudrate=self._baudrate, parity=self._parity, name=self.name
                )
            except (OSError, serial.SerialException, termios.error) as exc:
                for event in self._port_fault(f"cannot open {self._url}: {exc}"):
                    yield event
                continue
            self._backoff.reset()
            self._decoder.clear()
            try:
                next_cycle = loop.time()
                while True:
                    for st in self._meters.values():
                        for event in await self._poll(reader, writer, st):
                            yield event
                    next_cycle += self._interval_s
                    delay = next_cycle - loop.time()
                    if delay < 0:  # a slow cycle: skip the missed ticks rather than burst
                        next_cycle = loop.time()
                        delay = 0
                    await asyncio.sleep(delay)
            except (_PortLost, OSError, serial.SerialException) as exc:
                detail = f"lost {self._url}: {exc or 'end of stream'}"
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await writer.wait_closed()
            for event in self._port_fault(detail):
                yield event

    async def _poll(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, st: _MeterState
    ) -> list[MeterReading | DeviceFault]:
        values: dict[str, float] = {}
        for di in self._data_ids:
            try:
                reply = await self._transact(reader, writer, st.spec.address, di)
            except _NoAnswer:
                self.counters.inc("timeouts")
                return self._failed(st, FAULT_TIMEOUT, f"no answer within {self._timeout_s}s")
            if isinstance(reply, ErrorReply):
                self.counters.inc("error_replies")
                if di == DI_POWER:
                    reasons = ", ".join(reply.reasons)
                    return self._failed(
                        st, FAULT_ERROR_REPLY, f"error reply {reply.code:#04x} ({reasons})"
                    )
                continue
            spec = DATA_IDS[di]
            if spec.field is not None:
                values[spec.field] = round(reply.value * spec.scale, spec.decimals)
        self.counters.inc("readings")
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

    async def _transact(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        di: int,
    ) -> ReadReply | ErrorReply:
        """One request and its reply. Raises _NoAnswer after ``timeout_s`` without one."""
        loop = asyncio.get_running_loop()
        request = encode_read(address, di, preamble=self._preamble)
        retries = self._retries
        pending: list[Frame | Malformed] = []
        while True:
            self._send(writer, request)
            await writer.drain()
            deadline = loop.time() + self._timeout_s
            resend = False
            while not resend:
                for item in pending:
                    if isinstance(item, Malformed):
                        self.counters.inc("resync" if item.reason == "garbage" else item.reason)
                        if item.reason != "garbage" and retries > 0:
                            resend = True  # a corrupted answer: ask again at once
                        continue
                    if (
                        isinstance(item, ReadReply | ErrorReply)
                        and item.address == address
                        and (isinstance(item, ErrorReply) or item.di == di)
                    ):
                        self.counters.inc("frames_ok")
                        return item
                    if isinstance(item, ReadRequest | ReadAddressRequest):
                        continue  # our own request, echoed by the RS-485 adapter
                    self.counters.inc("unexpected")
                pending = []
                if resend:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _NoAnswer
                try:
                    async with asyncio.timeout(remaining):
                        data = await reader.read(512)
                except TimeoutError:
                    raise _NoAnswer from None
                if not data:
                    raise _PortLost("end of stream")
                if self._trace is not None:
                    self._trace("rx", data)
                pending = self._decoder.feed(data)
            retries -= 1
            self.counters.inc("retries")

    def _send(self, writer: asyncio.StreamWriter, request: bytes) -> None:
        if self._trace is not None:
            self._trace("tx", request)
        writer.write(request)

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

    def _port_fault(self, detail: str) -> list[MeterReading | DeviceFault]:
        out: list[MeterReading | DeviceFault] = []
        for st in self._meters.values():
            out.extend(self._failed(st, FAULT_PORT, detail))
        return out
