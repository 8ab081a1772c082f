"""One Modbus bus: its transport and its single, serialised transaction channel.

A *bus* is whatever one Modbus master talks through, one request at a time:

- an RS-485 line on a serial port (``/dev/ttyUSB0``): Modbus RTU, pymodbus's
  ``AsyncModbusSerialClient`` (:class:`RtuSerialPort`);
- an RS-485 line behind a serial-to-Ethernet converter in transparent mode
  (``socket://host:port``): Modbus RTU frames over TCP, pymodbus's ``AsyncModbusTcpClient`` with
  the RTU framer (:class:`RtuOverTcp`);
- a Modbus TCP endpoint (a meter with Ethernet, or a Modbus TCP gateway with many slaves behind
  it): MBAP framing (:class:`TcpEndpoint`).

:class:`ModbusLink` owns the pymodbus client of one bus. It runs one transaction at a time (an
RS-485 line cannot carry two; a TCP gateway serialises onto its line anyway), applies a timeout
per request, finds replies behind line noise on RTU (:func:`drivers.modbus_rtu.find_reply`), and
translates everything pymodbus raises into this module's small exception tree, once:

- :class:`LinkDown`: the port cannot be opened or the connection is gone (retry the link);
- :class:`NoAnswer`: the slave did not answer in time (a dead meter, a wrong address, a broken
  or swapped pair), or a TCP gateway said so (exception 0x0A/0x0B);
- :class:`GarbledAnswer`: bytes came back but no valid reply (CRC errors: wrong baud rate or
  parity, two meters with one address, noise);
- :class:`ExceptionAnswer`: the slave answered with a Modbus exception (``code``);
- :class:`BadAnswer`: a well-framed reply with the wrong content (wrong register count).

pymodbus logs an ERROR with a frame dump on every timeout. This module never relies on those
logs: callers count and report faults themselves (the agent sets the ``pymodbus`` logger to
CRITICAL). Wire tracing is an explicit hook instead: ``trace(direction, data)`` with direction
``"tx"`` or ``"rx"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.base import DriverConfigError, DriverError, raise_if_cancelling
from drivers.modbus_rtu import MAX_READ_COUNT, find_reply

log = logging.getLogger(__name__)

FC_HOLDING = 0x03
FC_INPUT = 0x04

FAULT_TIMEOUT = "timeout"
"""The meter did not answer within its timeout (dead meter, wrong address, broken bus)."""
FAULT_EXCEPTION = "modbus_exception"
"""The meter answered with a Modbus exception (e.g. illegal address: wrong profile)."""
FAULT_BAD_RESPONSE = "bad_response"
"""Garbled bytes, or a reply with the wrong number of registers or values that are not numbers."""
FAULT_UNREACHABLE = "unreachable"
"""The port cannot be opened or the TCP endpoint refused or dropped the connection."""

GATEWAY_PATH_UNAVAILABLE = 0x0A
GATEWAY_NO_RESPONSE = 0x0B

TraceHook = Callable[[Literal["tx", "rx"], bytes], None]


# -- exceptions: classified by what the caller does ---------------------------------------------


class ModbusError(DriverError):
    """Base of the bus's errors. ``fault`` is the DeviceFault name a poller reports."""

    fault: ClassVar[str] = FAULT_BAD_RESPONSE


class LinkDown(ModbusError):  # noqa: N818 - reads better at the raise site
    """The bus itself is unusable: reconnect (with backoff) before the next request."""

    fault = FAULT_UNREACHABLE


class NoAnswer(ModbusError):  # noqa: N818 - reads better at the raise site
    """The slave did not answer: it cost the whole timeout (quarantine it)."""

    fault = FAULT_TIMEOUT


class GarbledAnswer(ModbusError):  # noqa: N818 - reads better at the raise site
    """Bytes arrived but no valid reply: it cost the whole timeout (quarantine it)."""

    fault = FAULT_BAD_RESPONSE


class ExceptionAnswer(ModbusError):  # noqa: N818 - reads better at the raise site
    """The slave answered with Modbus exception ``code`` (fast: no quarantine needed)."""

    fault = FAULT_EXCEPTION

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class BadAnswer(ModbusError):  # noqa: N818 - reads better at the raise site
    """A valid frame whose content is wrong (register count, values)."""

    fault = FAULT_BAD_RESPONSE


