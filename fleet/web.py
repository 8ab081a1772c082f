"""Server-rendered pages: gateways and recent alerts, Chinese by default (``?lang=en``).

Login is a small form that stores the API's own JWT in an HttpOnly, SameSite=Lax cookie, so the
pages and the API share one token scheme and scripts on the page cannot read the token.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import segno
import sqlalchemy as sa
from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi import Path as Path_
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from contract.alerts import AlertKind, Category
from fleet import web_fleet, web_officer
from fleet.api.cases import read_flat_file
from fleet.api.deps import (
    COOKIE_NAME,
    OfflineLimitDep,
    Principal,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    scope_filter,
    web_user,
)
from fleet.api.types import IdPath
from fleet.auth import authenticate, create_access_token
from fleet.db import utcnow
from fleet.lifecycle import (
    COMMENT_REQUIRED,
    TRANSITIONS,
    Action,
    Defaults,
    LifecycleError,
    NotAllowedError,
    NotFoundError,
    Person,
    StepInput,
    WrongStateError,
    load_for_step,
    timeline,
    transition,
)
from fleet.models import (
    Alert,
    AlertEpisodeRow,
    Building,
    CardSwipe,
    Compound,
    Entrance,
    Flat,
    Gateway,
    MeterReading,
    Role,
)
from fleet.provisioning import (
    Provisioner,
    ProvisioningError,
    compound_of_entrance,
    display_code,
    normalize_code,
)
from fleet.queries import alert_deliveries, gateway_online, get_alert, online_clause
from fleet.risk import Reason, flat_risks
from fleet.settings import Settings
from fleet.sites import alert_compound, compound_of_alert, compound_of_gateway
from fleet.texts import (
    EVENT_LABELS,
    EVIDENCE_LABELS,
    LABELS,
    SEVERITY_LABELS,
    STATE_LABELS,
    STATUS_LABELS,
    Lang,
    kind_title,
    pick_lang,
)
from fleet.web_kit import PageKit, PageModule, PageUser, csrf_ok, csrf_token, with_lang

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
RECENT_ALERTS = 50
PAGE_SIZE = 50  # rows per page of the inbox and the fleet-health list (server-side paging)
STREAM_POLL_S = 1.0  # how often the live inbox looks for new alerts
STREAM_KEEPALIVE_S = 15.0
STATIC_FILES = {"web.js": "text/javascript", "web.css": "text/css"}
# Page modules with their own routes (each has register(router, kit)); see fleet/web_kit.py.
PAGE_MODULES: tuple[PageModule, ...] = (web_fleet, web_officer)


def _pager(request: Request, page: int, total: int) -> dict[str, Any]:
    """Links to the previous and next page, keeping the other query parameters."""
    pages = max(1, -(-total // PAGE_SIZE))

    def at(number: int) -> str:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]
        query.append(("page", str(number)))
        return f"{request.url.path}?{urlencode(query)}"

    return {
        "page": page,
        "pages": pages,
        "prev": at(page - 1) if page > 1 else None,
        "next": at(page + 1) if page < pages else None,
    }


def _safe_next(target: str | None) -> str:
    """Only same-site paths: ``next=//evil.example`` must not turn login into a redirector."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# The logged-in user (role and compounds, as the API sees them), or None: the page then
# redirects to the login. Every list below is filtered to the user's compounds exactly as the
# JSON API filters it (fleet/api/alerts.py, fleet/api/gateways.py).

# Inbox filters: query parameter = Alert column, compared for equality.
ALERT_FILTERS = ("kind", "category", "severity", "status", "state")

# Who creates gateway entries and enrollment codes: as POST /api/provisioning/gateways.
INSTALL_ROLES = frozenset({Role.ADMIN, Role.INSTALLER})

# Who sees gateway health: as GET /api/gateways (officers work with alerts only).
GATEWAY_ROLES = frozenset({Role.ADMIN, Role.INSTALLER, Role.PROPERTY})


def fleet_health(
    session: Session,
    user: Principal,
    *,
    online: bool | None,
    limit: int,
    offset: int,
    now: datetime,
    offline_after_s: float,
) -> tuple[list[tuple[Gateway, str | None, str | None]], int]:
    """A page of the user's gateways with compound and building names, offline first
    (online as the rows show it: :func:`fleet.queries.gateway_online`)."""
    is_online = online_clause(now=now, offline_after_s=offline_after_s)
    stmt = scope_filter(
        sa.select(Gateway, Compound.name, Building.name)
        .outerjoin(Entrance, Entrance.id == Gateway.entrance_id)
        .outerjoin(Building, Building.id == Entrance.building_id)
        .outerjoin(Compound, Compound.id == Building.compound_id),
        user,
        Building.compound_id,
    )
    if online is not None:
        stmt = stmt.where(is_online if online else sa.not_(is_online))
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(
        stmt.order_by(sa.case((is_online, 1), else_=0), Gateway.gateway_id)
        .limit(limit)
        .offset(offset)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows], total


BUILDINGS_SHOWN = 20  # buildings in the fleet page's summary (darkest first)


