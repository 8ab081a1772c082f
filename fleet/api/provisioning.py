"""Provisioning routes: gateway entries and enrollment codes, ``POST /api/enroll``, replacement,
and desired vs applied config. docs/provisioning.md describes the flows.

Roles: installers and admins create gateway entries, codes and config refreshes within their
compounds; installers, property companies and admins replace a gateway and read its config
state; only admins push a raw config override or change a compound's rule thresholds.
``POST /api/enroll`` needs no login (the one-time code is the credential) and is rate-limited
per client IP.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Annotated, Any, Literal

import segno
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from contract.control import EnrollRequest, EnrollResponse
from fleet import audit
from fleet.api.deps import Principal, SessionDep, SettingsDep, ensure_compound, require
from fleet.api.types import IdPath, RefId, TextPath
from fleet.db import utcnow
from fleet.desired import (
    SOURCE_OVERRIDE,
    ConfigInputError,
    clear_override,
    effective_rules,
    refresh,
    set_override,
    validate_rules,
)
from fleet.models import (
    BrokerAccount,
    Compound,
    CompoundRules,
    DesiredConfigRow,
    EnrollmentCode,
    Entrance,
    Gateway,
    GatewayConfigState,
    GatewayReplacement,
    Role,
)
from fleet.provisioning import (
    IssuedCode,
    Provisioner,
    ProvisioningError,
    compound_of_entrance,
    display_code,
    normalize_code,
)
from fleet.sites import compound_of_gateway

router = APIRouter(tags=["provisioning"])

Installer = Annotated[Principal, Depends(require(Role.ADMIN, Role.INSTALLER))]
Maintainer = Annotated[Principal, Depends(require(Role.ADMIN, Role.INSTALLER, Role.PROPERTY))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def get_provisioner(request: Request) -> Provisioner:
    provisioner = getattr(request.app.state, "provisioning", None)
    if not isinstance(provisioner, Provisioner):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "fleet manager is starting")
    return provisioner


ProvisionerDep = Annotated[Provisioner, Depends(get_provisioner)]


def _refused(exc: ProvisioningError) -> HTTPException:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return HTTPException(exc.status, exc.detail, headers=headers)


def _scoped_gateway(
    session: Session, user: Principal, gateway_id: str
) -> tuple[Gateway, int | None]:
    gateway = session.get(Gateway, gateway_id)
    if gateway is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such gateway")
    compound_id = compound_of_gateway(session, gateway_id)
    ensure_compound(user, compound_id)
    return gateway, compound_id


# --- Gateway entries and codes ---------------------------------------------------------------


class GatewayCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entrance_id: RefId
    gateway_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="default: gw- and 12 random hex digits",
    )


class EnrollmentCodePublic(BaseModel):
    gateway_id: str
    code: str = Field(description="shown once: only its hash is stored")
    expires_at: datetime
    qr_png: str = Field(description="path of the QR code as PNG (needs the same login)")
    qr_svg: str
    enroll_uri: str = Field(description="what the QR code holds")


def _enroll_uri(base_url: str, code: str) -> str:
    return f"{base_url}/api/enroll?code={code}"


def _code_public(issued: IssuedCode, base_url: str) -> EnrollmentCodePublic:
    return EnrollmentCodePublic(
        gateway_id=issued.gateway_id,
        code=issued.code,
        expires_at=issued.expires_at,
        qr_png=f"/api/provisioning/qr.png?code={issued.code}",
        qr_svg=f"/api/provisioning/qr.svg?code={issued.code}",
        enroll_uri=_enroll_uri(base_url, issued.code),
    )


@router.post("/provisioning/gateways", status_code=status.HTTP_201_CREATED)
def create_gateway(
    body: GatewayCreate,
    session: SessionDep,
    settings: SettingsDep,
    user: Installer,
    provisioner: ProvisionerDep,
) -> EnrollmentCodePublic:
    """A gateway entry for an entrance, and its one-time enrollment code."""
    if session.get(Entrance, body.entrance_id) is None:
        raise HTTPException(422, "entrance_id: no such entrance")
    compound_id = compound_of_entrance(session, body.entrance_id)
    ensure_compound(user, compound_id)
    if body.gateway_id is not None and session.get(Gateway, body.gateway_id) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "A gateway with this id exists")
    assert compound_id is not None  # an entrance always belongs to a compound
    issued = provisioner.create_gateway(
        session,
        user.actor,
        entrance_id=body.entrance_id,
        compound_id=compound_id,
        gateway_id=body.gateway_id,
    )
    try:
        session.commit()
    except sa.exc.IntegrityError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "A gateway with this id exists") from exc
    return _code_public(issued, settings.base_url)


@router.post("/provisioning/gateways/{gateway_id}/code", status_code=status.HTTP_201_CREATED)
def new_enrollment_code(
    gateway_id: TextPath,
    session: SessionDep,
    settings: SettingsDep,
    user: Installer,
    provisioner: ProvisionerDep,
) -> EnrollmentCodePublic:
    """A fresh code for an existing gateway (re-enrollment after a factory reset, or a lost
    code); earlier unused codes of the gateway stop working."""
    _, compound_id = _scoped_gateway(session, user, gateway_id)
    replaced = session.scalar(
        sa.select(GatewayReplacement.id).where(GatewayReplacement.old_gateway_id == gateway_id)
    )
    if replaced is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "This gateway was replaced")
    issued = provisioner.new_code(session, user.actor, gateway_id, compound_id=compound_id)
    session.commit()
    return _code_public(issued, settings.base_url)


def _qr(code: str, base_url: str) -> segno.QRCode:
    normalized = normalize_code(code)
    if normalized is None:
        raise HTTPException(422, "code: not an enrollment code")
    return segno.make(_enroll_uri(base_url, display_code(normalized)), error="m")


CodeQuery = Annotated[str, Query(min_length=16, max_length=32)]


@router.get(
    "/provisioning/qr.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def enrollment_qr_png(code: CodeQuery, settings: SettingsDep, _user: Installer) -> Response:
    """The enrollment URI of ``code`` as a QR code (PNG), for the installer's phone."""
    out = io.BytesIO()
    _qr(code, settings.base_url).save(out, kind="png", scale=8, border=4)
    return Response(out.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/provisioning/qr.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
def enrollment_qr_svg(code: CodeQuery, settings: SettingsDep, _user: Installer) -> Response:
    """The same QR code as SVG."""
    out = io.BytesIO()
    _qr(code, settings.base_url).save(out, kind="svg", scale=8, border=4, xmldecl=True)
    return Response(
        out.getvalue(), media_type="image/svg+xml", headers={"Cache-Control": "no-store"}
    )


# --- Enrollment ------------------------------------------------------------------------------


class EnrollRefusal(BaseModel):
    code: str
    message: str = Field(description="Chinese")
    message_en: str


@router.post(
    "/enroll",
    responses={s: {"model": dict[str, EnrollRefusal]} for s in (400, 404, 409, 410, 429, 503)},
)
async def enroll(
    body: EnrollRequest, request: Request, provisioner: ProvisionerDep
) -> EnrollResponse:
    """Exchange a one-time code for the gateway's identity, broker credentials, site key and
    initial desired config. No login: the code is the credential."""
    client_ip = request.client.host if request.client else "unknown"
    try:
        return await provisioner.enroll(body, client_ip)
    except ProvisioningError as exc:
        raise _refused(exc) from None


# --- Replacement -----------------------------------------------------------------------------


class ReplaceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_gateway_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
    )
    reason: str | None = Field(default=None, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")


class ReplacementPublic(BaseModel):
    old_gateway_id: str
    new_gateway_id: str
    moved: dict[str, int]
    enrollment: EnrollmentCodePublic


@router.post("/provisioning/gateways/{gateway_id}/replace", status_code=status.HTTP_201_CREATED)
async def replace_gateway(
    gateway_id: TextPath,
    body: ReplaceBody,
    session: SessionDep,
    provisioner: ProvisionerDep,
    user: Maintainer,
) -> ReplacementPublic:
    """Replace a broken gateway: revoke its broker credentials, create the new gateway entry
    with an enrollment code, and move devices and history (readings, swipes, charging events,
    alerts) to it. Audited."""

    def check() -> None:
        _scoped_gateway(session, user, gateway_id)
        done = session.scalar(
            sa.select(GatewayReplacement.new_gateway_id).where(
                GatewayReplacement.old_gateway_id == gateway_id
            )
        )
        # Release the request's connection (on SQLite its transaction holds the write lock)
        # before the replacement opens transactions of its own.
        session.close()
        if done is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"Already replaced by {done}")

    await run_in_threadpool(check)
    try:
        result = await provisioner.replace(
            gateway_id, user.actor, new_gateway_id=body.new_gateway_id, reason=body.reason
        )
    except ProvisioningError as exc:
        raise _refused(exc) from None
    except FileExistsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, "A gateway with this id exists") from exc
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such gateway") from exc
    return ReplacementPublic(
        old_gateway_id=result.old_gateway_id,
        new_gateway_id=result.new_gateway_id,
        moved=result.moved,
        enrollment=_code_public(result.code, provisioner.settings.base_url),
    )


