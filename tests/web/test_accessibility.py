"""Accessibility of every page a signed-in admin can reach, checked in Chromium's DOM.

Seeded like the demo: a flat whose meter shows an e-bike charger (power-curve chart), a flat
with many cards swiping in (swipes chart), buildings, flats, gateways. On each page, in Chinese
and in English:

- every form control has an accessible name (label, aria-label or aria-labelledby);
- images have an alt text, SVG charts role="img" and a title or label;
- exactly one h1, and ``<html lang>`` is zh-CN or en;
- Tab reaches every visible control, in document order, never jumping back up and to the left;
- text has WCAG AA contrast against its background (4.5:1, large text 3:1), computed from
  getComputedStyle, including the charts' SVG text.

All findings of all pages are collected and reported together.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

from playwright.async_api import Browser, Page, ViewportSize

from contract.alerts import AlertKind, Severity
from contract.messages import CardSwipeEvent, MeterSample, MeterTelemetry
from tests.fleet.helpers import (
    ADMIN_PASSWORD,
    T0,
    alert,
    envelope,
    eventually,
    publish,
    wire,
)
from tests.web.conftest import DESKTOP, PHONE, WebServer, screenshot, sign_in

# Runs in the page: what a screen reader or keyboard user would trip over.
CHECKS_JS = r"""
() => {
  const problems = [];
  const visible = (el) => {
    if (!el.getClientRects().length) return false;
    const s = getComputedStyle(el);
    return s.visibility !== "hidden" && s.display !== "none";
  };
  const hiddenFromAT = (el) => !!el.closest('[aria-hidden="true"]');
  const describe = (el) => {
    const id = el.id ? "#" + el.id : "";
    const name = el.getAttribute("name") ? `[name=${el.getAttribute("name")}]` : "";
    const text = (el.textContent || "").trim().slice(0, 30);
    return `<${el.tagName.toLowerCase()}${id}${name}> "${text}"`;
  };
  const textOf = (ids) =>
    ids.split(/\s+/).map((i) => document.getElementById(i)?.textContent || "").join(" ").trim();

  // 1. Form controls have an accessible name.
  for (const el of document.querySelectorAll("input, select, textarea, button")) {
    if (el.type === "hidden" || hiddenFromAT(el)) continue;
    let name = el.getAttribute("aria-label") || "";
    if (!name && el.getAttribute("aria-labelledby")) name = textOf(el.getAttribute("aria-labelledby"));
    if (!name && el.labels) name = [...el.labels].map((l) => l.textContent).join(" ");
    if (!name && el.tagName === "BUTTON") name = el.textContent || "";
    if (!name && ["submit", "button", "reset"].includes(el.type)) name = el.value || "";
    if (!name) name = el.getAttribute("title") || "";
    if (!name.trim()) problems.push(`control without a name: ${describe(el)}`);
  }

  // 2. Images and charts have a text alternative.
  for (const img of document.querySelectorAll("img")) {
    if (hiddenFromAT(img) || img.getAttribute("role") === "presentation") continue;
    if (!(img.getAttribute("alt") || "").trim()) problems.push(`image without alt: ${img.src}`);
  }
  for (const svg of document.querySelectorAll("svg")) {
    if (hiddenFromAT(svg) || svg.parentElement.closest("svg")) continue;
    const label =
      svg.getAttribute("aria-label") ||
      (svg.getAttribute("aria-labelledby") && textOf(svg.getAttribute("aria-labelledby"))) ||
      svg.querySelector(":scope > title")?.textContent || "";
    if (svg.getAttribute("role") !== "img" || !label.trim())
      problems.push(`svg without role=img and a title/label: ${describe(svg)}`);
  }

  // 3. One h1.
  const h1 = document.querySelectorAll("h1").length;
  if (h1 !== 1) problems.push(`${h1} h1 elements`);

  // 4. Contrast of text against the background it is drawn on.
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const blend = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a),
    g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a),
    a: 1,
  });
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  // The background behind el: its own and its ancestors' colours, blended (null: an image).
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const s = getComputedStyle(node);
      if (s.backgroundImage && s.backgroundImage !== "none") return null;
      const c = parse(s.backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
      // SVG shapes painted under the text (chart bands) count as its background.
      if (node.tagName && node.tagName.toLowerCase() === "svg") break;
    }
    let bg = { r: 255, g: 255, b: 255, a: 1 };
    for (const c of layers.reverse()) bg = blend(c, bg);
    return bg;
  };
  const shapeUnder = (text) => {
    // A filled rect of the same chart under the text's position (the plateau band).
    const box = text.getBBox();
    let under = null;
    for (const rect of text.ownerSVGElement.querySelectorAll("rect")) {
      const r = rect.getBBox();
      if (box.x >= r.x && box.x <= r.x + r.width && box.y >= r.y && box.y <= r.y + r.height)
        under = parse(getComputedStyle(rect).fill);
    }
    return under;
  };
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || seen.has(el) || !el) continue;
    seen.add(el);
    const tag = el.tagName.toLowerCase();
    if (["script", "style", "title", "desc", "option"].includes(tag)) continue;
    if (!visible(el) || hiddenFromAT(el)) continue;
    const s = getComputedStyle(el);
    const inSvg = !!el.closest("svg");
    let fg = parse(inSvg ? s.fill : s.color);
    let bg = inSvg ? shapeUnder(el) || background(el.closest("svg")) : background(el);
    if (!fg || !bg) continue;
    if (fg.a < 1) fg = blend(fg, bg);
    const size = parseFloat(s.fontSize);
    const bold = parseInt(s.fontWeight, 10) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    const need = large ? 3 : 4.5;
    const got = ratio(fg, bg);
    if (got < need)
      problems.push(`contrast ${got.toFixed(2)} < ${need}: ${describe(el)} (${s.color} on ${JSON.stringify(bg)})`);
  }
  return { problems, lang: document.documentElement.lang };
}
"""

# The visible, keyboard-reachable elements in document order (what Tab should visit).
FOCUSABLE_JS = r"""
() => {
  const sel = 'a[href], button, input:not([type="hidden"]), select, textarea, [tabindex]';
  const out = [];
  for (const el of document.querySelectorAll(sel)) {
    if (el.disabled || el.getAttribute("tabindex") === "-1" || !el.getClientRects().length) continue;
    const s = getComputedStyle(el);
    if (s.visibility === "hidden" || el.closest('[aria-hidden="true"], [inert]')) continue;
    if (el.tagName === "INPUT" && el.type === "radio" && !el.checked) continue;
    el.dataset.a11yIndex = String(out.length);
    out.push({ index: out.length, tabindex: el.tabIndex, label: (el.textContent || el.name || el.tagName).trim().slice(0, 30) });
  }
  return out;
}
"""

ACTIVE_JS = r"""
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const r = el.getBoundingClientRect();
  return { index: el.dataset.a11yIndex ?? null, top: r.top + scrollY, left: r.left + scrollX,
           tag: el.tagName.toLowerCase(), text: (el.textContent || el.name || "").trim().slice(0, 30) };
}
"""


async def tab_order(page: Page) -> list[str]:
    """Press Tab through the page; every control is reached, in order, never backwards."""
    expected: list[dict[str, Any]] = await page.evaluate(FOCUSABLE_JS)
    problems = [f"positive tabindex on {e['label']!r}" for e in expected if int(e["tabindex"]) > 0]
    await page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    reached: list[dict[str, Any]] = []
    # Date and time inputs take one Tab per field (day, month, ...): the same element again.
    for _ in range(3 * len(expected)):
        await page.keyboard.press("Tab")
        active = await page.evaluate(ACTIVE_JS)
        if active is None:
            break
        if reached and active["index"] is not None and active["index"] == reached[-1]["index"]:
            continue
        reached.append(active)
        if len(reached) == len(expected):
            break
    order = [int(a["index"]) if a["index"] is not None else -1 for a in reached]
    if order != list(range(len(expected))):
        problems.append(f"Tab visits {order}, expected 0..{len(expected) - 1} in document order")
    for before, after in itertools.pairwise(reached):
        # Down, or right on the same line, or up into the next column: fine. Up and left: not.
        if after["top"] < before["top"] - 4 and after["left"] <= before["left"]:
            problems.append(
                f"Tab jumps back up from {before['text']!r} to {after['text']!r} (visual order)"
            )
    return problems


async def check_page(page: Page, name: str, lang: str) -> list[str]:
    result: dict[str, Any] = await page.evaluate(CHECKS_JS)
    problems: list[str] = list(result["problems"])
    want = "zh-CN" if lang == "zh" else "en"
    if result["lang"] != want:
        problems.append(f'html lang="{result["lang"]}", expected "{want}"')
    problems += await tab_order(page)
    return [f"{name} ({lang}): {p}" for p in problems]


async def seed_charts(web: WebServer) -> tuple[str, str]:
    """A charging alert with the meter's curve, and a group-rental alert with swipes."""
    gw = web.seed.a.gateway

    def watts(minute: int) -> float:
        if 0 <= minute < 60:
            return 320.0
        if 60 <= minute < 80:
            return 320.0 - (minute - 60) * 8
        return 140.0

    readings = [
        MeterSample(
            meter_id="m-201", unit_id="1-201", ts=T0 + timedelta(minutes=m), power_w=watts(m)
        )
        for m in range(-60, 120, 2)
    ]
    swipes = [
        CardSwipeEvent(
            **envelope(gw, seq=100 + i),
            reader_id="r-1",
            card=f"{i % 9:02x}" * 16,
            unit_id="1-201",
            event_ts=T0 - timedelta(days=i % 7, minutes=i),
        )
        for i in range(60)
    ]
    charging, rental = uuid.uuid4().hex, uuid.uuid4().hex
    await publish(
        web.broker,
        wire(MeterTelemetry(**envelope(gw, seq=50), readings=readings)),
        *(wire(s) for s in swipes),
        wire(
            alert(
                gw,
                charging,
                kind=AlertKind.EBIKE_CHARGING_SUSPECTED,
                severity=Severity.HIGH,
                evidence={"peak_power_w": 320.0, "plateau_minutes": 60, "taper_minutes": 20},
            )
        ),
        wire(
            alert(
                gw,
                rental,
                kind=AlertKind.SUSPECTED_GROUP_RENTAL,
                evidence={"distinct_cards": 9, "swipes_per_day_limit": 6},
            )
        ),
    )

    async def stored() -> bool:
        for alert_id in (charging, rental):
            r = await web.client.get(f"/api/alerts/{alert_id}", headers=web.seed.auth("officer"))
            if r.status_code != 200:
                return False
        return True

    await eventually(stored, "the chart alerts")
    return charging, rental


