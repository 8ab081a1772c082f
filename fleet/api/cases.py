"""The street office's work on alerts: lifecycle steps, comments, photos, flat files (一户一档),
sublandlords, forwarding channels and the statistics reports.

Steps are ``POST /api/alerts/{id}/actions/{action}`` as multipart forms (``comment``,
``assignee``, ``due_at``, ``deadline_at``, ``category``, any number of ``photos``), so a phone on
site can send its pictures with the step. Officers and admins may take steps on the alerts of
their compounds; property companies may comment and add photos; other roles get 403, an alert
outside the caller's compounds 403, a step the alert's state does not allow 409.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import anyio.from_thread
import sqlalchemy as sa
from fastapi import (
    APIRouter,
    Body,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Response,
    UploadFile,
    status,
)
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.orm import Session

from contract.alerts import AlertKind
from fleet.api.deps import (
    CurrentUser,
    Principal,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    ensure_compound,
    require,
)
from fleet.api.types import IdPath, IdQuery, Limit, Name, Offset, RefId, TextPath
from fleet.channels import ChannelKind, redact_url
from fleet.db import utcnow
from fleet.lifecycle import (
    Action,
    Defaults,
    InvalidInputError,
    NotAllowedError,
    Person,
    Photo,
    Status,
    StepInput,
    WrongStateError,
    add_comment,
    timeline,
    transition,
)
from fleet.models import (
    Alert,
    AlertPhoto,
    AuditEntry,
    Building,
    Compound,
    Flat,
    FlatMark,
    ForwardChannel,
    ForwardDelivery,
    Notification,
    Role,
    StreetOffice,
    Sublandlord,
    SublandlordFlat,
)
from fleet.reports import TABLES, compute, to_csv, to_xlsx
from fleet.risk import Reason, flat_alerts, flat_risk, flat_risks
from fleet.settings import Settings
from fleet.sites import compound_of_gateway
from fleet.thumbs import thumbnail

router = APIRouter(tags=["cases"])

_LINE = r"^[^\x00-\x1f\x7f]*$"  # one line of printable text (PostgreSQL refuses NUL)
_EMAIL = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"  # no control characters either
_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"  # printable, newlines and tabs allowed

OfficerUser = Annotated[Principal, Depends(require(Role.OFFICER, Role.ADMIN))]


# -- schemas ---------------------------------------------------------------------------------


class TimelineEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    via: str
    action: str
    alert_id: str | None
    summary: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> TimelineEntry:
        return cls(
            id=entry.id,
            at=entry.at,
            actor=entry.actor,
            via=entry.via,
            action=entry.action,
            alert_id=entry.entity_id,
            summary=entry.summary,
        )


class ChannelDelivery(BaseModel):
    channel_id: int
    channel: str
    kind: str
    event: str
    key: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    delivered_at: datetime | None


class PhotoPublic(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: datetime


class CasePublic(BaseModel):
    alert_id: str
    kind: str
    category: str
    severity: str
    state: str
    status: str
    recurring: bool
    episodes: int
    flat_id: int | None
    compound_id: int | None
    assignee: str | None
    due_at: datetime | None
    deadline_at: datetime | None
    rechecks: int
    outcome: str | None
    acknowledged_at: datetime | None
    dispatched_at: datetime | None
    decided_at: datetime | None
    rectifying_at: datetime | None
    closed_at: datetime | None
    escalated_at: datetime | None

    @classmethod
    def of(cls, alert: Alert) -> CasePublic:
        return cls.model_validate({name: getattr(alert, name) for name in cls.model_fields})


class CaseDetail(CasePublic):
    timeline: list[TimelineEntry]
    deliveries: list[ChannelDelivery]
    photos: list[PhotoPublic]


# -- helpers ---------------------------------------------------------------------------------


def _load(session: Session, user: Principal, alert_id: str, *, lock: bool) -> Alert:
    alert = session.get(Alert, alert_id, with_for_update=lock)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such alert")
    compound = alert.compound_id
    if compound is None:
        compound = compound_of_gateway(session, alert.gateway_id)
    ensure_compound(user, compound)
    return alert


def _person(user: Principal) -> Person:
    actor = user.actor
    return Person(name=actor.name, id=actor.id, role=user.role.value, via=actor.via)


def _wake(event: asyncio.Event) -> None:
    """Wake the forwarder from this worker thread (asyncio events are not thread-safe)."""
    try:
        anyio.from_thread.run_sync(event.set)
    except RuntimeError:  # not in a worker thread of the event loop (a direct call)
        event.set()


@contextmanager
def _tx(session: Session) -> Iterator[None]:
    """Commit what the block did, or roll it back (the session has usually begun already: the
    dependencies read the user)."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _defaults(settings: Settings) -> Defaults:
    return Defaults(
        dispatch_due=timedelta(hours=settings.dispatch_due_hours),
        rectify=timedelta(days=settings.rectify_days),
        recheck=timedelta(days=settings.recheck_days),
    )


