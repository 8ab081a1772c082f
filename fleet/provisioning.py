"""Provisioning: enrollment codes, the enrollment exchange, broker accounts, replacement.

Flows (docs/provisioning.md tells them for people):

- **Code.** An installer creates a gateway entry for an entrance and gets a one-time code:
  16 characters of Crockford base32 (80 random bits) shown as ``XXXX-XXXX-XXXX-XXXX``, typeable
  from a phone and forgiving about case, dashes and the look-alikes O/0 and I/L/1. Only its
  SHA-256 is stored (80 random bits need no slow hash). A new code for the same gateway revokes
  the earlier unused ones; a code expires after ``FLEET_ENROLLMENT_CODE_TTL_HOURS``.
- **Enroll.** ``POST /api/enroll`` claims the code with one conditional UPDATE (used, revoked and
  expired codes do not match), so of two requests racing with one code exactly one wins, on
  SQLite and PostgreSQL alike. Then the broker account is created (a fresh random password;
  dynsec: Mosquitto keeps only its salted hash; embedded: the credentials file keeps a salted
  SHA-256), and the response carries identity, credentials, the compound's site key and the
  initial desired config. Should the broker be unreachable, the claim is undone and the code
  stays usable: an installer on a roof is not left with a burnt code.
- **Replace.** The old gateway's broker account is revoked first (dynsec: disabled, which
  drops its connection, then deleted), then in one transaction a new gateway entry takes its
  entrance, devices and history (readings, swipes, charging events, alerts), and gets a code.
  The change is audited.

Site key: one per compound (card pseudonyms must agree across the entrances of a compound so
that one resident is one person), 256 random bits, stored wrapped with AES-GCM under a key
derived from ``FLEET_SECRET_KEY``, handed only to the compound's gateways at enrollment.
Changing ``FLEET_SECRET_KEY`` therefore makes stored site keys unreadable: enrollment then fails
with a clear error rather than hand out a new key that would split every pseudonym in two.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from contract.control import BrokerCredentials, EnrollRequest, EnrollResponse
from contract.topics import valid_gateway_id
from fleet import audit
from fleet.broker import hash_password, write_credentials
from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.desired import ConfigPublisher, as_message, refresh
from fleet.dynsec import (
    BrokerAddress,
    DynsecControl,
    DynsecError,
    create_gateway_commands,
    revoke_gateway_commands,
)
from fleet.models import (
    Alert,
    AlertEpisodeRow,
    BrokerAccount,
    Building,
    CardSwipe,
    ChargingEvent,
    Device,
    EnrollmentCode,
    Entrance,
    Gateway,
    GatewayReplacement,
    MeterReading,
    SiteKey,
)
from fleet.settings import Settings
from fleet.tasks import stop_tasks

log = logging.getLogger(__name__)

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_LENGTH = 16
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


# --- Errors people see -----------------------------------------------------------------------

ErrorKey = Literal[
    "malformed", "unknown", "used", "expired", "revoked", "rate_limited", "broker", "site_key"
]

MESSAGES: dict[ErrorKey, tuple[int, str, str]] = {
    "malformed": (
        400,
        "注册码格式不正确：应为16位字母数字（如 ABCD-EFGH-JKMN-PQRS）",
        "Malformed enrollment code: 16 letters and digits expected (e.g. ABCD-EFGH-JKMN-PQRS)",
    ),
    "unknown": (
        404,
        "注册码不存在，请核对后重新输入，或向管理员重新申请",
        "Unknown enrollment code: check it, or ask for a new one",
    ),
    "used": (
        409,
        "注册码已被使用，每个注册码只能使用一次；如需重新注册，请申请新的注册码",
        "Enrollment code already used: a code works once; ask for a new one to re-enroll",
    ),
    "expired": (
        410,
        "注册码已过期，请向安装管理员申请新的注册码",
        "Enrollment code expired: ask for a new one",
    ),
    "revoked": (
        410,
        "注册码已作废（已为该网关生成新的注册码）",
        "Enrollment code revoked: a newer code was issued for this gateway",
    ),
    "rate_limited": (
        429,
        "尝试次数过多，请稍后再试",
        "Too many enrollment attempts from this address; try again later",
    ),
    "broker": (
        503,
        "消息服务器暂时无法创建网关账号，注册码仍然有效，请稍后重试",
        "The MQTT broker could not create the gateway's account; the code is still valid, "
        "retry later",
    ),
    "site_key": (
        500,
        "小区密钥无法解密（FLEET_SECRET_KEY 已更改？），请联系管理员",
        "The compound's site key cannot be unwrapped (FLEET_SECRET_KEY changed?); "
        "contact the administrator",
    ),
}


class ProvisioningError(Exception):
    """A refusal with a status code and a bilingual message (``detail``)."""

    def __init__(self, key: ErrorKey, *, retry_after_s: int | None = None) -> None:
        status, zh, en = MESSAGES[key]
        super().__init__(en)
        self.key = key
        self.status = status
        self.retry_after_s = retry_after_s
        self.detail = {"code": f"enrollment_{key}", "message": zh, "message_en": en}


# --- Codes -----------------------------------------------------------------------------------


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def normalize_code(text: str) -> str | None:
    """The canonical 16 characters of a typed code, or None when it cannot be one."""
    cleaned = "".join(ch for ch in text.upper() if ch not in " -_\t").translate(_LOOKALIKES)
    if len(cleaned) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in cleaned):
        return None
    return cleaned


def display_code(normalized: str) -> str:
    return "-".join(normalized[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def code_hash(normalized: str) -> str:
    return hashlib.sha256(f"enroll:{normalized}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedCode:
    gateway_id: str
    code: str
    expires_at: datetime


def issue_code(
    session: Session, gateway_id: str, *, created_by: str, ttl: timedelta, now: datetime
) -> IssuedCode:
    """A fresh code for ``gateway_id``; earlier unused codes of the gateway stop working."""
    session.execute(
        sa.update(EnrollmentCode)
        .where(
            EnrollmentCode.gateway_id == gateway_id,
            EnrollmentCode.used_at.is_(None),
            EnrollmentCode.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    code = new_code()
    session.add(
        EnrollmentCode(
            gateway_id=gateway_id,
            code_hash=code_hash(normalize_code(code) or ""),
            created_at=now,
            created_by=created_by,
            expires_at=now + ttl,
        )
    )
    return IssuedCode(gateway_id, code, now + ttl)


def claim_code(session: Session, digest: str, *, now: datetime, client_ip: str) -> str:
    """Mark the code used and return its gateway, or raise why it cannot be used.

    One UPDATE with every condition in its WHERE: on PostgreSQL a concurrent claim waits for
    the row lock and then finds ``used_at`` set; SQLite runs writers one at a time."""
    claimed = session.execute(
        sa.update(EnrollmentCode)
        .where(
            EnrollmentCode.code_hash == digest,
            EnrollmentCode.used_at.is_(None),
            EnrollmentCode.revoked_at.is_(None),
            EnrollmentCode.expires_at > now,
        )
        .values(used_at=now, used_from=client_ip[:64])
        .returning(EnrollmentCode.gateway_id)
    ).scalar_one_or_none()
    if claimed is not None:
        return claimed
    row = session.scalars(
        sa.select(EnrollmentCode).where(EnrollmentCode.code_hash == digest)
    ).first()
    if row is None:
        raise ProvisioningError("unknown")
    if row.used_at is not None:
        raise ProvisioningError("used")
    if row.revoked_at is not None:
        raise ProvisioningError("revoked")
    raise ProvisioningError("expired")


def unclaim_code(session: Session, digest: str, *, claimed_at: datetime) -> None:
    session.execute(
        sa.update(EnrollmentCode)
        .where(EnrollmentCode.code_hash == digest, EnrollmentCode.used_at == claimed_at)
        .values(used_at=None, used_from=None)
    )


# --- Rate limit ------------------------------------------------------------------------------


class RateLimiter:
    """At most ``limit`` attempts per ``window_s`` per key (client IP), in this process.

    Several API processes each keep their own count, so the effective limit is per process;
    with 80-bit codes the limit is about keeping logs and the database quiet, not about
    making guessing possible."""

    _MAX_KEYS = 10_000

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str) -> None:
        now = time.monotonic()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._MAX_KEYS:
                self._prune(now)
            hits = self._hits.setdefault(key, deque())
        while hits and now - hits[0] >= self._window_s:
            hits.popleft()
        if len(hits) >= self._limit:
            retry = int(self._window_s - (now - hits[0])) + 1
            raise ProvisioningError("rate_limited", retry_after_s=retry)
        hits.append(now)

    def _prune(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or now - h[-1] >= self._window_s]:
            del self._hits[key]
        if len(self._hits) >= self._MAX_KEYS:
            self._hits.clear()


# --- Site keys -------------------------------------------------------------------------------


def _wrapping_key(settings: Settings) -> bytes:
    return hmac.new(settings.signing_key, b"fleet-site-key-wrap-v1", hashlib.sha256).digest()


def site_key(session: Session, settings: Settings, compound_id: int, *, now: datetime) -> str:
    """The compound's site key (hex), created on first use."""
    aad = f"compound:{compound_id}".encode()
    aes = AESGCM(_wrapping_key(settings))
    row = session.get(SiteKey, compound_id)
    if row is None:
        key = secrets.token_bytes(32)
        nonce = secrets.token_bytes(12)
        wrapped = base64.b64encode(nonce + aes.encrypt(nonce, key, aad)).decode()
        session.add(SiteKey(compound_id=compound_id, wrapped_key=wrapped, created_at=now))
        session.flush()
        return key.hex()
    blob = base64.b64decode(row.wrapped_key)
    try:
        return aes.decrypt(blob[:12], blob[12:], aad).hex()
    except InvalidTag as exc:
        raise ProvisioningError("site_key") from exc


