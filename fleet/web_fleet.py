"""Fleet pages for the property company (物业) and installers: one gateway, its history and its
devices.

- ``GET /gateways/{id}``: the gateway's facts, its heartbeat history of the last 24 hours charted
  (outbox depth, load), the devices it reports and the devices the register maps to it, and its
  desired vs applied config version. Admins, installers and property users of the gateway's
  compound; another compound's gateway is 403, an unknown one 404.
- ``GET /gateways/{id}/live``: the same page's live part as JSON (gateway online, each device's
  answer, config versions), polled by the page and by the enrollment page.
- ``POST /gateways/{id}/devices/{pk}/flat``: an installer fixes a mapping (which flat a meter
  belongs to) through the same function as ``PATCH /api/devices/{pk}`` (scope checks, audit
  row); the commit hook of ``fleet.desired`` re-assembles the gateway's config and publishes it
  retained at once.

The helpers below (``fleet_columns``, ``entrance_devices``) also serve the fleet-health list and
the enrollment page in ``fleet.web``; this module never imports ``fleet.web``.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi import Path as Path_
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session, aliased

from fleet.api.deps import COOKIE_NAME, OfflineLimitDep, Principal, SessionDep
from fleet.api.sites import DeviceUpdate, update_device
from fleet.db import utcnow
from fleet.health import device_state
from fleet.models import (
    Building,
    Compound,
    DesiredConfigRow,
    Device,
    DeviceHealth,
    Entrance,
    Flat,
    Gateway,
    GatewayConfigState,
    GatewayHeartbeat,
    Role,
)
from fleet.queries import gateway_online
from fleet.settings import Settings
from fleet.sites import compound_of_gateway
from fleet.texts import DEVICE_KIND_LABELS, DEVICE_STATE_LABELS, Lang, pick_lang
from fleet.web_kit import PageKit, PageUser, csrf_ok, csrf_token, with_lang

# As GET /api/gateways: officers work with alerts, not devices.
VIEW_ROLES = frozenset({Role.ADMIN, Role.INSTALLER, Role.PROPERTY})
# As PATCH /api/devices/{pk}.
MAPPING_ROLES = frozenset({Role.ADMIN, Role.INSTALLER})

HISTORY = timedelta(hours=24)
CHART_W, CHART_H, CHART_PAD = 640, 180, 48
CHART_POINTS = 720  # at most this many points per line (one per 2 minutes over 24 h)
CHART_GAP = timedelta(minutes=5)  # silence longer than this (and 3 usual intervals) breaks
# the line
DEVICES_SHOWN = 500
FLATS_OFFERED = 1000

GatewayPath = Annotated[str, Path_(min_length=1, max_length=64)]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- read side shared with the fleet-health list ----------------------------------------------


def latest_heartbeats(session: Session, ids: Sequence[str]) -> dict[str, GatewayHeartbeat]:
    """Each gateway's newest stored heartbeat. Driven by the gateway rows, so the newest ``ts``
    is one index probe per gateway (primary key gateway_id, ts), whatever the history's size."""
    if not ids:
        return {}
    inner = aliased(GatewayHeartbeat)
    newest = (
        sa.select(sa.func.max(inner.ts))
        .where(inner.gateway_id == Gateway.gateway_id)
        .scalar_subquery()
    )
    rows = session.scalars(
        sa.select(GatewayHeartbeat)
        .select_from(Gateway)
        .join(
            GatewayHeartbeat,
            sa.and_(
                GatewayHeartbeat.gateway_id == Gateway.gateway_id, GatewayHeartbeat.ts == newest
            ),
        )
        .where(Gateway.gateway_id.in_(list(ids)))
    ).all()
    return {r.gateway_id: r for r in rows}


def device_trouble(session: Session, ids: Sequence[str]) -> dict[str, int]:
    """Per gateway: devices its last heartbeat reported silent (offline) or faulty."""
    if not ids:
        return {}
    rows = session.execute(
        sa.select(DeviceHealth.gateway_id, sa.func.count())
        .where(
            DeviceHealth.gateway_id.in_(list(ids)),
            sa.or_(DeviceHealth.online.is_(False), DeviceHealth.fault.is_not(None)),
        )
        .group_by(DeviceHealth.gateway_id)
    ).all()
    return {gw: int(count) for gw, count in rows}


