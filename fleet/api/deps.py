"""Dependencies shared by routes, as ``Annotated`` aliases (``SessionDep``, ``CurrentUser``).

Everything comes from the :class:`~fleet.runtime.Runtime` the lifespan put on ``app.state``;
tests can swap any of it with ``app.dependency_overrides[get_runtime]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from fleet.auth import InvalidTokenError, user_from_token
from fleet.models import User
from fleet.runtime import Runtime
from fleet.settings import Settings

TOKEN_URL = "/api/auth/token"  # noqa: S105 - a path, not a secret


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "fleet manager is starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL)
TokenDep = Annotated[str, Depends(oauth2_scheme)]


def get_current_user(session: SessionDep, settings: SettingsDep, token: TokenDep) -> User:
    try:
        return user_from_token(session, settings, token)
    except InvalidTokenError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Could not validate credentials",
            headers={"WWW-Authenticate": "Bearer"},
        ) from exc


CurrentUser = Annotated[User, Depends(get_current_user)]
