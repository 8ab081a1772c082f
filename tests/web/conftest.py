"""Browser tests: a real fleet manager on a free port, seeded, and Debian's Chromium via Playwright.

- ``web``: the fleet manager (``fleet.app.serve``, the same uvicorn server ``fleet-manager
  serve`` runs) in this test's event loop on a free port, with the two-compound register of
  tests/fleet/sites_helpers.py seeded into it (users ``<role>_a`` / ``<role>_b``).
- ``browser``: Playwright driving ``/usr/bin/chromium`` headless. Playwright's own browser
  download does not work on these machines; ``.ci/run`` installs ``chromium`` and the CJK font
  ``fonts-wqy-zenhei``. Without /usr/bin/chromium the browser tests skip, except in CI
  (``TEST_DATABASE_URL`` set), where a missing browser is a failure.
- Screenshots go to ``$WEB_SCREENSHOTS`` (default ``build/screenshots``) as test artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from fleet.app import serve
from fleet.settings import Settings
from tests.conftest import BrokerEndpoint, free_port
from tests.fleet.helpers import eventually, make_settings
from tests.fleet.sites_helpers import PASSWORD, Seed, seeded

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("WEB_SCREENSHOTS", "build/screenshots"))
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class WebServer:
    base_url: str
    settings: Settings
    client: httpx.AsyncClient  # plain HTTP to the same server, for the API and seeding
    seed: Seed
    broker: BrokerEndpoint


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[str]:
    started = asyncio.Event()
    task = asyncio.create_task(serve(settings, started=started), name="web-test-fleet")
    try:
        done, _ = await asyncio.wait(
            [task, asyncio.create_task(started.wait())],
            timeout=60,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            task.result()  # raises the StartupError
        assert started.is_set(), "fleet manager did not start within 60 s"
        yield f"http://{settings.http_host}:{settings.http_port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def web(mqtt_broker: BrokerEndpoint, database_url: str) -> AsyncIterator[WebServer]:
    settings = make_settings(
        mqtt_broker,
        database_url,
        http_host="127.0.0.1",
        http_port=free_port(),
        public_url=None,  # links and the QR code point at this test server
    )
    async with (
        running_server(settings) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):

        async def subscribed() -> bool:
            r = await client.get("/api/health")
            return bool(r.json()["mqtt_connected"])

        await eventually(subscribed, "ingest to subscribe")
        async with seeded(client, mqtt_broker, settings) as seed:
            yield WebServer(base_url, settings, client, seed, mqtt_broker)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        reason = (
            f"{CHROMIUM} is missing: install the Debian packages chromium and fonts-wqy-zenhei "
            "(.ci/run does it)"
        )
        if os.environ.get("TEST_DATABASE_URL"):
            pytest.fail(f"CI run: {reason}")
        pytest.skip(reason)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def sign_in(page: Page, base_url: str, username: str, password: str = PASSWORD) -> None:
    """Sign in through the login form, as a person would."""
    await page.goto(f"{base_url}/login")
    await page.get_by_label("用户名").fill(username)
    await page.get_by_label("密码").fill(password)
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_load_state()


async def screenshot(page: Page, name: str) -> None:
    """Save the page at desktop and phone width (artifacts to look at)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(size)
        await page.screenshot(path=SCREENSHOTS / f"{name}-{label}.png", full_page=True)
    await page.set_viewport_size(DESKTOP)
