"""The street office's (平安办) pages: comments and photos on an alert, the photos themselves, and
the statistics report page with its XLSX/CSV downloads; plus the inbox's compound and recurring
(回潮) filters, which ``fleet.web.inbox`` takes from here.

Every query is scoped as the JSON API scopes it: alerts with ``scope_filter`` on
``alert_compound()``, reports with ``fleet.reports.compute(scope=user.compound_ids)`` as
``GET /api/reports/statistics`` does. Page actions are form POSTs behind the login cookie plus the
lifecycle forms' CSRF token, and call the API's service function (``fleet.lifecycle.add_comment``,
which checks photos by their bytes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from fleet.api.deps import Principal, SessionDep, scope_filter
from fleet.api.types import IdPath, TextPath
from fleet.db import utcnow
from fleet.lifecycle import (
    InvalidInputError,
    LifecycleError,
    NotAllowedError,
    NotFoundError,
    Person,
    Photo,
    StepInput,
    add_comment,
    check_photo,
    load_for_step,
)
from fleet.models import Alert, AlertPhoto, Compound, Role, StreetOffice
from fleet.queries import get_alert
from fleet.reports import TABLES, Report, compute, to_csv, to_xlsx
from fleet.settings import Settings
from fleet.sites import alert_compound, compound_of_alert
from fleet.texts import pick_lang
from fleet.thumbs import thumbnail
from fleet.web_kit import PageKit, PageUser, csrf_ok, with_lang

# Who may comment and add photos: fleet.lifecycle.add_comment (officers, admins, and property
# companies, who are often the ones on site). Installers see the alert only.
COMMENT_ROLES = frozenset({Role.OFFICER, Role.ADMIN, Role.PROPERTY})
# Who sees the statistics: as GET /api/reports/statistics (officers and admins).
REPORT_ROLES = frozenset({Role.OFFICER, Role.ADMIN})
# What the comment and photo forms send back to the alert page (?error=...), as labels.
COMMENT_ERRORS = ("photo_type", "photo_size", "photo_missing", "comment_empty")
MAX_CHOICES = 2000  # compounds offered in a select
REPORT_MONTHS = 12  # months offered as presets, the current one first
_TEXT = re.compile(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")  # as the API's comment pattern

ReportParam = Annotated[str | None, Query(max_length=32)]  # checked by resolve_period, resolve_area


# -- inbox filters ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompoundChoice:
    id: int
    name: str
    street_office: str


@dataclass(frozen=True, slots=True)
class InboxFilters:
    """The inbox's filters: equality on the alert's columns, its compound, recurring or not."""

    kind: str = ""
    category: str = ""
    severity: str = ""
    status: str = ""
    compound: int | None = None
    recurring: bool | None = None

    def any(self) -> bool:
        return bool(
            self.kind
            or self.category
            or self.severity
            or self.status
            or self.compound is not None
            or self.recurring is not None
        )

    @property
    def recurring_choice(self) -> str:
        if self.recurring is None:
            return ""
        return "yes" if self.recurring else "no"


def scoped_compounds(session: Session, user: Principal) -> list[CompoundChoice]:
    """The user's compounds (with their street office), for the inbox's compound filter."""
    stmt = scope_filter(
        sa.select(Compound.id, Compound.name, StreetOffice.name).join(
            StreetOffice, StreetOffice.id == Compound.street_office_id
        ),
        user,
        Compound.id,
    ).order_by(StreetOffice.name, Compound.name, Compound.id)
    return [
        CompoundChoice(row[0], row[1], row[2]) for row in session.execute(stmt.limit(MAX_CHOICES))
    ]


def inbox_filters(
    *,
    kind: str | None,
    category: str | None,
    severity: str | None,
    status: str | None,
    compound: str | None,
    recurring: str | None,
    offered: Sequence[CompoundChoice],
) -> InboxFilters:
    """The filters from the query string. A compound that is not offered to the user (another
    street office's, or not a number) is ignored: the scope keeps its alerts out anyway."""
    wanted = int(compound) if compound and compound.isdigit() else None
    return InboxFilters(
        kind=kind or "",
        category=category or "",
        severity=severity or "",
        status=status or "",
        compound=wanted if any(c.id == wanted for c in offered) else None,
        recurring={"yes": True, "no": False}.get(recurring or ""),
    )


def inbox_alerts(
    session: Session, user: Principal, filters: InboxFilters, *, limit: int, offset: int
) -> tuple[list[Alert], int]:
    """A page of the user's alerts matching ``filters``, newest first, and how many match.
    Everything is one SQL query (plus its count), scoped as ``GET /api/alerts`` is."""
    stmt = scope_filter(sa.select(Alert), user, alert_compound())
    for column, value in (
        (Alert.kind, filters.kind),
        (Alert.category, filters.category),
        (Alert.severity, filters.severity),
        (Alert.status, filters.status),
    ):
        if value:
            stmt = stmt.where(column == value)
    if filters.compound is not None:
        stmt = stmt.where(alert_compound() == filters.compound)
    if filters.recurring is not None:
        stmt = stmt.where(Alert.recurring.is_(filters.recurring))
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(Alert.raised_at.desc(), Alert.alert_id).limit(limit).offset(offset)
    ).all()
    return list(rows), total