# --- Status ----------------------------------------------------------------------------------


class CodeStatus(BaseModel):
    created_at: datetime
    created_by: str
    expires_at: datetime
    state: Literal["usable", "used", "expired", "revoked"]
    used_at: datetime | None


class ProvisioningStatus(BaseModel):
    gateway_id: str
    entrance_id: int | None
    compound_id: int | None
    enrolled: bool
    broker_auth: str | None
    credentials_revoked_at: datetime | None
    replaced_by: str | None
    replaces: str | None
    codes: list[CodeStatus]


@router.get("/provisioning/gateways/{gateway_id}")
def provisioning_status(
    gateway_id: TextPath, session: SessionDep, user: Maintainer
) -> ProvisioningStatus:
    """Enrollment state of a gateway: account, codes (never the codes themselves), replacement."""
    gateway, compound_id = _scoped_gateway(session, user, gateway_id)
    account = session.get(BrokerAccount, gateway_id)
    now = utcnow()
    codes = [
        CodeStatus(
            created_at=c.created_at,
            created_by=c.created_by,
            expires_at=c.expires_at,
            used_at=c.used_at,
            state=(
                "used"
                if c.used_at is not None
                else "revoked"
                if c.revoked_at is not None
                else "expired"
                if c.expires_at <= now
                else "usable"
            ),
        )
        for c in session.scalars(
            sa.select(EnrollmentCode)
            .where(EnrollmentCode.gateway_id == gateway_id)
            .order_by(EnrollmentCode.id.desc())
            .limit(20)
        )
    ]
    return ProvisioningStatus(
        gateway_id=gateway_id,
        entrance_id=gateway.entrance_id,
        compound_id=compound_id,
        enrolled=account is not None and account.revoked_at is None,
        broker_auth=account.mode if account else None,
        credentials_revoked_at=account.revoked_at if account else None,
        replaced_by=session.scalar(
            sa.select(GatewayReplacement.new_gateway_id).where(
                GatewayReplacement.old_gateway_id == gateway_id
            )
        ),
        replaces=session.scalar(
            sa.select(GatewayReplacement.old_gateway_id).where(
                GatewayReplacement.new_gateway_id == gateway_id
            )
        ),
        codes=codes,
    )


