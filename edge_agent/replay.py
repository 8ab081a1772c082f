"""``edge-agent replay``: the edge rules over recorded data (spec: shared/spec/replay.md).

The same :class:`rules.engine.RuleEngine` the live agent runs, fed from a JSON-lines file instead
of drivers. The input is streamed (memory does not grow with its length: only rule state and the
finished episodes are kept), the output is deterministic, and bad input is rejected with the
line number and the field, writing nothing: the output goes to a temporary file that replaces
the target only when the whole input was good.

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
from dataclasses import dataclass, field
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


_NUMBER = (float, int)


def _fast_meter_reading(obj: dict[str, Any], ts: datetime) -> MeterReading | None:
    """The hot path (about nine lines in ten are meter readings): well-formed lines only.

    Returns None for anything unusual, and the careful parser then names the problem.
    """
    raw_power: Any = obj.get("power_w")
    meter_id = obj.get("meter_id")
    if type(raw_power) not in _NUMBER or type(meter_id) is not str or not meter_id:
        return None
    values: list[float | None] = [None, None, None, None]
    for i, name in enumerate(("voltage_v", "current_a", "energy_kwh", "power_factor")):
        v = obj.get(name)
        if v is not None:
            if type(v) not in _NUMBER:
                return None
            values[i] = float(v)
    power = float(raw_power)
    if not math.isfinite(power):
        return None
    return MeterReading(ts, meter_id, power, values[0], values[1], values[2], values[3])


def read_events(lines: Iterable[bytes], stats: InputStats) -> Iterator[ReplayEvent]:
    """Parse and check the events file line by line (streaming)."""
    loads = orjson.loads
    parsers = _PARSERS
    last_ts: datetime | None = None
    last_raw_ts: object = None
    event: ReplayEvent | None
    for number, raw in enumerate(lines, start=1):
        stats.lines = number
        stats.bytes += len(raw)
        try:
            obj = loads(raw)
        except orjson.JSONDecodeError as exc:
            if not raw.strip():
                stats.blank += 1
                continue
            raise InputLineError(number, None, f"not valid JSON ({exc})") from None
        if type(obj) is not dict:
            raise InputLineError(number, None, "not a JSON object")
        kind = obj.get("type")
        event = None
        if kind == "meter_reading":
            raw_ts = obj.get("ts")
            if raw_ts == last_raw_ts and last_ts is not None:
                event = _fast_meter_reading(obj, last_ts)
            elif type(raw_ts) is str:
                try:
                    ts = datetime.fromisoformat(raw_ts)
                except ValueError:
                    ts = None
                if ts is not None and ts.tzinfo is not None:
                    event = _fast_meter_reading(obj, ts)
                    if event is not None:
                        last_raw_ts = raw_ts
        if event is None:
            if not isinstance(kind, str):
                raise InputLineError(number, "type", "missing or not a string")
            parser = parsers.get(kind)
            if parser is None:
                stats.unknown_types[kind[:40]] += 1
                continue
            event = parser(obj, number)
            last_raw_ts = obj.get("ts")
        if last_ts is not None and event.ts < last_ts:
            raise InputLineError(
                number,
                "ts",
                f"{event.ts.isoformat()} is earlier than the line before "
                f"({last_ts.isoformat()}); the file must be sorted by ts",
            )
        last_ts = event.ts
        stats.events += 1
        yield event


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


# -- the run ----------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    stats: InputStats
    episodes: list[AlertEpisode]
    ignored: int
    seconds: float

    def by_kind(self) -> Counter[str]:
        return Counter(e.kind.value for e in self.episodes)


def replay_stream(
    site: Site,
    config: RulesConfig,
    lines: Iterable[bytes],
    *,
    progress: Callable[[InputStats], None] | None = None,
    progress_every: int = 200_000,
) -> ReplayResult:
    """Run the rules over an events stream; return every episode in output order."""
    started = time.perf_counter()
    engine = RuleEngine(site, config, scope=site.site_id)
    stats = InputStats()
    finished: list[AlertEpisode] = []
    process = engine.process
    cleared = Change.CLEARED
    for event in read_events(lines, stats):
        for change in process(event):
            if change.change is cleared:
                finished.append(change.episode)
        if progress is not None and stats.events % progress_every == 0:
            progress(stats)
    finished.extend(engine.finish())
    finished.sort(key=episode_order)
    return ReplayResult(stats, finished, engine.ignored, time.perf_counter() - started)


def write_alerts(result: ReplayResult, site: Site, output: Path) -> None:
    """Write alerts.jsonl atomically (a temp file renamed over the target)."""
    tz = ZoneInfo(site.timezone)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ep in result.episodes:
                f.write(json.dumps(episode_json(ep, tz), ensure_ascii=False, sort_keys=False))
                f.write("\n")
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
        try:
            size = input_path.stat().st_size
            progress = _progress_bar(err, size) if err.isatty() else None
            with input_path.open("rb") as f:
                result = replay_stream(site, config, f, progress=progress)
        except FileNotFoundError:
            raise ReplayError(f"{input_path}: no such file") from None
        except InputLineError as exc:
            raise ReplayError(f"{input_path}: {exc}; nothing was written") from None
        if progress is not None:
            progress(result.stats)
            err.write("\n")
        write_alerts(result, site, output_path)
    except ReplayError as exc:
        err.write(f"edge-agent replay: {exc}\n")
        return 2
    stats = result.stats
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.by_kind().items())) or "none"
    rate = stats.events / max(result.seconds, 1e-9)
    out.write(
        f"replayed {stats.events:,} events from {stats.lines:,} lines in {result.seconds:.1f}s "
        f"({rate:,.0f} events/s)\n"
        f"alerts: {len(result.episodes)} ({kinds}) -> {output_path}\n"
    )
    if stats.unknown_types:
        skipped = ", ".join(f"{k} x{n}" for k, n in sorted(stats.unknown_types.items()))
        out.write(f"skipped events of unknown type: {skipped}\n")
    if result.ignored:
        out.write(f"events from devices not in the site file: {result.ignored:,}\n")
    return 0