# -- transports ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """Modbus TCP (MBAP framing)."""

    host: str
    port: int = 502
    kind: ClassVar[str] = "tcp"

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuOverTcp:
    """Modbus RTU frames over a TCP socket (a transparent serial-to-Ethernet converter)."""

    host: str
    port: int
    kind: ClassVar[str] = "rtu-over-tcp"

    def describe(self) -> str:
        return f"socket://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuSerialPort:
    """Modbus RTU on a serial port (RS-485 adapter). ``device`` is a path or a pyserial URL."""

    device: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    kind: ClassVar[str] = "rtu"

    def describe(self) -> str:
        return self.device

    def char_time_s(self) -> float:
        """Seconds per character on the wire (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate


LinkSpec = TcpEndpoint | RtuOverTcp | RtuSerialPort


def parse_link_url(
    url: str, *, baudrate: int = 9600, parity: Literal["N", "E", "O"] = "N", stopbits: int = 1
) -> LinkSpec:
    """``tcp://host[:502]`` -> Modbus TCP; ``socket://host:port`` -> RTU over TCP; anything
    else (``/dev/ttyUSB0``, ``rfc2217://...``) -> RTU on a serial port."""
    if url.startswith(("tcp://", "socket://")):
        parts = urlsplit(url)
        if not parts.hostname:
            raise DriverConfigError(f"{url!r}: no host")
        try:
            port = parts.port
        except ValueError:
            raise DriverConfigError(f"{url!r}: bad port") from None
        if url.startswith("tcp://"):
            return TcpEndpoint(parts.hostname, port or 502)
        if port is None:
            raise DriverConfigError(f"{url!r}: socket:// needs a port")
        return RtuOverTcp(parts.hostname, port)
    if not url:
        raise DriverConfigError("empty serial port")
    if stopbits not in (1, 2):
        raise DriverConfigError("stopbits must be 1 or 2")
    return RtuSerialPort(url, baudrate, parity, 1 if stopbits == 1 else 2)


# -- replies (pure) ------------------------------------------------------------------------------


def registers_from_response(response: ModbusPDU, count: int) -> list[int]:
    """The registers of a read reply, or the error it stands for.

    Raises :class:`ExceptionAnswer` for a Modbus exception, :class:`NoAnswer` for a gateway's
    "target device failed to respond" (0x0B) or "path unavailable" (0x0A), and
    :class:`BadAnswer` unless exactly ``count`` 16-bit registers came back.
    """
    if response.isError():
        code = int(getattr(response, "exception_code", 0) or 0)
        if code in (GATEWAY_NO_RESPONSE, GATEWAY_PATH_UNAVAILABLE):
            raise NoAnswer(f"gateway: no answer from the device (exception {code:#04x})")
        raise ExceptionAnswer(code, f"exception code {code}")
    registers = list(response.registers)  # pymodbus decoded them as 16-bit values
    if len(registers) != count:
        raise BadAnswer(f"asked for {count} registers, got {len(registers)}")
    return registers


# -- the link ------------------------------------------------------------------------------------


class ModbusLink:
    """The transaction channel of one bus (see the module doc). Not reentrant by design: one
    request at a time; concurrent callers queue on an internal lock in arrival order.

    ``drop_after_no_answers``: pymodbus closes a TCP connection after this many unanswered
    requests in a row (a half-open connection looks like that); a poller sets it above its
    meter count so one dead slave behind a gateway never churns the connection.
    """

    def __init__(
        self,
        spec: LinkSpec,
        *,
        connect_timeout_s: float = 2.0,
        drop_after_no_answers: int = 10,
        trace: TraceHook | None = None,
        name: str | None = None,
    ) -> None:
        if connect_timeout_s <= 0:
            raise DriverConfigError("connect_timeout_s must be positive")
        self.spec = spec
        self.name = name or f"modbus-{spec.kind}:{spec.describe()}"
        self._connect_timeout_s = connect_timeout_s
        self.drop_after_no_answers = max(1, drop_after_no_answers)
        self._trace = trace
        self._rtu = not isinstance(spec, TcpEndpoint)
        # RTU: a frame must be preceded by 3.5 character times of silence (1.75 ms above
        # 19200 baud, per the Modbus serial line spec).
        self._gap_s = 0.0
        if isinstance(spec, RtuSerialPort):
            self._gap_s = 1.75e-3 if spec.baudrate > 19200 else 3.5 * spec.char_time_s()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._expect: tuple[int, int] | None = None  # (slave, function code) being awaited
        self._rx_bytes = 0
        self._last_rx = 0.0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        spec = self.spec
        if isinstance(spec, RtuSerialPort):
            return AsyncModbusSerialClient(
                spec.device,
                framer=FramerType.RTU,
                baudrate=spec.baudrate,
                parity=spec.parity,
                stopbits=spec.stopbits,
                bytesize=spec.bytesize,
                name=self.name,
                timeout=self._connect_timeout_s,
                retries=0,
                reconnect_delay=0,  # no background reconnects: the owner decides when
                trace_packet=self._trace_packet,
            )
        return AsyncModbusTcpClient(
            spec.host,
            port=spec.port,
            framer=FramerType.RTU if isinstance(spec, RtuOverTcp) else FramerType.SOCKET,
            name=self.name,
            timeout=self._connect_timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
        )

    async def connect(self) -> None:
        """Open the port or connection (closing a previous one). Raises :class:`LinkDown`."""
        self.close()
        client = self._make_client()
        client.set_max_no_responses(self.drop_after_no_answers)
        self._client = client
        ok = await client.connect()
        raise_if_cancelling()
        if not ok or not client.connected:
            self.close()
            raise LinkDown(f"cannot open {self.spec.describe()}")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def __aenter__(self) -> ModbusLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def read_registers(
        self, slave: int, function_code: int, address: int, count: int, *, timeout_s: float
    ) -> list[int]:
        """Read ``count`` registers from ``address`` of ``slave`` (function 3 or 4).

        Raises a :class:`ModbusError`; never anything pymodbus raises.
        """
        if function_code not in (FC_HOLDING, FC_INPUT) or not 1 <= count <= MAX_READ_COUNT:
            raise DriverConfigError("function code 3 or 4, 1..125 registers")
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                raise LinkDown(f"{self.spec.describe()} is not connected")
            if self._gap_s:
                silence = self._last_rx + self._gap_s - asyncio.get_running_loop().time()
                if silence > 0:
                    await asyncio.sleep(silence)
            # pymodbus waits ``timeout_connect`` for every answer; set it per request (a new
            # client gets the connect timeout back in connect()).
            params = client.ctx.comm_params
            if params.timeout_connect != timeout_s:
                params.timeout_connect = timeout_s
            self._expect = (slave, function_code)
            self._rx_bytes = 0
            try:
                if function_code == FC_HOLDING:
                    response = await client.read_holding_registers(
                        address, count=count, device_id=slave
                    )
                else:
                    response = await client.read_input_registers(
                        address, count=count, device_id=slave
                    )
            except ConnectionException as exc:
                raise_if_cancelling()
                raise LinkDown(str(exc)) from None
            except ModbusIOException:
                raise_if_cancelling()
                if self._rx_bytes:
                    raise GarbledAnswer(
                        f"{self._rx_bytes} bytes but no valid reply within {timeout_s:g}s"
                    ) from None
                raise NoAnswer(f"no answer within {timeout_s:g}s") from None
            finally:
                self._expect = None
            raise_if_cancelling()
            try:
                return registers_from_response(response, count)
            except ExceptionAnswer as exc:
                raise ExceptionAnswer(
                    exc.code, f"{exc} reading {count} registers at {address:#06x}"
                ) from None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's byte-stream hook: tracing, and finding RTU replies behind noise."""
        if sending:
            if self._trace is not None:
                self._trace("tx", data)
            return data
        if self._trace is not None:
            self._trace("rx", data)
        self._rx_bytes = len(data)  # the whole receive buffer so far
        if not self._rtu:
            return data
        self._last_rx = asyncio.get_running_loop().time()
        expect = self._expect
        if expect is None:
            return b""  # nobody is waiting: stray bytes
        found = find_reply(data, *expect)
        return b"" if found is None else found.frame


async def read_many(
    link: ModbusLink,
    slave: int,
    function_code: int,
    blocks: Sequence[tuple[int, int]],
    *,
    timeout_s: float,
) -> list[list[int]]:
    """Read several ``(address, count)`` blocks of one slave back to back."""
    return [
        await link.read_registers(slave, function_code, a, c, timeout_s=timeout_s)
        for a, c in blocks
    ]


__all__ = [
    "FAULT_BAD_RESPONSE",
    "FAULT_EXCEPTION",
    "FAULT_TIMEOUT",
    "FAULT_UNREACHABLE",
    "FC_HOLDING",
    "FC_INPUT",
    "BadAnswer",
    "ExceptionAnswer",
    "GarbledAnswer",
    "LinkDown",
    "LinkSpec",
    "ModbusError",
    "ModbusLink",
    "NoAnswer",
    "RtuOverTcp",
    "RtuSerialPort",
    "TcpEndpoint",
    "TraceHook",
    "parse_link_url",
    "read_many",
    "registers_from_response",
]
