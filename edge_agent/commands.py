"""Gateway commands (``down/cmd``) and the in-memory log ring that ``upload_logs`` returns.

Every command is answered with a :class:`contract.messages.CommandResult` carrying its
correlation id. An expired, unknown or malformed command is answered ``ok=false`` with the
reason (when it has a correlation id to answer to); a correlation id seen before is not executed
again, its first result is sent again.

Logs: :class:`RedactingFilter` replaces known secrets (site key, broker password, BLE bind keys)
and the registered raw card numbers with ``***`` in every record before any handler formats it,
so neither the journal nor an uploaded log ever carries them.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from contract.control import Command

log = logging.getLogger(__name__)

LOG_RING_LINES = 2000
UPLOAD_LINES_DEFAULT = 200
UPLOAD_BYTES_MAX = 200_000
SEEN_MAX = 1000
REDACTED = "***"


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and exception text (attach to every handler)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        kept = {s for s in secrets if len(s) >= 4}
        self._secrets = tuple(sorted(kept, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class LogRing(logging.Handler):
    """The last ``capacity`` formatted log lines, in memory (for ``upload_logs``)."""

    def __init__(self, capacity: int = LOG_RING_LINES) -> None:
        super().__init__()
        self._lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def tail(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return list(self._lines)[-n:]


@dataclass(slots=True)
class LogSetup:
    ring: LogRing
    redactor: RedactingFilter
    _handlers: list[logging.Handler] = field(default_factory=list)

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.ring)
        for h in self._handlers:
            h.removeFilter(self.redactor)


def install_log_ring(secrets: Iterable[str], capacity: int = LOG_RING_LINES) -> LogSetup:
    """Add a :class:`LogRing` to the root logger and a redactor to every root handler."""
    root = logging.getLogger()
    redactor = RedactingFilter(secrets)
    ring = LogRing(capacity)
    ring.addFilter(redactor)
    handlers = [h for h in root.handlers if h is not ring]
    for h in handlers:
        h.addFilter(redactor)
    ring.setLevel(logging.INFO)  # debug lines (frame traces) would push out what matters
    root.addHandler(ring)
    return LogSetup(ring, redactor, handlers)


class CommandTarget(Protocol):
    """What commands act on (the agent)."""

    async def restart_driver(self, name: str) -> str: ...

    async def rescan(self) -> dict[str, Any]: ...

    async def reload_config(self) -> str: ...

    def ping(self) -> dict[str, Any]: ...

    def log_tail(self, n: int) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    correlation_id: str
    command: str
    ok: bool
    detail: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class CommandError(Exception):
    """A command that cannot be carried out; the message is the answer's detail."""


class CommandHandler:
    def __init__(
        self,
        gateway_id: str,
        target: CommandTarget,
        clock: Callable[[], datetime],
        *,
        seen_max: int = SEEN_MAX,
    ) -> None:
        self._gateway_id = gateway_id
        self._target = target
        self._clock = clock
        self._seen: OrderedDict[str, Answer] = OrderedDict()
        self._seen_max = seen_max
        self.counters: dict[str, int] = {
            "executed": 0,
            "duplicates": 0,
            "expired": 0,
            "rejected": 0,
            "malformed": 0,
        }

    async def handle(self, payload: bytes) -> Answer | None:
        """Execute one command payload; the answer to send, or None when there is no one to
        answer (no correlation id)."""
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.counters["malformed"] += 1
            log.warning("a command that is not JSON (%d bytes) was ignored", len(payload))
            return None
        correlation_id = raw.get("correlation_id") if isinstance(raw, dict) else None
        if not isinstance(correlation_id, str) or not 1 <= len(correlation_id) <= 64:
            self.counters["malformed"] += 1
            log.warning("a command without a usable correlation_id was ignored")
            return None
        name = raw.get("command") if isinstance(raw.get("command"), str) else "?"
        name = str(name)[:64] or "?"
        previous = self._seen.get(correlation_id)
        if previous is not None:
            self.counters["duplicates"] += 1
            log.info("command %s (%s) seen before; not executed again", correlation_id, name)
            return previous
        try:
            cmd = Command.model_validate(raw)
        except ValidationError as exc:
            self.counters["rejected"] += 1
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if where == "command":
                detail = f"unknown command {name!r}"
            else:
                detail = f"invalid command: {where}: {err['msg']}"
            return self._remember(Answer(correlation_id, name, ok=False, detail=detail))
        if cmd.gw != self._gateway_id:
            self.counters["rejected"] += 1
            detail = f"command is for gateway {cmd.gw!r}, this is {self._gateway_id!r}"
            return self._remember(Answer(correlation_id, name, ok=False, detail=detail))
        now = self._clock()
        if cmd.expires_at is not None and cmd.expires_at <= now:
            self.counters["expired"] += 1
            detail = f"expired at {cmd.expires_at.isoformat()} (gateway time {now.isoformat()})"
            return self._remember(Answer(correlation_id, name, ok=False, detail=detail))
        log.info("command %s: %s", correlation_id, cmd.command)
        try:
            answer = await self._execute(cmd)
        except CommandError as exc:
            answer = Answer(correlation_id, cmd.command, ok=False, detail=str(exc))
        except Exception as exc:
            log.exception("command %s (%s) failed", correlation_id, cmd.command)
            answer = Answer(
                correlation_id, cmd.command, ok=False, detail=f"{type(exc).__name__}: {exc}"
            )
        self.counters["executed"] += 1
        return self._remember(answer)

    def _remember(self, answer: Answer) -> Answer:
        self._seen[answer.correlation_id] = answer
        while len(self._seen) > self._seen_max:
            self._seen.popitem(last=False)
        return answer

    async def _execute(self, cmd: Command) -> Answer:
        t = self._target
        cid, name, args = cmd.correlation_id, cmd.command, cmd.args
        if name == "ping":
            return Answer(cid, name, ok=True, detail="pong", data=t.ping())
        if name == "restart_driver":
            target = args.get("driver") or args.get("device")
            if not isinstance(target, str) or not target:
                raise CommandError("restart_driver needs args.driver or args.device")
            return Answer(cid, name, ok=True, detail=await t.restart_driver(target))
        if name == "rescan":
            return Answer(cid, name, ok=True, detail="birth republished", data=await t.rescan())
        if name == "reload_config":
            return Answer(cid, name, ok=True, detail=await t.reload_config())
        # upload_logs
        n = args.get("lines", UPLOAD_LINES_DEFAULT)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= LOG_RING_LINES:
            raise CommandError(f"args.lines must be an integer 1..{LOG_RING_LINES}")
        lines = t.log_tail(n)
        size = 0
        kept: list[str] = []
        for line in reversed(lines):  # the newest lines matter most
            size += len(line.encode()) + 8
            if size > UPLOAD_BYTES_MAX:
                break
            kept.append(line)
        kept.reverse()
        detail = f"{len(kept)} lines" + (" (truncated)" if len(kept) < len(lines) else "")
        return Answer(cid, name, ok=True, detail=detail, data={"lines": kept})
