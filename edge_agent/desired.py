"""The desired configuration the fleet manager pushes (retained on ``down/config``).

The effective configuration is the TOML file with every key of the desired ``config`` that is
present (``modbus``, ``modbus_tcp``, ``serial_readers``, ``wiegand_readers``, ``dlt645``, ``ble``,
``site``, ``rules``; see :mod:`contract.control`) replacing the TOML's section; keys the desired
config leaves out keep the TOML's value. Identity, credentials and ``state_dir`` only ever come
from the TOML (enrollment writes them).

The last applied desired config is kept in ``<state_dir>/desired.json`` (atomic write, mode 0600)
so the agent restarts offline with it, together with the hashes of configs that were rolled back
so that the retained copy of a broken config is not applied again on the next connect.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from contract.control import DESIRED_CONFIG_KEYS, DesiredConfig, config_hash
from edge_agent.config import AgentConfig, ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "desired.json"
REASON_MAX = 2000


class DesiredConfigError(Exception):
    """A pushed config that cannot be applied; ``reason`` is what the fleet manager shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:REASON_MAX]


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600, fsynced (dir made 0700 if new)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _errors(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{prefix}{where}: {err['msg']}")
    return "; ".join(lines)


def parse_desired(payload: bytes, gateway_id: str) -> DesiredConfig:
    """Validate a ``down/config`` payload for this gateway (model, gateway, hash, keys)."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DesiredConfigError(f"not JSON: {exc}") from None
    try:
        desired = DesiredConfig.model_validate(raw)
    except ValidationError as exc:
        raise DesiredConfigError(_errors(exc, "")) from None
    if desired.gw != gateway_id:
        raise DesiredConfigError(f"config is for gateway {desired.gw!r}, this is {gateway_id!r}")
    actual = config_hash(desired.config)
    if actual != desired.hash:
        raise DesiredConfigError(
            f"hash mismatch: message says {desired.hash[:12]}…, config hashes to {actual[:12]}…"
        )
    unknown = sorted(set(desired.config) - DESIRED_CONFIG_KEYS)
    if unknown:
        raise DesiredConfigError(
            f"keys not allowed in a desired config: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(DESIRED_CONFIG_KEYS))})"
        )
    return desired


def report_ids(payload: bytes) -> tuple[int, str]:
    """Best-effort (version, hash) of a payload that failed validation, for the report."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 0, "invalid"
    if not isinstance(raw, dict):
        return 0, "invalid"
    version = raw.get("version")
    digest = raw.get("hash")
    return (
        version if isinstance(version, int) and version >= 0 else 0,
        digest[:128] if isinstance(digest, str) and digest else "invalid",
    )


def overlay(base: dict[str, Any], config: dict[str, Any] | None) -> AgentConfig:
    """The effective config: ``base`` (the TOML as parsed) with ``config``'s keys replacing."""
    merged = dict(base)
    if config:
        merged.update({k: v for k, v in config.items() if k in DESIRED_CONFIG_KEYS})
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise DesiredConfigError(_errors(exc, "config.")) from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


@dataclass(slots=True)
class StoredDesired:
    desired: DesiredConfig | None = None
    # hash -> reason of configs that were rolled back (not applied again).
    rolled_back: dict[str, str] = field(default_factory=dict)


class DesiredStore:
    """``<state_dir>/desired.json``: the applied desired config and the rolled-back hashes."""

    MAX_ROLLED_BACK = 50

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> StoredDesired:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return StoredDesired()
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); running on the TOML config", self.path, exc)
            return StoredDesired()
        try:
            desired = DesiredConfig.model_validate(raw["desired"]) if raw.get("desired") else None
            rolled = {str(k): str(v) for k, v in dict(raw.get("rolled_back", {})).items()}
        except (ValidationError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s is damaged (%s); running on the TOML config", self.path, exc)
            return StoredDesired()
        return StoredDesired(desired, rolled)

    def save(self, state: StoredDesired) -> None:
        rolled = dict(list(state.rolled_back.items())[-self.MAX_ROLLED_BACK :])
        doc = {
            "desired": state.desired.model_dump(mode="json") if state.desired else None,
            "rolled_back": rolled,
        }
        write_private(self.path, json.dumps(doc, ensure_ascii=False, indent=1).encode())


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    base: dict[str, Any]  # the TOML as parsed
    config: AgentConfig  # TOML + persisted desired config
    desired: DesiredConfig | None


def load_effective_config(path: Path) -> EffectiveConfig:
    """The TOML at ``path`` with the persisted desired config (if any) over it.

    A persisted desired config that no longer fits the TOML (the file was edited) is ignored
    with an error in the log; the TOML alone must then be valid.
    """
    base = read_toml(path)
    state_dir = base.get("state_dir", AgentConfig.model_fields["state_dir"].default)
    stored = DesiredStore(Path(str(state_dir))).load() if isinstance(state_dir, str) else None
    if stored is not None and stored.desired is not None:
        try:
            return EffectiveConfig(base, overlay(base, stored.desired.config), stored.desired)
        except DesiredConfigError as exc:
            log.warning(
                "the stored desired config version %d does not fit %s (%s); using the TOML alone",
                stored.desired.version,
                path,
                exc.reason,
            )
    try:
        return EffectiveConfig(base, AgentConfig.model_validate(base), None)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise ConfigError(f"{path} is invalid:\n" + "\n".join(lines)) from None


class ConfigTarget(Protocol):
    """What the controller drives (the agent)."""

    @property
    def base(self) -> dict[str, Any]:
        """The TOML as parsed (what a desired config is laid over)."""
        ...

    def check_config(self, config: AgentConfig) -> None:
        """Build what ``config`` needs without starting it; raise :class:`DesiredConfigError`."""
        ...

    async def apply_config(self, config: AgentConfig) -> None:
        """Start, stop and reconfigure drivers and swap the site and rules, without a restart."""
        ...

    async def announce(self) -> bool:
        """Republish the birth message (the devices and config version changed)."""
        ...

    def failing_drivers_since(self, since: float) -> list[str] | None:
        """None if any driver delivered data since ``since`` (monotonic) or has a device online
        (or there are no drivers); else one ``"name: why"`` line per driver."""
        ...

    def report_config_state(self, **fields: Any) -> None:
        """Send a :class:`contract.messages.ConfigState` with these fields."""
        ...


@dataclass(frozen=True, slots=True)
class _Probation:
    desired: DesiredConfig
    previous: DesiredConfig | None
    started: float
    deadline: float


class ConfigController:
    """Validates, applies, persists, reports and (when every driver fails) rolls back."""

    def __init__(
        self,
        target: ConfigTarget,
        store: DesiredStore,
        stored: StoredDesired,
        *,
        gateway_id: str,
        grace_s: float,
        applied: DesiredConfig | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._store = store
        self._stored = stored
        self._gateway_id = gateway_id
        self.grace_s = grace_s
        self._clock = clock
        self.applied = applied
        self._good = applied
        self._probation: _Probation | None = None
        self._reported: set[tuple[str, str]] = set()
        self.counters: dict[str, int] = dict.fromkeys(
            ("applied", "rejected", "rolled_back", "unchanged"), 0
        )

    @property
    def deadline(self) -> float | None:
        """When the config on probation must be checked (monotonic), or None."""
        return self._probation.deadline if self._probation else None

    def _report(
        self, status: str, version: int, digest: str, reason: str | None, *, once: bool = False
    ) -> None:
        if once:
            if (digest, status) in self._reported:
                return
            self._reported.add((digest, status))
        self.counters[status] += 1
        applied = self.applied
        self._target.report_config_state(
            status=status,
            version=version,
            hash=digest,
            applied_version=applied.version if applied else None,
            applied_hash=applied.hash if applied else None,
            reason=reason[:REASON_MAX] if reason else None,
        )

    def _persist(self) -> None:
        self._stored.desired = self.applied
        try:
            self._store.save(self._stored)
        except OSError as exc:
            log.warning("cannot persist the desired config to %s: %s", self._store.path, exc)

    def _reject(self, version: int, digest: str, reason: str) -> None:
        log.error("desired config version %d rejected: %s", version, reason)
        self._report("rejected", version, digest, reason, once=True)

    async def handle(self, payload: bytes) -> None:
        if not payload:
            return  # the retained config was cleared: keep running what we have
        try:
            desired = parse_desired(payload, self._gateway_id)
        except DesiredConfigError as exc:
            version, digest = report_ids(payload)
            self._reject(version, digest, exc.reason)
            return
        applied = self.applied
        if applied is not None and desired.hash == applied.hash:
            log.info("desired config version %d is the one running", desired.version)
            self._report("unchanged", desired.version, desired.hash, None, once=True)
            return
        earlier = self._stored.rolled_back.get(desired.hash)
        if earlier is not None:
            log.warning(
                "desired config version %d was rolled back before; not applied", desired.version
            )
            self._report(
                "rolled_back", desired.version, desired.hash, f"rolled back before: {earlier}",
                once=True,
            )  # fmt: skip
            return
        if applied is not None and desired.version < applied.version:
            reason = f"version {desired.version} is older than the applied {applied.version}"
            self._reject(desired.version, desired.hash, reason)
            return
        try:
            config = overlay(self._target.base, desired.config)
            self._target.check_config(config)
        except DesiredConfigError as exc:
            self._reject(desired.version, desired.hash, exc.reason)
            return
        probation = self._probation
        if probation is not None and self._target.failing_drivers_since(probation.started) is None:
            self._good, self._probation = applied, None  # it has proven itself already
        # A config still on probation is no rollback target: go back to the last good one.
        previous = self._good if self._probation is not None else applied
        await self._target.apply_config(config)
        self.applied = desired
        self._persist()
        now = self._clock()
        self._probation = _Probation(desired, previous, now, now + self.grace_s)
        log.info("desired config version %d applied", desired.version)
        self._report("applied", desired.version, desired.hash, None)
        await self._target.announce()

    async def check_rollback(self) -> None:
        """At the deadline: keep the config if any driver works, else go back to the previous."""
        probation, self._probation = self._probation, None
        if probation is None:
            return
        failing = self._target.failing_drivers_since(probation.started)
        if failing is None:
            self._good = self.applied
            return
        bad = probation.desired
        reason = (
            f"every driver failed within {self.grace_s:g} s of applying version {bad.version}: "
            + "; ".join(failing)
        )
        previous = probation.previous
        try:
            config = overlay(self._target.base, previous.config if previous else None)
        except DesiredConfigError as exc:
            log.critical("cannot roll back version %d: %s", bad.version, exc.reason)
            return
        log.error("rolling back desired config version %d: %s", bad.version, reason)
        await self._target.apply_config(config)
        self.applied = previous
        self._good = previous
        self._stored.rolled_back[bad.hash] = reason[:REASON_MAX]
        self._persist()
        self._report("rolled_back", bad.version, bad.hash, reason)
        self._reported.add((bad.hash, "rolled_back"))  # the retained copy is not news
        await self._target.announce()

    def reloaded(self) -> None:
        """After ``reload_config``: the running config is no longer on probation."""
        self._probation = None