def _photos(files: list[UploadFile] | None, max_bytes: int) -> list[Photo]:
    photos = []
    for upload in files or []:
        data = upload.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"photo larger than {max_bytes} bytes"
            )
        photos.append(Photo(filename=upload.filename or "photo", data=data))
    return photos


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "times need a UTC offset (…+08:00 or Z)"
        )
    return value


def case_detail(session: Session, alert: Alert) -> CaseDetail:
    entries = [TimelineEntry.of(e) for e in timeline(session, [alert.alert_id])]
    rows = session.execute(
        sa.select(ForwardDelivery, ForwardChannel, Notification)
        .join(ForwardChannel, ForwardChannel.id == ForwardDelivery.channel_id)
        .join(Notification, Notification.id == ForwardDelivery.notification_id)
        .where(ForwardDelivery.alert_id == alert.alert_id)
        .order_by(ForwardDelivery.id)
    )
    deliveries = [
        ChannelDelivery(
            channel_id=c.id,
            channel=c.name,
            kind=c.kind,
            event=n.event,
            key=n.key,
            status=d.status,
            attempts=d.attempts,
            last_error=d.last_error,
            next_attempt_at=d.next_attempt_at,
            delivered_at=d.delivered_at,
        )
        for d, c, n in rows
    ]
    photos = [
        PhotoPublic.model_validate(p, from_attributes=True)
        for p in session.scalars(
            sa.select(AlertPhoto)
            .where(AlertPhoto.alert_id == alert.alert_id)
            .order_by(AlertPhoto.id)
        )
    ]
    return CaseDetail(
        **CasePublic.of(alert).model_dump(), timeline=entries, deliveries=deliveries, photos=photos
    )


# -- lifecycle -------------------------------------------------------------------------------


class CasesPublic(BaseModel):
    items: list[CasePublic]
    total: int


@router.get("/cases")
def list_cases(
    session: SessionDep,
    user: CurrentUser,
    *,
    status_in: Annotated[list[Status] | None, Query(alias="status", max_length=7)] = None,
    kind: AlertKind | None = None,
    compound_id: IdQuery = None,
    assignee: Annotated[str | None, Query(max_length=64, pattern=_LINE)] = None,
    recurring: bool | None = None,
    overdue: bool = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> CasesPublic:
    """The work list: cases in the caller's compounds, oldest unfinished first. ``overdue``:
    dispatched past the due time or rectifying past the deadline."""
    stmt = sa.select(Alert)
    if user.compound_ids is not None:
        stmt = stmt.where(Alert.compound_id.in_(sorted(user.compound_ids)))
    if status_in:
        stmt = stmt.where(Alert.status.in_([s.value for s in status_in]))
    if kind is not None:
        stmt = stmt.where(Alert.kind == kind.value)
    if compound_id is not None:
        stmt = stmt.where(Alert.compound_id == compound_id)
    if assignee is not None:
        stmt = stmt.where(Alert.assignee == assignee)
    if recurring is not None:
        stmt = stmt.where(Alert.recurring.is_(recurring))
    if overdue:
        now = utcnow()
        stmt = stmt.where(
            sa.or_(
                sa.and_(Alert.status == Status.DISPATCHED.value, Alert.due_at < now),
                sa.and_(Alert.status == Status.RECTIFYING.value, Alert.deadline_at < now),
            )
        )
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(Alert.first_received_at, Alert.alert_id).limit(limit).offset(offset)
    ).all()
    return CasesPublic(items=[CasePublic.of(a) for a in rows], total=total)


