"""Users, password hashing (argon2) and login tokens (JWT, HS256).

The API takes the token as a bearer header; the web pages take the same token from an HttpOnly
cookie, so there is one login mechanism to get right.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session, sessionmaker

from fleet.db import utcnow
from fleet.models import User
from fleet.settings import Settings

log = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a login attempt takes as long for an
    unknown name as for a wrong password and does not reveal which names exist."""
    return _hasher.hash("not-a-real-password")


class InvalidTokenError(Exception):
    """The token is missing, malformed, expired or signed with another key."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_at: datetime


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user with this name and password, or None. Upgrades outdated hashes on the way."""
    user = session.scalars(sa.select(User).where(User.username == username)).one_or_none()
    if user is None:
        verify_password(_dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        session.commit()
    return user


def create_access_token(settings: Settings, username: str) -> AccessToken:
    now = utcnow()
    expires_at = now + timedelta(minutes=settings.token_ttl_minutes)
    claims = {"sub": username, "iat": now, "exp": expires_at}
    token = jwt.encode(claims, settings.signing_key, algorithm=JWT_ALGORITHM)
    return AccessToken(token=token, expires_at=expires_at)


def username_from_token(settings: Settings, token: str) -> str:
    """The token's subject. Raises :class:`InvalidTokenError`."""
    try:
        claims = jwt.decode(
            token,
            settings.signing_key,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["exp", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(str(exc)) from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError("token has no subject")
    return subject


def user_from_token(session: Session, settings: Settings, token: str) -> User:
    """The (still existing) user a token was issued to. Raises :class:`InvalidTokenError`."""
    username = username_from_token(settings, token)
    user = session.scalars(sa.select(User).where(User.username == username)).one_or_none()
    if user is None:
        raise InvalidTokenError("user no longer exists")
    return user


def ensure_admin(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Create the admin user when there is a password for it and it does not exist yet.

    In demo mode the password defaults to ``admin``; otherwise the admin is created only when
    ``FLEET_ADMIN_PASSWORD`` is given (an installation without it manages users another way).
    An existing admin's password is never overwritten: changing the environment variable later
    must not silently reset a password someone has since changed.
    """
    password = settings.effective_admin_password
    if password is None:
        log.info("FLEET_ADMIN_PASSWORD not set: no admin user created")
        return
    with sessions() as session:
        exists = session.scalar(
            sa.select(sa.func.count())
            .select_from(User)
            .where(User.username == settings.admin_username)
        )
        if exists:
            log.info("admin user %r exists; its password is left as it is", settings.admin_username)
            return
        session.add(
            User(
                username=settings.admin_username,
                password_hash=hash_password(password),
                created_at=utcnow(),
            )
        )
        try:
            session.commit()
        except sa.exc.IntegrityError:
            # Another process created it at the same moment: the outcome is the same.
            session.rollback()
            return
    log.info("created admin user %r", settings.admin_username)
