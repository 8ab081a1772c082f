"""What a page module needs from the page router: rendering, the login redirect, 403/404 pages.

``fleet.web.make_router`` builds one :class:`PageKit` and hands it to every module listed in
``fleet.web.PAGE_MODULES``; each such module defines ``register(router, kit)`` and adds its page
routes there. Page modules import this module, never ``fleet.web`` (no import cycle).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from fleet.api.deps import COOKIE_NAME, Principal, web_user
from fleet.settings import Settings
from fleet.texts import Lang

PageUser = Annotated[Principal | None, Depends(web_user)]
"""The signed-in user of a page (None: not signed in; the page redirects to the sign-in)."""


class Render(Protocol):
    def __call__(
        self,
        request: Request,
        name: str,
        lang: Lang,
        context: dict[str, Any],
        status_code: int = 200,
    ) -> HTMLResponse: ...


@dataclass(frozen=True, slots=True)
class PageKit:
    settings: Settings
    render: Render
    """Render a template of ``fleet/templates`` with the shared context (t, link, labels...)."""
    to_login: Callable[[Request, Lang], RedirectResponse]
    """The redirect to the sign-in page that comes back to the current path."""
    forbidden: Callable[[Request, Lang, Principal], HTMLResponse]
    """The 403 page (role or compounds do not cover what was asked; nothing of it shown)."""
    missing: Callable[[Request, Lang, Principal, bool], HTMLResponse]
    """403 page when the last argument is True (exists, other compound), else 404 page."""


class PageModule(Protocol):
    def register(self, router: APIRouter, kit: PageKit) -> None: ...


def with_lang(path: str, lang: Lang) -> str:
    """``path`` in ``lang`` (Chinese is the default and needs no parameter)."""
    if lang == "zh":
        return path
    return f"{path}{'&' if '?' in path else '?'}lang={lang}"


def csrf_token(settings: Settings, cookie: str) -> str:
    """HMAC of the login cookie: a page of this site can echo it, another site cannot read it."""
    return hmac.new(settings.signing_key, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def csrf_ok(settings: Settings, request: Request, token: str) -> bool:
    """Whether a form post carries the CSRF token of the request's login cookie."""
    cookie = request.cookies.get(COOKIE_NAME) or ""
    return bool(cookie) and hmac.compare_digest(csrf_token(settings, cookie), token)