class RiskReason(BaseModel):
    """One reason for a flat's level: ``code`` (fleet.risk.Reason) and its values, for clients
    that word it themselves; ``text`` is the English sentence also listed in ``reasons``."""

    code: str
    params: dict[str, str | int]
    text: str

    @classmethod
    def of(cls, reason: Reason) -> RiskReason:
        return cls(code=reason.code, params=dict(reason.params), text=reason.text)


class FlatRisk(BaseModel):
    flat_id: int
    unit_id: str
    building: str
    compound: str
    risk: Literal["low", "medium", "high"]
    reasons: list[str]  # English sentences, as before ``reason_details`` existed
    reason_details: list[RiskReason]


@router.get("/risk/flats")
def list_flat_risks(
    session: SessionDep,
    user: CurrentUser,
    *,
    level: Literal["low", "medium", "high"] | None = None,
    compound_id: IdQuery = None,
) -> list[FlatRisk]:
    """Flats with any case, with their risk level (high first): the three-level list."""
    stmt = (
        sa.select(Flat, Building, Compound)
        .join(Building, Building.id == Flat.building_id)
        .join(Compound, Compound.id == Building.compound_id)
        .where(Flat.id.in_(sa.select(Alert.flat_id).where(Alert.flat_id.is_not(None))))
        .order_by(Flat.id)
    )
    if user.compound_ids is not None:
        stmt = stmt.where(Compound.id.in_(sorted(user.compound_ids)))
    if compound_id is not None:
        stmt = stmt.where(Compound.id == compound_id)
    rows = session.execute(stmt).all()
    risks = flat_risks(session, [flat.id for flat, _, _ in rows], utcnow())
    out = []
    for flat, building, compound in rows:
        risk = risks[flat.id]
        if level is None or risk.level == level:
            out.append(
                FlatRisk(
                    flat_id=flat.id,
                    unit_id=flat.unit_id,
                    building=building.name,
                    compound=compound.name,
                    risk=risk.level,
                    reasons=risk.texts,
                    reason_details=[RiskReason.of(r) for r in risk.reasons],
                )
            )
    order = {"high": 0, "medium": 1, "low": 2}
    return sorted(out, key=lambda r: (order[r.risk], r.flat_id))


@router.get("/alerts/{alert_id}/case")
def read_case(session: SessionDep, user: CurrentUser, alert_id: TextPath) -> CaseDetail:
    return case_detail(session, _load(session, user, alert_id, lock=False))


@router.post("/alerts/{alert_id}/actions/{action}")
def take_step(
    *,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    user: CurrentUser,
    alert_id: TextPath,
    action: Action,
    comment: Annotated[str | None, Form(max_length=2000, pattern=_TEXT)] = None,
    assignee: Annotated[str | None, Form(max_length=64, pattern=_LINE)] = None,
    due_at: Annotated[datetime | None, Form()] = None,
    deadline_at: Annotated[datetime | None, Form()] = None,
    category: Annotated[str | None, Form(max_length=16, pattern=_LINE)] = None,
    photos: Annotated[list[UploadFile] | None, File()] = None,
) -> CaseDetail:
    step = StepInput(
        comment=comment,
        assignee=assignee,
        due_at=_aware(due_at),
        deadline_at=_aware(deadline_at),
        category=category,
        photos=_photos(photos, settings.photo_max_bytes),
    )
    with _tx(session):
        alert = _load(session, user, alert_id, lock=True)
        try:
            transition(
                session,
                alert,
                action,
                _person(user),
                step,
                now=utcnow(),
                defaults=_defaults(settings),
                photo_max_bytes=settings.photo_max_bytes,
                tz=settings.display_timezone,
            )
        except NotAllowedError as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
        except WrongStateError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except InvalidInputError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    _wake(runtime.forward_wake)
    return case_detail(session, alert)


@router.post("/alerts/{alert_id}/comments", status_code=status.HTTP_201_CREATED)
def comment_on_alert(
    *,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    alert_id: TextPath,
    comment: Annotated[str | None, Form(max_length=2000, pattern=_TEXT)] = None,
    photos: Annotated[list[UploadFile] | None, File()] = None,
) -> TimelineEntry:
    step = StepInput(comment=comment, photos=_photos(photos, settings.photo_max_bytes))
    with _tx(session):
        alert = _load(session, user, alert_id, lock=True)
        try:
            entry = add_comment(
                session,
                alert,
                _person(user),
                step,
                now=utcnow(),
                photo_max_bytes=settings.photo_max_bytes,
            )
        except NotAllowedError as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
        except InvalidInputError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        return TimelineEntry.of(entry)


