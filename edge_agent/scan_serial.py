"""Installer tools for serial devices: find DL/T 645 meters, watch a card reader's frames.

Both answer the installer's question "is it wired right, and what goes in the config?":

- :func:`scan_dlt645` asks the bus for its meters' addresses (the broadcast read-address
  request, which only one meter on the bus can answer) and probes addresses the installer
  reads off nameplates; :func:`dlt645_config_snippet` renders what it found as the agent's
  ``[[dlt645]]`` TOML.
- :func:`scan_serial` decodes a card reader's port for some seconds and shows every frame as
  it arrives through ``on_frame``, with the card number masked except its last four digits
  (raw card numbers never reach a screen or a log). It also decodes the same bytes in every
  other frame format and suggests the one that works. :func:`as_config_snippet` renders the
  result as the agent's ``[[serial_readers]]`` TOML.

The lead wires these into the ``edge-agent`` command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import serial
from serial_asyncio_fast import open_serial_connection

from drivers import dlt645
from drivers.serial_card import (
    FRAME_FORMATS,
    CardLine,
    FrameFormat,
    Malformed,
    RawWiegand,
    make_decoder,
)

log = logging.getLogger(__name__)

__all__ = [
    "Dlt645ScanResult",
    "ScanError",
    "ScannedFrame",
    "SerialScanResult",
    "as_config_snippet",
    "dlt645_config_snippet",
    "mask_card",
    "scan_dlt645",
    "scan_serial",
]


class ScanError(Exception):
    """The scan could not run (port missing or held by another process). The message says
    what to do."""


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def mask_card(number: str) -> str:
    """``3104992211`` -> ``******2211`` (numbers of 4 digits or fewer are masked whole)."""
    if len(number) <= 4:
        return "*" * len(number)
    return "*" * (len(number) - 4) + number[-4:]


async def _open(
    port_url: str, baudrate: int, parity: dlt645.Parity = "N"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        if parity == "N":
            return await open_serial_connection(url=port_url, baudrate=baudrate, exclusive=True)
        return await dlt645.open_bus(port_url, baudrate=baudrate, parity=parity, name="scan")
    except (OSError, serial.SerialException, termios.error) as exc:
        hint = " (is the agent running? stop it first)" if "lock" in str(exc) else ""
        raise ScanError(f"cannot open {port_url}: {exc}{hint}") from None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await writer.wait_closed()


# -- DL/T 645 -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dlt645ScanResult:
    """What :func:`scan_dlt645` found on one bus, ready for :func:`as_config_snippet`."""

    port_url: str
    baudrate: int
    addresses: tuple[str, ...]
    parity: dlt645.Parity = "E"


async def _collect(
    reader: asyncio.StreamReader,
    decoder: dlt645.Dlt645Decoder,
    timeout_s: float,
    done: Callable[[dlt645.Frame], bool],
    seen: list[dlt645.Frame | dlt645.Malformed],
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (remaining := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(remaining):
                data = await reader.read(512)
        except TimeoutError:
            return
        if not data:
            return
        for item in decoder.feed(data):
            seen.append(item)
            if not isinstance(item, dlt645.Malformed) and done(item):
                return


async def scan_dlt645(
    port_url: str,
    baudrate: int = 2400,
    timeout_s: float = 1.0,
    *,
    parity: dlt645.Parity = "E",
    probe: Sequence[str] = (),
) -> list[str]:
    """Addresses of the DL/T 645 meters that answer on ``port_url``, sorted.

    First the broadcast read-address request (``68 AA..AA 68 13 00 DF 16``): with one meter on
    the bus it answers its address; with several their answers collide and only garbage comes
    back (logged as a hint to probe addresses instead). Then each address in ``probe`` (12
    digits from a nameplate) is asked for its energy register; any answer, even an error reply,
    proves the meter is there. Raises :class:`ScanError` when the port cannot be opened.
    """
    for address in probe:
        if len(address) != 12 or not address.isdigit():
            raise ScanError(f"a meter address is 12 digits, got {address!r}")
    reader, writer = await _open(port_url, baudrate, parity)
    found: set[str] = set()
    try:
        decoder = dlt645.Dlt645Decoder()
        seen: list[dlt645.Frame | dlt645.Malformed] = []
        writer.write(dlt645.encode_read_address(preamble=4))
        await writer.drain()
        await _collect(
            reader, decoder, timeout_s, lambda f: isinstance(f, dlt645.AddressReply), seen
        )
        found.update(f.address for f in seen if isinstance(f, dlt645.AddressReply))
        if not found and any(isinstance(f, dlt645.Malformed) for f in seen):
            log.warning(
                "broadcast answered with garbage only: several meters on the bus (probe their "
                "addresses), wrong baud rate or parity, or A/B swapped"
            )
        for address in probe:
            decoder.clear()
            seen = []
            writer.write(dlt645.encode_read(address, dlt645.DI_ENERGY, preamble=4))
            await writer.drain()

            def answered(f: dlt645.Frame, address: str = address) -> bool:
                return isinstance(f, dlt645.ReadReply | dlt645.ErrorReply) and (
                    f.address == address
                )

            await _collect(reader, decoder, timeout_s, answered, seen)
            if any(not isinstance(f, dlt645.Malformed) and answered(f) for f in seen):
                found.add(address)
    finally:
        await _close(writer)
    return sorted(found)


def dlt645_config_snippet(
    port_url: str,
    addresses: Sequence[str],
    *,
    baudrate: int = 2400,
    parity: dlt645.Parity = "E",
    interval_s: float = 10.0,
) -> str:
    """The agent's ``[[dlt645]]`` TOML for one bus. Meter ids are placeholders built from the
    address (``m-<address>``): rename them to the ids the site uses for each flat's meter."""
    lines = [
        "[[dlt645]]",
        f"url = {_toml(port_url)}",
        f"baudrate = {baudrate}",
        f"parity = {_toml(parity)}",
        f"interval_s = {interval_s}",
    ]
    for address in addresses:
        lines += [
            "",
            "[[dlt645.meters]]",
            f"meter_id = {_toml('m-' + address)}",
            f"address = {_toml(address)}",
        ]
    return "\n".join(lines) + "\n"


