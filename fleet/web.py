"""Server-rendered pages: gateways and recent alerts, Chinese by default (``?lang=en``).

Login is a small form that stores the API's own JWT in an HttpOnly, SameSite=Lax cookie, so the
pages and the API share one token scheme and scripts on the page cannot read the token.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from contract.alerts import AlertKind
from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth import InvalidTokenError, authenticate, create_access_token, user_from_token
from fleet.db import utcnow
from fleet.models import User
from fleet.queries import alert_deliveries, gateway_online, get_alert, list_alerts, list_gateways
from fleet.settings import Settings
from fleet.texts import LABELS, SEVERITY_LABELS, STATE_LABELS, Lang, kind_title, pick_lang

COOKIE_NAME = "fleet_token"
TEMPLATES_DIR = Path(__file__).parent / "templates"
RECENT_ALERTS = 50


def _safe_next(target: str | None) -> str:
    """Only same-site paths: ``next=//evil.example`` must not turn login into a redirector."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _with_lang(path: str, lang: Lang) -> str:
    if lang == "zh":
        return path
    return f"{path}{'&' if '?' in path else '?'}lang={lang}"


def page_user(request: Request, session: SessionDep, settings: SettingsDep) -> User | None:
    """The logged-in user from the cookie, or None (the page then redirects to the login)."""
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    try:
        return user_from_token(session, settings, token)
    except InvalidTokenError:
        return None


PageUser = Annotated[User | None, Depends(page_user)]


def make_templates(settings: Settings) -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    zone = ZoneInfo(settings.display_timezone)

    def localtime(value: datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if value else "-"

    templates.env.filters["localtime"] = localtime
    return templates


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
            "link": lambda path: _with_lang(path, lang),
            "other_lang_link": request.url.path + ("" if lang == "en" else "?lang=en"),
        }
        return templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status_code
        )

    def to_login(request: Request, lang: Lang) -> RedirectResponse:
        query = {"next": request.url.path} | ({"lang": lang} if lang != "zh" else {})
        return RedirectResponse(f"/login?{urlencode(query)}", status.HTTP_303_SEE_OTHER)

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
        response = RedirectResponse(_with_lang(_safe_next(next), chosen), status.HTTP_303_SEE_OTHER)
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
        response = RedirectResponse(
            _with_lang("/login", pick_lang(lang)), status.HTTP_303_SEE_OTHER
        )
        response.delete_cookie(COOKIE_NAME)
        return response

    @router.get("/")
    def index(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
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
                "online": gateway_online(
                    g, now=now, offline_after_s=settings.gateway_offline_after_s
                ),
            }
            for g in list_gateways(session)
        ]
        alerts, total = list_alerts(session, limit=RECENT_ALERTS)
        return render(
            request,
            "index.html",
            chosen,
            {"user": user, "gateways": gateways, "alerts": alerts, "alerts_total": total},
        )

    @router.get("/alerts/{alert_id}")
    def alert_page(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        alert_id: str,
        lang: str | None = None,
    ) -> Response:
        chosen = pick_lang(lang)
        if user is None:
            return to_login(request, chosen)
        alert = get_alert(session, alert_id)
        if alert is None:
            return render(
                request,
                "alert.html",
                chosen,
                {"user": user, "alert": None},
                status_code=status.HTTP_404_NOT_FOUND,
            )
        deliveries = alert_deliveries(session, alert_id)
        return render(
            request,
            "alert.html",
            chosen,
            {
                "user": user,
                "alert": alert,
                "deliveries": len(deliveries),
                "delivered": sum(1 for d in deliveries if d.status == "delivered"),
            },
        )

    return router