@router.get("/alerts/{alert_id}/photos/{photo_id}")
def read_photo(
    session: SessionDep,
    user: CurrentUser,
    alert_id: TextPath,
    photo_id: IdPath,
    size: Annotated[Literal["full", "thumb"], Query()] = "full",
) -> Response:
    """The photo as uploaded, or with ``size=thumb`` a JPEG of at most 320 px on its longer
    side, upright (the photo itself when it cannot be read as an image)."""
    _load(session, user, alert_id, lock=False)
    photo = session.get(AlertPhoto, photo_id)
    if photo is None or photo.alert_id != alert_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such photo")
    if size == "thumb":
        thumb = thumbnail(photo.data)
        if thumb is not None:
            return Response(thumb, media_type="image/jpeg")
    return Response(photo.data, media_type=photo.content_type)


# -- flats -----------------------------------------------------------------------------------


class FlatFile(BaseModel):
    flat_id: int
    unit_id: str
    building: str
    compound_id: int
    compound: str
    rented: bool
    risk: Literal["low", "medium", "high"]
    risk_reasons: list[str]  # English sentences; codes and values in risk_reason_details
    risk_reason_details: list[RiskReason]
    sublandlords: list[int]
    alerts: list[CasePublic]
    timeline: list[TimelineEntry]


def _flat(session: Session, user: Principal, flat_id: int) -> tuple[Flat, Building, Compound]:
    row = session.execute(
        sa.select(Flat, Building, Compound)
        .join(Building, Building.id == Flat.building_id)
        .join(Compound, Compound.id == Building.compound_id)
        .where(Flat.id == flat_id)
    ).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such flat")
    flat, building, compound = row
    ensure_compound(user, compound.id)
    return flat, building, compound


@router.get("/flats/{flat_id}/file")
def read_flat_file(session: SessionDep, user: CurrentUser, flat_id: IdPath) -> FlatFile:
    """一户一档: the flat, its risk level and why, its sublandlords, its cases and their steps."""
    flat, building, compound = _flat(session, user, flat_id)
    alerts = flat_alerts(session, flat_id)
    risk = flat_risk(session, flat_id, utcnow())
    mark = session.get(FlatMark, flat_id)
    sublandlords = list(
        session.scalars(
            sa.select(SublandlordFlat.sublandlord_id).where(SublandlordFlat.flat_id == flat_id)
        )
    )
    return FlatFile(
        flat_id=flat.id,
        unit_id=flat.unit_id,
        building=building.name,
        compound_id=compound.id,
        compound=compound.name,
        rented=bool(mark and mark.rented) or bool(sublandlords),
        risk=risk.level,
        risk_reasons=risk.texts,
        risk_reason_details=[RiskReason.of(r) for r in risk.reasons],
        sublandlords=sublandlords,
        alerts=[CasePublic.of(a) for a in alerts],
        timeline=[TimelineEntry.of(e) for e in timeline(session, [a.alert_id for a in alerts])],
    )


class RentedIn(BaseModel):
    rented: bool


@router.put("/flats/{flat_id}/rented")
def mark_rented(
    session: SessionDep, user: OfficerUser, flat_id: IdPath, body: RentedIn
) -> RentedIn:
    with _tx(session):
        _flat(session, user, flat_id)
        mark = session.get(FlatMark, flat_id)
        if mark is None:
            mark = FlatMark(flat_id=flat_id, rented=body.rented, updated_at=utcnow(), updated_by="")
            session.add(mark)
        mark.rented = body.rented
        mark.updated_at = utcnow()
        mark.updated_by = user.username
    return body


# -- sublandlords ------------------------------------------------------------------------------


class SublandlordIn(BaseModel):
    name: Name
    phone: str | None = Field(default=None, max_length=32, pattern=_LINE)
    notes: str | None = Field(default=None, max_length=500, pattern=_TEXT)
    street_office_id: RefId | None = None
    flat_ids: list[RefId] = Field(default_factory=list, max_length=1000)


class SublandlordPublic(BaseModel):
    id: int
    name: str
    phone: str | None
    notes: str | None
    street_office_id: int | None
    flat_ids: list[int]
    flats_with_confirmed_hazards: int