async def test_every_page_is_accessible(web: WebServer, browser: Browser) -> None:
    seed = web.seed
    charging, rental = await seed_charts(web)
    page = await browser.new_page()
    problems: list[str] = []
    for lang in ("zh", "en"):
        await page.goto(f"{web.base_url}/login" + ("?lang=en" if lang == "en" else ""))
        problems += await check_page(page, "login", lang)
        if lang == "zh":
            await screenshot(page, "page-login")
    await sign_in(page, web.base_url, "admin", ADMIN_PASSWORD)

    pages = {
        "home": "/",
        "inbox": "/alerts",
        "alert-charging": f"/alerts/{charging}",
        "alert-rental": f"/alerts/{rental}",
        "building": f"/buildings/{seed.a.building}",
        "flat": f"/flats/{seed.a.flat}",
        "fleet": "/fleet",
        "install": "/install",
        "reports": "/reports",
        "gateway": f"/gateways/{seed.a.gateway}",
    }
    checked = []
    for name, path in pages.items():
        for lang in ("zh", "en"):
            url = f"{web.base_url}{path}" + ("?lang=en" if lang == "en" else "")
            response = await page.goto(url)
            assert response is not None
            assert response.status == 200, f"{name}: HTTP {response.status}"
            problems += await check_page(page, name, lang)
            if lang == "zh":
                await screenshot(page, f"page-{name}")  # every main page, desktop and phone
            if lang == "zh":  # and on a phone, where tables become cards and the nav wraps
                await page.set_viewport_size(
                    ViewportSize(width=PHONE["width"], height=PHONE["height"])
                )
                await page.reload()  # Tab starts again from the top
                problems += await check_page(page, f"{name} (phone)", lang)
                await page.set_viewport_size(
                    ViewportSize(width=DESKTOP["width"], height=DESKTOP["height"])
                )
            checked.append(name)
    # The charts were there to be checked.
    await page.goto(f"{web.base_url}/alerts/{charging}")
    assert await page.locator("#power-chart svg").count() == 1
    await page.goto(f"{web.base_url}/alerts/{rental}")
    assert await page.locator("#swipe-chart svg").count() == 1

    # The enrollment page (the installer's code) after creating a gateway.
    await page.goto(f"{web.base_url}/install")
    await page.get_by_role("button", name="新建网关并生成注册码").click()
    await page.wait_for_selector("#enroll-code")
    problems += await check_page(page, "enroll", "zh")

    assert set(checked) == set(pages)
    assert not problems, "\n".join(problems)
