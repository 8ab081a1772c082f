"""Installer tool: which Modbus slaves answer on a bus, and which meter model each one is.

:func:`scan_modbus` walks the slave addresses one by one on one bus (an RS-485 serial port,
``socket://host:port`` for a serial-to-Ethernet converter, or ``tcp://host:port`` for Modbus
TCP), with a short timeout each, and guesses the profile from which registers answer with
plausible values:

- Chint DDSU666: function 0x03 (or 0x04) at 0x2000 holds a mains voltage (90-300 V) and 0x200E a
  mains frequency (45-65 Hz);
- Eastron SDM120 / SDM630: function 0x04 at 0x0000 holds a mains voltage and 0x0046 a
  frequency; three plausible phase voltages at 0x0000/02/04 make it an SDM630 (an SDM630 wired
  single-phase looks like an SDM120, and reading it as one works: the maps agree on phase 1).

A slave that answers but matches no profile is listed without one (it needs a generic map). The
result says what the installer should check when nothing answers or replies are garbled, and
renders as the agent's ``[[modbus]]`` TOML (:meth:`ModbusScanResult.as_config_snippet`).

The lead wires this into the ``edge-agent`` command line (with a progress bar on ``progress``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from drivers.modbus_bus import (
    FC_HOLDING,
    FC_INPUT,
    ExceptionAnswer,
    GarbledAnswer,
    LinkDown,
    LinkSpec,
    ModbusError,
    ModbusLink,
    NoAnswer,
    RtuOverTcp,
    RtuSerialPort,
    parse_link_url,
)
from drivers.modbus_meter import PROFILES, MeterDecoder, MeterValues, decode_value

log = logging.getLogger(__name__)

ProfileName = Literal["ddsu666", "sdm120", "sdm630"]
Progress = Callable[[int, int], None]
"""``progress(done, total)`` after every address."""

MAINS_V = (90.0, 300.0)
MAINS_HZ = (45.0, 65.0)

__all__ = [
    "FoundMeter",
    "ModbusScanResult",
    "ScanError",
    "as_config_snippet",
    "scan_modbus",
]


class ScanError(Exception):
    """The scan could not run (the port is missing or busy). The message says what to do."""


@dataclass(frozen=True, slots=True)
class FoundMeter:
    """A slave that answered."""

    slave: int
    profile: ProfileName | None
    """The guessed profile; None: it answers, but no known profile fits (use a generic map)."""
    function_code: int | None = None
    values: MeterValues | None = None
    """One reading with the guessed profile."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ModbusScanResult:
    port_url: str
    baudrate: int
    parity: str
    scanned: int
    meters: tuple[FoundMeter, ...]
    garbled: tuple[int, ...] = ()
    """Addresses whose replies never checked out (CRC errors)."""
    counters: dict[str, int] = field(default_factory=dict)

    def hints(self) -> list[str]:
        """What the installer should check, in plain words."""
        out = []
        if not self.meters and not self.garbled:
            out.append(
                "No meter answered. On RS-485: swap A and B (swapped pairs time out on every "
                "meter), check the baud rate and parity against the meters' settings, the "
                "120-ohm terminators at both ends and the shared ground."
            )
        if self.garbled:
            out.append(
                f"Garbled replies from {len(self.garbled)} address(es): the baud rate or parity "
                "is wrong, two meters share an address, or the line needs bias resistors."
            )
        unknown = [m.slave for m in self.meters if m.profile is None]
        if unknown:
            out.append(
                f"Slave(s) {unknown} answer but are not DDSU666/SDM120/SDM630: configure them "
                'with profile = "generic" and their register map.'
            )
        return out

    def as_config_snippet(self, *, interval_s: float = 10.0, timeout_s: float = 0.3) -> str:
        return as_config_snippet(self, interval_s=interval_s, timeout_s=timeout_s)


def _plausible(value: float | None, bounds: tuple[float, float]) -> bool:
    return value is not None and math.isfinite(value) and bounds[0] <= value <= bounds[1]


def _f32(registers: list[int], offset: int) -> float:
    return decode_value(registers[offset : offset + 2])


async def _try(
    link: ModbusLink, slave: int, fc: int, address: int, count: int, *, timeout_s: float
) -> list[int] | ModbusError:
    try:
        return await link.read_registers(slave, fc, address, count, timeout_s=timeout_s)
    except LinkDown:
        raise
    except ModbusError as exc:
        return exc


async def _probe(link: ModbusLink, slave: int, timeout_s: float) -> FoundMeter | ModbusError:
    """Guess one slave's profile. Returns the error of the first probe when it did not answer."""
    first = await _try(link, slave, FC_HOLDING, 0x2000, 16, timeout_s=timeout_s)
    if isinstance(first, NoAnswer | GarbledAnswer):
        return first
    ddsu = first
    if isinstance(ddsu, ExceptionAnswer) and ddsu.code == 1:  # function 3 not supported
        ddsu = await _try(link, slave, FC_INPUT, 0x2000, 16, timeout_s=timeout_s)
    if (
        isinstance(ddsu, list)
        and _plausible(_f32(ddsu, 0), MAINS_V)
        and _plausible(_f32(ddsu, 14), MAINS_HZ)
    ):
        fc = FC_HOLDING if ddsu is first else FC_INPUT
        return await _found(link, slave, "ddsu666", fc, timeout_s)
    volts = await _try(link, slave, FC_INPUT, 0x0000, 6, timeout_s=timeout_s)
    hertz = await _try(link, slave, FC_INPUT, 0x0046, 2, timeout_s=timeout_s)
    if isinstance(volts, list) and isinstance(hertz, list):
        v1, v2, v3 = (_f32(volts, i) for i in (0, 2, 4))
        if _plausible(v1, MAINS_V) and _plausible(_f32(hertz, 0), MAINS_HZ):
            three = _plausible(v2, MAINS_V) and _plausible(v3, MAINS_V)
            return await _found(link, slave, "sdm630" if three else "sdm120", FC_INPUT, timeout_s)
    return FoundMeter(slave, None, detail="answers, but no known profile's registers fit")