def _sublandlord_public(session: Session, s: Sublandlord) -> SublandlordPublic:
    flat_ids = sorted(
        session.scalars(
            sa.select(SublandlordFlat.flat_id).where(SublandlordFlat.sublandlord_id == s.id)
        )
    )
    confirmed = (
        session.scalar(
            sa.select(sa.func.count(sa.distinct(Alert.flat_id))).where(
                Alert.flat_id.in_(flat_ids), Alert.outcome == "confirmed"
            )
        )
        or 0
    )
    return SublandlordPublic(
        id=s.id,
        name=s.name,
        phone=s.phone,
        notes=s.notes,
        street_office_id=s.street_office_id,
        flat_ids=flat_ids,
        flats_with_confirmed_hazards=confirmed,
    )


def _link_flats(
    session: Session, user: Principal, sublandlord_id: IdPath, flat_ids: list[int]
) -> None:
    now = utcnow()
    session.execute(
        sa.delete(SublandlordFlat).where(SublandlordFlat.sublandlord_id == sublandlord_id)
    )
    for flat_id in sorted(set(flat_ids)):
        _flat(session, user, flat_id)
        session.add(SublandlordFlat(sublandlord_id=sublandlord_id, flat_id=flat_id, linked_at=now))


@router.post("/sublandlords", status_code=status.HTTP_201_CREATED)
def create_sublandlord(
    session: SessionDep, user: OfficerUser, body: SublandlordIn
) -> SublandlordPublic:
    with _tx(session):
        if body.street_office_id is not None:
            if session.get(StreetOffice, body.street_office_id) is None:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "No such street office")
            _may_manage(session, user, body.street_office_id)
        s = Sublandlord(
            name=body.name,
            phone=body.phone,
            notes=body.notes,
            street_office_id=body.street_office_id,
            created_at=utcnow(),
            created_by=user.username,
        )
        session.add(s)
        session.flush()
        _link_flats(session, user, s.id, body.flat_ids)
    return _sublandlord_public(session, s)


@router.put("/sublandlords/{sublandlord_id}/flats")
def link_sublandlord_flats(
    session: SessionDep,
    user: OfficerUser,
    sublandlord_id: IdPath,
    flat_ids: Annotated[list[RefId], Body(max_length=1000)],
) -> SublandlordPublic:
    with _tx(session):
        s = session.get(Sublandlord, sublandlord_id)
        if s is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such sublandlord")
        _link_flats(session, user, sublandlord_id, flat_ids)
    return _sublandlord_public(session, s)


@router.get("/sublandlords")
def list_sublandlords(session: SessionDep, user: OfficerUser) -> list[SublandlordPublic]:
    """Sublandlords, most flats first: repeat offenders across flats on top."""
    out = [_sublandlord_public(session, s) for s in session.scalars(sa.select(Sublandlord))]
    if user.compound_ids is not None:
        visible = set(
            session.scalars(
                sa.select(Flat.id)
                .join(Building, Building.id == Flat.building_id)
                .where(Building.compound_id.in_(sorted(user.compound_ids)))
            )
        )
        out = [s for s in out if set(s.flat_ids) & visible]
    return sorted(out, key=lambda s: (-len(s.flat_ids), s.id))


# -- channels ----------------------------------------------------------------------------------


class ChannelIn(BaseModel):
    name: Name
    kind: ChannelKind
    street_office_id: RefId | None = None
    url: str | None = Field(default=None, max_length=2048, pattern=_LINE)
    secret: str | None = Field(default=None, max_length=200, pattern=_LINE)
    to: list[Annotated[str, Field(max_length=254, pattern=_EMAIL)]] = Field(
        default_factory=list, max_length=50
    )
    quiet_start: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    quiet_end: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    events: list[Annotated[str, Field(pattern=r"^[a-z_]{1,24}$")]] | None = Field(
        default=None, max_length=32
    )
    send_reports: bool = False
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("url must be http(s)")
        return value