# -- photos on the alert page -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhotoMeta:
    id: int
    filename: str
    size: int
    uploaded_by: str
    uploaded_at: datetime
    audit_id: int | None


def alert_photos(session: Session, alert_id: str) -> dict[int | None, list[PhotoMeta]]:
    """The alert's photos (not their bytes) by the timeline entry they came with."""
    rows = session.execute(
        sa.select(
            AlertPhoto.id,
            AlertPhoto.filename,
            AlertPhoto.size,
            AlertPhoto.uploaded_by,
            AlertPhoto.uploaded_at,
            AlertPhoto.audit_id,
        )
        .where(AlertPhoto.alert_id == alert_id)
        .order_by(AlertPhoto.id)
    ).all()
    out: dict[int | None, list[PhotoMeta]] = {}
    for row in rows:
        out.setdefault(row[5], []).append(PhotoMeta(*row))
    return out


def photo_limit_mb(settings: Settings) -> str:
    return f"{settings.photo_max_bytes / 1_048_576:.3g}"


class _UploadError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _read_photos(uploads: Sequence[UploadFile], max_bytes: int) -> list[Photo]:
    """The uploaded files as photos, each checked as the API checks it (size, then JPEG/PNG by
    its first bytes, ``fleet.lifecycle.check_photo``), so the page can say which rule failed."""
    photos = []
    for upload in uploads:
        data = upload.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _UploadError("photo_size")
        photo = Photo(filename=upload.filename or "photo", data=data)
        try:
            check_photo(photo, max_bytes)
        except InvalidInputError as exc:
            raise _UploadError("photo_type") from exc
        photos.append(photo)
    return photos


# -- reports ----------------------------------------------------------------------------------