async def _found(
    link: ModbusLink, slave: int, profile: ProfileName, fc: int, timeout_s: float
) -> FoundMeter:
    decoder = MeterDecoder(PROFILES[profile])
    try:
        replies = [
            await link.read_registers(slave, fc, b.address, b.count, timeout_s=timeout_s)
            for b in decoder.blocks
        ]
        values: MeterValues | None = decoder.decode(replies)
        detail = f"function {fc}"
    except LinkDown:
        raise
    except ModbusError as exc:
        values, detail = None, f"function {fc}; a full read failed: {exc}"
    return FoundMeter(slave, profile, fc, values, detail)


async def scan_modbus(
    port_url: str,
    baud: int = 9600,
    ids: Iterable[int] = range(1, 248),
    timeout_s: float = 0.3,
    progress: Progress | None = None,
    *,
    parity: Literal["N", "E", "O"] = "N",
    stopbits: int = 1,
) -> ModbusScanResult:
    """Probe every address in ``ids`` on the bus at ``port_url`` (see the module doc).

    Raises :class:`ScanError` if the port cannot be opened. ``progress(done, total)`` is called
    after each address. A full scan (247 addresses) takes up to 247 x ``timeout_s`` when
    nothing answers.
    """
    slaves = list(ids)
    if any(not 1 <= s <= 247 for s in slaves):
        raise ScanError("slave addresses are 1..247")
    try:
        spec: LinkSpec = parse_link_url(port_url, baudrate=baud, parity=parity, stopbits=stopbits)
    except ValueError as exc:
        raise ScanError(str(exc)) from None
    link = ModbusLink(spec, drop_after_no_answers=len(slaves) * 4 + 10)
    found: list[FoundMeter] = []
    garbled: list[int] = []
    counters = {"answered": 0, "timeouts": 0, "bad_responses": 0, "unrecognised": 0}
    try:
        try:
            await link.connect()
        except LinkDown as exc:
            raise ScanError(
                f"{exc}: is the adapter plugged in, or is the agent using the port?"
            ) from None
        for done, slave in enumerate(slaves, start=1):
            try:
                result = await _probe(link, slave, timeout_s)
            except LinkDown:  # a TCP endpoint dropped us: reconnect once and go on
                await link.connect()
                result = await _probe(link, slave, timeout_s)
            if isinstance(result, FoundMeter):
                found.append(result)
                counters["answered"] += 1
                counters["unrecognised"] += result.profile is None
                log.info("slave %d: %s", slave, result.detail)
            elif isinstance(result, GarbledAnswer):
                garbled.append(slave)
                counters["bad_responses"] += 1
            else:
                counters["timeouts"] += 1
            if progress is not None:
                progress(done, len(slaves))
    except LinkDown as exc:
        raise ScanError(f"the bus went away during the scan: {exc}") from None
    finally:
        link.close()
    return ModbusScanResult(
        port_url, baud, parity, len(slaves), tuple(found), tuple(garbled), counters
    )


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def as_config_snippet(
    result: ModbusScanResult, *, interval_s: float = 10.0, timeout_s: float = 0.3
) -> str:
    """The agent's ``[[modbus]]`` TOML for what the scan found. Meter ids are placeholders
    (``m-slave-<n>``): rename each after its flat and map it in the site."""
    spec = parse_link_url(result.port_url, baudrate=result.baudrate)
    lines = [
        f"# Modbus scan of {result.port_url}: {len(result.meters)} of {result.scanned} "
        "addresses answered",
        "[[modbus]]",
    ]
    if isinstance(spec, RtuSerialPort):
        lines += [
            'transport = "rtu"',
            f"url = {_toml(spec.device)}",
            f"baudrate = {result.baudrate}",
            f"parity = {_toml(result.parity)}",
        ]
    else:
        transport = "rtu-over-tcp" if isinstance(spec, RtuOverTcp) else "tcp"
        lines += [
            f"transport = {_toml(transport)}",
            f"host = {_toml(spec.host)}",
            f"port = {spec.port}",
        ]
    lines += [f"interval_s = {float(interval_s)}", f"timeout_s = {float(timeout_s)}"]
    known = [m for m in result.meters if m.profile is not None]
    for m in known:
        assert m.profile is not None
        lines += ["", "[[modbus.meters]]", f'meter_id = "m-slave-{m.slave}"  # rename: m-<flat>']
        lines += [f"slave = {m.slave}", f"profile = {_toml(m.profile)}"]
        if m.function_code is not None and m.function_code != PROFILES[m.profile].function_code:
            lines.append(f"function_code = {m.function_code}")
        if m.values is not None:
            v = m.values
            volts = f"{v.voltage_v:.1f} V, " if v.voltage_v is not None else ""
            lines.append(f"# read at scan time: {volts}{v.power_w:.1f} W")
    for m in result.meters:
        if m.profile is None:
            lines += [
                "",
                f"# slave {m.slave} answers but is not a known profile; to read it, add:",
                "# [[modbus.meters]]",
                f'# meter_id = "m-slave-{m.slave}"',
                f"# slave = {m.slave}",
                '# profile = "generic"',
                '# registers = [{ field = "power_w", address = 0, data_type = "float32" }]',
            ]
    if not known:
        lines += ["", "# no meter recognised: a [[modbus]] bus needs at least one meter"]
    return "\n".join(lines) + "\n"
