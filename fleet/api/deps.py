"""Dependencies shared by routes, as ``Annotated`` aliases (``SessionDep``, ``CurrentUser``).

Everything comes from the :class:`~fleet.runtime.Runtime` the lifespan put on ``app.state``;
tests can swap any of it with ``app.dependency_overrides[get_runtime]``.

Access control, the interface every route module uses:

- ``CurrentUser`` = ``Annotated[Principal, Depends(current_user)]``. A :class:`Principal` has
  ``id``, ``username``, ``role`` (:class:`fleet.models.Role`: admin, installer, property,
  officer) and ``compound_ids`` (``frozenset[int]``, or ``None`` meaning every compound: an
  admin). It comes from a JWT bearer token (``Authorization: Bearer``) or an API key
  (``X-API-Key``); neither, or an invalid/expired one, is 401. The web pages' cookie is not an
  API credential (a cross-site request riding on it must not reach the API); pages use
  :func:`web_user`.
- ``require(*roles)`` is a dependency factory: ``user: Annotated[Principal,
  Depends(require(Role.ADMIN, Role.INSTALLER))]`` (or ``dependencies=[Depends(require(...))]``)
  gives 401 without credentials and 403 for another role. ``AdminUser`` is
  ``require(Role.ADMIN)``.
- ``ensure_compound(user, compound_id)`` raises 403 when the compound is outside the user's
  scope; ``compound_id=None`` (something not mapped to any compound) passes for admins only.
- ``scope_filter(stmt, user, column)`` adds ``WHERE column IN (user's compounds)`` to a select;
  ``gateway_scope_filter(stmt, user, gateway_id_column)`` does the same for rows that carry a
  gateway id (gateway -> entrance -> building -> compound; unmapped gateways: admins only).
- ``user.actor`` is what :func:`fleet.audit.record` wants for the audit log.
- Bounded parameter types (ids that fit BIGINT, text without NUL) are in :mod:`fleet.api.types`:
  use them for path, query and body values, so out-of-range input is a 422, not a database
  error (the schemathesis test sends such values to every route).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.orm import Session

from fleet.audit import Actor
from fleet.auth import InvalidTokenError, user_from_api_key, user_from_token
from fleet.db import utcnow
from fleet.models import Role, User
from fleet.queries import offline_limit_s
from fleet.runtime import Runtime
from fleet.settings import Settings
from fleet.sites import IntColumn, Scope, StrColumn, gateway_in_scope, in_scope, user_scope

TOKEN_URL = "/api/auth/token"  # noqa: S105 - a path, not a secret
API_KEY_HEADER = "X-API-Key"
COOKIE_NAME = "fleet_token"

SelectT = TypeVar("SelectT", bound=sa.Select[*tuple[Any, ...]])


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "fleet manager is starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_offline_limit(runtime: RuntimeDep) -> float:
    """Seconds of silence after which a gateway counts as offline in this process right now
    (see :func:`fleet.queries.offline_limit_s`)."""
    return offline_limit_s(runtime.settings, runtime.ingest_stats.subscribed_since, utcnow())


OfflineLimitDep = Annotated[float, Depends(get_offline_limit)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as every route sees it."""

    id: int
    username: str
    role: Role
    compound_ids: Scope  # None: every compound (admin)
    via: Literal["token", "api_key", "cookie"] = "token"
    api_key_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def actor(self) -> Actor:
        """For the audit log: the user, and how they authenticated."""
        via = f"api_key:{self.api_key_id}" if self.api_key_id is not None else self.via
        return Actor(name=self.username, id=self.id, via=via)

    def sees(self, compound_id: int | None) -> bool:
        if self.compound_ids is None:
            return True
        return compound_id is not None and compound_id in self.compound_ids


def principal_of(
    session: Session,
    user: User,
    *,
    via: Literal["token", "api_key", "cookie"] = "token",
    api_key_id: int | None = None,
) -> Principal:
    return Principal(
        id=user.id,
        username=user.username,
        role=Role(user.role),
        compound_ids=user_scope(session, user),
        via=via,
        api_key_id=api_key_id,
    )


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "Could not validate credentials",
        headers={"WWW-Authenticate": "Bearer"},
    )


def current_user(
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    try:
        if token:
            return principal_of(session, user_from_token(session, settings, token))
        if api_key:
            user, key = user_from_api_key(session, api_key)
            return principal_of(session, user, via="api_key", api_key_id=key.id)
    except InvalidTokenError as exc:
        raise _unauthorized() from exc
    raise _unauthorized()


CurrentUser = Annotated[Principal, Depends(current_user)]


def web_user(request: Request, session: SessionDep, settings: SettingsDep) -> Principal | None:
    """The logged-in user of a web page (token in the HttpOnly cookie), or None."""
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    try:
        return principal_of(session, user_from_token(session, settings, token), via="cookie")
    except InvalidTokenError:
        return None


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency: the current user if their role is one of ``roles``, else 403."""
    allowed = frozenset(roles)

    def dependency(user: CurrentUser) -> Principal:
        if user.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Not allowed for your role")
        return user

    return dependency


AdminUser = Annotated[Principal, Depends(require(Role.ADMIN))]


def ensure_compound(user: Principal, compound_id: int | None) -> None:
    """403 unless ``compound_id`` is in the user's scope (None passes for admins only)."""
    if not user.sees(compound_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Outside your compounds")


def scope_filter(
    stmt: SelectT,
    user: Principal,
    column: IntColumn,
) -> SelectT:
    """``stmt`` keeping only rows whose compound id (``column``) is in the user's scope."""
    if user.compound_ids is None:
        return stmt
    return stmt.where(in_scope(column, user.compound_ids))


def gateway_scope_filter(
    stmt: SelectT,
    user: Principal,
    gateway_id_column: StrColumn,
) -> SelectT:
    """``stmt`` keeping only rows whose gateway is mapped into the user's scope."""
    if user.compound_ids is None:
        return stmt
    return stmt.where(gateway_in_scope(gateway_id_column, user.compound_ids))