class PeriodError(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Period:
    """Local calendar days, both inclusive: [first 00:00, last + 1 day 00:00) on the office's
    clock, which is what ``fleet.reports.compute`` is given (as ``start``, ``end``)."""

    first: date
    last: date
    month: str = ""  # the preset month chosen ("2026-11"), if any

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        start = datetime.combine(self.first, time(0), tzinfo=zone)
        end = datetime.combine(self.last + timedelta(days=1), time(0), tzinfo=zone)
        return start, end


def _parse_day(value: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise PeriodError("bad_period") from exc
    if not 2000 <= day.year <= 2100:  # a plausible filing year (and no overflow at 9999)
        raise PeriodError("bad_period")
    return day


def _month_days(month: str) -> tuple[date, date]:
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise PeriodError("bad_period")
    first = _parse_day(f"{month}-01")
    following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first, following - timedelta(days=1)


def resolve_period(*, month: str | None, start: str | None, end: str | None, today: date) -> Period:
    """A preset month, unless the from/to dates were changed from that month's (the form shows
    the month's days in them); else the from/to dates (a missing "from" is the 1st of the "to"
    month, a missing "to" is today); with neither, the current month up to today."""
    if month:
        first, last = _month_days(month)
        if start in (None, "", first.isoformat()) and end in (None, "", last.isoformat()):
            return Period(first, last, month)
    if start or end:
        last = _parse_day(end) if end else today
        first = _parse_day(start) if start else last.replace(day=1)
        if last < first:
            raise PeriodError("period_order")
        return Period(first, last)
    return Period(today.replace(day=1), today)


def month_choices(today: date) -> list[str]:
    out, day = [], today.replace(day=1)
    for _ in range(REPORT_MONTHS):
        out.append(f"{day:%Y-%m}")
        day = (day - timedelta(days=1)).replace(day=1)
    return out


@dataclass(frozen=True, slots=True)
class OfficeChoice:
    id: int
    name: str
    compounds: list[CompoundChoice] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Area:
    value: str  # "" (all of the user's compounds), "office-<id>", "compound-<id>"
    street_office_id: int | None
    compound_id: int | None
    name: str | None  # the 填报单位 line of the XLSX; None: the compounds' names


def area_choices(session: Session, user: Principal) -> list[OfficeChoice]:
    """The street offices with compounds in the user's scope, each with those compounds."""
    offices: dict[str, OfficeChoice] = {}
    rows = session.execute(
        scope_filter(
            sa.select(StreetOffice.id, StreetOffice.name, Compound.id, Compound.name).join(
                Compound, Compound.street_office_id == StreetOffice.id
            ),
            user,
            Compound.id,
        )
        .order_by(StreetOffice.name, StreetOffice.id, Compound.name, Compound.id)
        .limit(MAX_CHOICES)
    ).all()
    for office_id, office_name, compound_id, compound_name in rows:
        office = offices.setdefault(str(office_id), OfficeChoice(office_id, office_name))
        office.compounds.append(CompoundChoice(compound_id, compound_name, office_name))
    return list(offices.values())


def resolve_area(
    value: str | None, choices: Sequence[OfficeChoice], user: Principal
) -> Area | None:
    """The chosen area, or None when it is not one offered to the user (403, as the API's
    ``ensure_compound``)."""
    if not value:
        name = "全部" if user.compound_ids is None else "、".join(o.name for o in choices) or None
        return Area("", None, None, name)
    kind, _, number = value.partition("-")
    for office in choices:
        if kind == "office" and number == str(office.id):
            return Area(value, office.id, None, office.name)
        for compound in office.compounds:
            if kind == "compound" and number == str(compound.id):
                return Area(value, None, compound.id, None)
    return None


def run_report(
    session: Session, user: Principal, settings: Settings, period: Period, area: Area
) -> Report:
    """The report service with the scope of ``GET /api/reports/statistics``."""
    start, end = period.bounds(ZoneInfo(settings.display_timezone))
    return compute(
        session,
        start=start,
        end=end,
        scope=user.compound_ids,
        street_office_id=area.street_office_id,
        compound_id=area.compound_id,
        area_name=area.name,
    )


def preview_tables(report: Report) -> list[dict[str, Any]]:
    """Each table with the columns this system fills (the others stay in the downloads, empty
    for the office to fill in by hand), values as the downloads hold them."""
    out = []
    for number, (title, columns) in TABLES.items():
        rows = report.tables[number]
        shown = [
            (key, heading)
            for key, heading in columns
            if key in ("area", "row") or any(row.get(key) is not None for row in rows)
        ]
        out.append(
            {
                "number": number,
                "title": title,
                "columns": shown,
                "rows": [
                    [("" if row.get(key) is None else row[key]) for key, _ in shown] for row in rows
                ],
            }
        )
    return out


# -- routes -----------------------------------------------------------------------------------


def register(router: APIRouter, kit: PageKit) -> None:
    settings = kit.settings
    zone = ZoneInfo(settings.display_timezone)

    @router.post("/alerts/{alert_id}/comments")
    def post_comment(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        alert_id: TextPath,
        csrf: Annotated[str, Form(max_length=128)] = "",  # missing: refused below (403)
        lang: Annotated[str, Form(max_length=8)] = "zh",
        form: Annotated[Literal["comment", "photos"], Form()] = "comment",
        comment: Annotated[str | None, Form(max_length=2000)] = None,
        photos: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        """A comment or photos from the alert page: the service of
        POST /api/alerts/{id}/comments (add_comment), behind the cookie plus a CSRF token."""
        chosen = pick_lang(lang)
        if user is None:
            return kit.to_login(request, chosen)
        if not csrf_ok(settings, request, csrf):
            return Response("CSRF token missing or wrong", status.HTTP_403_FORBIDDEN)
        alert = get_alert(session, alert_id)
        if alert is None or not user.sees(compound_of_alert(session, alert)):
            return kit.missing(request, chosen, user, alert is not None)
        if user.role not in COMMENT_ROLES:
            return kit.forbidden(request, chosen, user)
        page = with_lang(f"/alerts/{alert_id}", chosen)

        def back(error: str) -> Response:
            return RedirectResponse(
                f"{page}{'&' if '?' in page else '?'}error={error}#comment-forms",
                status.HTTP_303_SEE_OTHER,
            )

        text = (comment or "").strip()
        if not _TEXT.match(text):
            return back("bad_input")
        uploads = [u for u in photos or [] if u.filename]  # an empty file input sends one blank
        if form == "photos" and not uploads:
            return back("photo_missing")
        if not text and not uploads:
            return back("comment_empty")
        try:
            checked = _read_photos(uploads, settings.photo_max_bytes)
        except _UploadError as exc:
            return back(exc.code)
        try:
            locked = load_for_step(session, alert_id, user.compound_ids, lock=True)
            add_comment(
                session,
                locked,
                Person(name=user.username, id=user.id, role=user.role.value, via="web"),
                StepInput(comment=text or None, photos=checked),
                now=utcnow(),
                photo_max_bytes=settings.photo_max_bytes,
            )
            session.commit()
        except NotFoundError:
            session.rollback()
            return kit.missing(request, chosen, user, False)
        except NotAllowedError:
            session.rollback()
            return kit.forbidden(request, chosen, user)
        except LifecycleError:
            session.rollback()
            return back("bad_input")
        return RedirectResponse(f"{page}#timeline", status.HTTP_303_SEE_OTHER)

    @router.get("/alerts/{alert_id}/photos/{photo_id}")
    def photo(
        session: SessionDep,
        *,
        user: PageUser,
        alert_id: TextPath,
        photo_id: IdPath,
        size: Annotated[str | None, Query(max_length=8)] = None,
    ) -> Response:
        """A photo of an alert for the page (the cookie, not a bearer token), scoped as
        GET /api/alerts/{id}/photos/{photo_id}: another compound's alert is 403.
        ``?size=thumb``: a small JPEG for the timeline (fleet.thumbs), or the photo itself
        when it cannot be made."""
        if user is None:
            return Response(status_code=status.HTTP_401_UNAUTHORIZED)
        alert = get_alert(session, alert_id)
        if alert is None:
            return Response(status_code=status.HTTP_404_NOT_FOUND)
        if not user.sees(compound_of_alert(session, alert)):
            return Response(status_code=status.HTTP_403_FORBIDDEN)
        row = session.get(AlertPhoto, photo_id)
        if row is None or row.alert_id != alert_id:
            return Response(status_code=status.HTTP_404_NOT_FOUND)
        data, media_type = row.data, row.content_type
        if size == "thumb":
            thumb = thumbnail(row.data)
            if thumb is not None:
                data, media_type = thumb, "image/jpeg"
        return Response(
            data,
            media_type=media_type,  # image/jpeg or image/png, checked from the bytes
            headers={
                "Cache-Control": "private, max-age=86400",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def report_inputs(
        session: Session,
        user: Principal,
        *,
        month: str | None,
        start: str | None,
        end: str | None,
        area: str | None,
    ) -> tuple[Period | None, str | None, Area | None, list[OfficeChoice]]:
        choices = area_choices(session, user)
        chosen_area = resolve_area(area, choices, user)
        today = utcnow().astimezone(zone).date()
        try:
            period = resolve_period(month=month, start=start, end=end, today=today)
        except PeriodError as exc:
            return None, exc.code, chosen_area, choices
        return period, None, chosen_area, choices

    @router.get("/reports")
    def reports_page(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        lang: str | None = None,
        month: ReportParam = None,
        start: ReportParam = None,
        end: ReportParam = None,
        area: ReportParam = None,
    ) -> Response:
        """Choose period and area, preview the figures, download XLSX (tables 3-5) or CSV."""
        chosen = pick_lang(lang)
        if user is None:
            return kit.to_login(request, chosen)
        if user.role not in REPORT_ROLES:
            return kit.forbidden(request, chosen, user)
        period, error, picked, choices = report_inputs(
            session, user, month=month, start=start, end=end, area=area
        )
        if picked is None:
            return kit.forbidden(request, chosen, user)
        today = utcnow().astimezone(zone).date()
        context: dict[str, Any] = {
            "user": user,
            "months": month_choices(today),
            "offices": choices,
            "area": picked,
            "error": error,
            "form": {"month": month or "", "start": start or "", "end": end or ""},
        }
        if period is not None:
            report = run_report(session, user, settings, period, picked)
            query = {"start": period.first.isoformat(), "end": period.last.isoformat()}
            if picked.value:
                query["area"] = picked.value
            context |= {
                "period": period,
                "form": {
                    "month": period.month,
                    "start": period.first.isoformat(),
                    "end": period.last.isoformat(),
                },
                "report": report,
                "tables": preview_tables(report),
                "week_first": max(period.first, period.last - timedelta(days=6)),
                "xlsx": f"/reports/statistics.xlsx?{urlencode(query)}",
                "csv": {
                    n: f"/reports/statistics.csv?{urlencode(query | {'table': n})}" for n in TABLES
                },
            }
        return kit.render(
            request,
            "reports.html",
            chosen,
            context,
            status.HTTP_200_OK if error is None else status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    def download(
        request: Request,
        session: SessionDep,
        user: Principal | None,
        *,
        start: str | None,
        end: str | None,
        area: str | None,
        table: str | None,
    ) -> Response:
        if user is None:
            return kit.to_login(request, "zh")
        if user.role not in REPORT_ROLES:
            return Response("Not allowed for your role", status.HTTP_403_FORBIDDEN)
        period, error, picked, _ = report_inputs(
            session, user, month=None, start=start, end=end, area=area
        )
        if picked is None:
            return Response("Outside your compounds", status.HTTP_403_FORBIDDEN)
        if period is None:
            return Response(
                f"bad period ({error}): start and end are dates, YYYY-MM-DD",
                status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        report = run_report(session, user, settings, period, picked)
        name = f"statistics_{period.first:%Y%m%d}_{period.last:%Y%m%d}"
        if table is None:
            return Response(
                to_xlsx(report, tz=settings.display_timezone),
                media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'},
            )
        return Response(
            to_csv(report, table),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}_table{table}.csv"'},
        )

    @router.get("/reports/statistics.xlsx")
    def report_xlsx(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        start: ReportParam = None,
        end: ReportParam = None,
        area: ReportParam = None,
    ) -> Response:
        """Tables 3-5 as one workbook (fleet.reports.to_xlsx)."""
        return download(request, session, user, start=start, end=end, area=area, table=None)

    @router.get("/reports/statistics.csv")
    def report_csv(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        start: ReportParam = None,
        end: ReportParam = None,
        area: ReportParam = None,
        table: Annotated[Literal["3", "4", "5"], Query()] = "4",
    ) -> Response:
        """One table as CSV with the form's Chinese headers (fleet.reports.to_csv)."""
        return download(request, session, user, start=start, end=end, area=area, table=table)
