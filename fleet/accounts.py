"""Creating and changing users and API keys, shared by the API and ``fleet-manager user add``.

Each function works in the caller's session, writes its audit entry there, and leaves the commit
to the caller, so the change and its entry land together.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fleet.audit import Action, Actor, changes, record
from fleet.auth import NewApiKey, generate_api_key, hash_password
from fleet.db import utcnow
from fleet.models import ApiKey, Compound, Role, StreetOffice, User

MIN_PASSWORD_LENGTH = 8


class AccountError(ValueError):
    """A request that cannot be carried out as asked (unknown compound, duplicate name...)."""


def _resolve_compounds(session: Session, refs: Collection[int | str]) -> list[Compound]:
    """Compounds by id, code or (unambiguous) name."""
    found: list[Compound] = []
    for ref in refs:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = session.get(Compound, int(ref))
            rows = [row] if row is not None else []
        else:
            rows = list(
                session.scalars(
                    sa.select(Compound).where(sa.or_(Compound.code == ref, Compound.name == ref))
                )
            )
        if not rows:
            raise AccountError(f"no such compound: {ref!r}")
        if len(rows) > 1:
            raise AccountError(f"compound name {ref!r} is ambiguous: use its id or code")
        if rows[0] not in found:
            found.append(rows[0])
    return found


def _check_street_office(session: Session, street_office_id: int | None) -> None:
    if street_office_id is not None and session.get(StreetOffice, street_office_id) is None:
        raise AccountError(f"no such street office: {street_office_id}")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def describe(user: User) -> dict[str, object]:
    """What the audit log keeps about a user (never the password hash)."""
    return {
        "username": user.username,
        "role": user.role,
        "display_name": user.display_name,
        "street_office_id": user.street_office_id,
        "active": user.active,
        "compound_ids": sorted(c.id for c in user.compounds),
    }


def create_user(
    session: Session,
    actor: Actor,
    *,
    username: str,
    password: str,
    role: Role,
    compounds: Collection[int | str] = (),
    street_office_id: int | None = None,
    display_name: str | None = None,
) -> User:
    _check_password(password)
    _check_street_office(session, street_office_id)
    if session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} exists")
    user = User(
        username=username,
        password_hash=hash_password(password),
        created_at=utcnow(),
        role=role.value,
        display_name=display_name,
        street_office_id=street_office_id,
        active=True,
        compounds=_resolve_compounds(session, compounds),
    )
    session.add(user)
    session.flush()
    record(
        session, actor, Action.CREATE, "user", user.id, compound_id=None,
        summary={"after": describe(user)},
    )  # fmt: skip
    return user


def update_user(
    session: Session,
    actor: Actor,
    user: User,
    *,
    password: str | None = None,
    role: Role | None = None,
    compounds: Collection[int | str] | None = None,
    street_office_id: int | None = None,
    set_street_office: bool = False,
    display_name: str | None = None,
    set_display_name: bool = False,
    active: bool | None = None,
) -> User:
    before = describe(user)
    if password is not None:
        _check_password(password)
        user.password_hash = hash_password(password)
    if role is not None:
        user.role = role.value
    if compounds is not None:
        user.compounds = _resolve_compounds(session, compounds)
    if set_street_office:
        _check_street_office(session, street_office_id)
        user.street_office_id = street_office_id
    if set_display_name:
        user.display_name = display_name
    if active is not None:
        user.active = active
    diff = changes(before, describe(user))
    if password is not None:
        diff["password"] = "changed"  # noqa: S105 - that it changed, never the value
    if diff["after"] or password is not None:
        record(session, actor, Action.UPDATE, "user", user.id, compound_id=None, summary=diff)
    return user


def delete_user(session: Session, actor: Actor, user: User) -> None:
    summary = {"before": describe(user)}
    user_id = user.id
    session.delete(user)
    session.flush()
    record(session, actor, Action.DELETE, "user", user_id, compound_id=None, summary=summary)


def create_api_key(
    session: Session,
    actor: Actor,
    owner: User,
    *,
    name: str,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, NewApiKey]:
    new = generate_api_key()
    key = ApiKey(
        user_id=owner.id,
        name=name,
        prefix=new.prefix,
        secret_hash=new.secret_hash,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    record(
        session, actor, Action.CREATE, "api_key", key.id, compound_id=None,
        summary={"after": {"name": name, "prefix": new.prefix, "user": owner.username,
                           "expires_at": expires_at.isoformat() if expires_at else None}},
    )  # fmt: skip
    return key, new


def revoke_api_key(session: Session, actor: Actor, key: ApiKey) -> None:
    if key.revoked_at is not None:
        return
    key.revoked_at = utcnow()
    record(
        session, actor, Action.REVOKE, "api_key", key.id, compound_id=None,
        summary={"after": {"name": key.name, "prefix": key.prefix}},
    )  # fmt: skip


def api_keys_of(session: Session, user_id: int) -> Sequence[ApiKey]:
    return session.scalars(
        sa.select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id)
    ).all()