def config_versions(
    session: Session, ids: Sequence[str], heartbeats: dict[str, GatewayHeartbeat] | None = None
) -> dict[str, dict[str, Any]]:
    """Per gateway: the desired config version (and whether the broker holds it) and the
    version the gateway runs (its config report, else its newest heartbeat's)."""
    if not ids:
        return {}
    desired = {
        row.gateway_id: row
        for row in session.scalars(
            sa.select(DesiredConfigRow).where(DesiredConfigRow.gateway_id.in_(list(ids)))
        )
    }
    states = {
        row.gateway_id: row
        for row in session.scalars(
            sa.select(GatewayConfigState).where(GatewayConfigState.gateway_id.in_(list(ids)))
        )
    }
    out: dict[str, dict[str, Any]] = {}
    for gw in ids:
        want, state = desired.get(gw), states.get(gw)
        applied = state.applied_version if state is not None else None
        if applied is None and heartbeats and gw in heartbeats:
            applied = heartbeats[gw].config_version
        out[gw] = {
            "desired": want.version if want is not None else None,
            "published": want is not None and want.published_version == want.version,
            "applied": applied,
            "status": state.status if state is not None else None,
            "in_step": want is not None and applied == want.version,
        }
    return out


def fleet_columns(session: Session, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What the fleet-health list adds to each gateway of a page: outbox backlog (newest
    heartbeat), devices silent or faulty, desired vs applied config version."""
    beats = latest_heartbeats(session, ids)
    trouble = device_trouble(session, ids)
    versions = config_versions(session, ids, beats)
    return {
        gw: {
            "backlog": beats[gw].outbox_depth if gw in beats else None,
            "trouble": trouble.get(gw, 0),
            "config": versions[gw],
        }
        for gw in ids
    }


# -- chart -------------------------------------------------------------------------------------


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high <= low:
        return (out_low + out_high) / 2
    return out_low + (value - low) * (out_high - out_low) / (high - low)


def series_chart(
    samples: Sequence[tuple[datetime, float]],
    *,
    start: datetime,
    end: datetime,
    zone: ZoneInfo,
    unit: str,
    integer: bool = False,
) -> dict[str, Any] | None:
    """One value over ``start``..``end`` as SVG geometry: lines (broken where the gateway was
    silent), a y-axis from 0 to the maximum, ticks every 6 hours. At most ``CHART_POINTS``
    points: denser samples are reduced to the maximum of each slot (a backlog spike stays)."""
    if not samples:
        return None
    t0, t1 = start.timestamp(), end.timestamp()
    if len(samples) > CHART_POINTS:
        slots: dict[int, tuple[datetime, float]] = {}
        width = (t1 - t0) / CHART_POINTS
        for at, value in samples:
            key = int((_aware(at).timestamp() - t0) // width)
            if key not in slots or value > slots[key][1]:
                slots[key] = (at, value)
        samples = [slots[k] for k in sorted(slots)]
    peak = max(v for _, v in samples)
    top = peak * 1.1 if peak > 0 else 1.0
    left, right = CHART_PAD, CHART_W - 10
    bottom, upper = CHART_H - 30, 10
    # A gap is silence longer than CHART_GAP and than three of the usual intervals (an agent
    # may be set to beat less often than every 30 s).
    steps = sorted((_aware(b[0]) - _aware(a[0])) for a, b in itertools.pairwise(samples))
    gap = max(CHART_GAP, 3 * steps[len(steps) // 2]) if steps else CHART_GAP
    lines: list[list[str]] = []
    previous: datetime | None = None
    for raw, value in samples:
        at = _aware(raw)
        x = round(_scale(at.timestamp(), t0, t1, left, right), 1)
        y = round(_scale(value, 0, top, bottom, upper), 1)
        if previous is None or at - previous > gap:
            lines.append([])
        lines[-1].append(f"{x},{y}")
        previous = at
    ticks = []
    for hours in (0, 6, 12, 18, 24):
        at = start + timedelta(hours=hours)
        ticks.append(
            {
                "x": round(_scale(at.timestamp(), t0, t1, left, right), 1),
                "anchor": "start" if hours == 0 else "end" if hours == 24 else "middle",
                "label": at.astimezone(zone).strftime("%H:%M"),
            }
        )
    shown = f"{top:.0f}" if integer else f"{top:.2f}"
    return {
        "w": CHART_W,
        "h": CHART_H,
        "left": left,
        "right": right,
        "bottom": bottom,
        "upper": upper,
        "lines": [" ".join(points) for points in lines],
        "dots": [p for points in lines if len(points) == 1 for p in points],
        "ticks": ticks,
        "top_label": f"{shown} {unit}".strip(),
        "count": len(samples),
        "peak": peak,
        "peak_label": f"{peak:.0f}" if integer else f"{peak:.2f}",
        "last": samples[-1][1],
    }


def heartbeat_charts(
    session: Session, gateway_id: str, *, now: datetime, zone: ZoneInfo
) -> dict[str, Any]:
    """The last 24 hours of heartbeats: outbox depth, load (1 min), available memory (MB)."""
    start = now - HISTORY
    rows = session.execute(
        sa.select(
            GatewayHeartbeat.ts,
            GatewayHeartbeat.outbox_depth,
            GatewayHeartbeat.load_1m,
            GatewayHeartbeat.mem_available_bytes,
        )
        .where(GatewayHeartbeat.gateway_id == gateway_id, GatewayHeartbeat.ts >= start)
        .order_by(GatewayHeartbeat.ts)
    ).all()
    chart = functools.partial(series_chart, start=start, end=now, zone=zone)
    return {
        "outbox": chart([(r[0], float(r[1])) for r in rows], unit="", integer=True),
        "load": chart([(r[0], float(r[2])) for r in rows if r[2] is not None], unit=""),
        "memory": chart(
            [(r[0], r[3] / 1e6) for r in rows if r[3] is not None], unit="MB", integer=True
        ),
        "heartbeats": len(rows),
    }


# -- devices: what the gateway reports, and what the register maps to it --------------------


def _address(device: Device) -> str | None:
    """The meter's bus address: DL/T 645 ``address`` or the Modbus ``slave``."""
    params = device.params or {}
    value = params.get("address", params.get("slave"))
    return None if value is None else str(value)


def entrance_devices(session: Session, gateway: Gateway) -> list[Device]:
    """The register's devices for this gateway: mapped to it, or not mapped to any gateway yet
    while their flat is at the gateway's entrance."""
    conditions: list[sa.ColumnElement[bool]] = [Device.gateway_id == gateway.gateway_id]
    if gateway.entrance_id is not None:
        at_entrance = sa.select(Flat.id).where(Flat.entrance_id == gateway.entrance_id)
        conditions.append(sa.and_(Device.gateway_id.is_(None), Device.flat_id.in_(at_entrance)))
    return list(
        session.scalars(
            sa.select(Device)
            .where(sa.or_(*conditions))
            .order_by(Device.kind, Device.device_id)
            .limit(DEVICES_SHOWN)
        )
    )


def device_rows(
    session: Session, gateway: Gateway, *, online: bool, lang: Lang, zone: ZoneInfo
) -> list[dict[str, Any]]:
    """One row per device: the register's mapping (pk, flat, address) merged with what the
    gateway last reported (state, fault, last seen), by device id."""
    reported = {
        d.device_id: d
        for d in session.scalars(
            sa.select(DeviceHealth)
            .where(DeviceHealth.gateway_id == gateway.gateway_id)
            .limit(DEVICES_SHOWN)
        )
    }
    registered = entrance_devices(session, gateway)
    flat_ids = {d.flat_id for d in registered if d.flat_id is not None}
    units = (
        dict(session.execute(sa.select(Flat.id, Flat.unit_id).where(Flat.id.in_(flat_ids))).all())
        if flat_ids
        else {}
    )
    rows: dict[str, dict[str, Any]] = {}
    for device in registered:
        rows[device.device_id] = {
            "device_id": device.device_id,
            "pk": device.id,
            "kind": device.kind,
            "address": _address(device),
            "flat_id": device.flat_id,
            "unit_id": units.get(device.flat_id) if device.flat_id is not None else None,
            "location": device.location,
            "mapped": device.gateway_id == gateway.gateway_id,
        }
    for device_id, health in reported.items():
        row = rows.setdefault(
            device_id,
            {
                "device_id": device_id,
                "pk": None,
                "kind": health.kind,
                "address": None,
                "flat_id": None,
                "unit_id": health.unit_id,
                "location": health.location,
                "mapped": False,
            },
        )
        row["reported_unit"] = health.unit_id
    for device_id, row in rows.items():
        known = reported.get(device_id)
        state = device_state(
            gateway_online=online,
            online=known.online if known is not None else None,
            fault=known.fault if known is not None else None,
        )
        seen = known.device_last_seen if known is not None else None
        row |= {
            "state": state,
            "state_label": DEVICE_STATE_LABELS[state][lang],
            "kind_label": DEVICE_KIND_LABELS.get(row["kind"] or "", {}).get(
                lang, row["kind"] or "-"
            ),
            "fault": known.fault if known is not None else None,
            "last_seen": seen.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if seen else None,
        }
    return sorted(rows.values(), key=lambda r: (r["kind"] or "", r["device_id"]))


def mapping_flats(session: Session, gateway: Gateway) -> list[dict[str, Any]]:
    """The flats a meter behind this gateway may be mapped to: those of its building."""
    if gateway.entrance_id is None:
        return []
    building_id = session.scalar(
        sa.select(Entrance.building_id).where(Entrance.id == gateway.entrance_id)
    )
    rows = session.execute(
        sa.select(Flat.id, Flat.unit_id)
        .where(Flat.building_id == building_id)
        .order_by(Flat.unit_id)
        .limit(FLATS_OFFERED)
    ).all()
    return [{"id": r[0], "unit_id": r[1]} for r in rows]


def live_status(
    session: Session, gateway: Gateway, settings: Settings, lang: Lang, *, offline_after_s: float
) -> dict[str, Any]:
    """The live part of the gateway page and of the enrollment page."""
    zone = ZoneInfo(settings.display_timezone)
    online = gateway_online(gateway, now=utcnow(), offline_after_s=offline_after_s)
    beats = latest_heartbeats(session, [gateway.gateway_id])
    version = config_versions(session, [gateway.gateway_id], beats)[gateway.gateway_id]
    latest = beats.get(gateway.gateway_id)

    def shown(value: datetime | None) -> str | None:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if value else None

    return {
        "online": online,
        "last_seen": shown(gateway.last_seen),
        "last_heartbeat": shown(gateway.last_heartbeat_at),
        "backlog": latest.outbox_depth if latest is not None else None,
        "devices": [
            {k: row[k] for k in ("device_id", "state", "state_label", "last_seen", "fault")}
            for row in device_rows(session, gateway, online=online, lang=lang, zone=zone)
        ],
        "config": version,
    }


def _place(session: Session, gateway: Gateway) -> dict[str, Any] | None:
    if gateway.entrance_id is None:
        return None
    row = session.execute(
        sa.select(Compound.name, Building.id, Building.name, Entrance.name)
        .join(Building, Building.compound_id == Compound.id)
        .join(Entrance, Entrance.building_id == Building.id)
        .where(Entrance.id == gateway.entrance_id)
    ).first()
    if row is None:
        return None
    return {"compound": row[0], "building_id": row[1], "building": row[2], "entrance": row[3]}


# -- routes ------------------------------------------------------------------------------------

MAPPING_ERRORS = ("mapping_forbidden", "mapping_invalid", "mapping_conflict")


def register(router: APIRouter, kit: PageKit) -> None:
    settings = kit.settings

    def visible(session: Session, user: Principal, gateway_id: str) -> tuple[Gateway | None, bool]:
        """The gateway if the user may see it; else (None, whether it exists)."""
        gateway = session.get(Gateway, gateway_id)
        if gateway is None:
            return None, False
        if user.role not in VIEW_ROLES or not user.sees(compound_of_gateway(session, gateway_id)):
            return None, True
        return gateway, True

    @router.get("/gateways/{gateway_id}")
    def gateway_page(
        request: Request,
        session: SessionDep,
        offline_after_s: OfflineLimitDep,
        *,
        user: PageUser,
        gateway_id: GatewayPath,
        lang: str | None = None,
        saved: Annotated[str | None, Query(max_length=64)] = None,
        error: Annotated[str | None, Query(max_length=32)] = None,
    ) -> Response:
        """One gateway for the property company and installers (see the module doc)."""
        chosen = pick_lang(lang)
        if user is None:
            return kit.to_login(request, chosen)
        gateway, exists = visible(session, user, gateway_id)
        if gateway is None:
            return kit.missing(request, chosen, user, exists)
        zone = ZoneInfo(settings.display_timezone)
        now = utcnow()
        online = gateway_online(gateway, now=now, offline_after_s=offline_after_s)
        beats = latest_heartbeats(session, [gateway_id])
        may_map = user.role in MAPPING_ROLES
        return kit.render(
            request,
            "gateway.html",
            chosen,
            {
                "user": user,
                "gateway": gateway,
                "gateway_id": gateway_id,
                "online": online,
                "place": _place(session, gateway),
                "latest": beats.get(gateway_id),
                "config": config_versions(session, [gateway_id], beats)[gateway_id],
                "charts": heartbeat_charts(session, gateway_id, now=now, zone=zone),
                "devices": device_rows(session, gateway, online=online, lang=chosen, zone=zone),
                "flats": mapping_flats(session, gateway) if may_map else [],
                "may_map": may_map,
                "csrf": csrf_token(settings, request.cookies.get(COOKIE_NAME) or ""),
                "live_src": with_lang(f"/gateways/{gateway_id}/live", chosen),
                "saved": saved,
                "error": error if error in MAPPING_ERRORS else None,
            },
        )

    @router.get("/gateways/{gateway_id}/live")
    def gateway_live(
        session: SessionDep,
        offline_after_s: OfflineLimitDep,
        *,
        user: PageUser,
        gateway_id: GatewayPath,
        lang: str | None = None,
    ) -> Response:
        """The page's live part as JSON (polled every few seconds)."""
        if user is None:
            return Response(status_code=status.HTTP_401_UNAUTHORIZED)
        gateway, exists = visible(session, user, gateway_id)
        if gateway is None:
            code = status.HTTP_403_FORBIDDEN if exists else status.HTTP_404_NOT_FOUND
            return Response(status_code=code)
        body = live_status(
            session, gateway, settings, pick_lang(lang), offline_after_s=offline_after_s
        )
        return Response(
            json.dumps(body, ensure_ascii=False),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    @router.post("/gateways/{gateway_id}/devices/{device_pk}/flat")
    def fix_mapping(
        request: Request,
        session: SessionDep,
        *,
        user: PageUser,
        gateway_id: GatewayPath,
        device_pk: Annotated[int, Path_(ge=1, le=2**62)],
        csrf: Annotated[str, Form(max_length=128)],
        flat_id: Annotated[str, Form(max_length=20)] = "",
        lang: Annotated[str, Form(max_length=8)] = "zh",
    ) -> Response:
        """Map a meter (or another device) behind this gateway to another flat, with the API's
        own PATCH /api/devices/{pk} (role and scope checks, audit row, 409 on conflict)."""
        chosen = pick_lang(lang)
        if user is None:
            return kit.to_login(request, chosen)
        if not csrf_ok(settings, request, csrf):
            return Response("CSRF token missing or wrong", status.HTTP_403_FORBIDDEN)
        gateway, exists = visible(session, user, gateway_id)
        if gateway is None:
            return kit.missing(request, chosen, user, exists)
        page = f"/gateways/{gateway_id}"

        def back(**query: str) -> RedirectResponse:
            if chosen != "zh":
                query["lang"] = chosen
            return RedirectResponse(f"{page}?{urlencode(query)}#devices", status.HTTP_303_SEE_OTHER)

        if user.role not in MAPPING_ROLES:
            return back(error="mapping_forbidden")
        device = session.get(Device, device_pk)
        if device is None or device not in entrance_devices(session, gateway):
            return back(error="mapping_invalid")
        values: dict[str, Any] = {"flat_id": int(flat_id) if flat_id.isdigit() else None}
        if flat_id and values["flat_id"] is None:
            return back(error="mapping_invalid")
        if device.gateway_id is None:
            values["gateway_id"] = gateway_id  # placed at this entrance: now behind this gateway
        try:
            update = DeviceUpdate(**values)
        except ValidationError:  # beyond any id
            return back(error="mapping_invalid")
        try:
            update_device(session, user, device_pk, update)
        except HTTPException as exc:
            session.rollback()
            if exc.status_code == status.HTTP_403_FORBIDDEN:
                return back(error="mapping_forbidden")
            if exc.status_code == status.HTTP_409_CONFLICT:
                return back(error="mapping_conflict")
            return back(error="mapping_invalid")
        return back(saved=device.device_id)