# --- Desired vs applied config ---------------------------------------------------------------


class DesiredPublic(BaseModel):
    version: int
    hash: str
    source: Literal["site", "override"]
    issued_at: datetime
    published_version: int | None
    published_at: datetime | None
    problems: list[str]
    config: dict[str, Any]


class AppliedPublic(BaseModel):
    status: str = Field(description="of the last report: applied, rejected, rolled_back, unchanged")
    version: int = Field(description="the config the last report is about")
    hash: str
    applied_version: int | None = Field(description="the config the gateway runs now")
    applied_hash: str | None
    reason: str | None
    last_rejected_version: int | None
    last_rejection_reason: str | None
    last_rejected_at: datetime | None
    reported_at: datetime


class ConfigStatePublic(BaseModel):
    gateway_id: str
    desired: DesiredPublic | None
    applied: AppliedPublic | None
    in_sync: bool = Field(description="the gateway runs exactly the desired config")
    drift: Literal[
        "in_sync", "not_published", "awaiting_report", "pending", "rejected", "drifted", "none"
    ] = Field(
        description="none: no desired config; not_published: not yet on the broker; "
        "awaiting_report: published, the gateway has not answered; pending: the gateway runs an "
        "older config; rejected: the gateway refused the desired version (see reason); "
        "drifted: it runs a config whose hash differs from the desired one"
    )


def _config_state(session: Session, gateway_id: str) -> ConfigStatePublic:
    row = session.get(DesiredConfigRow, gateway_id)
    state = session.get(GatewayConfigState, gateway_id)
    desired = (
        DesiredPublic(
            version=row.version,
            hash=row.hash,
            source="override" if row.source == SOURCE_OVERRIDE else "site",
            issued_at=row.issued_at,
            published_version=row.published_version,
            published_at=row.published_at,
            problems=list(row.problems.get("items", [])),
            config=row.config,
        )
        if row is not None
        else None
    )
    applied = AppliedPublic.model_validate(state, from_attributes=True) if state else None
    in_sync = bool(row and state and state.applied_hash == row.hash)
    drift: Any
    if row is None:
        drift = "none"
    elif in_sync:
        drift = "in_sync"
    elif row.published_version != row.version:
        drift = "not_published"
    elif state is None:
        drift = "awaiting_report"
    elif state.status in ("rejected", "rolled_back") and state.hash == row.hash:
        drift = "rejected"
    elif state.applied_version is not None and state.applied_version < row.version:
        drift = "pending"
    else:
        drift = "drifted"
    return ConfigStatePublic(
        gateway_id=gateway_id, desired=desired, applied=applied, in_sync=in_sync, drift=drift
    )


@router.get("/provisioning/gateways/{gateway_id}/config")
def read_config_state(
    gateway_id: TextPath, session: SessionDep, user: Maintainer
) -> ConfigStatePublic:
    """Desired config (version, hash, problems) against what the gateway reports it runs."""
    _scoped_gateway(session, user, gateway_id)
    return _config_state(session, gateway_id)