def fleet_by_building(
    session: Session, user: Principal, limit: int, *, now: datetime, offline_after_s: float
) -> list[dict[str, Any]]:
    """The user's buildings with gateways: how many, how many offline; darkest first."""
    is_online = online_clause(now=now, offline_after_s=offline_after_s)
    offline = sa.func.sum(sa.case((is_online, 0), else_=1))
    stmt = scope_filter(
        sa.select(
            Building.id,
            Compound.name,
            Building.name,
            sa.func.count(Gateway.gateway_id),
            offline,
        )
        .join(Entrance, Entrance.id == Gateway.entrance_id)
        .join(Building, Building.id == Entrance.building_id)
        .join(Compound, Compound.id == Building.compound_id)
        .group_by(Building.id, Compound.name, Building.name),
        user,
        Building.compound_id,
    )
    rows = session.execute(
        stmt.order_by(offline.desc(), Compound.name, Building.name).limit(limit)
    ).all()
    return [
        {"id": b_id, "compound": c_name, "building": b_name, "total": n, "offline": int(off or 0)}
        for b_id, c_name, b_name, n, off in rows
    ]


def scoped_entrances(session: Session, user: Principal) -> list[dict[str, Any]]:
    """The entrances of the user's compounds, for the installer's "new gateway" form."""
    stmt = scope_filter(
        sa.select(Entrance.id, Compound.name, Building.name, Entrance.name)
        .join(Building, Building.id == Entrance.building_id)
        .join(Compound, Compound.id == Building.compound_id),
        user,
        Building.compound_id,
    ).order_by(Compound.name, Building.name, Entrance.name)
    return [
        {"id": row[0], "label": f"{row[1]} {row[2]} {row[3]}"}
        for row in session.execute(stmt.limit(2000))
    ]


def enroll_uri(base_url: str, code: str) -> str:
    """What the QR code holds: the same URI as the API's QR (fleet/api/provisioning.py)."""
    return f"{base_url}/api/enroll?code={code}"


def alert_row(alert: Alert, lang: Lang, zone: ZoneInfo) -> dict[str, Any]:
    """What the live inbox needs to draw one row (sent as JSON over server-sent events)."""
    return {
        "alert_id": alert.alert_id,
        "href": with_lang(f"/alerts/{alert.alert_id}", lang),
        "title": kind_title(AlertKind(alert.kind), lang),
        "severity": alert.severity,
        "severity_label": SEVERITY_LABELS.get(alert.severity, {}).get(lang, alert.severity),
        "place": alert.unit_id or alert.building or "-",
        "raised_at": alert.raised_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
        "status": STATUS_LABELS.get(alert.status, {}).get(lang, alert.status),
    }


def scoped_alerts(
    session: Session,
    user: Principal,
    *,
    limit: int,
    offset: int = 0,
    filters: dict[str, str] | None = None,
) -> tuple[list[Alert], int]:
    """The user's alerts newest first, and how many there are in total."""
    stmt = scope_filter(sa.select(Alert), user, alert_compound())
    for name, value in (filters or {}).items():
        if name in ALERT_FILTERS and value:
            stmt = stmt.where(getattr(Alert, name) == value)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(Alert.raised_at.desc(), Alert.alert_id).limit(limit).offset(offset)
    ).all()
    return list(rows), total


# -- CSRF: page actions are form POSTs carrying a token bound to the login cookie ------------


# -- charts: inline SVG drawn on the server (no library, works without script) --------------

CHART_W, CHART_H, CHART_PAD = 640, 220, 40
CHART_BEFORE = timedelta(hours=2)
CHART_AFTER = timedelta(hours=3)
SWIPE_DAYS = 14


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high <= low:
        return (out_low + out_high) / 2
    return out_low + (value - low) * (out_high - out_low) / (high - low)


