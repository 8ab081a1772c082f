"""``POST /api/auth/token``: the OAuth2 password flow, answering a JWT bearer token that expires
after ``FLEET_TOKEN_TTL_MINUTES``; ``GET /api/auth/me``: who the caller is and what they see."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from fleet.api.deps import CurrentUser, SessionDep, SettingsDep
from fleet.auth import authenticate, create_access_token
from fleet.models import Role

router = APIRouter(prefix="/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_at: datetime


@router.post("/token")
def login(
    session: SessionDep,
    settings: SettingsDep,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> Token:
    user = authenticate(session, form.username, form.password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = create_access_token(settings, user.username)
    return Token(access_token=token.token, expires_at=token.expires_at)


class Me(BaseModel):
    id: int
    username: str
    role: Role
    compound_ids: list[int] | None = Field(description="null: every compound (an admin)")
    via: str


@router.get("/me")
def read_me(user: CurrentUser) -> Me:
    return Me(
        id=user.id,
        username=user.username,
        role=user.role,
        compound_ids=None if user.compound_ids is None else sorted(user.compound_ids),
        via=user.actor.via,
    )
