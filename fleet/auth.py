"""Users, password hashing (argon2), login tokens (JWT, HS256) and API keys.

The API takes the token as a bearer header; the web pages take the same token from an HttpOnly
cookie, so there is one login mechanism to get right. Tokens expire
(``FLEET_TOKEN_TTL_MINUTES``) and stop working at once when their user is deleted or
deactivated; the user's role and compounds are read afresh on every request.

Machine clients use API keys (``X-API-Key: fmk_<prefix>_<secret>``): 256 random bits, stored as a
SHA-256 of the secret (a fast hash suffices for a random secret; argon2 is for passwords people
choose), looked up by the prefix, compared in constant time, revocable, optionally expiring.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session, sessionmaker

from fleet.db import utcnow
from fleet.models import ApiKey, Role, User
from fleet.settings import Settings

log = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"
API_KEY_PREFIX = "fmk"
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
    if not verify_password(user.password_hash, password) or not user.active:
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
    """The (still existing, active) user a token was issued to.

    Raises :class:`InvalidTokenError`."""
    username = username_from_token(settings, token)
    user = session.scalars(sa.select(User).where(User.username == username)).one_or_none()
    if user is None:
        raise InvalidTokenError("user no longer exists")
    if not user.active:
        raise InvalidTokenError("user is deactivated")
    return user


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key: str  # the full key: shown once, never stored
    prefix: str
    secret_hash: str


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_api_key() -> NewApiKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(
        key=f"{API_KEY_PREFIX}_{prefix}_{secret}", prefix=prefix, secret_hash=_hash_secret(secret)
    )


# last_used_at is refreshed at most this often: a write on every request would be waste.
API_KEY_TOUCH_S = 60.0


def user_from_api_key(session: Session, presented: str) -> tuple[User, ApiKey]:
    """The owner of a valid, unrevoked, unexpired key. Raises :class:`InvalidTokenError`."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
        raise InvalidTokenError("malformed API key")
    _, prefix, secret = parts
    key = session.scalars(sa.select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    if key is None:
        _hash_secret(secret)  # same work as for a known prefix
        raise InvalidTokenError("unknown API key")
    if not hmac.compare_digest(key.secret_hash, _hash_secret(secret)):
        raise InvalidTokenError("wrong API key")
    now = utcnow()
    if key.revoked_at is not None:
        raise InvalidTokenError("API key revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidTokenError("API key expired")
    user = session.get(User, key.user_id)
    if user is None or not user.active:
        raise InvalidTokenError("API key owner is deactivated")
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > API_KEY_TOUCH_S:
        key.last_used_at = now
        session.commit()
    return user, key


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
                role=Role.ADMIN,
            )
        )
        try:
            session.commit()
        except sa.exc.IntegrityError:
            # Another process created it at the same moment: the outcome is the same.
            session.rollback()
            return
    log.info("created admin user %r", settings.admin_username)
