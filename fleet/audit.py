"""The audit log: every change to the site register, users and keys, with who, when and what.

``record`` adds an entry to the caller's session, so it commits (or rolls back) with the change it
describes: there is never a change without its entry, nor an entry for a change that failed.
Summaries hold the changed fields before and after; secrets (password and key hashes) are never
included and card pseudonyms are shortened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from fleet.db import utcnow
from fleet.models import AuditEntry, Base

_SECRET_FIELDS = frozenset({"password", "password_hash", "secret_hash", "key", "secret"})
_SHORTENED_FIELDS = frozenset({"card"})


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    IMPORT = "import"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: a user through the API (``via`` token/api_key) or the CLI."""

    name: str
    id: int | None
    via: str


CLI_ACTOR = Actor(name="cli", id=None, via="cli")


def _json_value(name: str, value: Any) -> Any:
    if name in _SECRET_FIELDS:
        return "***"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if name in _SHORTENED_FIELDS and isinstance(value, str) and len(value) > 8:
        return f"{value[:8]}…"
    if isinstance(value, (str, int, float, bool, type(None), dict, list)):
        return value
    return str(value)


def snapshot(row: Base, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The row's column values (or ``fields`` of them), JSON-ready and without secrets."""
    names = list(fields) if fields is not None else [c.key for c in row.__table__.columns]
    return {
        name: _json_value(name, getattr(row, name)) for name in names if name not in _SECRET_FIELDS
    }


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Only the fields that changed: ``{"before": {...}, "after": {...}}``."""
    changed = [k for k in after if before.get(k) != after.get(k)]
    return {
        "before": {k: before.get(k) for k in changed},
        "after": {k: after.get(k) for k in changed},
    }


def record(
    session: Session,
    actor: Actor,
    action: Action,
    entity: str,
    entity_id: object,
    *,
    compound_id: int | None,
    summary: Mapping[str, Any],
) -> None:
    session.add(
        AuditEntry(
            at=utcnow(),
            actor=actor.name,
            actor_id=actor.id,
            via=actor.via,
            action=action.value,
            entity=entity,
            entity_id=None if entity_id is None else str(entity_id),
            compound_id=compound_id,
            summary=dict(summary),
        )
    )