# --- Broker accounts -------------------------------------------------------------------------


class BrokerAccountError(Exception):
    """The broker could not create or revoke an account (retryable)."""


class BrokerAccounts(Protocol):
    mode: str

    async def start(self, sessions: sessionmaker[Session], db: DbThreads) -> None: ...

    async def create(self, gateway_id: str, password: str) -> str | None:
        """Create (or re-create) the account; returns what the fleet must store, if anything."""
        ...

    async def revoke(self, gateway_id: str) -> None: ...

    def sync(self, session: Session) -> None:
        """Called inside the transaction that changed ``broker_accounts``."""
        ...


class NoBrokerAuth:
    """``FLEET_BROKER_AUTH=none``: an open broker (demo, tests). Credentials are handed out
    but nothing checks them."""

    mode = "none"

    async def start(self, sessions: sessionmaker[Session], db: DbThreads) -> None:
        log.warning("FLEET_BROKER_AUTH=none: the broker admits anyone; gateways are not isolated")

    async def create(self, gateway_id: str, password: str) -> str | None:
        return None

    async def revoke(self, gateway_id: str) -> None:
        return None

    def sync(self, session: Session) -> None:
        return None


class DynsecAccounts:
    """``FLEET_BROKER_AUTH=dynsec``: Mosquitto's dynamic-security plugin."""

    mode = "dynsec"

    def __init__(self, settings: Settings) -> None:
        username, password = settings.broker_admin
        self._control = DynsecControl(
            BrokerAddress(
                settings.mqtt_host, settings.mqtt_port, username, password, settings.mqtt_tls
            ),
            timeout_s=settings.broker_control_timeout_s,
        )
        self._service_user = settings.mqtt_username

    async def start(self, sessions: sessionmaker[Session], db: DbThreads) -> None:
        if self._service_user is None:
            log.warning("FLEET_MQTT_URL has no user: cannot give it the fleet-service role")
            return
        try:
            await self._control.ensure_service_role(self._service_user)
        except DynsecError as exc:
            # Not fatal: ingest works without it and publishing retries; say what is missing.
            log.error(  # noqa: TRY400 - the cause fits in one line
                "could not give broker user %r the fleet-service role: %s",
                self._service_user,
                exc,
            )

    async def create(self, gateway_id: str, password: str) -> str | None:
        try:
            await self._control.run(create_gateway_commands(gateway_id, password))
        except DynsecError as exc:
            raise BrokerAccountError(str(exc)) from exc
        return None

    async def revoke(self, gateway_id: str) -> None:
        try:
            await self._control.run(revoke_gateway_commands(gateway_id))
        except DynsecError as exc:
            raise BrokerAccountError(str(exc)) from exc

    def sync(self, session: Session) -> None:
        return None