@router.post("/provisioning/gateways/{gateway_id}/config/refresh")
def refresh_config(
    gateway_id: TextPath,
    session: SessionDep,
    settings: SettingsDep,
    user: Installer,
    provisioner: ProvisionerDep,
) -> ConfigStatePublic:
    """Re-assemble the gateway's config from the register now (and publish it if changed)."""
    _scoped_gateway(session, user, gateway_id)
    refresh(session, gateway_id, timezone=settings.display_timezone)
    session.commit()
    provisioner.publisher.request()
    return _config_state(session, gateway_id)


class OverrideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(
        description="pushed as it is; keys: modbus, modbus_tcp, serial_readers, "
        "wiegand_readers, dlt645, ble, site, rules"
    )


@router.put("/provisioning/gateways/{gateway_id}/config/override")
def put_config_override(
    gateway_id: TextPath,
    body: OverrideBody,
    session: SessionDep,
    user: Admin,
    provisioner: ProvisionerDep,
) -> ConfigStatePublic:
    """Push a raw config (admin): it replaces the register's config until the override is
    deleted. The gateway validates it and reports what it did."""
    _, compound_id = _scoped_gateway(session, user, gateway_id)
    try:
        row = set_override(session, gateway_id, body.config)
    except ConfigInputError as exc:
        raise HTTPException(422, str(exc)) from exc
    audit.record(
        session,
        user.actor,
        audit.Action.UPDATE,
        "desired_config",
        gateway_id,
        compound_id=compound_id,
        summary={"override": True, "version": row.version, "hash": row.hash},
    )
    session.commit()
    provisioner.publisher.request()
    return _config_state(session, gateway_id)


@router.delete("/provisioning/gateways/{gateway_id}/config/override")
def delete_config_override(
    gateway_id: TextPath,
    session: SessionDep,
    settings: SettingsDep,
    user: Admin,
    provisioner: ProvisionerDep,
) -> ConfigStatePublic:
    """Back to the config assembled from the register."""
    _, compound_id = _scoped_gateway(session, user, gateway_id)
    row = clear_override(session, gateway_id, timezone=settings.display_timezone)
    audit.record(
        session,
        user.actor,
        audit.Action.UPDATE,
        "desired_config",
        gateway_id,
        compound_id=compound_id,
        summary={"override": False, "version": row.version if row else None},
    )
    session.commit()
    provisioner.publisher.request()
    return _config_state(session, gateway_id)


# --- Rule thresholds per compound ------------------------------------------------------------


class CompoundRulesPublic(BaseModel):
    compound_id: int
    overrides: dict[str, Any] = Field(description="what differs from the defaults")
    effective: dict[str, Any] = Field(description="defaults (contract.site) with the overrides")


def _rules_public(session: Session, compound_id: int) -> CompoundRulesPublic:
    row = session.get(CompoundRules, compound_id)
    return CompoundRulesPublic(
        compound_id=compound_id,
        overrides=row.rules if row else {},
        effective=effective_rules(session, compound_id).model_dump(mode="json"),
    )


@router.get("/provisioning/compounds/{compound_id}/rules")
def read_compound_rules(
    compound_id: IdPath, session: SessionDep, user: Maintainer
) -> CompoundRulesPublic:
    if session.get(Compound, compound_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such compound")
    ensure_compound(user, compound_id)
    return _rules_public(session, compound_id)


@router.put("/provisioning/compounds/{compound_id}/rules")
def put_compound_rules(
    compound_id: IdPath,
    body: dict[str, Any],
    session: SessionDep,
    user: Admin,
    provisioner: ProvisionerDep,
) -> CompoundRulesPublic:
    """Set the compound's thresholds: a partial rules document (e.g. ``{"overload":
    {"sustain_s": 600}}``) over the defaults; ``{}`` restores the defaults. Every gateway of
    the compound gets a new config version."""
    if session.get(Compound, compound_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such compound")
    try:
        # Stored as validated (only what was given): the raw body could hold anything.
        body = validate_rules(body).model_dump(mode="json", exclude_unset=True)
    except ConfigInputError as exc:
        raise HTTPException(422, str(exc)) from exc
    row = session.get(CompoundRules, compound_id)
    before = dict(row.rules) if row else {}
    if row is None:
        row = CompoundRules(compound_id=compound_id, rules=body, updated_at=utcnow())
        session.add(row)
    row.rules = body
    row.updated_at = utcnow()
    row.updated_by = user.username
    audit.record(
        session,
        user.actor,
        audit.Action.UPDATE,
        "compound_rules",
        compound_id,
        compound_id=compound_id,
        summary={"before": before, "after": body},
    )
    session.commit()
    provisioner.publisher.request()  # the commit hook already queued the compound's gateways
    return _rules_public(session, compound_id)
