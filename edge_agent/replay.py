"""``edge-agent replay``: the edge rules over recorded data (spec: shared/spec/replay.md).

The same :class:`rules.engine.RuleEngine` the live agent runs, fed from a JSON-lines file instead
of drivers. Both ends are streamed, so memory does not grow with the input's length: lines are
parsed one at a time, the rules keep only state bounded by their time windows, and each
finished episode goes at once to a temporary spool file (:class:`AlertSpool`), only its sort key
staying in memory. The output is deterministic, and bad input is rejected with the line number
and the field, writing nothing: the output goes to a temporary file that replaces the target
only when the whole input was good.

Card numbers are used as they come in the input file: replay runs where the data already is
(the street office's own access-control export), and no card number appears in the output.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import orjson
from pydantic import ValidationError

from contract.alerts import AlertEpisode, Change
from contract.events import CardSwipe, ChargingSensorReading, MeterReading
from contract.site import RulesConfig, Site
from rules.base import episode_order
from rules.engine import RuleEngine

ReplayEvent = CardSwipe | MeterReading | ChargingSensorReading


class ReplayError(Exception):
    """Input that replay cannot use; the message says where and what to do."""


class InputLineError(ReplayError):
    def __init__(self, line: int, field_name: str | None, message: str) -> None:
        where = f"line {line}" + (f", field '{field_name}'" if field_name else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.field = field_name


# -- input ------------------------------------------------------------------------------------


def _ts(obj: dict[str, Any], line: int) -> datetime:
    raw = obj.get("ts")
    if not isinstance(raw, str):
        raise InputLineError(line, "ts", "missing or not a string (ISO 8601 with offset)")
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        raise InputLineError(line, "ts", f"not an ISO 8601 time: {raw[:40]!r}") from None
    if ts.tzinfo is None:
        raise InputLineError(line, "ts", f"{raw!r} has no UTC offset (add e.g. +08:00)")
    return ts


def _str(obj: dict[str, Any], name: str, line: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise InputLineError(line, name, "missing or not a non-empty string")
    return value


def _num(obj: dict[str, Any], name: str, line: int, *, required: bool) -> float | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InputLineError(line, name, "missing (a number is required)")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputLineError(line, name, f"not a number: {str(value)[:40]!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InputLineError(line, name, "not a finite number")
    return number


def _card_swipe(obj: dict[str, Any], line: int) -> CardSwipe:
    card = obj.get("card")
    if isinstance(card, int) and not isinstance(card, bool):
        card = str(card)
    if not isinstance(card, str) or not card:
        raise InputLineError(line, "card", "missing or not a string")
    return CardSwipe(ts=_ts(obj, line), reader_id=_str(obj, "reader_id", line), card=card)


def _meter_reading(obj: dict[str, Any], line: int) -> MeterReading:
    power = _num(obj, "power_w", line, required=True)
    assert power is not None
    return MeterReading(
        ts=_ts(obj, line),
        meter_id=_str(obj, "meter_id", line),
        power_w=power,
        voltage_v=_num(obj, "voltage_v", line, required=False),
        current_a=_num(obj, "current_a", line, required=False),
        energy_kwh=_num(obj, "energy_kwh", line, required=False),
        power_factor=_num(obj, "power_factor", line, required=False),
    )


def _charging(obj: dict[str, Any], line: int) -> ChargingSensorReading:
    charging = obj.get("charging")
    if not isinstance(charging, bool):
        raise InputLineError(line, "charging", "missing or not true/false")
    return ChargingSensorReading(
        ts=_ts(obj, line),
        sensor_id=_str(obj, "sensor_id", line),
        charging=charging,
        power_w=_num(obj, "power_w", line, required=False),
    )


_PARSERS: dict[str, Callable[[dict[str, Any], int], ReplayEvent]] = {
    "card_swipe": _card_swipe,
    "meter_reading": _meter_reading,
    "charging_sensor": _charging,
}


@dataclass
class InputStats:
    lines: int = 0
    events: int = 0
    blank: int = 0
    bytes: int = 0
    unknown_types: Counter[str] = field(default_factory=Counter)


ReadingFactory = Callable[
    [datetime, str, float, float | None, float | None, float | None, float | None], MeterReading
]


def _reading_factory() -> ReadingFactory:
    """``MeterReading(...)`` at about half the cost, for the parser's hot path.

    A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__``; this stores
    them through the slots' own descriptors. The result is the same object (equal, same hash,
    same repr); if the class ever stops being a plain slotted dataclass with these fields, the
    constructor itself is used.
    """
    names = ("ts", "meter_id", "power_w", "voltage_v", "current_a", "energy_kwh", "power_factor")
    if (
        tuple(f.name for f in fields(MeterReading)) != names
        or getattr(MeterReading, "__slots__", None) != names
        or hasattr(MeterReading, "__post_init__")
    ):
        return MeterReading
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6 = (getattr(MeterReading, name).__set__ for name in names)

    def make(  # noqa: PLR0917 - the dataclass's own positional order
        ts: datetime,
        meter_id: str,
        power_w: float,
        voltage_v: float | None,
        current_a: float | None,
        energy_kwh: float | None,
        power_factor: float | None,
    ) -> MeterReading:
        r: MeterReading = new(MeterReading)
        s0(r, ts)
        s1(r, meter_id)
        s2(r, power_w)
        s3(r, voltage_v)
        s4(r, current_a)
        s5(r, energy_kwh)
        s6(r, power_factor)
        return r

    return make


_UNKNOWN_NAMES = 100
"""Unknown event types counted by name; the rest are counted together (memory stays bounded)."""
OTHER_TYPES = "(other types)"

_STATS_EVERY = 65_536
"""Lines between two updates of :class:`InputStats` (and calls of ``progress``) while reading."""


def read_events(
    lines: Iterable[bytes],
    stats: InputStats,
    progress: Callable[[InputStats], None] | None = None,
) -> Iterator[tuple[ReplayEvent, float]]:
    """Parse and check the events file line by line (streaming).

    Yields each event with its time in POSIX seconds (exactly ``event.ts.timestamp()``).
    ``stats`` is exact when the iteration ends (or raises); in between it is brought up to date
    every :data:`_STATS_EVERY` lines, and ``progress`` is called then.

    Meter readings are about nine lines in ten: a well-formed one is built here directly (no
    per-field helper calls); anything unusual goes to the careful per-type parser, which names
    the line and the field. The time text of consecutive lines is often the same (meters polled
    in one round), and then its datetime and seconds are reused; for the canonical form
    ``YYYY-MM-DDTHH:MM:SS+HH:MM`` the seconds are the minute's (computed once a minute) plus
    the second, not a ``datetime.timestamp()`` call per line.
    """
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    fromisoformat = datetime.fromisoformat
    parsers = _PARSERS
    unknown = stats.unknown_types
    make_reading = _reading_factory()
    # The latest event's time: its text, datetime and seconds.
    last_raw: object = None
    last_dt: datetime | None = None
    last_t = -math.inf
    # The minute of the latest canonical time text: its first 16 characters, its UTC offset
    # text, and its seconds.
    minute = ""
    minute_offset = ""
    minute_t = 0.0
    number = stats.lines
    events = stats.events
    blank = stats.blank
    nbytes = stats.bytes
    flush_at = number + _STATS_EVERY
    try:
        for raw in lines:
            number += 1
            nbytes += len(raw)
            if number >= flush_at:
                flush_at = number + _STATS_EVERY
                stats.lines, stats.events, stats.blank, stats.bytes = number, events, blank, nbytes
                if progress is not None:
                    progress(stats)
            try:
                obj = loads(raw)
            except decode_error as exc:
                if not raw.strip():
                    blank += 1
                    continue
                raise InputLineError(number, None, f"not valid JSON ({exc})") from None
            if type(obj) is not dict:
                raise InputLineError(number, None, "not a JSON object")
            kind = obj.get("type")
            event: ReplayEvent | None = None
            if kind == "meter_reading":
                raw_ts = obj.get("ts")
                dt: datetime | None = None
                t = last_t
                if raw_ts == last_raw:
                    dt = last_dt
                elif type(raw_ts) is str:
                    try:
                        dt = fromisoformat(raw_ts)
                    except ValueError:
                        dt = None
                    if dt is not None:
                        if dt.tzinfo is None:
                            dt = None
                        elif len(raw_ts) == 25 and raw_ts[16] == ":" and raw_ts[19] in "+-":
                            if raw_ts[:16] == minute and raw_ts[19:] == minute_offset:
                                t = minute_t + dt.second
                            else:
                                t = dt.timestamp()
                                minute, minute_offset = raw_ts[:16], raw_ts[19:]
                                minute_t = t - dt.second
                        else:
                            t = dt.timestamp()
                meter_id: Any = obj.get("meter_id")
                power: Any = obj.get("power_w")
                volts = obj.get("voltage_v")
                amps = obj.get("current_a")
                energy = obj.get("energy_kwh")
                pf = obj.get("power_factor")
                # orjson gives float or int for a JSON number (never NaN or infinity); anything
                # else, or a missing meter or power, takes the careful path.
                ok = dt is not None and type(meter_id) is str and meter_id != ""
                if type(power) is not float:
                    if type(power) is int:
                        power = float(power)
                    else:
                        ok = False
                if volts is not None and type(volts) is not float:
                    if type(volts) is int:
                        volts = float(volts)
                    else:
                        ok = False
                if amps is not None and type(amps) is not float:
                    if type(amps) is int:
                        amps = float(amps)
                    else:
                        ok = False
                if energy is not None and type(energy) is not float:
                    if type(energy) is int:
                        energy = float(energy)
                    else:
                        ok = False
                if pf is not None and type(pf) is not float:
                    if type(pf) is int:
                        pf = float(pf)
                    else:
                        ok = False
                if ok:
                    assert dt is not None
                    event = make_reading(dt, meter_id, power, volts, amps, energy, pf)
            if event is None:
                if not isinstance(kind, str):
                    raise InputLineError(number, "type", "missing or not a string")
                parser = parsers.get(kind)
                if parser is None:
                    name = kind[:40]
                    if name in unknown or len(unknown) < _UNKNOWN_NAMES:
                        unknown[name] += 1
                    else:
                        unknown[OTHER_TYPES] += 1
                    continue
                event = parser(obj, number)
                raw_ts = obj.get("ts")
                t = last_t if raw_ts == last_raw else event.ts.timestamp()
            ts = event.ts
            if ts is not last_dt:
                if t < last_t:
                    assert last_dt is not None
                    raise InputLineError(
                        number,
                        "ts",
                        f"{ts.isoformat()} is earlier than the line before "
                        f"({last_dt.isoformat()}); the file must be sorted by ts",
                    )
                last_raw, last_dt, last_t = raw_ts, ts, t
            events += 1
            yield event, t
    finally:
        stats.lines, stats.events, stats.blank, stats.bytes = number, events, blank, nbytes


def load_site(path: Path) -> Site:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{path}: not valid JSON ({exc})") from None
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ReplayError(f"{path}: field '{where}': {err['msg']}") from None


def load_rules_config(path: Path | None) -> RulesConfig:
    """The ``[rules]`` table of an agent config TOML (or of a file holding only that table)."""
    if path is None:
        return RulesConfig()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReplayError(f"{path}: not valid TOML ({exc})") from None
    try:
        return RulesConfig.model_validate(data.get("rules", {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ReplayError(f"{path}: field 'rules.{where}': {err['msg']}") from None


# -- output -----------------------------------------------------------------------------------

_SUBJECT_FIELDS = ("unit_id", "building", "sensor_id", "meter_id", "reader_id")


def episode_json(episode: AlertEpisode, tz: ZoneInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": episode.kind.value,
        "category": episode.category.value,
        "severity": episode.severity.value,
    }
    for name in _SUBJECT_FIELDS:
        value = getattr(episode.subject, name)
        if value is not None:
            out[name] = value
    out["raised_at"] = episode.raised_at.astimezone(tz).isoformat()
    out["cleared_at"] = (
        episode.cleared_at.astimezone(tz).isoformat() if episode.cleared_at else None
    )
    out["evidence"] = episode.evidence
    return out


def episode_line(episode: AlertEpisode, tz: ZoneInfo) -> bytes:
    """One line of alerts.jsonl (UTF-8, Chinese as is, ending in a newline)."""
    text = json.dumps(episode_json(episode, tz), ensure_ascii=False, sort_keys=False)
    return (text + "\n").encode()


class AlertSpool:
    """The finished episodes of a replay, kept out of memory until they are written in order.

    Episodes finish in the order they end, but alerts.jsonl is sorted by when they were raised
    (spec), and nothing may be written before the whole input proved good. Each episode is
    therefore serialised as soon as it finishes, into an anonymous temporary file; only its
    sort key and place stay in memory (about 0.3 KiB, against several for the episode and its
    evidence). :meth:`write_sorted` copies the lines out in the spec's order: ``raised_at``,
    kind, subject, and for equal keys the order they finished in.
    """

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close() / __exit__
        self._index: list[tuple[tuple[datetime, str, str], int, int]] = []
        self._size = 0

    def __enter__(self) -> AlertSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._index)

    def add(self, episode: AlertEpisode) -> None:
        line = episode_line(episode, self._tz)
        self._file.write(line)
        self._index.append((episode_order(episode), self._size, len(line)))
        self._size += len(line)

    def write_sorted(self, out: IO[bytes]) -> None:
        self._file.flush()
        fd = self._file.fileno()
        self._index.sort()  # for equal keys the offset keeps the finishing order
        for _, offset, size in self._index:
            out.write(os.pread(fd, size, offset))


# -- the run ----------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    stats: InputStats
    alerts: Counter[str]
    """Episodes by kind."""
    ignored: int
    seconds: float

    @property
    def episodes(self) -> int:
        return sum(self.alerts.values())


def replay_stream(
    site: Site,
    config: RulesConfig,
    lines: Iterable[bytes],
    emit: Callable[[AlertEpisode], None],
    *,
    progress: Callable[[InputStats], None] | None = None,
) -> ReplayResult:
    """Run the rules over an events stream; hand each episode to ``emit`` when it is over.

    ``emit`` gets the episodes cleared during the input in the order they cleared, then those
    still open at its end (``cleared_at`` None) in output order. Nothing is kept here: memory
    is the rules' own state, bounded by their time windows, whatever the input's length.
    """
    started = time.perf_counter()
    engine = RuleEngine(site, config, scope=site.site_id)
    stats = InputStats()
    alerts: Counter[str] = Counter()
    process = engine.process
    cleared = Change.CLEARED
    for event, t in read_events(lines, stats, progress):
        changes = process(event, t)
        if changes:
            for change in changes:
                if change.change is cleared:
                    emit(change.episode)
                    alerts[change.episode.kind.value] += 1
    for episode in engine.finish():
        emit(episode)
        alerts[episode.kind.value] += 1
    return ReplayResult(stats, alerts, engine.ignored, time.perf_counter() - started)


def write_alerts(spool: AlertSpool, output: Path) -> None:
    """Write alerts.jsonl atomically (a temp file renamed over the target)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            spool.write_sorted(f)
        Path(tmp).replace(output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _progress_bar(stream: IO[str], total_bytes: int) -> Callable[[InputStats], None]:
    started = time.perf_counter()

    def show(stats: InputStats) -> None:
        share = min(1.0, stats.bytes / total_bytes) if total_bytes else 1.0
        bar = "#" * int(share * 30)
        rate = stats.events / max(1e-9, time.perf_counter() - started)
        stream.write(f"\r  [{bar:<30}] {share:4.0%}  {stats.events:,} events  {rate:,.0f} events/s")
        stream.flush()

    return show


def run_replay(
    site_path: Path,
    input_path: Path,
    output_path: Path,
    config_path: Path | None,
    *,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
) -> int:
    """The CLI's body. Returns the process exit code (0 ok, 2 bad input)."""
    try:
        site = load_site(site_path)
        config = load_rules_config(config_path)
        with AlertSpool(ZoneInfo(site.timezone)) as spool:
            try:
                size = input_path.stat().st_size
                progress = _progress_bar(err, size) if err.isatty() else None
                with input_path.open("rb") as f:
                    result = replay_stream(site, config, f, spool.add, progress=progress)
            except FileNotFoundError:
                raise ReplayError(f"{input_path}: no such file") from None
            except InputLineError as exc:
                raise ReplayError(f"{input_path}: {exc}; nothing was written") from None
            if progress is not None:
                progress(result.stats)
                err.write("\n")
            write_alerts(spool, output_path)
    except ReplayError as exc:
        err.write(f"edge-agent replay: {exc}\n")
        return 2
    stats = result.stats
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.alerts.items())) or "none"
    rate = stats.events / max(result.seconds, 1e-9)
    out.write(
        f"replayed {stats.events:,} events from {stats.lines:,} lines in {result.seconds:.1f}s "
        f"({rate:,.0f} events/s)\n"
        f"alerts: {result.episodes} ({kinds}) -> {output_path}\n"
    )
    if stats.unknown_types:
        skipped = ", ".join(f"{k} x{n}" for k, n in sorted(stats.unknown_types.items()))
        out.write(f"skipped events of unknown type: {skipped}\n")
    if result.ignored:
        out.write(f"events from devices not in the site file: {result.ignored:,}\n")
    return 0