class EmbeddedAccounts:
    """``FLEET_BROKER_AUTH=embedded``: the credentials file the embedded broker reads,
    rewritten from ``broker_accounts`` on every change (the database is the source)."""

    mode = "embedded"

    def __init__(self, settings: Settings) -> None:
        assert settings.broker_auth_file is not None  # checked by Settings
        self._path = settings.broker_auth_file
        user, password = settings.mqtt_username, settings.mqtt_password
        self._service = (user, hash_password(password)) if user and password else None

    async def start(self, sessions: sessionmaker[Session], db: DbThreads) -> None:
        if self._service is None:
            log.warning("FLEET_MQTT_URL has no user and password: the fleet cannot log in")

        def write() -> None:
            with sessions() as session:
                self.sync(session)

        await db.run(write)

    async def create(self, gateway_id: str, password: str) -> str | None:
        return hash_password(password)

    async def revoke(self, gateway_id: str) -> None:
        return None  # sync() drops the account when the revocation commits

    def sync(self, session: Session) -> None:
        session.flush()
        rows = session.execute(
            sa.select(BrokerAccount.username, BrokerAccount.gateway_id, BrokerAccount.password_hash)
            .where(BrokerAccount.revoked_at.is_(None), BrokerAccount.password_hash.is_not(None))
            .order_by(BrokerAccount.username)
        ).all()
        write_credentials(
            self._path,
            service=self._service,
            gateways={u: (gw, h) for u, gw, h in rows if h is not None},
        )