class ChannelPublic(BaseModel):
    """A channel without its secrets: the URL without its query (robot keys live there)."""

    id: int
    name: str
    kind: str
    street_office_id: int | None
    target: str
    has_secret: bool
    quiet_start: str | None
    quiet_end: str | None
    events: list[str] | None
    send_reports: bool
    enabled: bool
    source: str

    @classmethod
    def of(cls, c: ForwardChannel) -> ChannelPublic:
        if c.kind == ChannelKind.EMAIL:
            target = ", ".join(str(x) for x in c.config.get("to", []))
        else:
            target = redact_url(str(c.config.get("url", "")))
        return cls(
            id=c.id,
            name=c.name,
            kind=c.kind,
            street_office_id=c.street_office_id,
            target=target,
            has_secret=bool(c.config.get("secret")),
            quiet_start=c.quiet_start,
            quiet_end=c.quiet_end,
            events=c.events,
            send_reports=c.send_reports,
            enabled=c.enabled,
            source=c.source,
        )


def _may_manage(session: Session, user: Principal, street_office_id: int | None) -> None:
    """Admins manage every channel; an officer only those of their own street office."""
    if user.role is Role.ADMIN:
        return
    if street_office_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "District-wide channels are for admins")
    compounds = set(
        session.scalars(sa.select(Compound.id).where(Compound.street_office_id == street_office_id))
    )
    if user.compound_ids is not None and not compounds <= set(user.compound_ids):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Not your street office")


@router.post("/channels", status_code=status.HTTP_201_CREATED)
def create_channel(session: SessionDep, user: OfficerUser, body: ChannelIn) -> ChannelPublic:
    if body.kind == ChannelKind.EMAIL and not body.to:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "email needs recipients (to)")
    if body.kind != ChannelKind.EMAIL and not body.url:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.kind} needs a url")
    with _tx(session):
        if body.street_office_id is not None and (
            session.get(StreetOffice, body.street_office_id) is None
        ):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "No such street office")
        _may_manage(session, user, body.street_office_id)
        config: dict[str, Any] = (
            {"to": body.to} if body.kind == ChannelKind.EMAIL else {"url": body.url}
        )
        if body.secret:
            config["secret"] = body.secret
        channel = ForwardChannel(
            street_office_id=body.street_office_id,
            name=body.name,
            kind=body.kind.value,
            config=config,
            quiet_start=body.quiet_start,
            quiet_end=body.quiet_end,
            events=body.events,
            send_reports=body.send_reports,
            enabled=body.enabled,
            source="api",
            created_at=utcnow(),
        )
        session.add(channel)
    return ChannelPublic.of(channel)


@router.get("/channels")
def list_channels(session: SessionDep, user: OfficerUser) -> list[ChannelPublic]:
    channels = session.scalars(sa.select(ForwardChannel).order_by(ForwardChannel.id)).all()
    out = []
    for c in channels:
        try:
            _may_manage(session, user, c.street_office_id)
        except HTTPException:
            continue
        out.append(ChannelPublic.of(c))
    return out


@router.delete("/channels/{channel_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_channel(session: SessionDep, user: OfficerUser, channel_id: IdPath) -> None:
    with _tx(session):
        channel = session.get(ForwardChannel, channel_id)
        if channel is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such channel")
        _may_manage(session, user, channel.street_office_id)
        channel.enabled = False  # keep the delivery history; stop sending


# -- reports -----------------------------------------------------------------------------------


@router.get("/reports/statistics{suffix}")
def read_statistics(
    *,
    session: SessionDep,
    settings: SettingsDep,
    user: OfficerUser,
    suffix: Literal["", ".json", ".csv", ".xlsx"],
    start: datetime,
    end: datetime,
    street_office_id: IdQuery = None,
    compound_id: IdQuery = None,
    table: Annotated[Literal["3", "4", "5"], Query()] = "4",
) -> Any:
    """Seed 002's tables 3-5 for [start, end): JSON, CSV (one table) or XLSX (all three)."""
    start_at, end_at = _aware(start), _aware(end)
    assert start_at is not None and end_at is not None
    if end_at <= start_at:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "end must be after start")
    if compound_id is not None:
        ensure_compound(user, compound_id)
    report = compute(
        session,
        start=start_at.astimezone(UTC),
        end=end_at.astimezone(UTC),
        scope=user.compound_ids,
        street_office_id=street_office_id,
        compound_id=compound_id,
    )
    name = f"statistics_{start_at:%Y%m%d}_{end_at:%Y%m%d}"
    if suffix == ".xlsx":
        return Response(
            to_xlsx(report, tz=settings.display_timezone),
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'},
        )
    if suffix == ".csv":
        return Response(
            to_csv(report, table),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}_table{table}.csv"'},
        )
    return report.as_json()


__all__ = ["TABLES", "router"]