def power_chart(session: Session, alert: Alert, zone: ZoneInfo) -> dict[str, Any] | None:
    """The flat's power around the episode, with the episode (plateau, then taper) shaded.

    A case with several episodes (the hazard came back before the case was closed) is drawn
    around its latest one, whose evidence the case holds."""
    raised_at, cleared_at = alert.raised_at, alert.cleared_at
    if alert.episodes > 1:
        latest = session.execute(
            sa.select(AlertEpisodeRow.raised_at, AlertEpisodeRow.cleared_at)
            .where(AlertEpisodeRow.alert_id == alert.alert_id)
            .order_by(AlertEpisodeRow.raised_at.desc())
            .limit(1)
        ).first()
        if latest is not None:
            raised_at, cleared_at = latest[0], latest[1]
    start = raised_at - CHART_BEFORE
    end = (cleared_at or raised_at) + CHART_AFTER
    stmt = sa.select(MeterReading.ts, MeterReading.power_w).where(
        MeterReading.ts >= start, MeterReading.ts <= end
    )
    if alert.meter_id:
        # Meter ids are the gateway's own names: the gateway narrows them (and the unique
        # index on gateway, meter and time then finds the rows without a scan).
        stmt = stmt.where(
            MeterReading.gateway_id == alert.gateway_id, MeterReading.meter_id == alert.meter_id
        )
    elif alert.unit_id:
        stmt = stmt.where(
            MeterReading.unit_id == alert.unit_id, MeterReading.gateway_id == alert.gateway_id
        )
    else:
        return None
    rows = session.execute(stmt.order_by(MeterReading.ts).limit(2000)).all()
    if len(rows) < 2:
        return None

    def aware(value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    t0, t1 = aware(rows[0][0]).timestamp(), aware(rows[-1][0]).timestamp()
    top = max(float(r[1]) for r in rows) * 1.1 or 1.0
    left, right = CHART_PAD, CHART_W - 10
    bottom, upper = CHART_H - 30, 10

    def x(at: datetime) -> float:
        return round(_scale(aware(at).timestamp(), t0, t1, left, right), 1)

    def y(watts: float) -> float:
        return round(_scale(watts, 0, top, bottom, upper), 1)

    points = " ".join(f"{x(ts)},{y(float(w))}" for ts, w in rows)
    evidence = alert.evidence or {}
    plateau = float(evidence.get("plateau_minutes") or 0)
    taper = float(evidence.get("taper_minutes") or 0)
    raised = aware(raised_at)
    bands = []
    if plateau:
        bands.append(("plateau", raised, raised + timedelta(minutes=plateau)))
        if taper:
            end_plateau = raised + timedelta(minutes=plateau)
            bands.append(("taper", end_plateau, end_plateau + timedelta(minutes=taper)))
    elif cleared_at is not None:
        bands.append(("episode", raised, aware(cleared_at)))
    drawn = [
        {
            "name": name,
            "x": max(x(a), left),
            "w": max(min(x(b), right) - max(x(a), left), 1),
        }
        for name, a, b in bands
        if aware(a).timestamp() < t1
    ]
    ticks = [
        {
            "x": x(rows[i][0]),
            "anchor": anchor,
            "label": aware(rows[i][0]).astimezone(zone).strftime("%H:%M"),
        }
        for i, anchor in ((0, "start"), (len(rows) // 2, "middle"), (len(rows) - 1, "end"))
    ]
    return {
        "w": CHART_W,
        "h": CHART_H,
        "left": left,
        "right": right,
        "bottom": bottom,
        "upper": upper,
        "points": points,
        "bands": drawn,
        "raised_x": x(raised) if t0 <= raised.timestamp() <= t1 else None,
        "ticks": ticks,
        "top_label": f"{top:.0f} W",
        "count": len(rows),
        "peak": max(float(r[1]) for r in rows),
    }


def swipe_chart(session: Session, alert: Alert) -> dict[str, Any] | None:
    """Swipes and distinct cards per day at the flat over two weeks, against the limit."""
    if not alert.unit_id:
        return None
    end = alert.raised_at
    start = end - timedelta(days=SWIPE_DAYS)
    day = sa.func.date(CardSwipe.event_ts)
    rows = session.execute(
        sa.select(day, sa.func.count(), sa.func.count(sa.distinct(CardSwipe.card)))
        .where(
            CardSwipe.unit_id == alert.unit_id,
            CardSwipe.gateway_id == alert.gateway_id,
            CardSwipe.event_ts > start,
            CardSwipe.event_ts <= end,
        )
        .group_by(day)
        .order_by(day)
    ).all()
    if not rows:
        return None
    limit = (alert.evidence or {}).get("swipes_per_day_limit")
    top = max([float(r[1]) for r in rows] + [float(limit or 0)]) * 1.1 or 1.0
    left, bottom, upper = CHART_PAD, CHART_H - 30, 10
    slot = (CHART_W - 10 - left) / len(rows)
    bars: list[dict[str, Any]] = [
        {
            "x": round(left + i * slot + slot * 0.15, 1),
            "w": round(slot * 0.7, 1),
            "y": round(_scale(float(count), 0, top, bottom, upper), 1),
            "cards_y": round(_scale(float(cards), 0, top, bottom, upper), 1),
            "label": str(d)[5:],
            "count": int(count),
            "cards": int(cards),
        }
        for i, (d, count, cards) in enumerate(rows)
    ]
    for bar in bars:
        bar["h"] = round(bottom - float(bar["y"]), 1)
    return {
        "w": CHART_W,
        "h": CHART_H,
        "left": left,
        "bottom": bottom,
        "bars": bars,
        "limit_y": round(_scale(float(limit), 0, top, bottom, upper), 1) if limit else None,
        "limit": limit,
    }


# -- building view and flat file --------------------------------------------------------------

# A case still open on a flat: not closed, and not found to be a false alarm.
OPEN_EXCLUDED = ("closed", "false_alarm")
RISK_LEVELS = ("high", "medium", "low")
SCOPED_BUILDINGS = 200  # buildings listed on the home page


def scoped_buildings(session: Session, user: Principal) -> list[dict[str, Any]]:
    """The buildings of the user's compounds, for links to the building view."""
    stmt = scope_filter(
        sa.select(Building.id, Compound.name, Building.name).join(
            Compound, Compound.id == Building.compound_id
        ),
        user,
        Building.compound_id,
    ).order_by(Compound.name, Building.name, Building.id)
    return [
        {"id": row[0], "compound": row[1], "name": row[2]}
        for row in session.execute(stmt.limit(SCOPED_BUILDINGS))
    ]


def building_floors(session: Session, building_id: int, now: datetime) -> list[dict[str, Any]]:
    """The building's flats as rows by floor (top floor first, unrecorded floor last), each
    flat with its risk level (``fleet.risk.flat_risks``, as GET /api/risk/flats) and its open
    alerts counted by kind."""
    flats = session.scalars(sa.select(Flat).where(Flat.building_id == building_id)).all()
    open_by_flat: dict[int, dict[str, int]] = {}
    if flats:
        rows = session.execute(
            sa.select(Alert.flat_id, Alert.kind, sa.func.count())
            .where(
                Alert.flat_id.in_([f.id for f in flats]),
                Alert.status.not_in(OPEN_EXCLUDED),
            )
            .group_by(Alert.flat_id, Alert.kind)
        ).all()
        for flat_id, kind, count in rows:
            if flat_id is not None:
                open_by_flat.setdefault(flat_id, {})[kind] = int(count)
    risks = flat_risks(session, [f.id for f in flats], now)  # one pass, not per flat
    floors: dict[int | None, list[dict[str, Any]]] = {}
    for flat in sorted(flats, key=lambda f: (f.unit_id, f.id)):
        kinds = open_by_flat.get(flat.id, {})
        floors.setdefault(flat.floor, []).append(
            {
                "flat": flat,
                "risk": risks[flat.id].level,
                "open": sum(kinds.values()),
                "kinds": sorted(kinds.items()),
            }
        )
    order = sorted((f for f in floors if f is not None), reverse=True)
    return [{"floor": f, "flats": floors[f]} for f in [*order, *([None] if None in floors else [])]]


# Who may take lifecycle steps (fleet.lifecycle.ACTOR_ROLES); others see the timeline only.
ACTION_ROLES = frozenset({"officer", "admin"})
ACTION_ERRORS = ("wrong_state", "bad_input")
COMMENT_REQUIRED_VALUES = frozenset(a.value for a in COMMENT_REQUIRED)


def _local_time(value: str | None, zone: ZoneInfo) -> datetime | None:
    """A ``datetime-local`` form value (the office's wall clock) as an aware time."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def _back_with(page: str, error: str) -> RedirectResponse:
    return RedirectResponse(
        f"{page}{'&' if '?' in page else '?'}error={error}", status.HTTP_303_SEE_OTHER
    )


def _other_lang_link(request: Request, lang: Lang) -> str:
    """This page (same filters and page) in the other language."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    if lang == "zh":
        query.append(("lang", "en"))
    return request.url.path + (f"?{urlencode(query)}" if query else "")


def make_templates(settings: Settings) -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    zone = ZoneInfo(settings.display_timezone)

    def localtime(value: datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if value else "-"

    templates.env.filters["localtime"] = localtime
    templates.env.globals["static_version"] = _static_version()
    return templates


def _static_version() -> str:
    """Cache-busting suffix for /static URLs: the newest mtime of the files there."""
    stamps = [int(f.stat().st_mtime) for f in STATIC_DIR.iterdir() if f.is_file()]
    return str(max(stamps, default=0))


def make_router(settings: Settings) -> APIRouter:
    """The page routes, with their templates built for ``settings`` (no module-level state)."""
    templates = make_templates(settings)
    router = APIRouter(include_in_schema=False)

    def render(
        request: Request, name: str, lang: Lang, context: dict[str, Any], status_code: int = 200
    ) -> HTMLResponse:
        def t(key: str) -> str:
            return LABELS[key][lang]

        base = {
            "lang": lang,
            "html_lang": "zh-CN" if lang == "zh" else "en",
            "t": t,
            "kind_title": lambda kind: kind_title(AlertKind(kind), lang),
            "severity": lambda value: SEVERITY_LABELS.get(value, {}).get(lang, value),
            "state_label": lambda value: STATE_LABELS.get(value, {}).get(lang, value),
            "reason": lambda value: LABELS[value][lang] if value in LABELS else value,
            "risk_reason": lambda r: Reason(r.code, r.params).render(lang),
            "link": lambda path: with_lang(path, lang),
            "other_lang_link": _other_lang_link(request, lang),
            "status_label": lambda value: STATUS_LABELS.get(value, {}).get(lang, value),
            "gateway_roles": GATEWAY_ROLES,
            "install_roles": INSTALL_ROLES,
            "event_label": lambda value: EVENT_LABELS.get(value, {}).get(lang, value),
            "evidence_label": lambda value: EVIDENCE_LABELS.get(value, {}).get(lang, value),
            "comment_required": COMMENT_REQUIRED_VALUES,
            "path": request.url.path,
        }
        return templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status_code
        )

    def to_login(request: Request, lang: Lang) -> RedirectResponse:
        query = {"next": request.url.path} | ({"lang": lang} if lang != "zh" else {})
        return RedirectResponse(f"/login?{urlencode(query)}", status.HTTP_303_SEE_OTHER)

    def forbidden(request: Request, lang: Lang, user: Principal) -> HTMLResponse:
        """The 403 page: the user's role or compounds do not cover what was asked."""
        return render(request, "forbidden.html", lang, {"user": user}, status.HTTP_403_FORBIDDEN)

    def missing(request: Request, lang: Lang, user: Principal, exists: bool) -> HTMLResponse:
        """403 for another compound's building or flat (nothing of it shown), 404 if unknown."""
        if exists:
            return forbidden(request, lang, user)
        return render(request, "notfound.html", lang, {"user": user}, status.HTTP_404_NOT_FOUND)

    kit = PageKit(
        settings=settings,
        render=render,
        to_login=to_login,
        forbidden=forbidden,
        missing=missing,
    )

    @router.get("/login")
    def login_form(request: Request, lang: str | None = None, next: str | None = None) -> Response:
        return render(request, "login.html", pick_lang(lang), {"next": _safe_next(next)})

    @router.post("/login")
    def login(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        *,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        next: Annotated[str, Form()] = "/",
        lang: Annotated[str, Form()] = "zh",
    ) -> Response:
        chosen = pick_lang(lang)
        user = authenticate(session, username, password)
        if user is None:
            return render(
                request,
                "login.html",
                chosen,
                {"next": _safe_next(next), "error": True, "username": username},
                status_code=status.HTTP_401_UNAUTHORIZED,
            )
        token = create_access_token(settings, user.username)
        response = RedirectResponse(with_lang(_safe_next(next), chosen), status.HTTP_303_SEE_OTHER)
        response.set_cookie(
            COOKIE_NAME,
            token.token,
            max_age=settings.token_ttl_minutes * 60,
            httponly=True,
            samesite="lax",
            secure=settings.base_url.startswith("https://"),
        )
        return response

    @router.post("/logout")
    def logout(lang: Annotated[str, Form()] = "zh") -> Response:
        response = RedirectResponse(with_lang("/login", pick_lang(lang)), status.HTTP_303_SEE_OTHER)
        response.delete_cookie(COOKIE_NAME)
        return response

    @router.get("/")
    def index(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        offline_after_s: OfflineLimitDep,
        *,
        user: PageUser,
        lang: str | None = None,
    ) -> Response:
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        now = utcnow()
        gateways = [
            {
                "row": g,
                "online": gateway_online(g, now=now, offline_after_s=offline_after_s),
            }
            for g, _, _ in (
                fleet_health(
                    session,
                    user,
                    online=None,
                    limit=RECENT_ALERTS,
                    offset=0,
                    now=now,
                    offline_after_s=offline_after_s,
                )[0]
                if user.role in GATEWAY_ROLES
                else []
            )
        ]
        alerts, total = scoped_alerts(session, user, limit=RECENT_ALERTS)
        return render(
            request,
            "index.html",
            chosen,
            {
                "user": user,
                "show_gateways": user.role in GATEWAY_ROLES,
                "gateways": gateways,
                "alerts": alerts,
                "alerts_total": total,
                "buildings": scoped_buildings(session, user),
            },
        )

    @router.get("/static/{name}")
    def static_file(name: str) -> Response:
        """The pages' own script and style (no CDN: compounds often have no internet)."""
        path = STATIC_DIR / name
        if name not in STATIC_FILES or not path.is_file():
            return Response(status_code=status.HTTP_404_NOT_FOUND)
        return FileResponse(
            path, media_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=3600"}
        )

    @router.get("/alerts")
    def inbox(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        lang: str | None = None,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        kind: Annotated[str | None, Query(max_length=32)] = None,
        category: Annotated[str | None, Query(max_length=16)] = None,
        severity: Annotated[str | None, Query(max_length=16)] = None,
        status_: Annotated[str | None, Query(alias="status", max_length=16)] = None,
        compound: Annotated[str | None, Query(max_length=20)] = None,
        recurring: Annotated[str | None, Query(max_length=8)] = None,
    ) -> Response:
        """The alert inbox: filters, server-side pages, and new alerts arriving live."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        # Only the user's compounds are offered; another one in the URL is ignored.
        compounds = web_officer.scoped_compounds(session, user)
        filters = web_officer.inbox_filters(
            kind=kind,
            category=category,
            severity=severity,
            status=status_,
            compound=compound,
            recurring=recurring,
            offered=compounds,
        )
        alerts, total = web_officer.inbox_alerts(
            session, user, filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
        newest = session.scalar(
            scope_filter(sa.select(sa.func.max(Alert.first_received_at)), user, alert_compound())
        )
        return render(
            request,
            "inbox.html",
            chosen,
            {
                "user": user,
                "alerts": alerts,
                "total": total,
                "filters": filters,
                "kinds": [k.value for k in AlertKind],
                "categories": [c.value for c in Category],
                "severities": list(SEVERITY_LABELS),
                "statuses": list(STATUS_LABELS),
                "compounds": compounds,
                "pager": _pager(request, page, total),
                # Live arrivals only on the unfiltered first page: a new alert belongs on top.
                "live": page == 1 and not filters.any(),
                "since": newest.isoformat() if newest else "",
            },
        )

    @router.get("/alerts/stream")
    async def alert_stream(
        request: Request,
        runtime: RuntimeDep,
        *,
        lang: str | None = None,
        since: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        """Server-sent events: each alert of the user's compounds that arrives after ``since``
        (the newest arrival the page showed), as an ``alert`` event with the row as JSON.

        No session dependency here: it would stay open (on SQLite: holding the write lock) for
        as long as the stream runs. Each poll takes a short session of its own."""

        def who() -> Principal | None:
            with runtime.sessions() as session:
                return web_user(request, session, runtime.settings)

        user = await asyncio.to_thread(who)
        if user is None:
            return Response(status_code=status.HTTP_401_UNAUTHORIZED)
        chosen = pick_lang(lang)
        zone = ZoneInfo(settings.display_timezone)
        try:
            cursor = datetime.fromisoformat(since) if since else utcnow()
        except ValueError:
            cursor = utcnow()
        if cursor.tzinfo is None:
            cursor = cursor.replace(tzinfo=UTC)
        seen: set[str] = set()

        def fresh(after: datetime) -> list[dict[str, Any]]:
            with runtime.sessions() as session:
                rows = session.scalars(
                    scope_filter(sa.select(Alert), user, alert_compound())
                    .where(Alert.first_received_at >= after)
                    .order_by(Alert.first_received_at, Alert.alert_id)
                    .limit(PAGE_SIZE)
                ).all()
                return [{**alert_row(a, chosen, zone), "_at": a.first_received_at} for a in rows]

        async def events() -> AsyncIterator[str]:
            nonlocal cursor
            idle = 0.0
            yield "retry: 3000\n\n"
            while not await request.is_disconnected():
                for row in await asyncio.to_thread(fresh, cursor):
                    at = row.pop("_at")
                    cursor = max(cursor, at if at.tzinfo else at.replace(tzinfo=UTC))
                    if row["alert_id"] in seen:
                        continue
                    seen.add(row["alert_id"])
                    idle = 0.0
                    yield f"event: alert\ndata: {json.dumps(row, ensure_ascii=False)}\n\n"
                await asyncio.sleep(STREAM_POLL_S)
                idle += STREAM_POLL_S
                if idle >= STREAM_KEEPALIVE_S:
                    idle = 0.0
                    yield ": keepalive\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/fleet")
    def fleet_page(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        offline_after_s: OfflineLimitDep,
        *,
        user: PageUser,
        lang: str | None = None,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        online: Annotated[str | None, Query(max_length=8)] = None,
    ) -> Response:
        """Fleet health for property companies and installers: offline gateways first."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        if user.role not in GATEWAY_ROLES:
            return forbidden(request, chosen, user)
        wanted = {"yes": True, "no": False}.get(online or "")
        now = utcnow()
        rows, total = fleet_health(
            session,
            user,
            online=wanted,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
            now=now,
            offline_after_s=offline_after_s,
        )
        # Outbox backlog (newest heartbeat), devices silent or faulty, config versions.
        extra = web_fleet.fleet_columns(session, [gateway.gateway_id for gateway, _, _ in rows])
        gateways = [
            {
                "row": gateway,
                "compound": compound,
                "building": building,
                "online": gateway_online(gateway, now=now, offline_after_s=offline_after_s),
                **extra[gateway.gateway_id],
            }
            for gateway, compound, building in rows
        ]
        offline = session.scalar(
            sa.select(sa.func.count()).select_from(
                scope_filter(
                    sa.select(Gateway.gateway_id)
                    .outerjoin(Entrance, Entrance.id == Gateway.entrance_id)
                    .outerjoin(Building, Building.id == Entrance.building_id)
                    .where(sa.not_(online_clause(now=now, offline_after_s=offline_after_s))),
                    user,
                    Building.compound_id,
                ).subquery()
            )
        )
        return render(
            request,
            "fleet.html",
            chosen,
            {
                "user": user,
                "gateways": gateways,
                "total": total,
                "offline_total": offline or 0,
                "buildings": fleet_by_building(
                    session,
                    user,
                    BUILDINGS_SHOWN,
                    now=now,
                    offline_after_s=offline_after_s,
                ),
                "online_filter": online or "",
                "pager": _pager(request, page, total),
            },
        )

    def provisioner_of(request: Request) -> Provisioner | None:
        provisioner = getattr(request.app.state, "provisioning", None)
        return provisioner if isinstance(provisioner, Provisioner) else None

    @router.get("/install")
    def install_page(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        lang: str | None = None,
    ) -> Response:
        """The installer's page (phone-sized): pick the entrance, get the enrollment code."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        if user.role not in INSTALL_ROLES:
            return forbidden(request, chosen, user)
        return render(
            request,
            "install.html",
            chosen,
            {
                "user": user,
                "entrances": scoped_entrances(session, user),
                "csrf": csrf_token(settings, request.cookies.get(COOKIE_NAME) or ""),
            },
        )

    @router.post("/install/gateways")
    def install_gateway(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        csrf: Annotated[str, Form(max_length=128)],
        entrance_id: Annotated[int, Form(ge=1, le=2**62)],
        lang: Annotated[str, Form(max_length=8)] = "zh",
    ) -> Response:
        """Create the gateway entry and show its one-time code (shown once: only its hash is
        stored), as text and as a QR code."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        if not csrf_ok(settings, request, csrf):
            return Response("CSRF token missing or wrong", status.HTTP_403_FORBIDDEN)
        if user.role not in INSTALL_ROLES:
            return forbidden(request, chosen, user)
        provisioner = provisioner_of(request)
        if provisioner is None:
            return Response(status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        compound_id = (
            compound_of_entrance(session, entrance_id)
            if session.get(Entrance, entrance_id) is not None
            else None
        )
        if compound_id is None or not user.sees(compound_id):
            return forbidden(request, chosen, user)
        try:
            issued = provisioner.create_gateway(
                session,
                user.actor,
                entrance_id=entrance_id,
                compound_id=compound_id,
                gateway_id=None,
            )
            session.commit()
        except (ProvisioningError, sa.exc.IntegrityError):
            session.rollback()
            return _back_with(with_lang("/install", chosen), "bad_input")
        gateway = session.get(Gateway, issued.gateway_id)
        assert gateway is not None
        zone = ZoneInfo(settings.display_timezone)
        response = render(
            request,
            "enroll.html",
            chosen,
            {
                "user": user,
                # The devices the register places at this entrance, each answer shown live.
                "devices": web_fleet.device_rows(
                    session, gateway, online=False, lang=chosen, zone=zone
                ),
                "flats": web_fleet.mapping_flats(session, gateway),
                "may_map": True,  # INSTALL_ROLES may map devices (as PATCH /api/devices)
                "csrf": csrf_token(settings, request.cookies.get(COOKIE_NAME) or ""),
                "live_src": with_lang(f"/gateways/{issued.gateway_id}/live", chosen),
                "gateway_id": issued.gateway_id,
                "code": issued.code,
                "expires_at": issued.expires_at,
                "qr": f"/install/qr.png?{urlencode({'code': issued.code})}",
                "server": settings.base_url,
            },
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.get("/install/qr.png")
    def install_qr(
        *,
        user: PageUser,
        code: Annotated[str, Query(min_length=16, max_length=32)],
    ) -> Response:
        """The enrollment URI as a QR code, for the page (the cookie, not a bearer token)."""
        if user is None:
            return Response(status_code=status.HTTP_401_UNAUTHORIZED)
        if user.role not in INSTALL_ROLES:
            return Response(status_code=status.HTTP_403_FORBIDDEN)
        normalized = normalize_code(code)
        if normalized is None:
            return Response(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        out = io.BytesIO()
        segno.make(enroll_uri(settings.base_url, display_code(normalized)), error="m").save(
            out, kind="png", scale=8, border=4
        )
        return Response(
            out.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"}
        )

    @router.get("/install/gateways/{gateway_id}/status")
    def install_status(
        session: SessionDep,
        offline_after_s: OfflineLimitDep,
        *,
        user: PageUser,
        gateway_id: Annotated[str, Path_(max_length=64)],
    ) -> Response:
        """Whether the new gateway has come online yet (polled by the enrollment page)."""
        if user is None:
            return Response(status_code=status.HTTP_401_UNAUTHORIZED)
        gateway = session.get(Gateway, gateway_id)
        if (
            gateway is None
            or user.role not in GATEWAY_ROLES
            or not user.sees(compound_of_gateway(session, gateway_id))
        ):
            return Response(status_code=status.HTTP_404_NOT_FOUND)
        online = gateway_online(gateway, now=utcnow(), offline_after_s=offline_after_s)
        zone = ZoneInfo(settings.display_timezone)
        body = {
            "online": online,
            "last_seen": gateway.last_seen.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
            if gateway.last_seen
            else None,
            "agent_version": gateway.agent_version,
        }
        return Response(
            json.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    @router.get("/alerts/{alert_id}")
    def alert_page(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        alert_id: str,
        lang: str | None = None,
        error: Annotated[str | None, Query(max_length=32)] = None,
    ) -> Response:
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        alert = get_alert(session, alert_id)
        if alert is None or not user.sees(compound_of_alert(session, alert)):
            # Another compound's alert is 403, as in the API, and the page shows nothing of it.
            return render(
                request,
                "alert.html",
                chosen,
                {"user": user, "alert": None, "forbidden": alert is not None},
                status_code=(
                    status.HTTP_404_NOT_FOUND if alert is None else status.HTTP_403_FORBIDDEN
                ),
            )
        deliveries = alert_deliveries(session, alert_id)
        zone = ZoneInfo(settings.display_timezone)
        actions = (
            [a.value for a, (sources, _) in TRANSITIONS.items() if alert.status in sources]
            if user.role.value in ACTION_ROLES
            else []
        )
        return render(
            request,
            "alert.html",
            chosen,
            {
                "user": user,
                "alert": alert,
                "deliveries": len(deliveries),
                "delivered": sum(1 for d in deliveries if d.status == "delivered"),
                "power": power_chart(session, alert, zone),
                "swipes": swipe_chart(session, alert),
                "timeline": timeline(session, [alert.alert_id]),
                "actions": actions,
                "csrf": csrf_token(settings, request.cookies.get(COOKIE_NAME) or ""),
                "error": (
                    error if error in (*ACTION_ERRORS, *web_officer.COMMENT_ERRORS) else None
                ),
                # Comments and photos (fleet/web_officer.py): the form, and photos by entry.
                "may_comment": user.role in web_officer.COMMENT_ROLES,
                "photos": web_officer.alert_photos(session, alert.alert_id),
                "photo_max_mb": web_officer.photo_limit_mb(settings),
                "default_due": (utcnow() + timedelta(hours=settings.dispatch_due_hours))
                .astimezone(zone)
                .strftime("%Y-%m-%dT%H:%M"),
                "categories": [c.value for c in Category],
            },
        )

    @router.post("/alerts/{alert_id}/actions/{action}")
    def alert_action(
        request: Request,
        session: SessionDep,
        runtime: RuntimeDep,
        *,
        user: PageUser,
        alert_id: str,
        action: Action,
        csrf: Annotated[str, Form(max_length=128)],
        lang: Annotated[str, Form(max_length=8)] = "zh",
        comment: Annotated[str | None, Form(max_length=2000)] = None,
        assignee: Annotated[str | None, Form(max_length=64)] = None,
        due_at: Annotated[str | None, Form(max_length=32)] = None,
        deadline_at: Annotated[str | None, Form(max_length=32)] = None,
        category: Annotated[str | None, Form(max_length=16)] = None,
    ) -> Response:
        """A lifecycle step from the alert page: the same service function as
        POST /api/alerts/{id}/actions/{action}, behind the cookie plus a CSRF token."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        if not csrf_ok(settings, request, csrf):
            return Response("CSRF token missing or wrong", status.HTTP_403_FORBIDDEN)
        zone = ZoneInfo(settings.display_timezone)
        page = with_lang(f"/alerts/{alert_id}", chosen)
        try:
            step = StepInput(
                comment=comment,
                assignee=assignee,
                due_at=_local_time(due_at, zone),
                deadline_at=_local_time(deadline_at, zone),
                category=category or None,
            )
        except ValueError:
            return _back_with(page, "bad_input")
        try:
            alert = load_for_step(session, alert_id, user.compound_ids, lock=True)
            transition(
                session,
                alert,
                action,
                Person(name=user.username, id=user.id, role=user.role.value, via="web"),
                step,
                now=utcnow(),
                defaults=Defaults(
                    dispatch_due=timedelta(hours=settings.dispatch_due_hours),
                    rectify=timedelta(days=settings.rectify_days),
                    recheck=timedelta(days=settings.recheck_days),
                ),
                photo_max_bytes=settings.photo_max_bytes,
                tz=settings.display_timezone,
            )
            session.commit()
        except NotFoundError:
            session.rollback()
            return Response(status_code=status.HTTP_404_NOT_FOUND)
        except NotAllowedError:
            session.rollback()
            return Response(status_code=status.HTTP_403_FORBIDDEN)
        except WrongStateError:
            session.rollback()
            return _back_with(page, "wrong_state")
        except LifecycleError:
            session.rollback()
            return _back_with(page, "bad_input")
        runtime.forward_wake.set()
        return RedirectResponse(page, status.HTTP_303_SEE_OTHER)

    @router.get("/buildings/{building_id}")
    def building_page(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        building_id: IdPath,
        lang: str | None = None,
    ) -> Response:
        """The building's flats as a grid by floor, colored by risk, open alerts marked."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        row = session.execute(
            sa.select(Building, Compound)
            .join(Compound, Compound.id == Building.compound_id)
            .where(Building.id == building_id)
        ).first()
        if row is None or not user.sees(row[1].id):
            return missing(request, chosen, user, exists=row is not None)
        building, compound = row
        floors = building_floors(session, building.id, utcnow())
        return render(
            request,
            "building.html",
            chosen,
            {
                "user": user,
                "building": building,
                "compound": compound,
                "floors": floors,
                "levels": RISK_LEVELS,
                "width": max((len(f["flats"]) for f in floors), default=0),
            },
        )

    @router.get("/flats/{flat_id}")
    def flat_page(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        flat_id: IdPath,
        lang: str | None = None,
    ) -> Response:
        """一户一档: the same service as GET /api/flats/{flat_id}/file, as a page."""
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        try:
            file = read_flat_file(session, user, flat_id)
        except HTTPException as exc:
            return missing(
                request, chosen, user, exists=exc.status_code == status.HTTP_403_FORBIDDEN
            )
        flat = session.get(Flat, flat_id)
        return render(
            request,
            "flat.html",
            chosen,
            {"user": user, "file": file, "flat": flat},
        )

    for module in PAGE_MODULES:
        module.register(router, kit)
    return router
