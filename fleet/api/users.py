"""``/api/users``: accounts, their roles and compounds, and their API keys (admins only).

A user's scope is the compounds listed for them plus, when ``street_office_id`` is set, every
compound of that street office (the usual scope of a 平安办 officer). An API key acts as its
owner: same role, same compounds; its secret is shown once, in the answer that creates it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from fleet.accounts import (
    AccountError,
    api_keys_of,
    create_api_key,
    create_user,
    delete_user,
    revoke_api_key,
    update_user,
)
from fleet.api.deps import AdminUser, SessionDep
from fleet.api.types import IdPath, Limit, Name, Offset, RefId
from fleet.db import utcnow
from fleet.models import ApiKey, Role, User

router = APIRouter(prefix="/users", tags=["users"])

Username = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password
    role: Role
    display_name: Name | None = None
    compound_ids: list[RefId] = Field(default_factory=list, max_length=1000)
    street_office_id: RefId | None = None


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: Password | None = None
    role: Role | None = None
    display_name: Name | None = None
    compound_ids: list[RefId] | None = Field(default=None, max_length=1000)
    street_office_id: RefId | None = None
    active: bool | None = None


class UserPublic(BaseModel):
    id: int
    username: str
    role: Role
    display_name: str | None
    street_office_id: int | None
    compound_ids: list[int]
    active: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            id=user.id,
            username=user.username,
            role=Role(user.role),
            display_name=user.display_name,
            street_office_id=user.street_office_id,
            compound_ids=sorted(c.id for c in user.compounds),
            active=user.active,
            created_at=user.created_at,
        )


class UsersPublic(BaseModel):
    items: list[UserPublic]
    total: int


def _bad_request(exc: AccountError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _user(session: SessionDep, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such user")
    return user


@router.get("")
def read_users(
    session: SessionDep, _admin: AdminUser, limit: Limit = 100, offset: Offset = 0
) -> UsersPublic:
    total = session.scalar(sa.select(sa.func.count()).select_from(User)) or 0
    rows = session.scalars(
        sa.select(User).order_by(User.username).limit(limit).offset(offset)
    ).all()
    return UsersPublic(items=[UserPublic.of(u) for u in rows], total=total)


@router.post("", status_code=status.HTTP_201_CREATED)
def add_user(session: SessionDep, admin: AdminUser, body: UserCreate) -> UserPublic:
    try:
        user = create_user(
            session,
            admin.actor,
            username=body.username,
            password=body.password,
            role=body.role,
            compounds=body.compound_ids,
            street_office_id=body.street_office_id,
            display_name=body.display_name,
        )
    except AccountError as exc:
        session.rollback()
        if "exists" in str(exc):
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        raise _bad_request(exc) from exc
    session.commit()
    return UserPublic.of(user)


@router.get("/{user_id}")
def read_user(session: SessionDep, _admin: AdminUser, user_id: IdPath) -> UserPublic:
    return UserPublic.of(_user(session, user_id))


@router.patch("/{user_id}")
def change_user(
    session: SessionDep, admin: AdminUser, user_id: IdPath, body: UserUpdate
) -> UserPublic:
    user = _user(session, user_id)
    given = body.model_fields_set
    if user.id == admin.id and (
        (body.role is not None and body.role is not Role.ADMIN) or body.active is False
    ):
        raise HTTPException(
            status.HTTP_409_CONFLICT, "You cannot demote or deactivate your own account"
        )
    try:
        update_user(
            session,
            admin.actor,
            user,
            password=body.password,
            role=body.role,
            compounds=body.compound_ids,
            street_office_id=body.street_office_id,
            set_street_office="street_office_id" in given,
            display_name=body.display_name,
            set_display_name="display_name" in given,
            active=body.active,
        )
    except AccountError as exc:
        session.rollback()
        raise _bad_request(exc) from exc
    session.commit()
    return UserPublic.of(user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_user(session: SessionDep, admin: AdminUser, user_id: IdPath) -> Response:
    user = _user(session, user_id)
    if user.id == admin.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "You cannot delete your own account")
    delete_user(session, admin.actor, user)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- API keys ------------------------------------------------------------------------------------


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="What the key is for, e.g. the office system that uses it.")
    expires_at: AwareDatetime | None = None


class ApiKeyPublic(BaseModel):
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyPublic:
        return cls(
            id=key.id,
            user_id=key.user_id,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself (X-API-Key header). Shown only this once.")


class ApiKeysPublic(BaseModel):
    items: list[ApiKeyPublic]


@router.get("/{user_id}/api-keys")
def read_api_keys(session: SessionDep, _admin: AdminUser, user_id: IdPath) -> ApiKeysPublic:
    _user(session, user_id)
    return ApiKeysPublic(items=[ApiKeyPublic.of(k) for k in api_keys_of(session, user_id)])


@router.post("/{user_id}/api-keys", status_code=status.HTTP_201_CREATED)
def add_api_key(
    session: SessionDep, admin: AdminUser, user_id: IdPath, body: ApiKeyCreate
) -> ApiKeyCreated:
    owner = _user(session, user_id)
    if body.expires_at is not None and body.expires_at <= utcnow():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "expires_at is in the past")
    key, new = create_api_key(
        session, admin.actor, owner, name=body.name, expires_at=body.expires_at
    )
    session.commit()
    return ApiKeyCreated(**ApiKeyPublic.of(key).model_dump(), key=new.key)


@router.delete("/{user_id}/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(session: SessionDep, admin: AdminUser, user_id: IdPath, key_id: IdPath) -> Response:
    key = session.get(ApiKey, key_id)
    if key is None or key.user_id != user_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such API key")
    revoke_api_key(session, admin.actor, key)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