# -- card readers -------------------------------------------------------------------------------

FrameKind = Literal["card", "raw_wiegand", "garbage", "overlong", "bad_checksum", "bad_parity"]


@dataclass(frozen=True, slots=True)
class ScannedFrame:
    """One decoded item, safe to show: ``masked`` is the card number with all but the last
    four digits hidden (cards only); ``text`` is the line to print."""

    kind: FrameKind
    masked: str | None = None
    bits: int | None = None

    @property
    def text(self) -> str:
        if self.kind == "card":
            return f"card {self.masked}"
        if self.kind == "raw_wiegand":
            return f"wiegand frame of {self.bits} bits (no configured format)"
        return self.kind.replace("_", " ")


@dataclass(frozen=True, slots=True)
class SerialScanResult:
    """What :func:`scan_serial` saw in ``seconds`` on one port."""

    port_url: str
    baudrate: int
    frame_format: FrameFormat
    counts: dict[str, int]
    cards_by_format: dict[str, int] = field(default_factory=dict)
    """Cards the same bytes give in every frame format (the chosen one included)."""

    @property
    def cards(self) -> int:
        return self.counts.get("card", 0)

    @property
    def suggested_format(self) -> FrameFormat | None:
        """Another frame format that decodes more cards than the chosen one, if any."""
        best = max(FRAME_FORMATS, key=lambda f: self.cards_by_format.get(f, 0))
        if best != self.frame_format and self.cards_by_format.get(best, 0) > self.cards:
            return best
        return None

    @property
    def hints(self) -> list[str]:
        """What the installer should check, from what was (not) seen."""
        out: list[str] = []
        noise = sum(v for k, v in self.counts.items() if k != "card")
        suggested = self.suggested_format
        if suggested is not None:
            out.append(f"frames decode as {suggested!r}: set frame_format = {suggested!r}")
        if not self.cards and noise:
            out.append(
                "only garbage: check the baud rate, RS-485 A/B (swapped?), the common ground"
            )
        if self.counts.get("bad_checksum") or self.counts.get("bad_parity"):
            out.append(
                "damaged frames: long RS-485 runs need 120 ohm termination at both ends; "
                "Wiegand-to-serial: D0/D1 swapped?"
            )
        if not self.cards and not noise:
            out.append("nothing received: is a card presented? power, TX/RX or A/B wiring?")
        return out


def _kind(item: CardLine | Malformed | RawWiegand) -> FrameKind:
    if isinstance(item, CardLine):
        return "card"
    if isinstance(item, RawWiegand):
        return "raw_wiegand"
    return item.reason


async def scan_serial(
    port_url: str,
    baudrate: int,
    frame_format: FrameFormat,
    seconds: float,
    on_frame: Callable[[ScannedFrame], None],
) -> SerialScanResult:
    """Decode ``port_url`` in ``frame_format`` for ``seconds``; call ``on_frame`` per item.

    Opens the port exclusively (raises :class:`ScanError` while the agent holds it).
    """
    if frame_format not in FRAME_FORMATS:
        raise ScanError(f"frame_format must be one of {', '.join(FRAME_FORMATS)}")
    reader, writer = await _open(port_url, baudrate)
    decoder = make_decoder(frame_format)
    shadows = {f: make_decoder(f) for f in FRAME_FORMATS if f != frame_format}
    counts: dict[str, int] = {}
    by_format: dict[str, int] = dict.fromkeys(FRAME_FORMATS, 0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    data = await reader.read(1024)
            except TimeoutError:
                break
            if not data:
                break
            for item in decoder.feed(data):
                kind = _kind(item)
                counts[kind] = counts.get(kind, 0) + 1
                if isinstance(item, CardLine):
                    by_format[frame_format] += 1
                    on_frame(ScannedFrame("card", masked=mask_card(item.number)))
                elif isinstance(item, RawWiegand):
                    on_frame(ScannedFrame("raw_wiegand", bits=item.count))
                else:
                    on_frame(ScannedFrame(kind))
            for name, shadow in shadows.items():
                by_format[name] += sum(isinstance(i, CardLine) for i in shadow.feed(data))
    finally:
        await _close(writer)
    return SerialScanResult(port_url, baudrate, frame_format, counts, by_format)


def as_config_snippet(
    result: SerialScanResult | Dlt645ScanResult, *, reader_id: str = "entrance"
) -> str:
    """The agent config TOML for a scan result (``[[serial_readers]]`` or ``[[dlt645]]``).

    For a card reader, the suggested frame format wins over the one scanned with.
    """
    if isinstance(result, Dlt645ScanResult):
        return dlt645_config_snippet(
            result.port_url, result.addresses, baudrate=result.baudrate, parity=result.parity
        )
    frame_format = result.suggested_format or result.frame_format
    return (
        "\n".join(
            [
                "[[serial_readers]]",
                f"reader_id = {_toml(reader_id)}",
                f"url = {_toml(result.port_url)}",
                f"baudrate = {result.baudrate}",
                f"frame_format = {_toml(frame_format)}",
            ]
        )
        + "\n"
    )