def broker_accounts(settings: Settings) -> BrokerAccounts:
    match settings.broker_auth:
        case "dynsec":
            return DynsecAccounts(settings)
        case "embedded":
            return EmbeddedAccounts(settings)
    return NoBrokerAuth()


# --- The service -----------------------------------------------------------------------------


def compound_of_entrance(session: Session, entrance_id: int) -> int | None:
    return session.scalar(
        sa.select(Building.compound_id)
        .join(Entrance, Entrance.building_id == Building.id)
        .where(Entrance.id == entrance_id)
    )


def _printable(text: str | None) -> str | None:
    """What a gateway says about itself, without control characters (PostgreSQL refuses NUL
    in text and JSON, and a log line should stay one line)."""
    return None if text is None else "".join(ch for ch in text if ch.isprintable())


def generate_gateway_id() -> str:
    return f"gw-{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class Replaced:
    old_gateway_id: str
    new_gateway_id: str
    code: IssuedCode
    moved: dict[str, int]


class Provisioner:
    """What the provisioning routes call; built by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        accounts: BrokerAccounts,
        publisher: ConfigPublisher,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.accounts = accounts
        self.publisher = publisher
        self.rate_limiter = RateLimiter(settings.enroll_rate_limit)

    @property
    def code_ttl(self) -> timedelta:
        return timedelta(hours=self.settings.enrollment_code_ttl_hours)

    # Gateway entries and codes (synchronous: called from the API's threadpool)

    def create_gateway(
        self,
        session: Session,
        actor: audit.Actor,
        *,
        entrance_id: int,
        compound_id: int,
        gateway_id: str | None,
    ) -> IssuedCode:
        now = utcnow()
        gateway_id = gateway_id or generate_gateway_id()
        session.add(
            Gateway(gateway_id=gateway_id, entrance_id=entrance_id, online=False, first_seen=now)
        )
        session.flush()
        issued = issue_code(session, gateway_id, created_by=actor.name, ttl=self.code_ttl, now=now)
        audit.record(
            session,
            actor,
            audit.Action.CREATE,
            "gateway",
            gateway_id,
            compound_id=compound_id,
            summary={
                "entrance_id": entrance_id,
                "enrollment_code_expires_at": issued.expires_at.isoformat(),
            },
        )
        return issued

    def new_code(
        self, session: Session, actor: audit.Actor, gateway_id: str, *, compound_id: int | None
    ) -> IssuedCode:
        now = utcnow()
        issued = issue_code(session, gateway_id, created_by=actor.name, ttl=self.code_ttl, now=now)
        audit.record(
            session,
            actor,
            audit.Action.CREATE,
            "enrollment_code",
            gateway_id,
            compound_id=compound_id,
            summary={"expires_at": issued.expires_at.isoformat()},
        )
        return issued

    # Enrollment (async: it talks to the broker)

    async def enroll(self, request: EnrollRequest, client_ip: str) -> EnrollResponse:
        self.rate_limiter.check(client_ip)
        normalized = normalize_code(request.code)
        if normalized is None:
            raise ProvisioningError("malformed")
        digest = code_hash(normalized)
        claimed_at = utcnow()

        def claim() -> str:
            with self.sessions() as session, session.begin():
                return claim_code(session, digest, now=claimed_at, client_ip=client_ip)

        def unclaim() -> None:
            with self.sessions() as session, session.begin():
                unclaim_code(session, digest, claimed_at=claimed_at)

        gateway_id = await run_in_threadpool(claim)
        password = secrets.token_urlsafe(32)
        try:
            stored_hash = await self.accounts.create(gateway_id, password)
        except BrokerAccountError as exc:
            log.error("enrollment of %s failed at the broker: %s", gateway_id, exc)  # noqa: TRY400
            await run_in_threadpool(unclaim)
            raise ProvisioningError("broker") from exc
        try:
            response = await run_in_threadpool(
                self._finish_enrollment, gateway_id, password, stored_hash, request, client_ip
            )
        except BaseException:
            await run_in_threadpool(unclaim)
            raise
        self.publisher.request()
        log.info("gateway %s enrolled from %s", gateway_id, client_ip)
        return response

    def _finish_enrollment(
        self,
        gateway_id: str,
        password: str,
        stored_hash: str | None,
        request: EnrollRequest,
        client_ip: str,
    ) -> EnrollResponse:
        now = utcnow()
        with self.sessions() as session, session.begin():
            gateway = session.get(Gateway, gateway_id)
            if gateway is None:  # deleted since the code was issued (cascade removes codes)
                raise ProvisioningError("unknown")
            compound_id = (
                compound_of_entrance(session, gateway.entrance_id)
                if gateway.entrance_id is not None
                else None
            )
            account = session.get(BrokerAccount, gateway_id)
            if account is None:
                account = BrokerAccount(gateway_id=gateway_id, username=gateway_id, created_at=now)
                session.add(account)
            account.mode = self.accounts.mode
            account.password_hash = stored_hash
            account.created_at = now
            account.revoked_at = None
            self.accounts.sync(session)
            if compound_id is not None:
                key = site_key(session, self.settings, compound_id, now=now)
            else:  # an unmapped gateway (admin-made): a key of its own, derived, not stored
                key = hmac.new(
                    _wrapping_key(self.settings), f"gateway:{gateway_id}".encode(), hashlib.sha256
                ).hexdigest()
            row = refresh(session, gateway_id, timezone=self.settings.display_timezone, now=now)
            audit.record(
                session,
                audit.Actor(name="enrollment", id=None, via="enroll"),
                audit.Action.UPDATE,
                "gateway",
                gateway_id,
                compound_id=compound_id,
                summary={
                    "enrolled_from": client_ip,
                    "hostname": _printable(request.hostname),
                    "agent_version": _printable(request.agent_version),
                    "broker_auth": self.accounts.mode,
                },
            )
            return EnrollResponse(
                gateway_id=gateway_id,
                mqtt=BrokerCredentials(
                    url=self.settings.gateway_broker_url,
                    username=gateway_id,
                    password=password,
                    ca_pem=self._ca_pem(),
                ),
                site_key=key,
                desired=as_message(row) if row is not None else None,
            )

    def _ca_pem(self) -> str | None:
        path = self.settings.gateway_mqtt_ca_file
        return path.read_text(encoding="ascii") if path is not None else None

    # Replacement

    async def replace(
        self,
        old_gateway_id: str,
        actor: audit.Actor,
        *,
        new_gateway_id: str | None,
        reason: str | None,
    ) -> Replaced:
        new_id = new_gateway_id or generate_gateway_id()
        if not valid_gateway_id(new_id):
            raise ValueError(f"invalid gateway id {new_id!r}")

        def check() -> bool:
            with self.sessions() as session:
                if session.get(Gateway, old_gateway_id) is None:
                    raise LookupError(old_gateway_id)
                if session.get(Gateway, new_id) is not None:
                    raise FileExistsError(new_id)
                account = session.get(BrokerAccount, old_gateway_id)
                return account is not None and account.revoked_at is None

        if await run_in_threadpool(check):
            try:
                await self.accounts.revoke(old_gateway_id)
            except BrokerAccountError as exc:
                raise ProvisioningError("broker") from exc
        result = await run_in_threadpool(self._replace_in_db, old_gateway_id, new_id, actor, reason)
        self.publisher.request()
        return result

    def _replace_in_db(
        self, old_id: str, new_id: str, actor: audit.Actor, reason: str | None
    ) -> Replaced:
        now = utcnow()
        with self.sessions() as session, session.begin():
            old = session.scalars(
                sa.select(Gateway).where(Gateway.gateway_id == old_id).with_for_update()
            ).one()
            session.add(
                Gateway(
                    gateway_id=new_id,
                    entrance_id=old.entrance_id,
                    site_id=old.site_id,
                    online=False,
                    first_seen=now,
                )
            )
            session.flush()
            moved: dict[str, int] = {}
            for name, model in (
                ("devices", Device),
                ("meter_readings", MeterReading),
                ("card_swipes", CardSwipe),
                ("charging_events", ChargingEvent),
                ("alerts", Alert),
                ("alert_episodes", AlertEpisodeRow),
            ):
                result = session.execute(
                    sa.update(model)
                    .where(model.gateway_id == old_id)
                    .values(gateway_id=new_id)
                    .execution_options(synchronize_session=False)
                )
                moved[name] = int(result.rowcount)  # type: ignore[attr-defined]
            entrance_id = old.entrance_id
            old.entrance_id = None  # the entrance is the new gateway's now
            account = session.get(BrokerAccount, old_id)
            if account is not None and account.revoked_at is None:
                account.revoked_at = now
            self.accounts.sync(session)
            session.execute(
                sa.update(EnrollmentCode)
                .where(
                    EnrollmentCode.gateway_id == old_id,
                    EnrollmentCode.used_at.is_(None),
                    EnrollmentCode.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            issued = issue_code(session, new_id, created_by=actor.name, ttl=self.code_ttl, now=now)
            session.add(
                GatewayReplacement(
                    old_gateway_id=old_id,
                    new_gateway_id=new_id,
                    created_at=now,
                    created_by=actor.name,
                    reason=reason,
                    moved=dict(moved),
                )
            )
            compound_id = (
                compound_of_entrance(session, entrance_id) if entrance_id is not None else None
            )
            audit.record(
                session,
                actor,
                audit.Action.UPDATE,
                "gateway_replacement",
                old_id,
                compound_id=compound_id,
                summary={
                    "old_gateway_id": old_id,
                    "new_gateway_id": new_id,
                    "reason": reason,
                    "moved": moved,
                    "old_credentials": "revoked",
                },
            )
            refresh(session, new_id, timezone=self.settings.display_timezone, now=now)
        log.info("gateway %s replaced by %s: moved %s", old_id, new_id, moved)
        return Replaced(old_id, new_id, issued, moved)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, sessions: sessionmaker[Session]
) -> AsyncIterator[Provisioner]:
    """The provisioning service and its config publisher, for the app's lifespan."""
    accounts = broker_accounts(settings)
    db = DbThreads(max_workers=1)
    publisher = ConfigPublisher(settings, sessions, db=db)
    publisher.watch()

    async def work() -> None:
        await accounts.start(sessions, db)
        while True:
            try:
                await publisher.run()
            except Exception:
                log.exception("desired config publisher crashed; restarting in 5 s")
                await asyncio.sleep(5.0)

    task = asyncio.create_task(work(), name="fleet-config-publisher")
    try:
        yield Provisioner(settings, sessions, accounts, publisher)
    finally:
        await stop_tasks(task)
        await db.close()  # no thread may outlive the engine it uses
        publisher.unwatch()
